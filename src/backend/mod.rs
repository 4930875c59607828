//! The backend interface: one method per fused operation of a BERT training step.
//!
//! Model and autograd code only ever talk to this trait, so the CPU reference and the CUDA
//! kernels are interchangeable. Every operation works on 2-D views `[rows, features]` of
//! contiguous row-major tensors; a batch of sequences is `[batch * seq_len, hidden]`, with the
//! attention mask `[batch, seq_len]` carrying the batch structure. Backward methods take a
//! request of which gradients to produce and compute nothing else, which is how frozen weights
//! cost no weight-gradient GEMM.
//!
//! Conventions every backend follows:
//! - outputs are freshly allocated, never accumulated into inputs (except the explicit in-place
//!   methods `add_assign`, `scale_in_place` and `adamw_step`);
//! - all float inputs of one call share one dtype, else [`crate::Error::DType`] (one
//!   exception: a linear map's weight may be stored in the backend's [`Backend::frozen_dtype`]);
//! - shapes are validated by [`shapes`] before any work, else [`crate::Error::Shape`];
//! - reductions are deterministic: the same inputs give the same bits.

pub mod cpu;
pub mod cuda;
pub mod shapes;

use crate::error::Result;
use crate::tensor::{DType, Shape, Tensor};

/// A backend's storage for one tensor.
pub trait DeviceBuffer: Clone + Send + Sync + 'static {
    /// Number of elements.
    fn len(&self) -> usize;
    /// Whether the buffer holds no element.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Element type.
    fn dtype(&self) -> DType;
}

/// A dropout draw: elements are dropped with probability `p` and survivors scaled by
/// `1 / (1 - p)`. The mask is a pure function of `(seed, element index)` (see
/// [`crate::rng`]), so backward regenerates it instead of storing it, and every backend draws
/// the same mask.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout {
    /// Drop probability in `[0, 1)`.
    pub p: f64,
    /// Seed of this draw; use a fresh one per call site and step.
    pub seed: u64,
}

/// The LoRA adapter of a linear map: `y += scale · (x_lora · Aᵀ) · Bᵀ`.
#[derive(Debug)]
pub struct LoraWeights<'a, B: Backend> {
    /// `A`: `[r, in]`.
    pub a: &'a Tensor<B>,
    /// `B`: `[out, r]`.
    pub b: &'a Tensor<B>,
    /// `alpha / r`.
    pub scale: f64,
}

/// Output of [`Backend::linear_forward`].
#[derive(Debug)]
pub struct LinearOutput<B: Backend> {
    /// `y = x·Wᵀ + b + scale·h·Bᵀ`: `[rows, out]`.
    pub y: Tensor<B>,
    /// `h = x_lora · Aᵀ`: `[rows, r]`, present with LoRA; backward needs it for `dB`.
    pub h: Option<Tensor<B>>,
}

/// Which gradients [`Backend::linear_backward`] must produce.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinearGradRequest {
    /// `dX = dY·W` (through the frozen or trained weight only).
    pub dx: bool,
    /// `dW = dYᵀ·X`.
    pub dw: bool,
    /// The bias gradient `Σ_rows dY`.
    pub dbias: bool,
    /// The LoRA down-projection's gradient `dA = scale · (dY·B)ᵀ · X_lora`.
    pub dlora_a: bool,
    /// The LoRA up-projection's gradient `dB = scale · dYᵀ · H`.
    pub dlora_b: bool,
    /// `scale · (dY·B) · A`: the gradient reaching the adapter's input (with adapter
    /// dropout, the caller sends it back through the mask and adds it to `dx`).
    pub dlora_input: bool,
    /// With `dx` and LoRA weights: `dx` is the whole `dY·W + scale·(dY·B)·A`, the gradient
    /// of `x` when the adapter reads `x` itself (no adapter dropout). CUDA computes it as one
    /// GEMM with `r` more reduction columns.
    pub dx_includes_lora: bool,
}

/// What [`Backend::linear_forward_with`] does beyond [`Backend::linear_forward`].
#[derive(Debug)]
pub struct LinearForwardOptions<'a, B: Backend> {
    /// `x`'s copy from [`Backend::rounded_for_products`], which the products read in `x`'s
    /// place, with the same results bit for bit.
    pub x_rounded: Option<&'a Tensor<B>>,
    /// The output is read only by products that round it (attention's query, key and
    /// value): the backend may store it as they read it, in the dtype of its rounded copies
    /// (bf16 in CUDA's bf16 mode: half the bytes, the same results downstream). Its gradient
    /// keeps the activations' dtype.
    pub output_for_products: bool,
}

impl<B: Backend> Default for LinearForwardOptions<'_, B> {
    fn default() -> Self {
        LinearForwardOptions {
            x_rounded: None,
            output_for_products: false,
        }
    }
}

