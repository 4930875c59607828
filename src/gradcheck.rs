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
    /// Worst relative error over the checked tensors: per tensor the larger of
    /// `‖analytic − fd‖ / ‖fd‖` over its sampled coordinates and, along one random direction
    /// through all of its coordinates, `|analytic − fd|` over the larger of `|fd|` and the
    /// gradient's root mean square. A difference within the finite differences' own rounding
    /// (see [`GradcheckReport::resolution`]) counts as none: a right gradient scores 0 there.
    pub max_rel_err: f64,
    /// The tensor with that error (empty where every error is 0).
    pub worst_tensor: String,
    /// The smallest relative error the check could have seen, in the checked tensor where it
    /// is largest: the finite differences' rounding over the size of that tensor's gradient
    /// (about 3e-11 of the loss, over the gradient). Where it is above a tolerance, a right
    /// gradient still passes, but an error smaller than it would pass too. Over the tensors
    /// with a gradient to resolve (not those in [`GradcheckReport::unresolved`]).
    pub resolution: f64,
    /// The tensor with that resolution.
    pub least_resolved_tensor: String,
    /// Checked tensors whose gradient the finite differences saw as zero: every coordinate
    /// and the random direction within their rounding. An analytic gradient larger than that
    /// rounding fails there, but one smaller is no check of the backward pass (a head of
    /// zeros leaves the encoder no gradient; so does a LoRA scale too small to matter).
    pub unresolved: Vec<String>,
    /// Trainable tensors not differenced: the attention key biases, whose gradient is exactly
    /// zero (softmax ignores a shift shared by all of a query's scores); see
    /// [`GradcheckReport::key_bias_err`] for how they are judged.
    pub skipped: Vec<String>,
    /// What the device gives for those zero gradients instead: the largest key-bias gradient's
    /// root mean square over that of the same layer's query bias (rounding where the backward
    /// pass is right; NaN for a non-finite one). It counts in
    /// [`GradcheckReport::max_rel_err`] only where it is NaN, and fails
    /// [`GradcheckReport::within`] above the tolerance. 0 without any.
    pub key_bias_err: f64,
    /// The key bias with that error (empty without any).
    pub key_bias_tensor: String,
}

impl GradcheckReport {
    /// `Ok` when the worst relative error is at most `tolerance` and the check could see
    /// errors that small in every tensor; else [`Error::GradientMismatch`] naming the tensor
    /// ([`Error::KeyBiasGradient`] for a key bias's gradient above the tolerance),
    /// or [`Error::GradcheckInconclusive`] where the resolution is above the tolerance or a
    /// tensor's gradient was unresolved (a pass there would vouch for nothing). A tolerance
    /// that is not a positive number is refused.
    pub fn within(&self, tolerance: f64) -> Result<()> {
        if let Some(why) = tolerance_problem(tolerance) {
            return Err(Error::invalid("gradcheck", why));
        }
        // A NaN error (a NaN gradient) fails too.
        if self.max_rel_err.is_nan() || self.max_rel_err > tolerance {
            return Err(Error::GradientMismatch {
                worst: self.max_rel_err,
                tensor: self.worst_tensor.clone(),
                tolerance,
            });
        }
        if self.key_bias_err > tolerance {
            return Err(Error::KeyBiasGradient {
                ratio: self.key_bias_err,
                tensor: self.key_bias_tensor.clone(),
                tolerance,
            });
        }
        if self.resolution > tolerance {
            return Err(Error::GradcheckInconclusive {
                tolerance,
                detail: format!(
                    "{}'s gradient is so small against the loss's rounding that only relative \
                     errors above {:.1e} show",
                    self.least_resolved_tensor, self.resolution
                ),
            });
        }
        if let Some(first) = self.unresolved.first() {
            return Err(Error::GradcheckInconclusive {
                tolerance,
                detail: format!(
                    "{} tensor(s) have a gradient the finite differences cannot tell from zero \
                     ({first}{})",
                    self.unresolved.len(),
                    if self.unresolved.len() > 1 {
                        ", ..."
                    } else {
                        ""
                    }
                ),
            });
        }
        Ok(())
    }
}

/// Where a [`gradcheck_with_progress`] run stands, given before each tensor is differenced:
/// a check of many coordinates takes a while (each coordinate costs two or more f64 forward
/// passes), and a caller may show how far it got.
#[derive(Clone, Debug, PartialEq)]
pub struct GradcheckProgress<'a> {
    /// The tensor about to be checked, 1-based among `tensors`.
    pub tensor: usize,
    /// Tensors to check (the skipped key biases not counted).
    pub tensors: usize,
    /// Its name.
    pub name: &'a str,
    /// Coordinates it will difference: `samples`, or all of a smaller tensor.
    pub coordinates: usize,
    /// Coordinates of the tensors checked before it.
    pub coordinates_done: usize,
    /// Coordinates of all the tensors together.
    pub planned_coordinates: usize,
}

/// What is wrong with a tolerance for [`GradcheckReport::within`] (`None`: a positive number),
/// for callers that refuse it before the check runs, naming their own setting.
pub fn tolerance_problem(tolerance: f64) -> Option<String> {
    (!(tolerance.is_finite() && tolerance > 0.0))
        .then(|| format!("{tolerance}: expected a positive finite number, such as 1e-4"))
}

