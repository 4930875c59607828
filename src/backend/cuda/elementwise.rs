//! Launchers of `kernels/elementwise.cu`: GELU, tanh, ReLU, residual add, in-place accumulate and
//! scale, sums of squares, dropout, f32 ↔ bf16 casts.

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig, SyncOnDrop};
use half::bf16;

use super::tensor_list::{self, ListEntry};
use super::{
    grid_for, launch, tensor, unshared_mut, view, with_float, CudaBackend, CudaBuffer, CudaFloat,
    THREADS,
};
use crate::backend::{shapes, Dropout};
use crate::error::{Error, Result};
use crate::rng;
use crate::tensor::{DType, Tensor};

const MODULE: &str = "elementwise";

pub(super) fn unary(
    b: &CudaBackend,
    op: &'static str,
    kernel: &str,
    x: &Tensor<CudaBackend>,
) -> Result<Tensor<CudaBackend>> {
    let dtype = shapes::common_float_dtype(op, &[("x", x)])?;
    let n = x.numel();
    with_float!(dtype, op, T => {
        let mut y = b.output::<T>(n)?;
        launch!(b, MODULE, format!("{kernel}_{}", T::SUFFIX), grid_for(n), view::<T>(x), &mut y, &(n as i64));
        tensor(x.shape().clone(), y)
    })
}

/// GELU written over `x` where no other tensor shares its buffer (the caller gave it up:
/// an inference pass's FFN, a frozen layer's), sparing an activation of device memory; else
/// into a new output, as [`unary`]. The same bits either way: one element's arithmetic.
pub(super) fn gelu_owned(
    b: &CudaBackend,
    mut x: Tensor<CudaBackend>,
) -> Result<Tensor<CudaBackend>> {
    let dtype = shapes::common_float_dtype("gelu", &[("x", &x)])?;
    let n = x.numel();
    // An empty tensor is refused by `unary`'s output, as by `gelu_forward`.
    let Some(buf) = x.buffer_if_unique().filter(|_| n > 0) else {
        return unary(b, "gelu", "gelu_forward", &x);
    };
    with_float!(dtype, "gelu", T => {
        let x = T::slice_mut(buf).expect("dtype checked before dispatch");
        launch!(b, MODULE, format!("gelu_in_place_{}", T::SUFFIX), grid_for(n), x, &(n as i64));
        Ok(())
    })?;
    Ok(x)
}

/// GELU's output stored rounded to bf16 where [`super::gemm::rounded_for_products`] would
/// round it (one kernel, no f32 output between: the cast's bits), else the output itself.
pub(super) fn gelu_for_products(
    b: &CudaBackend,
    x: &Tensor<CudaBackend>,
) -> Result<Tensor<CudaBackend>> {
    if !super::gemm::rounds_for_products(b, x) {
        return unary(b, "gelu", "gelu_forward", x);
    }
    let n = x.numel();
    let mut y = b.output::<bf16>(n)?;
    launch!(
        b,
        MODULE,
        "gelu_forward_for_products_f32",
        grid_for(n),
        view::<f32>(x),
        &mut y,
        &(n as i64)
    );
    tensor(x.shape().clone(), y)
}

pub(super) fn binary(
    b: &CudaBackend,
    op: &'static str,
    kernel: &str,
    x: &Tensor<CudaBackend>,
    y: &Tensor<CudaBackend>,
) -> Result<Tensor<CudaBackend>> {
    let dtype = shapes::common_float_dtype(op, &[("a", x), ("b", y)])?;
    shapes::require_same_shape(op, ("a", x), ("b", y))?;
    let n = x.numel();
    with_float!(dtype, op, T => {
        let mut out = b.output::<T>(n)?;
        launch!(b, MODULE, format!("{kernel}_{}", T::SUFFIX), grid_for(n), view::<T>(x), view::<T>(y), &mut out, &(n as i64));
        tensor(x.shape().clone(), out)
    })
}

pub(super) fn add_assign(
    b: &CudaBackend,
    acc: &mut Tensor<CudaBackend>,
    x: &Tensor<CudaBackend>,
) -> Result<()> {
    let dtype = shapes::common_float_dtype("add_assign", &[("acc", acc), ("x", x)])?;
    shapes::require_same_shape("add_assign", ("acc", acc), ("x", x))?;
    let n = x.numel();
    with_float!(dtype, "add_assign", T => {
        let a = T::slice_mut(unshared_mut(acc, "add_assign")?).expect("dtype checked");
        launch!(b, MODULE, format!("add_assign_{}", T::SUFFIX), grid_for(n), a, view::<T>(x), &(n as i64));
        Ok(())
    })
}

