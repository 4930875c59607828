//! One test body per op, run on every backend against the f64 CPU reference: random
//! non-zero inputs at odd shapes, outputs poisoned with NaN before the kernels run, every
//! element checked. f32 ≤ 1e-5 relative, bf16 ≤ 1e-2 — both the mixed-precision bf16 mode
//! (f32 tensors, bf16 tensor cores) and bf16 storage (bf16 tensors everywhere). The CUDA cases run on a GPU when the
//! machine has one and on the CPU stand-in for the driver (`cuda-emu`) otherwise, so they
//! run everywhere; a machine that has neither fails them. Each checked result prints an `XB`
//! line for the GPU check table.

use crate::common;

use std::io::Write;

use common::attention_magnitudes::{attention_magnitudes, AttentionOperands};
use common::nonzero;
use spafit::backend::cpu::CpuBackend;
use spafit::backend::cuda::{CudaBackend, Driver};
use spafit::backend::{
    AdamWStep, AdamWUpdate, AttentionConfig, AttentionGradRequest, Backend, Dropout,
    LayerNormGradRequest, LinearBackwardInputs, LinearForwardOptions, LinearGradRequest,
    LoraWeights,
};
use spafit::rng::SplitMix;
use spafit::tensor::{DType, Shape, Tensor};

fn reference() -> CpuBackend {
    CpuBackend::f64()
}

/// The CUDA backend (a GPU, else the CPU stand-in) with poisoned outputs.
fn cuda(dtype: DType) -> CudaBackend {
    CudaBackend::hardware_or_emulated(dtype)
        .map(CudaBackend::with_poisoned_outputs)
        .unwrap_or_else(|e| panic!("no CUDA backend, not even the CPU stand-in: {e}"))
}

/// Compares `got` (from backend `b`) with the f64 reference; every element must be finite.
fn check<B: Backend>(b: &B, what: &str, got: &[f64], want: &[f64], tol: f64) {
    check_against(b, what, got, want, want, tol)
}

/// `check`, with the error relative to the norm of `scale` (of the same length) instead of
/// `want`'s.
fn check_against<B: Backend>(
    b: &B,
    what: &str,
    got: &[f64],
    want: &[f64],
    scale: &[f64],
    tol: f64,
) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    assert_eq!(scale.len(), want.len(), "{what}: length of the scale");
    if let Some(i) = got.iter().position(|v| !v.is_finite()) {
        panic!(
            "{what} on {}: element {i} is {} (unwritten or overflow)",
            b.name(),
            got[i]
        );
    }
    let diff = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w) * (g - w))
        .sum::<f64>()
        .sqrt();
    let norm = scale.iter().map(|v| v * v).sum::<f64>().sqrt();
    let e = if norm == 0.0 { diff } else { diff / norm };
    let _ = writeln!(
        std::io::stdout(),
        "XB {} {} {e:.3e} {}",
        what.replace(' ', "/"),
        b.name(),
        if e <= tol { "PASS" } else { "FAIL" }
    );
    assert!(
        e <= tol,
        "{what} on {}: relative error {e:e} > {tol:e} (error norm {diff:e}, reference norm {:e}, \
         scale norm {norm:e})",
        b.name(),
        want.iter().map(|v| v * v).sum::<f64>().sqrt()
    );
}

fn up<B: Backend>(b: &B, dims: &[usize], v: &[f64]) -> Tensor<B> {
    b.tensor_from_f64(Shape::new(dims), v).unwrap()
}

fn down<B: Backend>(b: &B, t: &Tensor<B>) -> Vec<f64> {
    b.to_f64(t).unwrap()
}

/// The values `b` actually stores for `v` (bf16 rounds): the reference computes on these.
fn stored<B: Backend>(b: &B, dims: &[usize], v: &[f64]) -> Vec<f64> {
    down(b, &up(b, dims, v))
}

/// Where two lists of tensors, as raw bits, first differ and how many elements do: a failure
/// that reads in one line where `assert_eq!` on the bits would print every element.
fn bit_difference(got: &[Vec<u64>], want: &[Vec<u64>]) -> Option<String> {
    if got.len() != want.len() {
        return Some(format!("{} tensors against {}", got.len(), want.len()));
    }
    let mut first = None;
    let mut count = 0;
    for (t, (g, w)) in got.iter().zip(want).enumerate() {
        if g.len() != w.len() {
            return Some(format!(
                "tensor {t}: {} elements against {}",
                g.len(),
                w.len()
            ));
        }
        for (i, (a, b)) in g.iter().zip(w).enumerate() {
            if a != b {
                count += 1;
                first.get_or_insert((t, i, *a, *b));
            }
        }
    }
    first.map(|(t, i, a, b)| {
        format!(
            "tensor {t} element {i}: {} against {} ({count} elements differ)",
            f64::from_bits(a),
            f64::from_bits(b)
        )
    })
}

/// `each` (from [`Backend::sum_squares_each`] over `ts`) must be the bits of one
/// [`Backend::sum_squares`] per tensor.
fn assert_sums_of_squares_one_by_one<B: Backend>(
    b: &B,
    ts: &[&Tensor<B>],
    each: &[f64],
    what: &str,
) {
    let one_by_one: Vec<u64> = ts
        .iter()
        .map(|t| b.sum_squares(t).unwrap().to_bits())
        .collect();
    assert_eq!(
        each.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        one_by_one,
        "sum_squares_each on {}: {what}",
        b.name()
    );
}

/// Forward and backward on a short batch (one chunk of rows for dγ, dβ) and a taller one (its
/// column sums in several chunks of rows, added by a second pass), where dβ is also asked for
/// alone (BitFit trains a LayerNorm's β without its γ).
fn layernorm<B: Backend>(b: &B, tol: f64) {
    let r = reference();
    let mut rng = SplitMix::new(1);
    // Rows that fill no whole block of 8 warps; rows shorter than a warp, and longer than the
    // 1024 elements the CUDA kernels hold in registers.
    for (rows, n) in [(37, 129), (300, 77), (9, 20), (5, 1100)] {
        let tag = |what: &str| format!("layernorm.{what}/{rows}x{n}");
        let x = stored(b, &[rows, n], &nonzero(&mut rng, rows * n));
        let g = stored(b, &[n], &nonzero(&mut rng, n));
        let beta = stored(b, &[n], &nonzero(&mut rng, n));
        let dy = stored(b, &[rows, n], &nonzero(&mut rng, rows * n));
        let want = r
            .layernorm_forward(
                &up(&r, &[rows, n], &x),
                &up(&r, &[n], &g),
                &up(&r, &[n], &beta),
                1e-5,
            )
            .unwrap();
        let got = b
            .layernorm_forward(
                &up(b, &[rows, n], &x),
                &up(b, &[n], &g),
                &up(b, &[n], &beta),
                1e-5,
            )
            .unwrap();
        check(b, &tag("y"), &down(b, &got.y), &down(&r, &want.y), tol);
        // y again from x and the saved statistics (a backward's recomputation): its bits.
        let (xb, gb, bb) = (up(b, &[rows, n], &x), up(b, &[n], &g), up(b, &[n], &beta));
        let again = b
            .layernorm_apply(&xb, &got.mean, &got.rstd, &gb, &bb)
            .unwrap();
        let bits = |t: &Tensor<B>| down(b, t).into_iter().map(f64::to_bits).collect::<Vec<_>>();
        assert!(bits(&again) == bits(&got.y), "{}", tag("apply"));
        let refused = b.layernorm_apply(&xb, &gb, &got.rstd, &gb, &bb);
        assert!(
            refused.is_err(),
            "{}: a mean per column, not per row",
            tag("apply")
        );
        check(
            b,
            &tag("rstd"),
            &down(b, &got.rstd),
            &down(&r, &want.rstd),
            tol,
        );
        let all = LayerNormGradRequest {
            dx: true,
            dgamma: true,
            dbeta: true,
        };
        let beta_only = LayerNormGradRequest {
            dbeta: true,
            ..Default::default()
        };
        let wg = r
            .layernorm_backward(
                &up(&r, &[rows, n], &dy),
                Some(&up(&r, &[rows, n], &x)),
                Some(&want.mean),
                Some(&want.rstd),
                Some(&up(&r, &[n], &g)),
                all,
            )
            .unwrap();
        let backward = |request| {
            b.layernorm_backward(
                &up(b, &[rows, n], &dy),
                Some(&up(b, &[rows, n], &x)),
                Some(&got.mean),
                Some(&got.rstd),
                Some(&up(b, &[n], &g)),
                request,
            )
            .unwrap()
        };
        let gg = backward(all);
        let gb = backward(beta_only);
        assert!(
            gb.dgamma.is_none() && gb.dx.is_none(),
            "only dβ was asked for"
        );
        for (what, got, want) in [
            ("dx", &gg.dx, &wg.dx),
            ("dgamma", &gg.dgamma, &wg.dgamma),
            ("dbeta", &gg.dbeta, &wg.dbeta),
            ("dbeta_alone", &gb.dbeta, &wg.dbeta),
        ] {
            check(
                b,
                &tag(what),
                &down(b, got.as_ref().unwrap()),
                &down(&r, want.as_ref().unwrap()),
                tol,
            );
        }
    }
}

fn bias_gradient<B: Backend>(b: &B, tol: f64) {
    let r = reference();
    let mut rng = SplitMix::new(2);
    let (rows, cols) = (301, 67);
    let dy = stored(b, &[rows, cols], &nonzero(&mut rng, rows * cols));
    let want = LinearGradRequest {
        dbias: true,
        ..Default::default()
    };
    let inputs = |t| LinearBackwardInputs {
        dy: t,
        x: None,
        w: None,
        lora: None,
        x_lora: None,
        h: None,
    };
    let w = r
        .linear_backward(inputs(&up(&r, &[rows, cols], &dy)), want)
        .unwrap();
    let upd = up(b, &[rows, cols], &dy);
    let g = b
        .linear_backward(
            LinearBackwardInputs {
                dy: &upd,
                x: None,
                w: None,
                lora: None,
                x_lora: None,
                h: None,
            },
            want,
        )
        .unwrap();
    check(
        b,
        "bias_grad",
        &down(b, g.dbias.as_ref().unwrap()),
        &down(&r, w.dbias.as_ref().unwrap()),
        tol,
    );
}

/// DoRA's per-column ops: columns scaled (with a bias, and without: its gradient), and the
/// column dots and sums of its magnitude's and bias's gradients, over one block of rows, several
/// (the chunked reduction's second pass) and a tensor of three dimensions.
fn column_scales_and_sums<B: Backend>(b: &B, tol: f64) {
    let r = reference();
    let mut rng = SplitMix::new(4);
    for dims in [vec![5, 3], vec![301, 67], vec![2, 7, 33], vec![700, 2]] {
        let cols = *dims.last().unwrap();
        let n: usize = dims.iter().product();
        let z = stored(b, &dims, &nonzero(&mut rng, n));
        let y = stored(b, &dims, &nonzero(&mut rng, n));
        let bias = stored(b, &[cols], &nonzero(&mut rng, cols));
        let scale: Vec<f64> = (0..cols).map(|c| 0.5 + 0.01 * c as f64).collect();
        let shape: Vec<String> = dims.iter().map(usize::to_string).collect();
        let what = |op: &str| format!("{op} {}", shape.join("x"));
        for with_bias in [false, true] {
            let got = b
                .scale_columns(
                    &up(b, &dims, &z),
                    &scale,
                    with_bias.then(|| up(b, &[cols], &bias)).as_ref(),
                )
                .unwrap();
            let want = r
                .scale_columns(
                    &up(&r, &dims, &z),
                    &scale,
                    with_bias.then(|| up(&r, &[cols], &bias)).as_ref(),
                )
                .unwrap();
            assert_eq!(got.dims(), &dims[..]);
            check(
                b,
                &what("scale_columns"),
                &down(b, &got),
                &down(&r, &want),
                tol,
            );
        }
        let got = b.column_dots(&up(b, &dims, &z), &up(b, &dims, &y)).unwrap();
        let want: Vec<f64> = (0..cols)
            .map(|c| (c..n).step_by(cols).map(|i| z[i] * y[i]).sum())
            .collect();
        check(b, &what("column_dots"), &got, &want, tol);
        let got = b.column_sums(&up(b, &dims, &z)).unwrap();
        let want: Vec<f64> = (0..cols)
            .map(|c| (c..n).step_by(cols).map(|i| z[i]).sum())
            .collect();
        assert_eq!(got.dims(), &[cols]);
        check(b, &what("column_sums"), &down(b, &got), &want, tol);
    }
    // The scales must be one per column.
    let z = up(b, &[4, 3], &[1.0; 12]);
    let e = b.scale_columns(&z, &[1.0, 2.0], None).unwrap_err();
    assert!(e.to_string().contains("2 scales"), "{e}");
}

/// One linear-map case: rows, input, output, LoRA rank, whether the adapter reads a
/// different input (adapter dropout), and LoRA scale.
#[derive(Clone, Copy, Debug)]
struct LinearCase {
    rows: usize,
    input: usize,
    output: usize,
    rank: usize,
    separate_lora_input: bool,
    scale: f64,
}

