//! Timing shared by the CPU op benches.

use std::time::Instant;

/// The fastest of `reps` runs of `f`, in seconds, after one untimed run.
pub fn best_seconds(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}