pub(super) fn scale_in_place(b: &CudaBackend, t: &mut Tensor<CudaBackend>, s: f64) -> Result<()> {
    let dtype = shapes::common_float_dtype("scale", &[("t", t)])?;
    let n = t.numel();
    with_float!(dtype, "scale", T => {
        let buf = T::slice_mut(unshared_mut(t, "scale")?).expect("dtype checked");
        launch!(b, MODULE, format!("scale_{}", T::SUFFIX), grid_for(n), buf, &(s as f32), &(n as i64));
        Ok(())
    })
}

/// Per-block partial sums in f32 (fixed tree), added on the host in f64 in block order.
/// [`sum_squares_each`] gives each tensor the same bits from a list of them.
pub(super) fn sum_squares(b: &CudaBackend, t: &Tensor<CudaBackend>) -> Result<f64> {
    let dtype = shapes::common_float_dtype("sum_squares", &[("t", t)])?;
    let n = t.numel();
    let cfg = LaunchConfig {
        shared_mem_bytes: THREADS * 4,
        ..grid_for(n)
    };
    let mut partial = b.zeroed::<f32>(cfg.grid_dim.0 as usize)?;
    with_float!(dtype, "sum_squares", T => {
        launch!(b, MODULE, format!("sum_squares_partial_{}", T::SUFFIX), cfg, view::<T>(t), &mut partial, &(n as i64));
        Ok(())
    })?;
    let host = b.download("sum_squares", &partial)?;
    Ok(host.iter().map(|&v| f64::from(v)).sum())
}

/// Tensors of one dtype as list entries, each with its index among all the tensors.
type DTypeGroup = (DType, Vec<(usize, ListEntry)>);

/// The tensors of `ts` (dtype, address, length; f32 or bf16, as the callers checked before
/// taking any address) as list entries of one operand, f32 first, then bf16.
fn by_dtype(ts: &[(DType, u64, usize)]) -> [DTypeGroup; 2] {
    let mut groups = [(DType::F32, Vec::new()), (DType::BF16, Vec::new())];
    for (i, &(dtype, ptr, n)) in ts.iter().enumerate() {
        let entry = ListEntry {
            operands: [ptr, 0, 0, 0],
            n,
            scalar: 0.0,
        };
        groups[usize::from(dtype == DType::BF16)].1.push((i, entry));
    }
    groups
}

/// The address of a float tensor's buffer, and the guard to hold until its launch is queued.
fn float_ptr<'a>(
    t: &'a CudaBuffer,
    stream: &'a cudarc::driver::CudaStream,
) -> Option<(u64, SyncOnDrop<'a>)> {
    match t {
        CudaBuffer::F32(s) => Some(s.device_ptr(stream)),
        CudaBuffer::BF16(s) => Some(s.device_ptr(stream)),
        CudaBuffer::U32(_) => None,
    }
}

