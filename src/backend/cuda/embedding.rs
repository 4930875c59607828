//! Launchers of `kernels/embedding.cu`: row gather, and the scatter-add backward with the
//! positions grouped by id on the host (a stable sort), so each table row is one block's
//! fixed-order sum: deterministic without atomics.

use cudarc::driver::LaunchConfig;

use super::{grid_for, ids, kernel_int, launch, tensor, view, with_float, CudaBackend, CudaFloat};
use crate::backend::{shapes, Backend};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

const MODULE: &str = "embedding";

pub(super) fn forward(
    b: &CudaBackend,
    table: &Tensor<CudaBackend>,
    idx: &Tensor<CudaBackend>,
) -> Result<Tensor<CudaBackend>> {
    const OP: &str = "embedding";
    let (dtype, vocab, dim) = shapes::embedding(table, idx)?;
    shapes::check_indices(OP, "id", &b.to_u32(idx)?, vocab)?;
    let dim_i = kernel_int(OP, "a row length", dim)?;
    let n = idx.numel();
    let mut out_shape = idx.dims().to_vec();
    out_shape.push(dim);
    with_float!(dtype, OP, T => {
        let mut out = b.output::<T>(n * dim)?;
        launch!(b, MODULE, format!("embedding_forward_{}", T::SUFFIX), grid_for(n * dim), view::<T>(table), ids(idx), &mut out, &(n as i64), &dim_i);
        tensor(out_shape, out)
    })
}

pub(super) fn backward(
    b: &CudaBackend,
    d_out: &Tensor<CudaBackend>,
    idx: &Tensor<CudaBackend>,
    vocab: usize,
) -> Result<Tensor<CudaBackend>> {
    const OP: &str = "embedding backward";
    let (dtype, rows, dim) = shapes::embedding_backward(d_out, idx, vocab)?;
    let dim_i = kernel_int(OP, "a row length", dim)?;
    // Positions travel to the kernel as u32.
    kernel_int(OP, "rows", rows)?;
    let host_ids = b.to_u32(idx)?;
    shapes::check_indices(OP, "id", &host_ids, vocab)?;
    // Group positions by id, each group in increasing position order (a stable sort).
    let mut order: Vec<u32> = (0..rows as u32).collect();
    order.sort_by_key(|&i| host_ids[i as usize]);
    let (mut starts, mut groups) = (Vec::new(), Vec::new());
    for (k, &i) in order.iter().enumerate() {
        let id = host_ids[i as usize];
        if groups.last() != Some(&id) {
            groups.push(id);
            starts.push(k as u32);
        }
    }
    starts.push(rows as u32);
    let (order_d, starts_d, groups_d) = (b.upload(&order)?, b.upload(&starts)?, b.upload(&groups)?);
    with_float!(dtype, OP, T => {
        let mut table = b.zeroed::<T>(vocab * dim)?;
        let cfg = LaunchConfig { grid_dim: (groups.len() as u32, 1, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
        launch!(b, MODULE, format!("embedding_backward_{}", T::SUFFIX), cfg, view::<T>(d_out), &order_d, &starts_d, &groups_d, &mut table, &dim_i);
        tensor([vocab, dim], table)
    })
}
