//! Training-step (or inference) throughput on a synthetic batch: what `spafit bench` reports.

use std::time::Instant;

use crate::autograd::{Gradients, Tape};
use crate::backend::{Backend, KernelTime};
use crate::error::{Error, Result};
use crate::model::{check_batch_memory, BertClassifier, Labels, ModelInput, Pass};
use crate::nn::DropoutPlan;
use crate::peft::PeftPlan;
use crate::rng::SplitMix;
use crate::tensor::Shape;
use crate::text::EncodedBatch;
use crate::train::micro_batches;
use crate::train::AdamW;

/// Results of [`bench_train_step`] or [`bench_inference`].
#[derive(Clone, Debug, PartialEq)]
pub struct BenchReport {
    /// Examples per step.
    pub batch: usize,
    /// Examples per forward and backward pass: `batch`, or less where the step accumulates
    /// gradients over micro-batches.
    pub micro_batch: usize,
    /// Tokens per example.
    pub seq_len: usize,
    /// Timed steps.
    pub steps: usize,
    /// Median milliseconds per step (forward, backward, AdamW; in inference, the forward
    /// pass and the logits read back to the host, as evaluation reads them).
    pub ms_per_step: f64,
    /// Fastest timed step: the least disturbed by other work on a shared machine.
    pub ms_per_step_min: f64,
    /// `batch / step time`.
    pub samples_per_s: f64,
    /// `batch · seq_len / step time`.
    pub tokens_per_s: f64,
    /// Peak resident memory of the steps (warm-up included) in MiB, the model's own memory
    /// included: Linux's `VmHWM`, reset after the model was loaded or drawn. `None` where
    /// the peak cannot be reset (not Linux, or `/proc/self/clear_refs` not writable).
    pub peak_mem_mib: Option<f64>,
    /// Resident memory in MiB when the steps began (the model loaded, nothing trained yet):
    /// `peak_mem_mib` less this is what the steps themselves added (activations, gradients,
    /// optimizer moments, the allocator's slack). `None` elsewhere than Linux.
    pub resident_before_steps_mib: Option<f64>,
    /// Peak resident memory of the whole process in MiB, loading the model included (which
    /// may need more than a small step: reading and converting the checkpoint); `None`
    /// elsewhere than Linux.
    pub process_peak_mem_mib: Option<f64>,
    /// Peak device memory during the timed steps in MiB, where the backend tracks it (CUDA).
    pub peak_device_mib: Option<f64>,
    /// Trainable scalars.
    pub trainable_params: usize,
    /// Autograd nodes per step (per micro-batch where there are several).
    pub nodes: usize,
    /// Activation bytes kept for backward per step (at most what one micro-batch keeps).
    pub saved_activation_bytes: usize,
    /// The kernels of one more step, timed on the device, where asked for
    /// ([`BenchSettings::kernel_times`]).
    pub kernel_times: Option<StepKernelTimes>,
}

/// Times `steps` full training steps (after `warmup` untimed ones) of `model` on a random
/// batch of `batch × seq_len` tokens with training-mode dropout.
pub fn bench_train_step<B: Backend>(
    backend: &B,
    model: &mut BertClassifier<B>,
    batch: usize,
    seq_len: usize,
    warmup: usize,
    steps: usize,
) -> Result<BenchReport> {
    bench_train_step_in_micro_batches(backend, model, batch, batch, seq_len, warmup, steps)
}

/// [`bench_train_step`] with each step's batch run through the model in micro-batches of at
/// most `micro_batch` examples, their gradients summed before AdamW (as the trainer's
/// `micro_batch_size` does): what gradient accumulation costs in time and saves in memory.
pub fn bench_train_step_in_micro_batches<B: Backend>(
    backend: &B,
    model: &mut BertClassifier<B>,
    batch: usize,
    micro_batch: usize,
    seq_len: usize,
    warmup: usize,
    steps: usize,
) -> Result<BenchReport> {
    let settings = BenchSettings {
        batch,
        micro_batch,
        seq_len,
        warmup,
        steps,
        kernel_times: false,
        inference: false,
    };
    bench_train_step_with(backend, model, &settings)
}

