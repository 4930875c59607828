//! f32 transcendentals at the speed of vector code: BERT's exact GELU `x·Φ(x)` and its
//! derivative, and `e^x` for attention's softmax. Each is evaluated in f64 and rounded once.
//!
//! `e^x` is the same range reduction and series as [`exp_lanes`]: within an f32 ulp of the
//! rounded exact value (libm's `expf` was, at 256 tokens, the largest cost of attention).
//!
//! libm's `erff` is scalar and branchy, and was the largest cost of a training step after the
//! GEMMs. Here Φ comes from one smooth formula that vectorizes: for `z = |x|/√2`,
//! `erfc(z) = t·e^(−z²)·P(t)` with `t = 1/(1 + z/2)` and `P` a degree-11 polynomial fitted by
//! relative least squares to `erfc(z)·e^(z²)/t` on `z ∈ [0, 10]` (relative error of `erfc`
//! below 4e-10 there; `erfc(10)` is already far below f32's smallest number). It is evaluated
//! in f64 and rounded once to f32: every GELU value is within one f32 ulp of the correctly
//! rounded one (99.89% of a dense grid on [−12, 12] are exactly it). Plain multiplies and
//! adds, no FMA, so the scalar and AVX2 builds of the loop give the same bits.

use std::f64::consts::FRAC_1_SQRT_2;

/// `1 / sqrt(2π)`.
const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

/// `P(t)`'s coefficients, lowest degree first.
const ERFC_P: [f64; 12] = [
    0.282_099_080_808_719_54,
    0.281_960_921_611_129_46,
    0.248_680_199_431_308_8,
    0.161_426_353_531_880_45,
    0.161_549_290_791_537_8,
    -0.281_204_255_202_164_35,
    0.624_224_197_454_272_4,
    -1.198_512_579_427_388_5,
    1.246_927_454_835_798_3,
    -0.723_635_879_263_544_7,
    0.226_809_143_884_539_32,
    -0.030_323_928_389_967_156,
];

/// Elements evaluated together. The polynomials are long dependency chains; running each
/// step over 16 independent lanes (four AVX2 registers of f64) keeps the FPU busy instead of
/// waiting on one chain.
const LANES: usize = 16;
type Lanes = [f64; LANES];

const LOG2_E: f64 = std::f64::consts::LOG2_E;
const LN2_HI: f64 = 0.693_147_180_369_123_8;
const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
/// Adding 1.5·2⁵² rounds to an integer and leaves it in the low bits of the mantissa.
const ROUND: f64 = 6_755_399_441_055_744.0;
/// `e^r`'s Taylor coefficients from degree 9 down to 0 (degree 10, `1/10!`, starts Horner).
const INVERSE_FACTORIALS: [f64; 10] = [
    1.0 / 362_880.0,
    1.0 / 40_320.0,
    1.0 / 5_040.0,
    1.0 / 720.0,
    1.0 / 120.0,
    1.0 / 24.0,
    1.0 / 6.0,
    0.5,
    1.0,
    1.0,
];

/// `e^y` lane by lane for `y ∈ [−700, 89]`: `y = k·ln 2 + r` with `|r| ≤ ln 2 / 2`, `e^r` by
/// its Taylor series to degree 10 (relative error below 3e-13, far past what an f32 result
/// needs), `2^k` built in the exponent bits.
#[inline(always)]
fn exp_lanes(y: &Lanes) -> Lanes {
    let mut shifted = [0.0; LANES];
    let mut r = [0.0; LANES];
    for i in 0..LANES {
        shifted[i] = y[i] * LOG2_E + ROUND;
        let k = shifted[i] - ROUND;
        r[i] = (y[i] - k * LN2_HI) - k * LN2_LO;
    }
    let mut p = [1.0 / 3_628_800.0; LANES];
    for c in INVERSE_FACTORIALS {
        for i in 0..LANES {
            p[i] = p[i] * r[i] + c;
        }
    }
    for i in 0..LANES {
        let k_bits = shifted[i].to_bits().wrapping_sub(ROUND.to_bits());
        p[i] *= f64::from_bits(k_bits.wrapping_add(1023) << 52);
    }
    p
}

