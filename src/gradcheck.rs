//! Finite-difference check of a real model's gradients under a PEFT method: what
//! `spafit gradcheck` runs.

use crate::autograd::Tape;
use crate::backend::cpu::CpuBackend;
use crate::backend::Backend;
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::model::{BertClassifier, Labels, ModelInput};
use crate::nn::DropoutPlan;
use crate::peft::{PeftConfig, PeftPlan};
use crate::rng::SplitMix;
use crate::tensor::Shape;
use crate::text::TextInput;

/// Outcome of [`gradcheck`].
#[derive(Clone, Debug, PartialEq)]
pub struct GradcheckReport {
    /// Trainable tensors checked.
    pub tensors: usize,
    /// Coordinates checked.
    pub coordinates: usize,
    /// Worst relative error `‖analytic − fd‖ / ‖fd‖` over a tensor's sampled coordinates.
    pub max_rel_err: f64,
    /// The tensor with that error.
    pub worst_tensor: String,
}

impl GradcheckReport {
    /// `Ok` when the worst relative error is at most `tolerance`, else
    /// [`Error::GradientMismatch`] naming the tensor. A tolerance that is not a positive
    /// number is refused.
    pub fn within(&self, tolerance: f64) -> Result<()> {
        if !(tolerance.is_finite() && tolerance > 0.0) {
            return Err(Error::invalid(
                "gradcheck",
                format!("the tolerance must be a positive number, got {tolerance}"),
            ));
        }
        // A NaN error (a NaN gradient) fails too.
        if self.max_rel_err.is_nan() || self.max_rel_err > tolerance {
            return Err(Error::GradientMismatch {
                worst: self.max_rel_err,
                tensor: self.worst_tensor.clone(),
                tolerance,
            });
        }
        Ok(())
    }
}