/// The finite differences' step, relative to a coordinate's size (at least 1). With
/// [`derivative`]'s extrapolation the truncation error shrinks as h⁴ rather than h², so the
/// step can be large enough that rounding (~1e-16 of the loss, divided by h: ~1e-12) stays
/// near 1e-8 of a gradient of 1e-4. A plain central difference at 1e-6 had left the f64
/// reference itself ~1e-6 off on small gradients (rounding), and one at 1e-4 as far off on
/// strongly curved ones (truncation).
const STEP: f64 = 1e-4;

/// The derivative at 0 of `f(d)`: central differences at `h` and `h / 2` combined by
/// Richardson extrapolation, which cancels their h² error terms.
fn derivative(h: f64, mut f: impl FnMut(f64) -> Result<f64>) -> Result<f64> {
    let mut central = |h: f64| -> Result<f64> { Ok((f(h)? - f(-h)?) / (2.0 * h)) };
    let (coarse, fine) = (central(h)?, central(h / 2.0)?);
    Ok((4.0 * fine - coarse) / 3.0)
}

/// How much closer to a kink the retries of [`settled_derivative`] step, one after the other.
const SHRINKS: [f64; 2] = [1e-2, 1e-4];

/// [`derivative`] at step `h`, looked at again with smaller steps where it disagrees with the
/// `analytic` value, keeping the estimate nearest to it. A ReLU (DistilBERT's head) makes the
/// loss piecewise smooth: a difference whose step reaches across a kink is no derivative, and
/// its error can be 1e-2 on a right gradient; a smaller step misses the kink unless it lies
/// closer still. A wrong gradient disagrees at every step, so it still fails.
fn settled_derivative(
    h: f64,
    analytic: f64,
    floor: f64,
    mut f: impl FnMut(f64) -> Result<f64>,
) -> Result<f64> {
    let mut best = derivative(h, &mut f)?;
    for shrink in SHRINKS {
        let off = (analytic - best).abs();
        if off.is_nan() || off <= floor.max(1e-9 * analytic.abs().max(best.abs())) {
            break;
        }
        let closer = derivative(h * shrink, &mut f)?;
        if (analytic - closer).abs() < off {
            best = closer;
        }
    }
    Ok(best)
}

/// The rounding error of one evaluation of the loss, relative to its scale (`max(|L|, 1)`:
/// the log-sum-exp of logits of order one rounds at that size even where the loss is small):
/// a few ulps of each term summed into it, taken generously.
const LOSS_ROUNDING: f64 = 4.0 * f64::EPSILON;

/// How far [`derivative`] at step `h` can be off from rounding alone: each loss it takes off
/// by [`LOSS_ROUNDING`], weighted as the extrapolation weighs them (4/3 of a difference over
/// `h`, 1/3 of one over `2h`): 3 × that rounding / `h`. About 3e-11 at the step of 1e-4.
fn rounding_floor(h: f64, loss_scale: f64) -> f64 {
    3.0 * LOSS_ROUNDING * loss_scale / h
}

/// How far `diff` exceeds the finite differences' rounding `floor`, over `scale` (taken no
/// smaller than the floor): a difference within rounding scores 0, a gradient against finite
/// differences that saw nothing scores its size over that rounding, and a NaN on either side
/// stays NaN.
fn relative_error(diff: f64, scale: f64, floor: f64) -> f64 {
    if diff.is_nan() || scale.is_nan() {
        f64::NAN
    } else {
        let excess = (diff - floor).max(0.0);
        if excess == 0.0 {
            0.0
        } else {
            excess / scale.max(floor)
        }
    }
}

/// The larger of two errors, NaN if either is (`f64::max` would drop it).
fn worse(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

/// The coordinates to difference: the one with the largest analytic gradient (where a wrong
/// value shows most), then distinct random ones drawn without looking at the gradient, so
/// that a gradient wrongly zero is drawn as often as any other.
fn coordinates_to_check(g: &[f64], samples: usize, rng: &mut SplitMix) -> Vec<usize> {
    if g.is_empty() || samples == 0 {
        return Vec::new();
    }
    let largest = (0..g.len())
        .max_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs()))
        .unwrap_or(0);
    let wanted = samples.min(g.len());
    let mut chosen = vec![largest];
    if wanted * 2 >= g.len() {
        // Most of the tensor: a shuffle of all of it, rather than draws that mostly repeat.
        let mut all: Vec<usize> = (0..g.len()).filter(|&i| i != largest).collect();
        for k in (1..all.len()).rev() {
            all.swap(k, (rng.next_u64() % (k as u64 + 1)) as usize);
        }
        chosen.extend(all.into_iter().take(wanted - 1));
    } else {
        let mut seen = std::collections::HashSet::from([largest]);
        while chosen.len() < wanted {
            let c = (rng.next_u64() % g.len() as u64) as usize;
            if seen.insert(c) {
                chosen.push(c);
            }
        }
    }
    chosen
}

/// What the check of one tensor found.
#[derive(Debug)]
struct TensorCheck {
    /// Its error (see [`GradcheckReport::max_rel_err`]).
    err: f64,
    /// Coordinates differenced.
    coordinates: usize,
    /// The smallest relative error the finite differences could see in it (see
    /// [`GradcheckReport::resolution`]).
    resolution: f64,
    /// Whether the finite differences saw any gradient at all (see
    /// [`GradcheckReport::unresolved`]).
    resolved: bool,
}

