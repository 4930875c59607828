//! The CUDA backend: the hand-written kernels of `kernels/`, launched through cudarc, on a
//! GPU or on the CPU stand-in for the driver ([`emulator`], `cuda-emu`).
//!
//! Layout mirrors the kernels: one launcher file per kernel file (`gemm.rs` beside
//! `kernels/gemm.cu`, `attention.rs` beside `kernels/attention.cu`, …); `device.rs` makes the
//! backend on a GPU or the stand-in, `modules.rs` loads the kernels onto it, and this file
//! holds the backend, its buffers and the dispatch of the [`Backend`] methods to the
//! launchers.
//!
//! Precision ([`Precision`]): `F32` computes everything in f32 with exact FMA kernels; `Bf16`
//! is mixed precision as AMP does it — activations, gradients, trainable weights and AdamW
//! state in f32, frozen linear weights stored in bf16 ([`Backend::frozen_dtype`]), GEMMs and
//! attention on bf16 tensor cores with f32 accumulation (operands rounded to bf16 on their way
//! into shared memory); `Bf16Storage` stores activations in bf16 too (least memory, least
//! precise). Every kernel accumulates in f32; per-row statistics (layernorm mean / rstd,
//! attention log-sum-exp) are always f32. Modules load
//! lazily on first use and are cached. Memory comes from the driver's stream-ordered pool with
//! its release threshold raised to the maximum, so freed blocks are kept and reused: a
//! training step after the first performs no `cuMemAlloc`.

mod adamw;
mod attention;
mod bias_grad;
mod buffer;
mod compatibility;
mod device;
mod disentangled_attention;
mod elementwise;
mod embedding;
pub mod emulator;
pub mod gemm;
mod gemm_skinny;
mod host_ids;
mod kernel_times;
pub mod kernels;
mod layernorm;
mod loss;
mod modules;
mod tensor_list;

pub use attention::ATTENTION_STAGES;
pub use buffer::CudaBuffer;
pub use emulator::Driver;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DeviceRepr, LaunchConfig, ValidAsZeroBits};
use half::bf16;

use super::{
    AdamWStep, AdamWUpdate, AttentionConfig, AttentionGradRequest, AttentionGrads, AttentionOutput,
    Backend, DisentangledGrads, Dropout, LayerNormGradRequest, LayerNormGrads, LayerNormOutput,
    LinearBackwardInputs, LinearForwardOptions, LinearGradRequest, LinearGrads, LinearOutput,
    LoraWeights, RelativeTerms,
};
use crate::error::{Error, Result};
use crate::tensor::{DType, Shape, Tensor};
use device::{pool_attribute, Device};
use modules::ModuleSource;

/// A float storage type the kernels take.
trait CudaFloat: DeviceRepr + ValidAsZeroBits + Copy + Send + Sync + Unpin + 'static {
    const SUFFIX: &'static str;
    const NAN: Self;
    fn slice(buf: &CudaBuffer) -> Option<&CudaSlice<Self>>;
    fn slice_mut(buf: &mut CudaBuffer) -> Option<&mut CudaSlice<Self>>;
    fn wrap(s: CudaSlice<Self>) -> CudaBuffer;
}

impl CudaFloat for f32 {
    const SUFFIX: &'static str = "f32";
    const NAN: Self = f32::NAN;
    fn slice(buf: &CudaBuffer) -> Option<&CudaSlice<Self>> {
        match buf {
            CudaBuffer::F32(s) => Some(s),
            _ => None,
        }
    }
    fn slice_mut(buf: &mut CudaBuffer) -> Option<&mut CudaSlice<Self>> {
        match buf {
            CudaBuffer::F32(s) => Some(s),
            _ => None,
        }
    }
    fn wrap(s: CudaSlice<Self>) -> CudaBuffer {
        CudaBuffer::F32(s)
    }
}

impl CudaFloat for bf16 {
    const SUFFIX: &'static str = "bf16";
    const NAN: Self = bf16::NAN;
    fn slice(buf: &CudaBuffer) -> Option<&CudaSlice<Self>> {
        match buf {
            CudaBuffer::BF16(s) => Some(s),
            _ => None,
        }
    }
    fn slice_mut(buf: &mut CudaBuffer) -> Option<&mut CudaSlice<Self>> {
        match buf {
            CudaBuffer::BF16(s) => Some(s),
            _ => None,
        }
    }
    fn wrap(s: CudaSlice<Self>) -> CudaBuffer {
        CudaBuffer::BF16(s)
    }
}

