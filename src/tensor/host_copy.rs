//! Tensors copied to host memory in the precision they have on their backend: the best
//! weights a training run keeps beside the ones it trains, and every tensor a safetensors
//! file is written from. Kept on the device, the best weights held a second copy of every
//! trained tensor there from the first update after an evaluation (full fine-tuning of
//! all-MiniLM-L6-v2 on the stand-in: 455 MB of device memory against 364 MB without
//! evaluations); on the host they take what the copy took on the CPU backend anyway.

use std::collections::BTreeMap;

use safetensors::Dtype;

use super::{DType, Shape, Tensor};
use crate::backend::Backend;
use crate::error::Result;

/// One tensor's values on the host, in the precision it has on its backend (f64 for the
/// f64 reference, f32 otherwise: trainable tensors are f32 masters elsewhere), so that it
/// uploads again to the same bits.
#[derive(Clone, Debug)]
pub(crate) struct HostTensor {
    shape: Shape,
    dtype: DType,
    values: HostValues,
}

#[derive(Clone, Debug)]
enum HostValues {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

/// Host copies by name, in name order.
pub(crate) type HostTensors = BTreeMap<String, HostTensor>;

impl HostTensor {
    /// `t`'s values, copied to the host.
    pub fn copy_of<B: Backend>(backend: &B, t: &Tensor<B>) -> Result<Self> {
        let values = match t.dtype() {
            DType::F64 => HostValues::F64(backend.to_f64(t)?),
            // Exact: every other float dtype's values are f32 values.
            _ => HostValues::F32(backend.to_f32(t)?),
        };
        Ok(HostTensor {
            shape: t.shape().clone(),
            dtype: t.dtype(),
            values,
        })
    }

    /// The shape it has.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// The tensor on `backend` again, in the dtype it had.
    pub fn upload<B: Backend>(&self, backend: &B) -> Result<Tensor<B>> {
        let wide: Vec<f64> = match &self.values {
            HostValues::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            HostValues::F64(v) => v.clone(),
        };
        backend.tensor_from_f64_as(self.shape.clone(), &wide, self.dtype)
    }

    /// The dtype a safetensors file stores it in ([`stored_dtype`]).
    pub fn stored_dtype(&self) -> Dtype {
        stored_dtype(self.dtype)
    }

    /// Its values as a safetensors file stores them, in [`HostTensor::stored_dtype`]: their
    /// little-endian bytes.
    pub fn stored_bytes(&self) -> Vec<u8> {
        match &self.values {
            HostValues::F64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            HostValues::F32(v) => match cfg!(target_endian = "little") {
                // A copy of the values' own bytes: the whole of a save's per-tensor work.
                true => bytemuck::cast_slice(v).to_vec(),
                false => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            },
        }
    }
}

/// The dtype a safetensors file stores a backend's tensor of `dtype` in: f64 for f64, f32
/// for every other (their values are f32 values).
pub(crate) fn stored_dtype(dtype: DType) -> Dtype {
    match dtype {
        DType::F64 => Dtype::F64,
        _ => Dtype::F32,
    }
}

/// Host copies of `tensors`.
pub(crate) fn copy_all<'t, B: Backend + 't>(
    backend: &B,
    tensors: impl IntoIterator<Item = (&'t String, &'t Tensor<B>)>,
) -> Result<HostTensors> {
    tensors
        .into_iter()
        .map(|(name, t)| Ok((name.clone(), HostTensor::copy_of(backend, t)?)))
        .collect()
}
