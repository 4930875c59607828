//! The f32 copies the portable bf16 product multiplies (CPUs without AVX-512 BF16): the
//! activations rounded to bf16 and widened back, the bf16 weight widened. Element by element
//! `half`'s `bf16::from_f32(v).to_f32()` and `w.to_f32()` bit for bit (ties to even, a NaN
//! kept with its quiet bit set), but branch-free so that the loops vectorize, and split over
//! the pool. Done one element at a time on one thread, widening the whole weight for every
//! product, they made a single text's bf16 forward on an AVX2 CPU ~1.5× its f32 forward.

use std::mem::MaybeUninit;

use half::bf16;
use rayon::prelude::*;

/// Elements per task: large enough that a task's start is noise beside its copy, small
/// enough that a batch's activations split over the cores.
const TASK: usize = 1 << 16;

/// An f32's bits `x` rounded to the nearest bf16 and widened back to f32.
#[inline(always)]
fn rounded_bits(x: u32) -> u32 {
    if x & 0x7fff_ffff > 0x7f80_0000 {
        (x | 0x0040_0000) & 0xffff_0000
    } else {
        // Adding just under half a unit, plus the kept part's last bit, carries into the kept
        // part exactly when the dropped half is above a tie, or at one with an odd kept part.
        x.wrapping_add(0x7fff + ((x >> 16) & 1)) & 0xffff_0000
    }
}

/// A bf16's bits widened to an f32's.
#[inline(always)]
fn widened_bits(b: u16) -> u32 {
    let b = u32::from(b);
    if b & 0x7fff > 0x7f80 {
        (b | 0x0040) << 16
    } else {
        b << 16
    }
}

/// `src` mapped element by element through `f` into a new vector, over the pool.
fn mapped<S: Copy + Sync>(src: &[S], f: impl Fn(S) -> f32 + Sync) -> Vec<f32> {
    let mut out = Vec::with_capacity(src.len());
    let fill = |dst: &mut [MaybeUninit<f32>], src: &[S]| {
        for (d, &s) in dst.iter_mut().zip(src) {
            d.write(f(s));
        }
    };
    let spare = &mut out.spare_capacity_mut()[..src.len()];
    if src.len() <= TASK {
        fill(spare, src);
    } else {
        spare
            .par_chunks_mut(TASK)
            .zip(src.par_chunks(TASK))
            .for_each(|(dst, src)| fill(dst, src));
    }
    // SAFETY: every one of the first `src.len()` elements was written above.
    unsafe { out.set_len(src.len()) };
    out
}

/// `a`'s values rounded to bf16 and widened back to f32.
pub(super) fn rounded_to_bf16(a: &[f32]) -> Vec<f32> {
    mapped(a, |v| f32::from_bits(rounded_bits(v.to_bits())))
}

/// `w` widened to f32.
pub(super) fn widened(w: &[bf16]) -> Vec<f32> {
    mapped(w, |v| f32::from_bits(widened_bits(v.to_bits())))
}

/// `c` (rows of `bias.len()` columns) with `bias` added to each row, over the pool.
pub(super) fn plus_row(mut c: Vec<f32>, bias: Option<&[f32]>) -> Vec<f32> {
    let Some(b) = bias.filter(|b| !b.is_empty()) else {
        return c;
    };
    let rows_per_task = (TASK / b.len()).max(1);
    c.par_chunks_mut(rows_per_task * b.len()).for_each(|rows| {
        for row in rows.chunks_exact_mut(b.len()) {
            for (v, b) in row.iter_mut().zip(b) {
                *v += b;
            }
        }
    });
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every f32 whose low 16 bits sit at, around and between the rounding's decision points
    /// (ties, a unit's edges), under every upper half: zeros, denormals, the largest finite
    /// values (which round to infinity), infinities and NaNs of both signs among them.
    #[test]
    fn the_copies_are_halfs_bits_for_every_upper_half() {
        let lows = [
            0x0000, 0x0001, 0x3fff, 0x7ffe, 0x7fff, 0x8000, 0x8001, 0xbfff, 0xc000, 0xfffe, 0xffff,
        ];
        let values: Vec<f32> = (0..=u32::from(u16::MAX))
            .flat_map(|high| {
                lows.iter()
                    .map(move |&low| f32::from_bits(high << 16 | low))
            })
            .collect();
        let rounded = rounded_to_bf16(&values);
        for (v, r) in values.iter().zip(&rounded) {
            assert_eq!(
                r.to_bits(),
                bf16::from_f32(*v).to_f32().to_bits(),
                "{:#010x}",
                v.to_bits()
            );
        }
        let halves: Vec<bf16> = (0..=u16::MAX).map(bf16::from_bits).collect();
        for (h, w) in halves.iter().zip(widened(&halves)) {
            assert_eq!(w.to_bits(), h.to_f32().to_bits(), "{:#06x}", h.to_bits());
        }
    }

    /// The same bits whether a copy is split over the pool or not, and a bias lands on every
    /// row, the last of a task's rows and a task's first among them.
    #[test]
    fn split_copies_and_biases_reach_every_element() {
        let values: Vec<f32> = (0..3 * TASK + 77)
            .map(|i| (i as f32 * 0.618).sin() * 1e3)
            .collect();
        let whole: Vec<u32> = values
            .iter()
            .map(|v| bf16::from_f32(*v).to_f32().to_bits())
            .collect();
        assert!(rounded_to_bf16(&values)
            .iter()
            .map(|v| v.to_bits())
            .eq(whole));
        let cols = 1000;
        let rows = values.len() / cols;
        let c = values[..rows * cols].to_vec();
        let bias: Vec<f32> = (0..cols).map(|j| j as f32 - 0.5).collect();
        let biased = plus_row(c.clone(), Some(&bias));
        for (i, (got, v)) in biased.iter().zip(&c).enumerate() {
            assert_eq!(got.to_bits(), (v + bias[i % cols]).to_bits(), "element {i}");
        }
    }
}
