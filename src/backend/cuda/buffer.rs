use cudarc::driver::CudaSlice;

use crate::backend::DeviceBuffer;
use crate::tensor::DType;

/// Storage of one CUDA tensor.
#[derive(Clone, Debug)]
pub enum CudaBuffer {
    /// f32 elements.
    F32(CudaSlice<f32>),
    /// bf16 elements (f32 accumulation in every kernel).
    BF16(CudaSlice<half::bf16>),
    /// u32 ids, labels and masks.
    U32(CudaSlice<u32>),
}

impl DeviceBuffer for CudaBuffer {
    fn len(&self) -> usize {
        match self {
            CudaBuffer::F32(s) => s.len(),
            CudaBuffer::BF16(s) => s.len(),
            CudaBuffer::U32(s) => s.len(),
        }
    }

    fn dtype(&self) -> DType {
        match self {
            CudaBuffer::F32(_) => DType::F32,
            CudaBuffer::BF16(_) => DType::BF16,
            CudaBuffer::U32(_) => DType::U32,
        }
    }
}
