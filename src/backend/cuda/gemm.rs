//! Launchers of `kernels/gemm.cu`: the linear map with fused LoRA and every piece of its
//! backward (the bias gradient through `bias_grad.rs`).
//!
//! Forward: `H = X_lora·Aᵀ` (a skinny GEMM, kept for `dB`), then ONE GEMM over
//! `[X | H]·[W | s·B]ᵀ + b`: the LoRA term is `r` extra reduction columns. Backward, each only
//! on request: `G = s·dY·B` (skinny); `dX = [dY | G]·[W ; A]` (the LoRA term fused when the
//! adapter reads `x` itself); `dX_lora = G·A`; `dW = dYᵀ·X`, `dA = Gᵀ·X_lora`,
//! `dB = s·dYᵀ·H` (long reductions over rows into small outputs: split-K with a fixed split and
//! a fixed-order reduction); `db` (column sums). Deterministic throughout: no atomics.
//!
//! In bf16 precision the GEMMs run on tensor cores (operands bf16 or f32 in memory, per
//! operand) with one of the tile configurations in [`TILES`] (chosen per shape, or forced
//! with [`CudaBackend::with_gemm_tile`] — the GPU check sweeps them all); in f32 precision a
//! plain tiled FMA kernel computes them exactly.

use cudarc::driver::{
    CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg,
    SyncOnDrop,
};
use half::bf16;

use super::{
    driver, grid_for, kernel_int, launch, tensor, view, with_float, CudaBackend, CudaBuffer,
    CudaFloat, Precision,
};
use crate::backend::shapes::{self, LinearDims};
use crate::backend::{
    Backend, LinearBackwardInputs, LinearForwardOptions, LinearGradRequest, LinearGrads,
    LinearOutput, LoraWeights,
};
use crate::error::{Error, Result};
use crate::tensor::{DType, Shape, Tensor};

const MODULE: &str = "gemm";

/// One launch's operands; field for field the `GemmParams` of `kernels/gemm_params.cuh`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct GemmParams {
    a: [u64; 2],
    b: [u64; 2],
    lda: [i64; 2],
    ldb: [i64; 2],
    k: [i32; 2],
    m: i32,
    n: i32,
    c: u64,
    ldc: i64,
    bias: u64,
    alpha: f32,
    split: i32,
    flags: i32,
    m_block0: i32,
}

// SAFETY: a plain C struct of integers and floats, laid out as the kernel's.
unsafe impl DeviceRepr for GemmParams {}

/// Which dimension of each operand is contiguous (the kernels' `A_KMAJOR` / `B_KMAJOR`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Layout {
    /// `A[m, k]` at `a[m·lda + k]`, `B[k, n]` at `b[n·ldb + k]`: `X·Wᵀ`.
    Kk,
    /// `A[m, k]` at `a[m·lda + k]`, `B[k, n]` at `b[k·ldb + n]`: `dY·W`.
    Kn,
    /// `A[m, k]` at `a[k·lda + m]`, `B[k, n]` at `b[k·ldb + n]`: `dYᵀ·X`.
    Mn,
}

impl Layout {
    fn suffix(self) -> &'static str {
        match self {
            Layout::Kk => "kk",
            Layout::Kn => "kn",
            Layout::Mn => "mn",
        }
    }
}

/// A tensor-core tile configuration of `kernels/gemm.cu`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tile {
    /// The name in the kernel entry (`gemm_bf16_<layout>_<name>`).
    pub name: &'static str,
    /// Block tile rows.
    pub bm: usize,
    /// Block tile columns.
    pub bn: usize,
    /// Reduction depth of one pipeline stage.
    pub bk: usize,
    /// Warps along M and N.
    pub warps: (usize, usize),
    /// Pipeline depth (`cp.async` stages in flight).
    pub stages: usize,
}

impl Tile {
    /// Threads per block.
    pub fn threads(&self) -> usize {
        self.warps.0 * self.warps.1 * 32
    }

    /// Dynamic shared memory of one block for `layout`: `stages` × (A tile + B tile), rows
    /// padded by 8 elements so ldmatrix rows fall in distinct banks.
    fn shared_bytes(&self, layout: Layout) -> usize {
        let (a_kmajor, b_kmajor) = match layout {
            Layout::Kk => (true, true),
            Layout::Kn => (true, false),
            Layout::Mn => (false, false),
        };
        let a = if a_kmajor {
            self.bm * (self.bk + 8)
        } else {
            self.bk * (self.bm + 8)
        };
        let b = if b_kmajor {
            self.bn * (self.bk + 8)
        } else {
            self.bk * (self.bn + 8)
        };
        self.stages * (a + b) * 2
    }
}

