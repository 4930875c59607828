//! Host copies of the u32 tensors uploaded from the host: token ids, positions, labels,
//! masks. The embedding's check of ids against its vocabulary, the cross-entropy's check of
//! labels, and the embedding backward's grouping of positions by id all read ids on the
//! host; downloading them would wait for all the work queued before (seven such waits in a
//! training step). No kernel writes a u32 tensor, so a copy made at upload stays exact for
//! the buffer's life.

use std::sync::{Arc, Mutex, Weak};

use super::{CudaBackend, CudaBuffer};
use crate::tensor::Tensor;

/// An uploaded buffer (held weakly: its tensors own it) with its host copy.
type HostCopy = (Weak<CudaBuffer>, Arc<[u32]>);

#[derive(Default)]
pub(super) struct HostIds {
    copies: Mutex<Vec<HostCopy>>,
}

impl HostIds {
    /// Notes that `t`'s buffer holds `data`.
    pub(super) fn remember(&self, t: &Tensor<CudaBackend>, data: &[u32]) {
        let mut copies = self.copies.lock().unwrap_or_else(|p| p.into_inner());
        // Buffers whose tensors are all gone: their addresses may come back for others.
        copies.retain(|(buffer, _)| buffer.strong_count() > 0);
        copies.push((t.buffer_weak(), data.into()));
    }

    /// The host copy of `t`'s buffer, if it was uploaded from the host.
    pub(super) fn get(&self, t: &Tensor<CudaBackend>) -> Option<Arc<[u32]>> {
        let buffer = t.buffer() as *const CudaBuffer;
        let copies = self.copies.lock().unwrap_or_else(|p| p.into_inner());
        // `t` keeps its buffer alive, so a live entry at its address is its own buffer, not
        // an earlier one freed at the same address.
        copies
            .iter()
            .find(|(b, _)| std::ptr::eq(b.as_ptr(), buffer) && b.strong_count() > 0)
            .map(|(_, copy)| Arc::clone(copy))
    }
}
