//! The CPU backend: the numerical reference of the project, in f32 or f64.
//!
//! Every op validates its operands through [`crate::backend::shapes`], dispatches once on the
//! dtype and runs a generic kernel over slices. GEMMs go through [`gemm`]; everything else is
//! plain loops in a fixed order, so results are bitwise reproducible.

mod adamw;
#[cfg(target_arch = "x86_64")]
mod amx;
mod attention;
mod bf16_copies;
mod bf16_gemm;
mod chains;
mod columns;
mod dropout;
mod element;
mod elementwise;
mod embedding;
mod fast_math;
pub mod gemm;
mod lanes;
mod layernorm;
mod linear;
pub(crate) mod loss;
#[cfg(target_arch = "x86_64")]
mod sgemm_avx512;
#[cfg(target_arch = "x86_64")]
mod sgemm_dot;

pub use element::{CpuBuffer, Element, SmallProduct};

use super::shapes::{self, AttentionDims, LinearDims};
use super::{
    AdamWStep, AdamWUpdate, AttentionConfig, AttentionGradRequest, AttentionGrads, AttentionOutput,
    Backend, DisentangledGrads, Dropout, LayerNormGradRequest, LayerNormGrads, LayerNormOutput,
    LinearBackwardInputs, LinearGradRequest, LinearGrads, LinearOutput, LoraWeights, RelativeTerms,
};
use crate::error::{Error, Result};
use crate::tensor::{DType, Shape, Tensor};

/// The CPU backend. `dtype` is the precision new float tensors are created in; ops compute
/// in the dtype of their inputs. `frozen` is how frozen linear weights are stored: the same,
/// or bf16 in bf16 mode (mixed precision as CUDA's: f32 activations, gradients and trainable
/// weights; the products with a frozen weight take both operands rounded to bf16 and sum in
/// f32, on AMX tiles or AVX-512 BF16 where the CPU has them: [`CpuBackend::bf16_products`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuBackend {
    dtype: DType,
    frozen: DType,
}

impl CpuBackend {
    /// A CPU backend creating tensors in `dtype`: f32 or f64, or bf16 for the f32 backend
    /// with frozen linear weights in bf16.
    pub fn new(dtype: DType) -> Result<Self> {
        match dtype {
            DType::F32 | DType::F64 => Ok(CpuBackend {
                dtype,
                frozen: dtype,
            }),
            DType::BF16 => Ok(CpuBackend {
                dtype: DType::F32,
                frozen: DType::BF16,
            }),
            other => Err(Error::dtype(
                "cpu backend",
                format!(
                    "the CPU backend computes in f32 or f64 (bf16: frozen weights), not {other}"
                ),
            )),
        }
    }

    /// The f64 reference backend.
    pub fn f64() -> Self {
        CpuBackend {
            dtype: DType::F64,
            frozen: DType::F64,
        }
    }

    /// The f32 backend.
    pub fn f32() -> Self {
        CpuBackend {
            dtype: DType::F32,
            frozen: DType::F32,
        }
    }

    /// The bf16 mode: f32, with frozen linear weights in bf16.
    pub fn bf16() -> Self {
        CpuBackend {
            dtype: DType::F32,
            frozen: DType::BF16,
        }
    }

    /// Whether this CPU has AVX-512 BF16 dot products, on which (or on AMX tiles beside them:
    /// [`CpuBackend::bf16_products`]) the bf16 mode's products run; else they go through the
    /// f32 GEMM, slower than f32 itself.
    pub fn has_bf16_dot_products() -> bool {
        bf16_gemm::avx512_bf16()
    }

    /// What runs the bf16 mode's products on this CPU: `amx` (Intel's AMX tiles,
    /// `tdpbf16ps`: Sapphire Rapids on, where Linux grants them and `SPAFIT_CPU_NO_AMX` is
    /// not `1`), `avx512_bf16` (`vdpbf16ps`), or `f32_gemm` (the operands rounded, then the
    /// f32 GEMM). Each sums a product in f32 in its own order: their bits differ, within
    /// f32 rounding of the sums. With `amx` or `avx512_bf16`, a forward product of at most
    /// 48 rows (a single text, a small batch) runs on `vdpbf16ps` as dot products of the
    /// weight's rows in place (no packing), in another order again: a text's bits then depend
    /// on its batch's size (as in f32 on CPUs with AVX2 but not AVX-512, whose few-row
    /// products have their own kernel too).
    pub fn bf16_products() -> &'static str {
        match (bf16_gemm::amx_tiles(), bf16_gemm::avx512_bf16()) {
            (true, _) => "amx",
            (false, true) => "avx512_bf16",
            (false, false) => "f32_gemm",
        }
    }

    /// The dtype a linear map's weight may have besides the activations' `dtype`: bf16 in
    /// the bf16 mode (its kernels read bf16 weights beside f32 activations), else none other:
    /// an f64 backend's stored weights beside an f32 backend's activations (one model on
    /// two `CpuBackend`s) are a mix no kernel here reads.
    fn frozen_beside(&self, dtype: DType) -> DType {
        match self.frozen {
            DType::BF16 => DType::BF16,
            _ => dtype,
        }
    }
}

