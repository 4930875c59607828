//! Launchers of `kernels/elementwise.cu`: GELU, tanh, residual add, in-place accumulate and
//! scale, sums of squares, dropout, f32 ↔ bf16 casts.

use cudarc::driver::LaunchConfig;
use half::bf16;

use super::{
    grid_for, launch, tensor, unshared_mut, view, with_float, CudaBackend, CudaBuffer, CudaFloat,
    THREADS,
};
use crate::backend::{shapes, Dropout};
use crate::error::{Error, Result};
use crate::rng;
use crate::tensor::{DType, Tensor};

const MODULE: &str = "elementwise";

pub(super) fn unary(
    b: &CudaBackend,
    op: &'static str,
    kernel: &str,
    x: &Tensor<CudaBackend>,
) -> Result<Tensor<CudaBackend>> {
    let dtype = shapes::common_float_dtype(op, &[("x", x)])?;
    let n = x.numel();
    with_float!(dtype, op, T => {
        let mut y = b.output::<T>(n)?;
        launch!(b, MODULE, format!("{kernel}_{}", T::SUFFIX), grid_for(n), view::<T>(x), &mut y, &(n as i64));
        tensor(x.shape().clone(), y)
    })
}

pub(super) fn binary(
    b: &CudaBackend,
    op: &'static str,
    kernel: &str,
    x: &Tensor<CudaBackend>,
    y: &Tensor<CudaBackend>,
) -> Result<Tensor<CudaBackend>> {
    let dtype = shapes::common_float_dtype(op, &[("a", x), ("b", y)])?;
    shapes::require_same_shape(op, ("a", x), ("b", y))?;
    let n = x.numel();
    with_float!(dtype, op, T => {
        let mut out = b.output::<T>(n)?;
        launch!(b, MODULE, format!("{kernel}_{}", T::SUFFIX), grid_for(n), view::<T>(x), view::<T>(y), &mut out, &(n as i64));
        tensor(x.shape().clone(), out)
    })
}

pub(super) fn add_assign(
    b: &CudaBackend,
    acc: &mut Tensor<CudaBackend>,
    x: &Tensor<CudaBackend>,
) -> Result<()> {
    let dtype = shapes::common_float_dtype("add_assign", &[("acc", acc), ("x", x)])?;
    shapes::require_same_shape("add_assign", ("acc", acc), ("x", x))?;
    let n = x.numel();
    with_float!(dtype, "add_assign", T => {
        let a = T::slice_mut(unshared_mut(acc, "add_assign")?).expect("dtype checked");
        launch!(b, MODULE, format!("add_assign_{}", T::SUFFIX), grid_for(n), a, view::<T>(x), &(n as i64));
        Ok(())
    })
}

pub(super) fn scale_in_place(b: &CudaBackend, t: &mut Tensor<CudaBackend>, s: f64) -> Result<()> {
    let dtype = shapes::common_float_dtype("scale", &[("t", t)])?;
    let n = t.numel();
    with_float!(dtype, "scale", T => {
        let buf = T::slice_mut(unshared_mut(t, "scale")?).expect("dtype checked");
        launch!(b, MODULE, format!("scale_{}", T::SUFFIX), grid_for(n), buf, &(s as f32), &(n as i64));
        Ok(())
    })
}

/// Per-block partial sums in f32 (fixed tree), added on the host in f64 in block order.
pub(super) fn sum_squares(b: &CudaBackend, t: &Tensor<CudaBackend>) -> Result<f64> {
    Ok(sum_squares_each(b, &[t])?[0])
}

/// [`sum_squares`] of each tensor: every tensor's partial sums go to its own range of one
/// buffer, downloaded once, so the result is the same bits with one wait for the device.
pub(super) fn sum_squares_each(b: &CudaBackend, ts: &[&Tensor<CudaBackend>]) -> Result<Vec<f64>> {
    // Every dtype is checked, and every grid sized, before anything is launched.
    let mut launches = Vec::with_capacity(ts.len());
    let mut total = 0;
    for t in ts {
        shapes::common_float_dtype("sum_squares", &[("t", t)])?;
        let cfg = LaunchConfig {
            shared_mem_bytes: THREADS * 4,
            ..grid_for(t.numel())
        };
        let blocks = cfg.grid_dim.0 as usize;
        launches.push((cfg, total..total + blocks));
        total += blocks;
    }
    if ts.is_empty() {
        return Ok(Vec::new());
    }
    let mut partial = b.zeroed::<f32>(total)?;
    for (t, (cfg, range)) in ts.iter().zip(&launches) {
        let (n, cfg) = (t.numel(), *cfg);
        let mut out = partial.slice_mut(range.clone());
        with_float!(t.dtype(), "sum_squares", T => {
            launch!(b, MODULE, format!("sum_squares_partial_{}", T::SUFFIX), cfg, view::<T>(t), &mut out, &(n as i64));
            Ok(())
        })?;
    }
    let host = b.download("sum_squares", &partial)?;
    Ok(launches
        .into_iter()
        .map(|(_, r)| host[r].iter().map(|&v| f64::from(v)).sum())
        .collect())
}

pub(super) fn dropout(
    b: &CudaBackend,
    x: &Tensor<CudaBackend>,
    dropout: Dropout,
) -> Result<Tensor<CudaBackend>> {
    let dtype = shapes::common_float_dtype("dropout", &[("x", x)])?;
    shapes::dropout("dropout", &dropout)?;
    let n = x.numel();
    with_float!(dtype, "dropout", T => {
        let mut y = b.output::<T>(n)?;
        launch!(b, MODULE, format!("dropout_{}", T::SUFFIX), grid_for(n), view::<T>(x), &mut y, &(n as i64),
            &dropout.seed, &rng::drop_threshold(dropout.p), &((1.0 / (1.0 - dropout.p)) as f32));
        tensor(x.shape().clone(), y)
    })
}

/// `t` converted to `dtype` (f32 ↔ bf16; round to nearest even into bf16), on the device.
pub(super) fn cast(
    b: &CudaBackend,
    t: &Tensor<CudaBackend>,
    dtype: DType,
) -> Result<Tensor<CudaBackend>> {
    let n = t.numel();
    let buf = match (t.buffer(), dtype) {
        (CudaBuffer::F32(x), DType::BF16) => {
            let mut y = b.output::<bf16>(n)?;
            launch!(
                b,
                MODULE,
                "cast_f32_to_bf16",
                grid_for(n),
                x,
                &mut y,
                &(n as i64)
            );
            CudaBuffer::BF16(y)
        }
        (CudaBuffer::BF16(x), DType::F32) => {
            let mut y = b.output::<f32>(n)?;
            launch!(
                b,
                MODULE,
                "cast_bf16_to_f32",
                grid_for(n),
                x,
                &mut y,
                &(n as i64)
            );
            CudaBuffer::F32(y)
        }
        (buf, d) if crate::backend::DeviceBuffer::dtype(buf) == d => return Ok(t.clone()),
        (_, d) => {
            return Err(Error::dtype(
                "cast",
                format!("cannot cast {} to {d} on CUDA", t.dtype()),
            ))
        }
    };
    Tensor::from_buffer(t.shape().clone(), buf)
}
