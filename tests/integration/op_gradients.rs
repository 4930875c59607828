//! Central finite differences in f64 for every backend op and every output of its backward,
//! on random non-zero inputs at odd shapes, with padded attention masks.

use crate::common;

use common::{all, check_gradient, dot, host, nonzero, random, tensor};
use spafit::backend::cpu::CpuBackend;
use spafit::backend::{
    AttentionConfig, AttentionGradRequest, Backend, Dropout, LayerNormGradRequest,
    LinearBackwardInputs, LinearGradRequest, LoraWeights,
};
use spafit::rng::SplitMix;
use spafit::tensor::{Shape, Tensor};

type T = Tensor<CpuBackend>;
const TOL: f64 = 1e-6;

fn cpu() -> CpuBackend {
    CpuBackend::f64()
}

/// `f(values)` with `values` placed in a tensor shaped like `like`.
fn with<R>(like: &T, values: &[f64], f: impl FnOnce(&T) -> R) -> R {
    f(&tensor(&cpu(), like.dims(), values))
}

// ---- linear + LoRA -------------------------------------------------------------------------

struct LinearCase {
    x: T,
    w: T,
    b: T,
    a: T,
    bl: T,
    xl: T,
    scale: f64,
    r: Vec<f64>,
}

fn linear_case() -> LinearCase {
    let mut rng = SplitMix::new(11);
    // x: [3, 5, 7] → 15 rows of 7 features; 5 outputs; rank 3.
    let x = random(&mut rng, &[3, 5, 7], 1.0);
    let xl = random(&mut rng, &[3, 5, 7], 1.0);
    let w = random(&mut rng, &[5, 7], 0.5);
    let b = random(&mut rng, &[5], 0.5);
    let a = random(&mut rng, &[3, 7], 0.5);
    let bl = random(&mut rng, &[5, 3], 0.5);
    let r = nonzero(&mut rng, 3 * 5 * 5);
    LinearCase {
        x,
        w,
        b,
        a,
        bl,
        xl,
        scale: 1.7,
        r,
    }
}

impl LinearCase {
    fn loss(&self, x: &T, w: &T, b: &T, a: &T, bl: &T, xl: &T) -> f64 {
        let lora = LoraWeights {
            a,
            b: bl,
            scale: self.scale,
        };
        let y = cpu()
            .linear_forward(x, w, Some(b), Some(lora), Some(xl))
            .unwrap()
            .y;
        dot(&host(&y), &self.r)
    }

    fn grads(&self) -> spafit::backend::LinearGrads<CpuBackend> {
        let c = cpu();
        let out = c
            .linear_forward(
                &self.x,
                &self.w,
                Some(&self.b),
                Some(LoraWeights {
                    a: &self.a,
                    b: &self.bl,
                    scale: self.scale,
                }),
                Some(&self.xl),
            )
            .unwrap();
        let dy = tensor(&c, out.y.dims(), &self.r);
        let all_grads = common::every_linear_grad();
        c.linear_backward(
            LinearBackwardInputs {
                dy: &dy,
                x: Some(&self.x),
                w: Some(&self.w),
                lora: Some(LoraWeights {
                    a: &self.a,
                    b: &self.bl,
                    scale: self.scale,
                }),
                x_lora: Some(&self.xl),
                h: out.h.as_ref(),
            },
            all_grads,
        )
        .unwrap()
    }
}

#[test]
fn linear_lora_every_gradient() {
    let c = linear_case();
    let g = c.grads();
    let (x, w, b, a, bl, xl) = (&c.x, &c.w, &c.b, &c.a, &c.bl, &c.xl);
    check_gradient(
        "linear dX",
        &host(g.dx.as_ref().unwrap()),
        &host(x),
        &all(x.numel()),
        TOL,
        |v| with(x, v, |t| c.loss(t, w, b, a, bl, xl)),
    );
    check_gradient(
        "linear dW",
        &host(g.dw.as_ref().unwrap()),
        &host(w),
        &all(w.numel()),
        TOL,
        |v| with(w, v, |t| c.loss(x, t, b, a, bl, xl)),
    );
    check_gradient(
        "linear db",
        &host(g.dbias.as_ref().unwrap()),
        &host(b),
        &all(b.numel()),
        TOL,
        |v| with(b, v, |t| c.loss(x, w, t, a, bl, xl)),
    );
    check_gradient(
        "linear dA",
        &host(g.dlora_a.as_ref().unwrap()),
        &host(a),
        &all(a.numel()),
        TOL,
        |v| with(a, v, |t| c.loss(x, w, b, t, bl, xl)),
    );
    check_gradient(
        "linear dB",
        &host(g.dlora_b.as_ref().unwrap()),
        &host(bl),
        &all(bl.numel()),
        TOL,
        |v| with(bl, v, |t| c.loss(x, w, b, a, t, xl)),
    );
    check_gradient(
        "linear dX_lora",
        &host(g.dlora_input.as_ref().unwrap()),
        &host(xl),
        &all(xl.numel()),
        TOL,
        |v| with(xl, v, |t| c.loss(x, w, b, a, bl, t)),
    );
}