/// Runs `$body` with `$t` bound to the storage type of a float dtype.
macro_rules! with_float {
    ($dtype:expr, $op:expr, $t:ident => $body:expr) => {
        match $dtype {
            DType::F32 => {
                type $t = f32;
                $body
            }
            DType::BF16 => {
                type $t = half::bf16;
                $body
            }
            other => Err(Error::dtype(
                $op,
                format!("the CUDA backend stores f32 or bf16, not {other}"),
            )),
        }
    };
}
use with_float;

/// Launches `$func` of kernel file `$module` with the arguments in order.
macro_rules! launch {
    ($self:expr, $module:expr, $func:expr, $cfg:expr, $($arg:expr),+ $(,)?) => {{
        let func = $func;
        let name: &str = func.as_ref();
        let f = $self.function($module, name)?;
        let mut b = $self.device.stream.launch_builder(&f);
        // Each argument is bound in this block (shadowed, not dropped) so that temporaries
        // like `&(n as i32)` live until the launch.
        $( let arg = $arg; cudarc::driver::PushKernelArg::arg(&mut b, arg); )+
        // SAFETY: argument types and order match the kernel's extern "C" signature in
        // kernels/$module.cu, and every buffer holds the element count the kernel indexes.
        $self.launched($module, name, || unsafe { b.launch($cfg) })?;
    }};
}
use launch;

/// How a CUDA backend computes (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// f32 storage and exact f32 FMA kernels.
    F32,
    /// Mixed precision: f32 activations, gradients and trainable weights; bf16 frozen linear
    /// weights; bf16 tensor cores with f32 accumulation for GEMMs and attention.
    Bf16,
    /// bf16 storage for activations and gradients as well: half the activation memory,
    /// coarser results.
    Bf16Storage,
}

/// The CUDA backend on one device.
#[derive(Clone)]
pub struct CudaBackend {
    device: Arc<Device>,
    precision: Precision,
    /// Every fresh output pre-filled with NaN (tests: an unwritten element shows).
    poison: bool,
    /// A GEMM tile configuration forced for every GEMM (benchmarks sweep them).
    gemm_tile: Option<&'static str>,
    /// A split-K factor forced for every GEMM (benchmarks sweep them).
    gemm_split: Option<usize>,
    /// Whether f32 operands are rounded to bf16 ahead of the products that read them (see
    /// gemm.rs): by the GEMMs, the tape's copies and outputs stored for products.
    gemm_precast: bool,
    /// Whether narrow outputs go to the CUDA-core kernels of gemm_skinny.rs.
    gemm_skinny: bool,
    /// Stage buffers of the tensor-core attention kernels' streamed tiles (attention.rs).
    attention_stages: usize,
    /// See [`Backend::recomputes_linear_inputs`].
    recompute_linear_inputs: bool,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CudaBackend({}, {:?})",
            self.device_name(),
            self.precision
        )
    }
}

fn unavailable(ordinal: usize, reason: impl Into<String>) -> Error {
    Error::BackendUnavailable {
        backend: format!("cuda:{ordinal}"),
        reason: reason.into(),
    }
}

/// The variable that makes every launch wait for its kernel ([`CudaBackend`] reads it when
/// made).
pub const SYNC_AFTER_LAUNCH: &str = "SPAFIT_CUDA_SYNC";

/// The variable that, set to 1, makes a [`CudaBackend`] keep the linear maps' inputs from
/// forward to backward rather than recompute them ([`Backend::recomputes_linear_inputs`]): how
/// a benchmark weighs the recomputation's time against its memory.
pub const KEEP_LINEAR_INPUTS: &str = "SPAFIT_CUDA_KEEP_LINEAR_INPUTS";

/// The driver's codes for a kernel that faulted: the context is lost from then on.
const KERNEL_FAULTS: [&str; 6] = [
    "ILLEGAL_ADDRESS",
    "MISALIGNED_ADDRESS",
    "LAUNCH_FAILED",
    "ILLEGAL_INSTRUCTION",
    "HARDWARE_STACK_ERROR",
    "CUDA_ERROR_ASSERT",
];