/// Times `steps` forward passes (after `warmup` untimed ones) of `model` in evaluation mode
/// on a random batch of `batch × seq_len` tokens, as `spafit eval` and `predict` run them:
/// nothing recorded on a tape, no dropout, the logits read back to the host.
pub fn bench_inference<B: Backend>(
    backend: &B,
    model: &mut BertClassifier<B>,
    batch: usize,
    seq_len: usize,
    warmup: usize,
    steps: usize,
) -> Result<BenchReport> {
    let settings = BenchSettings {
        batch,
        micro_batch: batch,
        seq_len,
        warmup,
        steps,
        kernel_times: false,
        inference: true,
    };
    bench_train_step_with(backend, model, &settings)
}

/// What [`bench_train_step_with`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BenchSettings {
    /// Examples per step.
    pub batch: usize,
    /// Examples per forward and backward pass (`batch` for none: see
    /// [`bench_train_step_in_micro_batches`]).
    pub micro_batch: usize,
    /// Tokens per example.
    pub seq_len: usize,
    /// Untimed steps first.
    pub warmup: usize,
    /// Timed steps.
    pub steps: usize,
    /// After the timed steps, one more step with the device time of each kernel taken
    /// ([`BenchReport::kernel_times`]; refused by a backend that launches no kernels).
    pub kernel_times: bool,
    /// Each step a forward pass in evaluation mode instead ([`bench_inference`]):
    /// `micro_batch` must be `batch`.
    pub inference: bool,
}

/// The device time of each kernel of one training step, beside the step's wall time.
#[derive(Clone, Debug, PartialEq)]
pub struct StepKernelTimes {
    /// Wall milliseconds of the step, timing included (two event records per launch).
    pub step_ms: f64,
    /// Each kernel's launches and device milliseconds, most time first.
    pub kernels: Vec<KernelTime>,
}

impl StepKernelTimes {
    /// Device milliseconds of all the step's kernels.
    pub fn kernel_ms(&self) -> f64 {
        self.kernels.iter().map(|k| k.milliseconds).sum()
    }
}