/// Checks the gradient of the loss on `texts` (labels alternate 0/1) with respect to
/// `samples` coordinates of every trainable tensor, with dropout on at a fixed seed: the
/// analytic gradients come from `device` (any backend, in its dtype), the central finite
/// differences from the f64 CPU reference on the same weights, adapters and dropout masks.
/// Adapters start random (not PEFT's zero B) so every gradient is non-trivial.
pub fn gradcheck<B: Backend>(
    device: &B,
    checkpoint: &Checkpoint,
    config: &PeftConfig,
    texts: &[&str],
    samples: usize,
    seed: u64,
) -> Result<GradcheckReport> {
    if texts.is_empty() || samples == 0 {
        return Err(Error::invalid(
            "gradcheck",
            "needs at least one text and one sample per tensor",
        ));
    }
    let cpu = CpuBackend::f64();
    let mut model = BertClassifier::from_checkpoint(checkpoint, &cpu, 2, seed)?;
    let plan = PeftPlan::new(config, checkpoint.config.num_hidden_layers)?;
    let mut rng = SplitMix::new(seed);
    model.apply_plan(&plan, &mut |_, shape: Shape| {
        let v: Vec<f64> = (0..shape.numel())
            .map(|_| rng.uniform_in(-0.05, 0.05))
            .collect();
        cpu.tensor_from_f64(shape, &v)
    })?;
    // The adapters' own dropout where the plan has adapters (BERT's 0.1 on the rest).
    let lora_dropout = plan.lora_dropout();
    let tokenizer = checkpoint.tokenizer(32)?;
    let inputs: Vec<TextInput> = texts.iter().map(|t| TextInput::Single(t)).collect();
    let input = ModelInput::new(&cpu, &tokenizer.encode_batch(&inputs)?)?;
    let y: Vec<u32> = (0..texts.len()).map(|i| (i % 2) as u32).collect();
    let labels = Labels::Classes(cpu.tensor_from_u32(Shape::new([texts.len()]), &y)?);
    let loss_of = |m: &BertClassifier<CpuBackend>| -> Result<f64> {
        let mut tape = Tape::new(cpu);
        let logits = m.forward(
            &mut tape,
            &input,
            &mut DropoutPlan::train(0.1, 0.1, lora_dropout, seed),
        )?;
        let loss = m.loss(&mut tape, &logits, &labels)?;
        Ok(cpu.to_f64(loss.value())?[0])
    };
    // The same model on the device: the checkpoint's weights and the reference's adapters
    // and head, by name.
    let reference_values: std::collections::BTreeMap<String, Vec<f64>> = model
        .params()
        .into_iter()
        .filter(|p| p.trainable)
        .map(|p| Ok((p.name.clone(), cpu.to_f64(&p.value)?)))
        .collect::<Result<_>>()?;
    let mut on_device = BertClassifier::from_checkpoint(checkpoint, device, 2, seed)?;
    on_device.apply_plan(&plan, &mut |name, shape: Shape| {
        let v = reference_values.get(name).ok_or_else(|| {
            Error::invalid("gradcheck", format!("no reference value for `{name}`"))
        })?;
        device.tensor_from_f64(shape, v)
    })?;
    for p in on_device.params_mut().into_iter().filter(|p| p.trainable) {
        if let Some(v) = reference_values.get(&p.name) {
            p.value = device.tensor_from_f64(p.value.shape().clone(), v)?;
        }
    }
    on_device.store_frozen_weights(device)?;
    let device_input = ModelInput::new(device, &tokenizer.encode_batch(&inputs)?)?;
    let device_labels = Labels::Classes(device.tensor_from_u32(Shape::new([texts.len()]), &y)?);
    let mut tape = Tape::new(device.clone());
    let logits = on_device.forward(
        &mut tape,
        &device_input,
        &mut DropoutPlan::train(0.1, 0.1, lora_dropout, seed),
    )?;
    let loss = on_device.loss(&mut tape, &logits, &device_labels)?;
    let grads = tape.backward(&loss)?;
    let names = model.trainable_names();
    let mut report = GradcheckReport {
        tensors: 0,
        coordinates: 0,
        max_rel_err: 0.0,
        worst_tensor: String::new(),
    };
    for name in &names {
        if name.ends_with("attention.self.key.bias") {
            // Its gradient is exactly zero (softmax ignores a per-query shift): no ratio to take.
            continue;
        }
        let g = device.to_f64(
            grads
                .get(name)
                .ok_or_else(|| Error::Autograd(format!("no gradient for {name}")))?,
        )?;
        let idx = model
            .params()
            .iter()
            .position(|p| &p.name == name)
            .expect("trainable name exists");
        let x = cpu.to_f64(&model.params()[idx].value)?;
        // The largest-gradient coordinate, then random ones among those with any gradient.
        let nonzero: Vec<usize> = (0..g.len()).filter(|&i| g[i] != 0.0).collect();
        if nonzero.is_empty() {
            continue;
        }
        let mut coords = vec![*nonzero
            .iter()
            .max_by(|&&a, &&b| g[a].abs().total_cmp(&g[b].abs()))
            .expect("non-empty")];
        while coords.len() < samples.min(nonzero.len()) {
            let c = nonzero[(rng.next_u64() % nonzero.len() as u64) as usize];
            if !coords.contains(&c) {
                coords.push(c);
            }
        }
        let (mut diff, mut norm) = (0.0, 0.0);
        for &i in &coords {
            let h = 1e-6 * x[i].abs().max(1.0);
            let mut eval_at = |v: f64| -> Result<f64> {
                let mut p = x.clone();
                p[i] = v;
                model.params_mut()[idx].value =
                    cpu.tensor_from_f64(Shape::new(model.params()[idx].value.dims()), &p)?;
                loss_of(&model)
            };
            let fd = (eval_at(x[i] + h)? - eval_at(x[i] - h)?) / (2.0 * h);
            diff += (g[i] - fd) * (g[i] - fd);
            norm += fd * fd;
        }
        model.params_mut()[idx].value =
            cpu.tensor_from_f64(Shape::new(model.params()[idx].value.dims()), &x)?;
        let err = if norm > 0.0 {
            (diff / norm).sqrt()
        } else {
            diff.sqrt()
        };
        report.tensors += 1;
        report.coordinates += coords.len();
        // A NaN (a NaN gradient or loss) is the worst error, never skipped by the comparison.
        if err.is_nan() || err >= report.max_rel_err {
            report.max_rel_err = err;
            report.worst_tensor = name.clone();
        }
    }
    Ok(report)
}