#[test]
fn linear_backward_computes_only_what_is_requested() {
    let c = linear_case();
    let cpu = cpu();
    let dy = tensor(&cpu, &[3, 5, 5], &c.r);
    // Bias-only request: no x, no weights' inputs needed, only db comes back.
    let g = cpu
        .linear_backward(
            LinearBackwardInputs {
                dy: &dy,
                x: None,
                w: None,
                lora: None,
                x_lora: None,
                h: None,
            },
            LinearGradRequest {
                dbias: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert!(g.dbias.is_some());
    assert!(
        g.dx.is_none()
            && g.dw.is_none()
            && g.dlora_a.is_none()
            && g.dlora_b.is_none()
            && g.dlora_input.is_none()
    );
    // Asking for dW without its input is an error, not a panic or a silent zero.
    let err = cpu
        .linear_backward(
            LinearBackwardInputs {
                dy: &dy,
                x: None,
                w: Some(&c.w),
                lora: None,
                x_lora: None,
                h: None,
            },
            LinearGradRequest {
                dw: true,
                ..Default::default()
            },
        )
        .expect_err("dW without x must fail");
    assert!(err.to_string().contains("`x`"), "{err}");
}

// ---- layernorm -----------------------------------------------------------------------------

#[test]
fn layernorm_every_gradient() {
    let mut rng = SplitMix::new(12);
    let x = random(&mut rng, &[5, 9], 2.0);
    let gamma = random(&mut rng, &[9], 1.0);
    let beta = random(&mut rng, &[9], 1.0);
    let r = nonzero(&mut rng, 45);
    let c = cpu();
    let loss = |x: &T, g: &T, b: &T| dot(&host(&c.layernorm_forward(x, g, b, 1e-5).unwrap().y), &r);
    let out = c.layernorm_forward(&x, &gamma, &beta, 1e-5).unwrap();
    let dy = tensor(&c, &[5, 9], &r);
    let g = c
        .layernorm_backward(
            &dy,
            Some(&x),
            Some(&out.mean),
            Some(&out.rstd),
            Some(&gamma),
            LayerNormGradRequest {
                dx: true,
                dgamma: true,
                dbeta: true,
            },
        )
        .unwrap();
    check_gradient(
        "layernorm dx",
        &host(g.dx.as_ref().unwrap()),
        &host(&x),
        &all(45),
        TOL,
        |v| with(&x, v, |t| loss(t, &gamma, &beta)),
    );
    check_gradient(
        "layernorm dgamma",
        &host(g.dgamma.as_ref().unwrap()),
        &host(&gamma),
        &all(9),
        TOL,
        |v| with(&gamma, v, |t| loss(&x, t, &beta)),
    );
    check_gradient(
        "layernorm dbeta",
        &host(g.dbeta.as_ref().unwrap()),
        &host(&beta),
        &all(9),
        TOL,
        |v| with(&beta, v, |t| loss(&x, &gamma, t)),
    );
}

// ---- attention -----------------------------------------------------------------------------

fn attention_check(dropout: Option<Dropout>, label: &str) {
    // 4 sequences of 7 tokens, 3 heads of 5: lengths 7, 4, 1 and 0 (a fully padded sequence).
    let (batch, seq, hidden) = (4, 7, 15);
    let lengths = [7usize, 4, 1, 0];
    let mut rng = SplitMix::new(13);
    let q = random(&mut rng, &[batch * seq, hidden], 1.0);
    let k = random(&mut rng, &[batch * seq, hidden], 1.0);
    let v = random(&mut rng, &[batch * seq, hidden], 1.0);
    let r = nonzero(&mut rng, batch * seq * hidden);
    let c = cpu();
    let mask_values: Vec<u32> = lengths
        .iter()
        .flat_map(|&l| (0..seq).map(move |t| u32::from(t < l)))
        .collect();
    let mask = c
        .tensor_from_u32(Shape::new([batch, seq]), &mask_values)
        .unwrap();
    let config = AttentionConfig {
        heads: 3,
        scale: 1.0 / 5f64.sqrt(),
        dropout,
    };
    let loss = |q: &T, k: &T, v: &T| {
        dot(
            &host(&c.attention_forward(q, k, v, &mask, &config).unwrap().out),
            &r,
        )
    };
    let out = c.attention_forward(&q, &k, &v, &mask, &config).unwrap();
    let dy = tensor(&c, out.out.dims(), &r);
    let g = c
        .attention_backward(
            &dy,
            &q,
            &k,
            Some(&v),
            &out.lse,
            &mask,
            &config,
            AttentionGradRequest {
                dq: true,
                dk: true,
                dv: true,
            },
        )
        .unwrap();
    let n = q.numel();
    check_gradient(
        &format!("attention{label} dq"),
        &host(g.dq.as_ref().unwrap()),
        &host(&q),
        &all(n),
        TOL,
        |x| with(&q, x, |t| loss(t, &k, &v)),
    );
    check_gradient(
        &format!("attention{label} dk"),
        &host(g.dk.as_ref().unwrap()),
        &host(&k),
        &all(n),
        TOL,
        |x| with(&k, x, |t| loss(&q, t, &v)),
    );
    check_gradient(
        &format!("attention{label} dv"),
        &host(g.dv.as_ref().unwrap()),
        &host(&v),
        &all(n),
        TOL,
        |x| with(&v, x, |t| loss(&q, &k, t)),
    );
    // The fully padded sequence attends to nothing: its context is exactly zero.
    let o = host(&out.out);
    assert!(o[3 * seq * hidden..].iter().all(|&x| x == 0.0));
    assert!(o[..3 * seq * hidden].iter().all(|&x| x != 0.0) || dropout.is_some());
}

#[test]
fn attention_every_gradient_with_padding() {
    attention_check(None, "");
}

#[test]
fn attention_every_gradient_with_dropout() {
    attention_check(Some(Dropout { p: 0.2, seed: 99 }), "+dropout");
}

#[test]
fn attention_matches_direct_softmax() {
    direct_softmax_check(false);
}

/// The context of attention (with a relative position bias `bias[seq − 1 + j − i][h]` added
/// to the scores where `with_bias`), checked independently: softmax written out per query,
/// against the backend's forward. Returns q (as k and v too), the mask, the bias and the
/// config, for further checks.
fn direct_softmax_check(with_bias: bool) -> (T, T, T, AttentionConfig) {
    let (batch, seq, heads, dim) = (2, 5, 2, 3);
    let hidden = heads * dim;
    let mut rng = SplitMix::new(14);
    let q = random(&mut rng, &[batch * seq, hidden], 1.0);
    let k = random(&mut rng, &[batch * seq, hidden], 1.0);
    let v = random(&mut rng, &[batch * seq, hidden], 1.0);
    let bias = random(&mut rng, &[2 * seq - 1, heads], 2.0);
    let lengths = [5usize, 3];
    let c = cpu();
    let mask_values: Vec<u32> = lengths
        .iter()
        .flat_map(|&l| (0..seq).map(move |t| u32::from(t < l)))
        .collect();
    let mask = c
        .tensor_from_u32(Shape::new([batch, seq]), &mask_values)
        .unwrap();
    let scale = 0.6;
    let config = AttentionConfig {
        heads,
        scale,
        dropout: None,
    };
    let forward = match with_bias {
        true => c.attention_forward_with_position_bias(&q, &k, &v, &mask, &bias, &config),
        false => c.attention_forward(&q, &k, &v, &mask, &config),
    };
    let out = host(&forward.unwrap().out);
    let (qh, kh, vh, bh) = (host(&q), host(&k), host(&v), host(&bias));
    for b in 0..batch {
        for h in 0..heads {
            for i in 0..seq {
                let at = |m: &[f64], t: usize, e: usize| m[(b * seq + t) * hidden + h * dim + e];
                let s: Vec<f64> = (0..lengths[b])
                    .map(|j| {
                        let qk: f64 = (0..dim).map(|e| at(&qh, i, e) * at(&kh, j, e)).sum();
                        let shift = if with_bias {
                            bh[(seq - 1 + j - i) * heads + h]
                        } else {
                            0.0
                        };
                        scale * qk + shift
                    })
                    .collect();
                let z: f64 = s.iter().map(|x| x.exp()).sum();
                for e in 0..dim {
                    let want: f64 = s
                        .iter()
                        .enumerate()
                        .map(|(j, x)| x.exp() / z * at(&vh, j, e))
                        .sum();
                    let got = out[(b * seq + i) * hidden + h * dim + e];
                    assert!(
                        (got - want).abs() < 1e-12,
                        "b{b} h{h} i{i} e{e}: {got} vs {want}"
                    );
                }
            }
        }
    }
    (q, mask, bias, config)
}

/// Attention with MPNet's relative position bias: every gradient, the bias's included,
/// against finite differences, with padded and fully padded sequences.
fn position_bias_check(dropout: Option<Dropout>, label: &str) {
    let (batch, seq, heads, hidden) = (3, 6, 3, 12);
    let lengths = [6usize, 3, 0];
    let mut rng = SplitMix::new(23);
    let q = random(&mut rng, &[batch * seq, hidden], 1.0);
    let k = random(&mut rng, &[batch * seq, hidden], 1.0);
    let v = random(&mut rng, &[batch * seq, hidden], 1.0);
    let bias = random(&mut rng, &[2 * seq - 1, heads], 1.5);
    let r = nonzero(&mut rng, batch * seq * hidden);
    let c = cpu();
    let mask_values: Vec<u32> = lengths
        .iter()
        .flat_map(|&l| (0..seq).map(move |t| u32::from(t < l)))
        .collect();
    let mask = c
        .tensor_from_u32(Shape::new([batch, seq]), &mask_values)
        .unwrap();
    let config = AttentionConfig {
        heads,
        scale: 0.5,
        dropout,
    };
    let loss = |q: &T, k: &T, v: &T, b: &T| {
        let out = c
            .attention_forward_with_position_bias(q, k, v, &mask, b, &config)
            .unwrap();
        dot(&host(&out.out), &r)
    };
    let out = c
        .attention_forward_with_position_bias(&q, &k, &v, &mask, &bias, &config)
        .unwrap();
    let dy = tensor(&c, out.out.dims(), &r);
    let every = AttentionGradRequest {
        dq: true,
        dk: true,
        dv: true,
    };
    let (g, d_bias) = c
        .attention_backward_with_position_bias(
            &dy,
            &q,
            &k,
            Some(&v),
            &out.lse,
            &mask,
            &bias,
            &config,
            every,
            true,
        )
        .unwrap();
    let n = q.numel();
    let cases: [(&str, &T, Vec<f64>); 4] = [
        ("dq", &q, host(g.dq.as_ref().unwrap())),
        ("dk", &k, host(g.dk.as_ref().unwrap())),
        ("dv", &v, host(g.dv.as_ref().unwrap())),
        ("d_position_bias", &bias, host(d_bias.as_ref().unwrap())),
    ];
    for (i, (name, at, analytic)) in cases.iter().enumerate() {
        let count = if i == 3 { bias.numel() } else { n };
        check_gradient(
            &format!("attention with position bias{label} {name}"),
            analytic,
            &host(at),
            &all(count),
            TOL,
            |x| {
                with(at, x, |t| {
                    let mut args = [&q, &k, &v, &bias];
                    args[i] = t;
                    loss(args[0], args[1], args[2], args[3])
                })
            },
        );
    }
    // Without the bias's gradient asked for, the others are the same bits.
    let (again, none) = c
        .attention_backward_with_position_bias(
            &dy,
            &q,
            &k,
            Some(&v),
            &out.lse,
            &mask,
            &bias,
            &config,
            every,
            false,
        )
        .unwrap();
    assert!(none.is_none());
    for (g, (name, _, want)) in [&again.dq, &again.dk, &again.dv].iter().zip(&cases) {
        assert_eq!(&host(g.as_ref().unwrap()), want, "{name}");
    }
    // The bias's gradient alone still needs `v` (dS needs dP = dO·Vᵀ).
    let only_bias = c.attention_backward_with_position_bias(
        &dy,
        &q,
        &k,
        None,
        &out.lse,
        &mask,
        &bias,
        &config,
        AttentionGradRequest::default(),
        true,
    );
    assert!(only_bias.is_err(), "the bias's gradient without v");
}

#[test]
fn attention_with_position_bias_every_gradient() {
    position_bias_check(None, "");
}

#[test]
fn attention_with_position_bias_every_gradient_with_dropout() {
    position_bias_check(Some(Dropout { p: 0.25, seed: 5 }), "+dropout");
}

/// The bias's place, checked independently (see [`direct_softmax_check`]); and a bias of the
/// wrong shape or dtype is refused by name.
#[test]
fn attention_with_position_bias_matches_direct_softmax() {
    let (q, mask, bias, config) = direct_softmax_check(true);
    let c = cpu();
    // One row short of `2·seq − 1`.
    let (rows, heads) = (bias.dims()[0], bias.dims()[1]);
    let short = tensor(&c, &[rows - 1, heads], &vec![0.5; (rows - 1) * heads]);
    let e = c
        .attention_forward_with_position_bias(&q, &q, &q, &mask, &short, &config)
        .unwrap_err()
        .to_string();
    assert!(e.contains("position_bias"), "{e}");
    let narrow = c
        .tensor_from_f64_as(
            bias.shape().clone(),
            &host(&bias),
            spafit::tensor::DType::F32,
        )
        .unwrap();
    let e = c
        .attention_forward_with_position_bias(&q, &q, &q, &mask, &narrow, &config)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`position_bias` is f32"), "{e}");
}

// ---- elementwise ---------------------------------------------------------------------------

fn unary_check(name: &str, forward: impl Fn(&T) -> T, backward: impl Fn(&T, &T, &T) -> T) {
    let mut rng = SplitMix::new(15);
    let x = random(&mut rng, &[4, 7], 3.0);
    let r = nonzero(&mut rng, 28);
    let c = cpu();
    let y = forward(&x);
    let dy = tensor(&c, &[4, 7], &r);
    let dx = backward(&dy, &x, &y);
    check_gradient(name, &host(&dx), &host(&x), &all(28), TOL, |v| {
        with(&x, v, |t| dot(&host(&forward(t)), &r))
    });
}

#[test]
fn gelu_gradient() {
    let c = cpu();
    unary_check(
        "gelu",
        |x| c.gelu_forward(x).unwrap(),
        |dy, x, _| c.gelu_backward(dy, x).unwrap(),
    );
}

#[test]
fn gelu_is_the_erf_form() {
    // Values of x·Φ(x) from the closed form with known Φ: Φ(1) = 0.841344746068543,
    // Φ(−0.5) = 0.308537538725987, Φ(2) = 0.977249868051821.
    let c = cpu();
    let y = host(
        &c.gelu_forward(&tensor(&c, &[3], &[1.0, -0.5, 2.0]))
            .unwrap(),
    );
    let want = [
        0.841344746068543,
        -0.5 * 0.308537538725987,
        2.0 * 0.977249868051821,
    ];
    for (g, w) in y.iter().zip(want) {
        assert!((g - w).abs() < 1e-14, "{g} vs {w}");
    }
}

/// GELU of a variable given up: where nothing is recorded, over the input's own buffer when
/// no other tensor shares it (an inference pass's FFN), else into a new one; the same bits as
/// `gelu` either way, in f32 and f64 (a size past two blocks of the elementwise split, not a
/// whole number of vectors), and recorded as `gelu` is where the input needs a gradient.
#[test]
fn gelu_of_a_given_up_input_is_gelu_in_place_where_nothing_shares_it() {
    use spafit::autograd::Tape;
    for backend in [CpuBackend::f32(), CpuBackend::f64()] {
        let mut rng = SplitMix::new(7);
        let values: Vec<f64> = (0..199 * 201).map(|_| rng.uniform_in(-6.0, 6.0)).collect();
        let make = || tensor(&backend, &[199, 201], &values);
        let want = host(&backend.gelu_forward(&make()).unwrap());
        let mut tape = Tape::new(backend);
        // Alone: written over.
        let x = make();
        let storage = x.storage_id();
        let y = tape.gelu_owned(tape.constant(x)).unwrap();
        assert_eq!(y.value().storage_id(), storage);
        assert!(host(y.value())
            .iter()
            .zip(&want)
            .all(|(g, w)| g.to_bits() == w.to_bits()));
        // Shared: the other tensor keeps its values.
        let x = make();
        let kept = x.clone();
        let y = tape.gelu_owned(tape.constant(x)).unwrap();
        assert_ne!(y.value().storage_id(), kept.storage_id());
        assert_eq!(host(&kept), host(&make()));
        assert!(host(y.value())
            .iter()
            .zip(&want)
            .all(|(g, w)| g.to_bits() == w.to_bits()));
        // Recorded: as `gelu`, into a new buffer, its input kept for the backward (the
        // parameter's only other holder gone, its buffer would be free to write over).
        let x = tape.param("x", &make(), true);
        let storage = x.value().storage_id();
        let y = tape.gelu_owned(x).unwrap();
        assert!(y.requires_grad());
        assert_ne!(y.value().storage_id(), storage);
    }
}

#[test]
fn tanh_gradient() {
    let c = cpu();
    unary_check(
        "tanh",
        |x| c.tanh_forward(x).unwrap(),
        |dy, _, y| c.tanh_backward(dy, y).unwrap(),
    );
}

#[test]
fn relu_gradient() {
    let c = cpu();
    unary_check(
        "relu",
        |x| c.relu_forward(x).unwrap(),
        |dy, _, y| c.relu_backward(dy, y).unwrap(),
    );
}

/// As PyTorch's: negatives and -0 give 0, NaN stays NaN (a diverged activation is not
/// hidden), and the derivative passes where the output is positive.
#[test]
fn relu_zeroes_negatives_and_keeps_nan() {
    let c = cpu();
    let x = tensor(&c, &[5], &[-2.0, -0.0, 0.5, f64::NAN, 3.0]);
    let y = host(&c.relu_forward(&x).unwrap());
    assert_eq!(&y[..3], &[0.0, 0.0, 0.5]);
    assert!(y[3].is_nan());
    assert_eq!(y[4], 3.0);
    let dy = tensor(&c, &[5], &[1.0; 5]);
    let dx = host(&c.relu_backward(&dy, &c.relu_forward(&x).unwrap()).unwrap());
    assert_eq!(dx, [0.0, 0.0, 1.0, 1.0, 1.0]);
}

#[test]
fn dropout_gradient_and_rate() {
    let c = cpu();
    let d = Dropout { p: 0.3, seed: 7 };
    unary_check(
        "dropout",
        |x| c.dropout(x, d).unwrap(),
        |dy, _, _| c.dropout(dy, d).unwrap(),
    );
    // Survivors are scaled by 1/(1-p), the rest are zero, and the rate is near p.
    let ones = tensor(&c, &[10_000], &vec![1.0; 10_000]);
    let y = host(&c.dropout(&ones, d).unwrap());
    let kept = y.iter().filter(|&&v| v != 0.0).count();
    assert!(y.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.7).abs() < 1e-12));
    assert!((kept as f64 / 10_000.0 - 0.7).abs() < 0.02, "kept {kept}");
}

