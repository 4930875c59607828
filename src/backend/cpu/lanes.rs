//! Row reductions in fixed lanes, and AVX2 builds of the row loops that use them.
//!
//! A sum written as one running total is a chain of dependent adds that the compiler must
//! keep in order (float addition is not associative): one add per 3–4 cycles. Summing
//! element `j` into lane `j % LANES` and adding the lanes in order at the end gives the
//! compiler eight independent chains to put in one vector register, with a result that
//! still depends only on the row, never on threads or on the CPU.

use super::element::Element;

/// Partial sums per reduction (one AVX2 register of f32).
pub const LANES: usize = 8;

/// Defines `$name`, which runs the body compiled with AVX2 when the CPU has it and as is
/// otherwise; both compute the same operations in the same order (no FMA: Rust never
/// contracts `a·b + c`). The body is a plain function, not a closure: a closure is compiled
/// on its own, without the AVX2 of the function that calls it.
macro_rules! with_avx2 {
    ($(#[$doc:meta])* $vis:vis fn $name:ident<T>($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$doc])*
        $vis fn $name<T: Element>($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body<T: Element>($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2<T: Element>($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                if std::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2 (checked just above).
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(super) use with_avx2;

/// `Σ f(a_j, b_j, c_j)` over three slices of one length, element `j` into lane `j % LANES`,
/// the lanes added in order. Taken in whole chunks of `LANES`, so no index needs a bounds
/// check and the loop vectorizes (through an index closure, layernorm's rows stayed scalar).
#[inline(always)]
pub fn sum_of3<T: Element>(a: &[T], b: &[T], c: &[T], f: impl Fn(T, T, T) -> T) -> T {
    assert!(a.len() == b.len() && b.len() == c.len());
    let mut lanes = [T::ZERO; LANES];
    let (ac, bc, cc) = (
        a.chunks_exact(LANES),
        b.chunks_exact(LANES),
        c.chunks_exact(LANES),
    );
    let rest = (ac.remainder(), bc.remainder(), cc.remainder());
    for ((x, y), z) in ac.zip(bc).zip(cc) {
        for (i, lane) in lanes.iter_mut().enumerate() {
            *lane += f(x[i], y[i], z[i]);
        }
    }
    let tail = rest.0.iter().zip(rest.1).zip(rest.2);
    for (lane, ((&x, &y), &z)) in lanes.iter_mut().zip(tail) {
        *lane += f(x, y, z);
    }
    lanes.iter().fold(T::ZERO, |acc, &s| acc + s)
}

/// The largest value (`None` for none), element `j` into lane `j % LANES` as in
/// [`sum_of3`]; NaNs lose every comparison, so they are skipped unless all are NaN.
#[inline(always)]
pub fn max_of<T: Element>(v: &[T]) -> Option<T> {
    let &first = v.first()?;
    // `m != m` holds for NaN only (and compiles to one vector compare): a NaN so far is
    // replaced by whatever comes next.
    #[allow(clippy::eq_op)]
    let larger = |m: T, v: T| if v > m || m != m { v } else { m };
    let mut lanes = [first; LANES];
    let chunks = v.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane = larger(*lane, x);
        }
    }
    for (lane, &x) in lanes.iter_mut().zip(rest) {
        *lane = larger(*lane, x);
    }
    Some(lanes.iter().fold(first, |m, &x| larger(m, x)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Σ f(j)` for `j < n` by lanes, written with an index: the definition [`sum_of3`] must
    /// match bit for bit.
    fn sum_by<T: Element>(n: usize, f: impl Fn(usize) -> T) -> T {
        let mut lanes = [T::ZERO; LANES];
        let full = n / LANES * LANES;
        for start in (0..full).step_by(LANES) {
            for (i, lane) in lanes.iter_mut().enumerate() {
                *lane += f(start + i);
            }
        }
        for (lane, j) in lanes.iter_mut().zip(full..n) {
            *lane += f(j);
        }
        lanes.iter().fold(T::ZERO, |acc, &s| acc + s)
    }

    #[test]
    fn lane_sums_and_maxima() {
        for n in [0, 1, 7, 8, 9, 384, 1000] {
            let v: Vec<f64> = (0..n).map(|i| ((i * 37) % 101) as f64 - 50.0).collect();
            let want: f64 = v.iter().sum();
            assert!((sum_by(n, |j| v[j]) - want).abs() < 1e-9, "sum of {n}");
            let sum3 = sum_of3(&v, &v, &v, |x, y, z| x * y - z);
            let by_index = sum_by(n, |j| v[j] * v[j] - v[j]);
            assert_eq!(sum3.to_bits(), by_index.to_bits(), "sum_of3 of {n}");
            let want_max = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            assert_eq!(max_of(&v), (n > 0).then_some(want_max), "max of {n}");
        }
        // NaN never wins a comparison.
        assert_eq!(max_of(&[f64::NAN, 2.0, 1.0]), Some(2.0));
        assert_eq!(max_of(&[1.0, f64::NAN, 3.0]), Some(3.0));
        let mut nan_then_one = vec![f64::NAN; 9];
        nan_then_one.push(-1.0);
        assert_eq!(max_of(&nan_then_one), Some(-1.0));
        assert!(max_of(&[f64::NAN; 9]).unwrap().is_nan());
    }
}
