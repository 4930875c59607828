//! Host side of `kernels/tensor_list.cuh`: many tensors in one launch. The optimizer's ops
//! (gradient norm, clipping, AdamW) touch every trainable tensor once per step; launched per
//! tensor they cost a launch each (58 of a MiniLM SPAFIT step's 463), and on a GPU each is a
//! few microseconds of host time and a tail of idle SMs for a 384-element bias.

use cudarc::driver::{DeviceRepr, LaunchConfig};

use super::{grid_for, THREADS};

/// Tensors per launch (`TENSOR_LIST_CAPACITY`): a list stays within 4 KiB of kernel parameters.
pub(super) const CAPACITY: usize = 48;
/// Operands per tensor (`TENSOR_LIST_OPERANDS`): AdamW's parameter, gradient and moments.
pub(super) const OPERANDS: usize = 4;

/// Field for field the `TensorList` of `kernels/tensor_list.cuh`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct TensorList {
    operand: [[u64; OPERANDS]; CAPACITY],
    n: [i64; CAPACITY],
    scalar: [f32; CAPACITY],
    first_block: [i32; CAPACITY + 1],
    count: i32,
}

// SAFETY: a plain C struct of integers and floats, laid out as the kernel's (2312 bytes).
unsafe impl DeviceRepr for TensorList {}

/// One tensor of a list: the device addresses of its operands (unused ones 0), its element
/// count and its scalar.
#[derive(Clone, Copy, Debug)]
pub(super) struct ListEntry {
    pub operands: [u64; OPERANDS],
    pub n: usize,
    pub scalar: f32,
}

/// One launch over up to [`CAPACITY`] entries.
pub(super) struct ListLaunch {
    pub list: TensorList,
    pub cfg: LaunchConfig,
    /// Index of this launch's first block among all the blocks of the lists, so that
    /// per-block outputs of consecutive launches can share one buffer.
    pub first_block: usize,
}

/// Blocks of a per-tensor launch over `n` elements, which the tensor's run in a list repeats
/// so that both visit every element from the same thread.
pub(super) fn blocks_of(n: usize) -> usize {
    grid_for(n).grid_dim.0 as usize
}

/// `entries` in order, in launches of at most [`CAPACITY`] tensors, with `shared_mem_bytes`
/// per block.
pub(super) fn launches(entries: &[ListEntry], shared_mem_bytes: u32) -> Vec<ListLaunch> {
    let mut out = Vec::with_capacity(entries.len().div_ceil(CAPACITY));
    let mut first_block = 0;
    for chunk in entries.chunks(CAPACITY) {
        let mut list = TensorList {
            operand: [[0; OPERANDS]; CAPACITY],
            n: [0; CAPACITY],
            scalar: [0.0; CAPACITY],
            first_block: [0; CAPACITY + 1],
            count: chunk.len() as i32,
        };
        let mut blocks = 0usize;
        for (t, e) in chunk.iter().enumerate() {
            list.operand[t] = e.operands;
            list.n[t] = e.n as i64;
            list.scalar[t] = e.scalar;
            // At most CAPACITY × GRID_STRIDE_BLOCKS blocks: far inside an i32.
            list.first_block[t] = blocks as i32;
            blocks += blocks_of(e.n);
        }
        list.first_block[chunk.len()] = blocks as i32;
        out.push(ListLaunch {
            list,
            cfg: LaunchConfig {
                grid_dim: (blocks as u32, 1, 1),
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes,
            },
            first_block,
        });
        first_block += blocks;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_matches_the_c_layout_and_its_runs_tile_the_grid() {
        // sizeof(TensorList) in the kernels: 48·4·8 + 48·8 + 48·4 + 49·4 + 4.
        assert_eq!(std::mem::size_of::<TensorList>(), 2312);
        let entries: Vec<ListEntry> = (0..CAPACITY + 5)
            .map(|i| ListEntry {
                operands: [i as u64; OPERANDS],
                n: 1 + 300 * i,
                scalar: i as f32,
            })
            .collect();
        let ls = launches(&entries, 0);
        assert_eq!(ls.len(), 2);
        assert_eq!((ls[0].list.count, ls[1].list.count), (CAPACITY as i32, 5));
        let mut global = 0;
        for (l, chunk) in ls.iter().zip(entries.chunks(CAPACITY)) {
            assert_eq!(l.first_block, global);
            for (t, e) in chunk.iter().enumerate() {
                let run = l.list.first_block[t + 1] - l.list.first_block[t];
                assert_eq!(run as usize, blocks_of(e.n), "tensor {t}");
            }
            let total = l.list.first_block[chunk.len()] as u32;
            assert_eq!(l.cfg.grid_dim.0, total);
            global += total as usize;
        }
    }
}
