//! Fused AdamW on the CPU, matching `torch.optim.AdamW` operation for operation.

use super::element::Element;
use crate::backend::AdamWStep;

/// Updates `param`, `m`, `v` in place from `grad`, over fixed blocks on the shared pool (each
/// element on its own: the same bits for any number of threads).
pub fn step<T: Element>(param: &mut [T], grad: &[T], m: &mut [T], v: &mut [T], s: &AdamWStep) {
    use rayon::prelude::*;
    /// Elements per task: a whole embedding table is tens of millions.
    const BLOCK: usize = 1 << 15;
    let c = s.coefficients();
    let decay = T::from_f64(c.decay);
    let (b1, b2) = (T::from_f64(s.beta1), T::from_f64(s.beta2));
    let (one_b1, one_b2) = (
        T::from_f64(c.one_minus_beta1),
        T::from_f64(c.one_minus_beta2),
    );
    let step_size = T::from_f64(c.step_size);
    let bias2_sqrt = T::from_f64(c.bias2_sqrt);
    let eps = T::from_f64(s.eps);
    param
        .par_chunks_mut(BLOCK)
        .zip(grad.par_chunks(BLOCK))
        .zip(m.par_chunks_mut(BLOCK))
        .zip(v.par_chunks_mut(BLOCK))
        .for_each(|(((param, grad), m), v)| {
            for (((p, &g), m), v) in param.iter_mut().zip(grad).zip(m).zip(v) {
                *p = *p * decay;
                *m = b1 * *m + one_b1 * g;
                *v = b2 * *v + one_b2 * g * g;
                let denom = v.sqrt() / bias2_sqrt + eps;
                *p -= step_size * *m / denom;
            }
        });
}
