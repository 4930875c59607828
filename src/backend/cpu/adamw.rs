//! Fused AdamW on the CPU, matching `torch.optim.AdamW` operation for operation.

use super::element::Element;
use crate::backend::AdamWStep;

/// Updates `param`, `m`, `v` in place from `grad`.
pub fn step<T: Element>(param: &mut [T], grad: &[T], m: &mut [T], v: &mut [T], s: &AdamWStep) {
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
    for i in 0..param.len() {
        let g = grad[i];
        param[i] = param[i] * decay;
        m[i] = b1 * m[i] + one_b1 * g;
        v[i] = b2 * v[i] + one_b2 * g * g;
        let denom = v[i].sqrt() / bias2_sqrt + eps;
        param[i] -= step_size * m[i] / denom;
    }
}
