//! Elementwise ops on the CPU: GELU, tanh, residual add, dropout, scaling, norms.

use std::mem::MaybeUninit;
use std::ops::Range;

use super::element::Element;
use crate::backend::Dropout;

const FRAC_1_SQRT_2: f64 = std::f64::consts::FRAC_1_SQRT_2;

/// Elements per parallel task: big enough that scheduling is noise, small enough that two
/// cores share a 1.5M-element activation evenly.
const BLOCK: usize = 1 << 14;

/// `out[range] = f(range)` over fixed blocks of the output, on the shared thread pool. Each
/// element is computed on its own, so the result is the same bits whatever the split. The
/// output is not zero-filled first (the fill was ~1% of a training step in `memset`).
///
/// # Safety
/// `f` must write every element of the block it is given.
unsafe fn map_blocks<T: Element>(
    n: usize,
    f: impl Fn(Range<usize>, &mut [MaybeUninit<T>]) + Sync,
) -> Vec<T> {
    use rayon::prelude::*;
    let mut out = Vec::with_capacity(n);
    out.spare_capacity_mut()[..n]
        .par_chunks_mut(BLOCK)
        .enumerate()
        .for_each(|(b, part)| {
            let start = b * BLOCK;
            f(start..start + part.len(), part)
        });
    // SAFETY: the blocks cover all `n` elements, and the caller's `f` wrote each block whole.
    unsafe { out.set_len(n) };
    out
}

/// `out[i] = f(i)` for every `i`, over [`map_blocks`].
fn map_indexed<T: Element>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    // SAFETY: the closure writes every element of its block.
    unsafe {
        map_blocks(n, |range, out| {
            for (v, i) in out.iter_mut().zip(range) {
                v.write(f(i));
            }
        })
    }
}

/// `1 / sqrt(2π)`.
const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

/// `x · Φ(x)` with `Φ(x) = (1 + erf(x/√2)) / 2` (BERT's exact GELU, not the tanh fit).
pub fn gelu<T: Element>(x: &[T]) -> Vec<T> {
    // SAFETY: `gelu_block` writes every element of its output.
    unsafe { map_blocks(x.len(), |range, out| T::gelu_block(&x[range], out)) }
}

/// [`gelu`] written over `x`: the same bits, each element being computed on its own.
pub fn gelu_in_place<T: Element>(x: &mut [T]) {
    use rayon::prelude::*;
    // The kernel reads one slice and writes another: a piece of `x` is copied aside first
    // (4 KiB of f32, 8 of f64, on the stack, in L1).
    const PIECE: usize = 1024;
    x.par_chunks_mut(BLOCK).for_each(|block| {
        let mut aside = [T::ZERO; PIECE];
        for piece in block.chunks_mut(PIECE) {
            let input = &mut aside[..piece.len()];
            input.copy_from_slice(piece);
            // SAFETY: `MaybeUninit<T>` has `T`'s layout, and the kernel leaves every element
            // written (initialised), as it found them.
            let out = unsafe { &mut *(piece as *mut [T] as *mut [MaybeUninit<T>]) };
            T::gelu_block(input, out);
        }
    });
}

/// `dy · (Φ(x) + x·φ(x))`.
pub fn gelu_backward<T: Element>(dy: &[T], x: &[T]) -> Vec<T> {
    assert_eq!(dy.len(), x.len(), "gelu backward: lengths differ");
    // SAFETY: `gelu_backward_block` writes every element of its output.
    unsafe {
        map_blocks(x.len(), |range, out| {
            T::gelu_backward_block(&dy[range.clone()], &x[range], out)
        })
    }
}

/// [`gelu`] one element at a time with the type's `erf` (the f64 reference).
pub fn gelu_with_erf<T: Element>(x: &[T], out: &mut [MaybeUninit<T>]) {
    assert_eq!(x.len(), out.len(), "gelu: input and output lengths differ");
    let half = T::from_f64(0.5);
    let c = T::from_f64(FRAC_1_SQRT_2);
    for (o, &v) in out.iter_mut().zip(x) {
        o.write(half * v * (T::ONE + (v * c).erf()));
    }
}