/// Runs `$body` with `$t` bound to the Rust type of a float dtype.
macro_rules! with_float {
    ($dtype:expr, $op:expr, $t:ident => $body:expr) => {
        match $dtype {
            DType::F32 => {
                type $t = f32;
                $body
            }
            DType::F64 => {
                type $t = f64;
                $body
            }
            other => Err(Error::dtype(
                $op,
                format!("the CPU backend computes in f32 or f64, not {other}"),
            )),
        }
    };
}

/// The elements of a tensor whose dtype was checked by the caller.
fn view<T: Element>(t: &Tensor<CpuBackend>) -> &[T] {
    T::slice(t.buffer()).expect("dtype checked before dispatch")
}

fn view_mut<T: Element>(t: &mut Tensor<CpuBackend>) -> &mut [T] {
    T::slice_mut(t.buffer_mut()).expect("dtype checked before dispatch")
}

fn ids(t: &Tensor<CpuBackend>) -> &[u32] {
    match t.buffer() {
        CpuBuffer::U32(v) => v,
        _ => unreachable!("u32 checked before dispatch"),
    }
}

fn tensor<T: Element>(shape: impl Into<Shape>, data: Vec<T>) -> Result<Tensor<CpuBackend>> {
    Tensor::from_buffer(shape, T::wrap(data))
}

/// `shape` with its last dimension replaced.
fn with_last_dim(shape: &Shape, last: usize) -> Shape {
    let mut dims = shape.dims().to_vec();
    if let Some(l) = dims.last_mut() {
        *l = last;
    }
    Shape::new(dims)
}

fn require_input<'a>(
    op: &'static str,
    grad: &str,
    name: &str,
    t: Option<&'a Tensor<CpuBackend>>,
) -> Result<&'a Tensor<CpuBackend>> {
    t.ok_or_else(|| {
        Error::invalid(
            op,
            format!("{grad} was requested but `{name}` was not given"),
        )
    })
}

/// A bf16 weight multiplies f32 activations only (the bf16 mode's).
fn require_f32_with_bf16_weight(op: &'static str, dtype: DType) -> Result<()> {
    if dtype != DType::F32 {
        return Err(Error::dtype(
            op,
            format!("a bf16 weight multiplies f32 activations, not {dtype}"),
        ));
    }
    Ok(())
}

fn scalar_value<T: Element>(op: &'static str, d_loss: &Tensor<CpuBackend>) -> Result<T> {
    if d_loss.numel() != 1 {
        return Err(Error::shape(
            op,
            format!(
                "`d_loss` must hold one element, got shape {}",
                d_loss.shape()
            ),
        ));
    }
    Ok(view::<T>(d_loss)[0])
}

impl Backend for CpuBackend {
    type Buffer = CpuBuffer;

    fn name(&self) -> String {
        format!("cpu-{}", self.frozen)
    }

    fn float_dtype(&self) -> DType {
        self.dtype
    }

    fn frozen_dtype(&self) -> DType {
        self.frozen
    }

    fn tensor_from_f64_as(&self, shape: Shape, data: &[f64], dtype: DType) -> Result<Tensor<Self>> {
        use crate::tensor::collect_host;
        let what = || format!("a {dtype} tensor {shape}");
        let buf = match dtype {
            DType::F32 => CpuBuffer::F32(collect_host(
                data.iter().map(|&v| v as f32),
                "tensor",
                what,
            )?),
            DType::F64 => CpuBuffer::F64(collect_host(data.iter().copied(), "tensor", what)?),
            DType::BF16 => CpuBuffer::BF16(collect_host(
                data.iter().map(|&v| crate::tensor::bf16_from_f64(v)),
                "tensor",
                what,
            )?),
            other => {
                return Err(Error::dtype(
                    "tensor",
                    format!(
                        "float values make f32, f64 or bf16 tensors, not {other} (ids: \
                         tensor_from_u32)"
                    ),
                ))
            }
        };
        Tensor::from_buffer(shape, buf)
    }

    fn cast(&self, t: &Tensor<Self>, dtype: DType) -> Result<Tensor<Self>> {
        if t.dtype() == dtype {
            return Ok(t.clone());
        }
        match t.dtype() {
            DType::F32 | DType::F64 | DType::BF16 => {
                self.tensor_from_f64_as(t.shape().clone(), &self.to_f64(t)?, dtype)
            }
            other => Err(Error::dtype(
                "cast",
                format!("cannot cast {other} to {dtype}"),
            )),
        }
    }

    fn tensor_from_u32(&self, shape: Shape, data: &[u32]) -> Result<Tensor<Self>> {
        Tensor::from_buffer(shape, CpuBuffer::U32(data.to_vec()))
    }

    fn zeros(&self, shape: Shape) -> Result<Tensor<Self>> {
        let n = shape.checked_numel().ok_or_else(|| {
            Error::shape(
                "zeros",
                format!("shape {shape} has more elements than memory can address"),
            )
        })?;
        let buf = match self.dtype {
            DType::F32 => CpuBuffer::F32(vec![0.0; n]),
            _ => CpuBuffer::F64(vec![0.0; n]),
        };
        Tensor::from_buffer(shape, buf)
    }

