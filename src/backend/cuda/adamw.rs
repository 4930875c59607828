//! Launchers of `kernels/adamw.cu`: the fused AdamW update of an f32 master weight and its
//! moments from an f32 or bf16 gradient, with the step's constants from
//! [`AdamWStep::coefficients`] (the CPU reference uses the same); one tensor per launch, or a
//! whole step's tensors in a few (`adamw_list_*`, the same bits).

use cudarc::driver::{DevicePtr, DevicePtrMut, DeviceRepr, SyncOnDrop};

use super::tensor_list::{self, ListEntry};
use super::{grid_for, launch, require_f32, unshared_mut, CudaBackend, CudaBuffer, CudaFloat};
use crate::backend::{shapes, AdamWStep, AdamWUpdate};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

const OP: &str = "adamw";

/// Field for field the `AdamWConstants` of `kernels/adamw.cu`: the step's constants other
/// than the per-tensor decay, rounded to f32.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
struct AdamWConstants {
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    step_size: f32,
    bias2_sqrt: f32,
    eps: f32,
}

// SAFETY: a plain C struct of floats, laid out as the kernel's.
unsafe impl DeviceRepr for AdamWConstants {}

/// The kernels' constants of `step`, and its decay factor `1 − lr·wd`.
fn constants(step: &AdamWStep) -> (AdamWConstants, f32) {
    let c = step.coefficients();
    let constants = AdamWConstants {
        beta1: step.beta1 as f32,
        one_minus_beta1: c.one_minus_beta1 as f32,
        beta2: step.beta2 as f32,
        one_minus_beta2: c.one_minus_beta2 as f32,
        step_size: c.step_size as f32,
        bias2_sqrt: c.bias2_sqrt as f32,
        eps: step.eps as f32,
    };
    (constants, c.decay as f32)
}

/// Refuses what [`step`] cannot update: moments and master not f32, a gradient that is not a
/// float tensor, and what [`shapes::adamw_operands`] refuses on every backend.
fn check(
    param: &Tensor<CudaBackend>,
    grad: &Tensor<CudaBackend>,
    m: &Tensor<CudaBackend>,
    v: &Tensor<CudaBackend>,
    step: &AdamWStep,
) -> Result<()> {
    for (name, t) in [("param", param), ("m", m), ("v", v)] {
        require_f32(OP, name, t)?;
    }
    shapes::adamw_operands(param, grad, m, v, step)?;
    if matches!(grad.buffer(), CudaBuffer::U32(_)) {
        return Err(Error::dtype(OP, "`grad` must be a float tensor"));
    }
    Ok(())
}

pub(super) fn step(
    b: &CudaBackend,
    param: &mut Tensor<CudaBackend>,
    grad: &Tensor<CudaBackend>,
    m: &mut Tensor<CudaBackend>,
    v: &mut Tensor<CudaBackend>,
    step: &AdamWStep,
) -> Result<()> {
    check(param, grad, m, v, step)?;
    let n = param.numel();
    let (c, decay) = constants(step);
    let p = f32::slice_mut(unshared_mut(param, OP)?).expect("checked f32");
    let ms = f32::slice_mut(unshared_mut(m, OP)?).expect("checked f32");
    let vs = f32::slice_mut(unshared_mut(v, OP)?).expect("checked f32");
    let cfg = grid_for(n);
    match grad.buffer() {
        CudaBuffer::F32(g) => launch!(
            b,
            "adamw",
            "adamw_f32",
            cfg,
            p,
            g,
            ms,
            vs,
            &(n as i64),
            &decay,
            &c
        ),
        CudaBuffer::BF16(g) => launch!(
            b,
            "adamw",
            "adamw_bf16_grad",
            cfg,
            p,
            g,
            ms,
            vs,
            &(n as i64),
            &decay,
            &c
        ),
        CudaBuffer::U32(_) => unreachable!("refused by check"),
    }
    Ok(())
}

/// Tensors that share a kernel (the gradient's dtype) and the step's constants.
struct Group {
    bf16_grad: bool,
    constants: AdamWConstants,
    entries: Vec<ListEntry>,
}

/// [`step`] of every update, in a launch per [`tensor_list::CAPACITY`] tensors that share
/// a gradient dtype and the step's constants (in a trainer's step: one or two launches).
pub(super) fn step_each(
    b: &CudaBackend,
    updates: &mut [AdamWUpdate<'_, CudaBackend>],
) -> Result<()> {
    for u in updates.iter() {
        check(u.param, u.grad, u.m, u.v, &u.step)?;
    }
    let stream = &b.device.stream;
    let mut groups: Vec<Group> = Vec::new();
    // Held until the launches are queued (no-ops while the context tracks no events).
    let mut guards: Vec<SyncOnDrop<'_>> = Vec::new();
    for u in updates.iter_mut() {
        let (bf16_grad, g) = match u.grad.buffer() {
            CudaBuffer::F32(g) => (false, g.device_ptr(stream)),
            CudaBuffer::BF16(g) => (true, g.device_ptr(stream)),
            CudaBuffer::U32(_) => unreachable!("refused by check"),
        };
        let n = u.param.numel();
        let p = f32::slice_mut(unshared_mut(u.param, OP)?).expect("checked f32");
        let m = f32::slice_mut(unshared_mut(u.m, OP)?).expect("checked f32");
        let v = f32::slice_mut(unshared_mut(u.v, OP)?).expect("checked f32");
        let ((p, gp), (m, gm), (v, gv)) = (
            p.device_ptr_mut(stream),
            m.device_ptr_mut(stream),
            v.device_ptr_mut(stream),
        );
        guards.extend([g.1, gp, gm, gv]);
        let (constants, decay) = constants(&u.step);
        let entry = ListEntry {
            operands: [p, g.0, m, v],
            n,
            scalar: decay,
        };
        match groups
            .iter_mut()
            .find(|gr| gr.bf16_grad == bf16_grad && gr.constants == constants)
        {
            Some(group) => group.entries.push(entry),
            None => groups.push(Group {
                bf16_grad,
                constants,
                entries: vec![entry],
            }),
        }
    }
    let kernel_of = |group: &Group| {
        if group.bf16_grad {
            "adamw_list_bf16_grad"
        } else {
            "adamw_list_f32"
        }
    };
    // Both kernels are found before either runs: a module that fails to load then changes
    // nothing.
    for group in &groups {
        b.function("adamw", kernel_of(group))?;
    }
    for group in &groups {
        for l in tensor_list::launches(&group.entries, 0) {
            launch!(
                b,
                "adamw",
                kernel_of(group),
                l.cfg,
                &l.list,
                &group.constants
            );
        }
    }
    drop(guards);
    Ok(())
}