/// [`sum_squares`] of each tensor: every tensor's per-block partial sums (the blocks of a
/// launch over it alone) go to its own range of one buffer, from a launch per
/// [`tensor_list::CAPACITY`] tensors of a dtype, downloaded once: the same bits as one
/// launch and one download per tensor.
pub(super) fn sum_squares_each(b: &CudaBackend, ts: &[&Tensor<CudaBackend>]) -> Result<Vec<f64>> {
    if ts.is_empty() {
        return Ok(Vec::new());
    }
    let stream = &b.device.stream;
    let mut guards = Vec::with_capacity(ts.len());
    let mut described = Vec::with_capacity(ts.len());
    for t in ts {
        let dtype = shapes::common_float_dtype("sum_squares", &[("t", t)])?;
        let (ptr, guard) = float_ptr(t.buffer(), stream).expect("float dtype checked");
        guards.push(guard);
        described.push((dtype, ptr, t.numel()));
    }
    // Each tensor's blocks follow the previous tensor's in one partial buffer: within a
    // dtype the launches lay them out in entry order, and the bf16 tensors follow the f32.
    let mut ranges = vec![0..0; ts.len()];
    let mut planned = Vec::new();
    let mut total = 0;
    for (dtype, entries) in by_dtype(&described) {
        let mut next = total;
        for (i, e) in &entries {
            let blocks = tensor_list::blocks_of(e.n);
            ranges[*i] = next..next + blocks;
            next += blocks;
        }
        let list: Vec<ListEntry> = entries.into_iter().map(|(_, e)| e).collect();
        for l in tensor_list::launches(&list, THREADS * 4) {
            planned.push((dtype, total + l.first_block, l));
        }
        total = next;
    }
    let mut partial = b.zeroed::<f32>(total)?;
    for (dtype, start, l) in &planned {
        let mut out = partial.slice_mut(*start..*start + l.cfg.grid_dim.0 as usize);
        with_float!(*dtype, "sum_squares", T => {
            launch!(b, MODULE, format!("sum_squares_list_{}", T::SUFFIX), l.cfg, &l.list, &mut out);
            Ok(())
        })?;
    }
    drop(guards);
    let host = b.download("sum_squares", &partial)?;
    Ok(ranges
        .into_iter()
        .map(|r| host[r].iter().map(|&v| f64::from(v)).sum())
        .collect())
}

/// [`scale_in_place`] of each tensor, a launch per [`tensor_list::CAPACITY`] tensors of a
/// dtype; every dtype is checked, and every shared buffer copied, before any launch.
pub(super) fn scale_each(
    b: &CudaBackend,
    ts: &mut [&mut Tensor<CudaBackend>],
    s: f64,
) -> Result<()> {
    for t in ts.iter() {
        shapes::common_float_dtype("scale", &[("t", t)])?;
    }
    let stream = &b.device.stream;
    let mut guards = Vec::with_capacity(ts.len());
    let mut described = Vec::with_capacity(ts.len());
    for t in ts.iter_mut() {
        let (dtype, n) = (t.dtype(), t.numel());
        let buf = unshared_mut(t, "scale")?;
        let (ptr, guard) = match buf {
            CudaBuffer::F32(x) => x.device_ptr_mut(stream),
            CudaBuffer::BF16(x) => x.device_ptr_mut(stream),
            CudaBuffer::U32(_) => unreachable!("float dtype checked"),
        };
        guards.push(guard);
        described.push((dtype, ptr, n));
    }
    for (dtype, entries) in by_dtype(&described) {
        let list: Vec<ListEntry> = entries.into_iter().map(|(_, e)| e).collect();
        for l in tensor_list::launches(&list, 0) {
            with_float!(dtype, "scale", T => {
                launch!(b, MODULE, format!("scale_list_{}", T::SUFFIX), l.cfg, &l.list, &(s as f32));
                Ok(())
            })?;
        }
    }
    drop(guards);
    Ok(())
}

/// [`add_assign`] of each pair, from a launch per [`tensor_list::CAPACITY`] pairs of a dtype:
/// the same bits as one launch per pair. Every pair is checked before any launch.
pub(super) fn add_assign_each(
    b: &CudaBackend,
    accs: &mut [&mut Tensor<CudaBackend>],
    xs: &[&Tensor<CudaBackend>],
) -> Result<()> {
    shapes::add_assign_pairs(accs, xs)?;
    let stream = &b.device.stream;
    let mut guards = Vec::with_capacity(2 * xs.len());
    let mut addends = Vec::with_capacity(xs.len());
    let mut described = Vec::with_capacity(xs.len());
    for (acc, x) in accs.iter_mut().zip(xs) {
        let (dtype, n) = (acc.dtype(), acc.numel());
        // An accumulator sharing its buffer with anything (its addend included) is copied
        // first, so the addend read here is never the buffer written.
        let (acc_ptr, acc_guard) = match unshared_mut(acc, "add_assign")? {
            CudaBuffer::F32(a) => a.device_ptr_mut(stream),
            CudaBuffer::BF16(a) => a.device_ptr_mut(stream),
            CudaBuffer::U32(_) => unreachable!("float dtype checked"),
        };
        let (x_ptr, x_guard) = float_ptr(x.buffer(), stream).expect("float dtype checked");
        guards.extend([acc_guard, x_guard]);
        addends.push(x_ptr);
        described.push((dtype, acc_ptr, n));
    }
    for (dtype, entries) in by_dtype(&described) {
        let list: Vec<ListEntry> = entries
            .into_iter()
            .map(|(i, mut e)| {
                e.operands[1] = addends[i];
                e
            })
            .collect();
        for l in tensor_list::launches(&list, 0) {
            with_float!(dtype, "add_assign", T => {
                launch!(b, MODULE, format!("add_assign_list_{}", T::SUFFIX), l.cfg, &l.list);
                Ok(())
            })?;
        }
    }
    drop(guards);
    Ok(())
}

