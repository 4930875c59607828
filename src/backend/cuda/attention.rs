//! Launchers of `kernels/attention.cu`: fused multi-head self-attention, forward and backward.
//!
//! Sequences are handed to the kernels as start offsets (`starts[b]` .. `starts[b + 1]`), the
//! varlen interface: today's callers pass a padded batch (offsets `0, S, 2S, …` plus the key
//! mask); packed batches without padding rows need no kernel change. In bf16 precision the
//! tensor-core kernels run (head dims up to 128, padded to 32, 64 or 128) on f32 or bf16
//! storage, or on q, k, v and dO in bf16 with f32 outputs (mixed precision, where the query,
//! key and value maps store their outputs for these products and dO is rounded once here);
//! in f32 precision the exact one-thread-per-row kernels. MPNet's relative position bias is
//! added by every one of them, and its gradient has a kernel of its own.

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg};

use super::gemm::Buf;
use super::{
    ids, kernel_int, require_f32, tensor, view, with_float, CudaBackend, CudaFloat, Precision,
};
use crate::backend::shapes::{self, AttentionDims};
use crate::backend::{AttentionConfig, AttentionGradRequest, AttentionGrads, AttentionOutput};
use crate::error::{Error, Result};
use crate::rng;
use crate::tensor::{DType, Tensor};

const MODULE: &str = "attention";

/// Field for field the `AttnParams` of `kernels/attention.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct AttentionParams {
    q: u64,
    k: u64,
    v: u64,
    dout: u64,
    o: u64,
    dq: u64,
    dk: u64,
    dv: u64,
    lse: u64,
    delta: u64,
    starts: u64,
    mask: u64,
    pos_bias: u64,
    d_pos_bias: u64,
    bias_tiles: u64,
    seed: u64,
    ld: i64,
    heads: i32,
    head_dim: i32,
    max_seq: i32,
    mask_stride: i32,
    scale: f32,
    drop_threshold: u32,
    keep_scale: f32,
    seq0: i32,
    sequences: i32,
}

// SAFETY: a plain C struct of integers and floats, laid out as the kernel's.
unsafe impl DeviceRepr for AttentionParams {}

/// The tensor-core kernels' padded head dim for `head_dim`.
fn padded_head_dim(op: &'static str, head_dim: usize) -> Result<usize> {
    match head_dim {
        0..=32 => Ok(32),
        33..=64 => Ok(64),
        65..=128 => Ok(128),
        _ => Err(Error::invalid(
            op,
            format!(
                "head dim {head_dim}: the bf16 attention kernels take head dims up to 128; \
                 --dtype f32 runs larger ones as far as a block's shared memory holds their \
                 tiles, and --device cpu any"
            ),
        )),
    }
}

/// Stage buffers the tensor-core kernels are compiled for (`_s1`, `_s2`; see
/// [`CudaBackend::with_attention_stages`]).
pub const ATTENTION_STAGES: [usize; 2] = [1, 2];

/// Tiles the forward kernel keeps through its loop (its queries) and the backward kernels
/// (keys and values, or queries and dO).
const FORWARD_KEPT: usize = 1;
const BACKWARD_KEPT: usize = 2;

/// Shared memory of a bf16 kernel that keeps `kept` [64][DP + 8] bf16 tiles and streams two
/// per stage, with four 64-float vectors per stage (`AttnTc::Smem::BYTES`).
fn tc_shared(dp: usize, stages: usize, kept: usize) -> u32 {
    ((kept + 2 * stages) * 64 * (dp + 8) * 2 + stages * 4 * 64 * 4) as u32
}

/// A tensor-core kernel's name suffix and shared memory for storage `storage`, padded head
/// dim `dp` and `kept` tiles: the stages the backend asks for where they are compiled (bf16
/// q, k, v: f32 rows are rounded by the threads, which a second stage would not overlap with
/// the products) and fit this device's shared memory (the backward's two stages at head dim
/// 128 take 104 KiB, more than an sm_86 or sm_89 block may have), else one.
fn tc_variant(
    stages: usize,
    storage: &str,
    dp: usize,
    kept: usize,
    max_shared: u32,
) -> (String, u32) {
    let stages = match stages {
        2 if storage != "f32" && tc_shared(dp, 2, kept) <= max_shared => 2,
        _ => 1,
    };
    (
        format!("{storage}_d{dp}_s{stages}"),
        tc_shared(dp, stages, kept),
    )
}

