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
//!
//! DeBERTa's disentangled terms are added likewise: each pair multiplies its queries (and
//! keys) by its head's columns of the relative rows, `[seq, rows]`, and each score reads the
//! product at its distance's row. Backward scatters dS back onto those rows (a fixed order
//! per pair) and multiplies out; the relative rows' gradients are summed over the batch in
//! order after.

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

    /// `head's window += alpha·a·b`, once [`HeadOutputs::write`] has written it; `b`'s
    /// layout is its own (relative rows, not activations).
    fn add(
        &self,
        d: &AttentionDims,
        head: &Head,
        alpha: T,
        (a, la): (&[T], Layout),
        (b, lb): (&[T], Layout),
    ) {
        let w = window(d, head);
        // SAFETY: as in `write`; the window was written by this pair before.
        unsafe { self.windows.accumulate(alpha, a, la, b, lb, w) }
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

/// What the scores add to `scale·q·kᵀ`.
#[derive(Clone, Copy)]
pub enum ScoreBias<'a, T> {
    /// Nothing.
    None,
    /// MPNet's relative position bias `[2·seq − 1, heads]`.
    Position(&'a [T]),
    /// DeBERTa's disentangled terms.
    Relative(RelativeSlices<'a, T>),
}

impl<'a, T> ScoreBias<'a, T> {
    fn position(&self) -> Option<&'a [T]> {
        match *self {
            ScoreBias::Position(b) => Some(b),
            _ => None,
        }
    }

    fn relative(&self) -> Option<&RelativeSlices<'a, T>> {
        match self {
            ScoreBias::Relative(r) => Some(r),
            _ => None,
        }
    }
}

impl<T: Element> ScoreBias<'_, T> {
    /// Adds the bias to head `head`'s scaled `[seq, seq]` scores `s`; `products` is scratch
    /// for DeBERTa's terms.
    #[allow(clippy::too_many_arguments)]
    fn add_to(
        &self,
        d: &AttentionDims,
        head: &Head,
        (q, k): (&[T], &[T]),
        scale: T,
        s: &mut [T],
        products: &mut Vec<T>,
    ) {
        match self {
            ScoreBias::None => {}
            ScoreBias::Position(b) => add_position_bias(d, head, b, s),
            ScoreBias::Relative(r) => add_relative_terms(d, head, q, k, r, scale, s, products),
        }
    }
}

/// DeBERTa's relative rows under the key map (`key`) and the query map (`query`), each
/// `[rows, hidden]` where given, and the row `index[i·seq + j]` that query `i` and key `j`
/// read (below `rows`, checked by the caller).
#[derive(Clone, Copy)]
pub struct RelativeSlices<'a, T> {
    pub key: Option<&'a [T]>,
    pub query: Option<&'a [T]>,
    pub rows: usize,
    pub index: &'a [u32],
}

/// `out = a_h · terms_hᵀ` `[seq, rows]`: the head's window of `a` (queries or keys) against
/// its columns of the relative rows `terms` `[rows, hidden]`.
fn relative_products<T: Element>(
    d: &AttentionDims,
    head: &Head,
    a: &[T],
    terms: &[T],
    rows: usize,
    out: &mut [T],
) {
    let columns = Layout::window(head.head * d.head_dim, rows, d.head_dim, d.hidden());
    gemm(
        T::ONE,
        a,
        window(d, head),
        terms,
        columns.t(),
        T::ZERO,
        out,
        Layout::row_major(d.seq, rows),
    );
}

/// Adds DeBERTa's terms to the head's `[seq, seq]` scores: `scale·(q_i·kr_r + k_j·qr_r)`
/// with `r` the row of `(i, j)`.
#[allow(clippy::too_many_arguments)]
fn add_relative_terms<T: Element>(
    d: &AttentionDims,
    head: &Head,
    q: &[T],
    k: &[T],
    r: &RelativeSlices<'_, T>,
    scale: T,
    s: &mut [T],
    products: &mut Vec<T>,
) {
    let (n, rows) = (d.seq, r.rows);
    products.resize(n * rows, T::ZERO);
    if let Some(kr) = r.key {
        relative_products(d, head, q, kr, rows, products);
        for (i, (row, index)) in s
            .chunks_exact_mut(n)
            .zip(r.index.chunks_exact(n))
            .enumerate()
        {
            let at = &products[i * rows..(i + 1) * rows];
            for (v, &x) in row.iter_mut().zip(index) {
                *v += scale * at[x as usize];
            }
        }
    }
    if let Some(qr) = r.query {
        relative_products(d, head, k, qr, rows, products);
        for (row, index) in s.chunks_exact_mut(n).zip(r.index.chunks_exact(n)) {
            for (j, (v, &x)) in row.iter_mut().zip(index).enumerate() {
                *v += scale * products[j * rows + x as usize];
            }
        }
    }
}

