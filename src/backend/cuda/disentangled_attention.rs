//! Launchers of `kernels/disentangled_attention.cu`: DeBERTa's disentangled attention, exact
//! f32 on CUDA cores in every precision (bf16 operands are widened once here; the outputs
//! keep the activations' dtype). A first, simple set beside `attention.rs`'s fused kernels:
//! the backward keeps dS and the dropped probabilities, `[batch, heads, seq, seq]` each, for
//! the passes over keys and relative rows.

use cudarc::driver::{CudaSlice, LaunchConfig};

use super::{ids, kernel_int, launch, tensor, view, CudaBackend};
use crate::backend::shapes::{self, AttentionDims};
use crate::backend::{
    AttentionConfig, AttentionGradRequest, AttentionGrads, AttentionOutput, DisentangledGrads,
    RelativeTerms,
};
use crate::error::Result;
use crate::rng;
use crate::tensor::{DType, Tensor};

const MODULE: &str = "disentangled_attention";

/// `launch!` of kernel `$name` with the operands every kernel of the file takes first
/// (`DISENTANGLED_PARAMS`: q, k, v, both terms, the rows and mask, sizes, scale, dropout),
/// then `$rest`.
macro_rules! launch_with_operands {
    ($b:expr, $name:expr, $cfg:expr, $o:expr, ($rows:expr, $mask:expr), $($rest:expr),+ $(,)?) => {{
        let o: &Operands = $o;
        launch!(
            $b, MODULE, $name, $cfg,
            view::<f32>(&o.q), view::<f32>(&o.k), view::<f32>(&o.v), view::<f32>(&o.key_terms),
            view::<f32>(&o.query_terms), ids($rows), ids($mask), &o.seq, &o.heads, &o.head_dim,
            &o.c2p, &o.p2c, &o.scale, &o.seed, &o.threshold, &o.keep, $($rest),+
        )
    }};
}

/// Threads of a row's block (a power of two, as `block_sum` takes).
const THREADS: u32 = 128;

/// The operands as the kernels read them: f32, the absent terms standing in for by q
/// (never read), the sizes and the dropout.
struct Operands {
    q: Tensor<CudaBackend>,
    k: Tensor<CudaBackend>,
    v: Tensor<CudaBackend>,
    key_terms: Tensor<CudaBackend>,
    query_terms: Tensor<CudaBackend>,
    c2p: i32,
    p2c: i32,
    seq: i32,
    heads: i32,
    head_dim: i32,
    scale: f32,
    seed: u64,
    threshold: u32,
    keep: f32,
}

fn f32_of(b: &CudaBackend, t: &Tensor<CudaBackend>) -> Result<Tensor<CudaBackend>> {
    super::elementwise::cast(b, t, DType::F32)
}

/// Checks the operands (the rows' indices on the host, which the backward needs there too)
/// and widens them to f32; returns them with the sizes and the relative rows' count and
/// indices.
fn operands(
    b: &CudaBackend,
    op: &'static str,
    (q, k, v): (
        &Tensor<CudaBackend>,
        &Tensor<CudaBackend>,
        &Tensor<CudaBackend>,
    ),
    mask: &Tensor<CudaBackend>,
    terms: &RelativeTerms<'_, CudaBackend>,
    config: &AttentionConfig,
) -> Result<(Operands, AttentionDims, usize, Vec<u32>)> {
    let d = shapes::attention(q, k, v, mask, config)?;
    // Every float operand is widened to f32 (bf16 ones are the products' rounded copies).
    let q32 = f32_of(b, q)?;
    let key_terms = terms.key.map(|t| f32_of(b, t)).transpose()?;
    let query_terms = terms.query.map(|t| f32_of(b, t)).transpose()?;
    let widened = RelativeTerms {
        key: key_terms.as_ref(),
        query: query_terms.as_ref(),
        rows: terms.rows,
    };
    let rows = shapes::attention_relative_terms(op, &q32, &widened, &d)?;
    let index = b.download(op, ids(terms.rows))?;
    shapes::check_indices(op, "relative row", &index, rows)?;
    let (seed, threshold, keep) = match config.dropout {
        Some(dr) if dr.p > 0.0 => (
            dr.seed,
            rng::drop_threshold(dr.p),
            (1.0 / (1.0 - dr.p)) as f32,
        ),
        _ => (0, 0, 1.0),
    };
    let operands = Operands {
        k: f32_of(b, k)?,
        v: f32_of(b, v)?,
        key_terms: key_terms.unwrap_or_else(|| q32.clone()),
        query_terms: query_terms.unwrap_or_else(|| q32.clone()),
        q: q32,
        c2p: i32::from(terms.key.is_some()),
        p2c: i32::from(terms.query.is_some()),
        seq: kernel_int(op, "sequence length", d.seq)?,
        heads: kernel_int(op, "heads", d.heads)?,
        head_dim: kernel_int(op, "head dim", d.head_dim)?,
        scale: config.scale as f32,
        seed,
        threshold,
        keep,
    };
    Ok((operands, d, rows, index))
}

