//! CPU GEMM throughput through the backend's linear map (`y = x·Wᵀ`), the op every BERT
//! layer spends its time in. Prints one JSON line per (dtype, size).
//!
//! `cargo bench --bench gemm` (sizes via `SPAFIT_BENCH_SIZES=512,1024`; empty for none). Then
//! the f32 products of a training step at the demo's shape (1024 token rows, MiniLM's 384 /
//! 1536): the forward `x·Wᵀ`, the input gradient `dY·W` and the weight gradient `dYᵀ·X`, and
//! the LoRA products of rank 8, each on every thread and on one beside `matrixmultiply::sgemm`
//! (the kernel ours replaces on AVX-512 CPUs); and the bf16 mode's products with a frozen bf16
//! weight (`x·Wt bf16`, `dY·W bf16`: operands rounded to bf16, f32 sums; on AMX tiles or
//! AVX-512 BF16 where the CPU has them, `CpuBackend::bf16_products`), through the backend, at
//! the same shapes.

use std::time::Instant;

use spafit::backend::cpu::gemm::{product, Layout};
use spafit::backend::cpu::CpuBackend;
use spafit::backend::Backend;
use spafit::rng::SplitMix;
use spafit::tensor::Shape;

fn main() {
    let sizes: Vec<usize> = std::env::var("SPAFIT_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![256, 1024]);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    for backend in [CpuBackend::f32(), CpuBackend::f64()] {
        for &n in &sizes {
            let mut rng = SplitMix::new(1);
            let data: Vec<f64> = (0..n * n).map(|_| rng.uniform_in(-1.0, 1.0)).collect();
            let x = backend.tensor_from_f64(Shape::new([n, n]), &data).unwrap();
            let w = backend.tensor_from_f64(Shape::new([n, n]), &data).unwrap();
            let flops = 2.0 * (n as f64).powi(3);
            // Warm up caches and the thread pool, then take the best of enough repetitions.
            let _ = backend.linear_forward(&x, &w, None, None, None).unwrap();
            let reps = ((2e10 / flops) as usize).clamp(3, 200);
            let mut best = f64::INFINITY;
            for _ in 0..reps {
                let t = Instant::now();
                let y = backend.linear_forward(&x, &w, None, None, None).unwrap();
                let s = t.elapsed().as_secs_f64();
                std::hint::black_box(&y);
                best = best.min(s);
            }
            println!(
                "{{\"bench\":\"cpu_gemm\",\"dtype\":\"{}\",\"m\":{n},\"n\":{n},\"k\":{n},\"reps\":{reps},\"best_ms\":{:.3},\"gflops\":{:.1},\"threads_available\":{threads}}}",
                backend.float_dtype(),
                best * 1e3,
                flops / best / 1e9
            );
        }
    }
    step_shapes(threads);
    small_batch_shapes();
    lora_shapes(threads);
    bf16_weight_shapes(threads);
}