impl<B: Backend> Clone for LinearForwardOptions<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B: Backend> Copy for LinearForwardOptions<'_, B> {}

/// Inputs of [`Backend::linear_backward`]; each is needed only by some gradients (see
/// [`LinearGradRequest`]) and may be `None` when those are not requested.
#[derive(Debug)]
pub struct LinearBackwardInputs<'a, B: Backend> {
    /// Upstream gradient `[rows, out]`.
    pub dy: &'a Tensor<B>,
    /// Forward input, needed for `dW`: `x` or its copy from [`Backend::rounded_for_products`].
    pub x: Option<&'a Tensor<B>>,
    /// Weight `[out, in]`, needed for `dX`.
    pub w: Option<&'a Tensor<B>>,
    /// LoRA weights, needed for `dA`, `dX_lora`.
    pub lora: Option<LoraWeights<'a, B>>,
    /// LoRA input (the possibly dropped-out `x`, or `x`'s rounded copy), needed for `dA`.
    pub x_lora: Option<&'a Tensor<B>>,
    /// `h` from the forward pass, needed for `dB`.
    pub h: Option<&'a Tensor<B>>,
}

/// Gradients from [`Backend::linear_backward`]; `None` where not requested.
#[derive(Debug)]
pub struct LinearGrads<B: Backend> {
    /// `[rows, in]`.
    pub dx: Option<Tensor<B>>,
    /// `[out, in]`.
    pub dw: Option<Tensor<B>>,
    /// `[out]`.
    pub dbias: Option<Tensor<B>>,
    /// `[r, in]`.
    pub dlora_a: Option<Tensor<B>>,
    /// `[out, r]`.
    pub dlora_b: Option<Tensor<B>>,
    /// `[rows, in]`.
    pub dlora_input: Option<Tensor<B>>,
}

/// Output of [`Backend::layernorm_forward`].
#[derive(Debug)]
pub struct LayerNormOutput<B: Backend> {
    /// Normalized, scaled and shifted rows.
    pub y: Tensor<B>,
    /// Per-row mean `[rows]`.
    pub mean: Tensor<B>,
    /// Per-row `1 / sqrt(var + eps)` `[rows]`.
    pub rstd: Tensor<B>,
}

/// Which gradients [`Backend::layernorm_backward`] must produce.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LayerNormGradRequest {
    /// Gradient of the input.
    pub dx: bool,
    /// Gradient of the scale γ.
    pub dgamma: bool,
    /// Gradient of the shift β (needs nothing saved: `Σ_rows dY`).
    pub dbeta: bool,
}

/// Gradients from [`Backend::layernorm_backward`].
#[derive(Debug)]
pub struct LayerNormGrads<B: Backend> {
    /// `[rows, n]`.
    pub dx: Option<Tensor<B>>,
    /// `[n]`.
    pub dgamma: Option<Tensor<B>>,
    /// `[n]`.
    pub dbeta: Option<Tensor<B>>,
}

/// Settings of multi-head self-attention.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionConfig {
    /// Number of heads; the hidden size must divide by it.
    pub heads: usize,
    /// Factor on `q·kᵀ`, usually `1 / sqrt(head_dim)`.
    pub scale: f64,
    /// Dropout on the attention probabilities (training only).
    pub dropout: Option<Dropout>,
}

/// Output of [`Backend::attention_forward`].
#[derive(Debug)]
pub struct AttentionOutput<B: Backend> {
    /// Context `[batch * seq, hidden]`.
    pub out: Tensor<B>,
    /// Log-sum-exp of each score row `[batch, heads, seq]`: backward recomputes the
    /// probabilities from it instead of storing `[batch, heads, seq, seq]`.
    pub lse: Tensor<B>,
}

/// Gradients from [`Backend::attention_backward_disentangled`].
#[derive(Debug)]
pub struct DisentangledGrads<B: Backend> {
    /// Those of the queries, keys and values.
    pub attention: AttentionGrads<B>,
    /// `[rows, hidden]`: that of [`RelativeTerms::key`], where asked and given.
    pub key_terms: Option<Tensor<B>>,
    /// `[rows, hidden]`: that of [`RelativeTerms::query`], where asked and given.
    pub query_terms: Option<Tensor<B>>,
}

/// Which gradients [`Backend::attention_backward`] must produce.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttentionGradRequest {
    /// Gradient of the queries.
    pub dq: bool,
    /// Gradient of the keys.
    pub dk: bool,
    /// Gradient of the values.
    pub dv: bool,
}

/// Gradients from [`Backend::attention_backward`].
#[derive(Debug)]
pub struct AttentionGrads<B: Backend> {
    /// `[batch * seq, hidden]`.
    pub dq: Option<Tensor<B>>,
    /// `[batch * seq, hidden]`.
    pub dk: Option<Tensor<B>>,
    /// `[batch * seq, hidden]`.
    pub dv: Option<Tensor<B>>,
}