#[test]
fn residual_add_gradient() {
    // add has no backward kernel: the gradient passes through. Check the forward it relies on.
    let mut rng = SplitMix::new(16);
    let (a, b) = (
        random(&mut rng, &[3, 5], 1.0),
        random(&mut rng, &[3, 5], 1.0),
    );
    let c = cpu();
    let r = nonzero(&mut rng, 15);
    check_gradient("add da", &r, &host(&a), &all(15), TOL, |v| {
        with(&a, v, |t| dot(&host(&c.add(t, &b).unwrap()), &r))
    });
}

// ---- embedding -----------------------------------------------------------------------------

#[test]
fn embedding_gradient_with_repeated_ids() {
    let mut rng = SplitMix::new(17);
    let table = random(&mut rng, &[11, 6], 1.0);
    let c = cpu();
    let ids = c
        .tensor_from_u32(Shape::new([3, 3]), &[4, 0, 10, 4, 7, 4, 1, 10, 3])
        .unwrap();
    let r = nonzero(&mut rng, 9 * 6);
    let out = c.embedding_forward(&table, &ids).unwrap();
    assert_eq!(out.dims(), &[3, 3, 6]);
    let dt = c
        .embedding_backward(&tensor(&c, &[9, 6], &r), &ids, 11)
        .unwrap();
    check_gradient(
        "embedding dtable",
        &host(&dt),
        &host(&table),
        &all(66),
        TOL,
        |v| {
            with(&table, v, |t| {
                dot(&host(&c.embedding_forward(t, &ids).unwrap()), &r)
            })
        },
    );
}