/// The check of one tensor: `g` is the analytic gradient at `x`, `loss_at` the loss at other
/// values of the tensor (it is left at the last values tried), whose value at `x` is of the
/// size `loss_scale` (at least 1).
fn tensor_error(
    g: &[f64],
    x: &[f64],
    samples: usize,
    rng: &mut SplitMix,
    loss_scale: f64,
    loss_at: &mut impl FnMut(&[f64]) -> Result<f64>,
) -> Result<TensorCheck> {
    if x.is_empty() {
        return Ok(TensorCheck {
            err: 0.0,
            coordinates: 0,
            resolution: 0.0,
            resolved: true,
        });
    }
    let coords = coordinates_to_check(g, samples, rng);
    let (mut diff, mut norm, mut floor) = (0.0, 0.0, 0.0);
    for &i in &coords {
        let mut p = x.to_vec();
        let h = STEP * x[i].abs().max(1.0);
        let rounding = rounding_floor(h, loss_scale);
        let fd = settled_derivative(h, g[i], rounding, |d| {
            p[i] = x[i] + d;
            loss_at(&p)
        })?;
        diff += (g[i] - fd) * (g[i] - fd);
        norm += fd * fd;
        floor += rounding * rounding;
    }
    let (norm, floor) = (norm.sqrt(), floor.sqrt());
    let coordinate_err = relative_error(diff.sqrt(), norm, floor);
    // One random direction over every coordinate: the sampled coordinates see only a few
    // entries, so a gradient missing from part of a tensor (or all of it) shows here.
    let scale = (x.len() as f64).sqrt().recip();
    let v: Vec<f64> = (0..x.len())
        .map(|_| {
            if rng.next_u64() & 1 == 0 {
                scale
            } else {
                -scale
            }
        })
        .collect();
    // Relative to the tensor's length, and at least STEP per coordinate, as a coordinate's
    // step is at least STEP: a smaller one would leave small-valued tensors (biases, LoRA A)
    // with a rounding floor far above the coordinates'.
    let n = (x.len() as f64).sqrt();
    let t = STEP * x.iter().map(|a| a * a).sum::<f64>().sqrt().max(n);
    let analytic_along: f64 = g.iter().zip(&v).map(|(a, b)| a * b).sum();
    let along_floor = rounding_floor(t, loss_scale);
    let fd_along = settled_derivative(t, analytic_along, along_floor, |d| {
        let shifted: Vec<f64> = x.iter().zip(&v).map(|(a, b)| a + d * b).collect();
        loss_at(&shifted)
    })?;
    // A random direction's derivative is typically the gradient's root mean square.
    let along_scale = fd_along.abs().max(root_mean_square(g));
    let direction_err = relative_error((analytic_along - fd_along).abs(), along_scale, along_floor);
    // Each part resolves what its finite differences saw: coordinates that were all zero to
    // rounding (a sparse gradient's) leave the direction to say how fine the check was.
    let coordinate_resolution = (norm > floor).then(|| floor / norm);
    let direction_resolution = (fd_along.abs() > along_floor).then(|| along_floor / along_scale);
    let resolutions = coordinate_resolution
        .into_iter()
        .chain(direction_resolution);
    Ok(TensorCheck {
        err: worse(coordinate_err, direction_err),
        coordinates: coords.len(),
        resolution: resolutions.clone().fold(0.0, f64::max),
        resolved: resolutions.count() > 0,
    })
}

/// The loss a check differentiates: the head and the loss the trainer uses for one kind of
/// task, with labels made up for the check's inputs (which only have to be fixed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GradcheckObjective {
    /// Cross-entropy over `n ≥ 2` classes; input `i` has class `i mod n`.
    Classes(usize),
    /// Mean squared error of a one-output head (a regression, as STS-B's), against scores
    /// between 0 and 5.
    Regression,
    /// Binary cross-entropy of a sigmoid per class over `n ≥ 1` classes (multi-label); class
    /// `j` applies to input `i` where `i + j` is even.
    MultiLabel(usize),
}

/// More classes than a check's head needs: every class is the same code path, and the head's
/// f64 reference (and its gradient, and each forward pass) grows with them.
pub const MAX_GRADCHECK_LABELS: usize = 4096;

impl GradcheckObjective {
    /// The head's outputs.
    pub fn num_labels(self) -> usize {
        match self {
            GradcheckObjective::Classes(n) | GradcheckObjective::MultiLabel(n) => n,
            GradcheckObjective::Regression => 1,
        }
    }

    /// Why the head cannot be checked (`None`: it can), for callers that refuse it before
    /// the check runs, naming their own setting.
    pub fn problem(self) -> Option<String> {
        let n = self.num_labels();
        match self {
            GradcheckObjective::Classes(n) if n < 2 => Some(format!(
                "{n}: a classification head has at least 2 classes (a regression head has one \
                 output; so may a multi-label one)"
            )),
            GradcheckObjective::MultiLabel(0) => {
                Some("0: a multi-label head has at least 1 class".into())
            }
            _ if n > MAX_GRADCHECK_LABELS => Some(format!(
                "{n}: at most {MAX_GRADCHECK_LABELS} classes (every class is the same code \
                 path; each costs the check memory and time)"
            )),
            _ => None,
        }
    }

