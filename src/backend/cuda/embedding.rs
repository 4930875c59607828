//! Launchers of `kernels/embedding.cu`: row gather, and the scatter-add backward with the
//! positions grouped by id on the host (a stable sort), so each table row is a fixed-order
//! sum: deterministic without atomics. Groups longer than [`CHUNK`] positions are summed in
//! chunks first, so that one frequent id does not leave a single block doing all the work.

use cudarc::driver::LaunchConfig;

use super::{grid_for, ids, kernel_int, launch, tensor, view, with_float, CudaBackend, CudaFloat};
use crate::backend::{shapes, Backend};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

const MODULE: &str = "embedding";

/// The most positions one block of the backward sums. A batch's token type (every position
/// of a single-segment task) or its padding id is one group of thousands of positions.
const CHUNK: usize = 64;

/// Cuts each group `[starts[g], starts[g + 1])` of `order` into chunks of at most [`CHUNK`]
/// positions: the chunks' starts (with the end appended) and each group's first chunk (with
/// the chunk count appended), in the shape `starts` has.
fn chunks_of(starts: &[u32]) -> (Vec<u32>, Vec<u32>) {
    let (mut chunk_starts, mut first_chunk) = (Vec::new(), Vec::new());
    for group in starts.windows(2) {
        first_chunk.push(chunk_starts.len() as u32);
        chunk_starts.extend((group[0]..group[1]).step_by(CHUNK));
    }
    first_chunk.push(chunk_starts.len() as u32);
    chunk_starts.push(*starts.last().unwrap_or(&0));
    (chunk_starts, first_chunk)
}

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
    let longest = starts.windows(2).map(|g| g[1] - g[0]).max().unwrap_or(0);
    let (order_d, groups_d) = (b.upload(&order)?, b.upload(&groups)?);
    let blocks = |n: usize| LaunchConfig {
        grid_dim: (n as u32, 1, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    };
    with_float!(dtype, OP, T => {
        let mut table = b.zeroed::<T>(vocab * dim)?;
        if longest as usize <= CHUNK {
            let starts_d = b.upload(&starts)?;
            launch!(b, MODULE, format!("embedding_backward_{}", T::SUFFIX), blocks(groups.len()), view::<T>(d_out), &order_d, &starts_d, &groups_d, &mut table, &dim_i);
        } else {
            let (chunk_starts, first_chunk) = chunks_of(&starts);
            let chunks = chunk_starts.len() - 1;
            let chunk_ids: Vec<u32> = (0..chunks as u32).collect();
            let (chunk_starts_d, first_chunk_d, chunk_ids_d) = (b.upload(&chunk_starts)?, b.upload(&first_chunk)?, b.upload(&chunk_ids)?);
            let mut chunk_sums = b.output::<f32>(chunks * dim)?;
            launch!(b, MODULE, format!("embedding_backward_partial_{}", T::SUFFIX), blocks(chunks), view::<T>(d_out), &order_d, &chunk_starts_d, &chunk_ids_d, &mut chunk_sums, &dim_i);
            launch!(b, MODULE, format!("embedding_backward_combine_{}", T::SUFFIX), blocks(groups.len()), &chunk_sums, &chunk_ids_d, &first_chunk_d, &groups_d, &mut table, &dim_i);
        }
        tensor([vocab, dim], table)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_groups_are_cut_into_chunks_in_order() {
        // Groups of 3, 130 and 64 positions.
        let starts = [0, 3, 133, 197];
        let (chunk_starts, first_chunk) = chunks_of(&starts);
        assert_eq!(chunk_starts, [0, 3, 67, 131, 133, 197]);
        assert_eq!(first_chunk, [0, 1, 4, 5]);
    }
}