/// A driver error of `op` as an error value; out-of-memory says so plainly, and the CPU
/// stand-in adds what it found (kernel, block, thread, address).
fn driver(op: &'static str, e: cudarc::driver::DriverError) -> Error {
    let mut text = e.to_string();
    match emulator::last_error() {
        Some(detail) => text = format!("{text}: {detail}"),
        // The stand-in reports a fault at its launch; a GPU at some later call.
        None if KERNEL_FAULTS.iter().any(|code| text.contains(code)) => {
            text = format!(
                "{text} (a kernel fault: this process can use the GPU no more; unless \
                 {SYNC_AFTER_LAUNCH}=1 named the kernel here, the GPU reports a fault at a call \
                 after the faulting launch, so it need not be `{op}`'s: rerun with \
                 {SYNC_AFTER_LAUNCH}=1 to name the kernel, or under compute-sanitizer)"
            )
        }
        None => {}
    }
    if text.contains("OUT_OF_MEMORY") {
        // The stand-in's account says how much was asked for; the driver's alone, what.
        let driver = emulator::last_error().unwrap_or_else(|| "CUDA_ERROR_OUT_OF_MEMORY".into());
        let device = match emulator::driver() {
            Some(Driver::Emulator) => "the CPU stand-in (cuda-emu)",
            _ => "GPU",
        };
        // What needs less depends on what ran out (loading, a training step, an update, an
        // evaluation): the caller says (`Error::in_memory_context`).
        Error::OutOfMemory {
            op,
            detail: format!("{device}: {driver}"),
        }
    } else {
        Error::Device { op, detail: text }
    }
}

/// `t`'s buffer for writing in place. A buffer another tensor shares (a gradient handed to
/// both inputs of a residual add, weights kept as the best so far) is copied on the device
/// first, and a copy that finds no memory is an error: cudarc's `Clone` of a device slice
/// unwraps, which would panic.
fn unshared_mut<'t>(
    t: &'t mut Tensor<CudaBackend>,
    op: &'static str,
) -> Result<&'t mut CudaBuffer> {
    // The host copies of u32 tensors (`host_ids`) hold only while no kernel writes one.
    if t.dtype() == DType::U32 {
        return Err(Error::dtype(op, "u32 tensors are not written in place"));
    }
    t.buffer_mut_or_copy(|buf| {
        match buf {
            CudaBuffer::F32(s) => s.try_clone().map(CudaBuffer::F32),
            CudaBuffer::BF16(s) => s.try_clone().map(CudaBuffer::BF16),
            CudaBuffer::U32(s) => s.try_clone().map(CudaBuffer::U32),
        }
        .map_err(|e| driver(op, e))
    })
}

const THREADS: u32 = 256;

/// The largest count a kernel takes as an `int` (flat offsets are 64-bit in the kernels;
/// counts are not). Kernels form indices as a tile's start plus an offset inside the tile
/// (at most 256), or step through a grid-stride loop (at most 65,535 blocks of `THREADS`;
/// [`GRID_STRIDE_BLOCKS`] today),
/// so a count within one such step of `i32::MAX` would wrap those sums negative past the
/// bounds checks; 2²⁵ covers both.
const KERNEL_INT_MAX: usize = i32::MAX as usize - (1 << 25);

/// `n` as the `int` a kernel takes for a count of rows or columns, refused above
/// [`KERNEL_INT_MAX`].
fn kernel_int(op: &'static str, what: &str, n: usize) -> Result<i32> {
    if n > KERNEL_INT_MAX {
        return Err(Error::invalid(
            op,
            format!("{what} of {n}: the kernels take at most {KERNEL_INT_MAX}"),
        ));
    }
    Ok(n as i32)
}

/// The most blocks of a grid-stride launch: two blocks of [`THREADS`] per resident slot of
/// an H200 or A100 (132 or 108 SMs × 2048 threads) fill any current GPU twice over, and
/// beyond that more blocks only add per-block overhead: for a reduction, more partial sums
/// to download; on the CPU stand-in, more rounds of barriers (a full fine-tuning step's
/// gradient norm over MiniLM's 11.7M-element embedding took ~10 s there at one element per
/// thread).
const GRID_STRIDE_BLOCKS: usize = 2048;

fn grid_for(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(THREADS as usize).clamp(1, GRID_STRIDE_BLOCKS) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn block_reduce(grid: u32, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: threads * 4,
    }
}

/// The precision a dtype names: f32 exact, bf16 mixed.
fn precision_of(dtype: DType) -> Result<Precision> {
    match dtype {
        DType::F32 => Ok(Precision::F32),
        DType::BF16 => Ok(Precision::Bf16),
        other => Err(Error::dtype(
            "cuda backend",
            format!("the CUDA backend computes in f32 or bf16, not {other}"),
        )),
    }
}

impl CudaBackend {
    /// Whether this backend runs on NVIDIA's driver or the CPU stand-in.
    pub fn driver(&self) -> Driver {
        self.device.driver
    }