/// [`tc_variant`] on `b`'s stages, or, with a position bias, the `_pb` instantiation (one
/// stage: kernels/attention.cu says why the bias has kernels of its own).
fn biased_tc_variant(
    b: &CudaBackend,
    biased: bool,
    storage: &str,
    dp: usize,
    kept: usize,
) -> (String, u32) {
    let max_shared = b.device.max_shared_per_block;
    match biased {
        false => tc_variant(b.attention_stages, storage, dp, kept, max_shared),
        true => {
            let (variant, smem) = tc_variant(1, storage, dp, kept, max_shared);
            (format!("{variant}_pb"), smem)
        }
    }
}

/// Shared memory of the f32 kernels: `own` rows of 32 and `streamed` rows of 16, padded to
/// head_dim + 1 floats, plus `extra` floats.
fn f32_shared(head_dim: usize, own: usize, streamed: usize, extra: usize) -> u32 {
    // Saturating: a head dim in the millions must read as too large, never wrap to a small
    // size that passes the limit.
    let floats = (own * 32 + streamed * 16)
        .saturating_mul(head_dim.saturating_add(1))
        .saturating_add(extra);
    u32::try_from(floats.saturating_mul(4)).unwrap_or(u32::MAX)
}

/// Shared memory per block of the f32 kernels: forward, dK/dV and dQ.
fn f32_kernel_shared(head_dim: usize) -> [u32; 3] {
    [
        f32_shared(head_dim, 2, 2, 16),
        f32_shared(head_dim, 4, 2, 32),
        f32_shared(head_dim, 3, 2, 16),
    ]
}

/// Refuses a head dim whose forward (and, with `backward`, backward) kernels this device
/// cannot run: bf16 past the tensor-core kernels' 128, f32 past what one block's shared
/// memory holds (the backward's tiles are larger than the forward's, so a model may run
/// inference here and still be refused training).
pub(super) fn check_head_dim(b: &CudaBackend, head_dim: usize, backward: bool) -> Result<()> {
    const OP: &str = "attention";
    let [forward, dkdv, dq] = match b.precision {
        Precision::F32 => f32_kernel_shared(head_dim),
        _ => {
            let dp = padded_head_dim(OP, head_dim)?;
            let backward = tc_shared(dp, 1, BACKWARD_KEPT);
            [tc_shared(dp, 1, FORWARD_KEPT), backward, backward]
        }
    };
    let limit = b.device.max_shared_per_block;
    let (pass, needed) = match backward {
        true if forward <= limit => ("backward", dkdv.max(dq)),
        _ => ("forward", forward),
    };
    if needed > limit {
        let consequence = match pass {
            "backward" => format!(
                "this model's heads are too wide to train there; eval and predict run it (their \
                 forward needs {forward}), and --device cpu trains it"
            ),
            _ => "this model's heads are too wide for it; --device cpu runs it".to_string(),
        };
        return Err(Error::invalid(
            OP,
            format!(
                "head dim {head_dim}: the attention {pass} needs {needed} bytes of shared \
                 memory per block and {} allows {limit}: {consequence}",
                b.device_name(),
            ),
        ));
    }
    Ok(())
}

fn base_params(d: &AttentionDims, config: &AttentionConfig) -> AttentionParams {
    let (seed, threshold, keep) = match config.dropout {
        Some(dr) if dr.p > 0.0 => (
            dr.seed,
            rng::drop_threshold(dr.p),
            (1.0 / (1.0 - dr.p)) as f32,
        ),
        _ => (0, 0, 1.0),
    };
    AttentionParams {
        seed,
        ld: d.hidden() as i64,
        heads: d.heads as i32,
        head_dim: d.head_dim as i32,
        max_seq: d.seq as i32,
        mask_stride: d.seq as i32,
        scale: config.scale as f32,
        drop_threshold: threshold,
        keep_scale: keep,
        sequences: d.batch as i32,
        ..Default::default()
    }
}

