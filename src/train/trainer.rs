use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{evaluate, AdamW, EncodedDataset, Evaluation, LinearSchedule, Progress};
use crate::adapter::{save_adapter, tensors_to_safetensors, write_atomic};
use crate::autograd::Tape;
use crate::backend::Backend;
use crate::checkpoint::WeightsFile;
use crate::data::{training_batches, Dataset, GlueTask, TaskKind};
use crate::error::{Error, Result};
use crate::model::BertClassifier;
use crate::nn::DropoutPlan;
use crate::peft::PeftPlan;
use crate::rng;
use crate::tensor::Tensor;
use crate::text::TextTokenizer;

/// Hyper-parameters and bookkeeping of a training run.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    /// Passes over the training set.
    pub epochs: usize,
    /// Examples per optimizer step.
    pub batch_size: usize,
    /// Examples per evaluation batch.
    pub eval_batch_size: usize,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// AdamW decoupled weight decay (none on biases and LayerNorm).
    pub weight_decay: f64,
    /// Fraction of the steps spent warming up.
    pub warmup_ratio: f64,
    /// Global gradient-norm clip; `None` disables clipping.
    pub max_grad_norm: Option<f64>,
    /// Seed of batch order, dropout and fresh weights.
    pub seed: u64,
    /// Hidden-state dropout; `None` takes the checkpoint's `hidden_dropout_prob`.
    pub hidden_dropout: Option<f64>,
    /// Attention dropout; `None` takes the checkpoint's `attention_probs_dropout_prob`.
    pub attention_dropout: Option<f64>,
    /// Also evaluate every this many steps (always at each epoch end).
    pub eval_every: Option<usize>,
    /// Write a `metrics.jsonl` train line every this many steps.
    pub log_every: usize,
    /// Length buckets span this many batches.
    pub bucket_batches: usize,
    /// Train for at most this many steps in total (the schedule spans them).
    pub max_steps: Option<usize>,
    /// End this process's run after this many steps, as if interrupted; `resume` continues.
    pub stop_after_steps: Option<usize>,
    /// Where `metrics.jsonl`, `best/` and `last/` go; nothing is written without it.
    pub output_dir: Option<PathBuf>,
    /// Continue the run saved in `output_dir/last`.
    pub resume: bool,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// GLUE task, for its metrics.
    pub task: Option<GlueTask>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 1,
            batch_size: 32,
            eval_batch_size: 64,
            learning_rate: 5e-4,
            weight_decay: 0.01,
            warmup_ratio: 0.06,
            max_grad_norm: Some(1.0),
            seed: 42,
            hidden_dropout: None,
            attention_dropout: None,
            eval_every: None,
            log_every: 10,
            bucket_batches: 50,
            max_steps: None,
            stop_after_steps: None,
            output_dir: None,
            resume: false,
            progress: false,
            task: None,
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainReport {
    /// Optimizer steps taken (including those of a resumed run).
    pub steps: usize,
    /// Seconds spent in this process's training steps (evaluation excluded).
    pub train_seconds: f64,
    /// Training examples per second.
    pub samples_per_s: f64,
    /// Real (non-padding) training tokens per second.
    pub tokens_per_s: f64,
    /// Mean training loss of the last logging window.
    pub last_loss: f64,
    /// The best evaluation and its step; the model ends with those weights.
    pub best: Option<(usize, Evaluation)>,
}

/// `last/state.json`: where a run stopped.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct RunState {
    step: usize,
    epoch: usize,
    next_batch: usize,
    total_steps: usize,
    best: Option<SavedBest>,
    /// SHA-256 of the settings that must not change across a resume (see `fingerprint`).
    fingerprint: String,
    /// SHA-256 of `state.safetensors`: the JSON is written last, so a torn pair is detected.
    weights_sha256: String,
}

/// The best evaluation so far, kept across a resume (the value as bits: exact).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct SavedBest {
    step: usize,
    main_metric: String,
    value_bits: u64,
    loss: f64,
    metrics: BTreeMap<String, f64>,
}

impl SavedBest {
    fn new(step: usize, e: &Evaluation) -> Self {
        SavedBest {
            step,
            main_metric: e.main_metric.to_string(),
            value_bits: e.main_value().to_bits(),
            loss: e.loss,
            metrics: e.metrics.clone(),
        }
    }