    fn device_name(&self) -> String {
        match self.device.driver {
            Driver::Hardware => format!("cuda:{}", self.device.ordinal),
            Driver::Emulator => "cuda-emu".into(),
        }
    }

    /// The same device with every freshly allocated output pre-filled with NaN, so a test
    /// sees any element a kernel failed to write.
    pub fn with_poisoned_outputs(mut self) -> Self {
        self.poison = true;
        self
    }

    /// The same device at the precision `dtype` names (f32 exact, bf16 mixed).
    pub fn with_dtype(&self, dtype: DType) -> Result<Self> {
        Ok(CudaBackend {
            precision: precision_of(dtype)?,
            ..self.clone()
        })
    }

    /// The same device storing activations and gradients in bf16 too
    /// ([`Precision::Bf16Storage`]): a mode for testing the ops' bf16 paths. Models and
    /// the trainer run under [`CudaBackend::with_dtype`] (`BF16` keeps f32 trainable weights
    /// and AdamW moments, which this mode does not: its AdamW step is refused).
    pub fn with_bf16_storage(&self) -> Self {
        CudaBackend {
            precision: Precision::Bf16Storage,
            ..self.clone()
        }
    }

    /// The same device with the GELU and LayerNorm outputs that a linear map's weight
    /// gradient reads recomputed in backward (`true`, the default) or kept from forward
    /// (`false`): see [`Backend::recomputes_linear_inputs`]. The same bits either way, which
    /// is what tests show by turning it off.
    pub fn with_recomputed_linear_inputs(&self, on: bool) -> Self {
        CudaBackend {
            recompute_linear_inputs: on,
            ..self.clone()
        }
    }

    /// How this backend computes.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// How many device-to-host copies this backend, its clones and its
    /// [`CudaBackend::with_dtype`] variants have made. Each one waits for all the work queued
    /// before it, leaving the GPU idle until the host queues more, so a training step should
    /// make a few, not one per tensor.
    pub fn downloads(&self) -> u64 {
        self.device.downloads.load(Ordering::Relaxed)
    }

    /// How many kernels this backend, its clones and its [`CudaBackend::with_dtype`] variants
    /// have queued (a kernel too big for one grid counts once per launch it takes).
    pub fn launches(&self) -> u64 {
        self.device.launches.load(Ordering::Relaxed)
    }

    /// Copies `s` to the host (waiting for the work queued before), counted in
    /// [`CudaBackend::downloads`].
    fn download<T: DeviceRepr + Default + Clone>(
        &self,
        op: &'static str,
        s: &CudaSlice<T>,
    ) -> Result<Vec<T>> {
        self.device.downloads.fetch_add(1, Ordering::Relaxed);
        self.device.stream.clone_dtoh(s).map_err(|e| driver(op, e))
    }

    /// Waits for all queued work (and surfaces asynchronous launch failures).
    pub fn synchronize(&self) -> Result<()> {
        self.device
            .stream
            .synchronize()
            .map_err(|e| driver("synchronize", e))
    }

    /// Queues `kernel` by calling `launch` (between the kernel timer's events while it is
    /// on): the driver's refusal as `op`'s error; with `SPAFIT_CUDA_SYNC=1`, the launch is
    /// also waited for, naming the kernel in the error of a fault (a GPU reports faults at a
    /// later call otherwise).
    fn launched<T>(
        &self,
        op: &'static str,
        kernel: &str,
        launch: impl FnOnce() -> std::result::Result<T, cudarc::driver::DriverError>,
    ) -> Result<()> {
        let (timer, stream) = (&self.device.kernel_timer, &self.device.stream);
        let start = timer.before_launch(&self.device.ctx, stream)?;
        launch().map_err(|e| driver(op, e))?;
        self.device.launches.fetch_add(1, Ordering::Relaxed);
        timer.after_launch(start, kernel, &self.device.ctx, stream)?;
        if !self.device.sync_after_launch {
            return Ok(());
        }
        self.device
            .stream
            .synchronize()
            .map_err(|e| match driver(op, e) {
                Error::Device { op, detail } => Error::Device {
                    op,
                    detail: format!("kernel {kernel}: {detail}"),
                },
                other => other,
            })
    }

    /// Whether every launch waits for its kernel ([`SYNC_AFTER_LAUNCH`] was `1` when this
    /// backend was made).
    pub fn waits_after_each_launch(&self) -> bool {
        self.device.sync_after_launch
    }