/// `(Φ(x), φ(x))` lane by lane: the standard normal's CDF and density.
#[inline(always)]
fn normal_cdf_pdf(x: &Lanes) -> (Lanes, Lanes) {
    let mut z = [0.0; LANES];
    let mut t = [0.0; LANES];
    let mut minus_z2 = [0.0; LANES];
    for i in 0..LANES {
        // The clamp keeps the polynomial inside the range it was fitted on.
        z[i] = (x[i].abs() * FRAC_1_SQRT_2).min(10.0);
        t[i] = 1.0 / (1.0 + 0.5 * z[i]);
        minus_z2[i] = -(z[i] * z[i]);
    }
    let mut p = [ERFC_P[11]; LANES];
    for &c in ERFC_P[..11].iter().rev() {
        for i in 0..LANES {
            p[i] = p[i] * t[i] + c;
        }
    }
    // One exponential serves both: erfc(z) = t·e^(−z²)·P(t) and φ(x) = e^(−z²)/√(2π).
    let gauss = exp_lanes(&minus_z2);
    let mut cdf = [0.0; LANES];
    let mut pdf = [0.0; LANES];
    for i in 0..LANES {
        // Past |x| = 10·√2 both tails are below 1e-44: zero as far as f32 is concerned.
        let g = if x[i].abs() >= 10.0 / FRAC_1_SQRT_2 {
            0.0
        } else {
            gauss[i]
        };
        let half_erfc = 0.5 * t[i] * p[i] * g;
        cdf[i] = if x[i] < 0.0 {
            half_erfc
        } else {
            1.0 - half_erfc
        };
        pdf[i] = FRAC_1_SQRT_2PI * g;
    }
    (cdf, pdf)
}

/// `x[range]` widened to f64; lanes past the end stay zero (computed like any other lane,
/// so every element sees the same operations whether its block is full or not).
#[inline(always)]
fn widen(x: &[f32], start: usize, end: usize) -> Lanes {
    let mut lanes = [0.0; LANES];
    for (lane, &xi) in lanes.iter_mut().zip(&x[start..end]) {
        *lane = f64::from(xi);
    }
    lanes
}

// Plain loops, no closures: a closure would be compiled on its own, without the AVX2 of the
// function that calls it.
#[inline(always)]
fn gelu_loop(x: &[f32], out: &mut [f32]) {
    let mut start = 0;
    while start < x.len() {
        let end = (start + LANES).min(x.len());
        let v = widen(x, start, end);
        let (cdf, _) = normal_cdf_pdf(&v);
        for (i, o) in out[start..end].iter_mut().enumerate() {
            *o = (v[i] * cdf[i]) as f32;
        }
        start = end;
    }
}

#[inline(always)]
fn gelu_backward_loop(dy: &[f32], x: &[f32], out: &mut [f32]) {
    let mut start = 0;
    while start < x.len() {
        let end = (start + LANES).min(x.len());
        let v = widen(x, start, end);
        let (cdf, pdf) = normal_cdf_pdf(&v);
        for (i, (o, &g)) in out[start..end].iter_mut().zip(&dy[start..end]).enumerate() {
            *o = (f64::from(g) * (cdf[i] + v[i] * pdf[i])) as f32;
        }
        start = end;
    }
}

#[inline(always)]
fn exp_loop(x: &mut [f32]) {
    let mut start = 0;
    while start < x.len() {
        let end = (start + LANES).min(x.len());
        let mut v = widen(x, start, end);
        for lane in v.iter_mut() {
            // Below −700 the result is 0 in f32 anyway; NaN stays NaN (the comparison fails).
            if *lane < -700.0 {
                *lane = -700.0;
            }
        }
        let e = exp_lanes(&v);
        for (o, &y) in x[start..end].iter_mut().zip(&e) {
            *o = y as f32;
        }
        start = end;
    }
}

