//! Timing shared by the GPU benches: launches are queued, so a call's time is the time of
//! many calls with the device synchronized around them.

use std::time::Instant;

use spafit::backend::cuda::CudaBackend;

/// Seconds per call of `f`, the best of `rounds` rounds of `iters` calls (after a warm-up).
pub fn seconds_per_call(b: &CudaBackend, rounds: usize, iters: usize, mut f: impl FnMut()) -> f64 {
    f();
    b.synchronize().unwrap();
    (0..rounds)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..iters {
                f();
            }
            b.synchronize().unwrap();
            t.elapsed().as_secs_f64() / iters as f64
        })
        .fold(f64::INFINITY, f64::min)
}
