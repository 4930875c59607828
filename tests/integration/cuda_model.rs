//! The whole model on the CUDA backend (a GPU, else the CPU stand-in): a tiny random BERT
//! (hidden 15, 3 heads of 5, 3 layers: no size a multiple of 16) under all four methods,
//! classification and regression, with dropout on. Logits, loss and every trainable gradient
//! must equal the f64 CPU reference (f32 ≤ 1e-4; bf16 mixed precision, frozen weights stored
//! in bf16, ≤ 2e-2 relative), the tape must record exactly what it records on the CPU (no
//! node for a frozen stratum), training must be bitwise reproducible, and the stand-in's fiber
//! order must not change a single bit.
//! Each compared quantity prints an `XM` line for the GPU check's table.

use crate::common;

use common::{rel_err, tensor, tiny_bert};
use spafit::autograd::{Gradients, Tape, TapeStats};
use spafit::backend::cpu::CpuBackend;
use spafit::backend::cuda::{emulator, CudaBackend, Driver};
use spafit::backend::Backend;
use spafit::model::{BertClassifier, BertModel, Labels, ModelInput};
use spafit::nn::{DropoutPlan, Linear, LoraConfig, LoraTarget};
use spafit::peft::{peft_lora_init, Boundary, Method, PeftConfig, PeftPlan};
use spafit::tensor::{DType, Shape, Tensor};
use spafit::text::EncodedBatch;
use spafit::train::AdamW;

fn cuda(dtype: DType) -> CudaBackend {
    CudaBackend::hardware_or_emulated(dtype)
        .map(CudaBackend::with_poisoned_outputs)
        .unwrap_or_else(|e| panic!("no CUDA backend, not even the CPU stand-in: {e}"))
}

/// Two sequences of 7 tokens; the second a pair with a padded tail of three.
fn batch() -> EncodedBatch {
    EncodedBatch {
        input_ids: vec![2, 5, 9, 14, 3, 27, 1, 2, 8, 1, 20, 1, 0, 0],
        token_type_ids: vec![0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0],
        attention_mask: vec![1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        batch: 2,
        seq: 7,
    }
}

fn config_for(method: Method) -> PeftConfig {
    let mut c = PeftConfig::new(method);
    c.lora = LoraConfig {
        rank: 2,
        alpha: 3.0,
        dropout: 0.2,
        targets: match method {
            Method::Lora => vec![LoraTarget::Query, LoraTarget::Value, LoraTarget::Output],
            _ => LoraTarget::ALL.to_vec(),
        },
        overrides: Vec::new(),
        unadapted: Vec::new(),
        dora: false,
    };
    if method == Method::Lora {
        c.lora_layers = Some(vec![0, 2]);
        c.lora.overrides = tiny_bert::mixed_rank_overrides();
        // Without adapter dropout the fused dX path (LoRA term as extra K columns) runs.
        c.lora.dropout = 0.0;
    }
    c.n1 = Boundary::Layer(1);
    c.n2 = Boundary::Layer(2);
    if method == Method::Spafit {
        c.train_pooler = true;
        c.train_layer_norm_weights = true;
    }
    c
}

/// The tiny model on `backend` with `method`, built from the same values on every backend:
/// values a bf16 tensor holds exactly, so the bf16 comparison measures the computation, not
/// the rounding of the weights into storage.
fn model<B: Backend>(backend: &B, method: Method, num_labels: usize) -> BertClassifier<B> {
    model_of(
        backend,
        tiny_bert::config(3),
        method,
        num_labels,
        Weights::AsDrawn,
    )
}

/// How [`model_of`] sizes its weight matrices.
#[derive(Clone, Copy)]
enum Weights {
    /// As `tiny_bert::tensors` draws them (±0.05 to ±0.5), for a 15-wide model.
    AsDrawn,
    /// Scaled by √(4 / fan-in), the classifier's too: a wider model's products then stay of
    /// the tiny model's size, as initialisation keeps a real model's, where drawn as is they
    /// grow with the width until softmax, tanh and the loss saturate and f32's rounding is
    /// amplified far beyond what the kernels decide.
    ByFanIn,
}

/// [`model`] of another (3-layer) configuration.
fn model_of<B: Backend>(
    backend: &B,
    config: spafit::checkpoint::BertConfig,
    method: Method,
    num_labels: usize,
    weights: Weights,
) -> BertClassifier<B> {
    model_under(backend, config, &config_for(method), num_labels, weights)
}

/// [`model_of`] under a PEFT configuration of one's own.
fn model_under<B: Backend>(
    backend: &B,
    config: spafit::checkpoint::BertConfig,
    peft: &PeftConfig,
    num_labels: usize,
    weights: Weights,
) -> BertClassifier<B> {
    let hidden = config.hidden_size;
    let scale = |fan_in: usize| match weights {
        Weights::AsDrawn => 1.0,
        Weights::ByFanIn => (4.0 / fan_in as f64).sqrt(),
    };
    let mut tensors = tiny_bert::tensors(&config, 42);
    for (name, (shape, values)) in tensors.iter_mut() {
        let matrix = shape.len() == 2 && !name.contains("embeddings.");
        let factor = if matrix { scale(shape[1]) } else { 1.0 };
        for v in values.iter_mut() {
            *v = half::bf16::from_f64(*v * factor).to_f64();
        }
    }
    let mut source = tiny_bert::source(backend, &tensors);
    let bert = BertModel::load(&config, &mut source).unwrap();
    let head = Linear::new(
        "classifier",
        tensor(
            backend,
            &[num_labels, hidden],
            &common::nonzero(&mut spafit::rng::SplitMix::new(7), num_labels * hidden)
                .iter()
                .map(|&v| half::bf16::from_f64(v * scale(hidden)).to_f64())
                .collect::<Vec<_>>(),
        ),
        tensor(backend, &[num_labels], &vec![0.05; num_labels]),
    )
    .unwrap();
    let mut model = BertClassifier::new(bert, head, num_labels).unwrap();
    let plan = PeftPlan::new(peft, 3).unwrap();
    let reference = CpuBackend::f64();
    let mut init = tiny_bert::random_init(&reference, 9);
    model
        .apply_plan(&plan, &mut |name, shape| {
            let v = reference.to_f64(&init(name, shape.clone())?)?;
            let rounded: Vec<f64> = v
                .iter()
                .map(|&x| half::bf16::from_f64(x).to_f64())
                .collect();
            backend.tensor_from_f64(shape, &rounded)
        })
        .unwrap();
    model.store_frozen_weights(backend).unwrap();
    model
}

fn labels<B: Backend>(backend: &B, num_labels: usize) -> Labels<B> {
    if num_labels == 1 {
        Labels::Scores(tensor(backend, &[2], &[0.7, -1.2]))
    } else {
        Labels::Classes(backend.tensor_from_u32(Shape::new([2]), &[2, 0]).unwrap())
    }
}

/// Logits, loss, gradients (host copies) and the tape's counters of one training step.
type Step = (Vec<f64>, f64, Vec<(String, Vec<f64>)>, TapeStats);

fn step<B: Backend>(backend: &B, model: &BertClassifier<B>, num_labels: usize) -> Step {
    step_with(
        backend,
        model,
        num_labels,
        DropoutPlan::train(0.1, 0.1, 0.2, 77),
    )
}

fn step_with<B: Backend>(
    backend: &B,
    model: &BertClassifier<B>,
    num_labels: usize,
    dropouts: DropoutPlan,
) -> Step {
    step_on(
        backend,
        model,
        &batch(),
        &labels(backend, num_labels),
        dropouts,
    )
}

/// [`step_with`] on a batch and labels of one's own.
fn step_on<B: Backend>(
    backend: &B,
    model: &BertClassifier<B>,
    batch: &EncodedBatch,
    labels: &Labels<B>,
    mut dropouts: DropoutPlan,
) -> Step {
    let input = ModelInput::new(backend, batch).unwrap();
    let mut tape = Tape::new(backend.clone());
    let logits = model.forward(&mut tape, &input, &mut dropouts).unwrap();
    let loss = model.loss(&mut tape, &logits, labels).unwrap();
    let grads: Gradients<B> = tape.backward(&loss).unwrap();
    let stats = tape.stats().clone();
    (
        backend.to_f64(logits.value()).unwrap(),
        backend.to_f64(loss.value()).unwrap()[0],
        grads
            .iter()
            .map(|(n, g)| (n.to_string(), backend.to_f64(g).unwrap()))
            .collect(),
        stats,
    )
}

fn compare<B: Backend>(b: &B, what: &str, got: &[f64], want: &[f64], tol: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}");
    if let Some(i) = got.iter().position(|v| !v.is_finite()) {
        panic!("{what} on {}: element {i} is {}", b.name(), got[i]);
    }
    // A gradient that is zero in exact arithmetic (the key bias: softmax ignores a
    // per-query shift) is compared by magnitude instead.
    let e = if want.iter().all(|v| v.abs() < 1e-12) {
        got.iter().map(|v| v.abs()).fold(0.0, f64::max)
    } else {
        rel_err(got, want)
    };
    assert!(
        e <= tol,
        "{what} on {}: relative error {e:e} > {tol:e}",
        b.name()
    );
    e
}

