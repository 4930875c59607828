//! DeBERTa's disentangled attention on the CPU backend, checked independently of the model:
//! its context against the softmax written out per query in f64, and every gradient (q, k,
//! v and both terms' relative rows) against central finite differences, with padded and
//! fully padded sequences, with and without dropout, for each term alone and both; bad
//! operands refused by name.

use crate::common;

use common::{all, check_gradient, dot, host, nonzero, random, tensor};
use spafit::backend::cpu::CpuBackend;
use spafit::backend::{AttentionConfig, AttentionGradRequest, Backend, Dropout, RelativeTerms};
use spafit::rng::SplitMix;
use spafit::tensor::{Shape, Tensor};

type T = Tensor<CpuBackend>;

/// 3 sequences of 6 tokens (lengths 6, 3, 0), 3 heads of 4; 5 relative rows, read by an
/// arbitrary (not Toeplitz) pattern so that every index path is exercised.
struct Case {
    q: T,
    k: T,
    v: T,
    key_terms: T,
    query_terms: T,
    rows: T,
    row_of: Vec<u32>,
    mask: T,
    lengths: [usize; 3],
    r: Vec<f64>,
}

const BATCH: usize = 3;
const SEQ: usize = 6;
const HEADS: usize = 3;
const DIM: usize = 4;
const HIDDEN: usize = HEADS * DIM;
const ROWS: usize = 5;

fn case() -> Case {
    let mut rng = SplitMix::new(31);
    let c = CpuBackend::f64();
    let q = random(&mut rng, &[BATCH * SEQ, HIDDEN], 1.0);
    let k = random(&mut rng, &[BATCH * SEQ, HIDDEN], 1.0);
    let v = random(&mut rng, &[BATCH * SEQ, HIDDEN], 1.0);
    let key_terms = random(&mut rng, &[ROWS, HIDDEN], 1.0);
    let query_terms = random(&mut rng, &[ROWS, HIDDEN], 1.0);
    let row_of: Vec<u32> = (0..SEQ * SEQ)
        .map(|at| ((at * 7 + at / SEQ) % ROWS) as u32)
        .collect();
    let rows = c.tensor_from_u32(Shape::new([SEQ, SEQ]), &row_of).unwrap();
    let lengths = [6, 3, 0];
    let mask_values: Vec<u32> = lengths
        .iter()
        .flat_map(|&l| (0..SEQ).map(move |t| u32::from(t < l)))
        .collect();
    let mask = c
        .tensor_from_u32(Shape::new([BATCH, SEQ]), &mask_values)
        .unwrap();
    let r = nonzero(&mut rng, BATCH * SEQ * HIDDEN);
    Case {
        q,
        k,
        v,
        key_terms,
        query_terms,
        rows,
        row_of,
        mask,
        lengths,
        r,
    }
}

fn config(dropout: Option<Dropout>) -> AttentionConfig {
    AttentionConfig {
        heads: HEADS,
        scale: 0.37,
        dropout,
    }
}