/// dS `[seq, seq]` gathered onto the relative rows: `out[a·rows + r]` sums `ds[i][j]` over
/// the pairs of row `r` whose query (`by_query`) or key is `a`, in row order.
fn scatter_to_rows<T: Element>(
    ds: &[T],
    index: &[u32],
    n: usize,
    rows: usize,
    by_query: bool,
    out: &mut Vec<T>,
) {
    out.clear();
    out.resize(n * rows, T::ZERO);
    for (i, (g_row, index)) in ds.chunks_exact(n).zip(index.chunks_exact(n)).enumerate() {
        for (j, (&g, &x)) in g_row.iter().zip(index).enumerate() {
            let a = if by_query { i } else { j };
            out[a * rows + x as usize] += g;
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
/// `bias` is added to the scaled scores.
#[allow(clippy::too_many_arguments)]
pub fn forward<T: Element>(
    d: AttentionDims,
    q: &[T],
    k: &[T],
    v: &[T],
    mask: &[u32],
    bias: ScoreBias<'_, T>,
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
            || (vec![T::ZERO; d.seq * d.seq], Vec::new()),
            |(p, products), (lse, head)| {
                scores(&d, head, q, k, scale, p);
                bias.add_to(&d, head, (q, k), scale, p, products);
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
    /// dS gathered onto DeBERTa's relative rows.
    on_rows: Vec<T>,
}

/// Requested gradients of [`forward`]: `dq`, `dk`, `dv`, and the bias's where `want_bias`:
/// the position bias's `[2·seq − 1, heads]`, or the relative rows' `[rows, hidden]` of each
/// term given.
pub struct Gradients<T> {
    pub dq: Option<Vec<T>>,
    pub dk: Option<Vec<T>>,
    pub dv: Option<Vec<T>>,
    pub d_position_bias: Option<Vec<T>>,
    pub d_key_terms: Option<Vec<T>>,
    pub d_query_terms: Option<Vec<T>>,
}

/// One pair's share of the bias's gradient, summed over the batch after.
struct PairParts<T> {
    position: Option<Vec<T>>,
    key_terms: Option<Vec<T>>,
    query_terms: Option<Vec<T>>,
}

/// Requested gradients of [`forward`]; `want` is `(dq, dk, dv, bias)`.
#[allow(clippy::too_many_arguments)]
pub fn backward<T: Element>(
    d: AttentionDims,
    d_out: &[T],
    q: &[T],
    k: &[T],
    v: Option<&[T]>,
    lse: &[T],
    mask: &[u32],
    bias: ScoreBias<'_, T>,
    scale: T,
    dropout: Option<&Dropout>,
    (want_dq, want_dk, want_dv, want_bias): (bool, bool, bool, bool),
) -> Gradients<T> {
    let position_bias = bias.position();
    let relative = bias.relative();
    let want_terms = want_bias && relative.is_some();
    let want_bias = want_bias && position_bias.is_some();
    let (hidden, rows) = (d.hidden(), relative.map_or(0, |r| r.rows));
    // Empty sequences: every gradient is empty, or zero for the relative rows (the row loops
    // below take rows of `seq`).
    if d.seq == 0 || d.batch == 0 {
        let empty = |want: bool| want.then(Vec::new);
        let zeros = |given: bool| (want_terms && given).then(|| vec![T::ZERO; rows * hidden]);
        return Gradients {
            dq: empty(want_dq),
            dk: empty(want_dk),
            dv: empty(want_dv),
            d_position_bias: empty(want_bias),
            d_key_terms: zeros(relative.is_some_and(|r| r.key.is_some())),
            d_query_terms: zeros(relative.is_some_and(|r| r.query.is_some())),
        };
    }
    let tt = Layout::row_major(d.seq, d.seq);
    let all: Vec<Head> = heads(&d).collect();
    let dq = want_dq.then(|| HeadOutputs::new(&d));
    let dk = want_dk.then(|| HeadOutputs::new(&d));
    let dv = want_dv.then(|| HeadOutputs::new(&d));
    let diagonals = crate::backend::shapes::position_bias_rows(d.seq);
    // Each pair's bias gradient, in the pairs' order, summed over the batch after.
    let bias_parts: Vec<Option<PairParts<T>>> = all
        .par_iter()
        .enumerate()
        .map_init(
            || BackwardScratch {
                p: vec![T::ZERO; d.seq * d.seq],
                p_dropped: vec![T::ZERO; d.seq * d.seq],
                dp: vec![T::ZERO; d.seq * d.seq],
                keep: Vec::new(),
                on_rows: Vec::new(),
            },
            |scratch, (idx, head)| {
                let BackwardScratch {
                    p,
                    p_dropped,
                    dp,
                    keep,
                    on_rows,
                } = scratch;
                let w = window(&d, head);
                scores(&d, head, q, k, scale, p);
                // `on_rows` is free until dS exists.
                bias.add_to(&d, head, (q, k), scale, p, on_rows);
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
                if !(want_dq || want_dk || want_bias || want_terms) {
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
                let mut parts = PairParts {
                    position: want_bias.then(|| {
                        let mut part = vec![T::ZERO; diagonals];
                        position_bias_gradient(d.seq, dp, &mut part);
                        part
                    }),
                    key_terms: None,
                    query_terms: None,
                };
                if let Some(r) = relative {
                    let n = d.seq;
                    let columns =
                        Layout::window(head.head * d.head_dim, r.rows, d.head_dim, hidden);
                    let on = Layout::row_major(n, r.rows);
                    // Query i's score for key j read row r of q_i·kr: dq_i += scale·dS·kr,
                    // dkr_r += scale·dSᵀ·q_i (and the same with keys and qr).
                    for (given, by_query, out, other, part) in [
                        (r.key, true, &dq, q, &mut parts.key_terms),
                        (r.query, false, &dk, k, &mut parts.query_terms),
                    ] {
                        let Some(terms) = given else { continue };
                        if out.is_none() && !want_terms {
                            continue;
                        }
                        scatter_to_rows(dp, r.index, n, r.rows, by_query, on_rows);
                        if let Some(out) = out {
                            out.add(&d, head, scale, (on_rows, on), (terms, columns));
                        }
                        if want_terms {
                            let mut g = vec![T::ZERO; r.rows * d.head_dim];
                            gemm(
                                scale,
                                on_rows,
                                on.t(),
                                other,
                                w,
                                T::ZERO,
                                &mut g,
                                Layout::row_major(r.rows, d.head_dim),
                            );
                            *part = Some(g);
                        }
                    }
                }
                Some(parts)
            },
        )
        .collect();
    let d_position_bias = want_bias.then(|| {
        // Pair (b, h) holds head h of sequence b: out[t][h] = Σ_b part[b][h][t].
        let mut out = vec![T::ZERO; diagonals * d.heads];
        for (pair, parts) in bias_parts.iter().enumerate() {
            let h = pair % d.heads.max(1);
            let part = parts.as_ref().and_then(|p| p.position.as_ref());
            for (t, &g) in part.into_iter().flatten().enumerate() {
                out[t * d.heads + h] += g;
            }
        }
        out
    });
    // Pair (b, h) holds head h's columns: out[r][h·dh + c] = Σ_b part[b][h][r][c].
    let terms_gradient = |given: bool, pick: fn(&PairParts<T>) -> Option<&Vec<T>>| {
        (want_terms && given).then(|| {
            let mut out = vec![T::ZERO; rows * hidden];
            for (pair, parts) in bias_parts.iter().enumerate() {
                let h = pair % d.heads.max(1);
                let Some(part) = parts.as_ref().and_then(pick) else {
                    continue;
                };
                for (out_row, part_row) in out
                    .chunks_exact_mut(hidden)
                    .zip(part.chunks_exact(d.head_dim))
                {
                    for (o, &g) in out_row[h * d.head_dim..(h + 1) * d.head_dim]
                        .iter_mut()
                        .zip(part_row)
                    {
                        *o += g;
                    }
                }
            }
            out
        })
    };
    let d_key_terms = terms_gradient(relative.is_some_and(|r| r.key.is_some()), |p| {
        p.key_terms.as_ref()
    });
    let d_query_terms = terms_gradient(relative.is_some_and(|r| r.query.is_some()), |p| {
        p.query_terms.as_ref()
    });
    Gradients {
        dq: dq.map(HeadOutputs::finish),
        dk: dk.map(HeadOutputs::finish),
        dv: dv.map(HeadOutputs::finish),
        d_position_bias,
        d_key_terms,
        d_query_terms,
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