/// The error PyTorch's own bf16 autocast has on the same tiny model (dropout off), per case
/// and quantity: `tests/fixtures/tiny-bert-bf16/torch_errors.json`, written by
/// `scripts/bf16_error_floor.py`.
fn torch_bf16_errors() -> &'static serde_json::Value {
    static ERRORS: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    // Compiled in, so the test binary carried to a GPU machine has it too.
    ERRORS.get_or_init(|| {
        serde_json::from_str(include_str!("../fixtures/tiny-bert-bf16/torch_errors.json")).unwrap()
    })
}

/// How a case is compared: a fixed tolerance, or (bf16) the larger of 2e-2 and twice the
/// error PyTorch's bf16 autocast makes on the same model — for the logits, the loss, and over
/// all gradients its worst one (which tensor's gradient rounding hits hardest varies between
/// two correct bf16 implementations; the worst over all of them is the stable measure).
#[derive(Clone, Copy)]
enum Tolerance {
    Fixed(f64),
    Bf16,
}

impl Tolerance {
    fn for_quantity(self, case: &str, quantity: &str) -> (f64, Option<f64>) {
        match self {
            Tolerance::Fixed(t) => (t, None),
            Tolerance::Bf16 => {
                let c = &torch_bf16_errors()["cases"][case];
                let torch = match quantity {
                    "logits" | "loss" => c[quantity].as_f64(),
                    grad => c["grads"][grad].as_f64().and(c["worst_grad"].as_f64()),
                }
                .unwrap_or_else(|| panic!("no calibration for {case} {quantity}"));
                ((2.0 * torch).max(2e-2), Some(torch))
            }
        }
    }
}

fn parity<B: Backend>(method: Method, num_labels: usize, b: B, tolerance: Tolerance) {
    let cpu = CpuBackend::f64();
    // bf16 is compared with dropout off, as its calibration was measured.
    let dropouts = || match tolerance {
        Tolerance::Fixed(_) => DropoutPlan::train(0.1, 0.1, 0.2, 77),
        Tolerance::Bf16 => DropoutPlan::eval(),
    };
    let (lr, lossr, gr, sr) = step_with(
        &cpu,
        &model(&cpu, method, num_labels),
        num_labels,
        dropouts(),
    );
    let (lb, lossb, gb, sb) = step_with(&b, &model(&b, method, num_labels), num_labels, dropouts());
    let tag = format!("{method}/{num_labels}-label");
    let case = format!("{method}_{num_labels}");
    let mut worst_margin = 0.0f64;
    let mut check = |what: &str, got: &[f64], want: &[f64]| {
        let (tol, torch) = tolerance.for_quantity(&case, what);
        let e = compare(&b, &format!("{tag} {what}"), got, want, tol);
        if let (Some(t), "logits" | "loss") = (torch, what) {
            println!(
                "BF16 {case} {what}: ours {e:.3e}, PyTorch autocast {t:.3e}, allowed {tol:.3e}"
            );
        }
        worst_margin = worst_margin.max(e / tol);
        e
    };
    let mut worst = check("logits", &lb, &lr);
    worst = worst.max(check("loss", &[lossb], &[lossr]));
    assert_eq!(
        gb.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        gr.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        "{tag}: the same trainable tensors get gradients"
    );
    let mut worst_grad = (0.0f64, String::new());
    for ((name, g), (_, w)) in gb.iter().zip(&gr) {
        let e = check(name, g, w);
        if e >= worst_grad.0 {
            worst_grad = (e, name.clone());
        }
    }
    worst = worst.max(worst_grad.0);
    if let Tolerance::Bf16 = tolerance {
        let torch = torch_bf16_errors()["cases"][&case]["worst_grad"]
            .as_f64()
            .unwrap();
        println!(
            "BF16 {case} worst gradient: ours {:.3e} ({}), PyTorch autocast {torch:.3e}",
            worst_grad.0, worst_grad.1
        );
    }
    // The tape records the same nodes and gradient buffers, and nothing in frozen strata.
    assert_eq!(sb.nodes, sr.nodes, "{tag}: nodes");
    assert_eq!(sb.grad_buffers, sr.grad_buffers, "{tag}: gradient buffers");
    for (scope, s) in sr.scopes() {
        assert_eq!(
            b_scope(&sb, scope),
            s.nodes,
            "{tag}: nodes in scope {scope}"
        );
    }
    if method == Method::Spafit {
        assert_eq!(
            sb.scope("layer.0").nodes,
            0,
            "the frozen stratum records nothing"
        );
        assert_eq!(sb.scope("layer.0").saved_activation_bytes, 0);
    }
    println!(
        "XM {tag} {} {worst:.3e} PASS worst gradient {} ({:.3e}), {} nodes, worst error / allowed {worst_margin:.2}",
        b.name(),
        worst_grad.1,
        worst_grad.0,
        sb.nodes
    );
}

/// DoRA adapters under LoRA and SPAFIT (magnitudes drawn, so no column's scale is one),
/// with the adapters' dropout on (the base map of the input's kept part beside the scaled
/// map of its dropped copy) and off: a step on CUDA against the f64 reference (f32 ≤ 1e-4;
/// bf16 mixed precision, dropout off, within the bounds calibrated on PyTorch's autocast for
/// the method's plain LoRA adapters; the CPU's bf16 mode too), the tape recording the same
/// nodes.
#[test]
fn dora_matches_the_f64_reference() {
    dora_parity(&cuda(DType::F32), Tolerance::Fixed(1e-4), 0.0);
    dora_parity(&cuda(DType::F32), Tolerance::Fixed(1e-4), 0.2);
    dora_parity(&cuda(DType::BF16), Tolerance::Bf16, 0.0);
    dora_parity(&CpuBackend::bf16(), Tolerance::Bf16, 0.0);
}