    fn evaluation(&self) -> Evaluation {
        let main_metric = [
            "accuracy",
            "f1",
            "matthews_correlation",
            "pearson",
            "spearman",
        ]
        .into_iter()
        .find(|m| *m == self.main_metric)
        .unwrap_or("accuracy");
        let mut metrics = self.metrics.clone();
        metrics.insert(main_metric.to_string(), f64::from_bits(self.value_bits));
        Evaluation {
            metrics,
            main_metric,
            loss: self.loss,
            seconds: 0.0,
        }
    }
}

/// Fine-tunes a model with AdamW under a PEFT plan.
pub struct Trainer<'a, B: Backend> {
    backend: B,
    model: &'a mut BertClassifier<B>,
    plan: &'a PeftPlan,
    base_sha256: String,
    config: TrainConfig,
}

impl<'a, B: Backend> Trainer<'a, B> {
    /// A trainer for `model` (already under `plan`), whose base checkpoint has weights `base`.
    pub fn new(
        backend: &B,
        model: &'a mut BertClassifier<B>,
        plan: &'a PeftPlan,
        base: &WeightsFile,
        config: TrainConfig,
    ) -> Self {
        Trainer {
            backend: backend.clone(),
            model,
            plan,
            base_sha256: base.sha256().to_string(),
            config,
        }
    }

    fn label_names(kind: &TaskKind) -> Option<Vec<String>> {
        match kind {
            TaskKind::Classification { labels } => Some(labels.clone()),
            TaskKind::Regression => None,
        }
    }