/// Linear with fused LoRA, forward and every backward piece, on shapes that are not
/// multiples of any tile: odd K (rows staged without cp.async), aligned K (cp.async), more
/// than one block along M and N, ranks 1 and 64, long reductions (split-K).
fn linear<B: Backend>(b: &B, tol: f64) {
    let cases = [
        LinearCase {
            rows: 37,
            input: 29,
            output: 23,
            rank: 3,
            separate_lora_input: false,
            scale: 2.0,
        },
        LinearCase {
            rows: 130,
            input: 67,
            output: 150,
            rank: 1,
            separate_lora_input: true,
            scale: 0.7,
        },
        LinearCase {
            rows: 96,
            input: 64,
            output: 80,
            rank: 8,
            separate_lora_input: false,
            scale: 2.0,
        },
        LinearCase {
            rows: 300,
            input: 45,
            output: 33,
            rank: 64,
            separate_lora_input: true,
            scale: 0.25,
        },
    ];
    linear_cases(b, tol, cases, ErrorScale::OfResult);
}

/// Which norm a relative error divides by.
#[derive(Clone, Copy, PartialEq)]
enum ErrorScale {
    /// The reference result's own norm: exact for the hand-picked cases.
    OfResult,
    /// The norm of the same products over the inputs' magnitudes (`|X|·|W|ᵀ`, ...), the
    /// bound a rounded product is held to whatever cancels: for drawn shapes, where an output
    /// of a few elements can cancel to a small fraction of its terms.
    OfMagnitudes,
}

/// One linear case's operands as f64 values (already rounded to what `b` stores).
struct LinearOperands {
    case: LinearCase,
    x: Vec<f64>,
    x_lora: Vec<f64>,
    w: Vec<f64>,
    bias: Vec<f64>,
    a: Vec<f64>,
    b: Vec<f64>,
    dy: Vec<f64>,
}

impl LinearOperands {
    /// Case `c`'s operands drawn from `rng`, as `b` stores them (the adapter's input is `x`
    /// itself unless the case reads a separate one).
    fn drawn<B: Backend>(b: &B, c: LinearCase, rng: &mut SplitMix) -> Self {
        let mut operand = |dims: &[usize]| stored(b, dims, &nonzero(rng, dims.iter().product()));
        let x = operand(&[c.rows, c.input]);
        let x_lora = if c.separate_lora_input {
            operand(&[c.rows, c.input])
        } else {
            x.clone()
        };
        LinearOperands {
            case: c,
            x,
            x_lora,
            w: operand(&[c.output, c.input]),
            bias: operand(&[c.output]),
            a: operand(&[c.rank, c.input]),
            b: operand(&[c.output, c.rank]),
            dy: operand(&[c.rows, c.output]),
        }
    }

    /// Every result of the linear op on `be` (see [`linear_results`]) as raw bits.
    fn result_bits<B: Backend>(&self, be: &B) -> Vec<Vec<u64>> {
        linear_results(be, self, None)
            .into_iter()
            .map(|(_, v)| v.into_iter().map(f64::to_bits).collect())
            .collect()
    }

    fn magnitudes(&self) -> Self {
        let abs = |v: &[f64]| v.iter().map(|x| x.abs()).collect::<Vec<_>>();
        LinearOperands {
            case: LinearCase {
                scale: self.case.scale.abs(),
                ..self.case
            },
            x: abs(&self.x),
            x_lora: abs(&self.x_lora),
            w: abs(&self.w),
            bias: abs(&self.bias),
            a: abs(&self.a),
            b: abs(&self.b),
            dy: abs(&self.dy),
        }
    }
}

/// Makes the compactly stored copy of a frozen weight.
type FreezeWeight<'a, B> = &'a dyn Fn(&Tensor<B>) -> Tensor<B>;

/// Every result of the linear op on `be`, by name: the forward with and without LoRA, every
/// backward piece, dX with the LoRA term fused in, and (where given) the forward and dX with
/// the weight `frozen` makes of W (stored compactly).
fn linear_results<B: Backend>(
    be: &B,
    o: &LinearOperands,
    frozen: Option<FreezeWeight<B>>,
) -> Vec<(&'static str, Vec<f64>)> {
    let c = &o.case;
    let x = up(be, &[c.rows, c.input], &o.x);
    let xl = up(be, &[c.rows, c.input], &o.x_lora);
    let w = up(be, &[c.output, c.input], &o.w);
    let bias = up(be, &[c.output], &o.bias);
    let a = up(be, &[c.rank, c.input], &o.a);
    let bl = up(be, &[c.output, c.rank], &o.b);
    let dy = up(be, &[c.rows, c.output], &o.dy);
    let lora = || LoraWeights {
        a: &a,
        b: &bl,
        scale: c.scale,
    };
    let mut out = Vec::new();
    let y = be
        .linear_forward(&x, &w, Some(&bias), Some(lora()), Some(&xl))
        .unwrap();
    out.push(("y", down(be, &y.y)));
    out.push(("h", down(be, y.h.as_ref().unwrap())));
    let plain = be.linear_forward(&x, &w, None, None, None).unwrap();
    out.push(("y_plain", down(be, &plain.y)));
    let every = common::every_linear_grad();
    let g = be
        .linear_backward(
            LinearBackwardInputs {
                dy: &dy,
                x: Some(&x),
                w: Some(&w),
                lora: Some(lora()),
                x_lora: Some(&xl),
                h: y.h.as_ref(),
            },
            every,
        )
        .unwrap();
    for (name, t) in [
        ("dx", &g.dx),
        ("dw", &g.dw),
        ("dbias", &g.dbias),
        ("dlora_a", &g.dlora_a),
        ("dlora_b", &g.dlora_b),
        ("dlora_input", &g.dlora_input),
    ] {
        out.push((name, down(be, t.as_ref().unwrap())));
    }
    let only_dx = LinearGradRequest {
        dx: true,
        ..Default::default()
    };
    if let Some(frozen) = frozen {
        let wc = frozen(&w);
        let yc = be
            .linear_forward(&x, &wc, Some(&bias), Some(lora()), Some(&xl))
            .unwrap();
        out.push(("y_frozen_bf16", down(be, &yc.y)));
        let d = be
            .linear_backward(
                LinearBackwardInputs {
                    dy: &dy,
                    x: None,
                    w: Some(&wc),
                    lora: None,
                    x_lora: None,
                    h: None,
                },
                only_dx,
            )
            .unwrap();
        out.push(("dx_frozen_bf16", down(be, d.dx.as_ref().unwrap())));
    }
    let fused = LinearGradRequest {
        dx_includes_lora: true,
        ..only_dx
    };
    let f = be
        .linear_backward(
            LinearBackwardInputs {
                dy: &dy,
                x: None,
                w: Some(&w),
                lora: Some(lora()),
                x_lora: None,
                h: None,
            },
            fused,
        )
        .unwrap();
    assert!(
        f.dlora_input.is_none() && f.dw.is_none(),
        "only dX was asked for"
    );
    out.push(("dx_fused_lora", down(be, f.dx.as_ref().unwrap())));
    out
}

/// Forward, every backward piece, the bf16-stored weight and the fused dX of each case
/// against the f64 reference.
fn linear_cases<B: Backend>(
    b: &B,
    tol: f64,
    cases: impl IntoIterator<Item = LinearCase>,
    scale: ErrorScale,
) {
    let r = reference();
    let mut rng = SplitMix::new(21);
    for c in cases {
        let tag = format!("{}x{}x{}r{}", c.rows, c.input, c.output, c.rank);
        let o = LinearOperands::drawn(b, c, &mut rng);
        // A frozen weight stored compactly (bf16 in bf16 mode): the reference multiplies the
        // same rounded values.
        let compact = b.frozen_dtype() != b.float_dtype();
        let w_rounded = compact.then(|| {
            down(
                b,
                &b.cast(&up(b, &[c.output, c.input], &o.w), b.frozen_dtype())
                    .unwrap(),
            )
        });
        let cast = |w: &Tensor<B>| b.cast(w, b.frozen_dtype()).unwrap();
        let rounded =
            |_: &Tensor<CpuBackend>| up(&r, &[c.output, c.input], w_rounded.as_ref().unwrap());
        let got = linear_results(
            b,
            &o,
            compact.then_some(&cast as &dyn Fn(&Tensor<B>) -> Tensor<B>),
        );
        let want = linear_results(
            &r,
            &o,
            compact.then_some(&rounded as &dyn Fn(&Tensor<CpuBackend>) -> Tensor<CpuBackend>),
        );
        let norms = match scale {
            ErrorScale::OfResult => None,
            ErrorScale::OfMagnitudes => {
                let m = o.magnitudes();
                let abs_rounded = |_: &Tensor<CpuBackend>| {
                    let v: Vec<f64> = w_rounded
                        .as_ref()
                        .unwrap()
                        .iter()
                        .map(|x| x.abs())
                        .collect();
                    up(&r, &[c.output, c.input], &v)
                };
                Some(linear_results(
                    &r,
                    &m,
                    compact.then_some(
                        &abs_rounded as &dyn Fn(&Tensor<CpuBackend>) -> Tensor<CpuBackend>,
                    ),
                ))
            }
        };
        for (i, ((name, g), (name_r, w))) in got.iter().zip(&want).enumerate() {
            assert_eq!(name, name_r);
            let what = format!("linear.{name} {tag}");
            match &norms {
                None => check(b, &what, g, w, tol),
                Some(n) => check_against(b, &what, g, w, &n[i].1, tol),
            }
        }
    }
}

/// Self-attention forward and backward with padding masks: a fully padded sequence (every
/// key masked: zero context), padded tails, a mask with holes, more than one 64-row tile per
/// sequence up to 512 tokens, head dims 12 (rows not 16-byte aligned), 32, 64 and 128, with and
/// without dropout.
/// An attention case: (batch, seq, heads, head_dim, key lengths, holes in the mask, dropout).
type AttentionCase = (
    usize,
    usize,
    usize,
    usize,
    Vec<usize>,
    bool,
    Option<Dropout>,
);

fn attention<B: Backend>(b: &B, tol: f64) {
    attention_cases(b, tol, attention_suite(), ErrorScale::OfResult);
}

/// The cases of [`attention`].
fn attention_suite() -> [AttentionCase; 6] {
    [
        (3, 70, 3, 12, vec![70, 41, 0], false, None),
        // Head dim 32 fills the narrowest tensor-core tile exactly; 65 rows take two tiles.
        (
            2,
            65,
            2,
            32,
            vec![65, 30],
            false,
            Some(Dropout { p: 0.1, seed: 5 }),
        ),
        (
            1,
            512,
            2,
            64,
            vec![500],
            false,
            Some(Dropout { p: 0.1, seed: 3 }),
        ),
        (
            2,
            20,
            2,
            64,
            vec![17, 20],
            true,
            Some(Dropout { p: 0.2, seed: 99 }),
        ),
        (1, 9, 1, 128, vec![9], false, None),
        (
            2,
            33,
            4,
            8,
            vec![5, 33],
            false,
            Some(Dropout { p: 0.5, seed: 7 }),
        ),
    ]
}

