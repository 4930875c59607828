//! Launchers of `kernels/gemm_skinny.cu`: GEMMs whose output is narrow (at most
//! [`MAX_NARROW`] columns or rows) beside a long other side, on the CUDA cores: the LoRA
//! bottleneck products `H = X·Aᵀ`, `G = s·dY·B`, `dA = Gᵀ·X`, `dB = s·dYᵀ·H` and a
//! classifier's few outputs. [`super::gemm::Gemm`] sends them here unless a tile is forced
//! or [`CudaBackend::with_gemm_skinny`] turned them off.

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::gemm::{Gemm, Layout, ROUND_BF16};
use super::{CudaBackend, CudaFloat};
use crate::error::Result;

const MODULE: &str = "gemm_skinny";

/// The widest narrow side: two passes of the row kernels' 16 columns, four of the column
/// kernels' 8. Past it a tensor-core tile is no longer mostly padding.
const MAX_NARROW: usize = 32;

/// Whether an output `n` wide is narrow enough for these kernels (beside a long side).
pub(super) fn is_narrow(n: usize) -> bool {
    n <= MAX_NARROW
}

/// The shortest long side worth the CUDA-core kernels: below it the output is a handful of
/// tensor-core blocks anyway, and the tiny models of the tests keep running the tiles.
const MIN_WIDE: usize = 64;

/// Warps of every block, rows of a warp in the row kernels, long-side columns of a column
/// kernel's block and narrow entries of its pass (`SKINNY_WARPS`, `SKINNY_ROWS_PER_WARP`,
/// `SKINNY_COLUMNS`, `SKINNY_COLUMN_NC` in the kernel file).
const WARPS: usize = 8;
const ROWS_PER_WARP: usize = 2;
const COLUMNS_PER_BLOCK: usize = 128;
const COLUMN_PASS: usize = 8;

/// The k a column kernel's chunk sums (`SKINNY_ROW_CHUNK`), and the most chunks (f32
/// workspace slices): 4096 rows make 32 chunks, 192 blocks for a 768-wide output.
const CHUNK: usize = 128;
const MAX_CHUNKS: usize = 64;

/// Which narrow-output kernel computes a GEMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Skinny {
    /// `C[m, n]` with `n` narrow, A K-major (`X·Wᵀ`-like or `dY·W`-like): a warp per rows.
    Rows,
    /// Layout `mn` with `m` narrow (`dA = Gᵀ·X`): threads along `n`, chunks along k.
    NarrowM,
    /// Layout `mn` with `n` narrow (`dB = dYᵀ·H`): threads along `m`, chunks along k.
    NarrowN,
}

/// The narrow-output kernel for `gemm` on `b`, if its output is narrow and tall (and its
/// passes fit the device's grid y limit, which only the stand-in lowers that far).
pub(super) fn kind(gemm: &Gemm<'_>, b: &CudaBackend) -> Option<Skinny> {
    kind_for(gemm.layout, gemm.m, gemm.n, gemm.segments.len())
        .filter(|&kind| passes(kind, gemm.m, gemm.n).1 <= b.device.max_grid_y)
}

/// The narrow side's entries a pass of `kind`'s kernel takes, and its passes (grid y) for an
/// `m × n` output.
fn passes(kind: Skinny, m: usize, n: usize) -> (usize, usize) {
    let (narrow, per_pass) = match kind {
        // Eight columns a pass where they suffice: a 16-wide pass would spend half its
        // multiply-adds on nothing.
        Skinny::Rows => (n, if n <= 8 { 8 } else { 16 }),
        Skinny::NarrowM => (m, COLUMN_PASS),
        Skinny::NarrowN => (n, COLUMN_PASS),
    };
    (per_pass, narrow.div_ceil(per_pass))
}

/// The narrow-output kernel for an `m × n` output in `layout` over `segments` segments.
fn kind_for(layout: Layout, m: usize, n: usize, segments: usize) -> Option<Skinny> {
    match layout {
        Layout::Kk | Layout::Kn if n <= MAX_NARROW && m >= MIN_WIDE => Some(Skinny::Rows),
        // The column kernels take one segment (every `mn` GEMM of the linear map has one).
        Layout::Mn if segments == 1 => {
            if m <= MAX_NARROW && n >= MIN_WIDE {
                Some(Skinny::NarrowM)
            } else if n <= MAX_NARROW && m >= MIN_WIDE {
                Some(Skinny::NarrowN)
            } else {
                None
            }
        }
        _ => None,
    }
}

