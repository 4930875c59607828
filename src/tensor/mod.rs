//! Tensors: a shape, a dtype and a reference-counted buffer owned by a backend.
//!
//! Tensors are immutable values that share their buffer on clone, which is what lets the
//! autograd tape keep an activation without copying it. In-place updates (optimizer steps,
//! gradient accumulation) go through the crate's own mutable access, which copies only when
//! the buffer is shared. That access is not public: a buffer swapped for one of another length
//! would let a kernel, which sizes its grid from the shape, read and write past its end.

mod bf16_rounding;
mod dtype;
mod host_buffer;
mod host_copy;
mod shape;

pub use bf16_rounding::bf16_from_f64;
pub use dtype::DType;
pub(crate) use host_buffer::collect_host;
pub(crate) use host_copy::{copy_all, stored_dtype, HostTensor, HostTensors};
pub use shape::Shape;

use std::sync::Arc;

use crate::backend::{Backend, DeviceBuffer};
use crate::error::{Error, Result};

/// A tensor living on backend `B`.
pub struct Tensor<B: Backend> {
    shape: Shape,
    buf: Arc<B::Buffer>,
}

impl<B: Backend> Clone for Tensor<B> {
    fn clone(&self) -> Self {
        Tensor {
            shape: self.shape.clone(),
            buf: Arc::clone(&self.buf),
        }
    }
}

impl<B: Backend> std::fmt::Debug for Tensor<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({}, {})", self.shape, self.dtype())
    }
}

impl<B: Backend> Tensor<B> {
    /// Wraps a backend buffer. Fails when the buffer's length is not the shape's size.
    pub fn from_buffer(shape: impl Into<Shape>, buf: B::Buffer) -> Result<Self> {
        let shape = shape.into();
        if shape.checked_numel() != Some(buf.len()) {
            return Err(Error::shape(
                "tensor",
                format!("buffer of {} elements cannot have shape {shape}", buf.len()),
            ));
        }
        Ok(Tensor {
            shape,
            buf: Arc::new(buf),
        })
    }

    /// The shape.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// The dimensions.
    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.buf.dtype()
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.numel()
    }

    /// Bytes held by the buffer.
    pub fn size_in_bytes(&self) -> usize {
        self.numel() * self.dtype().size_in_bytes()
    }

    /// The backend buffer.
    pub fn buffer(&self) -> &B::Buffer {
        &self.buf
    }

    /// A handle to the buffer that does not keep it alive: a backend's note about a buffer
    /// (a host copy of it) is valid while the handle upgrades to this tensor's buffer.
    pub(crate) fn buffer_weak(&self) -> std::sync::Weak<B::Buffer> {
        Arc::downgrade(&self.buf)
    }

    /// Mutable access to the buffer; copies it first if another tensor shares it.
    pub(crate) fn buffer_mut(&mut self) -> &mut B::Buffer {
        Arc::make_mut(&mut self.buf)
    }

    /// Mutable access to the buffer where no other tensor shares it (nor a weak reference
    /// watches it); `None` otherwise.
    pub(crate) fn buffer_if_unique(&mut self) -> Option<&mut B::Buffer> {
        Arc::get_mut(&mut self.buf)
    }

    /// Mutable access to the buffer, where copying it can fail (a device copy needs memory):
    /// when another tensor shares the buffer, `copy` makes this tensor's own first.
    pub(crate) fn buffer_mut_or_copy(
        &mut self,
        copy: impl FnOnce(&B::Buffer) -> Result<B::Buffer>,
    ) -> Result<&mut B::Buffer> {
        if Arc::get_mut(&mut self.buf).is_none() {
            self.buf = Arc::new(copy(&self.buf)?);
        }
        // Unique now: no copy is made here.
        Ok(Arc::make_mut(&mut self.buf))
    }

    /// The same data under another shape with the same element count (no copy).
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Self> {
        let shape = shape.into();
        if shape.checked_numel() != Some(self.numel()) {
            return Err(Error::shape(
                "reshape",
                format!("cannot view {} as {shape}", self.shape),
            ));
        }
        Ok(Tensor {
            shape,
            buf: Arc::clone(&self.buf),
        })
    }

    /// An identity for the buffer, equal for tensors that share storage. The tape uses it to
    /// count an activation saved by several nodes once.
    pub fn storage_id(&self) -> usize {
        Arc::as_ptr(&self.buf) as *const u8 as usize
    }
}