/// Forward, backward and the dV-only path of each case against the f64 reference.
fn attention_cases<B: Backend>(
    b: &B,
    tol: f64,
    cases: impl IntoIterator<Item = AttentionCase>,
    error_scale: ErrorScale,
) {
    let r = reference();
    let mut rng = SplitMix::new(31);
    for (batch, seq, heads, hd, lengths, holes, dropout) in cases {
        let tag = format!(
            "b{batch}s{seq}h{heads}d{hd}{}",
            if dropout.is_some() { "drop" } else { "" }
        );
        let rows = batch * seq;
        let hidden = heads * hd;
        let mask: Vec<u32> = (0..batch)
            .flat_map(|bi| (0..seq).map(move |j| (bi, j)))
            .map(|(bi, j)| u32::from(j < lengths[bi] && !(holes && j % 5 == 3)))
            .collect();
        let q = stored(b, &[rows, hidden], &nonzero(&mut rng, rows * hidden));
        let k = stored(b, &[rows, hidden], &nonzero(&mut rng, rows * hidden));
        let v = stored(b, &[rows, hidden], &nonzero(&mut rng, rows * hidden));
        let dy = stored(b, &[rows, hidden], &nonzero(&mut rng, rows * hidden));
        let config = AttentionConfig {
            heads,
            scale: 1.0 / (hd as f64).sqrt(),
            dropout,
        };
        let mr = r.tensor_from_u32(Shape::new([batch, seq]), &mask).unwrap();
        let mb = b.tensor_from_u32(Shape::new([batch, seq]), &mask).unwrap();
        let dims = [rows, hidden];
        let (qr, kr, vr, dyr) = (
            up(&r, &dims, &q),
            up(&r, &dims, &k),
            up(&r, &dims, &v),
            up(&r, &dims, &dy),
        );
        let (qb, kb, vb, dyb) = (
            up(b, &dims, &q),
            up(b, &dims, &k),
            up(b, &dims, &v),
            up(b, &dims, &dy),
        );
        let operands = AttentionOperands {
            batch,
            seq,
            heads,
            head_dim: hd,
            mask: &mask,
            q: &q,
            k: &k,
            v: &v,
            dy: &dy,
            scale: config.scale,
            dropout: config.dropout.as_ref().map_or(0.0, |d| d.p),
            position_bias: None,
        };
        let magnitudes =
            (error_scale == ErrorScale::OfMagnitudes).then(|| attention_magnitudes(&operands));
        // A bound the exact result exceeds would be no bound (and could hide errors).
        let within = |what: &str, exact: &[f64], bound: &[f64]| {
            if let Some(i) = (0..exact.len()).find(|&i| exact[i].abs() > bound[i] * (1.0 + 1e-9)) {
                panic!(
                    "{what} {tag}: |{}| above its magnitude {} at {i}",
                    exact[i], bound[i]
                );
            }
        };
        let want = r.attention_forward(&qr, &kr, &vr, &mr, &config).unwrap();
        let got = b.attention_forward(&qb, &kb, &vb, &mb, &config).unwrap();
        if let Some(m) = &magnitudes {
            within("out", &down(&r, &want.out), &m.out);
            within("lse", &down(&r, &want.lse), &m.lse);
        }
        check_against(
            b,
            &format!("attention.out {tag}"),
            &down(b, &got.out),
            &down(&r, &want.out),
            magnitudes.as_ref().map_or(&down(&r, &want.out), |m| &m.out),
            tol,
        );
        check_against(
            b,
            &format!("attention.lse {tag}"),
            &down(b, &got.lse),
            &down(&r, &want.lse),
            magnitudes.as_ref().map_or(&down(&r, &want.lse), |m| &m.lse),
            tol,
        );
        // A fully masked sequence has exactly zero context.
        if let Some(bi) = lengths.iter().position(|&l| l == 0) {
            let o = down(b, &got.out);
            assert!(
                o[bi * seq * hidden..(bi + 1) * seq * hidden]
                    .iter()
                    .all(|&v| v == 0.0),
                "{tag}: masked context must be 0"
            );
        }
        let all = AttentionGradRequest {
            dq: true,
            dk: true,
            dv: true,
        };
        let gr = r
            .attention_backward(&dyr, &qr, &kr, Some(&vr), &want.lse, &mr, &config, all)
            .unwrap();
        let gb = b
            .attention_backward(&dyb, &qb, &kb, Some(&vb), &got.lse, &mb, &config, all)
            .unwrap();
        for (name, g, w, bound) in [
            ("dq", &gb.dq, &gr.dq, magnitudes.as_ref().map(|m| &m.dq)),
            ("dk", &gb.dk, &gr.dk, magnitudes.as_ref().map(|m| &m.dk)),
            ("dv", &gb.dv, &gr.dv, magnitudes.as_ref().map(|m| &m.dv)),
        ] {
            let want = down(&r, w.as_ref().unwrap());
            if let Some(bound) = bound {
                within(name, &want, bound);
            }
            check_against(
                b,
                &format!("attention.{name} {tag}"),
                &down(b, g.as_ref().unwrap()),
                &want,
                bound.unwrap_or(&want),
                tol,
            );
        }
        // dV alone reads neither the probabilities' gradient path nor dq/dk buffers.
        let only_dv = AttentionGradRequest {
            dv: true,
            ..Default::default()
        };
        // dV alone reads no v: none is given.
        let gv = b
            .attention_backward(&dyb, &qb, &kb, None, &got.lse, &mb, &config, only_dv)
            .unwrap();
        assert!(gv.dq.is_none() && gv.dk.is_none());
        let needs_v = AttentionGradRequest {
            dk: true,
            ..Default::default()
        };
        assert!(
            b.attention_backward(&dyb, &qb, &kb, None, &got.lse, &mb, &config, needs_v)
                .is_err(),
            "dk without v must be refused"
        );
        check_against(
            b,
            &format!("attention.dv_only {tag}"),
            &down(b, gv.dv.as_ref().unwrap()),
            &down(&r, gr.dv.as_ref().unwrap()),
            magnitudes
                .as_ref()
                .map_or(&down(&r, gr.dv.as_ref().unwrap()), |m| &m.dv),
            tol,
        );
    }
}

/// Attention with MPNet's relative position bias: the context, lse, dq, dk, dv and the bias's
/// gradient against the f64 reference, over two tensor-core tiles of keys with a padded tail,
/// and with dropout and a fully padded sequence.
fn attention_position_bias<B: Backend>(b: &B, tol: f64) {
    let cases = [
        (2, 70, 3, 12, vec![70, 41], None),
        (
            3,
            20,
            2,
            32,
            vec![20, 0, 7],
            Some(Dropout { p: 0.2, seed: 9 }),
        ),
        // mpnet-base's head width.
        (1, 23, 2, 64, vec![23], None),
        // A head dim whose last 32-column chunk is partial; a sequence ending inside a tile.
        (2, 45, 2, 40, vec![45, 33], None),
    ];
    position_bias_cases(b, tol, cases, ErrorScale::OfResult);
}

/// An attention case with a position bias: batch, sequence length, heads, head dim, each
/// sequence's length, dropout.
type PositionBiasCase = (usize, usize, usize, usize, Vec<usize>, Option<Dropout>);

/// [`attention_position_bias`]'s checks on `cases`, each result held to `error_scale`. Held
/// to its magnitudes, the bias's gradient (each diagonal a sum of up to batch × seq terms that
/// cancel) is held loosely, by up to the square root of that count against its own norm: the
/// hand-picked cases hold it to its result.
fn position_bias_cases<B: Backend>(
    b: &B,
    tol: f64,
    cases: impl IntoIterator<Item = PositionBiasCase>,
    error_scale: ErrorScale,
) {
    let r = reference();
    let mut rng = SplitMix::new(37);
    for (batch, seq, heads, hd, lengths, dropout) in cases {
        let tag = format!(
            "b{batch}s{seq}h{heads}d{hd}{}",
            if dropout.is_some() { "drop" } else { "" }
        );
        let (rows, hidden) = (batch * seq, heads * hd);
        let mask: Vec<u32> = (0..batch)
            .flat_map(|bi| (0..seq).map(move |j| (bi, j)))
            .map(|(bi, j)| u32::from(j < lengths[bi]))
            .collect();
        let operands: Vec<Vec<f64>> = (0..4)
            .map(|_| stored(b, &[rows, hidden], &nonzero(&mut rng, rows * hidden)))
            .collect();
        let diagonals = 2 * seq - 1;
        let bias: Vec<f64> = nonzero(&mut rng, diagonals * heads)
            .iter()
            .map(|v| 1.5 * v)
            .collect();
        let bias = stored(b, &[diagonals, heads], &bias);
        let config = AttentionConfig {
            heads,
            scale: 1.0 / (hd as f64).sqrt(),
            dropout,
        };
        let shapes = ([batch, seq], [rows, hidden], [diagonals, heads]);
        let want = biased_attention(&r, &operands, &bias, &mask, shapes, &config);
        let got = biased_attention(b, &operands, &bias, &mask, shapes, &config);
        let magnitudes = (error_scale == ErrorScale::OfMagnitudes).then(|| {
            let m = attention_magnitudes(&AttentionOperands {
                batch,
                seq,
                heads,
                head_dim: hd,
                mask: &mask,
                q: &operands[0],
                k: &operands[1],
                v: &operands[2],
                dy: &operands[3],
                scale: config.scale,
                dropout: config.dropout.as_ref().map_or(0.0, |d| d.p),
                position_bias: Some(&bias),
            });
            [m.out, m.lse, m.dq, m.dk, m.dv, m.d_position_bias]
        });
        for (i, name) in ["out", "lse", "dq", "dk", "dv", "d_position_bias"]
            .iter()
            .enumerate()
        {
            let what = format!("attention_position_bias.{name} {tag}");
            let Some(m) = &magnitudes else {
                check_against(b, &what, &got[i], &want[i], &want[i], tol);
                continue;
            };
            // A bound the exact result exceeds would be no bound (and could hide errors).
            if let Some(at) = (0..m[i].len()).find(|&e| want[i][e].abs() > m[i][e] * (1.0 + 1e-9)) {
                panic!(
                    "{what}: |{}| above its magnitude {} at {at}",
                    want[i][at], m[i][at]
                );
            }
            check_against(b, &what, &got[i], &want[i], &m[i], tol);
        }
    }
}

/// The context, lse, dq, dk, dv and the bias's gradient of attention with a position bias on
/// `be`, from q, k, v, dO in `operands`.
fn biased_attention<B: Backend>(
    be: &B,
    operands: &[Vec<f64>],
    bias: &[f64],
    mask: &[u32],
    (mask_dims, dims, bias_dims): ([usize; 2], [usize; 2], [usize; 2]),
    config: &AttentionConfig,
) -> Vec<Vec<f64>> {
    let [q, k, v, dy] = [0, 1, 2, 3].map(|i| up(be, &dims, &operands[i]));
    let bias = up(be, &bias_dims, bias);
    let mask = be.tensor_from_u32(Shape::new(mask_dims), mask).unwrap();
    let f = be
        .attention_forward_with_position_bias(&q, &k, &v, &mask, &bias, config)
        .unwrap();
    let backward = |want| {
        be.attention_backward_with_position_bias(
            &dy,
            &q,
            &k,
            Some(&v),
            &f.lse,
            &mask,
            &bias,
            config,
            want,
            true,
        )
        .unwrap()
    };
    let (g, d_bias) = backward(AttentionGradRequest {
        dq: true,
        dk: true,
        dv: true,
    });
    // The bias's gradient alone (no dq, dk, dv: a frozen layer's attention under a trained
    // table) is the same bits.
    let (none, alone) = backward(AttentionGradRequest::default());
    assert!(none.dq.is_none() && none.dk.is_none() && none.dv.is_none());
    let d_bias = down(be, &d_bias.unwrap());
    assert_eq!(down(be, &alone.unwrap()), d_bias, "{}", be.name());
    let mut outputs = vec![down(be, &f.out), down(be, &f.lse)];
    for t in [g.dq, g.dk, g.dv] {
        outputs.push(down(be, &t.unwrap()));
    }
    outputs.push(d_bias);
    outputs
}

fn elementwise<B: Backend>(b: &B, tol: f64) {
    let r = reference();
    let mut rng = SplitMix::new(3);
    let n = 1031;
    let x: Vec<f64> = stored(
        b,
        &[n],
        &nonzero(&mut rng, n)
            .iter()
            .map(|v| 3.0 * v)
            .collect::<Vec<_>>(),
    );
    let y = stored(b, &[n], &nonzero(&mut rng, n));
    let (xr, yr, xb, yb) = (
        up(&r, &[n], &x),
        up(&r, &[n], &y),
        up(b, &[n], &x),
        up(b, &[n], &y),
    );
    check(
        b,
        "gelu",
        &down(b, &b.gelu_forward(&xb).unwrap()),
        &down(&r, &r.gelu_forward(&xr).unwrap()),
        tol,
    );
    check(
        b,
        "gelu_backward",
        &down(b, &b.gelu_backward(&yb, &xb).unwrap()),
        &down(&r, &r.gelu_backward(&yr, &xr).unwrap()),
        tol,
    );
    check(
        b,
        "tanh",
        &down(b, &b.tanh_forward(&xb).unwrap()),
        &down(&r, &r.tanh_forward(&xr).unwrap()),
        tol,
    );
    check(
        b,
        "tanh_backward",
        &down(b, &b.tanh_backward(&yb, &xb).unwrap()),
        &down(&r, &r.tanh_backward(&yr, &xr).unwrap()),
        tol,
    );
    check(
        b,
        "relu",
        &down(b, &b.relu_forward(&xb).unwrap()),
        &down(&r, &r.relu_forward(&xr).unwrap()),
        tol,
    );
    check(
        b,
        "relu_backward",
        &down(b, &b.relu_backward(&yb, &xb).unwrap()),
        &down(&r, &r.relu_backward(&yr, &xr).unwrap()),
        tol,
    );
    check(
        b,
        "add",
        &down(b, &b.add(&xb, &yb).unwrap()),
        &down(&r, &r.add(&xr, &yr).unwrap()),
        tol,
    );
    let (mut accb, mut accr) = (xb.clone(), xr.clone());
    b.add_assign(&mut accb, &yb).unwrap();
    r.add_assign(&mut accr, &yr).unwrap();
    check(b, "add_assign", &down(b, &accb), &down(&r, &accr), tol);
    b.scale_in_place(&mut accb, 0.37).unwrap();
    r.scale_in_place(&mut accr, 0.37).unwrap();
    check(b, "scale", &down(b, &accb), &down(&r, &accr), tol);
    let (sb, sr) = (b.sum_squares(&xb).unwrap(), r.sum_squares(&xr).unwrap());
    check(b, "sum_squares", &[sb], &[sr], tol);
    let each = b.sum_squares_each(&[&xb, &yb, &accb]).unwrap();
    assert_sums_of_squares_one_by_one(b, &[&xb, &yb, &accb], &each, "elementwise");
    // Dropout: the same mask as the CPU, element for element.
    let d = Dropout { p: 0.3, seed: 1234 };
    let (db, dr) = (
        down(b, &b.dropout(&xb, d).unwrap()),
        down(&r, &r.dropout(&xr, d).unwrap()),
    );
    assert!(
        db.iter().zip(&dr).all(|(g, w)| (*g == 0.0) == (*w == 0.0)),
        "dropout masks differ on {}",
        b.name()
    );
    check(b, "dropout", &db, &dr, tol);
}

