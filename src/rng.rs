//! Counter-based random numbers: every draw is a pure function of `(seed, index)`.
//!
//! Why counter-based: a dropout mask then never needs storing (backward regenerates it),
//! every element can be drawn by any thread in any order, and the CPU and CUDA backends draw
//! bit-identical masks from integer arithmetic alone. The mixer is SplitMix64's finalizer on
//! a Weyl-sequence step of the index, xor-ed with the seed; the kernels implement the same
//! function.

/// 64 random bits for element `index` of the stream `seed`.
#[inline]
pub fn mix(seed: u64, index: u64) -> u64 {
    let mut z = index.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Bits of resolution of a dropout draw: 24, so thresholds are exact in f32 as well.
const DROP_BITS: u32 = 24;

/// The integer threshold below which an element is dropped with probability `p`.
#[inline]
pub fn drop_threshold(p: f64) -> u32 {
    (p * f64::from(1u32 << DROP_BITS)).round() as u32
}

/// Whether element `index` survives dropout with threshold [`drop_threshold`]`(p)`.
#[inline]
pub fn keeps(seed: u64, index: u64, threshold: u32) -> bool {
    ((mix(seed, index) >> (64 - DROP_BITS)) as u32) >= threshold
}

/// A small seeded generator for host-side sampling (initialisation, shuffling, tests).
#[derive(Clone, Debug)]
pub struct SplitMix {
    seed: u64,
    counter: u64,
}

impl SplitMix {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix { seed, counter: 0 }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let r = mix(self.seed, self.counter);
        self.counter += 1;
        r
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform_in(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_rate_matches_probability() {
        let p = 0.1;
        let t = drop_threshold(p);
        let n = 200_000u64;
        let kept = (0..n).filter(|&i| keeps(42, i, t)).count() as f64;
        let rate = 1.0 - kept / n as f64;
        assert!((rate - p).abs() < 0.005, "drop rate {rate}");
    }

    #[test]
    fn different_seeds_give_different_masks() {
        let t = drop_threshold(0.5);
        let same = (0..1000u64)
            .filter(|&i| keeps(1, i, t) == keeps(2, i, t))
            .count();
        assert!(same < 600, "masks of seeds 1 and 2 agree on {same} of 1000");
    }
}
