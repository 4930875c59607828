//! Launcher of `kernels/adamw.cu`: the fused AdamW update of an f32 master weight and its
//! moments from an f32 or bf16 gradient, with the step's constants from
//! [`AdamWStep::coefficients`] (the CPU reference uses the same).

use super::{grid_for, launch, require_f32, unshared_mut, CudaBackend, CudaBuffer, CudaFloat};
use crate::backend::{shapes, AdamWStep};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

pub(super) fn step(
    b: &CudaBackend,
    param: &mut Tensor<CudaBackend>,
    grad: &Tensor<CudaBackend>,
    m: &mut Tensor<CudaBackend>,
    v: &mut Tensor<CudaBackend>,
    step: &AdamWStep,
) -> Result<()> {
    const OP: &str = "adamw";
    for (name, t) in [("param", &*param), ("m", &*m), ("v", &*v)] {
        require_f32(OP, name, t)?;
    }
    for (name, t) in [("grad", grad), ("m", &*m), ("v", &*v)] {
        shapes::require_same_shape(OP, (name, t), ("param", param))?;
    }
    shapes::adamw(step)?;
    let n = param.numel();
    let c = step.coefficients();
    let (decay, step_size, bias2_sqrt) = (c.decay as f32, c.step_size as f32, c.bias2_sqrt as f32);
    let (b1, b2, eps) = (step.beta1 as f32, step.beta2 as f32, step.eps as f32);
    let (one_b1, one_b2) = (c.one_minus_beta1 as f32, c.one_minus_beta2 as f32);
    let p = f32::slice_mut(unshared_mut(param, OP)?).expect("checked f32");
    let ms = f32::slice_mut(unshared_mut(m, OP)?).expect("checked f32");
    let vs = f32::slice_mut(unshared_mut(v, OP)?).expect("checked f32");
    let kernel = match grad.buffer() {
        CudaBuffer::F32(_) => "adamw_f32",
        CudaBuffer::BF16(_) => "adamw_bf16_grad",
        CudaBuffer::U32(_) => return Err(Error::dtype(OP, "`grad` must be a float tensor")),
    };
    match grad.buffer() {
        CudaBuffer::F32(g) => launch!(
            b,
            "adamw",
            kernel,
            grid_for(n),
            p,
            g,
            ms,
            vs,
            &(n as i64),
            &decay,
            &b1,
            &one_b1,
            &b2,
            &one_b2,
            &step_size,
            &bias2_sqrt,
            &eps
        ),
        CudaBuffer::BF16(g) => launch!(
            b,
            "adamw",
            kernel,
            grid_for(n),
            p,
            g,
            ms,
            vs,
            &(n as i64),
            &decay,
            &b1,
            &one_b1,
            &b2,
            &one_b2,
            &step_size,
            &bias2_sqrt,
            &eps
        ),
        CudaBuffer::U32(_) => unreachable!("refused above"),
    }
    Ok(())
}