fn row_grid(d: &AttentionDims, shared_floats: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (d.seq as u32, d.heads as u32, d.batch as u32),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: (shared_floats * 4) as u32,
    }
}

/// The output in the activations' dtype (`like`'s), from the kernels' f32.
fn as_dtype_of(
    b: &CudaBackend,
    like: DType,
    t: Tensor<CudaBackend>,
) -> Result<Tensor<CudaBackend>> {
    match like {
        DType::F32 => Ok(t),
        other => super::elementwise::cast(b, &t, other),
    }
}

/// [`crate::backend::Backend::attention_forward_disentangled`] on CUDA.
pub(super) fn forward(
    b: &CudaBackend,
    (q, k, v): (
        &Tensor<CudaBackend>,
        &Tensor<CudaBackend>,
        &Tensor<CudaBackend>,
    ),
    mask: &Tensor<CudaBackend>,
    terms: &RelativeTerms<'_, CudaBackend>,
    config: &AttentionConfig,
) -> Result<AttentionOutput<CudaBackend>> {
    const OP: &str = "disentangled attention";
    let (o, d, _, _) = operands(b, OP, (q, k, v), mask, terms, config)?;
    let mut out = b.output::<f32>(q.numel())?;
    let mut lse = b.output::<f32>(d.batch * d.heads * d.seq)?;
    launch_with_operands!(
        b,
        "disentangled_attention_forward",
        row_grid(&d, d.seq + THREADS as usize),
        &o,
        (terms.rows, mask),
        &mut out,
        &mut lse
    );
    let out = as_dtype_of(b, activations_dtype(b, q), tensor(q.shape().clone(), out)?)?;
    Ok(AttentionOutput {
        out,
        lse: tensor([d.batch, d.heads, d.seq], lse)?,
    })
}

/// The activations' dtype where `q` is one of them or their copy rounded for products (f32
/// in mixed precision).
fn activations_dtype(b: &CudaBackend, q: &Tensor<CudaBackend>) -> DType {
    match (q.dtype(), b.precision) {
        (DType::BF16, super::Precision::Bf16) => DType::F32,
        (dtype, _) => dtype,
    }
}

/// The pairs `i·seq + j` that read each relative row, grouped by row in row-major order, and
/// where each row's group starts (`rows + 1` offsets).
fn pairs_by_row(index: &[u32], rows: usize) -> (Vec<u32>, Vec<u32>) {
    let mut starts = vec![0u32; rows + 1];
    for &r in index {
        starts[r as usize + 1] += 1;
    }
    for r in 0..rows {
        starts[r + 1] += starts[r];
    }
    let mut next = starts.clone();
    let mut pairs = vec![0u32; index.len()];
    for (pair, &r) in index.iter().enumerate() {
        pairs[next[r as usize] as usize] = pair as u32;
        next[r as usize] += 1;
    }
    (pairs, starts)
}

