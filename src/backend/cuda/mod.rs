//! The CUDA backend: the hand-written kernels of `kernels/`, launched through cudarc, on a
//! GPU or on the CPU stand-in for the driver ([`emulator`], `cuda-emu`).
//!
//! Layout mirrors the kernels: one launcher file per kernel file (`gemm.rs` beside
//! `kernels/gemm.cu`, `attention.rs` beside `kernels/attention.cu`, …); this file holds the
//! device, buffers and the dispatch of the [`Backend`] methods to them.
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
mod tensor_list;

pub use buffer::CudaBuffer;
pub use emulator::Driver;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DeviceRepr, LaunchConfig,
    ValidAsZeroBits,
};
use half::bf16;

use super::{
    AdamWStep, AdamWUpdate, AttentionConfig, AttentionGradRequest, AttentionGrads, AttentionOutput,
    Backend, Dropout, LayerNormGradRequest, LayerNormGrads, LayerNormOutput, LinearBackwardInputs,
    LinearForwardOptions, LinearGradRequest, LinearGrads, LinearOutput, LoraWeights,
};
use crate::error::{Error, Result};
use crate::tensor::{DType, Shape, Tensor};
use host_ids::HostIds;
use kernel_times::KernelTimer;

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

struct Device {
    ordinal: usize,
    driver: Driver,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// Kernel modules loaded so far, each with where it came from (what
    /// [`Backend::kernel_code`] reports).
    modules: Mutex<HashMap<&'static str, (Arc<CudaModule>, ModuleSource)>>,
    /// Kernel handles by module, then name.
    functions: Mutex<HashMap<&'static str, HashMap<String, CudaFunction>>>,
    /// Kernels whose dynamic shared-memory limit was raised, with the limit set.
    opted_in: Mutex<HashMap<String, u32>>,
    /// The most shared memory one block may opt into on this device.
    max_shared_per_block: u32,
    /// NVIDIA's GPU's compute capability, for the machine code of [`kernels::SASS`]; `None`
    /// on the stand-in, which runs what it built from the PTX.
    capability: Option<(u32, u32)>,
    /// The most blocks a launch grid takes in y, and in z (x takes 2³¹ − 1): larger grids
    /// go to several launches.
    max_grid_y: usize,
    max_grid_z: usize,
    /// `SPAFIT_CUDA_SYNC=1`: wait for every launch, so that a kernel fault is reported by
    /// the kernel that made it, not by whichever call comes next.
    sync_after_launch: bool,
    /// Device-to-host copies so far: each one waits for everything queued before it.
    downloads: AtomicU64,
    /// Kernels queued so far: each costs the host a few microseconds and, when small, leaves
    /// most of the GPU idle while it runs.
    launches: AtomicU64,
    /// Device time per kernel while [`Backend::start_kernel_timing`] is on.
    kernel_timer: KernelTimer,
    /// Host copies of the u32 tensors uploaded, read instead of downloading them.
    host_ids: HostIds,
}

/// The last backend of a device lets go of its modules: kernels still queued on the stream
/// finish first, for a module must not be unloaded under a running kernel.
impl Drop for Device {
    fn drop(&mut self) {
        let _ = self.stream.synchronize();
    }
}

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

/// Refuses a driver older than the nvcc that wrote the kernels' PTX, or a GPU older than its
/// target, before any module is compiled (see [`compatibility`]).
fn check_compatibility(ctx: &CudaContext, ordinal: usize) -> Result<()> {
    let Some((ptx, target)) = compatibility::kernels_ptx() else {
        return Ok(());
    };
    let mut driver_version = 0;
    // SAFETY: writes one int; NVIDIA's driver (the only one asked) has had it since CUDA 2.2.
    let status = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut driver_version) };
    if status != cudarc::driver::sys::CUresult::CUDA_SUCCESS {
        return Ok(());
    }
    let Some(device) = capability_of(ctx) else {
        return Ok(());
    };
    match compatibility::problem(ptx, target, driver_version, device) {
        Some(why) => Err(unavailable(ordinal, why)),
        None => Ok(()),
    }
}