/// The position bias `[2·seq − 1, heads]` checked against `d`, as the f32 the kernels read
/// (a bf16 one is widened once here).
fn position_bias_f32(
    b: &CudaBackend,
    op: &'static str,
    bias: &Tensor<CudaBackend>,
    d: &AttentionDims,
) -> Result<Tensor<CudaBackend>> {
    shapes::attention_position_bias(op, bias, d)?;
    match bias.dtype() {
        DType::F32 => Ok(bias.clone()),
        DType::BF16 => super::elementwise::cast(b, bias, DType::F32),
        other => Err(Error::dtype(
            op,
            format!("`position_bias` is {other}; the attention kernels read f32 or bf16"),
        )),
    }
}

/// The tensor-core kernels' storage suffix for q, k, v in `inputs` and everything else in
/// `others` (`f32`, `bf16`): bf16 inputs with f32 outputs are `bf16qkv_f32`.
fn tc_storage(inputs: DType, others: &'static str) -> &'static str {
    match (inputs, others) {
        (DType::BF16, "f32") => "bf16qkv_f32",
        (_, suffix) => suffix,
    }
}

/// Start offsets of a padded batch: sequence b is rows [b·S, (b + 1)·S). The kernels
/// take offsets, lengths, heads and head widths as `int`; this checks that they fit.
fn padded_starts(b: &CudaBackend, op: &'static str, d: &AttentionDims) -> Result<CudaSlice<i32>> {
    let tokens = d.batch.saturating_mul(d.seq);
    kernel_int(op, "a batch's tokens", tokens)?;
    kernel_int(op, "heads", d.heads)?;
    kernel_int(op, "a head width", d.head_dim)?;
    b.upload(
        &(0..=d.batch)
            .map(|i| (i * d.seq) as i32)
            .collect::<Vec<_>>(),
    )
}

/// Launches `kernel` over (tiles of `tile` rows, heads, sequences).
#[allow(clippy::too_many_arguments)]
fn launch_tiles(
    b: &CudaBackend,
    op: &'static str,
    kernel: &str,
    d: &AttentionDims,
    tile: usize,
    threads: u32,
    smem: u32,
    p: &AttentionParams,
) -> Result<()> {
    launch_per_head_and_sequence(b, op, kernel, d, d.seq.div_ceil(tile), threads, smem, p)
}

/// Launches `kernel` over (`blocks` per head and sequence, heads, sequences).
#[allow(clippy::too_many_arguments)]
fn launch_per_head_and_sequence(
    b: &CudaBackend,
    op: &'static str,
    kernel: &str,
    d: &AttentionDims,
    blocks: usize,
    threads: u32,
    smem: u32,
    p: &AttentionParams,
) -> Result<()> {
    let f = b.function_with_shared(MODULE, kernel, smem)?;
    let (max_heads, max_sequences) = (b.device.max_grid_y, b.device.max_grid_z);
    if d.heads > max_heads {
        return Err(Error::invalid(
            op,
            format!(
                "{} heads: the attention launches one block row per head, and {}'s grid takes \
                 at most {max_heads} in y",
                d.heads,
                b.device_name()
            ),
        ));
    }
    // Sequences beyond the grid's z limit go to further launches of the same kernel.
    for seq0 in (0..d.batch).step_by(max_sequences) {
        let sequences = (d.batch - seq0).min(max_sequences);
        let cfg = LaunchConfig {
            grid_dim: (blocks as u32, d.heads as u32, sequences as u32),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: smem,
        };
        let p = AttentionParams {
            seq0: seq0 as i32,
            ..*p
        };
        let mut l = b.device.stream.launch_builder(&f);
        l.arg(&p);
        // SAFETY: AttentionParams mirrors the kernel's struct; its pointers were taken from
        // live buffers of the validated shapes just before this call and stay alive past it;
        // this launch's sequences seq0 .. seq0 + sequences lie inside the batch.
        b.launched(op, kernel, || unsafe { l.launch(cfg) })?;
    }
    Ok(())
}

pub(super) fn forward(
    b: &CudaBackend,
    q: &Tensor<CudaBackend>,
    k: &Tensor<CudaBackend>,
    v: &Tensor<CudaBackend>,
    mask: &Tensor<CudaBackend>,
    position_bias: Option<&Tensor<CudaBackend>>,
    config: &AttentionConfig,
) -> Result<AttentionOutput<CudaBackend>> {
    const OP: &str = "attention";
    let d = shapes::attention(q, k, v, mask, config)?;
    let position_bias = position_bias
        .map(|bias| position_bias_f32(b, OP, bias, &d))
        .transpose()?;
    let stream = &b.device.stream;
    let starts = padded_starts(b, OP, &d)?;
    // bf16 q, k, v in mixed precision are f32 activations' copies rounded for the products
    // (see `rounded_for_products`): the output keeps the activations' f32.
    let out_dtype = match (q.dtype(), b.precision) {
        (DType::BF16, Precision::Bf16) => DType::F32,
        (dtype, _) => dtype,
    };
    with_float!(out_dtype, OP, T => {
        let mut out = b.output::<T>(q.numel())?;
        let mut lse = b.output::<f32>(d.batch * d.heads * d.seq)?;
        let mut p = base_params(&d, config);
        {
            let (pq, _gq) = Buf::of(OP, q)?.ptr(stream);
            let (pk, _gk) = Buf::of(OP, k)?.ptr(stream);
            let (pv, _gv) = Buf::of(OP, v)?.ptr(stream);
            let (pm, _gm) = ids(mask).device_ptr(stream);
            let (ps, _gs) = starts.device_ptr(stream);
            let (po, _go) = out.device_ptr_mut(stream);
            let (pl, _gl) = lse.device_ptr_mut(stream);
            (p.q, p.k, p.v, p.mask, p.starts, p.o, p.lse) = (pq, pk, pv, pm, ps, po, pl);
            let (pb, _gb) = match &position_bias {
                Some(bias) => { let (ptr, g) = view::<f32>(bias).device_ptr(stream); (ptr, Some(g)) }
                None => (0, None),
            };
            p.pos_bias = pb;
            if b.precision == Precision::F32 && T::SUFFIX == "f32" {
                launch_tiles(b, OP, "attention_forward_exact", &d, 32, 32, f32_kernel_shared(d.head_dim)[0], &p)?;
            } else {
                let dp = padded_head_dim(OP, d.head_dim)?;
                let storage = tc_storage(q.dtype(), T::SUFFIX);
                let (variant, smem) = biased_tc_variant(b, position_bias.is_some(), storage, dp, FORWARD_KEPT);
                launch_tiles(b, OP, &format!("attention_forward_tc_{variant}"), &d, 64, 128, smem, &p)?;
            }
        }
        Ok(AttentionOutput { out: tensor(q.shape().clone(), out)?, lse: tensor([d.batch, d.heads, d.seq], lse)? })
    })
}

/// The requested gradients of [`forward`], and the position bias's where
/// `want_position_bias` (a bias must then be given; `v` too, as for `dq` and `dk`).
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub(super) fn backward(
    b: &CudaBackend,
    d_out: &Tensor<CudaBackend>,
    q: &Tensor<CudaBackend>,
    k: &Tensor<CudaBackend>,
    v: Option<&Tensor<CudaBackend>>,
    lse: &Tensor<CudaBackend>,
    mask: &Tensor<CudaBackend>,
    position_bias: Option<&Tensor<CudaBackend>>,
    config: &AttentionConfig,
    want: AttentionGradRequest,
    want_position_bias: bool,
) -> Result<(AttentionGrads<CudaBackend>, Option<Tensor<CudaBackend>>)> {
    const OP: &str = "attention backward";
    let want_position_bias = want_position_bias && position_bias.is_some();
    // The bias's gradient is dS summed, and dS needs dP = dO·Vᵀ and delta, as dq does.
    let v_needed = AttentionGradRequest {
        dq: want.dq || want_position_bias,
        ..want
    };
    let rounded = super::gemm::rounded_dtype(b, d_out.dtype());
    let (dtype, d) = shapes::attention_backward(d_out, q, k, v, mask, config, v_needed, rounded)?;
    require_f32(OP, "lse", lse)?;
    shapes::require_dims(OP, "lse", lse, &[d.batch, d.heads, d.seq])?;
    // The gradient goes back in the bias's own dtype.
    let bias_dtype = position_bias.map(Tensor::dtype);
    let position_bias = position_bias
        .map(|bias| position_bias_f32(b, OP, bias, &d))
        .transpose()?;
    let mut grads = AttentionGrads::default();
    if !(want.dq || want.dk || want.dv || want_position_bias) {
        return Ok((grads, None));
    }
    let stream = &b.device.stream;
    let starts = padded_starts(b, OP, &d)?;
    with_float!(dtype, OP, T => {
        let exact = b.precision == Precision::F32 && T::SUFFIX == "f32";
        let dp = if exact { 0 } else { padded_head_dim(OP, d.head_dim)? };
        let mut delta = b.output::<f32>(d.batch * d.heads * d.seq)?;
        let mut dq = if want.dq { Some(b.output::<T>(q.numel())?) } else { None };
        let mut dk = if want.dk { Some(b.output::<T>(q.numel())?) } else { None };
        let mut dv = if want.dv { Some(b.output::<T>(q.numel())?) } else { None };
        let diagonals = shapes::position_bias_rows(d.seq);
        let mut d_bias = if want_position_bias { Some(b.output::<f32>(diagonals * d.heads)?) } else { None };
        let storage = tc_storage(q.dtype(), T::SUFFIX);
        // The bf16qkv_f32 kernels stage dO in bf16, as they stage q, k, v: rounded here once,
        // with the rounding their f32 staging applied, for the two kernels that read it.
        let d_out_rounded = match storage {
            "bf16qkv_f32" => Some(super::elementwise::cast(b, d_out, DType::BF16)?),
            _ => None,
        };
        {
            let mut p = base_params(&d, config);
            let (pq, _gq) = Buf::of(OP, q)?.ptr(stream);
            let (pk, _gk) = Buf::of(OP, k)?.ptr(stream);
            // Only dq and dk read v (and delta); dV alone gets a null v.
            let (pv, _gv) = match v {
                Some(v) => { let (p, g) = Buf::of(OP, v)?.ptr(stream); (p, Some(g)) }
                None => (0, None),
            };
            let (pd, _gd) = Buf::of(OP, d_out_rounded.as_ref().unwrap_or(d_out))?.ptr(stream);
            let (pl, _gl) = view::<f32>(lse).device_ptr(stream);
            let (pm, _gm) = ids(mask).device_ptr(stream);
            let (ps, _gs) = starts.device_ptr(stream);
            let (pdelta, _gdelta) = delta.device_ptr_mut(stream);
            (p.q, p.k, p.v, p.dout, p.lse, p.mask, p.starts, p.delta) = (pq, pk, pv, pd, pl, pm, ps, pdelta);
            let mut guards = Vec::new();
            if let Some(t) = dq.as_mut() { let (ptr, g) = t.device_ptr_mut(stream); p.dq = ptr; guards.push(g); }
            if let Some(t) = dk.as_mut() { let (ptr, g) = t.device_ptr_mut(stream); p.dk = ptr; guards.push(g); }
            if let Some(t) = dv.as_mut() { let (ptr, g) = t.device_ptr_mut(stream); p.dv = ptr; guards.push(g); }
            if let Some(t) = d_bias.as_mut() { let (ptr, g) = t.device_ptr_mut(stream); p.d_pos_bias = ptr; guards.push(g); }
            let (pb, _gb) = match &position_bias {
                Some(bias) => { let (ptr, g) = view::<f32>(bias).device_ptr(stream); (ptr, Some(g)) }
                None => (0, None),
            };
            p.pos_bias = pb;
            let needs_delta = want.dq || want.dk || want_position_bias;
            if exact {
                // delta = Σ_j P·dP in f32, in the dQ kernel's loop (it reads what dQ reads).
                if needs_delta {
                    launch_tiles(b, OP, "attention_backward_delta_exact", &d, 32, 32, f32_kernel_shared(d.head_dim)[2], &p)?;
                }
                if want.dk || want.dv {
                    launch_tiles(b, OP, "attention_backward_dkdv_exact", &d, 32, 32, f32_kernel_shared(d.head_dim)[1], &p)?;
                }
                if want.dq {
                    launch_tiles(b, OP, "attention_backward_dq_exact", &d, 32, 32, f32_kernel_shared(d.head_dim)[2], &p)?;
                }
            } else {
                let (variant, smem) = biased_tc_variant(b, position_bias.is_some(), storage, dp, BACKWARD_KEPT);
                // The dQ kernel writes delta first (with dq null it does only that).
                if needs_delta {
                    launch_tiles(b, OP, &format!("attention_backward_dq_tc_{variant}"), &d, 64, 128, smem, &p)?;
                }
                if want.dk || want.dv {
                    launch_tiles(b, OP, &format!("attention_backward_dkdv_tc_{variant}"), &d, 64, 128, smem, &p)?;
                }
            }
            if want_position_bias {
                // What the other kernels read: f32 in the exact ones; bf16 q, k, v and dO in
                // the bf16 storages; f32 rows rounded to bf16 where the tensor-core kernels
                // stage them so.
                let kernel = match (exact, storage) {
                    (true, _) => "attention_position_bias_tiles_f32",
                    (false, "bf16" | "bf16qkv_f32") => "attention_position_bias_tiles_bf16",
                    (false, _) => "attention_position_bias_tiles_f32_rounded",
                };
                launch_position_bias_grad(b, OP, kernel, &d, &p)?;
            }
            drop(guards);
        }
        grads.dq = dq.map(|t| tensor(q.shape().clone(), t)).transpose()?;
        grads.dk = dk.map(|t| tensor(q.shape().clone(), t)).transpose()?;
        grads.dv = dv.map(|t| tensor(q.shape().clone(), t)).transpose()?;
        let d_bias = match (d_bias, bias_dtype) {
            (Some(t), Some(dtype)) => {
                let t = tensor([diagonals, d.heads], t)?;
                Some(if dtype == DType::F32 { t } else { super::elementwise::cast(b, &t, dtype)? })
            }
            _ => None,
        };
        Ok((grads, d_bias))
    })
}

/// Scores per side of the tiles whose diagonal sums `attention_position_bias_tiles_*` writes
/// (`BIAS_TILE` in kernels/attention.cu).
const BIAS_TILE: usize = 32;

/// Launches the position bias's gradient: `tiles_kernel` (one block of 128 threads per
/// tile pair of `BIAS_TILE` × `BIAS_TILE` scores, head and sequence, writing the tiles'
/// diagonal sums), then `attention_position_bias_sum` (one block per relative distance and
/// head, adding them up in a fixed order).
fn launch_position_bias_grad(
    b: &CudaBackend,
    op: &'static str,
    tiles_kernel: &str,
    d: &AttentionDims,
    p: &AttentionParams,
) -> Result<()> {
    // A grid's x dimension takes 2^31 − 1 blocks on every device CUDA 13 runs on.
    const MAX_GRID_X: usize = (1 << 31) - 1;
    let tiles = d.seq.div_ceil(BIAS_TILE);
    let pairs = tiles * tiles;
    if pairs > MAX_GRID_X {
        return Err(Error::invalid(
            op,
            format!(
                "sequences of {} tokens: the position bias's gradient launches one block per \
                 pair of {BIAS_TILE}-token tiles ({pairs}), more than a grid takes",
                d.seq
            ),
        ));
    }
    let mut diagonal_sums = b.output::<f32>(d.batch * d.heads * pairs * (2 * BIAS_TILE - 1))?;
    let stream = &b.device.stream;
    let (sums_ptr, _sums_guard) = diagonal_sums.device_ptr_mut(stream);
    let p = AttentionParams {
        bias_tiles: sums_ptr,
        ..*p
    };
    // This checks the heads against the grid's y limit before either launch.
    launch_per_head_and_sequence(b, op, tiles_kernel, d, pairs, 128, 0, &p)?;
    let kernel = "attention_position_bias_sum";
    let f = b.function(MODULE, kernel)?;
    let cfg = LaunchConfig {
        grid_dim: (shapes::position_bias_rows(d.seq) as u32, d.heads as u32, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut l = stream.launch_builder(&f);
    l.arg(&p);
    // SAFETY: AttentionParams mirrors the kernel's struct; the diagonal sums it reads were
    // written above for every (sequence, head, tile pair), and its output, the bias's
    // gradient, was taken from a live buffer by the caller; both stay alive past this call.
    b.launched(op, kernel, || unsafe { l.launch(cfg) })
}

impl CudaBackend {
    /// The same device with the tensor-core attention kernels' streamed tiles (keys and
    /// values, or queries and their output gradients) in `stages` stage buffers, one of
    /// [`ATTENTION_STAGES`]: 1 (the default) waits for each tile's copies before its
    /// products; 2 copies the next tile while the current one computes, in twice the streamed
    /// tiles' shared memory. The same bits either way (the products read the same tiles in
    /// the same order); where two are not compiled (f32 storage) or do not fit the device's
    /// shared memory, one runs. The GPU check's microbenchmark (`benches/gpu_attention.rs`)
    /// times both.
    pub fn with_attention_stages(&self, stages: usize) -> Result<Self> {
        if !ATTENTION_STAGES.contains(&stages) {
            return Err(Error::invalid(
                "attention stages",
                format!("{stages} is not one of {ATTENTION_STAGES:?}"),
            ));
        }
        Ok(CudaBackend {
            attention_stages: stages,
            ..self.clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two stages where they are compiled and fit: not for f32 rows, and not for the backward
    /// kernels at head dim 128 on a GPU whose blocks may opt into 99 KiB (sm_86, sm_89: 101376
    /// bytes), where one stage (69 KiB) runs, though the forward's two stages (87 KiB) fit; an
    /// H100's 227 KiB hold them all.
    #[test]
    fn two_stages_where_compiled_and_within_shared_memory() {
        const SM89: u32 = 101_376;
        const H100: u32 = 232_448;
        assert_eq!(tc_shared(64, 1, 2), (4 * 64 * 72 * 2 + 4 * 64 * 4) as u32);
        assert_eq!(
            tc_shared(128, 2, 2),
            (6 * 64 * 136 * 2 + 2 * 4 * 64 * 4) as u32
        );
        assert_eq!(
            tc_shared(128, 2, 1),
            (5 * 64 * 136 * 2 + 2 * 4 * 64 * 4) as u32
        );
        let name = |stages, storage, dp, kept, max| tc_variant(stages, storage, dp, kept, max).0;
        assert_eq!(name(2, "bf16", 128, BACKWARD_KEPT, H100), "bf16_d128_s2");
        assert_eq!(
            name(2, "bf16qkv_f32", 64, BACKWARD_KEPT, SM89),
            "bf16qkv_f32_d64_s2"
        );
        assert_eq!(name(2, "bf16", 128, BACKWARD_KEPT, SM89), "bf16_d128_s1");
        assert_eq!(name(2, "bf16", 128, FORWARD_KEPT, SM89), "bf16_d128_s2");
        assert_eq!(name(2, "f32", 32, FORWARD_KEPT, H100), "f32_d32_s1");
        assert_eq!(name(1, "bf16", 32, BACKWARD_KEPT, H100), "bf16_d32_s1");
        assert_eq!(
            tc_variant(2, "bf16", 128, BACKWARD_KEPT, SM89).1,
            tc_shared(128, 1, BACKWARD_KEPT)
        );
    }

    /// A head dim whose shared memory passes 4 GiB reads as the most there is, so the limit
    /// check refuses it (the product wrapped to a size that passed before).
    #[test]
    fn shared_memory_of_huge_head_dims_saturates() {
        assert_eq!(f32_shared(64, 2, 2, 16), ((2 * 32 + 2 * 16) * 65 + 16) * 4);
        for head_dim in [11_200_000, 1 << 40, usize::MAX] {
            assert!(
                f32_kernel_shared(head_dim).iter().all(|&b| b == u32::MAX),
                "{head_dim}"
            );
        }
    }
}