// ---- losses --------------------------------------------------------------------------------

#[test]
fn cross_entropy_gradient() {
    let mut rng = SplitMix::new(18);
    let logits = random(&mut rng, &[7, 3], 2.0);
    let c = cpu();
    let labels = c
        .tensor_from_u32(Shape::new([7]), &[0, 2, 1, 1, 0, 2, 2])
        .unwrap();
    let d_loss = tensor(&c, &[1], &[0.7]);
    let g = c.cross_entropy_backward(&d_loss, &logits, &labels).unwrap();
    check_gradient(
        "cross_entropy dlogits",
        &host(&g),
        &host(&logits),
        &all(21),
        TOL,
        |v| {
            with(&logits, v, |t| {
                0.7 * host(&c.cross_entropy_forward(t, &labels).unwrap())[0]
            })
        },
    );
    // log(3) for uniform logits: an independent value.
    let flat = tensor(&c, &[2, 3], &[0.5; 6]);
    let two = c.tensor_from_u32(Shape::new([2]), &[0, 2]).unwrap();
    let l = host(&c.cross_entropy_forward(&flat, &two).unwrap())[0];
    assert!((l - 3f64.ln()).abs() < 1e-15);
}

#[test]
fn mse_gradient() {
    let mut rng = SplitMix::new(19);
    let pred = random(&mut rng, &[7, 1], 2.0);
    let target = random(&mut rng, &[7], 2.0);
    let c = cpu();
    let d_loss = tensor(&c, &[1], &[1.3]);
    let g = c.mse_backward(&d_loss, &pred, &target).unwrap();
    check_gradient("mse dpred", &host(&g), &host(&pred), &all(7), TOL, |v| {
        with(&pred, v, |t| {
            1.3 * host(&c.mse_forward(t, &target).unwrap())[0]
        })
    });
}

