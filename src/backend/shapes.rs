//! Argument validation shared by every backend, so the CPU reference and the CUDA kernels
//! accept and reject exactly the same inputs, with the same messages.

use super::{AdamWStep, AttentionConfig, Backend, Dropout, LoraWeights};
use crate::error::{Error, Result};
use crate::tensor::{DType, Shape, Tensor};

/// Checks that all named tensors hold the same float dtype and returns it.
pub fn common_float_dtype<B: Backend>(
    op: &'static str,
    tensors: &[(&str, &Tensor<B>)],
) -> Result<DType> {
    let Some(&(first_name, first)) = tensors.first() else {
        return Err(Error::invalid(op, "no tensors to take a dtype from"));
    };
    let dtype = first.dtype();
    if !dtype.is_float() {
        return Err(Error::dtype(
            op,
            format!("`{first_name}` must be a float tensor, got {dtype}"),
        ));
    }
    for (name, t) in &tensors[1..] {
        if t.dtype() != dtype {
            return Err(Error::dtype(
                op,
                format!("`{name}` is {} but `{first_name}` is {dtype}", t.dtype()),
            ));
        }
    }
    Ok(dtype)
}

/// Checks that `t` holds floats.
pub fn require_float<B: Backend>(op: &'static str, name: &str, t: &Tensor<B>) -> Result<()> {
    if !t.dtype().is_float() {
        return Err(Error::dtype(
            op,
            format!("`{name}` must be a float tensor, got {}", t.dtype()),
        ));
    }
    Ok(())
}

/// Checks that a copy of `x` rounded for the products ([`Backend::rounded_for_products`]) has
/// `x`'s shape and the dtype `rounded` of the backend's copies.
pub fn rounded_input<B: Backend>(
    op: &'static str,
    x: &Tensor<B>,
    x_rounded: &Tensor<B>,
    rounded: DType,
) -> Result<()> {
    require_same_shape(op, ("x_rounded", x_rounded), ("x", x))?;
    if x_rounded.dtype() != rounded {
        return Err(Error::dtype(
            op,
            format!(
                "`x_rounded` is {} but this backend's copies rounded for the products are {rounded}",
                x_rounded.dtype()
            ),
        ));
    }
    Ok(())
}

/// Checks that an operand (`subject`, "`x` is") of dtype `found` has the dtype of
/// `reference` (its name and dtype) or `rounded`, that of the backend's copies rounded for
/// the products ([`Backend::rounded_for_products`]).
fn own_or_rounded_dtype(
    op: &'static str,
    subject: &str,
    found: DType,
    (reference, dtype): (&str, DType),
    rounded: DType,
) -> Result<()> {
    if found == dtype || found == rounded {
        return Ok(());
    }
    let copies = match rounded == dtype {
        true => String::new(),
        false => format!(" (copies rounded for the products may be {rounded})"),
    };
    Err(Error::dtype(
        op,
        format!("{subject} {found} but `{reference}` is {dtype}{copies}"),
    ))
}

/// Checks that a linear map's weight is stored in `dtype` (the activations' dtype) or in
/// `frozen`, the backend's compact storage for frozen weights.
pub fn weight_dtype<B: Backend>(
    op: &'static str,
    w: &Tensor<B>,
    dtype: DType,
    frozen: DType,
) -> Result<()> {
    if w.dtype() != dtype && w.dtype() != frozen {
        let compact = match frozen == dtype {
            true => String::new(),
            false => format!(" (frozen weights may be {frozen})"),
        };
        return Err(Error::dtype(
            op,
            format!(
                "`weight` is {} but the activations are {dtype}{compact}: the model and its \
                 inputs are of backends of other dtypes (build the model, store its frozen \
                 weights and run it on one backend)",
                w.dtype()
            ),
        ));
    }
    Ok(())
}

/// Checks that `t` holds `U32` indices.
pub fn require_u32<B: Backend>(op: &'static str, name: &str, t: &Tensor<B>) -> Result<()> {
    if t.dtype() != DType::U32 {
        return Err(Error::dtype(
            op,
            format!("`{name}` must be u32, got {}", t.dtype()),
        ));
    }
    Ok(())
}