/// `x = e^x` in place, for `x ≤ 88` (softmax arguments are at most 0).
pub fn exp_f32(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { avx2::exp(x) };
    }
    exp_loop(x)
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `out = x·Φ(x)`.
pub fn gelu_f32(x: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { avx2::gelu(x, out) };
    }
    gelu_loop(x, out)
}

/// `out = dy·(Φ(x) + x·φ(x))`.
pub fn gelu_backward_f32(dy: &[f32], x: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { avx2::gelu_backward(dy, x, out) };
    }
    gelu_backward_loop(dy, x, out)
}

/// The same operations as the scalar loops above, in the same order, four f64 lanes per
/// AVX2 instruction throughout: no FMA (Rust never contracts `a·b + c` either), so every
/// result has the bits of the scalar loop's. Written with intrinsics because the compiler
/// left the selects, tails and conversions of the scalar loops scalar.
///
/// Sixteen elements go through each step together, as four registers (`Quad`) whose
/// polynomial chains are kept interleaved by `settle`.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::super::chains::issue_together;

    use super::{
        ERFC_P, FRAC_1_SQRT_2, FRAC_1_SQRT_2PI, INVERSE_FACTORIALS, LANES, LN2_HI, LN2_LO, LOG2_E,
        ROUND,
    };

    /// Sixteen f64 lanes in four registers.
    type Quad = [__m256d; 4];

    // The helpers below are `#[inline(always)]` without a target feature (stable Rust allows
    // not both): they are only called from the `#[target_feature(enable = "avx2")]` entry
    // points, where they compile with AVX2 and `settle` inlines into them. Built with the
    // feature and a plain `#[inline]`, LLVM kept the erfc evaluation a call that passed
    // sixteen registers through memory (1.72 against 2.07 ns per GELU element here).

    #[inline(always)]
    unsafe fn splat(c: f64) -> __m256d {
        _mm256_set1_pd(c)
    }

    /// [`issue_together`] on f64 registers (the same 256 bits): GELU 5.5 → ~3 ns per element
    /// on one thread here, the same bits.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn settle(v: &mut Quad) {
        // SAFETY: `__m256d` and `__m256i` are the same 256 bits, any pattern valid for both.
        issue_together(&mut *(v as *mut Quad).cast::<[__m256i; 4]>());
    }

    /// `y = k·ln 2 + r` for `exp_lanes`: `(k + ROUND, r)`.
    #[inline(always)]
    unsafe fn exp_reduce(y: __m256d) -> (__m256d, __m256d) {
        let shifted = _mm256_add_pd(_mm256_mul_pd(y, splat(LOG2_E)), splat(ROUND));
        let k = _mm256_sub_pd(shifted, splat(ROUND));
        let r = _mm256_sub_pd(
            _mm256_sub_pd(y, _mm256_mul_pd(k, splat(LN2_HI))),
            _mm256_mul_pd(k, splat(LN2_LO)),
        );
        (shifted, r)
    }

    /// The series' value `p` times `2^k`, built in the exponent bits.
    #[inline(always)]
    unsafe fn exp_scale(p: __m256d, shifted: __m256d) -> __m256d {
        let k_bits = _mm256_sub_epi64(
            _mm256_castpd_si256(shifted),
            _mm256_set1_epi64x(ROUND.to_bits() as i64),
        );
        let two_k = _mm256_slli_epi64::<52>(_mm256_add_epi64(k_bits, _mm256_set1_epi64x(1023)));
        _mm256_mul_pd(p, _mm256_castsi256_pd(two_k))
    }

    /// One Horner step `p·x + c` of four chains.
    #[inline(always)]
    unsafe fn horner_step(p: &mut Quad, x: &Quad, c: f64) {
        for j in 0..4 {
            p[j] = _mm256_add_pd(_mm256_mul_pd(p[j], x[j]), splat(c));
        }
    }

    /// `e^y`: `exp_lanes`, sixteen lanes.
    #[inline(always)]
    unsafe fn exp16(y: Quad) -> Quad {
        let (mut shifted, mut r) = (y, y);
        for j in 0..4 {
            (shifted[j], r[j]) = exp_reduce(y[j]);
        }
        let mut p = [splat(1.0 / 3_628_800.0); 4];
        for c in INVERSE_FACTORIALS {
            horner_step(&mut p, &r, c);
            settle(&mut p);
        }
        for j in 0..4 {
            p[j] = exp_scale(p[j], shifted[j]);
        }
        p
    }

    /// `(Φ(x), φ(x))`: `normal_cdf_pdf`, sixteen lanes. The erfc polynomial and the
    /// exponential's series step together: eight independent chains.
    #[inline(always)]
    unsafe fn normal_cdf_pdf16(x: Quad) -> (Quad, Quad) {
        let sign = splat(-0.0);
        let (mut abs_x, mut t, mut shifted, mut r) = (x, x, x, x);
        for j in 0..4 {
            abs_x[j] = _mm256_andnot_pd(sign, x[j]);
            // `min` returns its second operand for a NaN first one, as f64::min returns 10.
            let z = _mm256_min_pd(_mm256_mul_pd(abs_x[j], splat(FRAC_1_SQRT_2)), splat(10.0));
            t[j] = _mm256_div_pd(
                splat(1.0),
                _mm256_add_pd(splat(1.0), _mm256_mul_pd(splat(0.5), z)),
            );
            (shifted[j], r[j]) = exp_reduce(_mm256_xor_pd(_mm256_mul_pd(z, z), sign));
        }
        let mut p = [splat(ERFC_P[11]); 4];
        let mut series = [splat(1.0 / 3_628_800.0); 4];
        for (step, &c) in ERFC_P[..11].iter().rev().enumerate() {
            horner_step(&mut p, &t, c);
            // The series has one step fewer than the polynomial.
            if let Some(&factor) = INVERSE_FACTORIALS.get(step) {
                horner_step(&mut series, &r, factor);
                settle(&mut series);
            }
            settle(&mut p);
        }
        let (mut cdf, mut pdf) = (x, x);
        for j in 0..4 {
            let far = _mm256_cmp_pd::<_CMP_GE_OQ>(abs_x[j], splat(10.0 / FRAC_1_SQRT_2));
            let g = _mm256_andnot_pd(far, exp_scale(series[j], shifted[j]));
            let half_erfc = _mm256_mul_pd(_mm256_mul_pd(_mm256_mul_pd(splat(0.5), t[j]), p[j]), g);
            let negative = _mm256_cmp_pd::<_CMP_LT_OQ>(x[j], _mm256_setzero_pd());
            cdf[j] = _mm256_blendv_pd(_mm256_sub_pd(splat(1.0), half_erfc), half_erfc, negative);
            pdf[j] = _mm256_mul_pd(splat(FRAC_1_SQRT_2PI), g);
        }
        (cdf, pdf)
    }

    #[inline(always)]
    unsafe fn load(x: &[f32]) -> Quad {
        debug_assert_eq!(x.len(), LANES);
        let mut v = [_mm256_setzero_pd(); 4];
        for (j, vj) in v.iter_mut().enumerate() {
            *vj = _mm256_cvtps_pd(_mm_loadu_ps(x.as_ptr().add(4 * j)));
        }
        v
    }

    #[inline(always)]
    unsafe fn store(v: Quad, out: &mut [f32]) {
        debug_assert_eq!(out.len(), LANES);
        for (j, &vj) in v.iter().enumerate() {
            _mm_storeu_ps(out.as_mut_ptr().add(4 * j), _mm256_cvtpd_ps(vj));
        }
    }

    /// The last `x.len() % 16` elements, zero-padded to sixteen (computed like any other
    /// group).
    #[inline(always)]
    fn padded_tail(x: &[f32]) -> [f32; LANES] {
        let mut g = [0.0f32; LANES];
        let tail = x.chunks_exact(LANES).remainder();
        g[..tail.len()].copy_from_slice(tail);
        g
    }

    // Plain loops, no closures: a closure is compiled on its own, without this function's
    // AVX2, and the intrinsics in it would become calls.

    #[inline(always)]
    unsafe fn gelu16(x: Quad) -> Quad {
        let (mut y, _) = normal_cdf_pdf16(x);
        for j in 0..4 {
            y[j] = _mm256_mul_pd(x[j], y[j]);
        }
        y
    }

    #[target_feature(enable = "avx2")]
    pub unsafe fn gelu(x: &[f32], out: &mut [f32]) {
        let mut groups = out.chunks_exact_mut(LANES);
        for (x16, out16) in x.chunks_exact(LANES).zip(&mut groups) {
            store(gelu16(load(x16)), out16);
        }
        let rest = groups.into_remainder();
        if !rest.is_empty() {
            let mut result = [0.0f32; LANES];
            store(gelu16(load(&padded_tail(x))), &mut result);
            let n = rest.len();
            rest.copy_from_slice(&result[..n]);
        }
    }

    #[inline(always)]
    unsafe fn gelu_grad16(dy: Quad, x: Quad) -> Quad {
        let (mut grad, pdf) = normal_cdf_pdf16(x);
        for j in 0..4 {
            grad[j] = _mm256_mul_pd(dy[j], _mm256_add_pd(grad[j], _mm256_mul_pd(x[j], pdf[j])));
        }
        grad
    }

    #[target_feature(enable = "avx2")]
    pub unsafe fn gelu_backward(dy: &[f32], x: &[f32], out: &mut [f32]) {
        let mut groups = out.chunks_exact_mut(LANES);
        for ((dy16, x16), out16) in dy
            .chunks_exact(LANES)
            .zip(x.chunks_exact(LANES))
            .zip(&mut groups)
        {
            store(gelu_grad16(load(dy16), load(x16)), out16);
        }
        let rest = groups.into_remainder();
        if !rest.is_empty() {
            let mut result = [0.0f32; LANES];
            let grad = gelu_grad16(load(&padded_tail(dy)), load(&padded_tail(x)));
            store(grad, &mut result);
            let n = rest.len();
            rest.copy_from_slice(&result[..n]);
        }
    }

    /// `e^v` with `v` clamped below at −700 (the result is 0 in f32 anyway; NaN stays NaN, the
    /// comparison fails).
    #[inline(always)]
    unsafe fn clamped_exp16(mut v: Quad) -> Quad {
        for vj in &mut v {
            let low = _mm256_cmp_pd::<_CMP_LT_OQ>(*vj, splat(-700.0));
            *vj = _mm256_blendv_pd(*vj, splat(-700.0), low);
        }
        exp16(v)
    }

    #[target_feature(enable = "avx2")]
    pub unsafe fn exp(x: &mut [f32]) {
        let mut groups = x.chunks_exact_mut(LANES);
        for x16 in &mut groups {
            store(clamped_exp16(load(x16)), x16);
        }
        let rest = groups.into_remainder();
        if !rest.is_empty() {
            let mut group = padded_tail(rest);
            store(clamped_exp16(load(&group)), &mut group);
            let n = rest.len();
            rest.copy_from_slice(&group[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GELU and its derivative in f64 with libm's erfc, rounded to f32 (the reference), and
    /// the size of the derivative's two terms.
    fn reference(x: f32) -> (f32, f32, f64) {
        let v = f64::from(x);
        let cdf = 0.5 * libm::erfc(-v * FRAC_1_SQRT_2);
        let pdf = FRAC_1_SQRT_2PI * (-0.5 * v * v).exp();
        (
            (v * cdf) as f32,
            (cdf + v * pdf) as f32,
            cdf.abs() + (v * pdf).abs(),
        )
    }

    fn ulps(a: f32, b: f32) -> u32 {
        if a == b {
            return 0;
        }
        let ordered = |f: f32| {
            let i = f.to_bits() as i32;
            if i < 0 {
                i32::MIN - i
            } else {
                i
            }
        };
        ordered(a).abs_diff(ordered(b))
    }

    #[test]
    fn within_one_f32_ulp_of_the_rounded_exact_values() {
        let xs: Vec<f32> = (-240_000..=240_000).map(|i| i as f32 * 5e-5).collect();
        let mut fwd = vec![0.0; xs.len()];
        let mut bwd = vec![0.0; xs.len()];
        gelu_f32(&xs, &mut fwd);
        gelu_backward_f32(&vec![1.0; xs.len()], &xs, &mut bwd);
        let (mut worst_f, mut worst_b, mut exact) = (0, 0.0f64, 0usize);
        for ((&x, &f), &b) in xs.iter().zip(&fwd).zip(&bwd) {
            let (rf, rb, terms) = reference(x);
            worst_f = worst_f.max(ulps(f, rf));
            // Near its zero (x ≈ −0.75) the derivative is a difference of two O(0.2) terms:
            // its error is measured in units of f32 rounding of those terms.
            let unit = if ulps(b, rb) <= 1 {
                f64::INFINITY
            } else {
                terms * f64::from(f32::EPSILON)
            };
            worst_b = worst_b.max((f64::from(b) - f64::from(rb)).abs() / unit);
            exact += usize::from(f == rf);
        }
        assert!(worst_f <= 1, "forward {worst_f} ulp");
        assert!(worst_b <= 1.0, "backward {worst_b} roundings of its terms");
        assert!(
            exact as f64 / xs.len() as f64 > 0.998,
            "{exact} of {}",
            xs.len()
        );
        // The scalar loops and the vector ones agree bit for bit (the length is not a
        // multiple of four or sixteen, so both tails are in it).
        assert_eq!(xs.len() % 16, 1);
        let mut scalar = vec![0.0; xs.len()];
        gelu_loop(&xs, &mut scalar);
        assert_eq!(bits(&scalar), bits(&fwd));
        let dy: Vec<f32> = xs.iter().map(|x| 1.0 - x * 0.3).collect();
        gelu_backward_f32(&dy, &xs, &mut bwd);
        gelu_backward_loop(&dy, &xs, &mut scalar);
        assert_eq!(bits(&scalar), bits(&bwd));
        let mut vector: Vec<f32> = xs.iter().map(|x| x * 8.0).collect();
        let mut scalar = vector.clone();
        exp_f32(&mut vector);
        exp_loop(&mut scalar);
        assert_eq!(bits(&scalar), bits(&vector));
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn exp_within_one_f32_ulp() {
        let mut xs: Vec<f32> = (-1_000_000..=100_000).map(|i| i as f32 * 1e-4).collect();
        let want: Vec<f32> = xs.iter().map(|&x| f64::from(x).exp() as f32).collect();
        exp_f32(&mut xs);
        let worst = xs
            .iter()
            .zip(&want)
            .map(|(&a, &b)| ulps(a, b))
            .max()
            .unwrap();
        assert!(worst <= 1, "{worst} ulp");
        let mut specials = [-1e30f32, -800.0, 0.0, f32::NAN];
        exp_f32(&mut specials);
        assert_eq!(&specials[..3], &[0.0, 0.0, 1.0]);
        assert!(specials[3].is_nan());
    }

    #[test]
    fn tails_and_specials() {
        let xs = [
            -1e30f32,
            -50.0,
            -9.0,
            0.0,
            -0.0,
            9.0,
            50.0,
            1e30,
            f32::INFINITY,
            f32::NAN,
        ];
        let mut out = [0.0; 10];
        gelu_f32(&xs, &mut out);
        assert_eq!(&out[..2], &[-0.0, -0.0]);
        assert_eq!(out[3], 0.0);
        assert_eq!(&out[5..9], &[9.0, 50.0, 1e30, f32::INFINITY]);
        assert!(out[9].is_nan());
        let (want, _, _) = reference(-9.0);
        assert_eq!(out[2], want);
    }
}
