//! Element types a tensor can hold.

use std::fmt;

/// The element type of a tensor's storage.
///
/// The CPU backend computes in `F32` or `F64`; `BF16`/`F16` are storage types of checkpoints
/// and of the CUDA backend; `U32` holds token ids, labels and attention masks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE single precision.
    F32,
    /// IEEE double precision: the reference precision of the CPU backend.
    F64,
    /// bfloat16 (storage only, f32 accumulation).
    BF16,
    /// IEEE half precision (storage only).
    F16,
    /// Unsigned 32-bit integers: ids, labels, masks.
    U32,
}

impl DType {
    /// Bytes per element.
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F64 => 8,
            DType::F32 | DType::U32 => 4,
            DType::BF16 | DType::F16 => 2,
        }
    }

    /// Whether the type holds floating-point values.
    pub fn is_float(self) -> bool {
        !matches!(self, DType::U32)
    }

    /// Whether the finite `value`, stored in this type, stays finite (rounds to a value
    /// within its range). Always true for `U32`, which holds no floats.
    pub fn holds_finite(self, value: f64) -> bool {
        match self {
            DType::F64 | DType::U32 => value.is_finite(),
            DType::F32 => (value as f32).is_finite(),
            DType::BF16 => half::bf16::from_f64(value).is_finite(),
            DType::F16 => half::f16::from_f64(value).is_finite(),
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            DType::U32 => "u32",
        };
        f.write_str(name)
    }
}