/// Checks that `t` has exactly `dims`.
pub fn require_dims<B: Backend>(
    op: &'static str,
    name: &str,
    t: &Tensor<B>,
    dims: &[usize],
) -> Result<()> {
    if t.dims() != dims {
        return Err(Error::shape(
            op,
            format!("`{name}` has shape {} but must be {dims:?}", t.shape()),
        ));
    }
    Ok(())
}

/// Checks that two tensors have the same shape.
pub fn require_same_shape<B: Backend>(
    op: &'static str,
    (a_name, a): (&str, &Tensor<B>),
    (b_name, b): (&str, &Tensor<B>),
) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(Error::shape(
            op,
            format!(
                "`{a_name}` {} and `{b_name}` {} must have the same shape",
                a.shape(),
                b.shape()
            ),
        ));
    }
    Ok(())
}

/// The operands of [`Backend::scale_columns`]: a float `z` of at least one dimension whose last
/// is `scale`'s length, and a bias of that length in `z`'s dtype. Returns the dtype and the
/// number of columns.
pub fn scale_columns<B: Backend>(
    op: &'static str,
    z: &Tensor<B>,
    scale: &[f64],
    bias: Option<&Tensor<B>>,
) -> Result<(DType, usize)> {
    let mut named = vec![("z", z)];
    named.extend(bias.map(|b| ("bias", b)));
    let dtype = common_float_dtype(op, &named)?;
    let cols = columns(op, "z", z)?;
    if scale.len() != cols {
        return Err(Error::shape(
            op,
            format!(
                "{} scales for `z` {} of {cols} columns",
                scale.len(),
                z.shape()
            ),
        ));
    }
    if let Some(b) = bias.filter(|b| b.dims() != [cols]) {
        return Err(Error::shape(
            op,
            format!(
                "`bias` {} must be [{cols}] for `z` {}",
                b.shape(),
                z.shape()
            ),
        ));
    }
    Ok((dtype, cols))
}

/// The operands of [`Backend::column_dots`]: two float tensors of one dtype and one shape
/// with a last dimension. Returns the dtype and the number of columns.
pub fn column_dots<B: Backend>(
    op: &'static str,
    a: &Tensor<B>,
    b: &Tensor<B>,
) -> Result<(DType, usize)> {
    let dtype = common_float_dtype(op, &[("a", a), ("b", b)])?;
    require_same_shape(op, ("a", a), ("b", b))?;
    Ok((dtype, columns(op, "a", a)?))
}

/// The operand of [`Backend::column_sums`]: a float tensor with a last dimension. Returns its
/// dtype and the number of columns.
pub fn column_sums<B: Backend>(op: &'static str, a: &Tensor<B>) -> Result<(DType, usize)> {
    let dtype = common_float_dtype(op, &[("a", a)])?;
    Ok((dtype, columns(op, "a", a)?))
}

/// The last dimension of `t`, which must have one.
pub fn columns<B: Backend>(op: &'static str, name: &str, t: &Tensor<B>) -> Result<usize> {
    t.dims().last().copied().ok_or_else(|| {
        Error::shape(
            op,
            format!("`{name}` {} has no columns to scale or sum", t.shape()),
        )
    })
}

/// The pairs of [`Backend::add_assign_each`]: as many accumulators as addends, each pair one
/// float dtype and one shape, as [`Backend::add_assign`] requires. Returns their dtypes.
pub fn add_assign_pairs<B: Backend>(
    accs: &[&mut Tensor<B>],
    xs: &[&Tensor<B>],
) -> Result<Vec<DType>> {
    if accs.len() != xs.len() {
        return Err(Error::invalid(
            "add_assign",
            format!(
                "{} accumulators for {} tensors to add",
                accs.len(),
                xs.len()
            ),
        ));
    }
    accs.iter()
        .zip(xs)
        .map(|(acc, x)| {
            let dtype = common_float_dtype("add_assign", &[("acc", acc), ("x", x)])?;
            require_same_shape("add_assign", ("acc", acc), ("x", x))?;
            Ok(dtype)
        })
        .collect()
}