/// [`gelu_backward`] one element at a time with the type's `erf` (the f64 reference).
pub fn gelu_backward_with_erf<T: Element>(dy: &[T], x: &[T], out: &mut [MaybeUninit<T>]) {
    assert!(
        dy.len() == x.len() && x.len() == out.len(),
        "gelu backward: lengths differ"
    );
    let half = T::from_f64(0.5);
    let c = T::from_f64(FRAC_1_SQRT_2);
    let pdf = T::from_f64(FRAC_1_SQRT_2PI);
    for ((o, &g), &v) in out.iter_mut().zip(dy).zip(x) {
        let cdf = half * (T::ONE + (v * c).erf());
        o.write(g * (cdf + v * pdf * (-half * v * v).exp()));
    }
}

/// `tanh(x)`.
pub fn tanh<T: Element>(x: &[T]) -> Vec<T> {
    map_indexed(x.len(), |i| x[i].tanh())
}

/// `dy · (1 − y²)`.
pub fn tanh_backward<T: Element>(dy: &[T], y: &[T]) -> Vec<T> {
    map_indexed(y.len(), |i| dy[i] * (T::ONE - y[i] * y[i]))
}

/// `max(x, 0)`; NaN stays NaN (a diverged value must not turn into a finite 0).
pub fn relu<T: Element>(x: &[T]) -> Vec<T> {
    map_indexed(x.len(), |i| if x[i] <= T::ZERO { T::ZERO } else { x[i] })
}

/// `dy` where `y` is not ≤ 0, else 0.
pub fn relu_backward<T: Element>(dy: &[T], y: &[T]) -> Vec<T> {
    map_indexed(y.len(), |i| if y[i] <= T::ZERO { T::ZERO } else { dy[i] })
}

/// `a + b` (the residual adds): zipped blocks, which vectorize, where an index closure
/// kept bounds checks and stayed scalar.
pub fn add<T: Element>(a: &[T], b: &[T]) -> Vec<T> {
    assert_eq!(a.len(), b.len(), "add: lengths differ");
    // SAFETY: the closure writes every element of its block (`a` and `b` are as long as the
    // output, checked above).
    unsafe {
        map_blocks(a.len(), |range, out| {
            for ((o, &x), &y) in out.iter_mut().zip(&a[range.clone()]).zip(&b[range]) {
                o.write(x + y);
            }
        })
    }
}

/// `acc += x`, over fixed blocks on the shared pool.
pub fn add_assign<T: Element>(acc: &mut [T], x: &[T]) {
    use rayon::prelude::*;
    acc.par_chunks_mut(BLOCK)
        .zip(x.par_chunks(BLOCK))
        .for_each(|(acc, x)| {
            for (a, &v) in acc.iter_mut().zip(x) {
                *a += v;
            }
        });
}

/// `t *= s`, over fixed blocks on the shared pool.
pub fn scale<T: Element>(t: &mut [T], s: T) {
    use rayon::prelude::*;
    t.par_chunks_mut(BLOCK).for_each(|t| {
        for v in t {
            *v = *v * s;
        }
    });
}

/// `Σ t²` in f64: each fixed block of `t` summed in order, then the block sums in order, so
/// the bits depend on the length alone, not on the number of threads.
pub fn sum_squares<T: Element>(t: &[T]) -> f64 {
    use rayon::prelude::*;
    let blocks: Vec<f64> = t
        .par_chunks(BLOCK)
        .map(|b| b.iter().map(|&v| v.to_f64() * v.to_f64()).sum())
        .collect();
    blocks.iter().sum()
}

/// `x ∘ keep / (1 − p)`, the mask drawn from `(seed, element index)`, over fixed blocks on the
/// shared pool.
pub fn dropout<T: Element>(x: &[T], d: &Dropout) -> Vec<T> {
    // SAFETY: `write_masked` writes every element of its block.
    unsafe {
        map_blocks(x.len(), |range, out| {
            super::dropout::write_masked(&x[range.clone()], out, range.start as u64, d)
        })
    }
}