/// The tile configurations compiled into `kernels/gemm.cu` (`GEMM_TC_CONFIGS` there).
pub const TILES: &[Tile] = &[
    Tile {
        name: "128x128x32_w2x4_s3",
        bm: 128,
        bn: 128,
        bk: 32,
        warps: (2, 4),
        stages: 3,
    },
    Tile {
        name: "128x256x32_w2x4_s3",
        bm: 128,
        bn: 256,
        bk: 32,
        warps: (2, 4),
        stages: 3,
    },
    Tile {
        name: "128x64x32_w2x2_s4",
        bm: 128,
        bn: 64,
        bk: 32,
        warps: (2, 2),
        stages: 4,
    },
    Tile {
        name: "64x128x32_w2x2_s4",
        bm: 64,
        bn: 128,
        bk: 32,
        warps: (2, 2),
        stages: 4,
    },
    Tile {
        name: "64x64x32_w2x2_s4",
        bm: 64,
        bn: 64,
        bk: 32,
        warps: (2, 2),
        stages: 4,
    },
    Tile {
        name: "64x64x64_w2x2_s3",
        bm: 64,
        bn: 64,
        bk: 64,
        warps: (2, 2),
        stages: 3,
    },
    // Added after the first H200 sweep, where 128×128×32 won every shape at ~22% of cuBLAS:
    // twice the k-depth per barrier, and one more stage in flight.
    Tile {
        name: "128x128x64_w2x4_s3",
        bm: 128,
        bn: 128,
        bk: 64,
        warps: (2, 4),
        stages: 3,
    },
    Tile {
        name: "128x128x32_w2x4_s4",
        bm: 128,
        bn: 128,
        bk: 32,
        warps: (2, 4),
        stages: 4,
    },
    // The large tile's geometry in two stages (72-74 KiB of shared memory instead of 102-108):
    // for GPUs that let a block opt into 99 KiB only (sm_86, sm_89, sm_120).
    Tile {
        name: "128x128x64_w2x4_s2",
        bm: 128,
        bn: 128,
        bk: 64,
        warps: (2, 4),
        stages: 2,
    },
    // The large tile's geometry on four warps of 64 × 64 outputs each instead of eight of
    // 64 × 32 (CUTLASS's classic Ampere shape): twice the MMAs per fragment loaded and per
    // warp, so more independent work between a warp's stalls, at the price of ~2× the
    // accumulator registers and half the warps. On an H200 the eight-warp tile kept its tensor
    // cores waiting on instruction issue with 0.83 eligible warps per scheduler (ncu,
    // 2026-12-04); whether fewer, busier warps do better is for the sweep to say.
    Tile {
        name: "128x128x64_w2x2_s3",
        bm: 128,
        bn: 128,
        bk: 64,
        warps: (2, 2),
        stages: 3,
    },
    Tile {
        name: "128x128x32_w2x2_s4",
        bm: 128,
        bn: 128,
        bk: 32,
        warps: (2, 2),
        stages: 4,
    },
];

/// A tile by name.
pub fn tile(name: &str) -> Option<Tile> {
    TILES.iter().copied().find(|t| t.name == name)
}

/// The tile every output of at least 128 × 128 gets: on an H200 (NOTES.md, 2026-12-04) it
/// was the fastest, or within 4% of it, for every GEMM of a BERT-base step (forward, dX and,
/// with split-K filling the GPU, dW) and in the square sweep.
const LARGE_TILE: &str = "128x128x64_w2x4_s3";

/// Block slots of an H100/H200 for the large tile: 132 SMs × 2 resident blocks (its
/// registers and shared memory allow two; ncu on an H200). A constant rather than the
/// device's SM count: the split, and so the rounding of a result, must not depend on the GPU.
const LARGE_TILE_SLOTS: usize = 264;

/// The large tile in two pipeline stages, for GPUs whose blocks may not opt into the large
/// tile's shared memory (up to 108 KiB; sm_86 and sm_89 allow 99). The same block and k-tile
/// geometry, so the same split and the same sums in the same order: the same bits.
const LARGE_TILE_TWO_STAGES: &str = "128x128x64_w2x4_s2";

/// The default tile for an `m × n` output in `layout` on a device whose blocks may use
/// `max_shared` bytes of shared memory: the large tile when the output has its size (in two
/// stages where three do not fit), else the largest smaller tile that still gives one block
/// per SM of an H100/H200 (132), else the smallest.
fn default_tile(m: usize, n: usize, layout: Layout, max_shared: usize) -> Tile {
    let blocks = |t: &Tile| m.div_ceil(t.bm) * n.div_ceil(t.bn);
    let pick = |name| tile(name).expect("a compiled tile");
    if m >= 128 && n >= 128 {
        let large = pick(LARGE_TILE);
        return if large.shared_bytes(layout) <= max_shared {
            large
        } else {
            pick(LARGE_TILE_TWO_STAGES)
        };
    }
    for name in ["128x64x32_w2x2_s4", "64x128x32_w2x2_s4"] {
        let t = pick(name);
        if m >= t.bm && n >= t.bn && blocks(&t) >= 132 {
            return t;
        }
    }
    pick("64x64x32_w2x2_s4")
}

