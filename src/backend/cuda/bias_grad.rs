//! Launchers of `kernels/bias_grad.cu`: column sums over the rows of a matrix (the linear
//! map's bias gradient) and column dots of two (a DoRA magnitude's gradient) in fixed chunks
//! of rows, and the fixed-order sum of per-chunk partials that the layernorm's parameter
//! gradients share.

use cudarc::driver::{CudaSlice, LaunchConfig};

use super::{kernel_int, launch, tensor, view, with_float, CudaBackend, CudaFloat};
use crate::backend::shapes;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

const MODULE: &str = "bias_grad";

/// Blocks a column reduction aims for: an H100/H200's 132 SMs twice over.
const TARGET_BLOCKS: usize = 264;

/// Rows fewer than which a chunk is not worth its partial's write and re-read.
const MIN_CHUNK_ROWS: usize = 64;

/// How many chunks of rows a column reduction over `rows × cols` is split into, and the rows
/// per chunk: enough blocks of 32 columns to fill the GPU twice over, at least 64 rows each,
/// at most `max_chunks` (the grid's y limit: 65,535 on every GPU, far above the 264 this asks
/// for; only the CPU stand-in's tests lower it). So a function of the shape alone on any GPU:
/// the summation order, and the bits, do not depend on the device.
pub(super) fn row_chunks(rows: usize, cols: usize, max_chunks: usize) -> (usize, usize) {
    let chunks = TARGET_BLOCKS
        .div_ceil(cols.div_ceil(32))
        .min(rows / MIN_CHUNK_ROWS)
        .min(max_chunks)
        .max(1);
    let per_chunk = rows.div_ceil(chunks).max(1);
    (rows.div_ceil(per_chunk).max(1), per_chunk)
}

/// The grid of a chunked column reduction: 32 columns × one chunk of rows per block of 32 × 8
/// threads.
pub(super) fn column_grid(cols: usize, chunks: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (cols.div_ceil(32) as u32, chunks as u32, 1),
        block_dim: (32, 8, 1),
        shared_mem_bytes: 0,
    }
}