/// The bf16 mode's forward and input-gradient products at MiniLM's weight shapes, from a
/// single text's rows (8, 16: the few-row kernel below 49 rows) to a step's (1024), through
/// [`Backend::linear_forward`] / [`Backend::linear_backward`] with a bf16 weight.
fn bf16_weight_shapes(threads: usize) {
    use spafit::backend::{LinearBackwardInputs, LinearGradRequest};
    use spafit::tensor::DType;
    let b = CpuBackend::bf16();
    for rows in [8, 16, 32, 48, 64, 1024] {
        for (out, inp) in [(384, 384), (1536, 384), (384, 1536)] {
            let mut rng = SplitMix::new(2);
            let mut values =
                |n: usize| -> Vec<f64> { (0..n).map(|_| rng.uniform_in(-1.0, 1.0)).collect() };
            let x = b
                .tensor_from_f64(Shape::new([rows, inp]), &values(rows * inp))
                .unwrap();
            let dy = b
                .tensor_from_f64(Shape::new([rows, out]), &values(rows * out))
                .unwrap();
            let w = b
                .tensor_from_f64_as(Shape::new([out, inp]), &values(out * inp), DType::BF16)
                .unwrap();
            let flops = 2.0 * (rows * out * inp) as f64;
            let forward = || {
                std::hint::black_box(b.linear_forward(&x, &w, None, None, None).unwrap());
            };
            let backward = || {
                let inputs = LinearBackwardInputs {
                    dy: &dy,
                    x: None,
                    w: Some(&w),
                    x_lora: None,
                    h: None,
                    lora: None,
                };
                let want = LinearGradRequest {
                    dx: true,
                    ..LinearGradRequest::default()
                };
                std::hint::black_box(b.linear_backward(inputs, want).unwrap());
            };
            for (name, k, n, run) in [
                ("x·Wt bf16", inp, out, &forward as &dyn Fn()),
                ("dY·W bf16", out, inp, &backward),
            ] {
                run();
                let mut best = f64::INFINITY;
                for _ in 0..30 {
                    let t = Instant::now();
                    run();
                    best = best.min(t.elapsed().as_secs_f64());
                }
                println!(
                "{{\"bench\":\"cpu_gemm_step\",\"op\":\"{name}\",\"m\":{rows},\"k\":{k},\"n\":{n},\"best_ms\":{:.3},\"gflops\":{:.1},\"threads_available\":{threads}}}",
                best * 1e3,
                flops / best / 1e9
            );
            }
        }
    }
}

/// A matrix: its elements and where they lie.
type Operand<'a> = (&'a [f32], Layout);

/// Best-of-repetitions GFLOP/s of `product` for each orientation at each step shape.
fn step_shapes(threads: usize) {
    let rows = 1024;
    for (out, inp) in [(384, 384), (1536, 384), (384, 1536)] {
        let mut rng = SplitMix::new(2);
        let mut values =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.uniform_in(-1.0, 1.0) as f32).collect() };
        let x = values(rows * inp);
        let w = values(out * inp);
        let dy = values(rows * out);
        let cases: [(&str, Operand, Operand); 3] = [
            (
                "x·Wt",
                (&x, Layout::row_major(rows, inp)),
                (&w, Layout::row_major(out, inp).t()),
            ),
            (
                "dY·W",
                (&dy, Layout::row_major(rows, out)),
                (&w, Layout::row_major(out, inp)),
            ),
            (
                "dYt·X",
                (&dy, Layout::row_major(rows, out).t()),
                (&x, Layout::row_major(rows, inp)),
            ),
        ];
        for (name, a, b) in cases {
            report(name, a, b, threads);
        }
    }
}

/// A small batch's forward `x·Wᵀ` (8 to 128 token rows) on one thread: the backend's product
/// beside `matrixmultiply::sgemm` on the same operands (which packs the transposed weight
/// before multiplying), best of 30 each, alternating.
fn small_batch_shapes() {
    for rows in [8, 16, 32, 64, 96, 128] {
        for (out, inp) in [(384, 384), (1536, 384), (384, 1536)] {
            let mut rng = SplitMix::new(4);
            let mut values = |n: usize| -> Vec<f32> {
                (0..n).map(|_| rng.uniform_in(-1.0, 1.0) as f32).collect()
            };
            let (x, w) = (values(rows * inp), values(out * inp));
            let (ours, theirs) = one_thread_beside_matrixmultiply(
                (&x, Layout::row_major(rows, inp)),
                (&w, Layout::row_major(out, inp).t()),
            );
            let flops = 2.0 * (rows * inp * out) as f64;
            println!(
                "{{\"bench\":\"cpu_gemm_small_batch\",\"op\":\"x·Wt\",\"m\":{rows},\"k\":{inp},\"n\":{out},\"threads\":1,\"gflops\":{:.1},\"matrixmultiply_gflops\":{:.1},\"speedup\":{:.2}}}",
                flops / ours / 1e9,
                flops / theirs / 1e9,
                theirs / ours
            );
        }
    }
}