/// Checks a non-empty tensor of rank ≥ 1 and returns its 2-D view `(rows, cols)`.
pub fn matrix<B: Backend>(op: &'static str, name: &str, t: &Tensor<B>) -> Result<(usize, usize)> {
    if t.shape().rank() == 0 || t.numel() == 0 {
        return Err(Error::shape(
            op,
            format!(
                "`{name}` must be a non-empty tensor of rank ≥ 1, got {}",
                t.shape()
            ),
        ));
    }
    Ok((t.shape().rows(), t.shape().last_dim()))
}

/// Validates a dropout draw.
pub fn dropout(op: &'static str, d: &Dropout) -> Result<()> {
    if !(0.0..1.0).contains(&d.p) {
        return Err(Error::invalid(
            op,
            format!("dropout probability must be in [0, 1), got {}", d.p),
        ));
    }
    Ok(())
}

/// Sizes of a linear map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearDims {
    /// Rows of `x`.
    pub rows: usize,
    /// Input features.
    pub input: usize,
    /// Output features.
    pub output: usize,
    /// LoRA rank (0 without LoRA).
    pub rank: usize,
}

/// Validates the operands of a linear map and returns its sizes.
pub fn linear<B: Backend>(
    x: &Tensor<B>,
    w: &Tensor<B>,
    bias: Option<&Tensor<B>>,
    lora: Option<&LoraWeights<'_, B>>,
    x_lora: Option<&Tensor<B>>,
) -> Result<LinearDims> {
    const OP: &str = "linear";
    // The weight may be stored in the backend's frozen dtype: each backend checks its dtype.
    require_float(OP, "weight", w)?;
    let mut all = vec![("x", x)];
    if let Some(b) = bias {
        all.push(("bias", b));
    }
    if let Some(l) = lora {
        all.push(("lora_A", l.a));
        all.push(("lora_B", l.b));
    }
    if let Some(xl) = x_lora {
        all.push(("x_lora", xl));
    }
    common_float_dtype(OP, &all)?;
    let (rows, input) = matrix(OP, "x", x)?;
    if w.shape().rank() != 2 || w.dims()[1] != input {
        return Err(Error::shape(
            OP,
            format!(
                "`weight` has shape {} but `x` has {input} features: weight must be [out, {input}]",
                w.shape()
            ),
        ));
    }
    let output = w.dims()[0];
    if let Some(b) = bias {
        require_dims(OP, "bias", b, &[output])?;
    }
    let mut rank = 0;
    if let Some(l) = lora {
        if l.a.shape().rank() != 2 || l.a.dims()[0] == 0 || l.a.dims()[1] != input {
            return Err(Error::shape(
                OP,
                format!(
                    "`lora_A` has shape {} but must be [r, {input}] with r ≥ 1",
                    l.a.shape()
                ),
            ));
        }
        rank = l.a.dims()[0];
        require_dims(OP, "lora_B", l.b, &[output, rank])?;
        if !l.scale.is_finite() {
            return Err(Error::invalid(
                OP,
                format!("LoRA scale must be finite, got {}", l.scale),
            ));
        }
    }
    if let Some(xl) = x_lora {
        require_same_shape(OP, ("x_lora", xl), ("x", x))?;
    }
    Ok(LinearDims {
        rows,
        input,
        output,
        rank,
    })
}

/// Sizes of an attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionDims {
    /// Sequences in the batch.
    pub batch: usize,
    /// Tokens per sequence (padded).
    pub seq: usize,
    /// Heads.
    pub heads: usize,
    /// Features per head.
    pub head_dim: usize,
}

impl AttentionDims {
    /// `heads * head_dim`.
    pub fn hidden(&self) -> usize {
        self.heads * self.head_dim
    }
}