fn embedding<B: Backend>(b: &B, tol: f64) {
    let r = reference();
    let mut rng = SplitMix::new(4);
    let (vocab, dim) = (53, 45);
    let table = stored(b, &[vocab, dim], &nonzero(&mut rng, vocab * dim));
    let ids: Vec<u32> = (0..77).map(|i| ((i * 31 + 7) % 19) as u32 * 2).collect();
    let (ib, ir) = (
        b.tensor_from_u32(Shape::new([77]), &ids).unwrap(),
        r.tensor_from_u32(Shape::new([77]), &ids).unwrap(),
    );
    let got = b
        .embedding_forward(&up(b, &[vocab, dim], &table), &ib)
        .unwrap();
    let want = r
        .embedding_forward(&up(&r, &[vocab, dim], &table), &ir)
        .unwrap();
    check(b, "embedding", &down(b, &got), &down(&r, &want), tol);
    // Short groups, and one id at 240 of 300 positions (as a batch's token type is): the
    // CUDA backward then sums the long group in chunks.
    let frequent: Vec<u32> = (0..300)
        .map(|i| if i % 5 == 0 { (i % 7) as u32 * 2 } else { 4 })
        .collect();
    for ids in [ids, frequent] {
        let n = ids.len();
        let d_out = stored(b, &[n, dim], &nonzero(&mut rng, n * dim));
        let (ib, ir) = (
            b.tensor_from_u32(Shape::new([n]), &ids).unwrap(),
            r.tensor_from_u32(Shape::new([n]), &ids).unwrap(),
        );
        let gb = b
            .embedding_backward(&up(b, &[n, dim], &d_out), &ib, vocab)
            .unwrap();
        let gr = r
            .embedding_backward(&up(&r, &[n, dim], &d_out), &ir, vocab)
            .unwrap();
        check(
            b,
            &format!("embedding_backward/{n}"),
            &down(b, &gb),
            &down(&r, &gr),
            tol,
        );
    }
}

fn losses<B: Backend>(b: &B, tol: f64) {
    let r = reference();
    let mut rng = SplitMix::new(5);
    let (rows, classes) = (29, 3);
    let logits = stored(b, &[rows, classes], &nonzero(&mut rng, rows * classes));
    let labels: Vec<u32> = (0..rows).map(|i| (i % classes) as u32).collect();
    let (lb, lr) = (
        b.tensor_from_u32(Shape::new([rows]), &labels).unwrap(),
        r.tensor_from_u32(Shape::new([rows]), &labels).unwrap(),
    );
    let (zb, zr) = (
        up(b, &[rows, classes], &logits),
        up(&r, &[rows, classes], &logits),
    );
    check(
        b,
        "cross_entropy",
        &down(b, &b.cross_entropy_forward(&zb, &lb).unwrap()),
        &down(&r, &r.cross_entropy_forward(&zr, &lr).unwrap()),
        tol,
    );
    let (ob, or) = (up(b, &[1], &[0.7]), up(&r, &[1], &[0.7]));
    check(
        b,
        "cross_entropy_backward",
        &down(b, &b.cross_entropy_backward(&ob, &zb, &lb).unwrap()),
        &down(&r, &r.cross_entropy_backward(&or, &zr, &lr).unwrap()),
        tol,
    );
    let target = stored(b, &[rows], &nonzero(&mut rng, rows));
    let pred = stored(b, &[rows, 1], &nonzero(&mut rng, rows));
    let (pb, pr, tb, tr) = (
        up(b, &[rows, 1], &pred),
        up(&r, &[rows, 1], &pred),
        up(b, &[rows], &target),
        up(&r, &[rows], &target),
    );
    check(
        b,
        "mse",
        &down(b, &b.mse_forward(&pb, &tb).unwrap()),
        &down(&r, &r.mse_forward(&pr, &tr).unwrap()),
        tol,
    );
    check(
        b,
        "mse_backward",
        &down(b, &b.mse_backward(&ob, &pb, &tb).unwrap()),
        &down(&r, &r.mse_backward(&or, &pr, &tr).unwrap()),
        tol,
    );
    // Multi-label targets: 0/1 per class, with logits far past either side of zero (where a
    // naive log(sigmoid) overflows) among them, over more elements than one block of threads.
    let (rows, classes) = (67, 5);
    let mut wide = nonzero(&mut rng, rows * classes);
    wide[3] = 60.0;
    wide[4] = -60.0;
    let multi_hot: Vec<f64> = (0..rows * classes)
        .map(|i| f64::from(u8::from((i * 7 + i / classes) % 3 == 0)))
        .collect();
    let (logits, targets) = (
        stored(b, &[rows, classes], &wide),
        stored(b, &[rows, classes], &multi_hot),
    );
    let (zb, zr, tb, tr) = (
        up(b, &[rows, classes], &logits),
        up(&r, &[rows, classes], &logits),
        up(b, &[rows, classes], &targets),
        up(&r, &[rows, classes], &targets),
    );
    check(
        b,
        "bce_with_logits",
        &down(b, &b.bce_with_logits_forward(&zb, &tb).unwrap()),
        &down(&r, &r.bce_with_logits_forward(&zr, &tr).unwrap()),
        tol,
    );
    check(
        b,
        "bce_with_logits_backward",
        &down(b, &b.bce_with_logits_backward(&ob, &zb, &tb).unwrap()),
        &down(&r, &r.bce_with_logits_backward(&or, &zr, &tr).unwrap()),
        tol,
    );
}

fn adamw<B: Backend>(b: &B, tol: f64) {
    let r = reference();
    let mut rng = SplitMix::new(6);
    let n = 515;
    let p0 = nonzero(&mut rng, n);
    let g = stored(b, &[n], &nonzero(&mut rng, n));
    // Parameters and moments are master weights (f32 on CUDA, the backend's dtype on CPU);
    // the gradient comes in the storage dtype (bf16 on a bf16 backend).
    let master = |v: &[f64]| {
        b.tensor_from_f64_as(Shape::new([n]), v, b.master_dtype())
            .unwrap()
    };
    let (mut pb, mut mb, mut vb) = (master(&p0), master(&vec![0.0; n]), master(&vec![0.0; n]));
    let (mut pr, mut mr, mut vr) = (
        up(&r, &[n], &p0),
        up(&r, &[n], &vec![0.0; n]),
        up(&r, &[n], &vec![0.0; n]),
    );
    for step in 1..=3 {
        let s = AdamWStep {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            step,
        };
        b.adamw_step(&mut pb, &up(b, &[n], &g), &mut mb, &mut vb, &s)
            .unwrap();
        r.adamw_step(&mut pr, &up(&r, &[n], &g), &mut mr, &mut vr, &s)
            .unwrap();
    }
    check(b, "adamw.param", &down(b, &pb), &down(&r, &pr), tol);
    check(b, "adamw.m", &down(b, &mb), &down(&r, &mr), tol);
    check(b, "adamw.v", &down(b, &vb), &down(&r, &vr), tol);
}

/// Seeded random shapes beyond the hand-picked ones: every dimension drawn anew, so tile
/// edges, ranks, head dims that are not powers of two and padding patterns nobody chose get
/// tried. `SPAFIT_RANDOM_SHAPES=N` runs N cases of each kind (default: 6 linear, 3 attention, 2
/// attention with MPNet's position bias)
/// and `SPAFIT_RANDOM_SEED=S` another draw; a failure's message names the shape and the
/// norms. The linear results are held to the norm of the same products over the operands'
/// magnitudes, which bounds a rounded product's error however much it cancels; attention's
/// to its sums over their terms' magnitudes (`common::attention_magnitudes`). Held to the
/// result's own norm, a drawn case that cancelled failed bf16's tolerance with the usual
/// absolute error: dK of 3 × 159 tokens, head dim 1 (1.3e-3 against a norm of 0.038), and the
/// output of 2 × 109 tokens, head dim 1 (1.4e-3 against 0.098, seed 99).
fn random_shapes<B: Backend>(b: &B, tol: f64) {
    let count = |default: usize| {
        std::env::var("SPAFIT_RANDOM_SHAPES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let seed = std::env::var("SPAFIT_RANDOM_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2026);
    let mut rng = SplitMix::new(seed);
    // 1..=hi, with the first and last values drawn more often than the rest.
    let mut draw = |hi: usize| -> usize {
        match rng.next_u64() % 8 {
            0 => 1,
            1 => hi,
            _ => 1 + (rng.next_u64() % hi as u64) as usize,
        }
    };
    let linear: Vec<LinearCase> = (0..count(6))
        .map(|_| LinearCase {
            rows: draw(300),
            input: draw(200),
            output: draw(200),
            rank: draw(64),
            separate_lora_input: draw(2) == 2,
            scale: draw(4) as f64 / 2.0,
        })
        .collect();
    let attention: Vec<AttentionCase> = (0..count(3))
        .map(|_| {
            let (batch, seq, heads, head_dim) = (draw(3), draw(160), draw(3), draw(128));
            let lengths = (0..batch).map(|_| draw(seq + 1) - 1).collect();
            let holes = draw(2) == 2;
            let dropout = (draw(2) == 2).then(|| Dropout {
                p: draw(5) as f64 / 10.0,
                seed: draw(1000) as u64,
            });
            (batch, seq, heads, head_dim, lengths, holes, dropout)
        })
        .collect();
    // MPNet's: a prefix of keys attended (its masks are padding), up to 100 tokens.
    let biased: Vec<PositionBiasCase> = (0..count(2))
        .map(|_| {
            let (batch, seq, heads, head_dim) = (draw(3), draw(100), draw(3), draw(128));
            let lengths = (0..batch).map(|_| draw(seq + 1) - 1).collect();
            let dropout = (draw(2) == 2).then(|| Dropout {
                p: draw(5) as f64 / 10.0,
                seed: draw(1000) as u64,
            });
            (batch, seq, heads, head_dim, lengths, dropout)
        })
        .collect();
    for c in &linear {
        println!(
            "linear {}x{}x{} r{} separate {} scale {}",
            c.rows, c.input, c.output, c.rank, c.separate_lora_input, c.scale
        );
    }
    for c in &attention {
        println!("attention {c:?}");
    }
    for c in &biased {
        println!("attention with a position bias {c:?}");
    }
    linear_cases(b, tol, linear, ErrorScale::OfMagnitudes);
    attention_cases(b, tol, attention, ErrorScale::OfMagnitudes);
    position_bias_cases(b, tol, biased, ErrorScale::OfMagnitudes);
}

/// Instantiates each test body for the CPU (f32, f64, bf16 frozen weights) and CUDA (f32,
/// bf16) backends.
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;

            #[test]
            fn cpu_f64() {
                super::$name(&CpuBackend::f64(), 1e-12);
            }

            #[test]
            fn cpu_f32() {
                super::$name(&CpuBackend::f32(), 1e-5);
            }

            #[test]
            fn cpu_bf16() {
                super::$name(&CpuBackend::bf16(), 1e-2);
            }

            #[test]
            fn cuda_f32() {
                super::$name(&cuda(DType::F32), 1e-5);
            }

            #[test]
            fn cuda_bf16() {
                super::$name(&cuda(DType::BF16), 1e-2);
            }

            #[test]
            fn cuda_bf16_storage() {
                super::$name(&cuda(DType::BF16).with_bf16_storage(), 1e-2);
            }
        }
    )*};
}

on_every_backend!(
    linear,
    attention,
    attention_position_bias,
    random_shapes,
    layernorm,
    bias_gradient,
    column_scales_and_sums,
    elementwise,
    embedding,
    losses,
    adamw
);

#[test]
fn cuda_casts_between_f32_and_bf16() {
    casts_between_f32_and_bf16(&cuda(DType::F32));
}

/// The CPU's bf16 mode rounds its frozen weights the same way.
#[test]
fn cpu_casts_between_f32_and_bf16() {
    casts_between_f32_and_bf16(&CpuBackend::bf16());
}

fn casts_between_f32_and_bf16<B: Backend>(b: &B) {
    let mut rng = SplitMix::new(7);
    let x = nonzero(&mut rng, 1001);
    let t = up(b, &[7, 11, 13], &x);
    let half = b.cast(&t, DType::BF16).unwrap();
    assert_eq!(half.dtype(), DType::BF16);
    let want: Vec<f64> = x
        .iter()
        .map(|&v| half::bf16::from_f32(v as f32).to_f64())
        .collect();
    let got = down(b, &half);
    assert_eq!(
        got, want,
        "f32 → bf16 must round to nearest even, as half::bf16 does"
    );
    let back = b.cast(&half, DType::F32).unwrap();
    check(b, "cast", &down(b, &back), &want, 0.0);
    // Copied to the host as f32 (as files store them): the values `to_f64` gives, exactly.
    for tensor in [&t, &half] {
        let narrow: Vec<f64> = b
            .to_f32(tensor)
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect();
        assert_eq!(narrow, down(b, tensor), "to_f32 of {}", tensor.dtype());
    }
}