/// Splits of the reduction for an output of `blocks` tiles of `tile` over `k_tiles` k-tiles.
/// A function of the shape only, so results never depend on the device.
///
/// The large tile splits a long reduction (32 k-tiles or more) whose output is fewer blocks
/// than the GPU has SMs into the 1, 2, 4 or 8 slices that fill the block slots' waves best,
/// the fewer on a tie (each slice costs a pass over an f32 workspace). Measured on an H200
/// (NOTES.md, 2026-12-04, the fourth call): outputs of 132 blocks or more ran fastest
/// unsplit or within 3% of it (4096×768 from K = 3072: 155–170 TFLOP/s unsplit, 135 split 4),
/// the 768×768 weight gradient from 4096 rows (36 blocks) best split 4 (76 against 50);
/// on the nine GEMMs of a BERT-base step this rule is within 3% of the large tile's best
/// split. Smaller tiles split only outputs of under 64 blocks (the `dA` and `dB` reductions
/// over all rows).
fn split_for(tile: Option<Tile>, blocks: usize, k_tiles: usize) -> usize {
    // Both stage counts of the large tile: their splits must agree for their bits to.
    if tile.is_some_and(|t| (t.bm, t.bn, t.bk) == (128, 128, 64)) {
        if blocks >= LARGE_TILE_SLOTS / 2 || k_tiles < 32 {
            return 1;
        }
        let filled = |split: usize| {
            let n = blocks * split;
            n as f64 / (n.div_ceil(LARGE_TILE_SLOTS) * LARGE_TILE_SLOTS) as f64
        };
        return [2, 4, 8].into_iter().fold(1, |best, split| {
            if filled(split) > filled(best) * 1.01 {
                split
            } else {
                best
            }
        });
    }
    if blocks >= 64 {
        return 1;
    }
    (k_tiles / 4)
        .min(128usize.div_ceil(blocks))
        .clamp(1, MAX_SPLIT)
}

/// The most slices a reduction is split into.
const MAX_SPLIT: usize = 32;

/// The fewest elements of an f32 operand worth rounding to bf16 in a launch of its own.
const PRECAST_MIN_ELEMENTS: usize = 1 << 16;

/// Whether rounding an f32 operand of `elements` elements in rows of `ld` to bf16 before the
/// GEMMs that read it pays on `b`: the backend allows it, the operand is large enough for the
/// extra launch, and its rows are 16-byte aligned in bf16 so that `cp.async` can stream it.
fn precast_pays(b: &CudaBackend, ld: usize, elements: usize) -> bool {
    b.gemm_precast && ld.is_multiple_of(8) && elements >= PRECAST_MIN_ELEMENTS
}

/// A float device buffer of either storage dtype.
#[derive(Clone, Copy)]
pub(super) enum Buf<'a> {
    F32(&'a CudaSlice<f32>),
    Bf16(&'a CudaSlice<bf16>),
}

impl<'a> Buf<'a> {
    pub(super) fn of(op: &'static str, t: &'a Tensor<CudaBackend>) -> Result<Self> {
        match t.buffer() {
            CudaBuffer::F32(s) => Ok(Buf::F32(s)),
            CudaBuffer::BF16(s) => Ok(Buf::Bf16(s)),
            CudaBuffer::U32(_) => Err(Error::dtype(op, "a GEMM operand must be a float tensor")),
        }
    }

    fn is_bf16(self) -> bool {
        matches!(self, Buf::Bf16(_))
    }

    pub(super) fn ptr<'s>(self, stream: &'s CudaStream) -> (u64, SyncOnDrop<'s>)
    where
        'a: 's,
    {
        match self {
            Buf::F32(s) => s.device_ptr(stream),
            Buf::Bf16(s) => s.device_ptr(stream),
        }
    }
}

/// One operand: a device buffer read as a matrix with leading dimension `ld`.
pub(super) struct Operand<'a> {
    pub(super) buf: Buf<'a>,
    ld: usize,
}

fn operand<'a>(t: &'a Tensor<CudaBackend>, ld: usize) -> Result<Operand<'a>> {
    Ok(Operand {
        buf: Buf::of("gemm", t)?,
        ld,
    })
}

// Bits of GemmParams::flags (kernels/gemm.cu): which buffers hold bf16 (else f32).
const A0_BF16: i32 = 1;
const A1_BF16: i32 = 2;
const B0_BF16: i32 = 4;
const B1_BF16: i32 = 8;
const C_BF16: i32 = 16;
const BIAS_BF16: i32 = 32;
/// Round every operand to bf16 before it multiplies (the CUDA-core kernels of
/// `kernels/gemm_skinny.cu` in bf16 precision).
pub(super) const ROUND_BF16: i32 = 64;

/// `C[m, n] = alpha · Σ_segments A·B (+ bias)`, one or two segments of reduction length `k`,
/// `C` in `out`.
pub(super) struct Gemm<'a> {
    pub(super) layout: Layout,
    pub(super) m: usize,
    pub(super) n: usize,
    pub(super) segments: Vec<(Operand<'a>, Operand<'a>, usize)>,
    alpha: f64,
    bias: Option<Buf<'a>>,
    out: DType,
}

impl<'a> Gemm<'a> {
    fn run(&self, b: &CudaBackend) -> Result<CudaBuffer> {
        with_float!(self.out, "gemm", T => self.run_into::<T>(b).map(T::wrap))
    }

