//! One device and the backend made on it: NVIDIA's driver or the CPU stand-in, checked for
//! kernels, a driver that loads and one the kernels' PTX suits; its context, stream and
//! memory pool, which keeps freed memory for reuse.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream};

use super::host_ids::HostIds;
use super::kernel_times::KernelTimer;
use super::modules::ModuleSource;
use super::{
    compatibility, emulator, kernels, precision_of, unavailable, CudaBackend, Driver, Precision,
    KEEP_LINEAR_INPUTS, SYNC_AFTER_LAUNCH,
};
use crate::error::{Error, Result};
use crate::tensor::DType;

pub(super) struct Device {
    pub(super) ordinal: usize,
    pub(super) driver: Driver,
    pub(super) ctx: Arc<CudaContext>,
    pub(super) stream: Arc<CudaStream>,
    /// Kernel modules loaded so far, each with where it came from (what
    /// [`Backend::kernel_code`] reports).
    pub(super) modules: Mutex<HashMap<&'static str, (Arc<CudaModule>, ModuleSource)>>,
    /// Kernel handles by module, then name.
    pub(super) functions: Mutex<HashMap<&'static str, HashMap<String, CudaFunction>>>,
    /// Kernels whose dynamic shared-memory limit was raised, with the limit set.
    pub(super) opted_in: Mutex<HashMap<String, u32>>,
    /// The most shared memory one block may opt into on this device.
    pub(super) max_shared_per_block: u32,
    /// NVIDIA's GPU's compute capability, for the machine code of [`kernels::SASS`]; `None`
    /// on the stand-in, which runs what it built from the PTX.
    pub(super) capability: Option<(u32, u32)>,
    /// The most blocks a launch grid takes in y, and in z (x takes 2³¹ − 1): larger grids
    /// go to several launches.
    pub(super) max_grid_y: usize,
    pub(super) max_grid_z: usize,
    /// `SPAFIT_CUDA_SYNC=1`: wait for every launch, so that a kernel fault is reported by
    /// the kernel that made it, not by whichever call comes next.
    pub(super) sync_after_launch: bool,
    /// Device-to-host copies so far: each one waits for everything queued before it.
    pub(super) downloads: AtomicU64,
    /// Kernels queued so far: each costs the host a few microseconds and, when small, leaves
    /// most of the GPU idle while it runs.
    pub(super) launches: AtomicU64,
    /// Device time per kernel while [`Backend::start_kernel_timing`] is on.
    pub(super) kernel_timer: KernelTimer,
    /// Host copies of the u32 tensors uploaded, read instead of downloading them.
    pub(super) host_ids: HostIds,
}

/// The last backend of a device lets go of its modules: kernels still queued on the stream
/// finish first, for a module must not be unloaded under a running kernel.
impl Drop for Device {
    fn drop(&mut self) {
        let _ = self.stream.synchronize();
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

/// Reads (or, with `set`, writes) a 64-bit attribute of the device's default memory pool.
pub(super) fn pool_attribute(
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
            attention_stages: 1,
            recompute_linear_inputs: std::env::var_os(KEEP_LINEAR_INPUTS).is_none_or(|v| v != "1"),
        })
    }
}