    /// The cudarc stream every kernel of this backend runs on (benchmarks time it).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.device.stream
    }

    fn output<T: CudaFloat>(&self, n: usize) -> Result<CudaSlice<T>> {
        if n == 0 {
            return Err(Error::invalid(
                "cuda",
                "empty tensors are not supported on CUDA (the CPU backend takes them)",
            ));
        }
        let s = &self.device.stream;
        if self.poison {
            s.clone_htod(&vec![T::NAN; n])
                .map_err(|e| driver("alloc", e))
        } else {
            // SAFETY: every kernel writing into an output assigns each of its elements
            // (kernels/common.cuh's convention; the poisoned-output tests check it).
            unsafe { s.alloc::<T>(n) }.map_err(|e| driver("alloc", e))
        }
    }

    /// Zero-filled (never poisoned): for outputs whose untouched elements must be zero.
    fn zeroed<T: CudaFloat>(&self, n: usize) -> Result<CudaSlice<T>> {
        self.device
            .stream
            .alloc_zeros::<T>(n.max(1))
            .map_err(|e| driver("alloc", e))
    }

    fn upload<T: DeviceRepr>(&self, v: &[T]) -> Result<CudaSlice<T>> {
        self.device
            .stream
            .clone_htod(v)
            .map_err(|e| driver("upload", e))
    }
}

fn view<T: CudaFloat>(t: &Tensor<CudaBackend>) -> &CudaSlice<T> {
    T::slice(t.buffer()).expect("dtype checked before dispatch")
}

fn ids(t: &Tensor<CudaBackend>) -> &CudaSlice<u32> {
    match t.buffer() {
        CudaBuffer::U32(s) => s,
        _ => unreachable!("u32 checked before dispatch"),
    }
}

fn tensor<T: CudaFloat>(shape: impl Into<Shape>, s: CudaSlice<T>) -> Result<Tensor<CudaBackend>> {
    Tensor::from_buffer(shape, T::wrap(s))
}

/// An f32 tensor (statistics, losses, master weights) whatever the storage dtype.
fn require_f32(op: &'static str, name: &str, t: &Tensor<CudaBackend>) -> Result<()> {
    if t.dtype() == DType::F32 {
        Ok(())
    } else {
        Err(Error::dtype(
            op,
            format!("`{name}` must be f32 on CUDA, got {}", t.dtype()),
        ))
    }
}

impl Backend for CudaBackend {
    type Buffer = CudaBuffer;

    fn name(&self) -> String {
        let precision = match self.precision {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::Bf16Storage => "bf16-storage",
        };
        format!("{}-{precision}", self.device_name())
    }

    fn float_dtype(&self) -> DType {
        match self.precision {
            Precision::Bf16Storage => DType::BF16,
            _ => DType::F32,
        }
    }

    fn frozen_dtype(&self) -> DType {
        match self.precision {
            Precision::F32 => DType::F32,
            _ => DType::BF16,
        }
    }

    fn master_dtype(&self) -> DType {
        DType::F32
    }

    fn synchronize(&self) -> Result<()> {
        CudaBackend::synchronize(self)
    }

    fn start_kernel_timing(&self) -> Result<bool> {
        self.device.kernel_timer.start(&self.device.ctx)?;
        Ok(true)
    }

    fn stop_kernel_timing(&self) -> Result<Option<Vec<super::KernelTime>>> {
        self.device.kernel_timer.stop()
    }