fn dora_parity<B: Backend>(b: &B, tolerance: Tolerance, lora_dropout: f64) {
    let cpu = CpuBackend::f64();
    for method in [Method::Lora, Method::Spafit] {
        let mut peft = config_for(method);
        peft.lora.dora = true;
        let config = tiny_bert::config(3);
        let reference = model_under(&cpu, config.clone(), &peft, 3, Weights::AsDrawn);
        let tested = model_under(b, config, &peft, 3, Weights::AsDrawn);
        let dropouts = || match tolerance {
            Tolerance::Fixed(_) => DropoutPlan::train(0.1, 0.1, lora_dropout, 77),
            Tolerance::Bf16 => DropoutPlan::eval(),
        };
        let case = format!("{method}_3");
        let tol = |what: &str| tolerance.for_quantity(&case, what).0;
        let (lr, lossr, gr, sr) = step_with(&cpu, &reference, 3, dropouts());
        let (lb, lossb, gb, sb) = step_with(b, &tested, 3, dropouts());
        let tag = format!("{method} DoRA, adapter dropout {lora_dropout}");
        let mut worst = compare(b, &format!("{tag} logits"), &lb, &lr, tol("logits"));
        let loss_error = compare(b, &format!("{tag} loss"), &[lossb], &[lossr], tol("loss"));
        worst = worst.max(loss_error);
        assert_eq!(
            gb.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            gr.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            "{tag}: the same trainable tensors get gradients"
        );
        assert!(gr.iter().any(|(n, _)| n.ends_with("lora_magnitude_vector")));
        for ((name, g), (_, w)) in gb.iter().zip(&gr) {
            // DoRA's magnitudes have no calibration of their own: their map's `B`'s (every
            // gradient's bound is the method's worst gradient's).
            let bound = tol(&name.replace("lora_magnitude_vector", "lora_B.weight"));
            worst = worst.max(compare(b, &format!("{tag} {name}"), g, w, bound));
        }
        assert_eq!(sb.nodes, sr.nodes, "{tag}: nodes");
        println!("XM {tag} {} {worst:.3e} PASS", b.name());
    }
}

fn b_scope(s: &TapeStats, scope: &str) -> usize {
    s.scope(scope).nodes
}

macro_rules! parity_tests {
    ($($name:ident: $method:expr),* $(,)?) => {$(
        mod $name {
            use super::*;

            #[test]
            fn f32_matches_the_f64_reference() {
                parity($method, 3, cuda(DType::F32), Tolerance::Fixed(1e-4));
                parity($method, 1, cuda(DType::F32), Tolerance::Fixed(1e-4));
            }

            #[test]
            fn bf16_matches_the_f64_reference() {
                parity($method, 3, cuda(DType::BF16), Tolerance::Bf16);
                parity($method, 1, cuda(DType::BF16), Tolerance::Bf16);
            }

            /// The CPU's bf16 mode: its frozen-weight products on bf16 operands.
            #[test]
            fn cpu_bf16_matches_the_f64_reference() {
                parity($method, 3, CpuBackend::bf16(), Tolerance::Bf16);
                parity($method, 1, CpuBackend::bf16(), Tolerance::Bf16);
            }
        }
    )*};
}

parity_tests!(
    full_fine_tuning: Method::Full,
    bitfit: Method::BitFit,
    lora: Method::Lora,
    spafit_strata: Method::Spafit,
);

/// Seeded random models beyond the tiny one: hidden widths, head counts and dims,
/// feed-forward widths, activations, vocabularies, positions, batches and padding drawn
/// anew, under each method with one to four outputs; a training step on CUDA in f32
/// (logits, loss and every gradient, with dropout) against the f64 reference, the weights
/// scaled to their fan-in ([`Weights::ByFanIn`]). A drawn model may still amplify f32's
/// rounding beyond the tiny model's: each quantity may err by 1e-4, or by ten times the
/// CPU's own f32 error on the same step where that is larger, never by more than 1e-2 (a
/// gradient that cancels to rounding noise, as the key bias's does, would otherwise allow
/// anything).
/// `SPAFIT_RANDOM_MODELS=N` draws N models (default 3), `SPAFIT_RANDOM_SEED=S` another draw;
/// a failure names the model.
#[test]
fn drawn_models_match_the_f64_reference() {
    let count = std::env::var("SPAFIT_RANDOM_MODELS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let seed: u64 = std::env::var("SPAFIT_RANDOM_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2026);
    let mut rng = spafit::rng::SplitMix::new(seed.wrapping_add(0x6d6f_6465));
    // 1..=hi, with the ends drawn more often than the rest.
    let mut draw = |hi: usize| -> usize {
        match rng.next_u64() % 8 {
            0 => 1,
            1 => hi,
            _ => 1 + (rng.next_u64() % hi as u64) as usize,
        }
    };
    let cpu = CpuBackend::f64();
    let cpu_f32 = CpuBackend::f32();
    let b = cuda(DType::F32);
    for _ in 0..count {
        let mut config = tiny_bert::config(3);
        config.num_attention_heads = draw(4);
        // LoRA's rank 2 needs maps of at least two rows and columns, and a LayerNorm over
        // two features gives ±1 whatever its input: no gradient passes it (the reference's
        // is rounding noise).
        let head_dim = draw(48).max(3usize.div_ceil(config.num_attention_heads));
        config.hidden_size = config.num_attention_heads * head_dim;
        config.intermediate_size = 1 + draw(160);
        config.vocab_size = 4 + draw(80);
        config.max_position_embeddings = 1 + draw(48);
        config.type_vocab_size = draw(2);
        config.hidden_act = ["gelu", "gelu_python", "relu"][draw(3) - 1].into();
        let method = [Method::Full, Method::BitFit, Method::Lora, Method::Spafit][draw(4) - 1];
        let num_labels = draw(4);
        let (rows, seq) = (draw(4), draw(config.max_position_embeddings));
        let mut batch = EncodedBatch {
            input_ids: Vec::new(),
            token_type_ids: Vec::new(),
            attention_mask: Vec::new(),
            batch: rows,
            seq,
        };
        for _ in 0..rows {
            let length = draw(seq);
            let second = match config.type_vocab_size {
                2 => draw(length + 1) - 1,
                _ => length,
            };
            for t in 0..seq {
                let real = t < length;
                batch.input_ids.push(match real {
                    true => draw(config.vocab_size) as u32 - 1,
                    false => 0,
                });
                batch.token_type_ids.push(u32::from(real && t >= second));
                batch.attention_mask.push(u32::from(real));
            }
        }
        let targets: Vec<usize> = (0..rows).map(|_| draw(num_labels) - 1).collect();
        let tag = format!(
            "{method}/{num_labels}-label, {} heads × {}, ffn {}, {}, vocab {}, {} types, batch {rows} × {seq} (seed {seed})",
            config.num_attention_heads,
            config.hidden_size / config.num_attention_heads,
            config.intermediate_size,
            config.hidden_act,
            config.vocab_size,
            config.type_vocab_size,
        );
        println!("model {tag}");
        let dropouts = || DropoutPlan::train(0.1, 0.1, 0.2, 77);
        let reference = step_on(
            &cpu,
            &model_of(&cpu, config.clone(), method, num_labels, Weights::ByFanIn),
            &batch,
            &drawn_labels(&cpu, num_labels, &targets),
            dropouts(),
        );
        let rounded = step_on(
            &cpu_f32,
            &model_of(
                &cpu_f32,
                config.clone(),
                method,
                num_labels,
                Weights::ByFanIn,
            ),
            &batch,
            &drawn_labels(&cpu_f32, num_labels, &targets),
            dropouts(),
        );
        let got = step_on(
            &b,
            &model_of(&b, config, method, num_labels, Weights::ByFanIn),
            &batch,
            &drawn_labels(&b, num_labels, &targets),
            dropouts(),
        );
        let mut worst_margin = 0.0f64;
        let mut check = |what: &str, got: &[f64], cpu_f32: &[f64], want: &[f64]| {
            let allowed = (10.0 * common::rel_err(cpu_f32, want)).clamp(1e-4, 1e-2);
            let e = compare(&b, &format!("{tag}: {what}"), got, want, allowed);
            worst_margin = worst_margin.max(e / allowed);
        };
        check("logits", &got.0, &rounded.0, &reference.0);
        check("loss", &[got.1], &[rounded.1], &[reference.1]);
        assert_eq!(
            got.2.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            reference.2.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            "{tag}: the same trainable tensors get gradients"
        );
        for (((name, g), (_, r)), (_, w)) in got.2.iter().zip(&rounded.2).zip(&reference.2) {
            check(name, g, r, w);
        }
        println!("  worst error / allowed {worst_margin:.2}");
    }
}