    fn to_f64(&self, t: &Tensor<Self>) -> Result<Vec<f64>> {
        match t.buffer() {
            CpuBuffer::F32(v) => Ok(v.iter().map(|&x| f64::from(x)).collect()),
            CpuBuffer::F64(v) => Ok(v.clone()),
            CpuBuffer::BF16(v) => Ok(v.iter().map(|x| x.to_f64()).collect()),
            CpuBuffer::U32(_) => Err(Error::dtype("to_f64", "tensor holds u32, not floats")),
        }
    }

    fn to_f32(&self, t: &Tensor<Self>) -> Result<Vec<f32>> {
        match t.buffer() {
            CpuBuffer::F32(v) => Ok(v.clone()),
            CpuBuffer::F64(v) => Ok(v.iter().map(|&x| x as f32).collect()),
            CpuBuffer::BF16(v) => Ok(v.iter().map(|x| x.to_f32()).collect()),
            CpuBuffer::U32(_) => Err(Error::dtype("to_f32", "tensor holds u32, not floats")),
        }
    }

    fn to_u32(&self, t: &Tensor<Self>) -> Result<Vec<u32>> {
        match t.buffer() {
            CpuBuffer::U32(v) => Ok(v.clone()),
            other => Err(Error::dtype(
                "to_u32",
                format!(
                    "tensor holds {}, not u32",
                    super::DeviceBuffer::dtype(other)
                ),
            )),
        }
    }

    fn linear_forward(
        &self,
        x: &Tensor<Self>,
        w: &Tensor<Self>,
        bias: Option<&Tensor<Self>>,
        lora: Option<LoraWeights<'_, Self>>,
        x_lora: Option<&Tensor<Self>>,
    ) -> Result<LinearOutput<Self>> {
        let d = shapes::linear(x, w, bias, lora.as_ref(), x_lora)?;
        shapes::weight_dtype("linear", w, x.dtype(), self.frozen_beside(x.dtype()))?;
        if let CpuBuffer::BF16(wb) = w.buffer() {
            require_f32_with_bf16_weight("linear", x.dtype())?;
            let l = lora.as_ref().map(|l| linear::Lora {
                a: view::<f32>(l.a),
                b: view::<f32>(l.b),
                scale: l.scale as f32,
            });
            let (y, h) = linear::forward_bf16(
                d,
                view::<f32>(x),
                wb,
                bias.map(view::<f32>),
                l.as_ref(),
                view::<f32>(x_lora.unwrap_or(x)),
            );
            let h = h
                .map(|h| tensor(with_last_dim(x.shape(), d.rank), h))
                .transpose()?;
            return Ok(LinearOutput {
                y: tensor(with_last_dim(x.shape(), d.output), y)?,
                h,
            });
        }
        with_float!(x.dtype(), "linear", T => {
            let l = lora.as_ref().map(|l| linear::Lora {
                a: view::<T>(l.a),
                b: view::<T>(l.b),
                scale: T::from_f64(l.scale),
            });
            let (y, h) = linear::forward(
                d,
                view::<T>(x),
                view::<T>(w),
                bias.map(view::<T>),
                l.as_ref(),
                view::<T>(x_lora.unwrap_or(x)),
            );
            let h = match h {
                Some(h) => Some(tensor(with_last_dim(x.shape(), d.rank), h)?),
                None => None,
            };
            Ok(LinearOutput { y: tensor(with_last_dim(x.shape(), d.output), y)?, h })
        })
    }