/// Validates the operands of [`Backend::linear_backward`] and returns their dtype and sizes;
/// backends differ only in `rounded`, and each checks the weight's dtype itself.
///
/// `x` and `x_lora` may also be in `rounded`, the dtype of the copies the backend's
/// [`Backend::rounded_for_products`] makes (the float dtype where it makes none).
pub fn linear_backward<B: Backend>(
    inp: &crate::backend::LinearBackwardInputs<'_, B>,
    rounded: DType,
) -> Result<(DType, LinearDims)> {
    const OP: &str = "linear backward";
    let dy = inp.dy;
    let (rows, output) = matrix(OP, "dy", dy)?;
    let mut named = vec![("dy", dy)];
    if let Some(w) = inp.w {
        // Stored in the backend's frozen dtype or the float dtype: each backend checks.
        require_float(OP, "weight", w)?;
    }
    named.extend(inp.h.map(|t| ("h", t)));
    if let Some(l) = &inp.lora {
        named.push(("lora_A", l.a));
        named.push(("lora_B", l.b));
    }
    let dtype = common_float_dtype(OP, &named)?;
    for (name, t) in [("x", inp.x), ("x_lora", inp.x_lora)] {
        if let Some(t) = t {
            own_or_rounded_dtype(
                OP,
                &format!("`{name}` is"),
                t.dtype(),
                ("dy", dtype),
                rounded,
            )?;
        }
    }
    // The input width comes from whichever operand carries it.
    let input = inp
        .w
        .map(|w| w.shape().last_dim())
        .or(inp.x.map(|x| x.shape().last_dim()))
        .or(inp.lora.as_ref().map(|l| l.a.shape().last_dim()))
        .unwrap_or(0);
    // A rank-0 `lora_A` has no rows to read; `require_dims` below refuses its shape.
    let rank = inp
        .lora
        .as_ref()
        .map_or(0, |l| l.a.dims().first().copied().unwrap_or(0));
    if let Some(w) = inp.w {
        require_dims(OP, "weight", w, &[output, input])?;
    }
    for (name, t) in [("x", inp.x), ("x_lora", inp.x_lora)] {
        if let Some(t) = t {
            // Leading dims may differ in grouping; only the 2-D view matters.
            if t.shape().rows() != rows || t.shape().last_dim() != input {
                return Err(Error::shape(
                    OP,
                    format!(
                        "`{name}` {} does not match dy {} and input width {input}",
                        t.shape(),
                        dy.shape()
                    ),
                ));
            }
        }
    }
    if let Some(l) = &inp.lora {
        if rank == 0 {
            return Err(Error::shape(
                OP,
                format!(
                    "`lora_A` has shape {} but must be [r, {input}] with r ≥ 1",
                    l.a.shape()
                ),
            ));
        }
        require_dims(OP, "lora_A", l.a, &[rank, input])?;
        require_dims(OP, "lora_B", l.b, &[output, rank])?;
        if !l.scale.is_finite() {
            return Err(Error::invalid(
                OP,
                format!("LoRA scale must be finite, got {}", l.scale),
            ));
        }
    }
    if let Some(h) = inp.h {
        if h.shape().rows() != rows || h.shape().last_dim() != rank {
            return Err(Error::shape(
                OP,
                format!("`h` {} must be [{rows}, {rank}]", h.shape()),
            ));
        }
    }
    Ok((
        dtype,
        LinearDims {
            rows,
            input,
            output,
            rank,
        },
    ))
}

/// Validates the operands of self-attention and returns its sizes.
pub fn attention<B: Backend>(
    q: &Tensor<B>,
    k: &Tensor<B>,
    v: &Tensor<B>,
    mask: &Tensor<B>,
    config: &AttentionConfig,
) -> Result<AttentionDims> {
    const OP: &str = "attention";
    common_float_dtype(OP, &[("q", q), ("k", k), ("v", v)])?;
    require_u32(OP, "mask", mask)?;
    let (rows, hidden) = matrix(OP, "q", q)?;
    require_same_shape(OP, ("k", k), ("q", q))?;
    require_same_shape(OP, ("v", v), ("q", q))?;
    if mask.shape().rank() != 2 || mask.numel() != rows {
        return Err(Error::shape(
            OP,
            format!(
                "`mask` has shape {} but must be [batch, seq] with batch·seq = {rows} rows of q",
                mask.shape()
            ),
        ));
    }
    if config.heads == 0 || hidden % config.heads != 0 {
        return Err(Error::invalid(
            OP,
            format!(
                "hidden size {hidden} is not divisible by {} heads",
                config.heads
            ),
        ));
    }
    if !config.scale.is_finite() {
        return Err(Error::invalid(
            OP,
            format!("scale must be finite, got {}", config.scale),
        ));
    }
    if let Some(d) = &config.dropout {
        dropout(OP, d)?;
    }
    Ok(AttentionDims {
        batch: mask.dims()[0],
        seq: mask.dims()[1],
        heads: config.heads,
        head_dim: hidden / config.heads,
    })
}