/// Labels of a drawn batch: `targets` as classes, or as scores for a single output.
fn drawn_labels<B: Backend>(backend: &B, num_labels: usize, targets: &[usize]) -> Labels<B> {
    let rows = targets.len();
    match num_labels {
        1 => {
            let scores: Vec<f64> = targets.iter().map(|&t| t as f64 * 0.7 - 0.4).collect();
            Labels::Scores(tensor(backend, &[rows], &scores))
        }
        _ => {
            let classes: Vec<u32> = targets.iter().map(|&t| t as u32).collect();
            Labels::Classes(
                backend
                    .tensor_from_u32(Shape::new([rows]), &classes)
                    .unwrap(),
            )
        }
    }
}

/// The f32 CUDA tape keeps exactly the bytes the f32 CPU tape keeps, where it keeps GELU and
/// LayerNorm outputs as the CPU does (by default it recomputes them: see
/// [`linear_inputs_recomputed_in_backward_change_no_bit_and_are_not_kept`]).
#[test]
fn f32_tape_keeps_the_same_bytes_as_the_cpu() {
    let cpu = CpuBackend::f32();
    assert!(!cpu.recomputes_linear_inputs());
    let b = cuda(DType::F32).with_recomputed_linear_inputs(false);
    for method in [Method::Full, Method::BitFit, Method::Lora, Method::Spafit] {
        let (.., sr) = step(&cpu, &model(&cpu, method, 3), 3);
        let (.., sb) = step(&b, &model(&b, method, 3), 3);
        assert_eq!(
            sb.saved_activation_bytes, sr.saved_activation_bytes,
            "{method}"
        );
        assert_eq!(sb.grad_bytes, sr.grad_bytes, "{method}");
    }
}

/// Three AdamW steps; returns the losses' bits and the final trainable values.
fn train(b: &CudaBackend) -> (Vec<u64>, Vec<Vec<f64>>) {
    let mut m = model(b, Method::Spafit, 3);
    let mut opt = AdamW::new(0.01);
    let input = ModelInput::new(b, &batch()).unwrap();
    let mut losses = Vec::new();
    for i in 0..3 {
        let mut tape = Tape::new(b.clone());
        let logits = m
            .forward(&mut tape, &input, &mut DropoutPlan::train(0.1, 0.1, 0.2, i))
            .unwrap();
        let loss = m.loss(&mut tape, &logits, &labels(b, 3)).unwrap();
        losses.push(b.to_f64(loss.value()).unwrap()[0].to_bits());
        let grads = tape.backward(&loss).unwrap();
        opt.update(b, m.params_mut(), &grads, 1e-2).unwrap();
    }
    let values = m
        .params()
        .into_iter()
        .filter(|p| p.trainable)
        .map(|p| b.to_f64(&p.value).unwrap())
        .collect();
    (losses, values)
}

#[test]
fn two_identical_training_runs_give_the_same_bits() {
    for dtype in [DType::F32, DType::BF16] {
        let b = cuda(dtype);
        let (l1, v1) = train(&b);
        let (l2, v2) = train(&b);
        assert_eq!(l1, l2, "losses on {}", b.name());
        assert!(v1 == v2, "trained values on {}", b.name());
        // bf16 storage trains f32 masters: an update below bf16's resolution still counts.
        if dtype == DType::BF16 {
            let m = model(&b, Method::Spafit, 3);
            let trained = m.params().into_iter().filter(|p| p.trainable).count();
            assert_eq!(v1.len(), trained);
        }
        println!(
            "XM determinism {} 0 PASS 3 steps, losses bitwise equal",
            b.name()
        );
    }
}

/// `SPAFIT_CUDA_SYNC=1` (wait for every launch, to name a faulting kernel) changes no bit of
/// a training run. The variable is read when a backend is made, so both runs are child
/// processes, one with it and one with it off, whatever the parent's environment holds.
#[test]
fn waiting_after_every_launch_changes_no_bit() {
    const TEST: &str = "waiting_after_every_launch_changes_no_bit";
    const SYNC: &str = spafit::backend::cuda::SYNC_AFTER_LAUNCH;
    if let Some(expected) = std::env::var_os("SPAFIT_SYNC_CHILD") {
        for dtype in [DType::F32, DType::BF16] {
            let b = cuda(dtype);
            assert_eq!(
                b.waits_after_each_launch(),
                expected == "1",
                "{SYNC} was not read"
            );
            let (losses, values) = train(&b);
            let values: Vec<u64> = values.iter().flatten().map(|v| v.to_bits()).collect();
            println!("RUN {dtype} {losses:?} {values:?}");
        }
        return;
    }
    let runs = |value: &str| -> Vec<String> {
        common::run_in_child(
            module_path!(),
            TEST,
            &[(SYNC, value), ("SPAFIT_SYNC_CHILD", value)],
        )
        .lines()
        // The harness may print the test's name on the line before the first output.
        .filter_map(|l| l.find("RUN ").map(|at| l[at..].to_string()))
        .collect()
    };
    let waiting = runs("1");
    assert_eq!(waiting.len(), 2, "{waiting:?}");
    assert!(
        waiting == runs("0"),
        "the run that waited after every launch differs"
    );
}

#[test]
fn the_fiber_schedule_changes_no_bit() {
    // Alone in a process: the stand-in's schedule is the process's, and the tests beside
    // this one keep the schedule the run chose (scripts/test.sh runs them under reverse too).
    if !common::is_the_child_running(module_path!(), "the_fiber_schedule_changes_no_bit") {
        return;
    }
    let b = cuda(DType::BF16);
    if b.driver() != Driver::Emulator {
        // On a GPU the hardware schedules; the determinism test above covers it.
        return;
    }
    let run = |schedule: &str| {
        emulator::set_schedule(schedule).unwrap();
        let out = step(&b, &model(&b, Method::Spafit, 3), 3);
        (out.0, out.1.to_bits(), out.2)
    };
    let forward = run("forward");
    let reverse = run("reverse");
    let shuffled = run("shuffle:5");
    emulator::set_schedule("forward").unwrap();
    assert!(
        forward == reverse,
        "forward and reverse fiber orders disagree"
    );
    assert!(
        forward == shuffled,
        "forward and shuffled fiber orders disagree"
    );
    let b32 = cuda(DType::F32);
    emulator::set_schedule("reverse").unwrap();
    let r32 = step(&b32, &model(&b32, Method::Full, 1), 1);
    emulator::set_schedule("forward").unwrap();
    let f32_forward = step(&b32, &model(&b32, Method::Full, 1), 1);
    assert!(
        r32.0 == f32_forward.0
            && r32.1.to_bits() == f32_forward.1.to_bits()
            && r32.2 == f32_forward.2,
        "f32 results depend on the fiber order"
    );
}