/// Best of 30 seconds of `product(a, b)` on one thread and of `matrixmultiply::sgemm` on the
/// same operands, alternating: what our kernels gain over the crate they replace, without
/// the threads' shared caches in the way.
fn one_thread_beside_matrixmultiply((a, la): Operand, (b, lb): Operand) -> (f64, f64) {
    static ONE: std::sync::OnceLock<rayon::ThreadPool> = std::sync::OnceLock::new();
    let one = ONE.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
    });
    let mut c = vec![0f32; la.rows * lb.cols];
    let (mut ours, mut theirs) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..30 {
        let t = Instant::now();
        std::hint::black_box(one.install(|| product(1.0f32, a, la, b, lb)));
        ours = ours.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        // SAFETY: the layouts address their slices (as `product` checks); c is m × n.
        unsafe {
            matrixmultiply::sgemm(
                la.rows,
                la.cols,
                lb.cols,
                1.0,
                a.as_ptr().add(la.offset),
                la.row_stride as isize,
                la.col_stride as isize,
                b.as_ptr().add(lb.offset),
                lb.row_stride as isize,
                lb.col_stride as isize,
                0.0,
                c.as_mut_ptr(),
                lb.cols as isize,
                1,
            );
        }
        std::hint::black_box(&c);
        theirs = theirs.min(t.elapsed().as_secs_f64());
    }
    (ours, theirs)
}

/// The LoRA products of rank 8 at the same 1024 rows, for each map width: `h = x·Aᵀ`, the
/// bottleneck gradient `g = dY·B`, `dB = dYᵀ·H`, `dA = gᵀ·X` and `dX = g·A`.
fn lora_shapes(threads: usize) {
    let (rows, rank) = (1024, 8);
    for width in [384, 1536] {
        let mut rng = SplitMix::new(3);
        let mut values =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.uniform_in(-1.0, 1.0) as f32).collect() };
        let x = values(rows * width);
        let (a, b) = (values(rank * width), values(width * rank));
        let (h, g) = (values(rows * rank), values(rows * rank));
        let cases: [(&str, Operand, Operand); 5] = [
            (
                "lora x·At",
                (&x, Layout::row_major(rows, width)),
                (&a, Layout::row_major(rank, width).t()),
            ),
            (
                "lora dY·B",
                (&x, Layout::row_major(rows, width)),
                (&b, Layout::row_major(width, rank)),
            ),
            (
                "lora dYt·H",
                (&x, Layout::row_major(rows, width).t()),
                (&h, Layout::row_major(rows, rank)),
            ),
            (
                "lora gt·X",
                (&g, Layout::row_major(rows, rank).t()),
                (&x, Layout::row_major(rows, width)),
            ),
            (
                "lora g·A",
                (&g, Layout::row_major(rows, rank)),
                (&a, Layout::row_major(rank, width)),
            ),
        ];
        for (name, a, b) in cases {
            report(name, a, b, threads);
        }
    }
}

/// Prints the best of 30 runs of `product(a, b)` in GFLOP/s on every thread, and on one
/// thread beside `matrixmultiply::sgemm` ([`one_thread_beside_matrixmultiply`]).
fn report(name: &str, (a, la): Operand, (b, lb): Operand, threads: usize) {
    let flops = 2.0 * (la.rows * la.cols * lb.cols) as f64;
    std::hint::black_box(product(1.0f32, a, la, b, lb));
    let mut best = f64::INFINITY;
    for _ in 0..30 {
        let t = Instant::now();
        std::hint::black_box(product(1.0f32, a, la, b, lb));
        best = best.min(t.elapsed().as_secs_f64());
    }
    let (ours_one, theirs_one) = one_thread_beside_matrixmultiply((a, la), (b, lb));
    println!(
        "{{\"bench\":\"cpu_gemm_step\",\"op\":\"{name}\",\"m\":{},\"k\":{},\"n\":{},\"best_ms\":{:.3},\"gflops\":{:.1},\"threads_available\":{threads},\"one_thread_gflops\":{:.1},\"matrixmultiply_one_thread_gflops\":{:.1},\"one_thread_speedup\":{:.2}}}",
        la.rows,
        la.cols,
        lb.cols,
        best * 1e3,
        flops / best / 1e9,
        flops / ours_one / 1e9,
        flops / theirs_one / 1e9,
        theirs_one / ours_one
    );
}