    fn log(&self, line: serde_json::Value) -> Result<()> {
        let Some(dir) = &self.config.output_dir else {
            return Ok(());
        };
        let path = dir.join("metrics.jsonl");
        let io = |source| Error::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io)?;
        // One write per line, so an interrupted run leaves no torn line.
        f.write_all(format!("{line}\n").as_bytes()).map_err(io)
    }

    fn trainable(&self) -> Vec<(String, Tensor<B>)> {
        self.model
            .params()
            .into_iter()
            .filter(|p| p.trainable)
            .map(|p| (p.name.clone(), p.value.clone()))
            .collect()
    }

    fn restore(&mut self, saved: &BTreeMap<String, Tensor<B>>) -> Result<()> {
        for p in self.model.params_mut().into_iter().filter(|p| p.trainable) {
            let t = saved.get(&p.name).ok_or_else(|| Error::Mismatch {
                path: PathBuf::from("last/state.safetensors"),
                detail: format!("no saved value for trainable tensor `{}`", p.name),
            })?;
            if t.shape() != p.value.shape() {
                return Err(Error::Mismatch {
                    path: PathBuf::from("last/state.safetensors"),
                    detail: format!(
                        "`{}` was saved as {} but the model has {}",
                        p.name,
                        t.shape(),
                        p.value.shape()
                    ),
                });
            }
            p.value = t.clone();
        }
        Ok(())
    }

    fn save_state(&self, dir: &Path, state: &mut RunState, optimizer: &AdamW<B>) -> Result<()> {
        let mut tensors = self.trainable();
        for (name, (m, v)) in optimizer.moments() {
            tensors.push((format!("adam.m.{name}"), m.clone()));
            tensors.push((format!("adam.v.{name}"), v.clone()));
        }
        let bytes = tensors_to_safetensors(&self.backend, &tensors)?;
        state.weights_sha256 = crate::adapter::sha256_hex(&bytes);
        write_atomic(&dir.join("state.safetensors"), &bytes)?;
        let json =
            serde_json::to_vec_pretty(state).map_err(|e| Error::invalid("state", e.to_string()))?;
        write_atomic(&dir.join("state.json"), &json)
    }

    fn load_state(&mut self, dir: &Path, optimizer: &mut AdamW<B>) -> Result<Option<RunState>> {
        let json_path = dir.join("state.json");
        if !json_path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&json_path).map_err(|source| Error::Io {
            path: json_path.clone(),
            source,
        })?;
        let state: RunState = serde_json::from_str(&text).map_err(|e| Error::Format {
            path: json_path.clone(),
            detail: e.to_string(),
        })?;
        let weights_path = dir.join("state.safetensors");
        let bytes = std::fs::read(&weights_path).map_err(|source| Error::Io {
            path: weights_path.clone(),
            source,
        })?;
        if crate::adapter::sha256_hex(&bytes) != state.weights_sha256 {
            return Err(Error::Mismatch {
                path: weights_path,
                detail: "the saved weights do not match state.json (a torn or edited state)".into(),
            });
        }
        let tensors = crate::adapter::read_tensors(&self.backend, &dir.join("state.safetensors"))?;
        self.restore(&tensors)?;
        let mut moments = BTreeMap::new();
        for (name, t) in &tensors {
            if let Some(p) = name.strip_prefix("adam.m.") {
                let v = tensors
                    .get(&format!("adam.v.{p}"))
                    .ok_or_else(|| Error::Format {
                        path: dir.join("state.safetensors"),
                        detail: format!("`adam.v.{p}` is missing"),
                    })?;
                moments.insert(p.to_string(), (t.clone(), v.clone()));
            }
        }
        optimizer.set_moments(state.step as u64, moments);
        Ok(Some(state))
    }

    /// One optimizer step on examples `rows` (the `step`-th, 0-based): forward, loss,
    /// backward, global-norm clipping, AdamW. Returns the loss, the gradient norm before
    /// clipping and the real token count.
    fn step(
        &mut self,
        data: &EncodedDataset,
        rows: &[usize],
        step: usize,
        mut dropouts: DropoutPlan,
        optimizer: &mut AdamW<B>,
        lr: f64,
    ) -> Result<(f64, f64, usize)> {
        let (input, labels, tokens) = data.tensors(&self.backend, rows)?;
        let labels =
            labels.ok_or_else(|| Error::invalid("train", "an unlabeled training batch"))?;
        let mut tape = Tape::new(self.backend.clone());
        let logits = self.model.forward(&mut tape, &input, &mut dropouts)?;
        let loss = self.model.loss(&mut tape, &logits, &labels)?;
        let loss_value = self.backend.to_f64(loss.value())?[0];
        if !loss_value.is_finite() {
            return Err(Error::NonFiniteLoss {
                step: step + 1,
                value: loss_value,
            });
        }
        let mut grads = tape.backward(&loss)?.into_map();
        let mut norm_sq = 0.0;
        for g in grads.values() {
            norm_sq += self.backend.sum_squares(g)?;
        }
        let grad_norm = norm_sq.sqrt();
        if !grad_norm.is_finite() {
            return Err(Error::NonFiniteGradient {
                step: step + 1,
                norm: grad_norm,
            });
        }
        // torch.nn.utils.clip_grad_norm_: scale by max / (norm + 1e-6) when that is below 1.
        if let Some(max) = self.config.max_grad_norm {
            let coef = max / (grad_norm + 1e-6);
            if coef < 1.0 {
                for g in grads.values_mut() {
                    self.backend.scale_in_place(g, coef)?;
                }
            }
        }
        let grads = crate::autograd::Gradients::from_map(grads);
        optimizer.update(&self.backend, self.model.params_mut(), &grads, lr)?;
        Ok((loss_value, grad_norm, tokens))
    }

    /// What must not change between a run and its resumption, hashed.
    fn fingerprint(&self, total_steps: usize, dropouts: (f64, f64, f64)) -> String {
        let c = &self.config;
        let shapes: Vec<(String, Vec<usize>)> = self
            .model
            .params()
            .into_iter()
            .filter(|p| p.trainable)
            .map(|p| (p.name.clone(), p.value.dims().to_vec()))
            .collect();
        let text = format!(
            "{total_steps} {} {} {} {:x} {:x} {:x} {:?} {} {:?} {:?} {} {shapes:?}",
            c.epochs,
            c.batch_size,
            c.bucket_batches,
            c.learning_rate.to_bits(),
            c.warmup_ratio.to_bits(),
            c.weight_decay.to_bits(),
            c.max_grad_norm.map(f64::to_bits),
            c.seed,
            dropouts,
            c.max_steps,
            self.base_sha256,
        );
        crate::adapter::sha256_hex(text.as_bytes())
    }

    /// Writes the current trainable tensors as the best adapter, when there is an output
    /// directory.
    fn save_best(&self, labels: Option<&[String]>) -> Result<()> {
        match &self.config.output_dir {
            Some(dir) => save_adapter(
                &dir.join("best"),
                &self.backend,
                self.model,
                self.plan,
                &self.base_sha256,
                labels,
            ),
            None => Ok(()),
        }
    }

    /// Trains on `train`, evaluating on `dev` at each epoch end (and every `eval_every`
    /// steps). With an output directory: `metrics.jsonl`, the best adapter in `best/`, and
    /// the resumable state in `last/`. The model ends with the best evaluated weights.
    pub fn fit(
        &mut self,
        tokenizer: &TextTokenizer,
        train: &Dataset,
        dev: Option<&Dataset>,
    ) -> Result<TrainReport> {
        let c = self.config.clone();
        if c.batch_size == 0 || c.epochs == 0 {
            return Err(Error::invalid(
                "train",
                "batch size and epochs must be positive",
            ));
        }
        self.model.store_frozen_weights(&self.backend)?;
        let valid = c.learning_rate >= 0.0
            && c.learning_rate.is_finite()
            && (0.0..=1.0).contains(&c.warmup_ratio);
        if !valid {
            return Err(Error::invalid(
                "train",
                format!(
                    "learning rate {} must be ≥ 0 and warmup ratio {} in [0, 1]",
                    c.learning_rate, c.warmup_ratio
                ),
            ));
        }
        if let Some(d) = dev {
            if d.kind != train.kind {
                return Err(Error::invalid(
                    "train",
                    format!("{} and {} have different label spaces", train.name, d.name),
                ));
            }
        }
        if let Some(dir) = &c.output_dir {
            if !c.resume && dir.join("last/state.json").is_file() {
                return Err(Error::invalid(
                    "train",
                    format!(
                        "{} holds an earlier run: resume it, or use another output directory",
                        dir.display()
                    ),
                ));
            }
        }
        if train.is_empty() || !train.is_labeled() {
            return Err(Error::invalid(
                "train",
                format!("the training set {} is empty or unlabeled", train.name),
            ));
        }
        if train.kind.num_labels() != self.model.num_labels {
            return Err(Error::invalid(
                "train",
                format!(
                    "the task has {} labels but the model head has {}",
                    train.kind.num_labels(),
                    self.model.num_labels
                ),
            ));
        }
        let train_data = EncodedDataset::new(tokenizer, train)?;
        let dev_data = dev.map(|d| EncodedDataset::new(tokenizer, d)).transpose()?;
        let lengths = train_data.lengths();
        let batches_per_epoch = lengths.len().div_ceil(c.batch_size);
        let mut total = batches_per_epoch * c.epochs;
        if let Some(m) = c.max_steps {
            total = total.min(m);
        }
        let schedule = LinearSchedule::with_warmup_ratio(c.learning_rate, c.warmup_ratio, total);
        let mut optimizer = AdamW::new(c.weight_decay);
        let cfg = self.model.config();
        let hidden_p = c.hidden_dropout.unwrap_or(cfg.hidden_dropout_prob);
        let attention_p = c
            .attention_dropout
            .unwrap_or(cfg.attention_probs_dropout_prob);
        let lora_p = self.plan.lora.as_ref().map_or(0.0, |l| l.dropout);
        let labels = Self::label_names(&train.kind);
        let progress = Progress::new(c.progress, c.log_every);

        let (mut step, mut start_epoch, mut skip) = (0, 0, 0);
        let mut best: Option<(usize, Evaluation)> = None;
        let mut best_value: Option<f64> = None;
        let mut best_weights: Option<BTreeMap<String, Tensor<B>>> = None;
        let fingerprint = self.fingerprint(total, (hidden_p, attention_p, lora_p));
        if c.resume {
            let dir = c
                .output_dir
                .as_ref()
                .ok_or_else(|| Error::invalid("train", "--resume needs an output directory"))?;
            match self.load_state(&dir.join("last"), &mut optimizer)? {
                None => progress.message(&format!(
                    "no saved state in {}: starting from scratch",
                    dir.join("last").display()
                )),
                Some(state) => {
                    if state.fingerprint != fingerprint {
                        return Err(Error::Mismatch {
                            path: dir.join("last/state.json"),
                            detail: "the saved run used other settings (data size, epochs, batch size, learning rate, schedule, \
                                     seed, dropout, base model or trainable tensors); resume with the same ones or use another output directory"
                                .into(),
                        });
                    }
                    progress.message(&format!(
                        "resuming at step {} (epoch {})",
                        state.step,
                        state.epoch + 1
                    ));
                    step = state.step;
                    start_epoch = state.epoch;
                    skip = state.next_batch;
                    if let Some(saved) = &state.best {
                        let best_file = dir.join("best").join(crate::adapter::WEIGHTS_FILE);
                        best_weights =
                            Some(crate::adapter::read_tensors(&self.backend, &best_file)?);
                        best_value = Some(f64::from_bits(saved.value_bits));
                        best = Some((saved.step, saved.evaluation()));
                    }
                    truncate_metrics(&dir.join("metrics.jsonl"), step)?;
                }
            }
        }

        let (mut train_seconds, mut samples, mut tokens) = (0.0, 0usize, 0usize);
        let (mut window_loss, mut window_n) = (0.0, 0usize);
        let mut steps_here = 0usize;
        let mut last_loss = f64::NAN;
        'epochs: for epoch in start_epoch..c.epochs {
            let batches = training_batches(
                &lengths,
                c.batch_size,
                c.bucket_batches,
                rng::mix(c.seed, epoch as u64),
            );
            let first = if epoch == start_epoch { skip } else { 0 };
            for (b, rows) in batches.iter().enumerate().skip(first) {
                if step >= total || c.stop_after_steps.is_some_and(|n| steps_here >= n) {
                    break 'epochs;
                }
                let t0 = Instant::now();
                let dropouts = DropoutPlan::train(
                    hidden_p,
                    attention_p,
                    lora_p,
                    rng::mix(c.seed ^ 0xd5, step as u64),
                );
                let lr = schedule.lr(step);
                let (loss_value, grad_norm, n_tokens) =
                    self.step(&train_data, rows, step, dropouts, &mut optimizer, lr)?;
                step += 1;
                steps_here += 1;
                train_seconds += t0.elapsed().as_secs_f64();
                samples += rows.len();
                tokens += n_tokens;
                window_loss += loss_value;
                window_n += 1;
                let sps = samples as f64 / train_seconds.max(1e-9);
                progress.step(step, total, epoch + 1, window_loss / window_n as f64, sps);
                if step % c.log_every.max(1) == 0 || step == total {
                    last_loss = window_loss / window_n as f64;
                    self.log(json!({
                        "type": "train", "step": step, "epoch": epoch + 1, "loss": last_loss, "lr": lr,
                        "grad_norm": grad_norm, "samples_per_s": sps, "tokens_per_s": tokens as f64 / train_seconds.max(1e-9),
                    }))?;
                    window_loss = 0.0;
                    window_n = 0;
                }
                let epoch_end = b + 1 == batches.len() || step == total;
                let scheduled = c.eval_every.is_some_and(|n| n > 0 && step % n == 0);
                if epoch_end || scheduled {
                    if let Some(dev_data) = &dev_data {
                        let eval = evaluate(
                            &self.backend,
                            self.model,
                            dev_data,
                            c.eval_batch_size,
                            c.task,
                        )?;
                        let mut line = json!({"type": "eval", "step": step, "epoch": epoch + 1, "split": dev.map(|d| d.name.clone()), "loss": eval.loss});
                        for (k, v) in &eval.metrics {
                            line[k] = json!(v);
                        }
                        self.log(line)?;
                        progress.message(&format!(
                            "step {step}: dev {} {:.4} (loss {:.4})",
                            eval.main_metric,
                            eval.main_value(),
                            eval.loss
                        ));
                        let value = eval.main_value();
                        if value.is_finite() && best_value.is_none_or(|v| value > v) {
                            best_value = Some(value);
                            best_weights = Some(self.trainable().into_iter().collect());
                            self.save_best(labels.as_deref())?;
                            best = Some((step, eval));
                        }
                    }
                    if let Some(dir) = &c.output_dir {
                        let (next_epoch, next_batch) = if b + 1 == batches.len() {
                            (epoch + 1, 0)
                        } else {
                            (epoch, b + 1)
                        };
                        let mut state = RunState {
                            step,
                            epoch: next_epoch,
                            next_batch,
                            total_steps: total,
                            best: best.as_ref().map(|(s, e)| SavedBest::new(*s, e)),
                            fingerprint: fingerprint.clone(),
                            weights_sha256: String::new(),
                        };
                        self.save_state(&dir.join("last"), &mut state, &optimizer)?;
                    }
                }
            }
        }
        if let Some(w) = &best_weights {
            self.restore(w)?;
        }
        if dev_data.is_none() {
            self.save_best(labels.as_deref())?;
        }
        Ok(TrainReport {
            steps: step,
            train_seconds,
            samples_per_s: samples as f64 / train_seconds.max(1e-9),
            tokens_per_s: tokens as f64 / train_seconds.max(1e-9),
            last_loss,
            best,
        })
    }
}

/// Keeps the lines of `metrics.jsonl` up to `step`: a resumed run rewrites what followed.
fn truncate_metrics(path: &Path, step: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s as usize <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    write_atomic(path, kept.as_bytes())
}