    fn run_into<T: CudaFloat>(&self, b: &CudaBackend) -> Result<CudaSlice<T>> {
        const OP: &str = "gemm";
        let (m, n) = (self.m, self.n);
        // The kernels index rows, columns and the reduction with `int`.
        for d in [m, n].into_iter().chain(self.segments.iter().map(|s| s.2)) {
            kernel_int(OP, "a dimension", d)?;
        }
        // A grid of no blocks (and the splits' arithmetic over it) has nothing to run: said
        // as every empty tensor on CUDA is, not as a fault.
        if m == 0 || n == 0 || self.segments.iter().any(|s| s.2 == 0) {
            return Err(Error::invalid(
                OP,
                format!(
                    "a product of {m} × {n} over depths {:?}: empty tensors are not supported \
                     on CUDA (the CPU backend takes them)",
                    self.segments.iter().map(|s| s.2).collect::<Vec<_>>()
                ),
            ));
        }
        let out_bf16 = T::SUFFIX == "bf16";
        if let Some(bias) = self.bias {
            // An f32 bias may add to f32 sums stored in bf16 (an output for products).
            if bias.is_bf16() && !out_bf16 {
                return Err(Error::dtype(OP, "a bf16 bias needs a bf16 output"));
            }
        }
        let any_bf16 = out_bf16
            || self
                .segments
                .iter()
                .any(|(a, bo, _)| a.buf.is_bf16() || bo.buf.is_bf16());
        // Exact f32 FMA only where everything is f32 and the backend asks for exactness.
        let tile = if b.precision == Precision::F32 && !any_bf16 {
            None
        } else {
            Some(match b.gemm_tile {
                Some(name) => tile(name)
                    .ok_or_else(|| Error::invalid(OP, format!("no GEMM tile named `{name}`")))?,
                None => default_tile(m, n, self.layout, b.device.max_shared_per_block as usize),
            })
        };
        // A narrow output of a tall GEMM goes to the CUDA-core kernels made for it, unless a
        // tile is forced (how the tests and the sweep reach every tile) or they are off.
        if b.gemm_skinny && b.gemm_tile.is_none() {
            if let Some(kind) = super::gemm_skinny::kind(self, b) {
                return super::gemm_skinny::run(self, b, kind, tile.is_some());
            }
        }
        let (bm, bn, bk, threads) = match tile {
            Some(t) => (t.bm, t.bn, t.bk, t.threads()),
            None => (64, 64, 16, 256),
        };
        // An f32 operand the kernel rounds to bf16 itself goes through registers with
        // synchronous loads whose latency nothing hides (on an H200, 65% of the stall cycles of
        // the bench step's weight-gradient GEMM). One that two or more blocks read (along the
        // output's other dimension) is rounded to bf16 in a pass of its own first, with the
        // same rounding, so the kernel streams it with cp.async and the result has the same
        // bits. Not for small operands, whose extra launch would cost more than it saves.
        let rounded = self
            .segments
            .iter()
            .map(|(a, bo, _)| -> Result<_> {
                let round = |o: &Operand<'_>, readers: usize| match (tile, o.buf) {
                    (Some(_), Buf::F32(s)) if readers >= 2 && precast_pays(b, o.ld, s.len()) => {
                        super::elementwise::round_to_bf16(b, s, s.len()).map(Some)
                    }
                    _ => Ok(None),
                };
                Ok((round(a, n.div_ceil(bn))?, round(bo, m.div_ceil(bm))?))
            })
            .collect::<Result<Vec<_>>>()?;
        let k_tiles: usize = self.segments.iter().map(|s| s.2.div_ceil(bk)).sum();
        let blocks = m.div_ceil(bm) * n.div_ceil(bn);
        // Every GPU's z limit (65535) is far above split-K's 32 slices; the stand-in's may be
        // lowered below it (SPAFIT_EMU_MAX_GRID_Z), and then fewer slices run.
        let split = b
            .gemm_split
            .unwrap_or_else(|| split_for(tile, blocks, k_tiles))
            .min(k_tiles.max(1))
            .min(b.device.max_grid_z);
        let bufs: Vec<_> = self
            .segments
            .iter()
            .zip(&rounded)
            .map(|((a, bo, _), (a_rounded, b_rounded))| {
                (
                    a_rounded.as_ref().map_or(a.buf, Buf::Bf16),
                    b_rounded.as_ref().map_or(bo.buf, Buf::Bf16),
                )
            })
            .collect();
        let (name, smem) = match tile {
            Some(t) => (
                format!("gemm_tc_{}_{}", self.layout.suffix(), t.name),
                t.shared_bytes(self.layout) as u32,
            ),
            None => (format!("gemm_f32_{}", self.layout.suffix()), 0),
        };
        let f = b.function_with_shared(MODULE, &name, smem)?;
        self.run_with(b, &bufs, split, 0, |p| {
            // Row blocks beyond the grid's y limit go to further launches of the same kernel.
            let (m_blocks, max_grid_y) = (m.div_ceil(bm), b.device.max_grid_y);
            for m_block0 in (0..m_blocks).step_by(max_grid_y) {
                p.m_block0 = m_block0 as i32;
                let rows = (m_blocks - m_block0).min(max_grid_y);
                let cfg = LaunchConfig {
                    grid_dim: (n.div_ceil(bn) as u32, rows as u32, split as u32),
                    block_dim: (threads as u32, 1, 1),
                    shared_mem_bytes: smem,
                };
                let mut l = b.device.stream.launch_builder(&f);
                l.arg(&*p);
                // SAFETY: GemmParams mirrors the kernel's struct; every pointer is a live
                // buffer holding the rows × ld elements the kernel reads (checked by the
                // callers' shape validation) in the dtype its flag names, and `c` holds m × n
                // (split × m × n f32) elements; the blocks of this launch cover row blocks
                // m_block0 .. m_block0 + rows, all inside m.
                b.launched(OP, &name, || unsafe { l.launch(cfg) })?;
            }
            Ok(())
        })
    }

    /// The GEMM into a fresh output of its dtype: `launch` queues the kernel(s) with the
    /// parameter block of operands `bufs` (per segment: the segment's own buffers or bf16
    /// copies of them) and `flags` added, writing C itself or, with `split` > 1, an f32
    /// workspace of `split` slices that are then added into C in order.
    pub(super) fn run_with<T: CudaFloat>(
        &self,
        b: &CudaBackend,
        bufs: &[(Buf<'_>, Buf<'_>)],
        split: usize,
        flags: i32,
        launch: impl FnOnce(&mut GemmParams) -> Result<()>,
    ) -> Result<CudaSlice<T>> {
        let (m, n) = (self.m, self.n);
        let mut out = b.output::<T>(m * n)?;
        let mut workspace = if split > 1 {
            Some(b.output::<f32>(split * m * n)?)
        } else {
            None
        };
        {
            let stream = &b.device.stream;
            let (mut p, guards) = self.params(stream, bufs, T::SUFFIX == "bf16");
            p.split = split as i32;
            p.flags |= flags;
            let (pc, gc) = match workspace.as_mut() {
                Some(w) => w.device_ptr_mut(stream),
                None => out.device_ptr_mut(stream),
            };
            p.c = pc;
            launch(&mut p)?;
            drop(gc);
            drop(guards);
        }
        if let Some(ws) = workspace {
            self.reduce(b, &ws, split, &mut out)?;
        }
        Ok(out)
    }

    /// The launch's parameter block with operands `bufs` (per segment: the segment's own
    /// buffers or bf16 copies of them), the output dtype, the bias, `alpha` and one slice:
    /// the caller sets `c`, and `split` where it splits. Raw pointers go into the block; the
    /// guards keep cudarc's stream bookkeeping alive until the launch is queued.
    fn params<'s>(
        &self,
        stream: &'s CudaStream,
        bufs: &[(Buf<'s>, Buf<'s>)],
        out_bf16: bool,
    ) -> (GemmParams, Vec<SyncOnDrop<'s>>)
    where
        'a: 's,
    {
        let mut p = GemmParams {
            m: self.m as i32,
            n: self.n as i32,
            ldc: self.n as i64,
            alpha: self.alpha as f32,
            split: 1,
            flags: if out_bf16 { C_BF16 } else { 0 },
            ..Default::default()
        };
        let mut guards = Vec::new();
        for (i, ((a, bo, k), (a_buf, b_buf))) in self.segments.iter().zip(bufs).enumerate() {
            let (pa, ga) = a_buf.ptr(stream);
            let (pb, gb) = b_buf.ptr(stream);
            guards.push(ga);
            guards.push(gb);
            p.a[i] = pa;
            p.b[i] = pb;
            p.lda[i] = a.ld as i64;
            p.ldb[i] = bo.ld as i64;
            p.k[i] = *k as i32;
            if a_buf.is_bf16() {
                p.flags |= if i == 0 { A0_BF16 } else { A1_BF16 };
            }
            if b_buf.is_bf16() {
                p.flags |= if i == 0 { B0_BF16 } else { B1_BF16 };
            }
        }
        if let Some(bias) = self.bias {
            let (pb, g) = bias.ptr(stream);
            guards.push(g);
            p.bias = pb;
            if bias.is_bf16() {
                p.flags |= BIAS_BF16;
            }
        }
        (p, guards)
    }

    /// `out = alpha · Σ_z ws[z] (+ bias)`: the slices of a split reduction, added in z order.
    fn reduce<T: CudaFloat>(
        &self,
        b: &CudaBackend,
        ws: &CudaSlice<f32>,
        split: usize,
        out: &mut CudaSlice<T>,
    ) -> Result<()> {
        let (m, n) = (self.m, self.n);
        let count = (m * n) as i64;
        let reduce_kernel = match self.bias {
            Some(Buf::F32(_)) if T::SUFFIX == "bf16" => "gemm_reduce_bf16_bias_f32".to_string(),
            _ => format!("gemm_reduce_{}", T::SUFFIX),
        };
        let f = b.function(MODULE, &reduce_kernel)?;
        let mut l = b.device.stream.launch_builder(&f);
        let (split_i, n_i, alpha, ldc) = (split as i32, n as i32, self.alpha as f32, n as i64);
        l.arg(ws).arg(&split_i).arg(&count).arg(&n_i).arg(&alpha);
        let (bias_ptr, bias_guard) = match self.bias {
            Some(bias) => {
                let (pb, g) = bias.ptr(&b.device.stream);
                (pb, Some(g))
            }
            None => (0u64, None),
        };
        l.arg(&bias_ptr);
        l.arg(out).arg(&ldc);
        // SAFETY: matches gemm_reduce_* in kernels/gemm.cu; ws holds split × m × n f32 and
        // the bias the dtype the kernel's name says (the output's, or f32 for
        // gemm_reduce_bf16_bias_f32; checked in run_into).
        b.launched("gemm", &reduce_kernel, || unsafe {
            l.launch(grid_for(m * n))
        })?;
        drop(bias_guard);
        Ok(())
    }
}