/// Writes the tiny model of every case (all tensors by name, trainable names, LoRA scale, the
/// batch and labels) for `scripts/bf16_error_floor.py`, which measures the error PyTorch's own
/// bf16 autocast has on the same models: the calibration of the bf16 tolerance. Run with
/// `SPAFIT_DUMP_TINY_BERT=DIR cargo test --test integration cuda_model::dump_tiny_bert -- --ignored`.
#[test]
#[ignore = "writes calibration inputs; run by hand"]
fn dump_tiny_bert() {
    let dir = std::path::PathBuf::from(
        std::env::var("SPAFIT_DUMP_TINY_BERT").expect("SPAFIT_DUMP_TINY_BERT=DIR"),
    );
    std::fs::create_dir_all(&dir).unwrap();
    let cpu = CpuBackend::f64();
    let config = tiny_bert::config(3);
    let enc = batch();
    let mut cases = Vec::new();
    for method in [Method::Full, Method::BitFit, Method::Lora, Method::Spafit] {
        for num_labels in [3usize, 1] {
            let m = model(&cpu, method, num_labels);
            let tensors: Vec<(String, Tensor<CpuBackend>)> = m
                .params()
                .into_iter()
                .map(|p| (p.name.clone(), p.value.clone()))
                .collect();
            let name = format!("{method}_{num_labels}");
            let bytes = spafit::adapter::tensors_to_safetensors(&cpu, &tensors).unwrap();
            std::fs::write(dir.join(format!("{name}.safetensors")), bytes).unwrap();
            let lora = config_for(method).lora;
            cases.push(serde_json::json!({
                "name": name, "method": method.to_string(), "num_labels": num_labels,
                "trainable": m.trainable_names(),
                "lora_scale": lora.alpha / lora.rank as f64,
                "labels": if num_labels == 1 { serde_json::json!([0.7, -1.2]) } else { serde_json::json!([2, 0]) },
            }));
        }
    }
    let out = serde_json::json!({
        "config": {
            "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
            "num_hidden_layers": config.num_hidden_layers, "num_attention_heads": config.num_attention_heads,
            "intermediate_size": config.intermediate_size, "max_position_embeddings": config.max_position_embeddings,
            "type_vocab_size": config.type_vocab_size, "layer_norm_eps": config.layer_norm_eps,
        },
        "batch": {"input_ids": enc.input_ids, "token_type_ids": enc.token_type_ids,
                  "attention_mask": enc.attention_mask, "batch": enc.batch, "seq": enc.seq},
        "cases": cases,
    });
    std::fs::write(
        dir.join("cases.json"),
        serde_json::to_string_pretty(&out).unwrap(),
    )
    .unwrap();
}

/// Heads wider than the attention kernels can take are refused when the model is built
/// (the forward) or before a training pass (the backward, whose f32 tiles are larger),
/// naming the head dim and what runs it, not at a kernel launch; the CPU takes them.
#[test]
fn heads_too_wide_for_the_kernels_are_refused_when_the_model_is_built() {
    use spafit::model::{check_batch_memory, Pass};
    let f32_cuda = cuda(DType::F32);
    let with_head_dim = |head_dim: usize| {
        let mut config = tiny_bert::config(1);
        (config.hidden_size, config.num_attention_heads) = (head_dim, 1);
        config
    };
    // f32 head dim 512: the forward's tiles fit a block's shared memory, the backward's not.
    let wide = with_head_dim(512);
    BertClassifier::random(&wide, &f32_cuda, 2, 0).unwrap();
    check_batch_memory(&f32_cuda, &wide, 2, 8, Pass::Inference, "eval").unwrap();
    let training = Pass::Training { layers_on_tape: 1 };
    let e = check_batch_memory(&f32_cuda, &wide, 2, 8, training, "train")
        .expect_err("f32 head dim 512: the backward's tiles exceed shared memory")
        .to_string();
    assert!(
        e.contains("head dim 512: the attention backward")
            && e.contains("eval and predict run it")
            && e.contains("--device cpu trains it"),
        "{e}"
    );
    check_batch_memory(&CpuBackend::f32(), &wide, 2, 8, training, "train").unwrap();
    // Head dim 640: not even the forward's.
    let wider = with_head_dim(640);
    let e = BertClassifier::random(&wider, &f32_cuda, 2, 0)
        .expect_err("f32 head dim 640: the forward's tiles exceed shared memory")
        .to_string();
    assert!(
        e.contains("head dim 640: the attention forward") && e.contains("--device cpu runs it"),
        "{e}"
    );
    let wider_than_tensor_cores = with_head_dim(160);
    let e = BertClassifier::random(&wider_than_tensor_cores, &cuda(DType::BF16), 2, 0)
        .expect_err("bf16 head dim 160: past the tensor-core kernels")
        .to_string();
    assert!(
        e.contains("head dim 160") && e.contains("--dtype f32") && e.contains("--device cpu"),
        "{e}"
    );
    BertClassifier::random(&wider_than_tensor_cores, &f32_cuda, 2, 0).unwrap();
    BertClassifier::random(&wider, &CpuBackend::f32(), 2, 0).unwrap();
}

/// One step of `maps` linear maps (count, with LoRA and LoRA dropout where asked) that all
/// read one trainable input `x` [512, 192] (as the query, key and value maps read one), summed
/// into a multi-label loss. Returns the loss's and every gradient's bits, the `cast_*` launches
/// of the forward and of the backward, and the tape's saved-activation bytes.
struct SharedInputStep {
    bits: Vec<Vec<u64>>,
    forward_casts: u64,
    backward_casts: u64,
    saved_bytes: usize,
}