/// The relative-position operands of DeBERTa's disentangled attention
/// ([`Backend::attention_forward_disentangled`]): `rows` rows of relative embeddings mapped
/// by the layer's key and query maps, and which row each (query, key) pair reads.
#[derive(Debug)]
pub struct RelativeTerms<'a, B: Backend> {
    /// `[rows, hidden]`: the relative embeddings under the key map, for the
    /// content-to-position term (query `i` against the row of its distance to key `j`);
    /// none without that term.
    pub key: Option<&'a Tensor<B>>,
    /// `[rows, hidden]`: the relative embeddings under the query map, for the
    /// position-to-content term (key `j` against the row of the same distance); none without
    /// it.
    pub query: Option<&'a Tensor<B>>,
    /// `[seq, seq]` `U32`: the row, below `rows`, that query `i` and key `j` read.
    pub rows: &'a Tensor<B>,
}

/// The device time of one kernel over a timed stretch ([`Backend::start_kernel_timing`]).
#[derive(Clone, Debug, PartialEq)]
pub struct KernelTime {
    /// The kernel's name in its module (a GEMM's names its tile configuration).
    pub kernel: String,
    /// Launches of it (a grid too large for one launch counts once per launch).
    pub launches: u64,
    /// Device milliseconds over all of them, each from an event before its launch to one
    /// after it.
    pub milliseconds: f64,
}

/// Hyper-parameters of one AdamW step (PyTorch's `torch.optim.AdamW` semantics).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWStep {
    /// Learning rate of this step (after any schedule).
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Added to the root of the second moment.
    pub eps: f64,
    /// Decoupled weight decay: `p -= lr · wd · p` before the Adam update.
    pub weight_decay: f64,
    /// 1-based step count, for bias correction.
    pub step: u64,
}

/// The per-step constants of an AdamW update, computed once in f64 and shared by every
/// backend, so they round the same way everywhere.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWCoefficients {
    /// `1 − lr · wd`: the decoupled decay factor.
    pub decay: f64,
    /// `lr / (1 − β₁ᵗ)`.
    pub step_size: f64,
    /// `sqrt(1 − β₂ᵗ)`.
    pub bias2_sqrt: f64,
    /// `1 − β₁` (in f64: `1 − f32(β₁)` would be off).
    pub one_minus_beta1: f64,
    /// `1 − β₂`.
    pub one_minus_beta2: f64,
}

impl AdamWStep {
    /// The constants of this step. The step count enters as a float power, so counts past
    /// `i32::MAX` do not wrap.
    pub fn coefficients(&self) -> AdamWCoefficients {
        let t = self.step as f64;
        AdamWCoefficients {
            decay: 1.0 - self.lr * self.weight_decay,
            step_size: self.lr / (1.0 - self.beta1.powf(t)),
            bias2_sqrt: (1.0 - self.beta2.powf(t)).sqrt(),
            one_minus_beta1: 1.0 - self.beta1,
            one_minus_beta2: 1.0 - self.beta2,
        }
    }
}