pub(super) fn dropout(
    b: &CudaBackend,
    x: &Tensor<CudaBackend>,
    dropout: Dropout,
) -> Result<Tensor<CudaBackend>> {
    let dtype = shapes::common_float_dtype("dropout", &[("x", x)])?;
    shapes::dropout("dropout", &dropout)?;
    let n = x.numel();
    with_float!(dtype, "dropout", T => {
        let mut y = b.output::<T>(n)?;
        launch!(b, MODULE, format!("dropout_{}", T::SUFFIX), grid_for(n), view::<T>(x), &mut y, &(n as i64),
            &dropout.seed, &rng::drop_threshold(dropout.p), &((1.0 / (1.0 - dropout.p)) as f32));
        tensor(x.shape().clone(), y)
    })
}

/// The first `n` elements of `x` rounded to bf16 (nearest even): the rounding the GEMM
/// applies to the f32 operands it stages itself.
pub(super) fn round_to_bf16(
    b: &CudaBackend,
    x: &CudaSlice<f32>,
    n: usize,
) -> Result<CudaSlice<bf16>> {
    let mut y = b.output::<bf16>(n)?;
    launch!(
        b,
        MODULE,
        "cast_f32_to_bf16",
        grid_for(n),
        x,
        &mut y,
        &(n as i64)
    );
    Ok(y)
}

/// `t` converted to `dtype` (f32 ↔ bf16; round to nearest even into bf16), on the device.
pub(super) fn cast(
    b: &CudaBackend,
    t: &Tensor<CudaBackend>,
    dtype: DType,
) -> Result<Tensor<CudaBackend>> {
    let n = t.numel();
    let buf = match (t.buffer(), dtype) {
        (CudaBuffer::F32(x), DType::BF16) => CudaBuffer::BF16(round_to_bf16(b, x, n)?),
        (CudaBuffer::BF16(x), DType::F32) => {
            let mut y = b.output::<f32>(n)?;
            launch!(
                b,
                MODULE,
                "cast_bf16_to_f32",
                grid_for(n),
                x,
                &mut y,
                &(n as i64)
            );
            CudaBuffer::F32(y)
        }
        (buf, d) if crate::backend::DeviceBuffer::dtype(buf) == d => return Ok(t.clone()),
        (_, d) => {
            return Err(Error::dtype(
                "cast",
                format!("cannot cast {} to {d} on CUDA", t.dtype()),
            ))
        }
    };
    Tensor::from_buffer(t.shape().clone(), buf)
}

/// `y[…, c] = z[…, c]·scale[c] (+ bias[c])` (see [`crate::backend::Backend::scale_columns`]):
/// the scales go up as f32, one per column.
pub(super) fn scale_columns(
    b: &CudaBackend,
    z: &Tensor<CudaBackend>,
    scale: &[f64],
    bias: Option<&Tensor<CudaBackend>>,
) -> Result<Tensor<CudaBackend>> {
    const OP: &str = "scale columns";
    let (dtype, cols) = shapes::scale_columns(OP, z, scale, bias)?;
    let n = z.numel();
    let cols_i = super::kernel_int(OP, "columns", cols)?;
    let scale: Vec<f32> = scale.iter().map(|&s| s as f32).collect();
    let scale = b.upload(&scale)?;
    with_float!(dtype, OP, T => {
        let mut y = b.output::<T>(n)?;
        let kernel = format!("scale_columns_{}", T::SUFFIX);
        match bias {
            Some(bias) => launch!(b, MODULE, kernel, grid_for(n), view::<T>(z), &scale, view::<T>(bias), &mut y, &(n as i64), &cols_i),
            // A null bias: the kernel adds none.
            None => launch!(b, MODULE, kernel, grid_for(n), view::<T>(z), &scale, &0u64, &mut y, &(n as i64), &cols_i),
        }
        tensor(z.shape().clone(), y)
    })
}