fn shared_input_step(b: &CudaBackend, lora: &[Option<f64>]) -> SharedInputStep {
    // x large enough for rounding it ahead to pay (64 Ki elements), and read by several
    // column blocks of each product; a weight below that size, so that only x is rounded.
    let (rows, width, rank) = (512, 192, 4);
    let mut rng = spafit::rng::SplitMix::new(31);
    let mut draw = |dims: &[usize], scale: f64| {
        let n = dims.iter().product();
        let v: Vec<f64> = common::nonzero(&mut rng, n)
            .iter()
            .map(|v| v * scale)
            .collect();
        tensor(b, dims, &v)
    };
    let x0 = draw(&[rows, width], 1.0);
    let maps: Vec<_> = lora
        .iter()
        .map(|adapter| {
            let w = draw(&[width, width], 0.1);
            let bias = draw(&[width], 0.1);
            let ab = adapter.map(|_| (draw(&[rank, width], 0.1), draw(&[width, rank], 0.1)));
            (w, bias, ab)
        })
        .collect();
    let targets: Vec<f64> = (0..rows * width).map(|i| (i % 3) as f64 / 2.0).collect();
    let targets = tensor(b, &[rows, width], &targets);
    let casts = |times: Option<Vec<spafit::backend::KernelTime>>| -> u64 {
        let times = times.expect("the backend times its kernels");
        times
            .iter()
            .filter(|t| t.kernel.starts_with("cast_"))
            .map(|t| t.launches)
            .sum()
    };
    let mut tape = Tape::new(b.clone());
    let x = tape.param("x", &x0, true);
    assert!(b.start_kernel_timing().unwrap());
    // The maps run one after another, as the query, key and value maps do: another op in
    // between ends the input's reuse.
    let mut ys = Vec::new();
    for (i, ((w, bias, ab), adapter)) in maps.iter().zip(lora).enumerate() {
        // Adapted maps keep their weight frozen (LoRA's own case); the others train it.
        let w = tape.param(&format!("w{i}"), w, ab.is_none());
        let bias = tape.param(&format!("b{i}"), bias, true);
        let ab = ab.as_ref().map(|(a, bl)| {
            (
                tape.param(&format!("a{i}"), a, true),
                tape.param(&format!("lb{i}"), bl, true),
            )
        });
        let lora_vars = ab.as_ref().map(|(a, bl)| spafit::autograd::LoraVars {
            a,
            b: bl,
            scale: 2.0,
            dropout: adapter
                .filter(|&p| p > 0.0)
                .map(|p| spafit::backend::Dropout {
                    p,
                    seed: 5 + i as u64,
                }),
        });
        ys.push(tape.linear(&x, &w, Some(&bias), lora_vars).unwrap());
    }
    let mut sum = ys[0].clone();
    for y in &ys[1..] {
        sum = tape.add(&sum, y).unwrap();
    }
    let loss = tape.bce_with_logits(&sum, &targets).unwrap();
    let forward_casts = casts(b.stop_kernel_timing().unwrap());
    assert!(b.start_kernel_timing().unwrap());
    let grads = tape.backward(&loss).unwrap();
    let backward_casts = casts(b.stop_kernel_timing().unwrap());
    let mut bits = vec![b.to_f64(loss.value()).unwrap()];
    bits.extend(grads.iter().map(|(_, g)| b.to_f64(g).unwrap()));
    SharedInputStep {
        bits: bits
            .into_iter()
            .map(|v| v.into_iter().map(f64::to_bits).collect())
            .collect(),
        forward_casts,
        backward_casts,
        saved_bytes: tape.stats().saved_activation_bytes,
    }
}

/// In bf16 mode a linear map's f32 input is rounded to bf16 for its products. Three maps of
/// one input (the query, key and value maps) round it once — one cast launch in the forward —
/// and the tape keeps that copy, half the bytes, for their weight gradients, which then round
/// nothing more: the backward casts only each map's upstream gradient (three launches).
/// Adapters read the same copy for their `A` gradient, except behind adapter dropout (which
/// masks the unrounded input). Either way every gradient has the bits it has when each
/// product rounds its own operands (precasts off).
#[test]
fn a_shared_linear_input_is_rounded_once_with_the_same_bits() {
    let b = cuda(DType::BF16);
    let f32 = cuda(DType::F32);
    let trained = [None, None, None];
    let s = shared_input_step(&b, &trained);
    assert_eq!(s.forward_casts, 1, "casts in the forward");
    assert_eq!(s.backward_casts, 3, "casts in the backward");
    // The same step in f32 keeps the f32 input instead: 512 × 192 × (4 − 2) bytes more.
    let exact = shared_input_step(&f32, &trained);
    assert_eq!(exact.saved_bytes - s.saved_bytes, 512 * 192 * 2);
    for maps in [&trained[..], &[None, Some(0.0), Some(0.25)]] {
        let rounded_once = shared_input_step(&b, maps);
        let each_its_own = shared_input_step(&b.with_gemm_precast(false), maps);
        assert_eq!(each_its_own.forward_casts, 0, "precasts off");
        assert_eq!(rounded_once.bits.len(), each_its_own.bits.len());
        for (i, (got, want)) in rounded_once.bits.iter().zip(&each_its_own.bits).enumerate() {
            assert!(
                got == want,
                "maps {maps:?}: value {i} (the loss, then gradients by name)"
            );
        }
    }
}

/// In bf16 mode the query, key and value maps store their outputs in bf16 (attention rounds
/// them to bf16 for its products anyway) and the linear maps' inputs are rounded once ahead:
/// a whole training step — logits, loss, every gradient — has the bits it has when every
/// product rounds its own f32 operands (precasts off), under all four methods, while the tape
/// keeps fewer bytes (attention's q, k, v in bf16).
#[test]
fn operands_rounded_ahead_change_no_bit_of_a_step() {
    let b = cuda(DType::BF16);
    let off = b.with_gemm_precast(false);
    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for method in [Method::Full, Method::BitFit, Method::Lora, Method::Spafit] {
        let (logits, loss, grads, stats) = step(&b, &model(&b, method, 3), 3);
        let (logits_off, loss_off, grads_off, stats_off) = step(&off, &model(&off, method, 3), 3);
        assert_eq!(bits(&logits), bits(&logits_off), "{method}: logits");
        assert_eq!(loss.to_bits(), loss_off.to_bits(), "{method}: loss");
        assert_eq!(grads.len(), grads_off.len());
        for ((name, g), (_, g_off)) in grads.iter().zip(&grads_off) {
            assert_eq!(bits(g), bits(g_off), "{method}: gradient of {name}");
        }
        assert!(
            stats.saved_activation_bytes < stats_off.saved_activation_bytes,
            "{method}: {} bytes kept against {}",
            stats.saved_activation_bytes,
            stats_off.saved_activation_bytes
        );
    }
}

/// Where another node keeps a linear map's input itself (ReLU keeps its output), the map keeps
/// that f32 tensor too rather than a bf16 copy beside it: the bf16 tape keeps the bytes the
/// f32 tape keeps, and the weight's gradient has the bits of precasts off.
#[test]
fn an_input_kept_by_another_node_is_not_kept_twice() {
    let (rows, width) = (512, 192);
    let run = |b: &CudaBackend| {
        let mut rng = spafit::rng::SplitMix::new(8);
        let mut draw = |dims: &[usize]| {
            let n = dims.iter().product();
            tensor(b, dims, &common::nonzero(&mut rng, n))
        };
        let (x0, w0, t0) = (
            draw(&[rows, width]),
            draw(&[width, width]),
            draw(&[rows, width]),
        );
        let mut tape = Tape::new(b.clone());
        let x = tape.param("x", &x0, true);
        let w = tape.param("w", &w0, true);
        let r = tape.relu(&x).unwrap();
        let y = tape.linear(&r, &w, None, None).unwrap();
        let loss = tape.mse(&y, &t0).unwrap();
        let kept = tape.stats().saved_activation_bytes;
        let grads = tape.backward(&loss).unwrap();
        let dw = b.to_f64(grads.get("w").unwrap()).unwrap();
        (kept, dw.into_iter().map(f64::to_bits).collect::<Vec<_>>())
    };
    let bf16 = cuda(DType::BF16);
    let (kept, dw) = run(&bf16);
    let (kept_f32, _) = run(&cuda(DType::F32));
    assert_eq!(kept, kept_f32, "bytes kept in bf16 and in f32 mode");
    let (_, dw_off) = run(&bf16.with_gemm_precast(false));
    assert!(dw == dw_off, "dW against precasts off");
}