/// The rows of a relative position bias over `seq`-token sequences: one per distance from
/// `−(seq − 1)` to `seq − 1` (none for empty sequences).
pub fn position_bias_rows(seq: usize) -> usize {
    (2 * seq).max(1) - 1
}

/// Validates the shape of a relative position bias of attention over `d` (see
/// [`Backend::attention_forward_with_position_bias`]): `[2·seq − 1, heads]`; each backend
/// checks the dtypes it reads.
pub fn attention_position_bias<B: Backend>(
    op: &'static str,
    bias: &Tensor<B>,
    d: &AttentionDims,
) -> Result<()> {
    require_dims(
        op,
        "position_bias",
        bias,
        &[position_bias_rows(d.seq), d.heads],
    )
}

/// Validates the relative terms of DeBERTa's attention over `d` (see
/// [`Backend::attention_forward_disentangled`]) and returns their rows: `key` and `query`
/// `[rows, hidden]` in `q`'s dtype (at least one of them), `rows` `[seq, seq]` `U32`; each
/// backend checks the row indices it reads.
pub fn attention_relative_terms<B: Backend>(
    op: &'static str,
    q: &Tensor<B>,
    terms: &crate::backend::RelativeTerms<'_, B>,
    d: &AttentionDims,
) -> Result<usize> {
    let given: Vec<(&str, &Tensor<B>)> = [("key terms", terms.key), ("query terms", terms.query)]
        .into_iter()
        .filter_map(|(name, t)| Some((name, t?)))
        .collect();
    let Some(&(first_name, first)) = given.first() else {
        return Err(Error::invalid(
            op,
            "disentangled attention without a key or query term: call attention instead",
        ));
    };
    let (rows, hidden) = matrix(op, first_name, first)?;
    if hidden != d.hidden() {
        return Err(Error::shape(
            op,
            format!(
                "`{first_name}` has shape {} but must be [rows, {}] (q's width)",
                first.shape(),
                d.hidden()
            ),
        ));
    }
    for &(name, t) in &given {
        require_dims(op, name, t, &[rows, d.hidden()])?;
        common_float_dtype(op, &[("q", q), (name, t)])?;
    }
    require_u32(op, "rows", terms.rows)?;
    require_dims(op, "rows", terms.rows, &[d.seq, d.seq])?;
    Ok(rows)
}

/// Validates the operands of attention's backward (`v` only where `dq` or `dk` is asked
/// for) and returns the gradients' dtype (`d_out`'s) and the sizes. `q`, `k`, `v` have that
/// dtype or `rounded`, that of the backend's copies rounded for the products.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<B: Backend>(
    d_out: &Tensor<B>,
    q: &Tensor<B>,
    k: &Tensor<B>,
    v: Option<&Tensor<B>>,
    mask: &Tensor<B>,
    config: &AttentionConfig,
    want: crate::backend::AttentionGradRequest,
    rounded: DType,
) -> Result<(DType, AttentionDims)> {
    const OP: &str = "attention backward";
    let v = match v {
        Some(v) => v,
        None if want.dq || want.dk => {
            return Err(Error::invalid(
                OP,
                "dq and dk need `v` (only dv can be computed without it)",
            ))
        }
        // dv alone: the shape checks below stand in q for v.
        None => q,
    };
    let d = attention(q, k, v, mask, config)?;
    let dtype = common_float_dtype(OP, &[("d_out", d_out)])?;
    own_or_rounded_dtype(
        OP,
        "`q`, `k`, `v` are",
        q.dtype(),
        ("d_out", dtype),
        rounded,
    )?;
    require_same_shape(OP, ("d_out", d_out), ("q", q))?;
    Ok((dtype, d))
}