    fn linear_backward(
        &self,
        inp: LinearBackwardInputs<'_, Self>,
        want: LinearGradRequest,
    ) -> Result<LinearGrads<Self>> {
        const OP: &str = "linear backward";
        let dy = inp.dy;
        // This backend makes no rounded copies: `x` has the activations' dtype.
        let (dtype, d) = shapes::linear_backward(&inp, inp.dy.dtype())?;
        if let Some(w) = inp.w {
            shapes::weight_dtype(OP, w, dtype, self.frozen_beside(dtype))?;
            if w.dtype() == DType::BF16 {
                require_f32_with_bf16_weight(OP, dtype)?;
            }
        }
        let LinearDims {
            rows: _,
            input,
            output,
            rank,
        } = d;
        let in_shape = with_last_dim(dy.shape(), input);
        with_float!(dtype, OP, T => {
            let dyv = view::<T>(dy);
            let mut g = LinearGrads::default();
            if want.dx {
                let w = require_input(OP, "dX", "weight", inp.w)?;
                g.dx = Some(match w.buffer() {
                    CpuBuffer::BF16(wb) => tensor(in_shape.clone(), linear::grad_input_bf16(d, view::<f32>(dy), wb))?,
                    _ => tensor(in_shape.clone(), linear::grad_input(d, dyv, view::<T>(w)))?,
                });
            }
            if want.dw {
                let x = require_input(OP, "dW", "x", inp.x)?;
                g.dw = Some(tensor([output, input], linear::grad_weight(d, dyv, view::<T>(x)))?);
            }
            if want.dbias {
                g.dbias = Some(tensor([output], linear::column_sum(dyv, output))?);
            }
            if want.dlora_a || want.dlora_input || want.dlora_b {
                let l = inp.lora.as_ref().ok_or_else(|| {
                    Error::invalid(OP, "a LoRA gradient was requested without LoRA weights")
                })?;
                let lora = linear::Lora { a: view::<T>(l.a), b: view::<T>(l.b), scale: T::from_f64(l.scale) };
                if want.dlora_b {
                    let h = require_input(OP, "dB", "h", inp.h)?;
                    g.dlora_b = Some(tensor([output, rank], linear::grad_lora_b(d, dyv, view::<T>(h), lora.scale))?);
                }
                if want.dlora_a || want.dlora_input {
                    let bottleneck = linear::grad_bottleneck(d, dyv, &lora);
                    if want.dlora_a {
                        let xl = require_input(OP, "dA", "x_lora", inp.x_lora)?;
                        g.dlora_a = Some(tensor([rank, input], linear::grad_lora_a(d, &bottleneck, view::<T>(xl)))?);
                    }
                    if want.dlora_input {
                        g.dlora_input = Some(tensor(in_shape.clone(), linear::grad_lora_input(d, &bottleneck, lora.a))?);
                    }
                }
            }
            if want.dx && want.dx_includes_lora {
                if let (Some(dx), Some(l)) = (g.dx.as_mut(), inp.lora.as_ref()) {
                    let lora = linear::Lora { a: view::<T>(l.a), b: view::<T>(l.b), scale: T::from_f64(l.scale) };
                    let through = linear::grad_lora_input(d, &linear::grad_bottleneck(d, dyv, &lora), lora.a);
                    for (a, b) in view_mut::<T>(dx).iter_mut().zip(&through) {
                        *a += *b;
                    }
                }
            }
            Ok(g)
        })
    }

    fn layernorm_forward(
        &self,
        x: &Tensor<Self>,
        gamma: &Tensor<Self>,
        beta: &Tensor<Self>,
        eps: f64,
    ) -> Result<LayerNormOutput<Self>> {
        const OP: &str = "layernorm";
        let (dtype, rows, n) = shapes::layernorm(x, gamma, beta, eps)?;
        with_float!(dtype, OP, T => {
            let (y, mean, rstd) =
                layernorm::forward(view::<T>(x), view::<T>(gamma), view::<T>(beta), n, T::from_f64(eps));
            Ok(LayerNormOutput {
                y: tensor(x.shape().clone(), y)?,
                mean: tensor([rows], mean)?,
                rstd: tensor([rows], rstd)?,
            })
        })
    }

    fn layernorm_apply(
        &self,
        x: &Tensor<Self>,
        mean: &Tensor<Self>,
        rstd: &Tensor<Self>,
        gamma: &Tensor<Self>,
        beta: &Tensor<Self>,
    ) -> Result<Tensor<Self>> {
        const OP: &str = "layernorm apply";
        let (dtype, _, n) = shapes::layernorm_apply(x, mean, rstd, gamma, beta)?;
        shapes::common_float_dtype(OP, &[("x", x), ("mean", mean), ("rstd", rstd)])?;
        with_float!(dtype, OP, T => {
            let y = layernorm::apply(view::<T>(x), view::<T>(mean), view::<T>(rstd), view::<T>(gamma), view::<T>(beta), n);
            tensor(x.shape().clone(), y)
        })
    }

    fn layernorm_backward(
        &self,
        dy: &Tensor<Self>,
        x: Option<&Tensor<Self>>,
        mean: Option<&Tensor<Self>>,
        rstd: Option<&Tensor<Self>>,
        gamma: Option<&Tensor<Self>>,
        want: LayerNormGradRequest,
    ) -> Result<LayerNormGrads<Self>> {
        const OP: &str = "layernorm backward";
        let (_, n) = shapes::layernorm_backward(dy, x, mean, rstd, gamma)?;
        let mut named = vec![("dy", dy)];
        for (name, t) in [("x", x), ("mean", mean), ("rstd", rstd), ("gamma", gamma)] {
            named.extend(t.map(|t| (name, t)));
        }
        let dtype = shapes::common_float_dtype(OP, &named)?;
        with_float!(dtype, OP, T => {
            let dyv = view::<T>(dy);
            let mut g = LayerNormGrads::default();
            if want.dbeta {
                g.dbeta = Some(tensor([n], layernorm::grad_beta(dyv, n))?);
            }
            if want.dgamma || want.dx {
                let xv = view::<T>(require_input(OP, "dgamma/dx", "x", x)?);
                let mv = view::<T>(require_input(OP, "dgamma/dx", "mean", mean)?);
                let rv = view::<T>(require_input(OP, "dgamma/dx", "rstd", rstd)?);
                if want.dgamma {
                    g.dgamma = Some(tensor([n], layernorm::grad_gamma(dyv, xv, mv, rv, n))?);
                }
                if want.dx {
                    let gv = view::<T>(require_input(OP, "dx", "gamma", gamma)?);
                    g.dx = Some(tensor(dy.shape().clone(), layernorm::grad_input(dyv, xv, mv, rv, gv, n))?);
                }
            }
            Ok(g)
        })
    }