/// `shape` with its last dimension replaced.
fn with_last_dim(shape: &Shape, last: usize) -> Shape {
    let mut dims = shape.dims().to_vec();
    if let Some(l) = dims.last_mut() {
        *l = last;
    }
    Shape::new(dims)
}

/// The dtype of the copies [`rounded_for_products`] makes: bf16 where the products round to
/// it, else the activations' own (`dtype`).
pub(super) fn rounded_dtype(b: &CudaBackend, dtype: DType) -> DType {
    match b.precision {
        Precision::F32 => dtype,
        _ => DType::BF16,
    }
}

/// The dtype an output of `dtype` that only products read is stored in
/// ([`LinearForwardOptions::output_for_products`]): as the products round it where operands
/// are rounded ahead of them, else as computed.
pub(super) fn products_output_dtype(b: &CudaBackend, dtype: DType) -> DType {
    match b.gemm_precast {
        true => rounded_dtype(b, dtype),
        false => dtype,
    }
}

/// See [`crate::backend::Backend::rounded_for_products`]: an f32 `x` rounded to bf16 in the
/// modes whose products round it anyway, when it is large enough for a precast to pay (the
/// same test as a GEMM's own precast, whose rounding this is).
pub(super) fn rounded_for_products(
    b: &CudaBackend,
    x: &Tensor<CudaBackend>,
) -> Result<Option<Tensor<CudaBackend>>> {
    match rounds_for_products(b, x) {
        true => super::elementwise::cast(b, x, DType::BF16).map(Some),
        false => Ok(None),
    }
}