/// [`bench_train_step_in_micro_batches`] with every setting, kernel times on request, or
/// [`bench_inference`]'s forward passes.
///
/// On Linux the process's peak resident memory (`VmHWM`) is reset before the first step, so
/// that [`BenchReport::peak_mem_mib`] is the steps' own: a program embedding the engine that
/// reads its own peak afterwards reads it from there ([`BenchReport::process_peak_mem_mib`]
/// keeps the earlier one).
pub fn bench_train_step_with<B: Backend>(
    backend: &B,
    model: &mut BertClassifier<B>,
    settings: &BenchSettings,
) -> Result<BenchReport> {
    let BenchSettings {
        batch,
        micro_batch,
        seq_len,
        warmup,
        steps,
        kernel_times,
        inference,
    } = *settings;
    if steps == 0 {
        return Err(Error::invalid("bench", "needs at least one timed step"));
    }
    micro_batches::check_size("bench", micro_batch, batch)?;
    if inference && micro_batch < batch {
        return Err(Error::invalid(
            "bench",
            format!(
                "inference runs each batch of {batch} whole: micro-batches of {micro_batch} \
                 split a training step's gradients, and a forward pass has none"
            ),
        ));
    }
    // Refused before any step runs, not after the timed ones.
    if kernel_times {
        if !backend.start_kernel_timing()? {
            return Err(Error::invalid(
                "bench",
                format!(
                    "kernel times need a backend that launches kernels (cuda or cuda-emu), \
                     not {}",
                    backend.name()
                ),
            ));
        }
        backend.stop_kernel_timing()?;
    }
    // The plan's own adapter dropout, as training would apply it.
    let lora_dropout = model.plan().map_or(0.0, PeftPlan::lora_dropout);
    let layers_on_tape = model.layers_on_tape();
    let pass = match inference {
        true => Pass::Inference,
        false => Pass::Training { layers_on_tape },
    };
    check_batch_memory(backend, model.config(), micro_batch, seq_len, pass, "bench")?;
    let mut rng = SplitMix::new(7);
    let vocab = model.config().vocab_size as u64;
    // BERT's vocabularies put [CLS] at 101 and words from about 1000 on; a smaller
    // vocabulary gets ids it has. One past u32 is refused by the input's own check.
    let last = vocab.saturating_sub(1);
    let (cls, first_word) = (101.min(last), 1000.min(last));
    let ids: Vec<u32> = (0..batch * seq_len)
        .map(|i| {
            let id = if i % seq_len == 0 {
                cls
            } else {
                first_word + rng.next_u64() % vocab.saturating_sub(first_word).max(1)
            };
            u32::try_from(id).unwrap_or(u32::MAX)
        })
        .collect();
    // The micro-batches' inputs and labels: rows `start..start + rows` of the batch.
    let parts: Vec<(ModelInput<B>, Labels<B>, f64)> = (0..batch)
        .step_by(micro_batch)
        .map(|start| {
            let rows = micro_batch.min(batch - start);
            let tokens = start * seq_len..(start + rows) * seq_len;
            let enc = EncodedBatch {
                input_ids: ids[tokens.clone()].to_vec(),
                token_type_ids: vec![0; tokens.len()],
                attention_mask: vec![1; tokens.len()],
                batch: rows,
                seq: seq_len,
            };
            let input = ModelInput::for_model(backend, &enc, model.config())?;
            let labels = if model.num_labels() == 1 {
                Labels::Scores(backend.tensor_from_f64(Shape::new([rows]), &vec![0.5; rows])?)
            } else {
                let y: Vec<u32> = (start..start + rows)
                    .map(|i| (i % model.num_labels()) as u32)
                    .collect();
                Labels::Classes(backend.tensor_from_u32(Shape::new([rows]), &y)?)
            };
            Ok((input, labels, micro_batches::weight(rows, batch)))
        })
        .collect::<Result<_>>()?;
    let mut optimizer = AdamW::new(0.01);
    let mut times = Vec::with_capacity(steps);
    let (mut nodes, mut saved) = (0, 0);
    // Step `i`; its activations, gradients and tape are freed inside it, as in a training
    // loop (and in PyTorch's step). Returns its wall seconds.
    let mut step = |model: &mut BertClassifier<B>, i: usize| -> Result<f64> {
        let t = Instant::now();
        if inference {
            for (input, _, _) in &parts {
                let mut tape = Tape::inference(backend.clone());
                let logits = model.forward(&mut tape, input, &mut DropoutPlan::eval())?;
                // As evaluation reads them; the read waits for the device.
                backend.to_f64(logits.value())?;
            }
            return Ok(t.elapsed().as_secs_f64());
        }
        let cfg = model.config();
        let (hidden, attention) = (cfg.hidden_dropout_prob, cfg.attention_probs_dropout_prob);
        let classifier = cfg.classifier_dropout_or(cfg.hidden_dropout_prob);
        let pooler_input = cfg.pooler_input_dropout_or(cfg.hidden_dropout_prob);
        let mut sums = None;
        for (index, (input, labels, weight)) in parts.iter().enumerate() {
            let mut tape = Tape::new(backend.clone());
            let seed = micro_batches::dropout_seed(i as u64, index);
            let mut dropouts = DropoutPlan::train(hidden, attention, lora_dropout, seed)
                .with_classifier(classifier)
                .with_pooler_input(pooler_input);
            let logits = model.forward(&mut tape, input, &mut dropouts)?;
            let loss = model.loss(&mut tape, &logits, labels)?;
            if index == 0 {
                nodes = tape.stats().nodes;
                saved = tape.stats().saved_activation_bytes;
            }
            micro_batches::backward(&mut tape, &loss, *weight, &mut sums)?;
        }
        let grads = sums.unwrap_or_else(|| Gradients::from_map(Default::default()));
        optimizer.update(backend, model.params_mut(), &grads, 1e-5)?;
        backend.synchronize()?;
        Ok(t.elapsed().as_secs_f64())
    };
    // What loading took is not what the steps take: the peak starts over here.
    let peak_before_steps = peak_resident_mib();
    let peak_reset = reset_peak_resident();
    let resident_before_steps_mib = resident_mib();
    for i in 0..warmup + steps {
        backend.synchronize()?;
        if i == warmup {
            // After the wait: the last warm-up step's frees are done.
            backend.reset_peak_memory();
        }
        let seconds = step(model, i)?;
        if i >= warmup {
            times.push(seconds);
        }
    }
    let peak_steps = peak_reset.then(peak_resident_mib).flatten();
    let peak_device_mib = backend
        .peak_memory_bytes()
        .map(|b| b as f64 / (1024.0 * 1024.0));
    // Apart from the timed steps, whose wall time the events would add to.
    let kernel_times = match kernel_times {
        false => None,
        true => {
            backend.start_kernel_timing()?;
            let timed = step(model, warmup + steps);
            // Stopped whatever the step did; the step's own error first: a fault in it
            // would otherwise surface as the timer's, naming no op.
            let stopped = backend.stop_kernel_timing();
            let step_ms = timed? * 1e3;
            Some(StepKernelTimes {
                step_ms,
                kernels: stopped?.unwrap_or_default(),
            })
        }
    };
    times.sort_by(f64::total_cmp);
    let median = median_of_sorted(&times);
    Ok(BenchReport {
        batch,
        micro_batch,
        seq_len,
        steps,
        ms_per_step: median * 1e3,
        ms_per_step_min: times.first().copied().unwrap_or(f64::NAN) * 1e3,
        samples_per_s: batch as f64 / median,
        tokens_per_s: (batch * seq_len) as f64 / median,
        peak_mem_mib: peak_steps,
        resident_before_steps_mib,
        process_peak_mem_mib: match (peak_before_steps, peak_steps) {
            (Some(before), Some(steps)) => Some(before.max(steps)),
            _ => peak_resident_mib(),
        },
        peak_device_mib,
        trainable_params: model.trainable_parameter_count(),
        nodes,
        saved_activation_bytes: saved,
        kernel_times,
    })
}