/// The sums of squares of many tensors in one call (the trainer's gradient norm): the bits
/// of one call per tensor, in one download instead of one each, for f32, bf16 and a list
/// mixing them (as a bf16 model's gradients of f32 masters and bf16 activations could), across
/// block counts (1 to 274 blocks of 256).
#[test]
fn cuda_sums_of_squares_of_many_tensors_take_one_download() {
    let r = reference();
    let mut rng = SplitMix::new(11);
    let sizes = [1, 300, 70_000, 257];
    let mixed = [DType::BF16, DType::F32, DType::BF16, DType::F32];
    for dtypes in [[DType::F32; 4], [DType::BF16; 4], mixed] {
        let b = cuda(DType::F32);
        let values: Vec<Vec<f64>> = sizes
            .iter()
            .zip(dtypes)
            .map(|(&n, dtype)| {
                let t = b
                    .tensor_from_f64_as(Shape::new([n]), &nonzero(&mut rng, n), dtype)
                    .unwrap();
                down(&b, &t)
            })
            .collect();
        let on_b: Vec<Tensor<CudaBackend>> = values
            .iter()
            .zip(dtypes)
            .map(|(v, dtype)| {
                b.tensor_from_f64_as(Shape::new([v.len()]), v, dtype)
                    .unwrap()
            })
            .collect();
        assert_eq!(
            on_b.iter().map(|t| t.dtype()).collect::<Vec<_>>(),
            dtypes.to_vec()
        );
        let all: Vec<&Tensor<CudaBackend>> = on_b.iter().collect();
        let before = b.downloads();
        let each = b.sum_squares_each(&all).unwrap();
        assert_eq!(
            b.downloads() - before,
            1,
            "downloads for {} tensors",
            all.len()
        );
        assert_sums_of_squares_one_by_one(&b, &all, &each, &format!("{dtypes:?}"));
        let want: Vec<f64> = values
            .iter()
            .map(|v| r.sum_squares(&up(&r, &[v.len()], v)).unwrap())
            .collect();
        check(&b, "sum_squares_each", &each, &want, 1e-5);
        assert!(b.sum_squares_each(&[]).unwrap().is_empty());
    }
}

/// Kernel times: while timing is on, every launch counts under its kernel's name with a
/// finite, non-negative device time, largest first; launches before the start count
/// nowhere, a stopped timer gives nothing more, a timer started again starts empty; the CPU
/// backend, which launches nothing, times nothing.
#[test]
fn cuda_kernel_times_count_every_launch_while_timing_is_on() {
    let mut rng = SplitMix::new(31);
    let b = cuda(DType::F32);
    let x = b
        .tensor_from_f64(Shape::new([37, 45]), &nonzero(&mut rng, 37 * 45))
        .unwrap();
    let untimed = b.gelu_forward(&x).unwrap();
    assert!(b.start_kernel_timing().unwrap());
    let first = b.launches();
    let y = b.gelu_forward(&x).unwrap();
    let z = b.gelu_forward(&y).unwrap();
    let mut sum = b.add(&z, &untimed).unwrap();
    b.scale_in_place(&mut sum, 0.5).unwrap();
    let launched = b.launches() - first;
    let times = b.stop_kernel_timing().unwrap().expect("timing was on");
    assert_eq!(b.stop_kernel_timing().unwrap(), None, "timing stopped");
    assert!(b.start_kernel_timing().unwrap());
    assert_eq!(b.stop_kernel_timing().unwrap(), Some(vec![]));
    let count = |name: &str| {
        times
            .iter()
            .find(|k| k.kernel == name)
            .map_or(0, |k| k.launches)
    };
    assert_eq!(
        times.iter().map(|k| k.launches).sum::<u64>(),
        launched,
        "{times:?}"
    );
    assert_eq!(
        (
            count("gelu_forward_f32"),
            count("add_f32"),
            count("scale_f32")
        ),
        (2, 1, 1),
        "{times:?}"
    );
    for k in &times {
        assert!(k.milliseconds.is_finite() && k.milliseconds >= 0.0, "{k:?}");
    }
    assert!(times
        .windows(2)
        .all(|w| w[0].milliseconds >= w[1].milliseconds));
    let cpu = CpuBackend::f64();
    assert!(!cpu.start_kernel_timing().unwrap());
    assert_eq!(cpu.stop_kernel_timing().unwrap(), None);
}

/// The optimizer's ops over a step's worth of tensors (more than one list of 48, f32, bf16
/// and mixed, 1 to 2048 blocks each, the largest striding): sums of squares, clipping's
/// scale and AdamW give the bits of one call per tensor from one launch per list of a dtype,
/// and an AdamW refused for one tensor changes none.
#[test]
fn cuda_optimizer_ops_over_many_tensors_take_a_launch_per_list() {
    const LIST: usize = 48;
    let mut rng = SplitMix::new(12);
    let count = 2 * LIST + 7;
    let sizes: Vec<usize> = (0..count)
        .map(|i| match i {
            5 => 70_000,
            // Past 2048 blocks of 256: the threads stride.
            7 => 600_001,
            _ => 1 + (i * 977) % 3000,
        })
        .collect();
    let b = cuda(DType::F32);
    let step = |step, weight_decay| AdamWStep {
        lr: 1e-2,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay,
        step,
    };
    let pick = |mix: usize, i: usize| match mix {
        0 => DType::F32,
        1 => DType::BF16,
        _ if i.is_multiple_of(3) => DType::BF16,
        _ => DType::F32,
    };
    for mix in 0..3 {
        let dtypes: Vec<DType> = (0..count).map(|i| pick(mix, i)).collect();
        let bf16s = dtypes.iter().filter(|&&d| d == DType::BF16).count();
        let lists = bf16s.div_ceil(LIST) + (count - bf16s).div_ceil(LIST);
        let make =
            |rng: &mut SplitMix, as_dtype: &dyn Fn(usize) -> DType| -> Vec<Tensor<CudaBackend>> {
                sizes
                    .iter()
                    .enumerate()
                    .map(|(i, &n)| {
                        b.tensor_from_f64_as(Shape::new([n]), &nonzero(rng, n), as_dtype(i))
                            .unwrap()
                    })
                    .collect()
            };
        let grads = make(&mut rng, &|i| dtypes[i]);
        let bits = |ts: &[Tensor<CudaBackend>]| -> Vec<Vec<u64>> {
            ts.iter()
                .map(|t| down(&b, t).iter().map(|v| v.to_bits()).collect())
                .collect()
        };

        let all: Vec<&Tensor<CudaBackend>> = grads.iter().collect();
        let before = b.launches();
        let each = b.sum_squares_each(&all).unwrap();
        assert_eq!(
            b.launches() - before,
            lists as u64,
            "sum_squares_each, mix {mix}"
        );
        assert_sums_of_squares_one_by_one(&b, &all, &each, &format!("mix {mix}"));

        let (mut listed, mut single) = (grads.clone(), grads.clone());
        let before = b.launches();
        b.scale_each(&mut listed.iter_mut().collect::<Vec<_>>(), 0.37)
            .unwrap();
        assert_eq!(b.launches() - before, lists as u64, "scale_each, mix {mix}");
        for t in &mut single {
            b.scale_in_place(t, 0.37).unwrap();
        }
        assert_eq!(
            bit_difference(&bits(&listed), &bits(&single)),
            None,
            "scale_each, mix {mix}"
        );
        assert!(
            bit_difference(&bits(&listed), &bits(&grads)).is_some(),
            "scale_each scales"
        );

        // Gradient accumulation: the sums are the gradients, the addends the scaled ones.
        let (mut sums, mut single) = (grads.clone(), grads.clone());
        let addends: Vec<&Tensor<CudaBackend>> = listed.iter().collect();
        let before = b.launches();
        b.add_assign_each(&mut sums.iter_mut().collect::<Vec<_>>(), &addends)
            .unwrap();
        assert_eq!(
            b.launches() - before,
            lists as u64,
            "add_assign_each, mix {mix}"
        );
        for (t, x) in single.iter_mut().zip(&listed) {
            b.add_assign(t, x).unwrap();
        }
        assert_eq!(
            bit_difference(&bits(&sums), &bits(&single)),
            None,
            "add_assign_each, mix {mix}"
        );
        assert!(
            bit_difference(&bits(&sums), &bits(&grads)).is_some(),
            "add_assign_each adds"
        );
        // An accumulator that shares its buffer with its addend (a clone) adds it once.
        let mut shared = grads[..3].to_vec();
        let same: Vec<&Tensor<CudaBackend>> = grads[..3].iter().collect();
        b.add_assign_each(&mut shared.iter_mut().collect::<Vec<_>>(), &same)
            .unwrap();
        let mut doubled = grads[..3].to_vec();
        b.scale_each(&mut doubled.iter_mut().collect::<Vec<_>>(), 2.0)
            .unwrap();
        assert_eq!(
            bit_difference(&bits(&shared), &bits(&doubled)),
            None,
            "x + x, mix {mix}"
        );
        // The last pair of other shapes: refused before any sum changes.
        let kept = bits(&sums);
        let wrong = b.zeros(Shape::new([sizes[count - 1] + 1])).unwrap();
        let mut addends = addends;
        addends[count - 1] = &wrong;
        let err = b
            .add_assign_each(&mut sums.iter_mut().collect::<Vec<_>>(), &addends)
            .unwrap_err();
        assert!(err.to_string().contains("add_assign"), "{err}");
        assert_eq!(
            bit_difference(&bits(&sums), &kept),
            None,
            "a refused add_assign_each changed a sum"
        );
        let err = b
            .add_assign_each(&mut sums.iter_mut().collect::<Vec<_>>(), &addends[1..])
            .unwrap_err();
        assert!(err.to_string().contains("accumulators"), "{err}");

        // AdamW: f32 masters, the gradients as they come; decay on every other tensor.
        let decay_of = |i: usize| if i.is_multiple_of(2) { 0.01 } else { 0.0 };
        let masters = make(&mut rng, &|_| DType::F32);
        let zeros = || -> Vec<Tensor<CudaBackend>> {
            sizes
                .iter()
                .map(|&n| b.zeros(Shape::new([n])).unwrap())
                .collect()
        };
        let (mut p1, mut m1, mut v1) = (masters.clone(), zeros(), zeros());
        let (mut p2, mut m2, mut v2) = (masters.clone(), zeros(), zeros());
        for t in 1..=2 {
            let mut updates: Vec<AdamWUpdate<'_, CudaBackend>> = p1
                .iter_mut()
                .zip(&mut m1)
                .zip(&mut v1)
                .zip(&grads)
                .enumerate()
                .map(|(i, (((param, m), v), grad))| AdamWUpdate {
                    param,
                    grad,
                    m,
                    v,
                    step: step(t, decay_of(i)),
                })
                .collect();
            let before = b.launches();
            b.adamw_step_each(&mut updates).unwrap();
            assert_eq!(
                b.launches() - before,
                lists as u64,
                "adamw_step_each, mix {mix}"
            );
            for i in 0..count {
                let s = step(t, decay_of(i));
                b.adamw_step(&mut p2[i], &grads[i], &mut m2[i], &mut v2[i], &s)
                    .unwrap();
            }
        }
        assert_eq!(
            bit_difference(&bits(&p1), &bits(&p2)),
            None,
            "adamw params, mix {mix}"
        );
        assert_eq!(
            bit_difference(&bits(&m1), &bits(&m2)),
            None,
            "adamw first moments, mix {mix}"
        );
        assert_eq!(
            bit_difference(&bits(&v1), &bits(&v2)),
            None,
            "adamw second moments, mix {mix}"
        );
        assert!(
            bit_difference(&bits(&p1), &bits(&masters)).is_some(),
            "adamw moves the parameters"
        );

        // The last gradient of the wrong shape: refused before any tensor changes.
        let wrong = b.zeros(Shape::new([sizes[count - 1] + 1])).unwrap();
        let kept = (bits(&p1), bits(&m1), bits(&v1));
        let mut updates: Vec<AdamWUpdate<'_, CudaBackend>> = p1
            .iter_mut()
            .zip(&mut m1)
            .zip(&mut v1)
            .zip(&grads)
            .enumerate()
            .map(|(i, (((param, m), v), grad))| AdamWUpdate {
                param,
                grad: if i == count - 1 { &wrong } else { grad },
                m,
                v,
                step: step(3, 0.0),
            })
            .collect();
        let before = b.launches();
        let err = b.adamw_step_each(&mut updates).unwrap_err().to_string();
        assert!(err.contains("grad"), "{err}");
        assert_eq!(b.launches(), before, "nothing launched");
        drop(updates);
        for (what, now, before) in [
            ("params", &p1, &kept.0),
            ("m", &m1, &kept.1),
            ("v", &v1, &kept.2),
        ] {
            assert_eq!(
                bit_difference(&bits(now), before),
                None,
                "a refused AdamW changed the {what}"
            );
        }
    }
}