    fn attention_forward(
        &self,
        q: &Tensor<Self>,
        k: &Tensor<Self>,
        v: &Tensor<Self>,
        mask: &Tensor<Self>,
        config: &AttentionConfig,
    ) -> Result<AttentionOutput<Self>> {
        self.attention_forward_biased(q, k, v, mask, Bias::None, config)
    }

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
    ) -> Result<AttentionGrads<Self>> {
        let (g, _) = self.attention_backward_biased(
            d_out,
            q,
            k,
            v,
            lse,
            mask,
            Bias::None,
            config,
            want,
            false,
        )?;
        Ok(g.attention)
    }

    fn attention_forward_with_position_bias(
        &self,
        q: &Tensor<Self>,
        k: &Tensor<Self>,
        v: &Tensor<Self>,
        mask: &Tensor<Self>,
        position_bias: &Tensor<Self>,
        config: &AttentionConfig,
    ) -> Result<AttentionOutput<Self>> {
        self.attention_forward_biased(q, k, v, mask, Bias::Position(position_bias), config)
    }

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
    ) -> Result<(AttentionGrads<Self>, Option<Tensor<Self>>)> {
        let (g, d_bias) = self.attention_backward_biased(
            d_out,
            q,
            k,
            v,
            lse,
            mask,
            Bias::Position(position_bias),
            config,
            want,
            want_position_bias,
        )?;
        Ok((g.attention, d_bias))
    }

    fn attention_forward_disentangled(
        &self,
        q: &Tensor<Self>,
        k: &Tensor<Self>,
        v: &Tensor<Self>,
        mask: &Tensor<Self>,
        terms: &RelativeTerms<'_, Self>,
        config: &AttentionConfig,
    ) -> Result<AttentionOutput<Self>> {
        self.attention_forward_biased(q, k, v, mask, Bias::Relative(terms), config)
    }

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
    ) -> Result<DisentangledGrads<Self>> {
        let (g, _) = self.attention_backward_biased(
            d_out,
            q,
            k,
            v,
            lse,
            mask,
            Bias::Relative(terms),
            config,
            want,
            want_terms,
        )?;
        Ok(g)
    }

    fn gelu_forward(&self, x: &Tensor<Self>) -> Result<Tensor<Self>> {
        let dtype = shapes::common_float_dtype("gelu", &[("x", x)])?;
        with_float!(dtype, "gelu", T => tensor(x.shape().clone(), elementwise::gelu(view::<T>(x))))
    }

    fn gelu_forward_owned(&self, mut x: Tensor<Self>) -> Result<Tensor<Self>> {
        let dtype = shapes::common_float_dtype("gelu", &[("x", &x)])?;
        // At 64 × 256 tokens on MiniLM the output took 100 MB of fresh pages per layer, each
        // faulted in and zeroed by the kernel: over `x`, it takes none.
        if let Some(buf) = x.buffer_if_unique() {
            let done = match dtype {
                DType::F32 => f32::slice_mut(buf).map(elementwise::gelu_in_place),
                DType::F64 => f64::slice_mut(buf).map(elementwise::gelu_in_place),
                _ => None,
            };
            if done.is_some() {
                return Ok(x);
            }
        }
        self.gelu_forward(&x)
    }

    fn gelu_backward(&self, dy: &Tensor<Self>, x: &Tensor<Self>) -> Result<Tensor<Self>> {
        const OP: &str = "gelu backward";
        let dtype = shapes::common_float_dtype(OP, &[("dy", dy), ("x", x)])?;
        shapes::require_same_shape(OP, ("dy", dy), ("x", x))?;
        with_float!(dtype, OP, T => tensor(x.shape().clone(), elementwise::gelu_backward(view::<T>(dy), view::<T>(x))))
    }

    fn tanh_forward(&self, x: &Tensor<Self>) -> Result<Tensor<Self>> {
        let dtype = shapes::common_float_dtype("tanh", &[("x", x)])?;
        with_float!(dtype, "tanh", T => tensor(x.shape().clone(), elementwise::tanh(view::<T>(x))))
    }

    fn tanh_backward(&self, dy: &Tensor<Self>, y: &Tensor<Self>) -> Result<Tensor<Self>> {
        const OP: &str = "tanh backward";
        let dtype = shapes::common_float_dtype(OP, &[("dy", dy), ("y", y)])?;
        shapes::require_same_shape(OP, ("dy", dy), ("y", y))?;
        with_float!(dtype, OP, T => tensor(y.shape().clone(), elementwise::tanh_backward(view::<T>(dy), view::<T>(y))))
    }

    fn relu_forward(&self, x: &Tensor<Self>) -> Result<Tensor<Self>> {
        let dtype = shapes::common_float_dtype("relu", &[("x", x)])?;
        with_float!(dtype, "relu", T => tensor(x.shape().clone(), elementwise::relu(view::<T>(x))))
    }

    fn relu_backward(&self, dy: &Tensor<Self>, y: &Tensor<Self>) -> Result<Tensor<Self>> {
        const OP: &str = "relu backward";
        let dtype = shapes::common_float_dtype(OP, &[("dy", dy), ("y", y)])?;
        shapes::require_same_shape(OP, ("dy", dy), ("y", y))?;
        with_float!(dtype, OP, T => tensor(y.shape().clone(), elementwise::relu_backward(view::<T>(dy), view::<T>(y))))
    }

    fn add(&self, a: &Tensor<Self>, b: &Tensor<Self>) -> Result<Tensor<Self>> {
        let dtype = shapes::common_float_dtype("add", &[("a", a), ("b", b)])?;
        shapes::require_same_shape("add", ("a", a), ("b", b))?;
        with_float!(dtype, "add", T => tensor(a.shape().clone(), elementwise::add(view::<T>(a), view::<T>(b))))
    }

    fn add_assign(&self, acc: &mut Tensor<Self>, x: &Tensor<Self>) -> Result<()> {
        let dtype = shapes::common_float_dtype("add_assign", &[("acc", acc), ("x", x)])?;
        shapes::require_same_shape("add_assign", ("acc", acc), ("x", x))?;
        with_float!(dtype, "add_assign", T => {
            elementwise::add_assign(view_mut::<T>(acc), view::<T>(x));
            Ok(())
        })
    }

    fn scale_in_place(&self, t: &mut Tensor<Self>, s: f64) -> Result<()> {
        let dtype = shapes::common_float_dtype("scale", &[("t", t)])?;
        with_float!(dtype, "scale", T => {
            elementwise::scale(view_mut::<T>(t), T::from_f64(s));
            Ok(())
        })
    }

    fn sum_squares(&self, t: &Tensor<Self>) -> Result<f64> {
        let dtype = shapes::common_float_dtype("sum_squares", &[("t", t)])?;
        with_float!(dtype, "sum_squares", T => Ok(elementwise::sum_squares(view::<T>(t))))
    }

    fn scale_columns(
        &self,
        z: &Tensor<Self>,
        scale: &[f64],
        bias: Option<&Tensor<Self>>,
    ) -> Result<Tensor<Self>> {
        const OP: &str = "scale columns";
        let (dtype, _) = shapes::scale_columns(OP, z, scale, bias)?;
        with_float!(dtype, OP, T => {
            let scale: Vec<T> = scale.iter().map(|&s| T::from_f64(s)).collect();
            tensor(z.shape().clone(), columns::scale(view::<T>(z), &scale, bias.map(view::<T>)))
        })
    }

    fn column_dots(&self, a: &Tensor<Self>, b: &Tensor<Self>) -> Result<Vec<f64>> {
        const OP: &str = "column dots";
        let (dtype, cols) = shapes::column_dots(OP, a, b)?;
        if cols == 0 {
            return Ok(Vec::new());
        }
        with_float!(dtype, OP, T => Ok(columns::dots(view::<T>(a), view::<T>(b), cols)
            .into_iter()
            .map(T::to_f64)
            .collect()))
    }

    fn column_sums(&self, a: &Tensor<Self>) -> Result<Tensor<Self>> {
        const OP: &str = "column sums";
        let (dtype, cols) = shapes::column_sums(OP, a)?;
        if cols == 0 {
            return self.zeros(Shape::new([0]));
        }
        with_float!(dtype, OP, T => tensor([cols], linear::column_sum(view::<T>(a), cols)))
    }

    fn dropout(&self, x: &Tensor<Self>, dropout: Dropout) -> Result<Tensor<Self>> {
        let dtype = shapes::common_float_dtype("dropout", &[("x", x)])?;
        shapes::dropout("dropout", &dropout)?;
        with_float!(dtype, "dropout", T => tensor(x.shape().clone(), elementwise::dropout(view::<T>(x), &dropout)))
    }

    fn embedding_forward(&self, table: &Tensor<Self>, idx: &Tensor<Self>) -> Result<Tensor<Self>> {
        const OP: &str = "embedding";
        let (dtype, vocab, dim) = shapes::embedding(table, idx)?;
        shapes::check_indices(OP, "id", ids(idx), vocab)?;
        let mut out_shape = idx.dims().to_vec();
        out_shape.push(dim);
        with_float!(dtype, OP, T => tensor(out_shape, embedding::forward(view::<T>(table), ids(idx), dim)))
    }

    fn embedding_backward(
        &self,
        d_out: &Tensor<Self>,
        idx: &Tensor<Self>,
        vocab: usize,
    ) -> Result<Tensor<Self>> {
        const OP: &str = "embedding backward";
        let (dtype, _, dim) = shapes::embedding_backward(d_out, idx, vocab)?;
        shapes::check_indices(OP, "id", ids(idx), vocab)?;
        with_float!(dtype, OP, T => tensor([vocab, dim], embedding::backward(view::<T>(d_out), ids(idx), vocab, dim)))
    }

    fn cross_entropy_forward(
        &self,
        logits: &Tensor<Self>,
        labels: &Tensor<Self>,
    ) -> Result<Tensor<Self>> {
        let (dtype, classes) = check_cross_entropy("cross_entropy", logits, labels)?;
        with_float!(dtype, "cross_entropy", T => {
            tensor([1], vec![loss::cross_entropy(view::<T>(logits), ids(labels), classes)])
        })
    }

    fn cross_entropy_backward(
        &self,
        d_loss: &Tensor<Self>,
        logits: &Tensor<Self>,
        labels: &Tensor<Self>,
    ) -> Result<Tensor<Self>> {
        const OP: &str = "cross_entropy backward";
        let (dtype, classes) = check_cross_entropy(OP, logits, labels)?;
        shapes::common_float_dtype(OP, &[("logits", logits), ("d_loss", d_loss)])?;
        with_float!(dtype, OP, T => {
            let g = scalar_value::<T>(OP, d_loss)?;
            tensor(logits.shape().clone(), loss::cross_entropy_backward(g, view::<T>(logits), ids(labels), classes))
        })
    }

    fn bce_with_logits_forward(
        &self,
        logits: &Tensor<Self>,
        targets: &Tensor<Self>,
    ) -> Result<Tensor<Self>> {
        const OP: &str = "bce_with_logits";
        let dtype = shapes::bce_with_logits(OP, logits, targets)?;
        with_float!(dtype, OP, T => tensor([1], vec![loss::bce_with_logits(view::<T>(logits), view::<T>(targets))]))
    }

    fn bce_with_logits_backward(
        &self,
        d_loss: &Tensor<Self>,
        logits: &Tensor<Self>,
        targets: &Tensor<Self>,
    ) -> Result<Tensor<Self>> {
        const OP: &str = "bce_with_logits backward";
        let dtype = shapes::bce_with_logits(OP, logits, targets)?;
        shapes::common_float_dtype(OP, &[("logits", logits), ("d_loss", d_loss)])?;
        with_float!(dtype, OP, T => {
            let g = scalar_value::<T>(OP, d_loss)?;
            tensor(logits.shape().clone(), loss::bce_with_logits_backward(g, view::<T>(logits), view::<T>(targets)))
        })
    }

    fn mse_forward(&self, pred: &Tensor<Self>, target: &Tensor<Self>) -> Result<Tensor<Self>> {
        let dtype = shapes::mse("mse", pred, target)?;
        with_float!(dtype, "mse", T => tensor([1], vec![loss::mse(view::<T>(pred), view::<T>(target))]))
    }

    fn mse_backward(
        &self,
        d_loss: &Tensor<Self>,
        pred: &Tensor<Self>,
        target: &Tensor<Self>,
    ) -> Result<Tensor<Self>> {
        const OP: &str = "mse backward";
        let dtype = shapes::mse(OP, pred, target)?;
        shapes::common_float_dtype(OP, &[("pred", pred), ("d_loss", d_loss)])?;
        with_float!(dtype, OP, T => {
            let g = scalar_value::<T>(OP, d_loss)?;
            tensor(pred.shape().clone(), loss::mse_backward(g, view::<T>(pred), view::<T>(target)))
        })
    }

    fn adamw_step(
        &self,
        param: &mut Tensor<Self>,
        grad: &Tensor<Self>,
        m: &mut Tensor<Self>,
        v: &mut Tensor<Self>,
        step: &AdamWStep,
    ) -> Result<()> {
        let dtype = check_adamw(param, grad, m, v, step)?;
        with_float!(dtype, "adamw", T => {
            adamw::step(view_mut::<T>(param), view::<T>(grad), view_mut::<T>(m), view_mut::<T>(v), step);
            Ok(())
        })
    }

    fn adamw_step_each(&self, updates: &mut [AdamWUpdate<'_, Self>]) -> Result<()> {
        // Every update is checked before any parameter moves, as on CUDA.
        for u in updates.iter() {
            check_adamw(u.param, u.grad, u.m, u.v, &u.step)?;
        }
        updates
            .iter_mut()
            .try_for_each(|u| self.adamw_step(u.param, u.grad, u.m, u.v, &u.step))
    }
}

