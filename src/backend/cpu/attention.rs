//! Multi-head self-attention on the CPU: the (sequence, head) pairs run in parallel, each
//! on its own.
//!
//! Heads are column windows of the `[batch·seq, hidden]` activations, so no transpose of the
//! inputs is ever materialised; each pair's product writes its `[seq, head_dim]` result
//! straight into its window of the output (the windows tile it, so it needs no zero fill).
//! Forward keeps only the log-sum-exp of each score row; backward recomputes the
//! probabilities from it (as flash attention does), so memory per layer is O(seq), not
//! O(seq²). Every pair computes exactly what it would alone, so the result does not depend
//! on the number of threads.
//!
//! A relative position bias (MPNet's: one value per head and relative distance) is added to
//! the scaled scores; its gradient is each pair's dS summed along the diagonals, then over
//! the batch in order, so it too is the same for any number of threads.

use super::element::Element;
use super::gemm::{gemm, DisjointWindows, Layout};
use super::lanes::{max_of, sum_of3, with_avx2};
use crate::backend::shapes::AttentionDims;
use crate::backend::Dropout;

use rayon::prelude::*;

struct Head {
    /// Offset of element (0, 0) of this head in the activations.
    base: usize,
    /// First dropout counter of this head's `[seq, seq]` probabilities.
    counter: u64,
    /// First row of this sequence in the mask.
    mask_row: usize,
    /// Which head of the sequence.
    head: usize,
}

fn heads(d: &AttentionDims) -> impl Iterator<Item = Head> + '_ {
    (0..d.batch).flat_map(move |b| {
        (0..d.heads).map(move |h| Head {
            base: b * d.seq * d.hidden() + h * d.head_dim,
            counter: ((b * d.heads + h) * d.seq * d.seq) as u64,
            mask_row: b * d.seq,
            head: h,
        })
    })
}

fn window(d: &AttentionDims, head: &Head) -> Layout {
    Layout::window(head.base, d.seq, d.head_dim, d.hidden())
}

/// A `[batch·seq, hidden]` output that the pairs' products fill window by window: every
/// element is written once, by the pair whose window holds it.
struct HeadOutputs<T> {
    data: Vec<T>,
    windows: DisjointWindows<T>,
}

impl<T: Element> HeadOutputs<T> {
    fn new(d: &AttentionDims) -> Self {
        let n = d.batch * d.seq * d.hidden();
        let mut data = Vec::with_capacity(n);
        let windows = DisjointWindows::new(&mut data.spare_capacity_mut()[..n]);
        HeadOutputs { data, windows }
    }

    /// `head's window = alpha·a·b`.
    fn write(&self, d: &AttentionDims, head: &Head, alpha: T, (a, la): (&[T], Layout), b: &[T]) {
        let w = window(d, head);
        // SAFETY: `data` lives in `self`; each pair writes only its own window, and the
        // windows of distinct pairs do not overlap.
        unsafe { self.windows.product(alpha, a, la, b, w, w) }
    }

    /// The filled output, once every pair has written its window.
    fn finish(mut self) -> Vec<T> {
        // SAFETY: the windows of all `batch·heads` pairs tile the `[batch·seq, hidden]`
        // buffer, and each pair's product wrote every element of its window.
        unsafe { self.data.set_len(self.windows.len()) };
        self.data
    }
}

/// `scores = scale · q·kᵀ` for one head.
fn scores<T: Element>(d: &AttentionDims, head: &Head, q: &[T], k: &[T], scale: T, s: &mut [T]) {
    let w = window(d, head);
    gemm(
        scale,
        q,
        w,
        k,
        w.t(),
        T::ZERO,
        s,
        Layout::row_major(d.seq, d.seq),
    );
}