/// Three layers of hidden 64 in 2 heads of 32, feed-forward 128: large enough at 16 × 64
/// tokens for every rounding-ahead path of the bf16 mode (see
/// [`operands_rounded_ahead_change_no_bit_of_a_larger_step`]).
fn larger_config() -> spafit::checkpoint::BertConfig {
    let mut config = tiny_bert::config(3);
    config.hidden_size = 64;
    config.num_attention_heads = 2;
    config.intermediate_size = 128;
    config.max_position_embeddings = 64;
    config
}

/// Class labels 0, 1, 2, 0, … for `batch` examples.
fn three_classes<B: Backend>(b: &B, batch: usize) -> Labels<B> {
    let classes: Vec<u32> = (0..batch as u32).map(|i| i % 3).collect();
    Labels::Classes(b.tensor_from_u32(Shape::new([batch]), &classes).unwrap())
}

/// A step's logits, loss and gradients (by name) as bits, for comparing two ways of one step.
fn step_bits<B: Backend>(
    b: &B,
    logits: &spafit::autograd::Var<B>,
    loss: &spafit::autograd::Var<B>,
    grads: &Gradients<B>,
) -> Vec<Vec<u64>> {
    let mut values = vec![
        b.to_f64(logits.value()).unwrap(),
        b.to_f64(loss.value()).unwrap(),
    ];
    values.extend(grads.iter().map(|(_, g)| b.to_f64(g).unwrap()));
    values
        .into_iter()
        .map(|v| v.into_iter().map(f64::to_bits).collect())
        .collect()
}

/// `batch` sequences of `seq` random token ids, sequence `b` padded by `padding(b)` tokens.
fn padded_batch(batch: usize, seq: usize, padding: fn(usize) -> usize, seed: u64) -> EncodedBatch {
    let mut rng = spafit::rng::SplitMix::new(seed);
    let lengths: Vec<usize> = (0..batch).map(|b| seq - padding(b)).collect();
    EncodedBatch {
        input_ids: (0..batch * seq)
            .map(|i| match i % seq < lengths[i / seq] {
                true => 1 + (rng.next_u64() % 28) as u32,
                false => 0,
            })
            .collect(),
        token_type_ids: vec![0; batch * seq],
        attention_mask: (0..batch * seq)
            .map(|i| u32::from(i % seq < lengths[i / seq]))
            .collect(),
        batch,
        seq,
    }
}

/// [`operands_rounded_ahead_change_no_bit_of_a_step`] at sizes where every rounding-ahead path
/// runs (the tiny model is too small for any): hidden 64 in 2 heads of 32 over 16 × 64 tokens,
/// so linear inputs are rounded once ahead (64 Ki elements, rows of a multiple of 8) and
/// attention streams its bf16 q, k, v by `cp.async`. Logits, loss and every gradient have the
/// bits of precasts off, where each product rounds its own f32 operands.
#[test]
fn operands_rounded_ahead_change_no_bit_of_a_larger_step() {
    let config = larger_config();
    let (batch, seq) = (16, 64);
    let encoded = padded_batch(batch, seq, |b| 3 * (b % 4), 3);
    let run = |b: &CudaBackend, method: Method| {
        let m = model_of(b, config.clone(), method, 3, Weights::AsDrawn);
        let input = ModelInput::new(b, &encoded).unwrap();
        let labels = three_classes(b, batch);
        let ((logits, loss, grads), kernels) = common::with_kernel_names(b, || {
            let mut tape = Tape::new(b.clone());
            let mut dropouts = DropoutPlan::train(0.1, 0.1, 0.2, 77);
            let logits = m.forward(&mut tape, &input, &mut dropouts).unwrap();
            let loss = m.loss(&mut tape, &logits, &labels).unwrap();
            let grads = tape.backward(&loss).unwrap();
            (logits, loss, grads)
        });
        (step_bits(b, &logits, &loss, &grads), kernels)
    };
    let b = cuda(DType::BF16);
    for method in [Method::Full, Method::Spafit] {
        let (on, kernels) = run(&b, method);
        let (off, kernels_off) = run(&b.with_gemm_precast(false), method);
        let has = |ks: &[String], k: &str| ks.iter().any(|n| n == k);
        assert!(
            has(&kernels, "attention_forward_tc_bf16qkv_f32_d32_s1"),
            "{method}: {kernels:?}"
        );
        assert!(
            has(&kernels, "cast_f32_to_bf16"),
            "{method}: nothing rounded ahead"
        );
        assert!(
            has(&kernels_off, "attention_forward_tc_f32_d32_s1"),
            "{method}: {kernels_off:?}"
        );
        assert_eq!(on.len(), off.len());
        for (i, (got, want)) in on.iter().zip(&off).enumerate() {
            assert!(
                got == want,
                "{method}: value {i} (logits, loss, then gradients by name)"
            );
        }
    }
}

/// The inputs that linear maps' weight (or adapter) gradients read and that are a GELU's or a
/// LayerNorm's output — the feed-forward's second map reads GELU's; the query, key, value and
/// first feed-forward maps read LayerNorms' — are recomputed in backward from what those ops'
/// nodes keep, not kept from forward: the same logits, loss and gradients, bit for bit, as
/// keeping them, in f32 and bf16, with the weights trained (full), adapters without dropout
/// (LoRA: the rounded copies the fused adapter gradient reads) and with dropout (SPAFIT: the
/// f32 outputs the dropout masks); and the tape keeps exactly those outputs less. Layers
/// before the last see all 16 × 64 tokens (rounded to bf16 in bf16 mode: 64 and 128 Ki
/// elements in rows of 64 and 128), the last's attention output and feed-forward only the 16
/// `[CLS]` rows the pooler reads (too few to round ahead: kept in f32).
#[test]
fn linear_inputs_recomputed_in_backward_change_no_bit_and_are_not_kept() {
    let config = larger_config();
    let (batch, seq, inter) = (16, 64, 128);
    let encoded = padded_batch(batch, seq, |b| 5 * (b % 3), 5);
    // LoRA's adapters without dropout, SPAFIT's with.
    let run = |b: &CudaBackend, method: Method| {
        let m = model_of(b, config.clone(), method, 3, Weights::ByFanIn);
        let lora_dropout = match method {
            Method::Lora => 0.0,
            _ => 0.2,
        };
        let input = ModelInput::new(b, &encoded).unwrap();
        let labels = three_classes(b, batch);
        let mut tape = Tape::new(b.clone());
        let mut dropouts = DropoutPlan::train(0.1, 0.1, lora_dropout, 31);
        let logits = m.forward(&mut tape, &input, &mut dropouts).unwrap();
        let loss = m.loss(&mut tape, &logits, &labels).unwrap();
        let kept = tape.stats().saved_activation_bytes;
        assert!(b.start_kernel_timing().unwrap());
        let grads = tape.backward(&loss).unwrap();
        let backward_kernels = b.stop_kernel_timing().unwrap().unwrap();
        let applied = backward_kernels
            .iter()
            .filter(|k| k.kernel.starts_with("layernorm_apply"))
            .map(|k| k.launches)
            .sum::<u64>();
        (step_bits(b, &logits, &loss, &grads), kept, applied)
    };
    // GELU's outputs [tokens, intermediate] and LayerNorms' [tokens, hidden]: of every token
    // in the layers before the last (rounded to bf16 in bf16 mode where no adapter dropout
    // masks them), of the [CLS] rows in the last (too few to round: f32).
    let hidden = 64;
    let gelu = |bytes: usize| batch * seq * inter * bytes;
    let gelu_cls = batch * inter * 4;
    let norm = |bytes: usize| batch * seq * hidden * bytes;
    let norm_cls = batch * hidden * 4;
    for dtype in [DType::F32, DType::BF16] {
        let b = cuda(dtype);
        assert!(b.recomputes_linear_inputs(), "the default");
        let copy = match dtype {
            DType::BF16 => 2,
            _ => 4,
        };
        // And each LayerNorm output recomputed once, however many maps read it (query, key
        // and value share one).
        for (method, not_kept, outputs) in [
            // Every map's weight trains: GELU's outputs in all three layers; both LayerNorms
            // of layers 0 and 1, and of layer 2 (its [CLS] rows: the second feeds the
            // pooler). Layer 0 reads the embeddings' dropout, not their LayerNorm.
            (
                Method::Full,
                2 * gelu(copy) + gelu_cls + 4 * norm(copy) + 2 * norm_cls,
                6,
            ),
            // Adapters on layers 0 and 2 (query, value, feed-forward output; no dropout): the
            // GELU outputs there, and layer 1's last LayerNorm, which layer 2's maps read.
            (Method::Lora, gelu(copy) + gelu_cls + norm(copy), 1),
            // Adapters with dropout on all six maps of layer 2, and the pooler trained: the
            // layer's GELU output, the two LayerNorm outputs its maps read and the one the
            // pooler reads, in f32 (the dropout masks the unrounded input; the pooler's is
            // too few rows to round).
            (Method::Spafit, gelu_cls + norm(4) + 2 * norm_cls, 3),
        ] {
            let (recomputed, kept_recomputing, applied) = run(&b, method);
            let (kept, kept_keeping, none) = run(&b.with_recomputed_linear_inputs(false), method);
            assert_eq!(
                (applied, none),
                (outputs, 0),
                "{dtype} {method}: LayerNorm outputs recomputed"
            );
            assert_eq!(
                kept_keeping - kept_recomputing,
                not_kept,
                "{dtype} {method}: bytes kept from forward to backward"
            );
            assert_eq!(recomputed.len(), kept.len());
            for (i, (got, want)) in recomputed.iter().zip(&kept).enumerate() {
                assert!(
                    got == want,
                    "{dtype} {method}: value {i} (logits, loss, then gradients by name)"
                );
            }
        }
    }
}