/// What an attention call adds to its scores (see [`attention::ScoreBias`]).
#[derive(Clone, Copy)]
enum Bias<'a> {
    None,
    Position(&'a Tensor<CpuBackend>),
    Relative(&'a RelativeTerms<'a, CpuBackend>),
}

impl<'a> Bias<'a> {
    /// Checks the bias's operands against `d`; returns the relative rows (0 for the others).
    fn check(&self, op: &'static str, q: &Tensor<CpuBackend>, d: &AttentionDims) -> Result<usize> {
        match *self {
            Bias::None => Ok(0),
            Bias::Position(bias) => {
                shapes::attention_position_bias(op, bias, d)?;
                shapes::common_float_dtype(op, &[("q", q), ("position_bias", bias)])?;
                Ok(0)
            }
            Bias::Relative(terms) => {
                let rows = shapes::attention_relative_terms(op, q, terms, d)?;
                shapes::check_indices(op, "relative row", ids(terms.rows), rows)?;
                Ok(rows)
            }
        }
    }

    /// The bias as the kernels read it, in dtype `T` (checked by [`Bias::check`]).
    fn view<T: Element>(&self, rows: usize) -> attention::ScoreBias<'a, T> {
        match *self {
            Bias::None => attention::ScoreBias::None,
            Bias::Position(bias) => attention::ScoreBias::Position(view::<T>(bias)),
            Bias::Relative(terms) => attention::ScoreBias::Relative(attention::RelativeSlices {
                key: terms.key.map(view::<T>),
                query: terms.query.map(view::<T>),
                rows,
                index: ids(terms.rows),
            }),
        }
    }
}

