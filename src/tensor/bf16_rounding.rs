//! f64 → bf16 rounded to nearest even, correctly. `half::bf16::from_f64` drops the low 32
//! bits of the f64 before it rounds, so a value just above a tie between two bf16 (the
//! difference in those bits: an f32's last three mantissa bits among them) can round down:
//! one value in a few thousand of a random f32 weight matrix did.

use half::bf16;

/// `v` rounded to the nearest bf16, ties to even (NaN stays NaN, overflow goes to ±∞).
pub fn bf16_from_f64(v: f64) -> bf16 {
    if v.is_nan() {
        return bf16::NAN;
    }
    // To f32 rounded to odd (truncate, then set the last bit if anything was dropped): with
    // 16 bits more than bf16 it keeps every rounding decision of the final step exact.
    let mut f = v as f32;
    if f.is_finite() && f64::from(f).abs() > v.abs() {
        f = f32::from_bits(f.to_bits() - 1);
    }
    if f.is_finite() && f64::from(f) != v {
        f = f32::from_bits(f.to_bits() | 1);
    }
    bf16::from_f32(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_values_round_as_from_f32_does() {
        let mut x = 0x1234_5678u32;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let f = f32::from_bits(x);
            if !f.is_finite() {
                continue;
            }
            assert_eq!(
                bf16_from_f64(f64::from(f)).to_bits(),
                bf16::from_f32(f).to_bits(),
                "{f:e}"
            );
        }
    }

    #[test]
    fn values_at_and_beside_a_tie_round_to_the_nearest() {
        // 1 + 2^-8 lies halfway between bf16's 1 and 1 + 2^-7: a tie goes to the even 1.
        let (low, high) = (1.0f64, 1.0 + 2f64.powi(-7));
        let tie = 1.0 + 2f64.powi(-8);
        assert_eq!(bf16_from_f64(tie).to_f64(), low);
        for tiny in [2f64.powi(-40), 2f64.powi(-30), 2f64.powi(-24)] {
            assert_eq!(bf16_from_f64(tie + tiny).to_f64(), high, "+{tiny:e}");
            assert_eq!(bf16_from_f64(tie - tiny).to_f64(), low, "-{tiny:e}");
            assert_eq!(bf16_from_f64(-(tie + tiny)).to_f64(), -high, "-(+{tiny:e})");
        }
        assert!(bf16_from_f64(f64::NAN).is_nan());
        assert_eq!(bf16_from_f64(1e300).to_f64(), f64::INFINITY);
        assert_eq!(
            bf16_from_f64(-0.0).to_bits(),
            bf16::from_f32(-0.0).to_bits()
        );
    }
}
