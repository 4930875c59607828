//! Launchers of `kernels/loss.cu`: mean softmax cross-entropy, binary cross-entropy with
//! logits and mean squared error, each loss a one-block fixed-order reduction into an f32
//! scalar.

use super::{
    block_reduce, grid_for, ids, kernel_int, launch, tensor, view, with_float, CudaBackend,
    CudaFloat, THREADS,
};
use crate::backend::{shapes, Backend};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

const MODULE: &str = "loss";

fn check_cross_entropy(
    b: &CudaBackend,
    op: &'static str,
    logits: &Tensor<CudaBackend>,
    labels: &Tensor<CudaBackend>,
) -> Result<(DType, i32, i32)> {
    let (dtype, rows, classes) = shapes::cross_entropy(op, logits, labels)?;
    let (rows_i, classes_i) = (
        kernel_int(op, "rows", rows)?,
        kernel_int(op, "classes", classes)?,
    );
    shapes::check_indices(op, "label", &b.to_u32(labels)?, classes)?;
    Ok((dtype, rows_i, classes_i))
}

/// The one-element upstream gradient of a loss, as f32 on the device: converted there, not
/// read back, for a download would wait for the whole forward pass.
fn scalar_f32(
    b: &CudaBackend,
    op: &'static str,
    d_loss: &Tensor<CudaBackend>,
) -> Result<Tensor<CudaBackend>> {
    if d_loss.numel() != 1 {
        return Err(Error::shape(
            op,
            format!(
                "`d_loss` must hold one element, got shape {}",
                d_loss.shape()
            ),
        ));
    }
    match d_loss.dtype() {
        DType::F32 => Ok(d_loss.clone()),
        DType::BF16 => super::elementwise::cast(b, d_loss, DType::F32),
        other => Err(Error::dtype(
            op,
            format!("`d_loss` must be f32 or bf16, got {other}"),
        )),
    }
}

pub(super) fn cross_entropy_forward(
    b: &CudaBackend,
    logits: &Tensor<CudaBackend>,
    labels: &Tensor<CudaBackend>,
) -> Result<Tensor<CudaBackend>> {
    let (dtype, rows, classes) = check_cross_entropy(b, "cross_entropy", logits, labels)?;
    with_float!(dtype, "cross_entropy", T => {
        let mut loss = b.output::<f32>(1)?;
        launch!(b, MODULE, format!("cross_entropy_forward_{}", T::SUFFIX), block_reduce(1, THREADS), view::<T>(logits), ids(labels), &mut loss, &rows, &classes);
        tensor([1], loss)
    })
}

pub(super) fn cross_entropy_backward(
    b: &CudaBackend,
    d_loss: &Tensor<CudaBackend>,
    logits: &Tensor<CudaBackend>,
    labels: &Tensor<CudaBackend>,
) -> Result<Tensor<CudaBackend>> {
    const OP: &str = "cross_entropy backward";
    let (dtype, rows, classes) = check_cross_entropy(b, OP, logits, labels)?;
    let d_f32 = scalar_f32(b, OP, d_loss)?;
    let d = view::<f32>(&d_f32);
    with_float!(dtype, OP, T => {
        let size = logits.numel();
        let mut out = b.output::<T>(size)?;
        launch!(b, MODULE, format!("cross_entropy_backward_{}", T::SUFFIX), grid_for(size), d, view::<T>(logits), ids(labels), &mut out, &rows, &classes);
        tensor(logits.shape().clone(), out)
    })
}

pub(super) fn bce_with_logits_forward(
    b: &CudaBackend,
    logits: &Tensor<CudaBackend>,
    targets: &Tensor<CudaBackend>,
) -> Result<Tensor<CudaBackend>> {
    const OP: &str = "bce_with_logits";
    let dtype = shapes::bce_with_logits(OP, logits, targets)?;
    let n = kernel_int(OP, "values", logits.numel())?;
    with_float!(dtype, OP, T => {
        let mut loss = b.output::<f32>(1)?;
        launch!(b, MODULE, format!("bce_with_logits_forward_{}", T::SUFFIX), block_reduce(1, THREADS), view::<T>(logits), view::<T>(targets), &mut loss, &n);
        tensor([1], loss)
    })
}

pub(super) fn bce_with_logits_backward(
    b: &CudaBackend,
    d_loss: &Tensor<CudaBackend>,
    logits: &Tensor<CudaBackend>,
    targets: &Tensor<CudaBackend>,
) -> Result<Tensor<CudaBackend>> {
    const OP: &str = "bce_with_logits backward";
    let dtype = shapes::bce_with_logits(OP, logits, targets)?;
    let d_f32 = scalar_f32(b, OP, d_loss)?;
    let d = view::<f32>(&d_f32);
    let n = logits.numel();
    let n_i = kernel_int(OP, "values", n)?;
    with_float!(dtype, OP, T => {
        let mut out = b.output::<T>(n)?;
        launch!(b, MODULE, format!("bce_with_logits_backward_{}", T::SUFFIX), grid_for(n), d, view::<T>(logits), view::<T>(targets), &mut out, &n_i);
        tensor(logits.shape().clone(), out)
    })
}

pub(super) fn mse_forward(
    b: &CudaBackend,
    pred: &Tensor<CudaBackend>,
    target: &Tensor<CudaBackend>,
) -> Result<Tensor<CudaBackend>> {
    let dtype = shapes::mse("mse", pred, target)?;
    let n = kernel_int("mse", "values", pred.numel())?;
    with_float!(dtype, "mse", T => {
        let mut loss = b.output::<f32>(1)?;
        launch!(b, MODULE, format!("mse_forward_{}", T::SUFFIX), block_reduce(1, THREADS), view::<T>(pred), view::<T>(target), &mut loss, &n);
        tensor([1], loss)
    })
}

pub(super) fn mse_backward(
    b: &CudaBackend,
    d_loss: &Tensor<CudaBackend>,
    pred: &Tensor<CudaBackend>,
    target: &Tensor<CudaBackend>,
) -> Result<Tensor<CudaBackend>> {
    const OP: &str = "mse backward";
    let dtype = shapes::mse(OP, pred, target)?;
    let d_f32 = scalar_f32(b, OP, d_loss)?;
    let d = view::<f32>(&d_f32);
    let n = pred.numel();
    let n_i = kernel_int(OP, "values", n)?;
    with_float!(dtype, OP, T => {
        let mut out = b.output::<T>(n)?;
        launch!(b, MODULE, format!("mse_backward_{}", T::SUFFIX), grid_for(n), d, view::<T>(pred), view::<T>(target), &mut out, &n_i);
        tensor(pred.shape().clone(), out)
    })
}