    /// The labels of `count` inputs on `backend`.
    fn labels<B: Backend>(self, backend: &B, count: usize) -> Result<Labels<B>> {
        Ok(match self {
            GradcheckObjective::Classes(n) => {
                let y: Vec<u32> = (0..count).map(|i| (i % n) as u32).collect();
                Labels::Classes(backend.tensor_from_u32(Shape::new([count]), &y)?)
            }
            GradcheckObjective::Regression => {
                // Spread over the range, none at the fresh head's output of about zero.
                let y: Vec<f64> = (0..count)
                    .map(|i| 0.5 + (i * 7 % 10) as f64 / 2.0)
                    .collect();
                Labels::Scores(backend.tensor_from_f64(Shape::new([count]), &y)?)
            }
            GradcheckObjective::MultiLabel(n) => {
                let y: Vec<f64> = (0..count * n)
                    .map(|k| f64::from(u8::from((k / n + k % n) % 2 == 0)))
                    .collect();
                Labels::MultiHot(backend.tensor_from_f64(Shape::new([count, n]), &y)?)
            }
        })
    }
}

impl std::fmt::Display for GradcheckObjective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GradcheckObjective::Classes(_) => "classification",
            GradcheckObjective::Regression => "regression",
            GradcheckObjective::MultiLabel(_) => "multi-label",
        })
    }
}

/// The most tokens of an input [`gradcheck_case`] checks.
pub const MAX_GRADCHECK_TOKENS: usize = 32;

/// What [`gradcheck_case`] checks: the inputs (single texts or pairs), the loss, and how.
#[derive(Clone, Debug, PartialEq)]
pub struct GradcheckCase<'a> {
    /// The batch, tokenized by the checkpoint's tokenizer (at most [`MAX_GRADCHECK_TOKENS`]
    /// tokens each, or the model's positions where it has fewer).
    pub inputs: Vec<TextInput<'a>>,
    /// The head and loss.
    pub objective: GradcheckObjective,
    /// Coordinates differenced per trainable tensor (all of a smaller one).
    pub samples: usize,
    /// Seed of the adapters, the fresh head, dropout and the sampled coordinates.
    pub seed: u64,
}

/// Checks the gradient of the loss on `texts` (labels alternate 0/1) with respect to every
/// trainable tensor, with dropout on at a fixed seed: at `samples` coordinates of each (the
/// largest analytic gradient, then random ones) and along one random direction through all of
/// its coordinates, so a gradient missing from a whole tensor is caught, and one missing from a
/// part of it in proportion to that part's share of the gradient. The analytic
/// gradients come from `device` (any backend, in its dtype), the central finite differences
/// from the f64 CPU reference on the same weights, adapters and dropout masks. Adapters start
/// random (not PEFT's zero B) so every gradient is non-trivial.
pub fn gradcheck<B: Backend>(
    device: &B,
    checkpoint: &Checkpoint,
    config: &PeftConfig,
    texts: &[&str],
    samples: usize,
    seed: u64,
) -> Result<GradcheckReport> {
    gradcheck_with_progress(
        device,
        checkpoint,
        config,
        texts,
        samples,
        seed,
        &mut |_| {},
    )
}