with_avx2! {
    /// Turns score rows into probabilities over the valid keys (0 elsewhere). Without
    /// `lse_in`, `p = e^(s − max) / Σ e^(s − max)`, one exponential per score, and the
    /// log-sum-exp `max + ln Σ` goes to `lse_out`; with it (the backward pass),
    /// `p = e^(s − lse)`, as flash attention recomputes them (equal to the forward's up to f32
    /// rounding). Padded keys' scores become −∞ first, so they lose the maximum and, in a row
    /// whose sum (or lse) is finite, their exponential is 0: no per-key test in the
    /// reductions. A row with a NaN or infinite sum gets its padded entries zeroed after, as
    /// every row's were before. The exponentials run as one pass
    /// over the whole block (each element's value does not depend on the grouping): per row,
    /// at 27 keys, the call and the padded tail cost as much as the rest. Maxima and sums go
    /// by lanes ([`super::lanes`]).
    fn probabilities<T>(
        s: &mut [T],
        valid: &[u32],
        lse_in: Option<&[T]>,
        lse_out: Option<&mut [T]>,
    ) {
        let n = valid.len();
        // No key to attend: every probability is zero, and so is the lse.
        if valid.iter().all(|&v| v == 0) {
            s.fill(T::ZERO);
            if let Some(out) = lse_out {
                out.fill(T::ZERO);
            }
            return;
        }
        let padded = valid.contains(&0);
        let set_padded = |row: &mut [T], value: T| {
            for (v, &ok) in row.iter_mut().zip(valid) {
                if ok == 0 {
                    *v = value;
                }
            }
        };
        if padded {
            let below_all = T::from_f64(f64::NEG_INFINITY);
            for row in s.chunks_exact_mut(n) {
                set_padded(row, below_all);
            }
        }
        match lse_in {
            Some(l) => {
                for (row, &lse) in s.chunks_exact_mut(n).zip(l) {
                    for v in row.iter_mut() {
                        *v -= lse;
                    }
                }
                T::exp_block(s);
                if padded {
                    for (row, &lse) in s.chunks_exact_mut(n).zip(l) {
                        if !lse.is_finite() {
                            set_padded(row, T::ZERO);
                        }
                    }
                }
            }
            None => {
                let mut maxima = Vec::with_capacity(s.len() / n);
                for row in s.chunks_exact_mut(n) {
                    let max = max_of(row).unwrap_or(T::ZERO);
                    for v in row.iter_mut() {
                        *v -= max;
                    }
                    maxima.push(max);
                }
                T::exp_block(s);
                let mut lse_out = lse_out;
                for (i, (row, max)) in s.chunks_exact_mut(n).zip(maxima).enumerate() {
                    let sum = sum_of3(row, row, row, |v, _, _| v);
                    let inverse = T::ONE / sum;
                    for v in row.iter_mut() {
                        *v = *v * inverse;
                    }
                    if padded && !sum.is_finite() {
                        set_padded(row, T::ZERO);
                    }
                    if let Some(out) = lse_out.as_deref_mut() {
                        out[i] = max + sum.ln();
                    }
                }
            }
        }
    }
}

/// Adds the head's relative position bias to its `[seq, seq]` scores: `bias` is
/// `[2·seq − 1, heads]`, row `seq − 1 + j − i` holding the value for query `i` and key `j`.
fn add_position_bias<T: Element>(d: &AttentionDims, head: &Head, bias: &[T], s: &mut [T]) {
    let n = d.seq;
    for (i, row) in s.chunks_exact_mut(n).enumerate() {
        let first = (n - 1 - i) * d.heads + head.head;
        for (v, &b) in row.iter_mut().zip(bias[first..].iter().step_by(d.heads)) {
            *v += b;
        }
    }
}

/// The gradient of the head's position bias from its score gradient `ds` `[seq, seq]`:
/// `out[seq − 1 + j − i] = Σ ds[i][j]` along each diagonal, rows in order.
fn position_bias_gradient<T: Element>(n: usize, ds: &[T], out: &mut [T]) {
    out.fill(T::ZERO);
    for (i, row) in ds.chunks_exact(n).enumerate() {
        for (o, &g) in out[n - 1 - i..].iter_mut().zip(row) {
            *o += g;
        }
    }
}

/// Multiplies by the dropout mask scaled by `1/(1−p)`, in place.
fn apply_dropout<T: Element>(m: &mut [T], counter: u64, dropout: &Dropout) {
    super::dropout::apply_in_place(m, counter, dropout)
}

/// Returns the context `[batch·seq, hidden]` and the log-sum-exp `[batch, heads, seq]`;
/// `position_bias` (`[2·seq − 1, heads]`) is added to the scaled scores where given.
#[allow(clippy::too_many_arguments)]
pub fn forward<T: Element>(
    d: AttentionDims,
    q: &[T],
    k: &[T],
    v: &[T],
    mask: &[u32],
    position_bias: Option<&[T]>,
    scale: T,
    dropout: Option<&Dropout>,
) -> (Vec<T>, Vec<T>) {
    let all: Vec<Head> = heads(&d).collect();
    let out = HeadOutputs::new(&d);
    // One row of log-sum-exps per pair, in the pairs' order.
    let mut lse = vec![T::ZERO; d.batch * d.heads * d.seq];
    lse.par_chunks_mut(d.seq.max(1))
        .zip(all.par_iter())
        .for_each_init(
            || vec![T::ZERO; d.seq * d.seq],
            |p, (lse, head)| {
                scores(&d, head, q, k, scale, p);
                if let Some(bias) = position_bias {
                    add_position_bias(&d, head, bias, p);
                }
                let valid = &mask[head.mask_row..head.mask_row + d.seq];
                probabilities(p, valid, None, Some(lse));
                if let Some(dr) = dropout {
                    apply_dropout(p, head.counter, dr);
                }
                out.write(&d, head, T::ONE, (p, Layout::row_major(d.seq, d.seq)), v);
            },
        );
    (out.finish(), lse)
}