#[test]
fn bce_with_logits_gradient() {
    let mut rng = SplitMix::new(20);
    let logits = random(&mut rng, &[4, 3], 3.0);
    let c = cpu();
    let targets = tensor(
        &c,
        &[4, 3],
        &[1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.25, 0.0, 1.0],
    );
    let d_loss = tensor(&c, &[1], &[0.9]);
    let g = c
        .bce_with_logits_backward(&d_loss, &logits, &targets)
        .unwrap();
    check_gradient(
        "bce_with_logits dlogits",
        &host(&g),
        &host(&logits),
        &all(12),
        TOL,
        |v| {
            with(&logits, v, |t| {
                0.9 * host(&c.bce_with_logits_forward(t, &targets).unwrap())[0]
            })
        },
    );
    // Independent values: −log σ(z) and −log(1 − σ(z)) written out, at logits where the
    // sum ln(1 + e^z) would overflow or lose everything.
    let z = [-3.0, 0.5, 40.0, -745.5];
    let t = [1.0, 0.0, 0.0, 1.0];
    let loss = host(
        &c.bce_with_logits_forward(&tensor(&c, &[2, 2], &z), &tensor(&c, &[2, 2], &t))
            .unwrap(),
    )[0];
    let sigmoid = |z: f64| 1.0 / (1.0 + (-z).exp());
    let want = (-sigmoid(-3.0).ln() - (1.0 - sigmoid(0.5)).ln() + 40.0 + 745.5) / 4.0;
    assert!((loss - want).abs() < 1e-13 * want, "{loss} vs {want}");
    // A loss far below 1 keeps its digits: ln(1 + e^−40) is e^−40 to 2e-18 relative, where
    // 1 + e^−40 rounds to 1.
    let tiny = host(
        &c.bce_with_logits_forward(&tensor(&c, &[1, 1], &[-40.0]), &tensor(&c, &[1, 1], &[0.0]))
            .unwrap(),
    )[0];
    let want = (-40f64).exp();
    assert!((tiny - want).abs() < 1e-15 * want, "{tiny} vs {want}");
}