/// The CUDA AdamW spells out every rounding (no fused multiply-add that ptxas may or may not
/// form), in the CPU backend's order: an f32 step on the device gives the CPU f32 backend's
/// bits, with f32 gradients and with bf16 ones (widened exactly on both sides), per tensor and
/// over a list. On an H200, before this, the two CUDA entries already disagreed with each other.
#[test]
fn cuda_adamw_in_f32_gives_the_cpu_backends_bits() {
    let gpu = cuda(DType::F32);
    let cpu = CpuBackend::f32();
    let mut rng = SplitMix::new(1729);
    // Past 2048 blocks of 256 (the threads stride), and a ragged small one.
    for (n, grad_dtype) in [
        (600_001, DType::F32),
        (70_001, DType::BF16),
        (37, DType::F32),
    ] {
        let p0 = nonzero(&mut rng, n);
        let g_gpu = gpu
            .tensor_from_f64_as(Shape::new([n]), &nonzero(&mut rng, n), grad_dtype)
            .unwrap();
        // The CPU gets the gradient as the device holds it (bf16 values are f32 values).
        let g_cpu = up(&cpu, &[n], &down(&gpu, &g_gpu));
        let zeros = vec![0.0; n];
        let (mut pg, mut mg, mut vg) = (
            up(&gpu, &[n], &p0),
            up(&gpu, &[n], &zeros),
            up(&gpu, &[n], &zeros),
        );
        let (mut pl, mut ml, mut vl) = (pg.clone(), mg.clone(), vg.clone());
        let (mut pc, mut mc, mut vc) = (
            up(&cpu, &[n], &p0),
            up(&cpu, &[n], &zeros),
            up(&cpu, &[n], &zeros),
        );
        for t in 1..=3 {
            let s = AdamWStep {
                lr: 3e-3,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.01,
                step: t,
            };
            gpu.adamw_step(&mut pg, &g_gpu, &mut mg, &mut vg, &s)
                .unwrap();
            gpu.adamw_step_each(&mut [AdamWUpdate {
                param: &mut pl,
                grad: &g_gpu,
                m: &mut ml,
                v: &mut vl,
                step: s,
            }])
            .unwrap();
            cpu.adamw_step(&mut pc, &g_cpu, &mut mc, &mut vc, &s)
                .unwrap();
        }
        for (what, device, listed, host) in [
            ("param", &pg, &pl, &pc),
            ("m", &mg, &ml, &mc),
            ("v", &vg, &vl, &vc),
        ] {
            let want = vec![down(&cpu, host).into_iter().map(f64::to_bits).collect()];
            for (how, t) in [("per tensor", device), ("over a list", listed)] {
                let got = vec![down(&gpu, t).into_iter().map(f64::to_bits).collect()];
                assert_eq!(
                    bit_difference(&got, &want),
                    None,
                    "{what} {how}, {n} elements, {grad_dtype:?} gradient (device against CPU)"
                );
            }
        }
        let start = vec![p0.iter().map(|v| v.to_bits()).collect()];
        let moved = vec![down(&gpu, &pg).into_iter().map(f64::to_bits).collect()];
        assert!(
            bit_difference(&moved, &start).is_some(),
            "the step moves the parameters"
        );
    }
}

/// A re-read f32 operand is rounded to bf16 by the cast kernel before the GEMM (so that the
/// kernel streams it asynchronously) with the rounding the kernel itself applies when it stages
/// f32: every result of the linear op, forward and backward, with LoRA, has the same bits
/// either way. The shapes are large enough for the rounding pass to run (operands of 64 Ki
/// elements or more, read by two or more blocks), which the launch count shows.
#[test]
fn cuda_gemm_precast_gives_the_same_bits() {
    let mut rng = SplitMix::new(2024);
    let b = cuda(DType::BF16);
    let c = LinearCase {
        rows: 384,
        input: 256,
        output: 272,
        rank: 8,
        separate_lora_input: true,
        scale: 2.0,
    };
    let o = LinearOperands::drawn(&b, c, &mut rng);
    let bits_of = |be: &CudaBackend| -> (Vec<Vec<u64>>, u64) {
        let before = be.launches();
        let bits = o.result_bits(be);
        (bits, be.launches() - before)
    };
    let (direct, direct_launches) = bits_of(&b.with_gemm_precast(false));
    let (precast, precast_launches) = bits_of(&b);
    assert!(
        precast_launches > direct_launches,
        "no operand was rounded first ({precast_launches} launches against {direct_launches})"
    );
    assert_eq!(bit_difference(&precast, &direct), None);
}

/// The linear op from `x`'s copy rounded for the products (what the tape passes in bf16 mode):
/// the forward from `linear_forward_with`, the backward with the copy as `x` and `x_lora`
/// (dW on the tensor cores, the adapter's dA on the narrow kernels, which read the bf16 copy
/// four elements at a time) — every result has the bits it has from `x` itself. In f32, and
/// for an input too small to pay, there is no copy; a copy of another dtype or shape, or a
/// bf16 input where the products do not round, is refused by name.
#[test]
fn cuda_linear_from_a_rounded_copy_gives_the_same_bits() {
    let mut rng = SplitMix::new(77);
    let be = cuda(DType::BF16);
    let c = LinearCase {
        rows: 384,
        input: 256,
        output: 272,
        rank: 8,
        separate_lora_input: false,
        scale: 2.0,
    };
    let o = LinearOperands::drawn(&be, c, &mut rng);
    let x = up(&be, &[c.rows, c.input], &o.x);
    let w = up(&be, &[c.output, c.input], &o.w);
    let bias = up(&be, &[c.output], &o.bias);
    let a = up(&be, &[c.rank, c.input], &o.a);
    let bl = up(&be, &[c.output, c.rank], &o.b);
    let dy = up(&be, &[c.rows, c.output], &o.dy);
    let lora = || LoraWeights {
        a: &a,
        b: &bl,
        scale: c.scale,
    };
    let xr = be
        .rounded_for_products(&x)
        .unwrap()
        .expect("bf16 mode rounds a large f32 input ahead");
    let rounded = |t| LinearForwardOptions {
        x_rounded: Some(t),
        output_for_products: false,
    };
    assert_eq!(xr.dtype(), DType::BF16);
    let bits = |ts: &[&Tensor<CudaBackend>]| -> Vec<Vec<u64>> {
        ts.iter()
            .map(|t| down(&be, t).into_iter().map(f64::to_bits).collect())
            .collect()
    };
    let direct = be
        .linear_forward(&x, &w, Some(&bias), Some(lora()), None)
        .unwrap();
    let from_copy = be
        .linear_forward_with(&x, &w, Some(&bias), Some(lora()), None, rounded(&xr))
        .unwrap();
    assert_eq!(
        from_copy.y.dtype(),
        DType::F32,
        "the output keeps x's dtype"
    );
    assert_eq!(
        bit_difference(
            &bits(&[&from_copy.y, from_copy.h.as_ref().unwrap()]),
            &bits(&[&direct.y, direct.h.as_ref().unwrap()])
        ),
        None,
        "forward"
    );
    let grads = |input: &Tensor<CudaBackend>| {
        let g = be
            .linear_backward(
                LinearBackwardInputs {
                    dy: &dy,
                    x: Some(input),
                    w: Some(&w),
                    lora: Some(lora()),
                    x_lora: Some(input),
                    h: direct.h.as_ref(),
                },
                common::every_linear_grad(),
            )
            .unwrap();
        let all = [g.dx, g.dw, g.dbias, g.dlora_a, g.dlora_b, g.dlora_input];
        let all: Vec<Tensor<CudaBackend>> = all.into_iter().map(Option::unwrap).collect();
        bits(&all.iter().collect::<Vec<_>>())
    };
    assert_eq!(bit_difference(&grads(&xr), &grads(&x)), None, "backward");

    let small = up(&be, &[4, 16], &o.x[..64]);
    assert!(
        be.rounded_for_products(&small).unwrap().is_none(),
        "too small to pay"
    );
    let exact = cuda(DType::F32);
    let x32 = up(&exact, &[c.rows, c.input], &o.x);
    assert!(
        exact.rounded_for_products(&x32).unwrap().is_none(),
        "f32 rounds nothing"
    );
    let refused = |e: spafit::Error, words: &[&str]| {
        let m = e.to_string();
        assert!(words.iter().all(|w| m.contains(w)), "{m}");
    };
    refused(
        be.linear_forward_with(&x, &w, None, None, None, rounded(&x))
            .unwrap_err(),
        &["x_rounded", "f32", "bf16"],
    );
    let xr_short = be
        .cast(&up(&be, &[8, c.input], &o.x[..8 * c.input]), DType::BF16)
        .unwrap();
    refused(
        be.linear_forward_with(&x, &w, None, None, None, rounded(&xr_short))
            .unwrap_err(),
        &["x_rounded", "[8, 256]"],
    );
    let w32 = up(&exact, &[c.output, c.input], &o.w);
    let dy32 = up(&exact, &[c.rows, c.output], &o.dy);
    let x32_as_bf16 = exact.cast(&x32, DType::BF16).unwrap();
    refused(
        exact
            .linear_backward(
                LinearBackwardInputs {
                    dy: &dy32,
                    x: Some(&x32_as_bf16),
                    w: Some(&w32),
                    lora: None,
                    x_lora: None,
                    h: None,
                },
                LinearGradRequest {
                    dw: true,
                    ..Default::default()
                },
            )
            .unwrap_err(),
        &["`x` is bf16", "`dy` is f32"],
    );
}

/// GELU of a tensor given up on the device: written over it by an in-place kernel where no
/// other tensor shares its buffer (no new output: an activation of device memory spared in
/// an inference pass's FFN), else into a new output, the other tensor untouched; the bits of
/// `gelu_forward` either way, in f32 and in bf16 storage.
#[test]
fn cuda_gelu_of_a_given_up_input_is_written_over_it_where_nothing_shares_it() {
    let mut rng = SplitMix::new(79);
    let values = nonzero(&mut rng, 199 * 201);
    let bits = |v: Vec<f64>| -> Vec<u64> { v.into_iter().map(f64::to_bits).collect() };
    for (tag, b) in [
        ("f32", cuda(DType::F32)),
        ("bf16 storage", cuda(DType::BF16).with_bf16_storage()),
    ] {
        let make = || up(&b, &[199, 201], &values);
        let want = bits(down(&b, &b.gelu_forward(&make()).unwrap()));
        let x = make();
        let storage = x.storage_id();
        let y = b.gelu_forward_owned(x).unwrap();
        assert_eq!(y.storage_id(), storage, "{tag}");
        assert!(bits(down(&b, &y)) == want, "{tag}");
        let x = make();
        let kept = x.clone();
        let y = b.gelu_forward_owned(x).unwrap();
        assert_ne!(y.storage_id(), kept.storage_id(), "{tag}");
        assert_eq!(down(&b, &kept), down(&b, &make()), "{tag}");
        assert!(bits(down(&b, &y)) == want, "{tag}");
    }
}

/// The outputs a backward recomputes for the linear maps' products (GELU's, a LayerNorm's)
/// stored rounded by their own kernels in bf16 mode, without the f32 output and its cast: the
/// bits of the cast of the f32 output. Where `rounded_for_products` makes no copy (too small;
/// f32 mode), the f32 output itself.
#[test]
fn cuda_recomputed_outputs_stored_rounded_have_the_cast_bits() {
    let mut rng = SplitMix::new(78);
    let (rows, n) = (300, 264);
    let values = nonzero(&mut rng, rows * n);
    let (g, beta) = (nonzero(&mut rng, n), nonzero(&mut rng, n));
    let bits = |b: &CudaBackend, t: &Tensor<CudaBackend>| -> Vec<u64> {
        down(b, t).into_iter().map(f64::to_bits).collect()
    };
    for (precision, rows) in [(DType::BF16, rows), (DType::BF16, 4), (DType::F32, rows)] {
        let b = cuda(precision);
        let tag = format!("{precision} mode, {rows} rows");
        let x = up(&b, &[rows, n], &values[..rows * n]);
        let (gb, bb) = (up(&b, &[n], &g), up(&b, &[n], &beta));
        let norm = b.layernorm_forward(&x, &gb, &bb, 1e-5).unwrap();
        let plain = [
            b.gelu_forward(&x).unwrap(),
            b.layernorm_apply(&x, &norm.mean, &norm.rstd, &gb, &bb)
                .unwrap(),
        ];
        let (stored_rounded, kernels) = common::with_kernel_names(&b, || {
            [
                b.gelu_forward_for_products(&x).unwrap(),
                b.layernorm_apply_for_products(&x, &norm.mean, &norm.rstd, &gb, &bb)
                    .unwrap(),
            ]
        });
        let copy = b.rounded_for_products(&x).unwrap();
        for (what, got, want) in [
            ("gelu", &stored_rounded[0], &plain[0]),
            ("layernorm", &stored_rounded[1], &plain[1]),
        ] {
            let want = match &copy {
                Some(_) => b.rounded_for_products(want).unwrap().unwrap(),
                None => want.clone(),
            };
            assert_eq!(got.dtype(), want.dtype(), "{what}, {tag}");
            assert!(bits(&b, got) == bits(&b, &want), "{what}, {tag}");
        }
        let direct = [
            "gelu_forward_for_products_f32",
            "layernorm_apply_for_products_f32",
        ];
        // Listed by device time, which on a loaded machine can order the two either way.
        let mut kernels = kernels;
        kernels.sort();
        match copy {
            Some(_) => assert_eq!(kernels, direct, "{tag}: one kernel each, no cast"),
            None => assert!(
                kernels.iter().all(|k| !direct.contains(&k.as_str())),
                "{tag}: {kernels:?}"
            ),
        }
    }
}