/// Whether [`rounded_for_products`] makes a copy of `x` (or of an output of `x`'s dtype and
/// shape, which the recomputing kernels then store rounded themselves).
pub(super) fn rounds_for_products(b: &CudaBackend, x: &Tensor<CudaBackend>) -> bool {
    matches!(x.buffer(), CudaBuffer::F32(s)
        if b.precision != Precision::F32
            && x.shape().rank() >= 1
            && precast_pays(b, x.shape().last_dim(), s.len()))
}

/// `options.x_rounded`: `x`'s copy from [`rounded_for_products`], which the main product reads
/// in its place. The adapter's bottleneck `H = x·Aᵀ` still reads the f32 `x`, which the narrow
/// rows kernels read four elements a load (bf16 rows one at a time: gemm_skinny.cu) and round
/// the same way. `options.output_for_products`: in bf16 mode the product stores its f32 sums
/// (bias added) rounded to bf16, as the attention kernels would round them on their way in.
#[allow(clippy::too_many_arguments)]
pub(super) fn linear_forward(
    b: &CudaBackend,
    x: &Tensor<CudaBackend>,
    w: &Tensor<CudaBackend>,
    bias: Option<&Tensor<CudaBackend>>,
    lora: Option<LoraWeights<'_, CudaBackend>>,
    x_lora: Option<&Tensor<CudaBackend>>,
    options: LinearForwardOptions<'_, CudaBackend>,
) -> Result<LinearOutput<CudaBackend>> {
    const OP: &str = "linear";
    let d = shapes::linear(x, w, bias, lora.as_ref(), x_lora)?;
    let dtype = x.dtype();
    shapes::weight_dtype(OP, w, dtype, b.frozen_dtype())?;
    let x_rounded = options.x_rounded;
    if let Some(xr) = x_rounded {
        shapes::rounded_input(OP, x, xr, rounded_dtype(b, dtype))?;
    }
    let y_dtype = match options.output_for_products {
        true => products_output_dtype(b, dtype),
        false => dtype,
    };
    let LinearDims {
        rows,
        input,
        output,
        rank,
    } = d;
    let (h, scaled_b) = match &lora {
        Some(l) => {
            let h = Gemm {
                layout: Layout::Kk,
                m: rows,
                n: rank,
                segments: vec![(
                    operand(x_lora.unwrap_or(x), input)?,
                    operand(l.a, input)?,
                    input,
                )],
                alpha: 1.0,
                bias: None,
                out: dtype,
            }
            .run(b)?;
            // s·B, so the adapter is r more reduction columns of the main GEMM.
            let sb = with_float!(dtype, OP, T => {
                let mut sb = b.device.stream.clone_dtod(view::<T>(l.b)).map_err(|e| driver(OP, e))?;
                launch!(b, "elementwise", format!("scale_{}", T::SUFFIX), grid_for(output * rank), &mut sb, &(l.scale as f32), &((output * rank) as i64));
                Ok(tensor([output, rank], sb)?)
            })?;
            (
                Some(Tensor::from_buffer(with_last_dim(x.shape(), rank), h)?),
                Some(sb),
            )
        }
        None => (None, None),
    };
    // A narrow product's rows kernels read f32 rows four at a time and bf16 ones one at a time
    // (gemm_skinny.cu): it reads x, and rounds it the same way.
    let main_x = match x_rounded {
        Some(xr) if !super::gemm_skinny::is_narrow(output) => xr,
        _ => x,
    };
    let mut segments = vec![(operand(main_x, input)?, operand(w, input)?, input)];
    if let (Some(h), Some(sb)) = (&h, &scaled_b) {
        segments.push((operand(h, rank)?, operand(sb, rank)?, rank));
    }
    let y = Gemm {
        layout: Layout::Kk,
        m: rows,
        n: output,
        segments,
        alpha: 1.0,
        bias: bias.map(|t| Buf::of(OP, t)).transpose()?,
        out: y_dtype,
    }
    .run(b)?;
    Ok(LinearOutput {
        y: Tensor::from_buffer(with_last_dim(x.shape(), output), y)?,
        h,
    })
}

fn require<'a>(
    grad: &str,
    name: &str,
    t: Option<&'a Tensor<CudaBackend>>,
) -> Result<&'a Tensor<CudaBackend>> {
    t.ok_or_else(|| {
        Error::invalid(
            "linear backward",
            format!("{grad} was requested but `{name}` was not given"),
        )
    })
}