/// Loaded in bf16 for a plan, each layer whose weights stay frozen is stored in bf16 as soon
/// as it is loaded: the device never holds more than the finished model and one layer's
/// weights in f32, where loading every weight first and storing after held them all in f32
/// at once. Both ways build the same model: the same logits, bit for bit. Runs in a child
/// process: the device's peak memory is the process's, which other tests share.
#[test]
fn loading_for_a_plan_stores_each_frozen_layer_as_it_loads() {
    let test = "loading_for_a_plan_stores_each_frozen_layer_as_it_loads";
    if !common::is_the_child_running(module_path!(), test) {
        return;
    }
    let b = cuda(DType::BF16);
    let (layers, h, i) = (4, 48, 96);
    let mut config = tiny_bert::config(layers);
    config.hidden_size = h;
    config.intermediate_size = i;
    let layer_weights_f32 = (4 * h * h + 2 * h * i) as u64 * 4;
    let input = ModelInput::new(&b, &batch()).unwrap();
    let logits = |m: &BertClassifier<CudaBackend>| {
        let mut tape = Tape::new(b.clone());
        let out = m
            .forward(&mut tape, &input, &mut DropoutPlan::eval())
            .unwrap();
        b.to_f64(out.value()).unwrap()
    };
    let with_peak = |build: &dyn Fn() -> BertClassifier<CudaBackend>| {
        b.synchronize().unwrap();
        b.reset_peak_memory();
        let start = b.peak_memory_bytes().unwrap();
        let model = build();
        b.synchronize().unwrap();
        (model, b.peak_memory_bytes().unwrap() - start)
    };
    for method in [Method::Full, Method::BitFit, Method::Lora, Method::Spafit] {
        let plan = PeftPlan::new(&config_for(method), layers).unwrap();
        let frozen_layers = plan.strata.iter().filter(|s| !s.trains_weights()).count() as u64;
        let (compact, compact_peak) = with_peak(&|| {
            let init = &mut peft_lora_init(&b, 5);
            BertClassifier::random_for_plan(&config, &b, 3, 5, &plan, init).unwrap()
        });
        let (loose, loose_peak) = with_peak(&|| {
            let mut m = BertClassifier::random(&config, &b, 3, 5).unwrap();
            m.apply_plan(&plan, &mut peft_lora_init(&b, 5)).unwrap();
            m.store_frozen_weights(&b).unwrap();
            m
        });
        let model_bytes: u64 = compact
            .params()
            .iter()
            .map(|p| p.value.size_in_bytes() as u64)
            .sum();
        println!(
            "{method}: {frozen_layers} frozen layers, peak {compact_peak} bytes loaded for the \
             plan, {loose_peak} loaded then stored; the model {model_bytes}, a layer's weights \
             in f32 {layer_weights_f32}"
        );
        for (a, b) in compact.params().iter().zip(loose.params()) {
            assert_eq!(a.name, b.name);
            assert_eq!(a.value.dtype(), b.value.dtype(), "{method}: {}", a.name);
            assert_eq!(a.trainable, b.trainable, "{method}: {}", a.name);
        }
        let bits = |v: Vec<f64>| v.into_iter().map(f64::to_bits).collect::<Vec<_>>();
        assert_eq!(bits(logits(&compact)), bits(logits(&loose)), "{method}");
        // A real GPU's pool may round allocations up; the stand-in counts bytes.
        let rounding = match emulator::driver() {
            Some(Driver::Emulator) => 0,
            _ => 2 << 20,
        };
        assert!(
            compact_peak <= model_bytes + layer_weights_f32 + rounding,
            "{method}: {compact_peak} bytes at the peak, the model {model_bytes} and a \
             layer's f32 weights {layer_weights_f32}"
        );
        let saved = loose_peak.saturating_sub(compact_peak);
        let expected = frozen_layers.saturating_sub(1) * layer_weights_f32 / 2;
        assert!(
            saved + rounding >= expected,
            "{method}: {saved} bytes saved, {expected} expected"
        );
    }
}

/// A layer stored compactly as frozen cannot be made to train its rounded weights.
#[test]
fn a_weight_stored_as_frozen_does_not_train() {
    let cpu = CpuBackend::bf16();
    let config = tiny_bert::config(1);
    let tensors = tiny_bert::tensors(&config, 3);
    let mut bert = BertModel::load(&config, &mut tiny_bert::source(&cpu, &tensors)).unwrap();
    let layer = &mut bert.layers[0];
    layer.store_frozen_weights(&cpu).unwrap();
    let no_adapters = |_: &str, _: Shape| -> spafit::Result<Tensor<CpuBackend>> {
        panic!("a full stratum asks for no adapter")
    };
    let err = layer
        .set_stratum(0, spafit::nn::Stratum::Full, None, no_adapters)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bert.encoder.layer.0.attention.self.query.weight") && err.contains("bf16"),
        "{err}"
    );
    assert!(
        !layer.query.weight.trainable,
        "the refused stratum changed the layer"
    );
    layer
        .set_stratum(0, spafit::nn::Stratum::BiasOnly, None, no_adapters)
        .unwrap();
}