/// [`gradcheck`], calling `progress` before each tensor is checked.
pub fn gradcheck_with_progress<B: Backend>(
    device: &B,
    checkpoint: &Checkpoint,
    config: &PeftConfig,
    texts: &[&str],
    samples: usize,
    seed: u64,
    progress: &mut dyn FnMut(GradcheckProgress<'_>),
) -> Result<GradcheckReport> {
    let case = GradcheckCase {
        inputs: texts.iter().map(|t| TextInput::Single(t)).collect(),
        objective: GradcheckObjective::Classes(2),
        samples,
        seed,
    };
    gradcheck_case(device, checkpoint, config, &case, progress)
}

/// [`gradcheck_with_progress`] for any inputs and loss: sentence pairs (which reach the
/// token-type embeddings and the second segment's attention), a regression head or a
/// multi-label one, as the trainer would build them.
pub fn gradcheck_case<B: Backend>(
    device: &B,
    checkpoint: &Checkpoint,
    config: &PeftConfig,
    case: &GradcheckCase<'_>,
    progress: &mut dyn FnMut(GradcheckProgress<'_>),
) -> Result<GradcheckReport> {
    let GradcheckCase {
        inputs,
        objective,
        samples,
        seed,
    } = case;
    let (samples, seed, count) = (*samples, *seed, inputs.len());
    if inputs.is_empty() || samples == 0 {
        return Err(Error::invalid(
            "gradcheck",
            "needs at least one text and one sample per tensor",
        ));
    }
    if let Some(why) = objective.problem() {
        return Err(Error::invalid("gradcheck", why));
    }
    let num_labels = objective.num_labels();
    // Before the f64 reference's work: the device runs the backward too.
    device.check_attention_head_dim(checkpoint.config.head_dim(), true)?;
    let cpu = CpuBackend::f64();
    let mut model = BertClassifier::from_checkpoint(checkpoint, &cpu, num_labels, seed)?;
    let config = config.clone().for_family(checkpoint.config.family());
    let plan = PeftPlan::new(&config, checkpoint.config.num_hidden_layers)?;
    let mut rng = SplitMix::new(seed);
    model.apply_plan(&plan, &mut |_, shape: Shape| {
        let v: Vec<f64> = (0..shape.numel())
            .map(|_| rng.uniform_in(-0.05, 0.05))
            .collect();
        cpu.tensor_from_f64(shape, &v)
    })?;
    // DoRA's magnitudes start as PEFT starts them; the gradient the tape takes holds the
    // adapted rows' norms constant (PEFT detaches them), so the differences do too.
    model.initialise_dora_magnitudes(&cpu)?;
    model.hold_dora_norms(&cpu, true)?;
    // The adapters' own dropout where the plan has adapters (BERT's 0.1 on the rest).
    let lora_dropout = plan.lora_dropout();
    // A model of fewer positions checks the sentences cut to its table: gradcheck takes no
    // --max-len to say so.
    let cut = MAX_GRADCHECK_TOKENS.min(checkpoint.config.max_tokens());
    let tokenizer = checkpoint.tokenizer(cut)?;
    // Both texts of a pair keep a token only where the cut leaves two beside the special
    // tokens (the tokenizer's own refusal would point to a --max-len gradcheck refuses).
    let least = tokenizer.special_tokens(true) + 2;
    if inputs.iter().any(|i| matches!(i, TextInput::Pair(..))) && cut < least {
        return Err(Error::invalid(
            "gradcheck",
            format!(
                "the model's {cut} positions leave no room for both texts of a pair beside its \
                 special tokens: checking pairs needs {least} or more"
            ),
        ));
    }
    let encoded = tokenizer.encode_batch(inputs)?;
    let input = ModelInput::for_model(&cpu, &encoded, &checkpoint.config)?;
    let labels = objective.labels(&cpu, count)?;
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
    let mut on_device = BertClassifier::from_checkpoint_for_plan(
        checkpoint,
        device,
        num_labels,
        seed,
        &plan,
        &mut |name, shape: Shape| {
            let v = reference_values.get(name).ok_or_else(|| {
                Error::invalid("gradcheck", format!("no reference value for `{name}`"))
            })?;
            device.tensor_from_f64(shape, v)
        },
    )?;
    for p in on_device.params_mut().into_iter().filter(|p| p.trainable) {
        if let Some(v) = reference_values.get(&p.name) {
            p.value = device.tensor_from_f64(p.value.shape().clone(), v)?;
        }
    }
    let device_input = ModelInput::for_model(device, &encoded, &checkpoint.config)?;
    let device_labels = objective.labels(device, count)?;
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
        resolution: 0.0,
        least_resolved_tensor: String::new(),
        unresolved: Vec::new(),
        skipped: Vec::new(),
        key_bias_err: 0.0,
        key_bias_tensor: String::new(),
    };
    // The size the loss's rounding scales with (see [`LOSS_ROUNDING`]).
    let loss_scale = loss_of(&model)?.abs().max(1.0);
    // The key biases, gradient exactly zero, are not differenced (see below): but where
    // DeBERTa's position-to-content term reads each key against its distance's row, a key
    // bias moves the scores of a query unequally, and its gradient is differenced as any.
    let keys_read_by_position = model
        .config()
        .deberta()
        .is_some_and(|d| d.disentangles() && d.p2c);
    let is_checked =
        |name: &str| keys_read_by_position || !name.ends_with("attention.self.key.bias");
    let params = model.params();
    let checked: Vec<(&String, usize)> = names
        .iter()
        .filter(|n| is_checked(n))
        .map(|n| {
            let numel = params
                .iter()
                .find(|p| &p.name == n)
                .map_or(0, |p| p.value.shape().numel());
            (n, numel.min(samples))
        })
        .collect();
    drop(params);
    let planned_coordinates = checked.iter().map(|(_, c)| c).sum();
    for name in &names {
        if let Some(k) = checked.iter().position(|(n, _)| *n == name) {
            progress(GradcheckProgress {
                tensor: k + 1,
                tensors: checked.len(),
                name,
                coordinates: checked[k].1,
                coordinates_done: checked[..k].iter().map(|(_, c)| c).sum(),
                planned_coordinates,
            });
        }
        let g = device.to_f64(
            grads
                .get(name)
                .ok_or_else(|| Error::Autograd(format!("no gradient for {name}")))?,
        )?;
        if !is_checked(name) {
            // Its gradient is exactly zero (softmax ignores a per-query shift): finite
            // differences would compare rounding noise with rounding noise. What the device
            // gives is judged against its own scale instead: the same layer's query-bias
            // gradient, summed over the same tokens through the same attention (a right
            // backward pass cancels to rounding there; one that misses a term does not).
            report.skipped.push(name.clone());
            let query = name.replace("attention.self.key.bias", "attention.self.query.bias");
            let err = match grads.get(&query) {
                Some(q) => key_bias_error(&g, &device.to_f64(q)?),
                None if g.iter().all(|v| v.is_finite()) => 0.0,
                None => f64::NAN,
            };
            // A non-finite gradient is the worst error of all; a finite one is judged apart
            // from the differenced tensors (it has no finite differences' rounding to pass).
            if err.is_nan() {
                report.max_rel_err = f64::NAN;
                report.worst_tensor = name.clone();
            }
            if err.is_nan() || err > report.key_bias_err {
                report.key_bias_err = err;
                report.key_bias_tensor = name.clone();
            }
            continue;
        }
        let idx = model
            .params()
            .iter()
            .position(|p| &p.name == name)
            .expect("trainable name exists");
        let x = cpu.to_f64(&model.params()[idx].value)?;
        let dims = model.params()[idx].value.dims().to_vec();
        let mut loss_at = |values: &[f64]| -> Result<f64> {
            model.params_mut()[idx].value =
                cpu.tensor_from_f64(Shape::new(dims.clone()), values)?;
            loss_of(&model)
        };
        let check = tensor_error(&g, &x, samples, &mut rng, loss_scale, &mut loss_at)?;
        // Back to the weights every other tensor is checked at.
        model.params_mut()[idx].value = cpu.tensor_from_f64(Shape::new(dims), &x)?;
        report.tensors += 1;
        report.coordinates += check.coordinates;
        // A NaN (a NaN gradient or loss) is the worst error, never skipped by the comparison;
        // where every error is 0 no tensor is the worst.
        if check.err.is_nan() || check.err > report.max_rel_err {
            report.max_rel_err = check.err;
            report.worst_tensor = name.clone();
        }
        if !check.resolved {
            report.unresolved.push(name.clone());
        } else if check.resolution > report.resolution {
            report.resolution = check.resolution;
            report.least_resolved_tensor = name.clone();
        }
    }
    Ok(report)
}

/// The root mean square of `g` (0 for none).
fn root_mean_square(g: &[f64]) -> f64 {
    (g.iter().map(|v| v * v).sum::<f64>() / g.len().max(1) as f64).sqrt()
}

/// A key bias's gradient (exactly zero in exact arithmetic) over the root mean square of the
/// same layer's query-bias gradient: rounding where the backward pass is right. NaN for a
/// non-finite gradient; 0 where both are zero (no gradient reaches the layer).
fn key_bias_error(key: &[f64], query: &[f64]) -> f64 {
    let (k, q) = (root_mean_square(key), root_mean_square(query));
    match (k.is_finite() && q.is_finite(), k == 0.0) {
        (false, _) => f64::NAN,
        (true, true) => 0.0,
        (true, false) => k / q,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key bias's gradient is judged against its layer's query bias: rounding passes, a
    /// gradient of the query bias's size (a backward pass that lost softmax's row term)
    /// scores about 1, a non-finite one NaN.
    #[test]
    fn key_bias_gradients_are_judged_against_the_query_bias() {
        let query = [0.3, -0.4, 0.5, -0.1];
        let rounding = [1e-9, -2e-9, 0.0, 1e-9];
        assert!(key_bias_error(&rounding, &query) < 1e-8);
        let lost_term = [0.2, 0.1, -0.5, 0.3];
        assert!(key_bias_error(&lost_term, &query) > 0.5);
        assert!(key_bias_error(&[f64::INFINITY, 0.0], &query).is_nan());
        assert!(key_bias_error(&[f64::NAN, 0.0], &query).is_nan());
        assert_eq!(key_bias_error(&[0.0; 4], &[0.0; 4]), 0.0);
        assert!(key_bias_error(&[1e-3; 4], &[0.0; 4]).is_infinite());
    }

    /// A smooth loss of 200 coordinates whose gradient is known in closed form.
    fn loss(x: &[f64]) -> f64 {
        x.iter()
            .enumerate()
            .map(|(i, &a)| (a * (1.0 + i as f64 * 0.01)).sin() + 0.5 * a * a * a)
            .sum::<f64>()
            .ln_1p()
    }

    fn gradient(x: &[f64]) -> Vec<f64> {
        let inner = 1.0 + loss(x).exp_m1();
        x.iter()
            .enumerate()
            .map(|(i, &a)| {
                let c = 1.0 + i as f64 * 0.01;
                (c * (a * c).cos() + 1.5 * a * a) / inner
            })
            .collect()
    }

    fn error_of(g: &[f64], x: &[f64], samples: usize) -> f64 {
        check_of(g, x, samples, 1.0).err
    }

    /// The check of `g` against `loss` times `size` (plus a constant, so that the loss stays
    /// of order one while its gradient is `size` times [`gradient`]'s).
    fn check_of(g: &[f64], x: &[f64], samples: usize, size: f64) -> TensorCheck {
        let mut rng = SplitMix::new(3);
        let scaled = |v: &[f64]| 0.7 + size * loss(v);
        let loss_scale = scaled(x).abs().max(1.0);
        tensor_error(g, x, samples, &mut rng, loss_scale, &mut |v: &[f64]| {
            Ok(scaled(v))
        })
        .unwrap()
    }

    /// A right gradient of 1e-8 per coordinate is one rounding (~1e-12 of a loss of order
    /// one) away from its finite differences: it agrees, with a resolution that says how
    /// little the check could see; a wrong one of that size still fails. A gradient below
    /// the rounding is unresolved: zero agrees, a real gradient against it fails.
    #[test]
    fn small_gradients_are_judged_against_the_rounding_of_the_loss() {
        let x: Vec<f64> = (0..200)
            .map(|i| ((i * 37 % 101) as f64 - 50.0) / 80.0)
            .collect();
        assert!(loss(&x).is_finite());
        let small: Vec<f64> = gradient(&x).iter().map(|a| a * 1e-8).collect();
        let right = check_of(&small, &x, 4, 1e-8);
        assert!(right.resolved && right.err < 1e-8, "{right:?}");
        assert!(
            right.resolution > 1e-4 && right.resolution < 0.1,
            "{right:?}"
        );
        let doubled: Vec<f64> = small.iter().map(|a| 2.0 * a).collect();
        let wrong = check_of(&doubled, &x, 4, 1e-8);
        assert!(wrong.err > 0.5, "{wrong:?}");

        let tiny: Vec<f64> = gradient(&x).iter().map(|a| a * 1e-14).collect();
        let unseen = check_of(&tiny, &x, 4, 1e-14);
        assert!(!unseen.resolved && unseen.err == 0.0, "{unseen:?}");
        let zero = check_of(&vec![0.0; 200], &x, 4, 1e-14);
        assert!(!zero.resolved && zero.err == 0.0, "{zero:?}");
        let invented = check_of(&gradient(&x), &x, 4, 1e-14);
        assert!(invented.err > 1e3, "{invented:?}");
        // A normal gradient is resolved far below any tolerance.
        let normal = check_of(&gradient(&x), &x, 4, 1.0);
        assert!(normal.resolved && normal.resolution < 1e-8, "{normal:?}");
    }

    #[test]
    fn agrees_with_a_right_gradient_and_catches_wrong_ones() {
        let x: Vec<f64> = (0..200)
            .map(|i| ((i * 37 % 101) as f64 - 50.0) / 80.0)
            .collect();
        let g = gradient(&x);
        let right = error_of(&g, &x, 2);
        assert!(right < 1e-8, "a right gradient: {right:e}");
        // All of it missing: total disagreement, though no analytic coordinate is non-zero.
        assert!(error_of(&vec![0.0; 200], &x, 2) > 0.5);
        // A quarter of it missing, away from the largest coordinate: the random coordinate
        // may miss the hole, the random direction through every coordinate does not (its
        // error scales with the missing part's share of the gradient, times a random factor:
        // far above a right gradient's, and above the tolerance of 1e-4 the help suggests).
        let largest = (0..200)
            .max_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs()))
            .unwrap();
        let hole = if largest < 100 { 100..150 } else { 0..50 };
        let mut holed = g.clone();
        holed[hole].iter_mut().for_each(|a| *a = 0.0);
        let holed_err = error_of(&holed, &x, 2);
        assert!(
            holed_err > 1e-3,
            "a gradient missing a quarter: {holed_err:e}"
        );
        // A sign error in one coordinate, the largest, which is always sampled.
        let mut flipped = g.clone();
        flipped[largest] = -flipped[largest];
        assert!(error_of(&flipped, &x, 1) > 1.0);
    }

    /// A ReLU's kink within the step of every coordinate: the loss `Σ relu(x_i − k_i)` with
    /// each `k_i` 3e-5 from `x_i`, inside the first step (1e-4) but outside the smaller ones.
    /// A right gradient agrees once the step has shrunk; a wrong one still fails.
    #[test]
    fn a_kink_within_the_step_does_not_fail_a_right_gradient() {
        let x: Vec<f64> = (0..40).map(|i| (i as f64 - 20.0) / 13.0).collect();
        let kink: Vec<f64> = x
            .iter()
            .enumerate()
            .map(|(i, a)| a + if i % 2 == 0 { 3e-5 } else { -3e-5 })
            .collect();
        let relu_loss = |v: &[f64]| -> Result<f64> {
            Ok(v.iter().zip(&kink).map(|(a, k)| (a - k).max(0.0)).sum())
        };
        let g: Vec<f64> = x.iter().zip(&kink).map(|(a, k)| f64::from(a > k)).collect();
        let mut rng = SplitMix::new(5);
        let right = tensor_error(&g, &x, 40, &mut rng, 1.0, &mut |v: &[f64]| relu_loss(v))
            .unwrap()
            .err;
        assert!(right < 1e-8, "a right gradient across kinks: {right:e}");
        // Without the retries a central difference across the kink is off by ~0.35.
        let plain = derivative(STEP, |d| {
            let mut p = x.clone();
            p[0] += d;
            relu_loss(&p)
        })
        .unwrap();
        assert!((plain - g[0]).abs() > 0.1, "{plain}");
        let mut wrong = g.clone();
        wrong[7] = 1.0 - wrong[7];
        let mut rng = SplitMix::new(5);
        let err = tensor_error(&wrong, &x, 40, &mut rng, 1.0, &mut |v: &[f64]| relu_loss(v))
            .unwrap()
            .err;
        assert!(err > 0.1, "a wrong gradient: {err:e}");
    }

    #[test]
    fn draws_distinct_coordinates_whatever_the_gradient() {
        let mut rng = SplitMix::new(0);
        let zeros = vec![0.0; 50];
        for samples in [1, 10, 25, 40, 50, 1000] {
            let c = coordinates_to_check(&zeros, samples, &mut rng);
            let distinct: std::collections::HashSet<_> = c.iter().collect();
            assert_eq!(c.len(), samples.min(50), "{samples}");
            assert_eq!(distinct.len(), c.len(), "{samples}: {c:?}");
        }
    }

    #[test]
    fn noise_against_zero_agrees_and_a_real_difference_does_not() {
        let floor = rounding_floor(STEP, 1.0);
        assert!(floor > 1e-11 && floor < 1e-9, "{floor:e}");
        assert_eq!(relative_error(1e-12, 0.0, floor), 0.0);
        assert_eq!(relative_error(1e-12, 1e-3, floor), 0.0);
        assert!(relative_error(1e-3, 0.0, floor) > 1e6);
        assert!((relative_error(1e-3, 1e-1, floor) - 1e-2).abs() < 1e-8);
        assert!(relative_error(f64::NAN, 1.0, floor).is_nan());
        assert!(relative_error(0.0, f64::NAN, floor).is_nan());
        assert!(worse(1e-9, f64::NAN).is_nan() && worse(f64::NAN, 1e-9).is_nan());
    }

    #[test]
    fn a_nan_gradient_or_loss_is_never_a_pass() {
        let x: Vec<f64> = (0..20).map(|i| i as f64 / 40.0).collect();
        let mut g = gradient(&x);
        g[7] = f64::NAN;
        assert!(error_of(&g, &x, 2).is_nan(), "a NaN analytic gradient");
        let mut rng = SplitMix::new(1);
        let err = tensor_error(&gradient(&x), &x, 2, &mut rng, 1.0, &mut |_: &[f64]| {
            Ok(f64::NAN)
        })
        .unwrap()
        .err;
        assert!(err.is_nan(), "a NaN loss: {err}");
        let report = GradcheckReport {
            tensors: 1,
            coordinates: 2,
            max_rel_err: err,
            worst_tensor: "t".into(),
            resolution: 0.0,
            least_resolved_tensor: String::new(),
            unresolved: Vec::new(),
            skipped: Vec::new(),
            key_bias_err: 0.0,
            key_bias_tensor: String::new(),
        };
        assert!(report.within(1e300).is_err());
    }

    /// A check that could not see errors as small as the tolerance vouches for nothing there:
    /// neither a pass nor a mismatch.
    #[test]
    fn a_check_coarser_than_the_tolerance_is_inconclusive() {
        let report = GradcheckReport {
            tensors: 2,
            coordinates: 4,
            max_rel_err: 0.0,
            worst_tensor: String::new(),
            resolution: 1e-3,
            least_resolved_tensor: "small".into(),
            unresolved: Vec::new(),
            skipped: Vec::new(),
            key_bias_err: 0.0,
            key_bias_tensor: String::new(),
        };
        assert!(matches!(
            report.within(1e-4),
            Err(Error::GradcheckInconclusive { .. })
        ));
        assert!(report.within(1e-2).is_ok());
        // A key bias's gradient above the tolerance fails, named.
        let key = GradcheckReport {
            key_bias_err: 0.5,
            key_bias_tensor: "k".into(),
            ..report.clone()
        };
        let e = key.within(1e-2).unwrap_err();
        assert!(
            matches!(&e, Error::KeyBiasGradient { tensor, .. } if tensor == "k"),
            "{e}"
        );
        let unresolved = GradcheckReport {
            unresolved: vec!["zero".into()],
            ..report.clone()
        };
        let e = unresolved.within(1e-2).unwrap_err();
        assert!(
            matches!(&e, Error::GradcheckInconclusive { detail, .. } if detail.contains("zero")),
            "{e}"
        );
        // A mismatch is said as one, whatever the resolution.
        let wrong = GradcheckReport {
            max_rel_err: 0.5,
            worst_tensor: "wrong".into(),
            ..unresolved
        };
        assert!(matches!(
            wrong.within(1e-2),
            Err(Error::GradientMismatch { .. })
        ));
    }

    /// Each objective's head size and labels: the classes a head of that kind can have, and
    /// labels that differ between inputs (a constant label would leave the check blind to a
    /// loss that ignores them).
    #[test]
    fn objectives_give_their_heads_and_labels() {
        use GradcheckObjective::*;
        assert!(Classes(1).problem().is_some() && Classes(2).problem().is_none());
        assert!(MultiLabel(0).problem().is_some() && MultiLabel(1).problem().is_none());
        assert!(Regression.problem().is_none() && Regression.num_labels() == 1);
        let too_many = MAX_GRADCHECK_LABELS + 1;
        assert!(Classes(too_many).problem().is_some());
        assert!(MultiLabel(too_many).problem().is_some());
        let cpu = CpuBackend::f64();
        let Labels::Classes(y) = Classes(3).labels(&cpu, 4).unwrap() else {
            panic!("class ids")
        };
        assert_eq!(cpu.to_u32(&y).unwrap(), [0, 1, 2, 0]);
        let Labels::Scores(y) = Regression.labels(&cpu, 4).unwrap() else {
            panic!("scores")
        };
        let scores = cpu.to_f64(&y).unwrap();
        assert!(scores.iter().all(|s| (0.0..=5.0).contains(s)), "{scores:?}");
        assert!(scores.windows(2).all(|w| w[0] != w[1]), "{scores:?}");
        let Labels::MultiHot(y) = MultiLabel(3).labels(&cpu, 2).unwrap() else {
            panic!("multi-hot")
        };
        assert_eq!(y.dims(), [2, 3]);
        assert_eq!(cpu.to_f64(&y).unwrap(), [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]);
    }

    #[test]
    fn empty_tensors_have_nothing_to_difference() {
        let mut rng = SplitMix::new(0);
        assert!(coordinates_to_check(&[], 3, &mut rng).is_empty());
        let check = tensor_error(&[], &[], 3, &mut rng, 1.0, &mut |_: &[f64]| Ok(0.0)).unwrap();
        assert_eq!((check.err, check.coordinates), (0.0, 0));
    }
}