pub(super) fn linear_backward(
    b: &CudaBackend,
    inp: LinearBackwardInputs<'_, CudaBackend>,
    want: LinearGradRequest,
) -> Result<LinearGrads<CudaBackend>> {
    const OP: &str = "linear backward";
    let (dtype, d) = shapes::linear_backward(&inp, rounded_dtype(b, inp.dy.dtype()))?;
    if let Some(w) = inp.w {
        shapes::weight_dtype(OP, w, dtype, b.frozen_dtype())?;
    }
    let LinearDims {
        rows,
        input,
        output,
        rank,
    } = d;
    let fused_lora = want.dx && want.dx_includes_lora && inp.lora.is_some();
    if (want.dlora_a || want.dlora_input || want.dlora_b) && inp.lora.is_none() {
        return Err(Error::invalid(
            OP,
            "a LoRA gradient was requested without LoRA weights",
        ));
    }
    let in_shape = with_last_dim(inp.dy.shape(), input);
    let gemm = |layout, m, n, segments, alpha| Gemm {
        layout,
        m,
        n,
        segments,
        alpha,
        bias: None,
        out: dtype,
    };
    let wrap = |shape: Shape, buf| Tensor::from_buffer(shape, buf);
    let dy = inp.dy;
    // dY feeds both dX and dW (and the LoRA products): where the GEMMs would round an f32 dY
    // to bf16 (see `Gemm::run_into`), it is rounded once for all of them, with the same
    // rounding, so the results keep their bits. The bias gradient sums the f32 dY.
    let dy_rounded = match want.dx && want.dw {
        true => rounded_for_products(b, dy)?,
        false => None,
    };
    let dy_gemm = dy_rounded.as_ref().unwrap_or(dy);
    let mut g = LinearGrads::default();
    // G = s·dY·B: [rows, r], the adapter's bottleneck gradient, shared by dX, dX_lora, dA.
    let bottleneck = match &inp.lora {
        Some(l) if want.dlora_a || want.dlora_input || fused_lora => {
            let seg = vec![(operand(dy_gemm, output)?, operand(l.b, rank)?, output)];
            Some(wrap(
                Shape::new([rows, rank]),
                gemm(Layout::Kn, rows, rank, seg, l.scale).run(b)?,
            )?)
        }
        _ => None,
    };
    if want.dx {
        let w = require("dX", "weight", inp.w)?;
        let mut segments = vec![(operand(dy_gemm, output)?, operand(w, input)?, output)];
        if fused_lora {
            let (l, gb) = (
                inp.lora.as_ref().expect("checked"),
                bottleneck.as_ref().expect("computed"),
            );
            segments.push((operand(gb, rank)?, operand(l.a, input)?, rank));
        }
        g.dx = Some(wrap(
            in_shape.clone(),
            gemm(Layout::Kn, rows, input, segments, 1.0).run(b)?,
        )?);
    }
    if want.dlora_input {
        let (l, gb) = (
            inp.lora.as_ref().expect("checked"),
            bottleneck.as_ref().expect("computed"),
        );
        let seg = vec![(operand(gb, rank)?, operand(l.a, input)?, rank)];
        g.dlora_input = Some(wrap(
            in_shape.clone(),
            gemm(Layout::Kn, rows, input, seg, 1.0).run(b)?,
        )?);
    }
    if want.dw {
        let x = require("dW", "x", inp.x)?;
        let seg = vec![(operand(dy_gemm, output)?, operand(x, input)?, rows)];
        g.dw = Some(wrap(
            Shape::new([output, input]),
            gemm(Layout::Mn, output, input, seg, 1.0).run(b)?,
        )?);
    }
    if want.dlora_a {
        let xl = require("dA", "x_lora", inp.x_lora)?;
        let gb = bottleneck.as_ref().expect("computed");
        let seg = vec![(operand(gb, rank)?, operand(xl, input)?, rows)];
        g.dlora_a = Some(wrap(
            Shape::new([rank, input]),
            gemm(Layout::Mn, rank, input, seg, 1.0).run(b)?,
        )?);
    }
    if want.dlora_b {
        let l = inp.lora.as_ref().expect("checked");
        let h = require("dB", "h", inp.h)?;
        let seg = vec![(operand(dy_gemm, output)?, operand(h, rank)?, rows)];
        g.dlora_b = Some(wrap(
            Shape::new([output, rank]),
            gemm(Layout::Mn, output, rank, seg, l.scale).run(b)?,
        )?);
    }
    if want.dbias {
        g.dbias = Some(with_float!(dtype, OP, T => {
            tensor([output], super::bias_grad::column_sums::<T>(b, OP, view::<T>(dy), rows, output)?)
        })?);
    }
    Ok(g)
}

impl CudaBackend {
    /// The same device with every bf16 GEMM forced onto tile configuration `name` (one of
    /// [`TILES`]): how the GPU check's microbenchmark compares them.
    pub fn with_gemm_tile(&self, name: &str) -> Result<Self> {
        let t = tile(name).ok_or_else(|| {
            Error::invalid(
                "gemm tile",
                format!(
                    "`{name}` is not one of {}",
                    TILES.iter().map(|t| t.name).collect::<Vec<_>>().join(", ")
                ),
            )
        })?;
        Ok(CudaBackend {
            gemm_tile: Some(t.name),
            ..self.clone()
        })
    }