/// `gemm`'s output by the `kind` kernel; `round`: multiply bf16-rounded operands (the
/// tensor cores' precision) rather than the f32 values.
pub(super) fn run<T: CudaFloat>(
    gemm: &Gemm<'_>,
    b: &CudaBackend,
    kind: Skinny,
    round: bool,
) -> Result<CudaSlice<T>> {
    const OP: &str = "gemm";
    let (m, n) = (gemm.m, gemm.n);
    let (per_pass, passes) = passes(kind, m, n);
    let (name, grid, split) = match kind {
        Skinny::Rows => {
            let layout = if gemm.layout == Layout::Kk {
                "kk"
            } else {
                "kn"
            };
            (
                format!("gemm_skinny_rows_{layout}_c{per_pass}"),
                (m.div_ceil(ROWS_PER_WARP * WARPS) as u32, passes as u32, 1),
                1,
            )
        }
        Skinny::NarrowM | Skinny::NarrowN => {
            let k = gemm.segments[0].2;
            let wide = if kind == Skinny::NarrowM { n } else { m };
            let split = k.div_ceil(CHUNK).min(MAX_CHUNKS).min(b.device.max_grid_z);
            let side = if kind == Skinny::NarrowM { "m" } else { "n" };
            (
                format!("gemm_skinny_columns_{side}"),
                (
                    wide.div_ceil(COLUMNS_PER_BLOCK) as u32,
                    passes as u32,
                    split as u32,
                ),
                split,
            )
        }
    };
    let bufs: Vec<_> = gemm
        .segments
        .iter()
        .map(|(a, bo, _)| (a.buf, bo.buf))
        .collect();
    let f = b.function(MODULE, &name)?;
    gemm.run_with(b, &bufs, split, if round { ROUND_BF16 } else { 0 }, |p| {
        let cfg = LaunchConfig {
            grid_dim: grid,
            block_dim: (WARPS as u32 * 32, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut l = b.device.stream.launch_builder(&f);
        l.arg(&*p);
        // SAFETY: GemmParams mirrors the kernel's struct; every pointer is a live buffer
        // holding the rows × ld elements the kernel reads (the callers' shape validation) in
        // the dtype its flag names, and `c` holds m × n elements (split × m × n f32).
        b.launched(OP, &name, || unsafe { l.launch(cfg) })?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lora_products_of_a_bert_base_step_are_narrow_and_the_rest_is_not() {
        let rows = 32 * 128;
        for (input, output) in [(768, 768), (768, 3072), (3072, 768)] {
            // H = X·Aᵀ, G = s·dY·B, dA = Gᵀ·X, dB = s·dYᵀ·H at rank 8.
            assert_eq!(kind_for(Layout::Kk, rows, 8, 1), Some(Skinny::Rows));
            assert_eq!(kind_for(Layout::Kn, rows, 8, 1), Some(Skinny::Rows));
            assert_eq!(kind_for(Layout::Mn, 8, input, 1), Some(Skinny::NarrowM));
            assert_eq!(kind_for(Layout::Mn, output, 8, 1), Some(Skinny::NarrowN));
            // Y = [X | H]·[W | s·B]ᵀ, dX = [dY | G]·[W ; A], dW = dYᵀ·X, dX_lora = G·A.
            assert_eq!(kind_for(Layout::Kk, rows, output, 2), None);
            assert_eq!(kind_for(Layout::Kn, rows, input, 2), None);
            assert_eq!(kind_for(Layout::Mn, output, input, 1), None);
            assert_eq!(kind_for(Layout::Kn, rows, input, 1), None);
        }
        // Rank 32 is still narrow (two passes), 33 is a tile's work.
        assert_eq!(kind_for(Layout::Kk, rows, 32, 1), Some(Skinny::Rows));
        assert_eq!(kind_for(Layout::Kk, rows, 33, 1), None);
        assert_eq!(kind_for(Layout::Mn, 33, 768, 1), None);
        // A classifier over a batch of 32 sentences: too short for the CUDA-core kernels.
        assert_eq!(kind_for(Layout::Kk, 32, 2, 2), None);
        assert_eq!(kind_for(Layout::Mn, 2, 768, 1), Some(Skinny::NarrowM));
        // Both sides narrow: a handful of tensor-core blocks.
        assert_eq!(kind_for(Layout::Mn, 8, 24, 1), None);
    }
}