/// Where a loaded kernel module came from.
#[derive(Clone, Debug, PartialEq)]
enum ModuleSource {
    /// Machine code built for this GPU (`SPAFIT_CUDA_SASS`).
    MachineCode,
    /// PTX the driver compiled: the build had no machine code for this GPU.
    Ptx,
    /// PTX the driver compiled after refusing the build's machine code, for this reason.
    PtxAfterRefusal(String),
}

/// Whether the driver's refusal of a module image is about the image itself (a format,
/// architecture or version it does not take), so that the same program as PTX may still load;
/// any other error (memory, a fault from an earlier launch) is the caller's to see.
fn image_refused(e: &cudarc::driver::DriverError) -> bool {
    use cudarc::driver::sys::CUresult::*;
    matches!(
        e.0,
        CUDA_ERROR_INVALID_IMAGE
            | CUDA_ERROR_NO_BINARY_FOR_GPU
            | CUDA_ERROR_INVALID_PTX
            | CUDA_ERROR_UNSUPPORTED_PTX_VERSION
            | CUDA_ERROR_INVALID_SOURCE
    )
}

/// The GPU's compute capability `(major, minor)`, when the driver says.
fn capability_of(ctx: &CudaContext) -> Option<(u32, u32)> {
    use cudarc::driver::sys::CUdevice_attribute::{
        CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR as MAJOR,
        CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR as MINOR,
    };
    let (Ok(major), Ok(minor)) = (ctx.attribute(MAJOR), ctx.attribute(MINOR)) else {
        return None;
    };
    Some((major.max(0) as u32, minor.max(0) as u32))
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
        Error::OutOfMemory {
            op,
            detail: format!(
                "{device}: {driver}; the model's weights and one step's activations must fit on \
                 the device: shorter sequences or a smaller batch need less, and in training \
                 so do smaller micro-batches of the same batch (--micro-batch-size); where \
                 the weights alone do not fit, --dtype bf16 keeps the frozen ones in half the \
                 memory"
            ),
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

fn check_kernels(backend: &str) -> Result<()> {
    if kernels::KERNELS.is_empty() {
        return Err(Error::BackendUnavailable {
            backend: backend.into(),
            reason: "this build has no CUDA kernels: nvcc was not found when it was built; run scripts/install_nvcc.sh and rebuild".into(),
        });
    }
    Ok(())
}

/// Why a libcuda that exists cannot be loaded (a broken or foreign file on the library
/// path), or `None` when there is none to load: the two call for different remedies.
fn driver_load_failure() -> Option<String> {
    let mut failure = None;
    for name in ["libcuda.so", "libcuda.so.1"] {
        // SAFETY: probes the library the driver API would load anyway (dlopen runs its
        // initialisers, as that load would); it is closed again at once, and nothing in it
        // is called.
        match unsafe {
            libloading::os::unix::Library::open(Some(name), libloading::os::unix::RTLD_NOW)
        } {
            Ok(_) => return None,
            Err(e) => {
                // dlerror()'s words are the error's source.
                let text =
                    std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string());
                // Only the library itself missing means no driver; a dependency of it
                // missing is a driver that does not load.
                if !text.starts_with(&format!("{name}: cannot open shared object file")) {
                    failure.get_or_insert(text);
                }
            }
        }
    }
    failure
}

impl CudaBackend {
    /// The backend on GPU `ordinal` (NVIDIA's driver). Fails with a message (never a panic)
    /// when this build has no kernels, the machine has no CUDA driver (the message names
    /// `cuda-emu`), there is no such device, or this process already runs on the stand-in.
    pub fn new(ordinal: usize, dtype: DType) -> Result<Self> {
        let precision = precision_of(dtype)?;
        check_kernels(&format!("cuda:{ordinal}"))?;
        if emulator::driver() == Some(Driver::Emulator) {
            return Err(unavailable(
                ordinal,
                "this process runs CUDA on the CPU stand-in (cuda-emu); a process uses one driver",
            ));
        }
        // SAFETY: only probes whether the driver library can be loaded.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(unavailable(
                ordinal,
                match driver_load_failure() {
                    Some(why) => format!(
                        "a CUDA driver library was found but does not load ({why}); \
                         `--device cuda-emu` runs the same kernels on the CPU stand-in"
                    ),
                    None => "no CUDA driver (libcuda) on this machine; `--device cuda-emu` \
                             (`CudaBackend::emulated` in the library) runs the same kernels on \
                             the CPU stand-in"
                        .into(),
                },
            ));
        }
        if emulator::driver_library_is_stand_in() {
            return Err(unavailable(
                ordinal,
                "the libcuda.so this process loads (through LD_LIBRARY_PATH, LD_PRELOAD or the \
                 system's library path) is spafit's CPU stand-in, not NVIDIA's driver; \
                 `--device cuda-emu` runs on the stand-in by name, `--device cuda` needs \
                 NVIDIA's driver",
            ));
        }
        emulator::claim_hardware()?;
        let count = CudaContext::device_count().map_err(|e| unavailable(ordinal, e.to_string()))?;
        if ordinal >= count as usize {
            return Err(unavailable(
                ordinal,
                format!("no such device: this machine has {count} CUDA device(s)"),
            ));
        }
        Self::on_context(ordinal, Driver::Hardware, precision)
    }

    /// The backend on the CPU stand-in for the CUDA driver (`cuda-emu`): the same kernels,
    /// launch code and memory handling, run on the CPU with guard pages, NaN-poisoned memory
    /// and checked barriers (see [`emulator`]). For tests and development without a GPU; it
    /// says nothing about GPU speed or the hardware's rounding.
    ///
    /// Process-wide effects an embedding program should know of: to report a kernel's
    /// out-of-bounds access as a launch error, the stand-in installs a SIGSEGV and SIGBUS
    /// handler (once, here); a fault outside any launch prints one `emu: SIGSEGV at …` line
    /// to stderr and then goes to the handler installed before it, or to the default action.
    /// Each thread that launches gets an alternate signal stack of 64 KiB + `AT_MINSIGSTKSZ`
    /// (freed at thread exit) unless its own is at least as large.
    pub fn emulated(dtype: DType) -> Result<Self> {
        let precision = precision_of(dtype)?;
        check_kernels("cuda-emu")?;
        emulator::use_emulator()?;
        emulator::stop_echoing_failures();
        Self::on_context(0, Driver::Emulator, precision)
    }

    /// A GPU when this machine has one, else the CPU stand-in: what the tests run on. Where
    /// NVIDIA's driver loads but the GPU then fails (no device visible, a driver too old for
    /// the kernels), the stand-in is tried; where it cannot follow (the process is bound to
    /// NVIDIA's driver by then), the error names both failures.
    pub fn hardware_or_emulated(dtype: DType) -> Result<Self> {
        if emulator::driver() != Some(Driver::Emulator)
            // SAFETY: only probes whether the driver library can be loaded.
            && unsafe { cudarc::driver::sys::is_culib_present() }
        {
            match Self::new(0, dtype) {
                Ok(b) => return Ok(b),
                Err(hardware) => {
                    return Self::emulated(dtype).map_err(|stand_in| {
                        unavailable(
                            0,
                            format!("the GPU: {hardware}; the CPU stand-in: {stand_in}"),
                        )
                    })
                }
            }
        }
        Self::emulated(dtype)
    }

    fn on_context(ordinal: usize, driver: Driver, precision: Precision) -> Result<Self> {
        let ctx = CudaContext::new(ordinal).map_err(|e| unavailable(ordinal, e.to_string()))?;
        if driver == Driver::Hardware {
            check_compatibility(&ctx, ordinal)?;
        }
        // SAFETY: every allocation, copy, launch and free of a backend runs on this one
        // stream, in order, so cudarc's per-allocation events (two created and destroyed
        // with every buffer) order nothing. A second stream would have to be joined by hand.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        // Devices without stream-ordered allocation have no pool to configure: cudarc falls
        // back to synchronous allocation there, so this is an optimisation, not a requirement.
        let _ = keep_freed_memory(&ctx);
        let max_shared_per_block = ctx
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
            .map_or(48 * 1024, |v| v.max(48 * 1024) as u32);
        // CUDA's 65535 on every GPU; the stand-in may report less, to test the splitting of
        // larger grids on small shapes.
        use cudarc::driver::sys::CUdevice_attribute;
        let grid_dim = |a| {
            ctx.attribute(a)
                .map_or(65_535, |v| v.clamp(1, 65_535) as usize)
        };
        let max_grid_y = grid_dim(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y);
        let max_grid_z = grid_dim(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z);
        let capability = match driver {
            Driver::Hardware => capability_of(&ctx),
            Driver::Emulator => None,
        };
        Ok(CudaBackend {
            device: Arc::new(Device {
                ordinal,
                driver,
                ctx,
                stream,
                modules: Mutex::new(HashMap::new()),
                functions: Mutex::new(HashMap::new()),
                opted_in: Mutex::new(HashMap::new()),
                max_shared_per_block,
                capability,
                max_grid_y,
                max_grid_z,
                sync_after_launch: std::env::var_os(SYNC_AFTER_LAUNCH).is_some_and(|v| v == "1"),
                downloads: AtomicU64::new(0),
                launches: AtomicU64::new(0),
                kernel_timer: KernelTimer::default(),
                host_ids: HostIds::default(),
            }),
            precision,
            poison: false,
            gemm_tile: None,
            gemm_split: None,
            gemm_precast: true,
            gemm_skinny: true,
        })
    }

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

    fn function(&self, module: &'static str, name: &str) -> Result<CudaFunction> {
        // Every launch asks: a handle found once is kept, not looked up by name in the driver
        // again (the module cache alone still left one driver call per launch).
        let functions = || {
            self.device
                .functions
                .lock()
                .map_err(|_| Error::invalid(module, "function cache poisoned"))
        };
        if let Some(f) = functions()?.get(module).and_then(|m| m.get(name)) {
            return Ok(f.clone());
        }
        let f = self.load_function(module, name)?;
        functions()?
            .entry(module)
            .or_default()
            .insert(name.to_string(), f.clone());
        Ok(f)
    }

    fn load_function(&self, module: &'static str, name: &str) -> Result<CudaFunction> {
        let mut modules = self
            .device
            .modules
            .lock()
            .map_err(|_| Error::invalid(module, "module cache poisoned"))?;
        let m = match modules.get(module) {
            Some((m, _)) => m.clone(),
            None => {
                let (m, source) = self.load_module(module)?;
                modules.insert(module, (m.clone(), source));
                m
            }
        };
        // Looking a function up (and setting its attributes) wants the context current on this
        // thread, which cudarc binds only for module loads and launches.
        self.device
            .ctx
            .bind_to_thread()
            .map_err(|e| driver(module, e))?;
        m.load_function(name).map_err(|e| driver(module, e))
    }

    /// Kernel file `module` on this device: its machine code where the build has some for
    /// this GPU, else its PTX, which the driver compiles. Machine code the driver refuses (a
    /// ptxas newer than the driver, say) costs only that compilation: the PTX is the same
    /// program.
    fn load_module(&self, module: &'static str) -> Result<(Arc<CudaModule>, ModuleSource)> {
        let sass = self
            .device
            .capability
            .and_then(|capability| kernels::sass(module, capability));
        let mut source = ModuleSource::Ptx;
        if let Some(code) = sass {
            // An error the context holds from before is this call's to report, not one for
            // the fallback below to swallow with the machine code's.
            self.device.ctx.check_err().map_err(|e| driver(module, e))?;
            match self
                .device
                .ctx
                .load_module(cudarc::nvrtc::Ptx::from_binary(code.to_vec()))
            {
                Ok(m) => return Ok((m, ModuleSource::MachineCode)),
                Err(e) if image_refused(&e) => {
                    source = ModuleSource::PtxAfterRefusal(e.to_string())
                }
                Err(e) => return Err(driver(module, e)),
            }
        }
        let ptx = kernels::ptx(module).ok_or_else(|| {
            unavailable(
                self.device.ordinal,
                format!("kernel module `{module}` is not in this build"),
            )
        })?;
        let m = self
            .device
            .ctx
            .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
            .map_err(|e| driver(module, e))?;
        Ok((m, source))
    }

    /// `function` with its dynamic shared memory limit raised to `bytes` when that exceeds
    /// the 48 KiB every kernel gets without asking.
    fn function_with_shared(
        &self,
        module: &'static str,
        name: &str,
        bytes: u32,
    ) -> Result<CudaFunction> {
        if bytes > self.device.max_shared_per_block {
            return Err(Error::invalid(
                module,
                format!(
                    "kernel {name} needs {bytes} bytes of shared memory per block but {} allows {} \
                     (a head dim or tile this device cannot hold)",
                    self.device_name(),
                    self.device.max_shared_per_block
                ),
            ));
        }
        let f = self.function(module, name)?;
        if bytes > 48 * 1024 {
            let mut opted = self
                .device
                .opted_in
                .lock()
                .map_err(|_| Error::invalid(module, "attribute cache poisoned"))?;
            if opted.get(name).is_none_or(|&b| b < bytes) {
                self.device
                    .ctx
                    .bind_to_thread()
                    .map_err(|e| driver(module, e))?;
                f.set_attribute(
                    cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    bytes as i32,
                )
                .map_err(|e| driver(module, e))?;
                opted.insert(name.to_string(), bytes);
            }
        }
        Ok(f)
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

/// Reads (or, with `set`, writes) a 64-bit attribute of the device's default memory pool.
fn pool_attribute(
    ctx: &Arc<CudaContext>,
    attribute: cudarc::driver::sys::CUmemPool_attribute,
    set: Option<u64>,
) -> std::result::Result<u64, cudarc::driver::DriverError> {
    use cudarc::driver::sys;
    let mut pool = std::ptr::null_mut();
    let mut value: u64 = set.unwrap_or(0);
    // SAFETY: plain driver calls on the context's own device with valid out-pointers; the
    // attributes used here are 64-bit values.
    unsafe {
        ctx.bind_to_thread()?;
        sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()).result()?;
        let p = &mut value as *mut u64 as *mut std::ffi::c_void;
        if set.is_some() {
            sys::cuMemPoolSetAttribute(pool, attribute, p).result()?;
        } else {
            sys::cuMemPoolGetAttribute(pool, attribute, p).result()?;
        }
    }
    Ok(value)
}

/// Raises the default memory pool's release threshold so freed memory stays cached.
fn keep_freed_memory(
    ctx: &Arc<CudaContext>,
) -> std::result::Result<(), cudarc::driver::DriverError> {
    use cudarc::driver::sys;
    let mut pool = std::ptr::null_mut();
    let mut threshold: u64 = u64::MAX;
    // SAFETY: plain driver calls on the context's own device with valid out-pointers.
    unsafe {
        ctx.bind_to_thread()?;
        sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()).result()?;
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            &mut threshold as *mut u64 as *mut std::ffi::c_void,
        )
        .result()?;
    }
    Ok(())
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
                    format!("the CUDA backend stores f32 or bf16, not {other}"),
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
        attention::forward(self, q, k, v, mask, config)
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
        attention::backward(self, d_out, q, k, v, lse, mask, config, want)
    }

    fn gelu_forward(&self, x: &Tensor<Self>) -> Result<Tensor<Self>> {
        elementwise::unary(self, "gelu", "gelu_forward", x)
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
