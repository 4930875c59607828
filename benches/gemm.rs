//! CPU GEMM throughput through the backend's linear map (`y = x·Wᵀ`), the op every BERT
//! layer spends its time in. Prints one JSON line per (dtype, size).
//!
//! `cargo bench --bench gemm` (sizes via `SPAFIT_BENCH_SIZES=512,1024`).

use std::time::Instant;

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
}