    /// The same device with re-read f32 GEMM operands rounded to bf16 in a pass of their own
    /// before the GEMM (`true`, the default) or rounded by the GEMM kernel as it stages them
    /// (`false`): the same bits either way, and the GPU check's microbenchmark times both.
    /// `false` also turns off the copies of [`Backend::rounded_for_products`] and outputs
    /// stored for products ([`LinearForwardOptions::output_for_products`]): every product
    /// then rounds its own f32 operands, which is how the tests show those change no bit.
    pub fn with_gemm_precast(&self, on: bool) -> Self {
        CudaBackend {
            gemm_precast: on,
            ..self.clone()
        }
    }

    /// The same device with narrow GEMM outputs (at most 32 columns or rows beside a long
    /// side: the LoRA products) computed by the CUDA-core kernels of `kernels/gemm_skinny.cu`
    /// (`true`, the default) or by the tiles like every other GEMM (`false`): how a test
    /// reaches the tiles' own handling of a tall output.
    pub fn with_gemm_skinny(&self, on: bool) -> Self {
        CudaBackend {
            gemm_skinny: on,
            ..self.clone()
        }
    }

    /// The same device with every tensor-core or f32 tile GEMM's reduction split `split` ways
    /// (1 to 32; never more than the reduction has k-tiles), each slice summed in its own f32
    /// workspace and the slices added in a fixed order: how the GPU check's microbenchmark
    /// compares splits. The narrow GEMMs' kernels (`kernels/gemm_skinny.cu`) keep their own
    /// split unless a tile is forced too ([`CudaBackend::with_gemm_tile`]).
    pub fn with_gemm_split(&self, split: usize) -> Result<Self> {
        if !(1..=MAX_SPLIT).contains(&split) {
            return Err(Error::invalid(
                "gemm split",
                format!("{split} is not between 1 and {MAX_SPLIT}"),
            ));
        }
        Ok(CudaBackend {
            gemm_split: Some(split),
            ..self.clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{default_tile, split_for, Layout};

    /// Shared memory a block may opt into: an H100/H200, and an sm_86/sm_89 GPU.
    const H200_SHARED: usize = 232_448;
    const SM89_SHARED: usize = 101_376;

    /// Where three stages of the large tile do not fit a block's shared memory (RTX 30xx and
    /// 40xx, A10, L4, L40), the two-stage one runs, in every layout, and splits as the large
    /// tile does.
    #[test]
    fn a_gpu_with_less_shared_memory_gets_the_large_tile_in_two_stages() {
        for layout in [Layout::Kk, Layout::Kn, Layout::Mn] {
            let large = default_tile(4096, 768, layout, H200_SHARED);
            assert_eq!(large.name, "128x128x64_w2x4_s3");
            assert!(large.shared_bytes(layout) > SM89_SHARED, "{layout:?}");
            let small = default_tile(4096, 768, layout, SM89_SHARED);
            assert_eq!(small.name, "128x128x64_w2x4_s2", "{layout:?}");
            assert!(small.shared_bytes(layout) <= SM89_SHARED, "{layout:?}");
            for (blocks, k_tiles) in [(36, 64), (144, 64), (192, 48), (20, 40)] {
                assert_eq!(
                    split_for(Some(small), blocks, k_tiles),
                    split_for(Some(large), blocks, k_tiles)
                );
            }
        }
    }

    /// The nine GEMMs of a BERT-base training step at 4096 rows and what the fourth H200
    /// sweep measured best for them (NOTES.md, 2026-12-04; TFLOP/s of the large tile by split
    /// in brackets): the rule must keep choosing these, or a new sweep must justify the change.
    #[test]
    fn the_rule_picks_what_the_h200_sweep_measured_for_a_bert_base_step() {
        // (what, M, N, K, split measured best for the large tile)
        let step: [(&str, usize, usize, usize, usize); 9] = [
            ("forward 768x768", 4096, 768, 768, 1),   // [122, 73, 58, 35]
            ("dX 768x768", 4096, 768, 768, 1),        // [120, 72, 58, 36]
            ("dW 768x768", 768, 768, 4096, 4),        // [50, 71, 76, 70]
            ("forward FFN up", 4096, 3072, 768, 1),   // [171, 103, 81, 46]
            ("dX FFN up", 4096, 768, 3072, 1),        // [157, 130, 134, 108]
            ("dW FFN up", 3072, 768, 4096, 4),        // [123, 120, 126, 113]: 1 is within 3%
            ("forward FFN down", 4096, 768, 3072, 1), // [155, 144, 135, 109]
            ("dX FFN down", 4096, 3072, 768, 1),      // [170, 102, 81, 46]
            ("dW FFN down", 768, 3072, 4096, 4),      // [123, 120, 126, 113]: 1 is within 3%
        ];
        for (what, m, n, k, best) in step {
            let tile = default_tile(m, n, Layout::Kk, H200_SHARED);
            assert_eq!(tile.name, "128x128x64_w2x4_s3", "{what}");
            let blocks = m.div_ceil(tile.bm) * n.div_ceil(tile.bn);
            let split = split_for(Some(tile), blocks, k.div_ceil(tile.bk));
            let within_3_percent = (what.starts_with("dW FFN") && split == 1) || split == best;
            assert!(
                within_3_percent,
                "{what}: split {split}, measured best {best}"
            );
        }
    }
}