/// A compute backend. See the module documentation for the conventions.
pub trait Backend: Clone + Send + Sync + 'static {
    /// Storage of one tensor.
    type Buffer: DeviceBuffer;

    /// A short name for messages and benchmarks (`cpu`, `cuda:0`).
    fn name(&self) -> String;

    /// The float dtype this backend creates tensors in.
    fn float_dtype(&self) -> DType;

    /// The dtype of trainable master weights and optimizer moments: the backend's own on the
    /// CPU; f32 on CUDA whatever the storage dtype (bf16 cannot hold small updates).
    fn master_dtype(&self) -> DType {
        self.float_dtype()
    }

    /// The dtype frozen linear weights are stored in, when a model is asked to store them
    /// compactly ([`crate::model::BertClassifier::store_frozen_weights`]): bf16 in bf16 mode
    /// (CUDA's and the CPU's: half the weight memory; their products round to bf16 anyway),
    /// the float dtype otherwise. [`Backend::linear_forward`] and [`Backend::linear_backward`] accept a weight
    /// in either dtype.
    fn frozen_dtype(&self) -> DType {
        self.float_dtype()
    }

    /// Waits until all queued work is done (a no-op where every call is synchronous): for
    /// timing, and to surface asynchronous failures.
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    /// Starts timing every kernel this backend (and its clones) launches from now on, on the
    /// device, for [`Backend::stop_kernel_timing`]; `false` where the backend launches no
    /// kernels (the CPU). Timing adds two event records per launch: time a step apart from
    /// the steps whose wall time is measured.
    fn start_kernel_timing(&self) -> Result<bool> {
        Ok(false)
    }

    /// Stops timing and returns the device time of each kernel launched since
    /// [`Backend::start_kernel_timing`], most time first, after waiting for them; `None`
    /// where timing was not started or the backend launches no kernels.
    fn stop_kernel_timing(&self) -> Result<Option<Vec<KernelTime>>> {
        Ok(None)
    }

    /// How the kernels this backend has launched so far were loaded (machine code for the GPU
    /// or PTX the driver compiled, see build.rs's `SPAFIT_CUDA_SASS`), where it launches any.
    fn kernel_code(&self) -> Option<String> {
        None
    }

    /// The most device memory in use at once since the last [`Backend::reset_peak_memory`],
    /// in bytes, where the backend tracks it (CUDA's memory pool).
    fn peak_memory_bytes(&self) -> Option<u64> {
        None
    }

    /// Starts a new peak-memory measurement.
    fn reset_peak_memory(&self) {}

    // ---- host transfer -------------------------------------------------------------------

    /// A float tensor in [`Backend::float_dtype`] from host values.
    fn tensor_from_f64(&self, shape: Shape, data: &[f64]) -> Result<Tensor<Self>> {
        self.tensor_from_f64_as(shape, data, self.float_dtype())
    }
    /// A float tensor of `dtype` (one this backend stores) from host values.
    fn tensor_from_f64_as(&self, shape: Shape, data: &[f64], dtype: DType) -> Result<Tensor<Self>>;
    /// `t` converted to the float `dtype` (round to nearest even when narrowing).
    fn cast(&self, t: &Tensor<Self>, dtype: DType) -> Result<Tensor<Self>>;
    /// A `U32` tensor (ids, labels, masks) from host values.
    fn tensor_from_u32(&self, shape: Shape, data: &[u32]) -> Result<Tensor<Self>>;
    /// A float tensor of zeros.
    fn zeros(&self, shape: Shape) -> Result<Tensor<Self>>;
    /// Copies a float tensor to the host as f64.
    fn to_f64(&self, t: &Tensor<Self>) -> Result<Vec<f64>>;
    /// Copies a float tensor to the host as f32 (an f64 one rounded to nearest): half the
    /// host memory of [`Backend::to_f64`] where the values are f32 values (f32 and bf16
    /// tensors, which files store as f32).
    fn to_f32(&self, t: &Tensor<Self>) -> Result<Vec<f32>> {
        Ok(self.to_f64(t)?.into_iter().map(|v| v as f32).collect())
    }
    /// Copies a `U32` tensor to the host.
    fn to_u32(&self, t: &Tensor<Self>) -> Result<Vec<u32>>;

    // ---- linear (+ fused LoRA) ----------------------------------------------------------

    /// `y = x·Wᵀ + b + scale·(x_lora·Aᵀ)·Bᵀ`; `x: [rows, in]`, `w: [out, in]`, `b: [out]`.
    /// `x_lora` defaults to `x` (it differs when LoRA dropout is on).
    fn linear_forward(
        &self,
        x: &Tensor<Self>,
        w: &Tensor<Self>,
        bias: Option<&Tensor<Self>>,
        lora: Option<LoraWeights<'_, Self>>,
        x_lora: Option<&Tensor<Self>>,
    ) -> Result<LinearOutput<Self>>;

    /// `x` as the products of [`Backend::linear_forward`] and [`Backend::linear_backward`] use
    /// it, where this backend rounds their f32 operands to bf16 (CUDA's bf16 mode) and
    /// rounding `x` once, ahead of them, pays: a bf16 copy, which
    /// [`Backend::linear_forward_with`] and `linear_backward` (as `x` and `x_lora`) take in
    /// `x`'s place with the same results, bit for bit. `None` where the products read `x` as
    /// it is (the CPU; CUDA in f32) or `x` is too small to pay. The tape rounds a linear map's
    /// input once for every map that reads it (the query, key and value maps) and keeps the
    /// copy, half the bytes, for the weight gradient.
    fn rounded_for_products(&self, x: &Tensor<Self>) -> Result<Option<Tensor<Self>>> {
        let _ = x;
        Ok(None)
    }

    /// Whether the tape recomputes in backward a linear map's input that its weight or
    /// adapter gradient reads, where that input is the output of a GELU or a LayerNorm whose
    /// own node keeps what it was computed from (the feed-forward's second map reads GELU's
    /// output; the query, key, value and feed-forward's first maps and the pooler read
    /// LayerNorms'), rather
    /// than keep it (or its copy from [`Backend::rounded_for_products`]) beside that: one or
    /// two elementwise passes more per map and backward (GELU or
    /// [`Backend::layernorm_apply`], and the rounding where the forward made a copy), one
    /// tensor of the map's input less held from forward to backward. The same kernels on the
    /// same inputs: the same bits either way. CUDA: yes (the passes are memory-bound and small
    /// beside the layer's GEMMs; device memory is what bounds the batch); the CPU: no
    /// (measured for GELU's on all-MiniLM-L6-v2, full fine-tuning at 16 × 256: 11% less
    /// memory added by the step, 1.4–2.7% slower steps; a CPU run is short of time before
    /// memory).
    fn recomputes_linear_inputs(&self) -> bool {
        false
    }

    /// `y` stored as a linear map's output for products is
    /// ([`LinearForwardOptions::output_for_products`]: bf16 in CUDA's bf16 mode), for such an
    /// output computed another way (a DoRA adapter's scaled columns), so that attention finds
    /// its query, key and value in one dtype. This default keeps `y` as it is, as this
    /// default [`Backend::linear_forward_with`] keeps an output it does not round.
    fn stored_for_products(&self, y: Tensor<Self>) -> Result<Tensor<Self>> {
        Ok(y)
    }

    /// [`Backend::linear_forward`] with `options` (see [`LinearForwardOptions`]). This
    /// default computes from `x` and rounds an output for products with
    /// [`Backend::rounded_for_products`].
    fn linear_forward_with(
        &self,
        x: &Tensor<Self>,
        w: &Tensor<Self>,
        bias: Option<&Tensor<Self>>,
        lora: Option<LoraWeights<'_, Self>>,
        x_lora: Option<&Tensor<Self>>,
        options: LinearForwardOptions<'_, Self>,
    ) -> Result<LinearOutput<Self>> {
        let mut out = self.linear_forward(x, w, bias, lora, x_lora)?;
        if options.output_for_products {
            if let Some(rounded) = self.rounded_for_products(&out.y)? {
                out.y = rounded;
            }
        }
        Ok(out)
    }

    /// The requested gradients of [`Backend::linear_forward`].
    fn linear_backward(
        &self,
        inputs: LinearBackwardInputs<'_, Self>,
        want: LinearGradRequest,
    ) -> Result<LinearGrads<Self>>;

    // ---- layernorm -----------------------------------------------------------------------

    /// Layernorm over the last dimension.
    fn layernorm_forward(
        &self,
        x: &Tensor<Self>,
        gamma: &Tensor<Self>,
        beta: &Tensor<Self>,
        eps: f64,
    ) -> Result<LayerNormOutput<Self>>;

    /// [`Backend::layernorm_forward`]'s `y` again, from its input `x` and the `mean` and
    /// `rstd` it returned: the same bits, for a backward that recomputes a LayerNorm output
    /// rather than keep it ([`Backend::recomputes_linear_inputs`]).
    fn layernorm_apply(
        &self,
        x: &Tensor<Self>,
        mean: &Tensor<Self>,
        rstd: &Tensor<Self>,
        gamma: &Tensor<Self>,
        beta: &Tensor<Self>,
    ) -> Result<Tensor<Self>>;

    /// [`Backend::layernorm_apply`]'s `y` as [`Backend::rounded_for_products`] leaves it: its
    /// bf16 copy where that makes one, else `y`. A backend may store the copy directly,
    /// without the f32 `y` between (CUDA): the same bits.
    fn layernorm_apply_for_products(
        &self,
        x: &Tensor<Self>,
        mean: &Tensor<Self>,
        rstd: &Tensor<Self>,
        gamma: &Tensor<Self>,
        beta: &Tensor<Self>,
    ) -> Result<Tensor<Self>> {
        let y = self.layernorm_apply(x, mean, rstd, gamma, beta)?;
        Ok(self.rounded_for_products(&y)?.unwrap_or(y))
    }

    /// The requested gradients of [`Backend::layernorm_forward`]. `x`, `mean`, `rstd` are
    /// needed for `dx`/`dgamma`, `gamma` for `dx`; pass `None` otherwise.
    #[allow(clippy::too_many_arguments)]
    fn layernorm_backward(
        &self,
        dy: &Tensor<Self>,
        x: Option<&Tensor<Self>>,
        mean: Option<&Tensor<Self>>,
        rstd: Option<&Tensor<Self>>,
        gamma: Option<&Tensor<Self>>,
        want: LayerNormGradRequest,
    ) -> Result<LayerNormGrads<Self>>;

    // ---- attention -----------------------------------------------------------------------

    /// Refuses a head dim whose attention this backend cannot run forward (and, with
    /// `backward`, backward), so that a model is refused when it loads (forward) or before
    /// its first training step (backward: [`crate::model::check_batch_memory`] of a training
    /// pass) rather than at a kernel launch. The CPU runs any.
    fn check_attention_head_dim(&self, head_dim: usize, backward: bool) -> Result<()> {
        let _ = (head_dim, backward);
        Ok(())
    }

    /// Multi-head self-attention `softmax(scale·q·kᵀ + mask)·v` per head. `q, k, v:
    /// [batch*seq, hidden]`, `mask: [batch, seq]` `U32`, nonzero where a key may be attended.
    /// A query whose keys are all masked gets a zero context. Where the backend rounds its
    /// products' operands (CUDA's bf16 mode), q, k, v may be given rounded, in the dtype of
    /// [`Backend::rounded_for_products`]'s copies, and the output keeps the activations'.
    fn attention_forward(
        &self,
        q: &Tensor<Self>,
        k: &Tensor<Self>,
        v: &Tensor<Self>,
        mask: &Tensor<Self>,
        config: &AttentionConfig,
    ) -> Result<AttentionOutput<Self>>;

    /// The requested gradients of [`Backend::attention_forward`]; probabilities are
    /// recomputed from `lse`, and the softmax's correction term `Σ_j P_ij·dP_ij` from them,
    /// not from the forward's output (`rowsum(d_out ∘ out)`, FlashAttention-2's shortcut), so
    /// that the output need not be kept for backward. `v` is read only for `dq` and `dk`
    /// (`dV = P̃ᵀ·d_out` needs none): pass `None` when only `dv` is asked for.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        d_out: &Tensor<Self>,
        q: &Tensor<Self>,
        k: &Tensor<Self>,
        v: Option<&Tensor<Self>>,
        lse: &Tensor<Self>,
        mask: &Tensor<Self>,
        config: &AttentionConfig,
        want: AttentionGradRequest,
    ) -> Result<AttentionGrads<Self>>;

    /// [`Backend::attention_forward`] with a relative position bias added to every score:
    /// `position_bias` `[2·seq − 1, heads]`, whose element `(seq − 1 + j − i, h)` is added
    /// to head `h`'s scaled score of query `i` for key `j` before the mask and the softmax
    /// (MPNet's and T5's bias: one value per head and relative distance, the same for every
    /// sequence of the batch).
    fn attention_forward_with_position_bias(
        &self,
        q: &Tensor<Self>,
        k: &Tensor<Self>,
        v: &Tensor<Self>,
        mask: &Tensor<Self>,
        position_bias: &Tensor<Self>,
        config: &AttentionConfig,
    ) -> Result<AttentionOutput<Self>>;

    /// The requested gradients of [`Backend::attention_forward_with_position_bias`], and the
    /// position bias's `[2·seq − 1, heads]` gradient where `want_position_bias` (the sum
    /// over the batch and over each relative distance's score pairs, in a fixed order).
    #[allow(clippy::too_many_arguments)]
    fn attention_backward_with_position_bias(
        &self,
        d_out: &Tensor<Self>,
        q: &Tensor<Self>,
        k: &Tensor<Self>,
        v: Option<&Tensor<Self>>,
        lse: &Tensor<Self>,
        mask: &Tensor<Self>,
        position_bias: &Tensor<Self>,
        config: &AttentionConfig,
        want: AttentionGradRequest,
        want_position_bias: bool,
    ) -> Result<(AttentionGrads<Self>, Option<Tensor<Self>>)>;

    /// [`Backend::attention_forward`] with DeBERTa's disentangled terms added to every
    /// score before the mask and the softmax: head `h`'s score of query `i` for key `j` is
    /// `scale · (q_i·k_j + q_i·kr_r + k_j·qr_r)` with `r = terms.rows[i][j]`, `kr` and `qr`
    /// head `h`'s columns of `terms.key` and `terms.query` (each term only where given).
    fn attention_forward_disentangled(
        &self,
        q: &Tensor<Self>,
        k: &Tensor<Self>,
        v: &Tensor<Self>,
        mask: &Tensor<Self>,
        terms: &RelativeTerms<'_, Self>,
        config: &AttentionConfig,
    ) -> Result<AttentionOutput<Self>>;

    /// The requested gradients of [`Backend::attention_forward_disentangled`], and where
    /// `want_terms` those of `terms.key` and `terms.query` (each `[rows, hidden]`, summed over
    /// the batch in a fixed order) for the terms given.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward_disentangled(
        &self,
        d_out: &Tensor<Self>,
        q: &Tensor<Self>,
        k: &Tensor<Self>,
        v: Option<&Tensor<Self>>,
        lse: &Tensor<Self>,
        mask: &Tensor<Self>,
        terms: &RelativeTerms<'_, Self>,
        config: &AttentionConfig,
        want: AttentionGradRequest,
        want_terms: bool,
    ) -> Result<DisentangledGrads<Self>>;

    // ---- elementwise ---------------------------------------------------------------------

    /// GELU, erf form: `x · Φ(x)`.
    fn gelu_forward(&self, x: &Tensor<Self>) -> Result<Tensor<Self>>;
    /// [`Backend::gelu_forward`]'s output as [`Backend::rounded_for_products`] leaves it: its
    /// bf16 copy where that makes one, else the output. A backend may store the copy
    /// directly, without the f32 output between (CUDA): the same bits.
    fn gelu_forward_for_products(&self, x: &Tensor<Self>) -> Result<Tensor<Self>> {
        let y = self.gelu_forward(x)?;
        Ok(self.rounded_for_products(&y)?.unwrap_or(y))
    }
    /// [`Backend::gelu_forward`] of a tensor the caller gives up (a pass that keeps no
    /// pre-activation: inference, a frozen layer): a backend may write the output over `x`
    /// where no other tensor shares its buffer, sparing an activation-sized allocation. The
    /// same values as `gelu_forward`.
    fn gelu_forward_owned(&self, x: Tensor<Self>) -> Result<Tensor<Self>> {
        self.gelu_forward(&x)
    }
    /// `dy · GELU'(x)`.
    fn gelu_backward(&self, dy: &Tensor<Self>, x: &Tensor<Self>) -> Result<Tensor<Self>>;
    /// `tanh(x)`.
    fn tanh_forward(&self, x: &Tensor<Self>) -> Result<Tensor<Self>>;
    /// `dy · (1 − y²)` from the forward output `y`.
    fn tanh_backward(&self, dy: &Tensor<Self>, y: &Tensor<Self>) -> Result<Tensor<Self>>;
    /// `max(x, 0)`, NaN kept (as PyTorch's `relu`): DistilBERT's head.
    fn relu_forward(&self, x: &Tensor<Self>) -> Result<Tensor<Self>>;
    /// `dy` where the forward output `y` is not ≤ 0, else 0 (PyTorch's `threshold_backward`).
    fn relu_backward(&self, dy: &Tensor<Self>, y: &Tensor<Self>) -> Result<Tensor<Self>>;
    /// `a + b` (same shape): the residual connection.
    fn add(&self, a: &Tensor<Self>, b: &Tensor<Self>) -> Result<Tensor<Self>>;
    /// `acc += x` in place: gradient accumulation.
    fn add_assign(&self, acc: &mut Tensor<Self>, x: &Tensor<Self>) -> Result<()>;
    /// [`Backend::add_assign`] of each pair, `accs[i] += xs[i]`, bit for bit, in one call
    /// (a micro-batch's gradients added to the step's sums): every pair is checked before any
    /// changes, and a device backend launches once per few dozen tensors, not once each.
    fn add_assign_each(&self, accs: &mut [&mut Tensor<Self>], xs: &[&Tensor<Self>]) -> Result<()> {
        shapes::add_assign_pairs(accs, xs)?;
        accs.iter_mut()
            .zip(xs)
            .try_for_each(|(acc, x)| self.add_assign(acc, x))
    }
    /// `t *= s` in place: gradient clipping.
    fn scale_in_place(&self, t: &mut Tensor<Self>, s: f64) -> Result<()>;
    /// [`Backend::scale_in_place`] of each tensor, bit for bit, in one call (clipping every
    /// gradient of a step): a device backend checks every tensor before it changes any and
    /// launches once per few dozen tensors, not once each.
    fn scale_each(&self, ts: &mut [&mut Tensor<Self>], s: f64) -> Result<()> {
        ts.iter_mut().try_for_each(|t| self.scale_in_place(t, s))
    }
    /// `Σ t²` as f64, for gradient norms (the CPU accumulates in f64; CUDA in f32 within a
    /// block and in f64 across blocks).
    fn sum_squares(&self, t: &Tensor<Self>) -> Result<f64>;
    /// [`Backend::sum_squares`] of each tensor, bit for bit, in one call: a global gradient
    /// norm over hundreds of tensors then costs a device backend one wait, not one each.
    fn sum_squares_each(&self, ts: &[&Tensor<Self>]) -> Result<Vec<f64>> {
        ts.iter().map(|t| self.sum_squares(t)).collect()
    }
    /// `x ∘ mask / (1 − p)`. The same call is its own backward: apply it to `dy` with the
    /// same [`Dropout`] and shape.
    fn dropout(&self, x: &Tensor<Self>, dropout: Dropout) -> Result<Tensor<Self>>;

    // ---- per-column scales and sums (DoRA) ------------------------------------------------

    /// `y[…, c] = z[…, c]·scale[c] (+ bias[c])`: a DoRA adapter's output, each column scaled by
    /// its row's magnitude over the norm of its adapted weight row, and the gradient that
    /// flows back through that scaling (no bias). `scale` holds one value per column of `z`.
    fn scale_columns(
        &self,
        z: &Tensor<Self>,
        scale: &[f64],
        bias: Option<&Tensor<Self>>,
    ) -> Result<Tensor<Self>>;
    /// `Σ_r a[r, c]·b[r, c]` per column of two tensors of one shape `[…, cols]`, on the host:
    /// a DoRA magnitude's gradient. Summed in an order fixed by the shape alone.
    fn column_dots(&self, a: &Tensor<Self>, b: &Tensor<Self>) -> Result<Vec<f64>>;
    /// `Σ_r a[r, c]` per column of `a` `[…, cols]`, a `[cols]` tensor of `a`'s dtype (a bias's
    /// gradient), summed in an order fixed by the shape alone.
    fn column_sums(&self, a: &Tensor<Self>) -> Result<Tensor<Self>>;

    // ---- embeddings ----------------------------------------------------------------------

    /// `out[i] = table[ids[i]]`: `table: [vocab, dim]`, `ids: [n]` `U32` → `[n, dim]`.
    fn embedding_forward(&self, table: &Tensor<Self>, ids: &Tensor<Self>) -> Result<Tensor<Self>>;
    /// Scatter-add of `d_out` rows into a `[vocab, dim]` gradient, in a fixed order.
    fn embedding_backward(
        &self,
        d_out: &Tensor<Self>,
        ids: &Tensor<Self>,
        vocab: usize,
    ) -> Result<Tensor<Self>>;

    // ---- losses --------------------------------------------------------------------------

    /// Mean softmax cross-entropy: `logits: [n, classes]`, `labels: [n]` `U32` → `[1]`.
    fn cross_entropy_forward(
        &self,
        logits: &Tensor<Self>,
        labels: &Tensor<Self>,
    ) -> Result<Tensor<Self>>;
    /// `d_loss: [1]` → `d_logits`.
    fn cross_entropy_backward(
        &self,
        d_loss: &Tensor<Self>,
        logits: &Tensor<Self>,
        labels: &Tensor<Self>,
    ) -> Result<Tensor<Self>>;
    /// Mean binary cross-entropy of `sigmoid(logits)` against float `targets` of the same
    /// shape (multi-label classification: one 0/1 per class), over every element → `[1]`.
    fn bce_with_logits_forward(
        &self,
        logits: &Tensor<Self>,
        targets: &Tensor<Self>,
    ) -> Result<Tensor<Self>>;
    /// `d_loss: [1]` → `d_logits`.
    fn bce_with_logits_backward(
        &self,
        d_loss: &Tensor<Self>,
        logits: &Tensor<Self>,
        targets: &Tensor<Self>,
    ) -> Result<Tensor<Self>>;
    /// Mean squared error of `pred` against float `target` (same element count) → `[1]`.
    fn mse_forward(&self, pred: &Tensor<Self>, target: &Tensor<Self>) -> Result<Tensor<Self>>;
    /// `d_loss: [1]` → `d_pred`.
    fn mse_backward(
        &self,
        d_loss: &Tensor<Self>,
        pred: &Tensor<Self>,
        target: &Tensor<Self>,
    ) -> Result<Tensor<Self>>;

    // ---- optimizer -----------------------------------------------------------------------

    /// One fused AdamW update of `param` and its moments `m`, `v` in place.
    fn adamw_step(
        &self,
        param: &mut Tensor<Self>,
        grad: &Tensor<Self>,
        m: &mut Tensor<Self>,
        v: &mut Tensor<Self>,
        step: &AdamWStep,
    ) -> Result<()>;

    /// [`Backend::adamw_step`] of each update, bit for bit, in one call (every trainable
    /// tensor of a step). A device backend checks every update before it changes any and
    /// launches once per few dozen tensors; this default updates them one after the other.
    fn adamw_step_each(&self, updates: &mut [AdamWUpdate<'_, Self>]) -> Result<()> {
        updates
            .iter_mut()
            .try_for_each(|u| self.adamw_step(u.param, u.grad, u.m, u.v, &u.step))
    }
}

/// One tensor's part of [`Backend::adamw_step_each`].
#[derive(Debug)]
pub struct AdamWUpdate<'a, B: Backend> {
    /// The f32 master weight, updated in place.
    pub param: &'a mut Tensor<B>,
    /// Its gradient (the parameter's shape; f32, or bf16 on CUDA).
    pub grad: &'a Tensor<B>,
    /// First moment, updated in place.
    pub m: &'a mut Tensor<B>,
    /// Second moment, updated in place.
    pub v: &'a mut Tensor<B>,
    /// The step's settings for this tensor (weight decay differs between tensors).
    pub step: AdamWStep,
}

macro_rules! impl_empty_default {
    ($($t:ident { $($f:ident),* }),*) => {$(
        impl<B: Backend> Default for $t<B> {
            fn default() -> Self {
                $t { $($f: None),* }
            }
        }
    )*};
}

impl_empty_default!(
    LinearGrads {
        dx,
        dw,
        dbias,
        dlora_a,
        dlora_b,
        dlora_input
    },
    LayerNormGrads { dx, dgamma, dbeta },
    AttentionGrads { dq, dk, dv }
);