/// `out[c] = Σ_z partial[z][c]` over `chunks` partials of `cols` columns, z in order, stored in
/// the output's dtype.
pub(super) fn sum_chunks<T: CudaFloat>(
    b: &CudaBackend,
    op: &'static str,
    partial: &CudaSlice<f32>,
    chunks: usize,
    cols: usize,
) -> Result<CudaSlice<T>> {
    let (chunks_i, cols_i) = (
        kernel_int(op, "chunks", chunks)?,
        kernel_int(op, "columns", cols)?,
    );
    let mut out = b.output::<T>(cols)?;
    let cfg = LaunchConfig {
        grid_dim: (cols.div_ceil(256) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    launch!(
        b,
        MODULE,
        format!("column_chunks_sum_{}", T::SUFFIX),
        cfg,
        partial,
        &chunks_i,
        &cols_i,
        &mut out
    );
    Ok(out)
}

/// `out[c] = Σ_r m[r][c]` of a `rows × cols` matrix, in f32, stored in `T`.
pub(super) fn column_sums<T: CudaFloat>(
    b: &CudaBackend,
    op: &'static str,
    m: &CudaSlice<T>,
    rows: usize,
    cols: usize,
) -> Result<CudaSlice<T>> {
    let (rows_i, cols_i) = (
        kernel_int(op, "rows", rows)?,
        kernel_int(op, "columns", cols)?,
    );
    let (chunks, per_chunk) = row_chunks(rows, cols, b.device.max_grid_y);
    let per_chunk_i = kernel_int(op, "rows per chunk", per_chunk)?;
    let kernel = format!("bias_grad_{}", T::SUFFIX);
    let grid = column_grid(cols, chunks);
    if chunks == 1 {
        let mut out = b.output::<T>(cols)?;
        launch!(
            b,
            MODULE,
            kernel,
            grid,
            m,
            &mut out,
            &0u64,
            &rows_i,
            &cols_i,
            &per_chunk_i
        );
        return Ok(out);
    }
    let mut partial = b.output::<f32>(chunks * cols)?;
    // The output pointer is unused when partials are written: null.
    launch!(
        b,
        MODULE,
        kernel,
        grid,
        m,
        &0u64,
        &mut partial,
        &rows_i,
        &cols_i,
        &per_chunk_i
    );
    sum_chunks::<T>(b, op, &partial, chunks, cols)
}

/// `Σ_r a[r][c]·b[r][c]` of two `rows × cols` matrices, in f32 over the chunks of
/// [`row_chunks`] added in order, on the host.
pub(super) fn column_dots<T: CudaFloat>(
    b: &CudaBackend,
    op: &'static str,
    x: &CudaSlice<T>,
    y: &CudaSlice<T>,
    rows: usize,
    cols: usize,
) -> Result<Vec<f64>> {
    let (rows_i, cols_i) = (
        kernel_int(op, "rows", rows)?,
        kernel_int(op, "columns", cols)?,
    );
    let (chunks, per_chunk) = row_chunks(rows, cols, b.device.max_grid_y);
    let per_chunk_i = kernel_int(op, "rows per chunk", per_chunk)?;
    let mut partial = b.output::<f32>(chunks * cols)?;
    launch!(
        b,
        MODULE,
        format!("column_dots_{}", T::SUFFIX),
        column_grid(cols, chunks),
        x,
        y,
        &mut partial,
        &rows_i,
        &cols_i,
        &per_chunk_i
    );
    let sums = sum_chunks::<f32>(b, op, &partial, chunks, cols)?;
    Ok(b.download(op, &sums)?.into_iter().map(f64::from).collect())
}

/// [`crate::backend::Backend::column_dots`].
pub(super) fn column_dots_of(
    b: &CudaBackend,
    x: &Tensor<CudaBackend>,
    y: &Tensor<CudaBackend>,
) -> Result<Vec<f64>> {
    const OP: &str = "column dots";
    let (dtype, cols) = shapes::column_dots(OP, x, y)?;
    let rows = x.numel() / cols.max(1);
    with_float!(dtype, OP, T => column_dots::<T>(b, OP, view::<T>(x), view::<T>(y), rows, cols))
}

/// [`crate::backend::Backend::column_sums`].
pub(super) fn column_sums_of(
    b: &CudaBackend,
    x: &Tensor<CudaBackend>,
) -> Result<Tensor<CudaBackend>> {
    const OP: &str = "column sums";
    let (dtype, cols) = shapes::column_sums(OP, x)?;
    let rows = x.numel() / cols.max(1);
    with_float!(dtype, OP, T => tensor([cols], column_sums::<T>(b, OP, view::<T>(x), rows, cols)?))
}

#[cfg(test)]
mod tests {
    use super::row_chunks;

    #[test]
    fn chunks_cover_every_row_once_and_fill_the_gpu() {
        for (rows, cols) in [
            (4096, 768),
            (4096, 3072),
            (1, 5),
            (63, 768),
            (65, 32),
            (100_000, 2),
        ] {
            let (chunks, per) = row_chunks(rows, cols, 65_535);
            assert!(chunks >= 1 && per >= 1, "{rows}x{cols}");
            // Every row in exactly one chunk, no chunk empty.
            assert!(
                chunks * per >= rows && (chunks - 1) * per < rows,
                "{rows}x{cols}: {chunks} × {per}"
            );
            assert!(
                per >= 64 || chunks == 1,
                "{rows}x{cols}: chunks of {per} rows"
            );
        }
        // 768 columns are 24 blocks of 32: 11 chunks fill 264 slots.
        assert_eq!(row_chunks(4096, 768, 65_535).0, 11);
        assert_eq!(row_chunks(4096, 3072, 65_535), (3, 1366));
        assert_eq!(row_chunks(4096, 768, 2), (2, 2048));
    }
}