/// Checks that every index (token id, label) is below `limit`, naming the first that is not.
pub fn check_indices(
    op: &'static str,
    what: &'static str,
    ids: &[u32],
    limit: usize,
) -> Result<()> {
    match ids.iter().position(|&i| i as usize >= limit) {
        Some(position) => Err(Error::IndexOutOfRange {
            op,
            what,
            index: u64::from(ids[position]),
            position,
            limit,
        }),
        None => Ok(()),
    }
}

/// Validates an AdamW update's operands but their dtypes (each backend stores its own): the
/// gradient and both moments of the parameter's shape, and the step's settings.
pub fn adamw_operands<B: Backend>(
    param: &Tensor<B>,
    grad: &Tensor<B>,
    m: &Tensor<B>,
    v: &Tensor<B>,
    step: &AdamWStep,
) -> Result<()> {
    for (name, t) in [("grad", grad), ("m", m), ("v", v)] {
        require_same_shape("adamw", (name, t), ("param", param))?;
    }
    adamw(step)
}

/// Validates the hyper-parameters of an AdamW step.
pub fn adamw(s: &AdamWStep) -> Result<()> {
    let bad = if !(s.lr >= 0.0 && s.lr.is_finite()) {
        Some(format!("lr must be ≥ 0 and finite, got {}", s.lr))
    } else if !(0.0..1.0).contains(&s.beta1) || !(0.0..1.0).contains(&s.beta2) {
        Some(format!(
            "betas must be in [0, 1), got ({}, {})",
            s.beta1, s.beta2
        ))
    } else if !(s.eps > 0.0 && s.eps.is_finite()) {
        Some(format!("eps must be positive and finite, got {}", s.eps))
    } else if !(s.weight_decay >= 0.0 && s.weight_decay.is_finite()) {
        Some(format!(
            "weight_decay must be ≥ 0 and finite, got {}",
            s.weight_decay
        ))
    } else if s.step == 0 {
        Some(format!("step counts from 1, got {}", s.step))
    } else {
        None
    };
    match bad {
        Some(detail) => Err(Error::invalid("adamw", detail)),
        None => Ok(()),
    }
}

/// Validates a layernorm forward; returns `(dtype, rows, n)`.
pub fn layernorm<B: Backend>(
    x: &Tensor<B>,
    gamma: &Tensor<B>,
    beta: &Tensor<B>,
    eps: f64,
) -> Result<(DType, usize, usize)> {
    const OP: &str = "layernorm";
    let dtype = common_float_dtype(OP, &[("x", x), ("gamma", gamma), ("beta", beta)])?;
    let (rows, n) = matrix(OP, "x", x)?;
    require_dims(OP, "gamma", gamma, &[n])?;
    require_dims(OP, "beta", beta, &[n])?;
    if !(eps > 0.0 && eps.is_finite()) {
        return Err(Error::invalid(
            OP,
            format!("eps must be positive and finite, got {eps}"),
        ));
    }
    Ok((dtype, rows, n))
}

/// Validates a layernorm output recomputed from the forward's saved statistics (each backend
/// checks their dtypes); returns `(dtype, rows, n)`.
pub fn layernorm_apply<B: Backend>(
    x: &Tensor<B>,
    mean: &Tensor<B>,
    rstd: &Tensor<B>,
    gamma: &Tensor<B>,
    beta: &Tensor<B>,
) -> Result<(DType, usize, usize)> {
    const OP: &str = "layernorm apply";
    let dtype = common_float_dtype(OP, &[("x", x), ("gamma", gamma), ("beta", beta)])?;
    let (rows, n) = matrix(OP, "x", x)?;
    for (name, t, len) in [
        ("mean", mean, rows),
        ("rstd", rstd, rows),
        ("gamma", gamma, n),
        ("beta", beta, n),
    ] {
        require_dims(OP, name, t, &[len])?;
    }
    Ok((dtype, rows, n))
}

/// Validates the shapes of a layernorm backward (each backend checks the dtypes of its saved
/// statistics); returns `(rows, n)`.
pub fn layernorm_backward<B: Backend>(
    dy: &Tensor<B>,
    x: Option<&Tensor<B>>,
    mean: Option<&Tensor<B>>,
    rstd: Option<&Tensor<B>>,
    gamma: Option<&Tensor<B>>,
) -> Result<(usize, usize)> {
    const OP: &str = "layernorm backward";
    let (rows, n) = matrix(OP, "dy", dy)?;
    if let Some(x) = x {
        require_same_shape(OP, ("x", x), ("dy", dy))?;
    }
    for (name, t, len) in [
        ("mean", mean, rows),
        ("rstd", rstd, rows),
        ("gamma", gamma, n),
    ] {
        if let Some(t) = t {
            require_dims(OP, name, t, &[len])?;
        }
    }
    Ok((rows, n))
}