// ---- tape nodes ----------------------------------------------------------------------------
// The tape's own nodes against finite differences, where a node does more than call the
// backend op (dropout regenerates its mask from a seed; attention keeps only what the
// requested gradients need).

#[test]
fn tape_dropout_node_gradient() {
    use spafit::autograd::Tape;
    let mut rng = SplitMix::new(41);
    let x = random(&mut rng, &[9, 11], 1.0);
    let r = nonzero(&mut rng, 99);
    let drop = Some(Dropout { p: 0.3, seed: 17 });
    let loss = |x: &T| -> f64 {
        let mut tape = Tape::new(cpu());
        let xv = tape.param("x", x, true);
        let y = tape.dropout(&xv, drop).unwrap();
        dot(&host(y.value()), &r)
    };
    let mut tape = Tape::new(cpu());
    let xv = tape.param("x", &x, true);
    let y = tape.dropout(&xv, drop).unwrap();
    // loss = Σ y ∘ r through the tape: MSE against a target chosen so that d loss / d y = r.
    let target: Vec<f64> = host(y.value())
        .iter()
        .zip(&r)
        .map(|(a, b)| a - b / 2.0 * 99.0)
        .collect();
    let t = tensor(&cpu(), &[99], &target);
    let mse = tape.mse(&y, &t).unwrap();
    let grads = tape.backward(&mse).unwrap();
    // d mse / d y = 2 (y − t) / n = r: so the gradient of x is the gradient of Σ y ∘ r.
    check_gradient(
        "tape dropout node dx",
        &host(grads.get("x").unwrap()),
        &host(&x),
        &all(99),
        TOL,
        |v| with(&x, v, loss),
    );
}