/// A linear output stored for products (attention's query, key, value) in bf16 mode is the
/// f32 output rounded to bf16, bit for bit — from the tensor-core tiles, split-K (its reduce
/// adds the f32 bias before rounding) and the narrow kernels, with LoRA; in f32 mode, and
/// with precasts off, it stays the f32 output.
#[test]
fn cuda_linear_output_for_products_is_the_rounded_output() {
    let mut rng = SplitMix::new(5);
    let be = cuda(DType::BF16);
    let exact = cuda(DType::F32);
    let for_products = LinearForwardOptions {
        x_rounded: None,
        output_for_products: true,
    };
    for (rows, input, output) in [(96, 64, 80), (64, 48, 8)] {
        let mut draw = |b: &CudaBackend, dims: &[usize]| {
            up(b, dims, &nonzero(&mut rng, dims.iter().product()))
        };
        let (x, w, bias) = (
            draw(&be, &[rows, input]),
            draw(&be, &[output, input]),
            draw(&be, &[output]),
        );
        let (a, bl) = (draw(&be, &[4, input]), draw(&be, &[output, 4]));
        let lora = || LoraWeights {
            a: &a,
            b: &bl,
            scale: 1.5,
        };
        for split in [None, Some(3)] {
            let b = split.map_or(be.clone(), |s| be.with_gemm_split(s).unwrap());
            let f32_out = b
                .linear_forward(&x, &w, Some(&bias), Some(lora()), None)
                .unwrap();
            let stored = b
                .linear_forward_with(&x, &w, Some(&bias), Some(lora()), None, for_products)
                .unwrap();
            assert_eq!(stored.y.dtype(), DType::BF16);
            let want = b.cast(&f32_out.y, DType::BF16).unwrap();
            assert!(
                down(&b, &stored.y)
                    .iter()
                    .map(|v| v.to_bits())
                    .eq(down(&b, &want).iter().map(|v| v.to_bits())),
                "[{rows}, {input}] → {output}, split {split:?}"
            );
            let off = b.with_gemm_precast(false);
            let kept = off
                .linear_forward_with(&x, &w, Some(&bias), Some(lora()), None, for_products)
                .unwrap();
            assert_eq!(kept.y.dtype(), DType::F32, "precasts off");
        }
        let (x, w, bias) = (
            draw(&exact, &[rows, input]),
            draw(&exact, &[output, input]),
            draw(&exact, &[output]),
        );
        let y = exact
            .linear_forward_with(&x, &w, Some(&bias), None, None, for_products)
            .unwrap();
        assert_eq!(y.y.dtype(), DType::F32, "f32 mode");
    }
}

/// Attention in bf16 mixed precision from q, k, v already rounded to bf16 (the copies the
/// products read; d_out stays f32): the bf16qkv_f32 kernels stream them into shared memory
/// and give f32 outputs with the bits the f32 inputs give, forward (output, lse) and backward
/// (dq, dk, dv), for aligned head dims (64, 128: cp.async) and an odd one (20), with dropout,
/// masked keys and a fully masked sequence. A bf16 q beside an f32 d_out is refused where the
/// products do not round.
#[test]
fn cuda_attention_from_rounded_copies_gives_the_same_bits() {
    let be = cuda(DType::BF16);
    let mut rng = SplitMix::new(12);
    for (batch, seq, heads, hd) in [(2, 70, 2, 64), (2, 33, 3, 20), (2, 24, 1, 128)] {
        let (rows, hidden) = (batch * seq, heads * hd);
        let dims = [rows, hidden];
        let mut draw = || up(&be, &dims, &nonzero(&mut rng, rows * hidden));
        let (q, k, v, dy) = (draw(), draw(), draw(), draw());
        // Sequence 0 whole, sequence 1 without its last 5 keys (none at all for head dim 128).
        let mask: Vec<u32> = (0..rows)
            .map(|i| u32::from(i < seq || (hd != 128 && i % seq < seq - 5)))
            .collect();
        let mask = be.tensor_from_u32(Shape::new([batch, seq]), &mask).unwrap();
        let config = AttentionConfig {
            heads,
            scale: 1.0 / (hd as f64).sqrt(),
            dropout: Some(Dropout { p: 0.1, seed: 4 }),
        };
        let all = AttentionGradRequest {
            dq: true,
            dk: true,
            dv: true,
        };
        let run = |q: &Tensor<CudaBackend>, k: &Tensor<CudaBackend>, v: &Tensor<CudaBackend>| {
            let f = be.attention_forward(q, k, v, &mask, &config).unwrap();
            let g = be
                .attention_backward(&dy, q, k, Some(v), &f.lse, &mask, &config, all)
                .unwrap();
            let outs = [f.out, f.lse, g.dq.unwrap(), g.dk.unwrap(), g.dv.unwrap()];
            assert!(outs.iter().all(|t| t.dtype() == DType::F32));
            outs.iter()
                .map(|t| down(&be, t).into_iter().map(f64::to_bits).collect())
                .collect::<Vec<Vec<u64>>>()
        };
        let round = |t: &Tensor<CudaBackend>| be.cast(t, DType::BF16).unwrap();
        assert_eq!(
            bit_difference(&run(&round(&q), &round(&k), &round(&v)), &run(&q, &k, &v)),
            None,
            "head dim {hd}"
        );
    }
    let exact = cuda(DType::F32);
    let dims = [8, 16];
    let q = up(&exact, &dims, &nonzero(&mut rng, 128));
    let qr = exact.cast(&q, DType::BF16).unwrap();
    let mask = exact.tensor_from_u32(Shape::new([2, 4]), &[1; 8]).unwrap();
    let config = AttentionConfig {
        heads: 2,
        scale: 0.5,
        dropout: None,
    };
    let f = exact.attention_forward(&q, &q, &q, &mask, &config).unwrap();
    let e = exact
        .attention_backward(
            &q,
            &qr,
            &qr,
            Some(&qr),
            &f.lse,
            &mask,
            &config,
            Default::default(),
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`q`, `k`, `v` are bf16 but `d_out` is f32"),
        "{e}"
    );
}

/// The tensor-core attention kernels with their streamed tiles in two stage buffers (the
/// next tile's copies in flight while the current one computes) give the bits of one stage,
/// forward and backward (every gradient; dQ alone; dK and dV without dQ, where the dQ kernel
/// computes delta alone; dV alone, without v), on every case of [`attention`] — head dim 12
/// (rows not 16-byte aligned, staged by plain stores), 8 (zero-filled past the head), 32, 64
/// with 512 tokens (eight tiles a stream) and 128, masks with holes and a fully masked
/// sequence, dropout — and on three tiles a stream (the buffers alternate an odd number of
/// times before dQ's second pass refills the first). In
/// bf16 storage and from bf16 q, k, v beside an f32 dO (the mixed-precision kernels), the
/// two-stage kernels are the ones that ran; f32 rows (no two-stage kernels: the threads round
/// them) run the one-stage kernels either way. One stage is held to the f64 reference by
/// [`attention`]; these bits hold two to it too.
#[test]
fn cuda_attention_stages_give_the_same_bits() {
    let mixed = cuda(DType::BF16);
    let backends = [
        (
            "bf16 storage",
            mixed.with_bf16_storage(),
            DType::BF16,
            "_s2",
        ),
        ("bf16 q, k, v", mixed.clone(), DType::BF16, "_s2"),
        ("f32 q, k, v", mixed.clone(), DType::F32, "_s1"),
    ];
    let requests = [
        (true, true, true),
        (true, false, false),
        (false, true, true),
        (false, false, true),
    ];
    let mut rng = SplitMix::new(23);
    for (what, one, qkv_dtype, two_runs) in backends {
        let two = one.with_attention_stages(2).unwrap();
        let three_tiles = (
            2,
            150,
            2,
            64,
            vec![150, 97],
            true,
            Some(Dropout { p: 0.1, seed: 8 }),
        );
        let cases = attention_suite().into_iter().chain([three_tiles]);
        for (batch, seq, heads, hd, lengths, holes, dropout) in cases {
            let tag = format!("{what}, b{batch}s{seq}h{heads}d{hd}");
            let dims = [batch * seq, heads * hd];
            let n = dims[0] * dims[1];
            let mut draw = |dtype: DType| {
                let t = up(&one, &dims, &nonzero(&mut rng, n));
                match t.dtype() == dtype {
                    true => t,
                    false => one.cast(&t, dtype).unwrap(),
                }
            };
            let (q, k, v) = (draw(qkv_dtype), draw(qkv_dtype), draw(qkv_dtype));
            let dy = draw(one.float_dtype());
            let mask: Vec<u32> = (0..batch * seq)
                .map(|i| u32::from(i % seq < lengths[i / seq] && !(holes && i % seq % 5 == 3)))
                .collect();
            let mask = one
                .tensor_from_u32(Shape::new([batch, seq]), &mask)
                .unwrap();
            let config = AttentionConfig {
                heads,
                scale: 1.0 / (hd as f64).sqrt(),
                dropout,
            };
            let run = |be: &CudaBackend| {
                common::with_kernel_names(be, || {
                    let f = be.attention_forward(&q, &k, &v, &mask, &config).unwrap();
                    let mut outs = vec![f.out.clone(), f.lse.clone()];
                    for (dq, dk, dv) in requests {
                        let want = AttentionGradRequest { dq, dk, dv };
                        let v = (dq || dk).then_some(&v);
                        let g = be
                            .attention_backward(&dy, &q, &k, v, &f.lse, &mask, &config, want)
                            .unwrap();
                        outs.extend([g.dq, g.dk, g.dv].into_iter().flatten());
                    }
                    outs.iter()
                        .map(|t| down(be, t).into_iter().map(f64::to_bits).collect())
                        .collect::<Vec<Vec<u64>>>()
                })
            };
            let (want, _) = run(&one);
            let (got, kernels) = run(&two);
            assert_eq!(bit_difference(&got, &want), None, "{tag}");
            let tensor_core: Vec<&String> = kernels.iter().filter(|k| k.contains("_tc_")).collect();
            // Head dim 8 and 12 pad to 32 as every other: the tensor-core kernels run for all.
            assert!(
                !tensor_core.is_empty() && tensor_core.iter().all(|k| k.ends_with(two_runs)),
                "{tag}: {kernels:?}"
            );
        }
    }
}

/// Tiles differ in how they cut an output among blocks and warps, not in what an element sums
/// or in which order: each output element is one accumulator fed the reduction's 16-wide
/// k-steps in increasing order, zero-filled past the end. So unsplit, every compiled tile gives
/// every result of the linear op the same bits; and split three ways, so do the tiles that cut
/// the reduction into the same k-tiles (the large tile's 128 × 128 × 64 in two stages, for
/// GPUs with 99 KiB of shared memory per block, and on four warps). Both epilogues: f32
/// outputs of an even width (stored in column pairs), bf16 outputs of an odd one (whose rows
/// pair no columns; the other two combinations meet the f64 reference in
/// `cuda_every_gemm_tile_matches_the_reference`).
#[test]
fn cuda_gemm_tiles_give_the_same_bits() {
    use spafit::backend::cuda::gemm::TILES;
    const LARGE: &str = "128x128x64_w2x4_s3";
    let mut rng = SplitMix::new(99);
    let cases = [
        LinearCase {
            rows: 260,
            input: 200,
            output: 136,
            rank: 4,
            separate_lora_input: false,
            scale: 2.0,
        },
        LinearCase {
            rows: 140,
            input: 131,
            output: 75,
            rank: 3,
            separate_lora_input: true,
            scale: 0.5,
        },
    ];
    for (c, bf16_storage) in cases.into_iter().zip([false, true]) {
        let b = cuda(DType::BF16);
        let b = if bf16_storage {
            b.with_bf16_storage()
        } else {
            b
        };
        let on = |tile: &str, split: usize| {
            b.with_gemm_tile(tile)
                .and_then(|t| t.with_gemm_split(split))
                .unwrap()
        };
        let o = LinearOperands::drawn(&b, c, &mut rng);
        for split in [1, 3] {
            let reference = o.result_bits(&on(LARGE, split));
            for tile in TILES {
                if split > 1 && (tile.bm, tile.bn, tile.bk) != (128, 128, 64) {
                    continue;
                }
                assert_eq!(
                    bit_difference(&o.result_bits(&on(tile.name, split)), &reference),
                    None,
                    "{} against {LARGE}, split {split}, {c:?}, bf16 storage {bf16_storage}",
                    tile.name
                );
            }
        }
    }
}

/// Every compiled tensor-core tile, forced onto every GEMM of the linear op (forward, fused
/// dX, dW, dA, dB; the three operand layouts; split-K where the output is small), against the
/// f64 reference: the default rule sends only large shapes to the large tiles, so without
/// this a tile could be wrong and every other test pass. Shapes span more than one block of
/// the largest tile in M and N, with ragged edges; K aligned for cp.async (136) and not (75).
#[test]
fn cuda_every_gemm_tile_matches_the_reference() {
    let cases = [
        LinearCase {
            rows: 300,
            input: 136,
            output: 270,
            rank: 8,
            separate_lora_input: false,
            scale: 2.0,
        },
        LinearCase {
            rows: 150,
            input: 75,
            output: 130,
            rank: 3,
            separate_lora_input: true,
            scale: 0.5,
        },
    ];
    for tile in spafit::backend::cuda::gemm::TILES {
        for storage in [false, true] {
            let b = cuda(DType::BF16);
            let b = if storage { b.with_bf16_storage() } else { b };
            println!("tile {} (bf16 storage: {storage})", tile.name);
            linear_cases(
                &b.with_gemm_tile(tile.name).unwrap(),
                1e-2,
                cases,
                ErrorScale::OfResult,
            );
        }
    }
}

