//! Row gather and its scatter-add backward on the CPU.

use super::element::Element;

/// `out[i] = table[ids[i]]`; ids are validated by the caller.
pub fn forward<T: Element>(table: &[T], ids: &[u32], dim: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(ids.len() * dim);
    for &id in ids {
        let row = id as usize * dim;
        out.extend_from_slice(&table[row..row + dim]);
    }
    out
}

/// `d_table[ids[i]] += d_out[i]`, in order of `i` so repeated ids sum deterministically.
pub fn backward<T: Element>(d_out: &[T], ids: &[u32], vocab: usize, dim: usize) -> Vec<T> {
    let mut d_table = vec![T::ZERO; vocab * dim];
    for (&id, g) in ids.iter().zip(d_out.chunks_exact(dim)) {
        let row = id as usize * dim;
        for (acc, &v) in d_table[row..row + dim].iter_mut().zip(g) {
            *acc += v;
        }
    }
    d_table
}