#[test]
fn tape_attention_node_computes_dv_alone_without_v() {
    use spafit::autograd::Tape;
    let (batch, seq, hidden) = (2, 5, 6);
    let mut rng = SplitMix::new(43);
    let q = random(&mut rng, &[batch * seq, hidden], 1.0);
    let k = random(&mut rng, &[batch * seq, hidden], 1.0);
    let v = random(&mut rng, &[batch * seq, hidden], 1.0);
    let r = nonzero(&mut rng, batch * seq * hidden);
    let c = cpu();
    let mask = c
        .tensor_from_u32(Shape::new([batch, seq]), &[1, 1, 1, 0, 0, 1, 1, 1, 1, 1])
        .unwrap();
    let config = AttentionConfig {
        heads: 2,
        scale: 1.0 / 3f64.sqrt(),
        dropout: Some(Dropout { p: 0.2, seed: 5 }),
    };
    let out_of = |v: &T| c.attention_forward(&q, &k, v, &mask, &config).unwrap().out;
    let loss = |v: &T| dot(&host(&out_of(v)), &r);
    // Only v trains: the node keeps q, k (for the probabilities), not v.
    let mut tape = Tape::new(c);
    let (qv, kv) = (tape.param("q", &q, false), tape.param("k", &k, false));
    let vv = tape.param("v", &v, true);
    let out = tape.attention(&qv, &kv, &vv, &mask, config).unwrap();
    let kept = tape.stats().saved_activation_bytes;
    let lse_bytes = batch * 2 * seq * 8;
    assert_eq!(
        kept,
        q.size_in_bytes() + k.size_in_bytes() + lse_bytes + mask.size_in_bytes(),
        "the node keeps q, k, lse and the mask: not v, not the output"
    );
    let target: Vec<f64> = host(out.value())
        .iter()
        .zip(&r)
        .map(|(a, b)| a - b * r.len() as f64 / 2.0)
        .collect();
    let t = tensor(&c, &[batch * seq, hidden], &target);
    let mse = tape.mse(&out, &t).unwrap();
    let grads = tape.backward(&mse).unwrap();
    check_gradient(
        "tape attention node dv (v not kept)",
        &host(grads.get("v").unwrap()),
        &host(&v),
        &all(v.numel()),
        TOL,
        |x| with(&v, x, loss),
    );
}