/// [`crate::backend::Backend::attention_backward_disentangled`] on CUDA: every gradient is
/// computed (the row pass needs dS whatever is asked), the asked ones returned in `d_out`'s
/// dtype.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    b: &CudaBackend,
    d_out: &Tensor<CudaBackend>,
    (q, k, v): (
        &Tensor<CudaBackend>,
        &Tensor<CudaBackend>,
        Option<&Tensor<CudaBackend>>,
    ),
    lse: &Tensor<CudaBackend>,
    mask: &Tensor<CudaBackend>,
    terms: &RelativeTerms<'_, CudaBackend>,
    config: &AttentionConfig,
    want: AttentionGradRequest,
    want_terms: bool,
) -> Result<DisentangledGrads<CudaBackend>> {
    const OP: &str = "disentangled attention backward";
    let v = v.ok_or_else(|| {
        crate::error::Error::invalid(OP, "every gradient of disentangled attention needs `v`")
    })?;
    let (o, d, rows, index) = operands(b, OP, (q, k, v), mask, terms, config)?;
    // q, k, v may be the products' bf16 copies of f32 activations (mixed precision).
    let (dtype, _) =
        shapes::attention_backward(d_out, q, k, Some(v), mask, config, want, q.dtype())?;
    super::require_f32(OP, "lse", lse)?;
    shapes::require_dims(OP, "lse", lse, &[d.batch, d.heads, d.seq])?;
    let dout = f32_of(b, d_out)?;
    let pairs = d.batch * d.heads * d.seq * d.seq;
    let mut ds = b.output::<f32>(pairs)?;
    let mut dropped = b.output::<f32>(pairs)?;
    let n = q.numel();
    let (mut dq, mut dk, mut dv) = (
        b.output::<f32>(n)?,
        b.output::<f32>(n)?,
        b.output::<f32>(n)?,
    );
    launch_with_operands!(
        b,
        "disentangled_attention_backward_rows",
        row_grid(&d, 2 * d.seq + THREADS as usize),
        &o,
        (terms.rows, mask),
        view::<f32>(&dout),
        view::<f32>(lse),
        &mut ds,
        &mut dropped,
        &mut dq
    );
    launch_with_operands!(
        b,
        "disentangled_attention_backward_columns",
        row_grid(&d, 0),
        &o,
        (terms.rows, mask),
        view::<f32>(&dout),
        &ds,
        &dropped,
        &mut dk,
        &mut dv
    );
    let (mut key_terms, mut query_terms) = (None, None);
    if want_terms {
        let (pairs, starts) = pairs_by_row(&index, rows);
        let (pairs, starts) = (b.upload(&pairs)?, b.upload(&starts)?);
        let size = rows * d.hidden();
        let mut d_kr: CudaSlice<f32> = b.output(if o.c2p == 1 { size } else { 1 })?;
        let mut d_qr: CudaSlice<f32> = b.output(if o.p2c == 1 { size } else { 1 })?;
        let batch = kernel_int(OP, "batch", d.batch)?;
        let grid = LaunchConfig {
            grid_dim: (rows as u32, d.heads as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        launch_with_operands!(
            b,
            "disentangled_attention_backward_terms",
            grid,
            &o,
            (terms.rows, mask),
            &batch,
            &ds,
            &pairs,
            &starts,
            &mut d_kr,
            &mut d_qr
        );
        // In the gradients' dtype, as q's: the terms may be the products' bf16 copies of
        // f32 activations, whose gradients stay f32.
        if o.c2p == 1 {
            key_terms = Some(as_dtype_of(b, dtype, tensor([rows, d.hidden()], d_kr)?)?);
        }
        if o.p2c == 1 {
            query_terms = Some(as_dtype_of(b, dtype, tensor([rows, d.hidden()], d_qr)?)?);
        }
    }
    let grad = |g: CudaSlice<f32>, asked: bool| -> Result<Option<Tensor<CudaBackend>>> {
        match asked {
            true => Ok(Some(as_dtype_of(b, dtype, tensor(q.shape().clone(), g)?)?)),
            false => Ok(None),
        }
    };
    Ok(DisentangledGrads {
        attention: AttentionGrads {
            dq: grad(dq, want.dq)?,
            dk: grad(dk, want.dk)?,
            dv: grad(dv, want.dv)?,
        },
        key_terms,
        query_terms,
    })
}