/// Peak resident set size of this process in MiB, from `/proc/self/status` (Linux).
pub fn peak_resident_mib() -> Option<f64> {
    status_mib("VmHWM:")
}

/// The process's resident memory in MiB (Linux's `VmRSS`); `None` elsewhere.
pub fn resident_mib() -> Option<f64> {
    status_mib("VmRSS:")
}

/// A memory line of `/proc/self/status` (in kiB there) in MiB.
fn status_mib(field: &str) -> Option<f64> {
    crate::model::proc_kib("/proc/self/status", field).map(|kib| kib as f64 / 1024.0)
}

/// Starts the peak resident memory over from the current resident memory (Linux 4.0 on:
/// writing 5 to `/proc/self/clear_refs`); whether it could.
pub fn reset_peak_resident() -> bool {
    std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/self/clear_refs")
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"5"))
        .is_ok()
}

/// The median of sorted values: an even count's is the mean of its two middle values, not the
/// larger one. NaN for none.
fn median_of_sorted(v: &[f64]) -> f64 {
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::median_of_sorted;

    #[test]
    fn median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median_of_sorted(&[1.0, 3.0]), 2.0);
        assert_eq!(median_of_sorted(&[1.0, 2.0, 10.0]), 2.0);
        assert_eq!(median_of_sorted(&[1.0, 2.0, 4.0, 10.0]), 3.0);
        assert!(median_of_sorted(&[]).is_nan());
    }
}