    fn kernel_code(&self) -> Option<String> {
        if self.device.driver == Driver::Emulator {
            return Some("the stand-in's host build of the kernel sources".into());
        }
        let modules = self.device.modules.lock().ok()?;
        let mut loaded: Vec<(&str, &ModuleSource)> = modules
            .iter()
            .map(|(name, (_, source))| (*name, source))
            .collect();
        loaded.sort_by_key(|(name, _)| *name);
        let (machine, ptx): (Vec<_>, Vec<_>) = loaded
            .iter()
            .partition(|(_, source)| **source == ModuleSource::MachineCode);
        let names = |of: &[&(&str, &ModuleSource)]| {
            of.iter()
                .map(|(name, _)| *name)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let refused = loaded.iter().find_map(|(name, source)| match source {
            ModuleSource::PtxAfterRefusal(why) => {
                Some(format!("; {name}'s machine code refused: {why}"))
            }
            _ => None,
        });
        let gpu = self.device.capability.map_or_else(
            || "this GPU".into(),
            |(major, minor)| format!("sm_{major}{minor}"),
        );
        let text = match (machine.is_empty(), ptx.is_empty()) {
            (true, true) => "no kernel loaded yet".to_string(),
            (false, true) => format!("machine code for {gpu} ({} modules)", machine.len()),
            (true, false) => format!("PTX compiled by the driver ({} modules)", ptx.len()),
            (false, false) => format!(
                "machine code for {gpu} ({}), PTX compiled by the driver ({})",
                names(&machine),
                names(&ptx)
            ),
        };
        Some(text + refused.as_deref().unwrap_or(""))
    }

    fn peak_memory_bytes(&self) -> Option<u64> {
        pool_attribute(
            &self.device.ctx,
            cudarc::driver::sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
            None,
        )
        .ok()
    }

    fn reset_peak_memory(&self) {
        let _ = pool_attribute(
            &self.device.ctx,
            cudarc::driver::sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
            Some(0),
        );
    }

    fn tensor_from_f64_as(&self, shape: Shape, data: &[f64], dtype: DType) -> Result<Tensor<Self>> {
        let buf = match dtype {
            DType::BF16 => CudaBuffer::BF16(
                self.upload(
                    &data
                        .iter()
                        .map(|&v| crate::tensor::bf16_from_f64(v))
                        .collect::<Vec<_>>(),
                )?,
            ),
            DType::F32 => {
                CudaBuffer::F32(self.upload(&data.iter().map(|&v| v as f32).collect::<Vec<_>>())?)
            }
            other => {
                return Err(Error::dtype(
                    "tensor",
                    format!(
                        "float values make f32 or bf16 tensors on CUDA, not {other} (ids: \
                         tensor_from_u32)"
                    ),
                ))
            }
        };
        Tensor::from_buffer(shape, buf)
    }

    fn cast(&self, t: &Tensor<Self>, dtype: DType) -> Result<Tensor<Self>> {
        elementwise::cast(self, t, dtype)
    }

    fn tensor_from_u32(&self, shape: Shape, data: &[u32]) -> Result<Tensor<Self>> {
        let t = Tensor::from_buffer(shape, CudaBuffer::U32(self.upload(data)?))?;
        self.device.host_ids.remember(&t, data);
        Ok(t)
    }

    fn zeros(&self, shape: Shape) -> Result<Tensor<Self>> {
        let n = shape.checked_numel().ok_or_else(|| {
            Error::shape(
                "zeros",
                format!("shape {shape} has more elements than memory can address"),
            )
        })?;
        if n == 0 {
            // The driver allocates no empty buffer; said plainly, not as a length mismatch.
            return Err(Error::invalid(
                "zeros",
                format!("shape {shape}: empty tensors are not supported on CUDA"),
            ));
        }
        with_float!(self.float_dtype(), "zeros", T => tensor(shape, self.zeroed::<T>(n)?))
    }

    fn to_f64(&self, t: &Tensor<Self>) -> Result<Vec<f64>> {
        match t.buffer() {
            CudaBuffer::F32(b) => Ok(self
                .download("download", b)?
                .into_iter()
                .map(f64::from)
                .collect()),
            CudaBuffer::BF16(b) => Ok(self
                .download("download", b)?
                .into_iter()
                .map(bf16::to_f64)
                .collect()),
            CudaBuffer::U32(_) => Err(Error::dtype("to_f64", "tensor holds u32, not floats")),
        }
    }

    fn to_f32(&self, t: &Tensor<Self>) -> Result<Vec<f32>> {
        match t.buffer() {
            CudaBuffer::F32(b) => self.download("download", b),
            CudaBuffer::BF16(b) => Ok(self
                .download("download", b)?
                .into_iter()
                .map(bf16::to_f32)
                .collect()),
            CudaBuffer::U32(_) => Err(Error::dtype("to_f32", "tensor holds u32, not floats")),
        }
    }

    fn to_u32(&self, t: &Tensor<Self>) -> Result<Vec<u32>> {
        match t.buffer() {
            CudaBuffer::U32(b) => match self.device.host_ids.get(t) {
                Some(copy) => Ok(copy.to_vec()),
                None => self.download("download", b),
            },
            _ => Err(Error::dtype(
                "to_u32",
                format!("tensor holds {}, not u32", t.dtype()),
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
        gemm::linear_forward(self, x, w, bias, lora, x_lora, Default::default())
    }

    fn rounded_for_products(&self, x: &Tensor<Self>) -> Result<Option<Tensor<Self>>> {
        gemm::rounded_for_products(self, x)
    }

    fn recomputes_linear_inputs(&self) -> bool {
        self.recompute_linear_inputs
    }

    fn stored_for_products(&self, y: Tensor<Self>) -> Result<Tensor<Self>> {
        let dtype = gemm::products_output_dtype(self, y.dtype());
        match dtype == y.dtype() {
            true => Ok(y),
            false => self.cast(&y, dtype),
        }
    }

    fn linear_forward_with(
        &self,
        x: &Tensor<Self>,
        w: &Tensor<Self>,
        bias: Option<&Tensor<Self>>,
        lora: Option<LoraWeights<'_, Self>>,
        x_lora: Option<&Tensor<Self>>,
        options: LinearForwardOptions<'_, Self>,
    ) -> Result<LinearOutput<Self>> {
        gemm::linear_forward(self, x, w, bias, lora, x_lora, options)
    }

    fn linear_backward(
        &self,
        inputs: LinearBackwardInputs<'_, Self>,
        want: LinearGradRequest,
    ) -> Result<LinearGrads<Self>> {
        gemm::linear_backward(self, inputs, want)
    }

    fn layernorm_forward(
        &self,
        x: &Tensor<Self>,
        gamma: &Tensor<Self>,
        beta: &Tensor<Self>,
        eps: f64,
    ) -> Result<LayerNormOutput<Self>> {
        layernorm::forward(self, x, gamma, beta, eps)
    }

    fn layernorm_apply(
        &self,
        x: &Tensor<Self>,
        mean: &Tensor<Self>,
        rstd: &Tensor<Self>,
        gamma: &Tensor<Self>,
        beta: &Tensor<Self>,
    ) -> Result<Tensor<Self>> {
        layernorm::apply(self, x, mean, rstd, gamma, beta)
    }

    fn layernorm_apply_for_products(
        &self,
        x: &Tensor<Self>,
        mean: &Tensor<Self>,
        rstd: &Tensor<Self>,
        gamma: &Tensor<Self>,
        beta: &Tensor<Self>,
    ) -> Result<Tensor<Self>> {
        layernorm::apply_for_products(self, x, mean, rstd, gamma, beta)
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
        layernorm::backward(self, dy, x, mean, rstd, gamma, want)
    }

    fn check_attention_head_dim(&self, head_dim: usize, backward: bool) -> Result<()> {
        attention::check_head_dim(self, head_dim, backward)
    }

    fn attention_forward(
        &self,
        q: &Tensor<Self>,
        k: &Tensor<Self>,
        v: &Tensor<Self>,
        mask: &Tensor<Self>,
        config: &AttentionConfig,
    ) -> Result<AttentionOutput<Self>> {
        attention::forward(self, q, k, v, mask, None, config)
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
        let (grads, _) =
            attention::backward(self, d_out, q, k, v, lse, mask, None, config, want, false)?;
        Ok(grads)
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
        attention::forward(self, q, k, v, mask, Some(position_bias), config)
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
        disentangled_attention::forward(self, (q, k, v), mask, terms, config)
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
        disentangled_attention::backward(
            self,
            d_out,
            (q, k, v),
            lse,
            mask,
            terms,
            config,
            want,
            want_terms,
        )
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
        attention::backward(
            self,
            d_out,
            q,
            k,
            v,
            lse,
            mask,
            Some(position_bias),
            config,
            want,
            want_position_bias,
        )
    }

    fn gelu_forward(&self, x: &Tensor<Self>) -> Result<Tensor<Self>> {
        elementwise::unary(self, "gelu", "gelu_forward", x)
    }

    fn gelu_forward_for_products(&self, x: &Tensor<Self>) -> Result<Tensor<Self>> {
        elementwise::gelu_for_products(self, x)
    }

    fn gelu_forward_owned(&self, x: Tensor<Self>) -> Result<Tensor<Self>> {
        elementwise::gelu_owned(self, x)
    }

    fn gelu_backward(&self, dy: &Tensor<Self>, x: &Tensor<Self>) -> Result<Tensor<Self>> {
        elementwise::binary(self, "gelu backward", "gelu_backward", dy, x)
    }

    fn tanh_forward(&self, x: &Tensor<Self>) -> Result<Tensor<Self>> {
        elementwise::unary(self, "tanh", "tanh_forward", x)
    }

    fn tanh_backward(&self, dy: &Tensor<Self>, y: &Tensor<Self>) -> Result<Tensor<Self>> {
        elementwise::binary(self, "tanh backward", "tanh_backward", dy, y)
    }

    fn relu_forward(&self, x: &Tensor<Self>) -> Result<Tensor<Self>> {
        elementwise::unary(self, "relu", "relu_forward", x)
    }

    fn relu_backward(&self, dy: &Tensor<Self>, y: &Tensor<Self>) -> Result<Tensor<Self>> {
        elementwise::binary(self, "relu backward", "relu_backward", dy, y)
    }

    fn add(&self, a: &Tensor<Self>, b: &Tensor<Self>) -> Result<Tensor<Self>> {
        elementwise::binary(self, "add", "add", a, b)
    }

    fn add_assign(&self, acc: &mut Tensor<Self>, x: &Tensor<Self>) -> Result<()> {
        elementwise::add_assign(self, acc, x)
    }

    fn add_assign_each(&self, accs: &mut [&mut Tensor<Self>], xs: &[&Tensor<Self>]) -> Result<()> {
        elementwise::add_assign_each(self, accs, xs)
    }

    fn scale_in_place(&self, t: &mut Tensor<Self>, s: f64) -> Result<()> {
        elementwise::scale_in_place(self, t, s)
    }

    fn scale_each(&self, ts: &mut [&mut Tensor<Self>], s: f64) -> Result<()> {
        elementwise::scale_each(self, ts, s)
    }

    fn sum_squares(&self, t: &Tensor<Self>) -> Result<f64> {
        elementwise::sum_squares(self, t)
    }

    fn sum_squares_each(&self, ts: &[&Tensor<Self>]) -> Result<Vec<f64>> {
        elementwise::sum_squares_each(self, ts)
    }

    fn scale_columns(
        &self,
        z: &Tensor<Self>,
        scale: &[f64],
        bias: Option<&Tensor<Self>>,
    ) -> Result<Tensor<Self>> {
        elementwise::scale_columns(self, z, scale, bias)
    }

    fn column_dots(&self, a: &Tensor<Self>, b: &Tensor<Self>) -> Result<Vec<f64>> {
        bias_grad::column_dots_of(self, a, b)
    }

    fn column_sums(&self, a: &Tensor<Self>) -> Result<Tensor<Self>> {
        bias_grad::column_sums_of(self, a)
    }

    fn dropout(&self, x: &Tensor<Self>, dropout: Dropout) -> Result<Tensor<Self>> {
        elementwise::dropout(self, x, dropout)
    }

    fn embedding_forward(&self, table: &Tensor<Self>, ids: &Tensor<Self>) -> Result<Tensor<Self>> {
        embedding::forward(self, table, ids)
    }

    fn embedding_backward(
        &self,
        d_out: &Tensor<Self>,
        ids: &Tensor<Self>,
        vocab: usize,
    ) -> Result<Tensor<Self>> {
        embedding::backward(self, d_out, ids, vocab)
    }

    fn cross_entropy_forward(
        &self,
        logits: &Tensor<Self>,
        labels: &Tensor<Self>,
    ) -> Result<Tensor<Self>> {
        loss::cross_entropy_forward(self, logits, labels)
    }

    fn cross_entropy_backward(
        &self,
        d_loss: &Tensor<Self>,
        logits: &Tensor<Self>,
        labels: &Tensor<Self>,
    ) -> Result<Tensor<Self>> {
        loss::cross_entropy_backward(self, d_loss, logits, labels)
    }

    fn bce_with_logits_forward(
        &self,
        logits: &Tensor<Self>,
        targets: &Tensor<Self>,
    ) -> Result<Tensor<Self>> {
        loss::bce_with_logits_forward(self, logits, targets)
    }

    fn bce_with_logits_backward(
        &self,
        d_loss: &Tensor<Self>,
        logits: &Tensor<Self>,
        targets: &Tensor<Self>,
    ) -> Result<Tensor<Self>> {
        loss::bce_with_logits_backward(self, d_loss, logits, targets)
    }

    fn mse_forward(&self, pred: &Tensor<Self>, target: &Tensor<Self>) -> Result<Tensor<Self>> {
        loss::mse_forward(self, pred, target)
    }

    fn mse_backward(
        &self,
        d_loss: &Tensor<Self>,
        pred: &Tensor<Self>,
        target: &Tensor<Self>,
    ) -> Result<Tensor<Self>> {
        loss::mse_backward(self, d_loss, pred, target)
    }

    fn adamw_step(
        &self,
        param: &mut Tensor<Self>,
        grad: &Tensor<Self>,
        m: &mut Tensor<Self>,
        v: &mut Tensor<Self>,
        step: &AdamWStep,
    ) -> Result<()> {
        adamw::step(self, param, grad, m, v, step)
    }

    fn adamw_step_each(&self, updates: &mut [AdamWUpdate<'_, Self>]) -> Result<()> {
        adamw::step_each(self, updates)
    }
}