/// Validates an embedding lookup (the id range is checked by the backend, which holds the
/// ids); returns `(dtype, vocab, dim)`.
pub fn embedding<B: Backend>(table: &Tensor<B>, ids: &Tensor<B>) -> Result<(DType, usize, usize)> {
    const OP: &str = "embedding";
    let dtype = common_float_dtype(OP, &[("table", table)])?;
    require_u32(OP, "ids", ids)?;
    if table.shape().rank() != 2 {
        return Err(Error::shape(
            OP,
            format!("`table` must be [vocab, dim], got {}", table.shape()),
        ));
    }
    Ok((dtype, table.dims()[0], table.dims()[1]))
}

/// Validates an embedding backward into a `[vocab, dim]` table gradient; returns
/// `(dtype, rows, dim)`.
pub fn embedding_backward<B: Backend>(
    d_out: &Tensor<B>,
    ids: &Tensor<B>,
    vocab: usize,
) -> Result<(DType, usize, usize)> {
    const OP: &str = "embedding backward";
    let dtype = common_float_dtype(OP, &[("d_out", d_out)])?;
    require_u32(OP, "ids", ids)?;
    let (rows, dim) = matrix(OP, "d_out", d_out)?;
    if rows != ids.numel() {
        return Err(Error::shape(
            OP,
            format!(
                "`d_out` {} has {rows} rows but there are {} ids",
                d_out.shape(),
                ids.numel()
            ),
        ));
    }
    if Shape::new([vocab, dim]).checked_numel().is_none() {
        return Err(Error::shape(
            OP,
            format!("a [{vocab}, {dim}] table has more elements than memory can address"),
        ));
    }
    Ok((dtype, rows, dim))
}

/// Validates softmax cross-entropy operands (the label range is checked by the backend);
/// returns `(dtype, rows, classes)`.
pub fn cross_entropy<B: Backend>(
    op: &'static str,
    logits: &Tensor<B>,
    labels: &Tensor<B>,
) -> Result<(DType, usize, usize)> {
    let dtype = common_float_dtype(op, &[("logits", logits)])?;
    require_u32(op, "labels", labels)?;
    let (rows, classes) = matrix(op, "logits", logits)?;
    if labels.numel() != rows {
        return Err(Error::shape(
            op,
            format!(
                "{} labels for {rows} rows of logits {}",
                labels.numel(),
                logits.shape()
            ),
        ));
    }
    Ok((dtype, rows, classes))
}

/// Validates binary cross-entropy operands: float `targets` of the logits' shape (one 0/1
/// per class of each row, or a probability); returns the dtype.
pub fn bce_with_logits<B: Backend>(
    op: &'static str,
    logits: &Tensor<B>,
    targets: &Tensor<B>,
) -> Result<DType> {
    let dtype = common_float_dtype(op, &[("logits", logits), ("targets", targets)])?;
    if logits.shape() != targets.shape() || logits.numel() == 0 {
        return Err(Error::shape(
            op,
            format!(
                "`logits` {} and `targets` {} must have the same, non-empty shape",
                logits.shape(),
                targets.shape()
            ),
        ));
    }
    Ok(dtype)
}

/// Validates mean-squared-error operands; returns the dtype.
pub fn mse<B: Backend>(op: &'static str, pred: &Tensor<B>, target: &Tensor<B>) -> Result<DType> {
    let dtype = common_float_dtype(op, &[("pred", pred), ("target", target)])?;
    if pred.numel() != target.numel() || pred.numel() == 0 {
        return Err(Error::shape(
            op,
            format!(
                "`pred` {} and `target` {} must have the same, non-zero size",
                pred.shape(),
                target.shape()
            ),
        ));
    }
    Ok(dtype)
}
