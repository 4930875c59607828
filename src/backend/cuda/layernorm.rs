//! Launchers of `kernels/layernorm.cu`: forward (y, mean, rstd per row), the forward's y again
//! from them (apply, or stored rounded for the linear maps' products), and backward (dx per row; dγ, dβ as fixed-order column reductions).

use cudarc::driver::LaunchConfig;

use half::bf16;

use super::{
    gemm, grid_for, kernel_int, launch, require_f32, tensor, view, with_float, CudaBackend,
    CudaFloat,
};
use crate::backend::{shapes, LayerNormGradRequest, LayerNormGrads, LayerNormOutput};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

const MODULE: &str = "layernorm";

/// Rows a block of the forward and dx kernels, one warp each (`LN_ROWS` in the kernel file).
const ROWS_PER_BLOCK: u32 = 8;

/// The forward's and dx's launch: a warp per row, no shared memory.
fn warp_per_row(rows: i32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((rows as u32).div_ceil(ROWS_PER_BLOCK), 1, 1),
        block_dim: (32 * ROWS_PER_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

pub(super) fn forward(
    b: &CudaBackend,
    x: &Tensor<CudaBackend>,
    gamma: &Tensor<CudaBackend>,
    beta: &Tensor<CudaBackend>,
    eps: f64,
) -> Result<LayerNormOutput<CudaBackend>> {
    const OP: &str = "layernorm";
    let (dtype, rows, n) = shapes::layernorm(x, gamma, beta, eps)?;
    let (rows_i, n_i) = (
        kernel_int(OP, "rows", rows)?,
        kernel_int(OP, "a row length", n)?,
    );
    with_float!(dtype, OP, T => {
        let mut y = b.output::<T>(rows * n)?;
        let mut mean = b.output::<f32>(rows)?;
        let mut rstd = b.output::<f32>(rows)?;
        launch!(b, MODULE, format!("layernorm_forward_{}", T::SUFFIX), warp_per_row(rows_i),
            view::<T>(x), view::<T>(gamma), view::<T>(beta), &mut y, &mut mean, &mut rstd, &rows_i, &n_i, &(eps as f32));
        Ok(LayerNormOutput { y: tensor(x.shape().clone(), y)?, mean: tensor([rows], mean)?, rstd: tensor([rows], rstd)? })
    })
}

pub(super) fn apply(
    b: &CudaBackend,
    x: &Tensor<CudaBackend>,
    mean: &Tensor<CudaBackend>,
    rstd: &Tensor<CudaBackend>,
    gamma: &Tensor<CudaBackend>,
    beta: &Tensor<CudaBackend>,
) -> Result<Tensor<CudaBackend>> {
    apply_stored(b, [x, mean, rstd, gamma, beta], false)
}

/// [`apply`]'s `y` stored rounded to bf16 where [`gemm::rounded_for_products`] would round
/// it (one kernel, no f32 `y` between: the cast's bits), else `y` itself.
pub(super) fn apply_for_products(
    b: &CudaBackend,
    x: &Tensor<CudaBackend>,
    mean: &Tensor<CudaBackend>,
    rstd: &Tensor<CudaBackend>,
    gamma: &Tensor<CudaBackend>,
    beta: &Tensor<CudaBackend>,
) -> Result<Tensor<CudaBackend>> {
    let rounded = gemm::rounds_for_products(b, x);
    apply_stored(b, [x, mean, rstd, gamma, beta], rounded)
}

/// [`apply`] into `x`'s dtype, or with `rounded` (where `x` is f32, hence γ and β: the
/// shapes' common dtype) into bf16.
fn apply_stored(
    b: &CudaBackend,
    [x, mean, rstd, gamma, beta]: [&Tensor<CudaBackend>; 5],
    rounded: bool,
) -> Result<Tensor<CudaBackend>> {
    const OP: &str = "layernorm apply";
    let (dtype, rows, n) = shapes::layernorm_apply(x, mean, rstd, gamma, beta)?;
    require_f32(OP, "mean", mean)?;
    require_f32(OP, "rstd", rstd)?;
    let n_i = kernel_int(OP, "a row length", n)?;
    let total = rows * n;
    if rounded {
        let mut y = b.output::<bf16>(total)?;
        launch!(
            b,
            MODULE,
            "layernorm_apply_for_products_f32",
            grid_for(total),
            view::<f32>(x),
            view::<f32>(mean),
            view::<f32>(rstd),
            view::<f32>(gamma),
            view::<f32>(beta),
            &mut y,
            &(total as i64),
            &n_i
        );
        return tensor(x.shape().clone(), y);
    }
    with_float!(dtype, OP, T => {
        let mut y = b.output::<T>(total)?;
        launch!(b, MODULE, format!("layernorm_apply_{}", T::SUFFIX), grid_for(total),
            view::<T>(x), view::<f32>(mean), view::<f32>(rstd), view::<T>(gamma), view::<T>(beta), &mut y, &(total as i64), &n_i);
        tensor(x.shape().clone(), y)
    })
}

pub(super) fn backward(
    b: &CudaBackend,
    dy: &Tensor<CudaBackend>,
    x: Option<&Tensor<CudaBackend>>,
    mean: Option<&Tensor<CudaBackend>>,
    rstd: Option<&Tensor<CudaBackend>>,
    gamma: Option<&Tensor<CudaBackend>>,
    want: LayerNormGradRequest,
) -> Result<LayerNormGrads<CudaBackend>> {
    const OP: &str = "layernorm backward";
    let (rows, n) = shapes::layernorm_backward(dy, x, mean, rstd, gamma)?;
    let (rows_i, n_i) = (
        kernel_int(OP, "rows", rows)?,
        kernel_int(OP, "a row length", n)?,
    );
    let mut named = vec![("dy", dy)];
    named.extend(x.map(|t| ("x", t)));
    named.extend(gamma.map(|t| ("gamma", t)));
    let dtype = shapes::common_float_dtype(OP, &named)?;
    for (name, t) in [("mean", mean), ("rstd", rstd)] {
        if let Some(t) = t {
            require_f32(OP, name, t)?;
        }
    }
    let missing = |name: &str| {
        Error::invalid(
            OP,
            format!("a gradient was requested but `{name}` was not given"),
        )
    };
    with_float!(dtype, OP, T => {
        let mut g = LayerNormGrads::default();
        if want.dgamma || want.dbeta {
            let stats = if want.dgamma {
                Some((x.ok_or_else(|| missing("x"))?, mean.ok_or_else(|| missing("mean"))?, rstd.ok_or_else(|| missing("rstd"))?))
            } else {
                None
            };
            // Rows in fixed chunks as the bias gradient's (bias_grad.rs): with several, each
            // block writes f32 partials and a second pass adds them in order.
            let (chunks, per_chunk) = super::bias_grad::row_chunks(rows, n, b.device.max_grid_y);
            let per_chunk_i = kernel_int(OP, "rows per chunk", per_chunk)?;
            let chunked = chunks > 1;
            let mut dgamma = if want.dgamma && !chunked { Some(b.output::<T>(n)?) } else { None };
            let mut dbeta = if want.dbeta && !chunked { Some(b.output::<T>(n)?) } else { None };
            let mut part_g = if want.dgamma && chunked { Some(b.output::<f32>(chunks * n)?) } else { None };
            let mut part_b = if want.dbeta && chunked { Some(b.output::<f32>(chunks * n)?) } else { None };
            // Absent operands are passed as null pointers; the kernel only reads them for dγ.
            let null = 0u64;
            let kernel = format!("layernorm_backward_params_{}", T::SUFFIX);
            let f = b.function(MODULE, &kernel)?;
            let mut l = b.device.stream.launch_builder(&f);
            use cudarc::driver::PushKernelArg;
            l.arg(view::<T>(dy));
            match stats {
                Some((x, m, r)) => {
                    l.arg(view::<T>(x));
                    l.arg(view::<f32>(m));
                    l.arg(view::<f32>(r));
                }
                None => {
                    l.arg(&null);
                    l.arg(&null);
                    l.arg(&null);
                }
            }
            match dgamma.as_mut() {
                Some(d) => l.arg(d),
                None => l.arg(&null),
            };
            match dbeta.as_mut() {
                Some(d) => l.arg(d),
                None => l.arg(&null),
            };
            match part_g.as_mut() {
                Some(p) => l.arg(p),
                None => l.arg(&null),
            };
            match part_b.as_mut() {
                Some(p) => l.arg(p),
                None => l.arg(&null),
            };
            l.arg(&rows_i);
            l.arg(&n_i);
            l.arg(&per_chunk_i);
            // SAFETY: matches layernorm_backward_params_* in kernels/layernorm.cu; null
            // pointers only where the kernel does not read (x, mean, rstd without dγ) or
            // write (the gradient not requested; the outputs when chunked, where the kernel
            // writes the partials of [chunks × n] f32 instead).
            b.launched(OP, &kernel, || unsafe { l.launch(super::bias_grad::column_grid(n, chunks)) })?;
            if chunked {
                if let Some(p) = &part_g {
                    dgamma = Some(super::bias_grad::sum_chunks::<T>(b, OP, p, chunks, n)?);
                }
                if let Some(p) = &part_b {
                    dbeta = Some(super::bias_grad::sum_chunks::<T>(b, OP, p, chunks, n)?);
                }
            }
            g.dgamma = dgamma.map(|d| tensor([n], d)).transpose()?;
            g.dbeta = dbeta.map(|d| tensor([n], d)).transpose()?;
        }
        if want.dx {
            let (x, m, r, gm) = (x.ok_or_else(|| missing("x"))?, mean.ok_or_else(|| missing("mean"))?, rstd.ok_or_else(|| missing("rstd"))?, gamma.ok_or_else(|| missing("gamma"))?);
            let mut dx = b.output::<T>(rows * n)?;
            launch!(b, MODULE, format!("layernorm_backward_input_{}", T::SUFFIX), warp_per_row(rows_i),
                view::<T>(dy), view::<T>(x), view::<f32>(m), view::<f32>(r), view::<T>(gm), &mut dx, &rows_i, &n_i);
            g.dx = Some(tensor(dy.shape().clone(), dx)?);
        }
        Ok(g)
    })
}