/// The context, written out: for each sequence, head and query, the softmax over the valid
/// keys of `scale·(q·k + q·kr_row + k·qr_row)`.
#[test]
fn disentangled_attention_matches_the_softmax_written_out() {
    let f = case();
    let c = CpuBackend::f64();
    let cfg = config(None);
    for (c2p, p2c) in [(true, true), (true, false), (false, true)] {
        let terms = RelativeTerms {
            key: c2p.then_some(&f.key_terms),
            query: p2c.then_some(&f.query_terms),
            rows: &f.rows,
        };
        let out = c
            .attention_forward_disentangled(&f.q, &f.k, &f.v, &f.mask, &terms, &cfg)
            .unwrap();
        let out = host(&out.out);
        let (qh, kh, vh) = (host(&f.q), host(&f.k), host(&f.v));
        let (krh, qrh) = (host(&f.key_terms), host(&f.query_terms));
        let mut checked = 0;
        for b in 0..BATCH {
            for h in 0..HEADS {
                for i in 0..SEQ {
                    let at =
                        |m: &[f64], t: usize, e: usize| m[(b * SEQ + t) * HIDDEN + h * DIM + e];
                    let rel =
                        |m: &[f64], row: u32, e: usize| m[row as usize * HIDDEN + h * DIM + e];
                    let s: Vec<f64> = (0..f.lengths[b])
                        .map(|j| {
                            let row = f.row_of[i * SEQ + j];
                            let mut total: f64 =
                                (0..DIM).map(|e| at(&qh, i, e) * at(&kh, j, e)).sum();
                            if c2p {
                                total += (0..DIM)
                                    .map(|e| at(&qh, i, e) * rel(&krh, row, e))
                                    .sum::<f64>();
                            }
                            if p2c {
                                total += (0..DIM)
                                    .map(|e| at(&kh, j, e) * rel(&qrh, row, e))
                                    .sum::<f64>();
                            }
                            cfg.scale * total
                        })
                        .collect();
                    let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = s.iter().map(|x| (x - max).exp()).sum();
                    for e in 0..DIM {
                        let want: f64 = s
                            .iter()
                            .enumerate()
                            .map(|(j, x)| (x - max).exp() / z * at(&vh, j, e))
                            .sum();
                        let got = out[(b * SEQ + i) * HIDDEN + h * DIM + e];
                        assert!(
                            (got - want).abs() < 1e-12,
                            "c2p {c2p} p2c {p2c}: b{b} h{h} i{i} e{e}: {got} vs {want}"
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, BATCH * HEADS * SEQ * DIM);
    }
}

/// Every gradient against central differences: q, k, v, and each given term's rows.
fn every_gradient(c2p: bool, p2c: bool, dropout: Option<Dropout>, label: &str) {
    let f = case();
    let c = CpuBackend::f64();
    let cfg = config(dropout);
    let loss = |q: &T, k: &T, v: &T, kr: &T, qr: &T| {
        let terms = RelativeTerms {
            key: c2p.then_some(kr),
            query: p2c.then_some(qr),
            rows: &f.rows,
        };
        let out = c
            .attention_forward_disentangled(q, k, v, &f.mask, &terms, &cfg)
            .unwrap();
        dot(&host(&out.out), &f.r)
    };
    let terms = RelativeTerms {
        key: c2p.then_some(&f.key_terms),
        query: p2c.then_some(&f.query_terms),
        rows: &f.rows,
    };
    let out = c
        .attention_forward_disentangled(&f.q, &f.k, &f.v, &f.mask, &terms, &cfg)
        .unwrap();
    let dy = tensor(&c, out.out.dims(), &f.r);
    let want = AttentionGradRequest {
        dq: true,
        dk: true,
        dv: true,
    };
    let g = c
        .attention_backward_disentangled(
            &dy,
            &f.q,
            &f.k,
            Some(&f.v),
            &out.lse,
            &f.mask,
            &terms,
            &cfg,
            want,
            true,
        )
        .unwrap();
    assert_eq!(g.key_terms.is_some(), c2p);
    assert_eq!(g.query_terms.is_some(), p2c);
    let (q, k, v, kr, qr) = (&f.q, &f.k, &f.v, &f.key_terms, &f.query_terms);
    let with = |like: &T, x: &[f64]| tensor(&c, like.dims(), x);
    let n = q.numel();
    let tol = 1e-6;
    check_gradient(
        &format!("{label} dq"),
        &host(g.attention.dq.as_ref().unwrap()),
        &host(q),
        &all(n),
        tol,
        |x| loss(&with(q, x), k, v, kr, qr),
    );
    check_gradient(
        &format!("{label} dk"),
        &host(g.attention.dk.as_ref().unwrap()),
        &host(k),
        &all(n),
        tol,
        |x| loss(q, &with(k, x), v, kr, qr),
    );
    check_gradient(
        &format!("{label} dv"),
        &host(g.attention.dv.as_ref().unwrap()),
        &host(v),
        &all(n),
        tol,
        |x| loss(q, k, &with(v, x), kr, qr),
    );
    if let Some(d) = &g.key_terms {
        check_gradient(
            &format!("{label} d key terms"),
            &host(d),
            &host(kr),
            &all(kr.numel()),
            tol,
            |x| loss(q, k, v, &with(kr, x), qr),
        );
    }
    if let Some(d) = &g.query_terms {
        check_gradient(
            &format!("{label} d query terms"),
            &host(d),
            &host(qr),
            &all(qr.numel()),
            tol,
            |x| loss(q, k, v, kr, &with(qr, x)),
        );
    }
    // The fully padded sequence attends to nothing: its context is exactly zero.
    assert!(host(&out.out)[2 * SEQ * HIDDEN..].iter().all(|&x| x == 0.0));
    // Asking for the terms alone gives the same rows' gradients.
    let alone = c
        .attention_backward_disentangled(
            &dy,
            &f.q,
            &f.k,
            Some(&f.v),
            &out.lse,
            &f.mask,
            &terms,
            &cfg,
            AttentionGradRequest::default(),
            true,
        )
        .unwrap();
    assert!(alone.attention.dq.is_none());
    assert_eq!(
        alone.key_terms.as_ref().map(host),
        g.key_terms.as_ref().map(host)
    );
    assert_eq!(
        alone.query_terms.as_ref().map(host),
        g.query_terms.as_ref().map(host)
    );
}

#[test]
fn disentangled_attention_every_gradient() {
    every_gradient(true, true, None, "both terms");
    every_gradient(true, false, None, "c2p");
    every_gradient(false, true, None, "p2c");
}

#[test]
fn disentangled_attention_every_gradient_with_dropout() {
    every_gradient(
        true,
        true,
        Some(Dropout { p: 0.25, seed: 3 }),
        "both terms+dropout",
    );
}

/// Rows past the relative rows, terms of another width or dtype, and no term at all are
/// refused by name.
#[test]
fn bad_relative_terms_are_refused() {
    let f = case();
    let c = CpuBackend::f64();
    let cfg = config(None);
    let run = |terms: &RelativeTerms<'_, CpuBackend>| {
        c.attention_forward_disentangled(&f.q, &f.k, &f.v, &f.mask, terms, &cfg)
            .unwrap_err()
            .to_string()
    };
    let far: Vec<u32> = f.row_of.iter().map(|&r| r + 1).collect();
    let far = c.tensor_from_u32(Shape::new([SEQ, SEQ]), &far).unwrap();
    let e = run(&RelativeTerms {
        key: Some(&f.key_terms),
        query: None,
        rows: &far,
    });
    assert!(e.contains("relative row"), "{e}");
    let narrow = tensor(&c, &[ROWS, HIDDEN - 1], &vec![0.5; ROWS * (HIDDEN - 1)]);
    let e = run(&RelativeTerms {
        key: Some(&narrow),
        query: None,
        rows: &f.rows,
    });
    assert!(e.contains("key terms"), "{e}");
    let other_rows = tensor(&c, &[ROWS + 1, HIDDEN], &vec![0.5; (ROWS + 1) * HIDDEN]);
    let e = run(&RelativeTerms {
        key: Some(&f.key_terms),
        query: Some(&other_rows),
        rows: &f.rows,
    });
    assert!(e.contains("query terms"), "{e}");
    let f32_terms = c.cast(&f.key_terms, spafit::tensor::DType::F32).unwrap();
    let e = run(&RelativeTerms {
        key: Some(&f32_terms),
        query: None,
        rows: &f.rows,
    });
    assert!(e.contains("key terms"), "{e}");
    let e = run(&RelativeTerms {
        key: None,
        query: None,
        rows: &f.rows,
    });
    assert!(e.contains("without a key or query term"), "{e}");
    let short = c
        .tensor_from_u32(Shape::new([SEQ - 1, SEQ]), &f.row_of[..(SEQ - 1) * SEQ])
        .unwrap();
    let e = run(&RelativeTerms {
        key: Some(&f.key_terms),
        query: None,
        rows: &short,
    });
    assert!(e.contains("rows"), "{e}");
}

/// The context, the lse and every gradient of the op on `backend` against the f64 CPU's,
/// for each set of terms, with and without dropout (the same masks: the counter-based
/// stream of `spafit::rng`), within `tolerance` of each output's largest magnitude.
fn matches_the_f64_cpu<B: Backend>(backend: &B, tolerance: f64) {
    let f = case();
    let cpu = CpuBackend::f64();
    let up = |t: &T| {
        backend
            .tensor_from_f64(t.shape().clone(), &host(t))
            .unwrap()
    };
    let (q, k, v, kr, qr) = (
        up(&f.q),
        up(&f.k),
        up(&f.v),
        up(&f.key_terms),
        up(&f.query_terms),
    );
    let rows = backend
        .tensor_from_u32(Shape::new([SEQ, SEQ]), &f.row_of)
        .unwrap();
    let mask_values = cpu.to_u32(&f.mask).unwrap();
    let mask = backend
        .tensor_from_u32(Shape::new([BATCH, SEQ]), &mask_values)
        .unwrap();
    let dy_values = f.r.clone();
    let all_grads = AttentionGradRequest {
        dq: true,
        dk: true,
        dv: true,
    };
    let mut compared = 0;
    for dropout in [None, Some(Dropout { p: 0.3, seed: 11 })] {
        let cfg = config(dropout);
        for (c2p, p2c) in [(true, true), (true, false), (false, true)] {
            let reference = {
                let terms = RelativeTerms {
                    key: c2p.then_some(&f.key_terms),
                    query: p2c.then_some(&f.query_terms),
                    rows: &f.rows,
                };
                let out = cpu
                    .attention_forward_disentangled(&f.q, &f.k, &f.v, &f.mask, &terms, &cfg)
                    .unwrap();
                let dy = tensor(&cpu, out.out.dims(), &dy_values);
                let g = cpu
                    .attention_backward_disentangled(
                        &dy,
                        &f.q,
                        &f.k,
                        Some(&f.v),
                        &out.lse,
                        &f.mask,
                        &terms,
                        &cfg,
                        all_grads,
                        true,
                    )
                    .unwrap();
                let mut v = vec![host(&out.out), host(&out.lse)];
                v.extend(
                    [g.attention.dq, g.attention.dk, g.attention.dv]
                        .iter()
                        .map(|t| host(t.as_ref().unwrap())),
                );
                v.extend(g.key_terms.iter().chain(&g.query_terms).map(host));
                v
            };
            let terms = RelativeTerms {
                key: c2p.then_some(&kr),
                query: p2c.then_some(&qr),
                rows: &rows,
            };
            let out = backend
                .attention_forward_disentangled(&q, &k, &v, &mask, &terms, &cfg)
                .unwrap();
            let dy = tensor(backend, out.out.dims(), &dy_values);
            let g = backend
                .attention_backward_disentangled(
                    &dy,
                    &q,
                    &k,
                    Some(&v),
                    &out.lse,
                    &mask,
                    &terms,
                    &cfg,
                    all_grads,
                    true,
                )
                .unwrap();
            let down = |t: &Tensor<B>| backend.to_f64(t).unwrap();
            let mut got = vec![down(&out.out), down(&out.lse)];
            got.extend(
                [g.attention.dq, g.attention.dk, g.attention.dv]
                    .iter()
                    .map(|t| down(t.as_ref().unwrap())),
            );
            got.extend(g.key_terms.iter().chain(&g.query_terms).map(down));
            assert_eq!(got.len(), reference.len());
            for (n, (ours, want)) in got.iter().zip(&reference).enumerate() {
                let largest = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                let worst = ours
                    .iter()
                    .zip(want)
                    .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
                assert!(
                    worst.is_finite() && worst <= tolerance * largest.max(1e-30),
                    "{} c2p {c2p} p2c {p2c} dropout {}: output {n}: {worst:e} of {largest:e}",
                    backend.name(),
                    dropout.is_some()
                );
                compared += 1;
            }
        }
    }
    assert_eq!(compared, 2 * (7 + 6 + 6));
}

#[test]
fn disentangled_attention_in_f32_matches_the_f64_cpu() {
    matches_the_f64_cpu(&CpuBackend::f32(), 1e-5);
}

/// The CUDA kernels (the CPU stand-in without a GPU, outputs poisoned so that an unwritten
/// element shows) in f32 and in mixed precision.
#[test]
fn disentangled_attention_on_cuda_matches_the_f64_cpu() {
    use spafit::backend::cuda::CudaBackend;
    use spafit::tensor::DType;
    for dtype in [DType::F32, DType::BF16] {
        let cuda = CudaBackend::hardware_or_emulated(dtype)
            .map(CudaBackend::with_poisoned_outputs)
            .unwrap_or_else(|e| panic!("no CUDA backend, not even the CPU stand-in: {e}"));
        matches_the_f64_cpu(&cuda, 1e-5);
    }
}
