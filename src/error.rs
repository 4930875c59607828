//! The one error type of the library: every failure a caller can cause comes back as a value.

use std::path::PathBuf;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in spafit. Each variant names the operation (or file) and
/// the offending tensor so a message alone is enough to find the cause.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Tensor shapes do not fit the operation.
    #[error("{op}: shape mismatch: {detail}")]
    Shape {
        /// The operation that rejected its inputs.
        op: &'static str,
        /// Which tensor and which dimensions.
        detail: String,
    },
    /// Tensors of different element types, or a type the operation does not accept.
    #[error("{op}: dtype mismatch: {detail}")]
    DType {
        /// The operation that rejected its inputs.
        op: &'static str,
        /// Which tensor and which dtypes.
        detail: String,
    },
    /// An argument outside its valid range (probability, epsilon, head count...).
    #[error("{op}: invalid argument: {detail}")]
    InvalidArgument {
        /// The operation that rejected its arguments.
        op: &'static str,
        /// Which argument and why.
        detail: String,
    },
    /// No memory left for an allocation or launch: on the GPU, or on the host for a tensor
    /// too large to allocate.
    #[error("{op}: out of memory ({detail})")]
    OutOfMemory {
        /// The operation that could not get its memory.
        op: &'static str,
        /// Which memory (GPU or host), how much was asked for, and what needs less.
        detail: String,
    },
    /// The CUDA driver refused a call or a kernel faulted (an illegal address, a launch the
    /// device cannot run, a stale build of the CPU stand-in). A kernel fault leaves the
    /// process unable to use the GPU further.
    #[error("{op}: CUDA error: {detail}")]
    Device {
        /// The operation whose driver call failed (after a fault: not necessarily the
        /// operation whose kernel faulted, unless the message names it).
        op: &'static str,
        /// The driver's words and, from the stand-in, where and why.
        detail: String,
    },
    /// An index (token id, label) outside the range of the tensor it indexes.
    #[error("{op}: {what} {index} at position {position} is out of range (must be < {limit})")]
    IndexOutOfRange {
        /// The operation that found it.
        op: &'static str,
        /// What the index is (token id, label).
        what: &'static str,
        /// The bad index value.
        index: u64,
        /// Its flat position in the index tensor.
        position: usize,
        /// The exclusive upper bound.
        limit: usize,
    },
    /// Misuse of the autograd tape (a variable from another tape, backward on a non-scalar...).
    #[error("autograd: {0}")]
    Autograd(String),
    /// A backend that cannot run here (no driver, not built, no device).
    #[error("backend {backend} is unavailable: {reason}")]
    BackendUnavailable {
        /// The backend asked for.
        backend: String,
        /// Why it cannot run and what to do about it.
        reason: String,
    },
    /// A file could not be read or written. The message already carries the operating
    /// system's words, so `error` is not also reported as the source (an error reporter that
    /// prints the chain would print them twice).
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        error: std::io::Error,
    },
    /// Training produced a NaN or infinite loss.
    #[error("training step {step}: the loss is {value}; stopping (checkpoints written before this step are intact)")]
    NonFiniteLoss {
        /// 1-based optimizer step at which it happened.
        step: usize,
        /// The loss value.
        value: f64,
    },
    /// Training produced a NaN or infinite gradient norm (with a finite loss).
    #[error("training step {step}: the gradient norm is {norm}; stopping before the update (checkpoints written before this step are intact)")]
    NonFiniteGradient {
        /// 1-based optimizer step at which it happened.
        step: usize,
        /// The global gradient norm.
        norm: f64,
    },
    /// Training left a trainable tensor with NaN or infinite values (a finite loss can
    /// still come before the step that overflows), or an evaluation with a NaN loss.
    #[error("after training step {step}: {what}; the run diverged (try a lower --lr); stopping without saving these weights (checkpoints written before are intact)")]
    Diverged {
        /// Optimizer steps taken.
        step: usize,
        /// The tensor or the evaluation, and its value.
        what: String,
    },
    /// Analytic gradients that disagree with finite differences beyond what was allowed
    /// ([`crate::gradcheck::GradcheckReport::within`]).
    #[error("gradcheck: worst relative error {worst:.3e} ({tensor}) is above the tolerance {tolerance:e}")]
    GradientMismatch {
        /// The worst relative error over the checked tensors.
        worst: f64,
        /// The tensor with that error.
        tensor: String,
        /// The largest error allowed.
        tolerance: f64,
    },
    /// An attention key bias's gradient, zero in exact arithmetic (softmax ignores a shift of
    /// all of a query's scores), larger than rounding allows
    /// ([`crate::gradcheck::GradcheckReport::key_bias_err`]).
    #[error(
        "gradcheck: {tensor}'s gradient is {ratio:.3e} of its layer's query bias's (root mean \
         squares), above the tolerance {tolerance:e}: a key bias's gradient is zero where the \
         backward pass is right"
    )]
    KeyBiasGradient {
        /// The key bias's gradient's root mean square over its layer's query bias's.
        ratio: f64,
        /// The key bias.
        tensor: String,
        /// The largest ratio allowed.
        tolerance: f64,
    },
    /// A gradient check that could not see errors as small as the tolerance: gradients too
    /// small against the loss's rounding, or none at all to compare
    /// ([`crate::gradcheck::GradcheckReport::within`]).
    #[error("gradcheck: inconclusive at the tolerance {tolerance:e}: {detail}")]
    GradcheckInconclusive {
        /// The largest error allowed.
        tolerance: f64,
        /// What the check could not see, and where.
        detail: String,
    },
    /// An adapter or checkpoint that does not belong to this base model or plan.
    #[error("{path}: {detail}")]
    Mismatch {
        /// The adapter or state file.
        path: PathBuf,
        /// What differs.
        detail: String,
    },
    /// A file was read but its content is not what it must be.
    #[error("{path}: {detail}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the tensor or field.
        detail: String,
    },
}

impl Error {
    /// A [`Error::Shape`].
    pub fn shape(op: &'static str, detail: impl Into<String>) -> Self {
        Error::Shape {
            op,
            detail: detail.into(),
        }
    }

    /// A [`Error::DType`].
    pub fn dtype(op: &'static str, detail: impl Into<String>) -> Self {
        Error::DType {
            op,
            detail: detail.into(),
        }
    }

    /// An [`Error::InvalidArgument`].
    pub fn invalid(op: &'static str, detail: impl Into<String>) -> Self {
        Error::InvalidArgument {
            op,
            detail: detail.into(),
        }
    }

    /// `self` with `context` (a sentence "This was …": what was running, what needs less)
    /// appended to an [`Error::OutOfMemory`]'s detail; any other error, or one that has its
    /// context already, as it is. The backend knows only which allocation failed: the
    /// innermost caller knows best what it was for.
    pub fn in_memory_context(self, context: impl FnOnce() -> String) -> Self {
        match self {
            Error::OutOfMemory { op, detail } if !detail.contains(". This was ") => {
                Error::OutOfMemory {
                    op,
                    detail: format!("{detail}. {}", context()),
                }
            }
            other => other,
        }
    }
}