impl CpuBackend {
    /// Attention forward, with the bias added to its scores.
    fn attention_forward_biased(
        &self,
        q: &Tensor<Self>,
        k: &Tensor<Self>,
        v: &Tensor<Self>,
        mask: &Tensor<Self>,
        bias: Bias<'_>,
        config: &AttentionConfig,
    ) -> Result<AttentionOutput<Self>> {
        let d = shapes::attention(q, k, v, mask, config)?;
        let rows = bias.check("attention", q, &d)?;
        with_float!(q.dtype(), "attention", T => {
            let (out, lse) = attention::forward(
                d,
                view::<T>(q),
                view::<T>(k),
                view::<T>(v),
                ids(mask),
                bias.view::<T>(rows),
                T::from_f64(config.scale),
                config.dropout.as_ref(),
            );
            Ok(AttentionOutput {
                out: tensor(q.shape().clone(), out)?,
                lse: tensor([d.batch, d.heads, d.seq], lse)?,
            })
        })
    }

    /// Attention backward, with the bias added to its scores and the bias's gradient where
    /// `want_bias`: the relative rows' in the grads, the position bias's beside them.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward_biased(
        &self,
        d_out: &Tensor<Self>,
        q: &Tensor<Self>,
        k: &Tensor<Self>,
        v: Option<&Tensor<Self>>,
        lse: &Tensor<Self>,
        mask: &Tensor<Self>,
        bias: Bias<'_>,
        config: &AttentionConfig,
        want: AttentionGradRequest,
        want_bias: bool,
    ) -> Result<(DisentangledGrads<Self>, Option<Tensor<Self>>)> {
        const OP: &str = "attention backward";
        // The bias's gradient is dS summed, and dS needs dP = dO·Vᵀ.
        let v_needed = AttentionGradRequest {
            dq: want.dq || want_bias,
            ..want
        };
        // This backend makes no rounded copies: q, k, v have d_out's dtype.
        let (_, d) =
            shapes::attention_backward(d_out, q, k, v, mask, config, v_needed, d_out.dtype())?;
        shapes::common_float_dtype(OP, &[("q", q), ("lse", lse)])?;
        shapes::require_dims(OP, "lse", lse, &[d.batch, d.heads, d.seq])?;
        let rows = bias.check(OP, q, &d)?;
        with_float!(q.dtype(), OP, T => {
            let g = attention::backward(
                d,
                view::<T>(d_out),
                view::<T>(q),
                view::<T>(k),
                v.map(view::<T>),
                view::<T>(lse),
                ids(mask),
                bias.view::<T>(rows),
                T::from_f64(config.scale),
                config.dropout.as_ref(),
                (want.dq, want.dk, want.dv, want_bias),
            );
            let wrap = |g: Option<Vec<T>>| g.map(|g| tensor(q.shape().clone(), g)).transpose();
            let d_bias = g
                .d_position_bias
                .map(|g| tensor([shapes::position_bias_rows(d.seq), d.heads], g))
                .transpose()?;
            let terms = |g: Option<Vec<T>>| g.map(|g| tensor([rows, d.hidden()], g)).transpose();
            let grads = DisentangledGrads {
                attention: AttentionGrads { dq: wrap(g.dq)?, dk: wrap(g.dk)?, dv: wrap(g.dv)? },
                key_terms: terms(g.d_key_terms)?,
                query_terms: terms(g.d_query_terms)?,
            };
            Ok((grads, d_bias))
        })
    }
}

/// The dtype an AdamW update runs in, or why it cannot run: the CPU updates every operand in
/// the parameter's own dtype.
fn check_adamw(
    param: &Tensor<CpuBackend>,
    grad: &Tensor<CpuBackend>,
    m: &Tensor<CpuBackend>,
    v: &Tensor<CpuBackend>,
    step: &AdamWStep,
) -> Result<DType> {
    let dtype = shapes::common_float_dtype(
        "adamw",
        &[("param", param), ("grad", grad), ("m", m), ("v", v)],
    )?;
    shapes::adamw_operands(param, grad, m, v, step)?;
    Ok(dtype)
}

fn check_cross_entropy(
    op: &'static str,
    logits: &Tensor<CpuBackend>,
    labels: &Tensor<CpuBackend>,
) -> Result<(DType, usize)> {
    let (dtype, _, classes) = shapes::cross_entropy(op, logits, labels)?;
    shapes::check_indices(op, "label", ids(labels), classes)?;
    Ok((dtype, classes))
}

/// Says a test did not run (a kernel this CPU lacks), past the harness's capture of its
/// output, so the project's test script counts it as skipped rather than passed.
#[cfg(test)]
fn skipped(why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "SKIPPED {why}");
}