/// Narrow outputs of tall GEMMs (the LoRA bottleneck products, a classifier's few columns)
/// run on the CUDA-core kernels of `kernels/gemm_skinny.cu`: every kind of them, one and two
/// passes of columns, one and two segments, split and unsplit reductions, aligned and odd
/// leading dimensions, in f32, bf16 and bf16 storage, against the f64 reference, and the
/// kernels' names in the device's timing show that they, not a tile, computed them.
#[test]
fn cuda_narrow_gemms_run_on_their_own_kernels_and_match_the_reference() {
    let cases = [
        // H, G (8 columns), dA [8, 136] and dB [260, 8] over 300 rows (split in 3 chunks);
        // leading dimensions that are multiples of 4: every kernel's 16-byte loads.
        LinearCase {
            rows: 300,
            input: 136,
            output: 260,
            rank: 8,
            separate_lora_input: false,
            scale: 2.0,
        },
        // Rank 13: a 16-column pass of the row kernels, two passes of the column kernels; odd
        // leading dimensions (no 16-byte loads); the adapter's own input.
        LinearCase {
            rows: 200,
            input: 75,
            output: 130,
            rank: 13,
            separate_lora_input: true,
            scale: 0.5,
        },
        // Two outputs (a classifier) with rank 32 (two passes): the forward's [X | H] and the
        // fused dX's [dY | G] are two-segment narrow GEMMs (dW, dA and dB, narrow on both
        // sides, stay on the tiles).
        LinearCase {
            rows: 130,
            input: 24,
            output: 2,
            rank: 32,
            separate_lora_input: false,
            scale: 1.5,
        },
        // One chunk of rows: the column kernels write the output directly.
        LinearCase {
            rows: 100,
            input: 96,
            output: 90,
            rank: 1,
            separate_lora_input: true,
            scale: 0.7,
        },
        // 8400 rows: the column kernels' 64 chunks of 132 rows, each summed in two staged
        // pieces (128 rows and 4).
        LinearCase {
            rows: 8400,
            input: 68,
            output: 64,
            rank: 4,
            separate_lora_input: false,
            scale: 1.0,
        },
    ];
    for (dtype, storage, tol) in [
        (DType::F32, false, 1e-5),
        (DType::BF16, false, 1e-2),
        (DType::BF16, true, 1e-2),
    ] {
        let b = cuda(dtype);
        let b = if storage { b.with_bf16_storage() } else { b };
        println!("{dtype:?} (bf16 storage: {storage})");
        let ((), ran) =
            common::with_kernel_names(&b, || linear_cases(&b, tol, cases, ErrorScale::OfResult));
        for kernel in [
            "gemm_skinny_rows_kk_c8",
            "gemm_skinny_rows_kk_c16",
            "gemm_skinny_rows_kn_c8",
            "gemm_skinny_rows_kn_c16",
            "gemm_skinny_columns_m",
            "gemm_skinny_columns_n",
        ] {
            assert!(
                ran.iter().any(|k| k == kernel),
                "{kernel} did not run ({dtype:?}, bf16 storage {storage}); ran: {ran:?}"
            );
        }
    }
}

/// Ids and labels are read on the host (the vocabulary check, the embedding backward's
/// grouping of positions) from the copy they were uploaded from, without waiting for the
/// device; a u32 tensor built from a device buffer has no such copy and is downloaded.
#[test]
fn cuda_reads_uploaded_ids_without_a_download() {
    let b = cuda(DType::F32);
    let ids = b
        .tensor_from_u32(Shape::new([2, 3]), &[4, 0, 9, 9, 1, 4])
        .unwrap();
    let before = b.downloads();
    assert_eq!(b.to_u32(&ids).unwrap(), [4, 0, 9, 9, 1, 4]);
    assert_eq!(
        b.to_u32(&ids.reshape([6]).unwrap()).unwrap(),
        [4, 0, 9, 9, 1, 4]
    );
    assert_eq!(b.downloads(), before);
    // The same device data, as a buffer the backend did not upload itself.
    let copy = Tensor::<CudaBackend>::from_buffer([6], ids.buffer().clone()).unwrap();
    assert_eq!(b.to_u32(&copy).unwrap(), [4, 0, 9, 9, 1, 4]);
    assert_eq!(b.downloads(), before + 1);
    // Out-of-range ids are still refused, from the host copy: the first one, by position.
    let table = up(&b, &[9, 2], &[0.5; 18]);
    let e = b.embedding_forward(&table, &ids).unwrap_err();
    assert!(
        matches!(
            e,
            spafit::Error::IndexOutOfRange {
                index: 9,
                position: 2,
                limit: 9,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(b.downloads(), before + 1);
}

#[test]
fn cuda_backend_refuses_what_it_does_not_store() {
    assert!(CudaBackend::hardware_or_emulated(DType::F64).is_err());
    let b = cuda(DType::F32);
    assert!(b
        .tensor_from_f64_as(Shape::new([2]), &[1.0, 2.0], DType::F64)
        .is_err());
    // A linear map of no outputs is an error that says so, in f32 and bf16 mode, with the
    // narrow kernels and without: not a fault, not a panic (it divided by zero); an input of
    // no rows or no depth is refused by the shapes' check first, as on the CPU.
    for b in [cuda(DType::F32), cuda(DType::BF16)] {
        for skinny in [true, false] {
            let b = b.with_gemm_skinny(skinny);
            for (x_dims, w_dims, says) in [
                ([3, 4], [0, 4], "empty tensors are not supported on CUDA"),
                ([0, 4], [2, 4], "must be a non-empty tensor"),
                ([3, 0], [2, 0], "must be a non-empty tensor"),
            ] {
                let upload = |dims: [usize; 2], v: f64| {
                    b.tensor_from_f64(Shape::new(dims), &vec![v; dims[0] * dims[1]])
                };
                // A GPU's driver may refuse the empty upload itself: an error too.
                let (Ok(x), Ok(w)) = (upload(x_dims, 0.25), upload(w_dims, 0.5)) else {
                    continue;
                };
                let e = b
                    .linear_forward(&x, &w, None, None, None)
                    .err()
                    .unwrap_or_else(|| panic!("{x_dims:?} × {w_dims:?}ᵀ was not refused"))
                    .to_string();
                assert!(e.contains(says), "{x_dims:?} × {w_dims:?}ᵀ: {e}");
            }
        }
    }
}

/// More row blocks than a grid's y dimension holds (GEMM) and more sequences than its z
/// dimension holds (attention) take several launches, each covering its share: the rows
/// and sequences past 65535 blocks match the reference as the first ones do (dropout's
/// counters included, which follow the absolute sequence).
#[test]
fn cuda_grids_beyond_65535_blocks_take_several_launches() {
    let b = cuda(DType::F32);
    let r = reference();
    let mut rng = SplitMix::new(65_535);
    // The f32 GEMM's row block is 64 rows. A two-column output is narrow: the tile kernel,
    // whose grid is the subject here, runs it only with the narrow kernels off (theirs put
    // rows along x, whose limit is 2³¹ − 1).
    let (rows, input, output) = (65_535 * 64 + 37, 3, 2);
    let x = nonzero(&mut rng, rows * input);
    let w = nonzero(&mut rng, output * input);
    let bias = nonzero(&mut rng, output);
    let want = r
        .linear_forward(
            &up(&r, &[rows, input], &x),
            &up(&r, &[output, input], &w),
            Some(&up(&r, &[output], &bias)),
            None,
            None,
        )
        .unwrap();
    let tiles = b.with_gemm_skinny(false);
    let got = tiles
        .linear_forward(
            &up(&b, &[rows, input], &x),
            &up(&b, &[output, input], &w),
            Some(&up(&b, &[output], &bias)),
            None,
            None,
        )
        .unwrap();
    check(
        &b,
        "linear.y 4194277 rows",
        &down(&b, &got.y),
        &down(&r, &want.y),
        1e-5,
    );

    let (batch, seq, heads, hd) = (65_537, 2, 1, 4);
    let n = batch * seq * heads * hd;
    let dims = [batch * seq, heads * hd];
    let mask: Vec<u32> = (0..batch * seq).map(|i| u32::from(i % 7 != 6)).collect();
    let config = AttentionConfig {
        heads,
        scale: 0.5,
        dropout: Some(Dropout { p: 0.3, seed: 11 }),
    };
    let [q, k, v, dy] = [(); 4].map(|_| nonzero(&mut rng, n));
    let mr = r.tensor_from_u32(Shape::new([batch, seq]), &mask).unwrap();
    let mb = b.tensor_from_u32(Shape::new([batch, seq]), &mask).unwrap();
    let [qr, kr, vr, dyr] = [&q, &k, &v, &dy].map(|t| up(&r, &dims, t));
    let [qb, kb, vb, dyb] = [&q, &k, &v, &dy].map(|t| up(&b, &dims, t));
    let want = r.attention_forward(&qr, &kr, &vr, &mr, &config).unwrap();
    let got = b.attention_forward(&qb, &kb, &vb, &mb, &config).unwrap();
    check(
        &b,
        "attention.out 65537 sequences",
        &down(&b, &got.out),
        &down(&r, &want.out),
        1e-5,
    );
    let all = AttentionGradRequest {
        dq: true,
        dk: true,
        dv: true,
    };
    let gr = r
        .attention_backward(&dyr, &qr, &kr, Some(&vr), &want.lse, &mr, &config, all)
        .unwrap();
    let gb = b
        .attention_backward(&dyb, &qb, &kb, Some(&vb), &got.lse, &mb, &config, all)
        .unwrap();
    for (name, g, w) in [
        ("dq", &gb.dq, &gr.dq),
        ("dk", &gb.dk, &gr.dk),
        ("dv", &gb.dv, &gr.dv),
    ] {
        check(
            &b,
            &format!("attention.{name} 65537 sequences"),
            &down(&b, g.as_ref().unwrap()),
            &down(&r, w.as_ref().unwrap()),
            1e-5,
        );
    }
}

/// The same splitting on small shapes, in every precision: child processes run the CPU
/// stand-in with its grid limit in y (GEMM row blocks, attention heads), then in z (attention
/// sequences, split-K slices), lowered to 2 blocks (1 in z), so `linear`'s GEMMs (up to 5 row blocks, tensor-core
/// tiles included) and attention over 5 sequences each take several launches. A launch that
/// ignored the limit is refused there; one that placed its share at the wrong offset differs
/// from the reference. On a GPU the limit is CUDA's own and the test above covers it.
#[test]
fn cuda_grids_past_a_lowered_limit_take_several_launches() {
    const TEST: &str = "cuda_grids_past_a_lowered_limit_take_several_launches";
    const Y: &str = "SPAFIT_EMU_MAX_GRID_Y";
    const Z: &str = "SPAFIT_EMU_MAX_GRID_Z";
    let precisions = || {
        [
            (cuda(DType::F32), 1e-5),
            (cuda(DType::BF16), 1e-2),
            (cuda(DType::BF16).with_bf16_storage(), 1e-2),
        ]
    };
    match (std::env::var_os(Y), std::env::var_os(Z)) {
        (None, None) => {
            if cuda(DType::F32).driver() != Driver::Emulator {
                common::skipped(&format!(
                    "{TEST}: only the CPU stand-in lowers its grid limits"
                ));
                return;
            }
            for limit in [Y, Z] {
                // One block in z: every sequence, and split-K's one slice, alone.
                let blocks = if limit == Z { "1" } else { "2" };
                common::run_in_child(module_path!(), TEST, &[(limit, blocks)]);
            }
        }
        (Some(_), None) => {
            for (b, tol) in precisions() {
                linear(&b, tol);
                // Three heads are three blocks in y: more than this device takes at once.
                let dims = [4, 3 * 8];
                let x = up(&b, &dims, &[0.5; 4 * 24]);
                let mask = b.tensor_from_u32(Shape::new([1, 4]), &[1; 4]).unwrap();
                let config = AttentionConfig {
                    heads: 3,
                    scale: 0.5,
                    dropout: None,
                };
                let err = b
                    .attention_forward(&x, &x, &x, &mask, &config)
                    .expect_err("3 heads past a grid limit of 2 must be refused");
                assert!(err.to_string().contains("at most 2"), "{err}");
            }
        }
        (None, Some(_)) => {
            let dropout = Some(Dropout { p: 0.2, seed: 17 });
            for (b, tol) in precisions() {
                // Split-K's slices lie in z too: fewer of them run under this limit.
                linear(&b, tol);
                attention_cases(
                    &b,
                    tol,
                    [
                        (5, 70, 2, 32, vec![70, 41, 0, 12, 69], false, dropout),
                        (3, 9, 3, 8, vec![9, 1, 5], true, None),
                    ],
                    ErrorScale::OfResult,
                );
                // The position bias's tile kernel: a launch per sequence.
                attention_position_bias(&b, tol);
            }
        }
        (Some(_), Some(_)) => panic!("lower one limit at a time"),
    }
}