/// Scratch of one backward task: probabilities, dropped probabilities, their gradient, and
/// the dropout mask (drawn once, used on both).
struct BackwardScratch<T> {
    p: Vec<T>,
    p_dropped: Vec<T>,
    dp: Vec<T>,
    keep: Vec<T>,
}

/// Requested gradients of [`forward`]: `dq`, `dk`, `dv`, and the position bias's
/// `[2·seq − 1, heads]` where `want_bias` (a bias must then be given).
pub struct Gradients<T> {
    pub dq: Option<Vec<T>>,
    pub dk: Option<Vec<T>>,
    pub dv: Option<Vec<T>>,
    pub d_position_bias: Option<Vec<T>>,
}

/// Requested gradients of [`forward`]; `want` is `(dq, dk, dv, position bias)`.
#[allow(clippy::too_many_arguments)]
pub fn backward<T: Element>(
    d: AttentionDims,
    d_out: &[T],
    q: &[T],
    k: &[T],
    v: Option<&[T]>,
    lse: &[T],
    mask: &[u32],
    position_bias: Option<&[T]>,
    scale: T,
    dropout: Option<&Dropout>,
    (want_dq, want_dk, want_dv, want_bias): (bool, bool, bool, bool),
) -> Gradients<T> {
    let want_bias = want_bias && position_bias.is_some();
    // Empty sequences: every gradient is empty (the row loops below take rows of `seq`).
    if d.seq == 0 || d.batch == 0 {
        let empty = |want: bool| want.then(Vec::new);
        return Gradients {
            dq: empty(want_dq),
            dk: empty(want_dk),
            dv: empty(want_dv),
            d_position_bias: empty(want_bias),
        };
    }
    let tt = Layout::row_major(d.seq, d.seq);
    let all: Vec<Head> = heads(&d).collect();
    let dq = want_dq.then(|| HeadOutputs::new(&d));
    let dk = want_dk.then(|| HeadOutputs::new(&d));
    let dv = want_dv.then(|| HeadOutputs::new(&d));
    let diagonals = crate::backend::shapes::position_bias_rows(d.seq);
    // Each pair's bias gradient, in the pairs' order, summed over the batch after.
    let bias_parts: Vec<Option<Vec<T>>> = all
        .par_iter()
        .enumerate()
        .map_init(
            || BackwardScratch {
                p: vec![T::ZERO; d.seq * d.seq],
                p_dropped: vec![T::ZERO; d.seq * d.seq],
                dp: vec![T::ZERO; d.seq * d.seq],
                keep: Vec::new(),
            },
            |scratch, (idx, head)| {
                let BackwardScratch {
                    p,
                    p_dropped,
                    dp,
                    keep,
                } = scratch;
                let w = window(&d, head);
                scores(&d, head, q, k, scale, p);
                if let Some(bias) = position_bias {
                    add_position_bias(&d, head, bias, p);
                }
                let valid = &mask[head.mask_row..head.mask_row + d.seq];
                probabilities(p, valid, Some(&lse[idx * d.seq..(idx + 1) * d.seq]), None);
                // The mask scaled by 1/(1−p): `x·keep` has the bits of the mask applied to x.
                if let Some(dr) = dropout {
                    keep.clear();
                    keep.resize(d.seq * d.seq, T::ONE);
                    apply_dropout(keep, head.counter, dr);
                }
                if let Some(dv) = &dv {
                    let pd: &[T] = match dropout {
                        Some(_) => {
                            for ((o, &pv), &m) in
                                p_dropped.iter_mut().zip(p.iter()).zip(keep.iter())
                            {
                                *o = pv * m;
                            }
                            p_dropped
                        }
                        None => p,
                    };
                    dv.write(&d, head, T::ONE, (pd, tt.t()), d_out);
                }
                if !(want_dq || want_dk || want_bias) {
                    return None;
                }
                // dP = (dO·Vᵀ) ∘ dropout mask; dS = P ∘ (dP − rowsum(dP ∘ P)).
                let v = v.expect(
                    "v is given whenever dq, dk or the bias is asked for (checked by the caller)",
                );
                gemm(T::ONE, d_out, w, v, w.t(), T::ZERO, dp, tt);
                if dropout.is_some() {
                    for (g, &m) in dp.iter_mut().zip(keep.iter()) {
                        *g = *g * m;
                    }
                }
                for (prow, dprow) in p.chunks_exact(d.seq).zip(dp.chunks_exact_mut(d.seq)) {
                    // By lanes, not one chain of dependent adds.
                    let dot = sum_of3(prow, dprow, prow, |pv, g, _| pv * g);
                    for (g, &pv) in dprow.iter_mut().zip(prow.iter()) {
                        *g = pv * (*g - dot);
                    }
                }
                if let Some(dq) = &dq {
                    dq.write(&d, head, scale, (dp, tt), k);
                }
                if let Some(dk) = &dk {
                    dk.write(&d, head, scale, (dp, tt.t()), q);
                }
                want_bias.then(|| {
                    let mut part = vec![T::ZERO; diagonals];
                    position_bias_gradient(d.seq, dp, &mut part);
                    part
                })
            },
        )
        .collect();
    let d_position_bias = want_bias.then(|| {
        // Pair (b, h) holds head h of sequence b: out[t][h] = Σ_b part[b][h][t].
        let mut out = vec![T::ZERO; diagonals * d.heads];
        for (pair, part) in bias_parts.iter().enumerate() {
            let h = pair % d.heads.max(1);
            for (t, &g) in part.iter().flatten().enumerate() {
                out[t * d.heads + h] += g;
            }
        }
        out
    });
    Gradients {
        dq: dq.map(HeadOutputs::finish),
        dk: dk.map(HeadOutputs::finish),
        dv: dv.map(HeadOutputs::finish),
        d_position_bias,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Softmax over the valid keys, 0 at padded ones, in f64.
    fn reference(row: &[f64], valid: &[u32]) -> Vec<f64> {
        let max = row
            .iter()
            .zip(valid)
            .filter(|(_, &ok)| ok != 0)
            .map(|(&v, _)| v)
            .fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = row
            .iter()
            .zip(valid)
            .map(|(&v, &ok)| if ok != 0 { (v - max).exp() } else { 0.0 })
            .collect();
        let sum: f64 = e.iter().sum();
        e.iter().map(|v| v / sum).collect()
    }

    #[test]
    fn padded_keys_get_zero_and_rows_sum_to_one() {
        let valid = [1, 0, 1, 1, 0, 1, 1, 1, 1, 0, 1];
        let n = valid.len();
        let s: Vec<f64> = (0..3 * n)
            .map(|i| ((i * 37) % 23) as f64 * 0.4 - 4.0)
            .collect();
        let mut p = s.clone();
        let mut lse = vec![0.0; 3];
        probabilities(&mut p, &valid, None, Some(&mut lse));
        for (r, (row, got)) in s.chunks(n).zip(p.chunks(n)).enumerate() {
            for (j, (&g, want)) in got.iter().zip(reference(row, &valid)).enumerate() {
                assert!(
                    (g - want).abs() < 1e-15,
                    "row {r} key {j}: {g} against {want}"
                );
            }
        }
        // The backward's recomputation from the lse gives the same probabilities.
        let mut again = s.clone();
        probabilities(&mut again, &valid, Some(&lse), None);
        for (a, b) in again.iter().zip(&p) {
            assert!((a - b).abs() < 1e-15, "{a} against {b}");
        }
    }

    #[test]
    fn padded_keys_stay_zero_in_rows_with_nan_or_infinite_scores() {
        let valid = [1, 1, 0];
        for row in [
            [1.0, f64::NAN, 5.0],
            [f64::INFINITY, 1.0, 2.0],
            [f64::NEG_INFINITY, f64::NEG_INFINITY, 3.0],
        ] {
            let mut p = row.to_vec();
            let mut lse = [0.0];
            probabilities(&mut p, &valid, None, Some(&mut lse));
            assert_eq!(p[2], 0.0, "forward, row {row:?}: {p:?}");
            let mut again = row.to_vec();
            probabilities(&mut again, &valid, Some(&lse), None);
            assert_eq!(again[2], 0.0, "backward, row {row:?}: {again:?}");
        }
        // No valid key at all: every probability and the lse are zero.
        let mut p = vec![1.0, 2.0];
        let mut lse = [7.0];
        probabilities(&mut p, &[0, 0], None, Some(&mut lse));
        assert_eq!((p, lse[0]), (vec![0.0, 0.0], 0.0));
    }
}
