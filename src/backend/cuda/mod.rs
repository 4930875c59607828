//! The CUDA backend: hand-written kernels from `kernels/`, launched through cudarc.
//!
//! Status: every op except the GEMM family (linear and its weight/input gradients) and
//! attention, which arrive with their own kernels; those answer with a clear error. The bias
//! gradient of a linear map (`db` alone) is here. Modules load lazily on first use and are
//! cached. Memory comes from the driver's stream-ordered pool with its release threshold
//! raised to the maximum, so freed blocks are kept and reused: a training step after the
//! first performs no `cuMemAlloc`.

mod buffer;
pub mod emulator;
pub mod kernels;

pub use buffer::CudaBuffer;
pub use emulator::Driver;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{
    CudaContext, CudaModule, CudaSlice, CudaStream, DeviceRepr, LaunchConfig, PushKernelArg,
    ValidAsZeroBits,
};
use half::bf16;

use super::shapes;
use super::{
    AdamWStep, AttentionConfig, AttentionGradRequest, AttentionGrads, AttentionOutput, Backend,
    Dropout, LayerNormGradRequest, LayerNormGrads, LayerNormOutput, LinearBackwardInputs,
    LinearGradRequest, LinearGrads, LinearOutput, LoraWeights,
};
use crate::error::{Error, Result};
use crate::rng;
use crate::tensor::{DType, Shape, Tensor};

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
                type $t = bf16;
                $body
            }
            other => Err(Error::dtype(
                $op,
                format!("the CUDA backend stores f32 or bf16, not {other}"),
            )),
        }
    };
}

struct Device {
    ordinal: usize,
    driver: Driver,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    poison: bool,
}

/// The CUDA backend on one device, creating float tensors in f32 or bf16.
#[derive(Clone)]
pub struct CudaBackend {
    device: Arc<Device>,
    dtype: DType,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaBackend({}, {})", self.device_name(), self.dtype)
    }
}

fn unavailable(ordinal: usize, reason: impl Into<String>) -> Error {
    Error::BackendUnavailable {
        backend: format!("cuda:{ordinal}"),
        reason: reason.into(),
    }
}

/// A driver error of `op` as an error value; out-of-memory says so plainly, and the CPU
/// stand-in adds what it found (kernel, block, thread, address).
fn driver(op: &'static str, e: cudarc::driver::DriverError) -> Error {
    let mut text = e.to_string();
    if let Some(detail) = emulator::last_error() {
        text = format!("{text}: {detail}");
    }
    if text.contains("OUT_OF_MEMORY") {
        Error::invalid(op, format!("out of GPU memory ({text})"))
    } else {
        Error::invalid(op, format!("CUDA error: {text}"))
    }
}

const THREADS: u32 = 256;

fn grid_for(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(THREADS as usize).clamp(1, 65_535) as u32;
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

fn columns(cols: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (cols.div_ceil(32) as u32, 1, 1),
        block_dim: (32, 8, 1),
        shared_mem_bytes: 0,
    }
}

impl CudaBackend {
    /// The backend on GPU `ordinal` (NVIDIA's driver). Fails with a message (never a panic)
    /// when this build has no kernels, the machine has no CUDA driver (the message names
    /// `cuda-emu`), there is no such device, or this process already runs on the stand-in.
    pub fn new(ordinal: usize, dtype: DType) -> Result<Self> {
        check_dtype(dtype)?;
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
                "no CUDA driver (libcuda) on this machine; `--device cuda-emu` (CudaBackend::emulated) runs the same kernels on the CPU stand-in",
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
        Self::on_context(ordinal, Driver::Hardware, dtype)
    }

    /// The backend on the CPU stand-in for the CUDA driver (`cuda-emu`): the same kernels,
    /// launch code and memory handling, run on the CPU with guard pages, NaN-poisoned memory
    /// and checked barriers (see [`emulator`]). For tests and development without a GPU; it
    /// says nothing about GPU speed or the hardware's rounding.
    pub fn emulated(dtype: DType) -> Result<Self> {
        check_dtype(dtype)?;
        check_kernels("cuda-emu")?;
        emulator::use_emulator()?;
        Self::on_context(0, Driver::Emulator, dtype)
    }

    /// A GPU when this machine has one, else the CPU stand-in: what the tests run on.
    pub fn hardware_or_emulated(dtype: DType) -> Result<Self> {
        if emulator::driver() != Some(Driver::Emulator)
            // SAFETY: only probes whether the driver library can be loaded.
            && unsafe { cudarc::driver::sys::is_culib_present() }
        {
            if let Ok(b) = Self::new(0, dtype) {
                return Ok(b);
            }
        }
        Self::emulated(dtype)
    }

    fn on_context(ordinal: usize, driver: Driver, dtype: DType) -> Result<Self> {
        let ctx = CudaContext::new(ordinal).map_err(|e| unavailable(ordinal, e.to_string()))?;
        let stream = ctx.default_stream();
        // Devices without stream-ordered allocation have no pool to configure: cudarc falls
        // back to synchronous allocation there, so this is an optimisation, not a requirement.
        let _ = keep_freed_memory(&ctx);
        Ok(CudaBackend {
            device: Arc::new(Device {
                ordinal,
                driver,
                ctx,
                stream,
                modules: Mutex::new(HashMap::new()),
                poison: false,
            }),
            dtype,
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
    pub fn with_poisoned_outputs(self) -> Self {
        let d = &self.device;
        CudaBackend {
            device: Arc::new(Device {
                ordinal: d.ordinal,
                driver: d.driver,
                ctx: d.ctx.clone(),
                stream: d.stream.clone(),
                modules: Mutex::new(HashMap::new()),
                poison: true,
            }),
            dtype: self.dtype,
        }
    }

    /// The same device creating tensors in `dtype`.
    pub fn with_dtype(&self, dtype: DType) -> Result<Self> {
        check_dtype(dtype)?;
        Ok(CudaBackend {
            device: self.device.clone(),
            dtype,
        })
    }

    /// Waits for all queued work (and surfaces asynchronous launch failures).
    pub fn synchronize(&self) -> Result<()> {
        self.device
            .stream
            .synchronize()
            .map_err(|e| driver("synchronize", e))
    }

    fn function(&self, module: &'static str, name: &str) -> Result<cudarc::driver::CudaFunction> {
        let mut modules = self
            .device
            .modules
            .lock()
            .map_err(|_| Error::invalid(module, "module cache poisoned"))?;
        let m = match modules.get(module) {
            Some(m) => m.clone(),
            None => {
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
                modules.insert(module, m.clone());
                m
            }
        };
        m.load_function(name).map_err(|e| driver(module, e))
    }

    fn output<T: CudaFloat>(&self, n: usize) -> Result<CudaSlice<T>> {
        if n == 0 {
            return Err(Error::invalid("cuda", "empty tensors are not supported"));
        }
        let s = &self.device.stream;
        if self.device.poison {
            s.clone_htod(&vec![T::NAN; n])
                .map_err(|e| driver("alloc", e))
        } else {
            s.alloc_zeros::<T>(n).map_err(|e| driver("alloc", e))
        }
    }

    /// Zero-filled (never poisoned): for outputs whose untouched elements must be zero.
    fn zeroed<T: CudaFloat>(&self, n: usize) -> Result<CudaSlice<T>> {
        self.device
            .stream
            .alloc_zeros::<T>(n.max(1))
            .map_err(|e| driver("alloc", e))
    }

    fn f32_output(&self, n: usize) -> Result<CudaSlice<f32>> {
        self.output::<f32>(n)
    }

    fn upload_u32(&self, v: &[u32]) -> Result<CudaSlice<u32>> {
        self.device
            .stream
            .clone_htod(v)
            .map_err(|e| driver("upload", e))
    }
}

fn check_dtype(dtype: DType) -> Result<()> {
    if matches!(dtype, DType::F32 | DType::BF16) {
        Ok(())
    } else {
        Err(Error::dtype(
            "cuda backend",
            format!("the CUDA backend stores f32 or bf16, not {dtype}"),
        ))
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

fn f32_tensor(shape: impl Into<Shape>, s: CudaSlice<f32>) -> Result<Tensor<CudaBackend>> {
    Tensor::from_buffer(shape, CudaBuffer::F32(s))
}

fn gemm_pending(op: &'static str) -> Error {
    Error::BackendUnavailable {
        backend: "cuda".into(),
        reason: format!("{op} needs the GEMM / attention kernels, which arrive in their own issue; use the CPU backend for now"),
    }
}

/// Launches `$func` of kernel file `$module` with the arguments in order.
macro_rules! launch {
    ($self:expr, $module:expr, $func:expr, $cfg:expr, $($arg:expr),+ $(,)?) => {{
        let f = $self.function($module, AsRef::<str>::as_ref(&$func))?;
        let mut b = $self.device.stream.launch_builder(&f);
        // Each argument is bound in this block (shadowed, not dropped) so that temporaries
        // like `&(n as i32)` live until the launch.
        $( let arg = $arg; b.arg(arg); )+
        // SAFETY: argument types and order match the kernel's extern "C" signature in
        // kernels/$module.cu, and every buffer holds the element count the kernel indexes.
        unsafe { b.launch($cfg) }.map_err(|e| driver($module, e))?;
    }};
}

impl Backend for CudaBackend {
    type Buffer = CudaBuffer;

    fn name(&self) -> String {
        format!("{}-{}", self.device_name(), self.dtype)
    }

    fn float_dtype(&self) -> DType {
        self.dtype
    }

    fn master_dtype(&self) -> DType {
        DType::F32
    }

    fn tensor_from_f64_as(&self, shape: Shape, data: &[f64], dtype: DType) -> Result<Tensor<Self>> {
        let s = &self.device.stream;
        let buf = match dtype {
            DType::BF16 => CudaBuffer::BF16(
                s.clone_htod(&data.iter().map(|&v| bf16::from_f64(v)).collect::<Vec<_>>())
                    .map_err(|e| driver("upload", e))?,
            ),
            DType::F32 => CudaBuffer::F32(
                s.clone_htod(&data.iter().map(|&v| v as f32).collect::<Vec<_>>())
                    .map_err(|e| driver("upload", e))?,
            ),
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
        self.cast_on_device(t, dtype)
    }

    fn tensor_from_u32(&self, shape: Shape, data: &[u32]) -> Result<Tensor<Self>> {
        Tensor::from_buffer(shape, CudaBuffer::U32(self.upload_u32(data)?))
    }

    fn zeros(&self, shape: Shape) -> Result<Tensor<Self>> {
        let n = shape.numel();
        with_float!(self.dtype, "zeros", T => tensor(shape, self.zeroed::<T>(n)?))
    }

    fn to_f64(&self, t: &Tensor<Self>) -> Result<Vec<f64>> {
        let s = &self.device.stream;
        match t.buffer() {
            CudaBuffer::F32(b) => Ok(s
                .clone_dtoh(b)
                .map_err(|e| driver("download", e))?
                .into_iter()
                .map(f64::from)
                .collect()),
            CudaBuffer::BF16(b) => Ok(s
                .clone_dtoh(b)
                .map_err(|e| driver("download", e))?
                .into_iter()
                .map(bf16::to_f64)
                .collect()),
            CudaBuffer::U32(_) => Err(Error::dtype("to_f64", "tensor holds u32, not floats")),
        }
    }

    fn to_u32(&self, t: &Tensor<Self>) -> Result<Vec<u32>> {
        match t.buffer() {
            CudaBuffer::U32(b) => self
                .device
                .stream
                .clone_dtoh(b)
                .map_err(|e| driver("download", e)),
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
        shapes::linear(x, w, bias, lora.as_ref(), x_lora)?;
        Err(gemm_pending("linear"))
    }

    fn linear_backward(
        &self,
        inp: LinearBackwardInputs<'_, Self>,
        want: LinearGradRequest,
    ) -> Result<LinearGrads<Self>> {
        const OP: &str = "linear backward";
        let (rows, output) = shapes::matrix(OP, "dy", inp.dy)?;
        if want.dx || want.dw || want.da || want.db_lora || want.dx_lora {
            return Err(gemm_pending(OP));
        }
        let mut g = LinearGrads::default();
        if want.db {
            let dtype = shapes::common_float_dtype(OP, &[("dy", inp.dy)])?;
            g.db = Some(with_float!(dtype, OP, T => {
                let out = self.output::<T>(output)?;
                let mut out = out;
                launch!(self, "bias_grad", format!("bias_grad_{}", T::SUFFIX), columns(output), view::<T>(inp.dy), &mut out, &(rows as i32), &(output as i32));
                tensor([output], out)
            })?);
        }
        Ok(g)
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
            let mut y = self.output::<T>(rows * n)?;
            let mut mean = self.f32_output(rows)?;
            let mut rstd = self.f32_output(rows)?;
            launch!(self, "layernorm", format!("layernorm_forward_{}", T::SUFFIX), block_reduce(rows as u32, THREADS),
                view::<T>(x), view::<T>(gamma), view::<T>(beta), &mut y, &mut mean, &mut rstd, &(n as i32), &(eps as f32));
            Ok(LayerNormOutput { y: tensor(x.shape().clone(), y)?, mean: f32_tensor([rows], mean)?, rstd: f32_tensor([rows], rstd)? })
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
        let (rows, n) = shapes::layernorm_backward(dy, x, mean, rstd, gamma)?;
        let mut named = vec![("dy", dy)];
        named.extend(x.map(|t| ("x", t)));
        named.extend(gamma.map(|t| ("gamma", t)));
        let dtype = shapes::common_float_dtype(OP, &named)?;
        for (name, t) in [("mean", mean), ("rstd", rstd)] {
            if let Some(t) = t.filter(|t| t.dtype() != DType::F32) {
                return Err(Error::dtype(
                    OP,
                    format!("`{name}` must be f32 on CUDA, got {}", t.dtype()),
                ));
            }
        }
        let missing = |name: &str| {
            Error::invalid(
                OP,
                format!("a gradient was requested but `{name}` was not given"),
            )
        };
        with_float!(dtype, OP, T => {
            let mut g = LayerNormGrads::default();
            if want.dgamma || want.dbeta {
                let need_stats = want.dgamma;
                let (xs, ms, rs) = if need_stats {
                    (Some(x.ok_or_else(|| missing("x"))?), Some(mean.ok_or_else(|| missing("mean"))?), Some(rstd.ok_or_else(|| missing("rstd"))?))
                } else {
                    (None, None, None)
                };
                let mut dgamma = if want.dgamma { Some(self.output::<T>(n)?) } else { None };
                let mut dbeta = if want.dbeta { Some(self.output::<T>(n)?) } else { None };
                // Absent operands are passed as null pointers; the kernel only reads them for dγ.
                let null = 0u64;
                let f = self.function("layernorm", &format!("layernorm_backward_params_{}", T::SUFFIX))?;
                let mut b = self.device.stream.launch_builder(&f);
                b.arg(view::<T>(dy));
                match (xs, ms, rs) {
                    (Some(x), Some(m), Some(r)) => {
                        b.arg(view::<T>(x));
                        b.arg(view::<f32>(m));
                        b.arg(view::<f32>(r));
                    }
                    _ => {
                        b.arg(&null);
                        b.arg(&null);
                        b.arg(&null);
                    }
                }
                match dgamma.as_mut() {
                    Some(d) => b.arg(d),
                    None => b.arg(&null),
                };
                match dbeta.as_mut() {
                    Some(d) => b.arg(d),
                    None => b.arg(&null),
                };
                let (rows_i, n_i) = (rows as i32, n as i32);
                b.arg(&rows_i);
                b.arg(&n_i);
                // SAFETY: matches layernorm_backward_params_* in kernels/layernorm.cu; null
                // pointers only where the kernel does not read (x, mean, rstd without dγ) or
                // write (the gradient not requested).
                unsafe { b.launch(columns(n)) }.map_err(|e| driver(OP, e))?;
                g.dgamma = dgamma.map(|d| tensor([n], d)).transpose()?;
                g.dbeta = dbeta.map(|d| tensor([n], d)).transpose()?;
            }
            if want.dx {
                let (x, m, r, gm) = (x.ok_or_else(|| missing("x"))?, mean.ok_or_else(|| missing("mean"))?, rstd.ok_or_else(|| missing("rstd"))?, gamma.ok_or_else(|| missing("gamma"))?);
                let mut dx = self.output::<T>(rows * n)?;
                launch!(self, "layernorm", format!("layernorm_backward_input_{}", T::SUFFIX), block_reduce(rows as u32, THREADS),
                    view::<T>(dy), view::<T>(x), view::<f32>(m), view::<f32>(r), view::<T>(gm), &mut dx, &(n as i32));
                g.dx = Some(tensor(dy.shape().clone(), dx)?);
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
        shapes::attention(q, k, v, mask, config)?;
        Err(gemm_pending("attention"))
    }

    fn attention_backward(
        &self,
        _d_out: &Tensor<Self>,
        q: &Tensor<Self>,
        k: &Tensor<Self>,
        v: &Tensor<Self>,
        _lse: &Tensor<Self>,
        mask: &Tensor<Self>,
        config: &AttentionConfig,
        _want: AttentionGradRequest,
    ) -> Result<AttentionGrads<Self>> {
        shapes::attention(q, k, v, mask, config)?;
        Err(gemm_pending("attention backward"))
    }

    fn gelu_forward(&self, x: &Tensor<Self>) -> Result<Tensor<Self>> {
        self.unary("gelu", "gelu_forward", x)
    }

    fn gelu_backward(&self, dy: &Tensor<Self>, x: &Tensor<Self>) -> Result<Tensor<Self>> {
        self.binary("gelu backward", "gelu_backward", dy, x)
    }

    fn tanh_forward(&self, x: &Tensor<Self>) -> Result<Tensor<Self>> {
        self.unary("tanh", "tanh_forward", x)
    }

    fn tanh_backward(&self, dy: &Tensor<Self>, y: &Tensor<Self>) -> Result<Tensor<Self>> {
        self.binary("tanh backward", "tanh_backward", dy, y)
    }

    fn add(&self, a: &Tensor<Self>, b: &Tensor<Self>) -> Result<Tensor<Self>> {
        self.binary("add", "add", a, b)
    }

    fn add_assign(&self, acc: &mut Tensor<Self>, x: &Tensor<Self>) -> Result<()> {
        let dtype = shapes::common_float_dtype("add_assign", &[("acc", acc), ("x", x)])?;
        shapes::require_same_shape("add_assign", ("acc", acc), ("x", x))?;
        let n = x.numel();
        with_float!(dtype, "add_assign", T => {
            let a = T::slice_mut(acc.buffer_mut()).expect("dtype checked");
            launch!(self, "elementwise", format!("add_assign_{}", T::SUFFIX), grid_for(n), a, view::<T>(x), &(n as i64));
            Ok(())
        })
    }

    fn scale_in_place(&self, t: &mut Tensor<Self>, s: f64) -> Result<()> {
        let dtype = shapes::common_float_dtype("scale", &[("t", t)])?;
        let n = t.numel();
        with_float!(dtype, "scale", T => {
            let b = T::slice_mut(t.buffer_mut()).expect("dtype checked");
            launch!(self, "elementwise", format!("scale_{}", T::SUFFIX), grid_for(n), b, &(s as f32), &(n as i64));
            Ok(())
        })
    }

    fn sum_squares(&self, t: &Tensor<Self>) -> Result<f64> {
        let dtype = shapes::common_float_dtype("sum_squares", &[("t", t)])?;
        let n = t.numel();
        let cfg = LaunchConfig {
            shared_mem_bytes: THREADS * 4,
            ..grid_for(n)
        };
        let blocks = cfg.grid_dim.0 as usize;
        with_float!(dtype, "sum_squares", T => {
            let mut partial = self.zeroed::<f32>(blocks)?;
            launch!(self, "elementwise", format!("sum_squares_partial_{}", T::SUFFIX), cfg, view::<T>(t), &mut partial, &(n as i64));
            let host = self.device.stream.clone_dtoh(&partial).map_err(|e| driver("sum_squares", e))?;
            Ok(host.iter().map(|&v| f64::from(v)).sum())
        })
    }

    fn dropout(&self, x: &Tensor<Self>, dropout: Dropout) -> Result<Tensor<Self>> {
        let dtype = shapes::common_float_dtype("dropout", &[("x", x)])?;
        shapes::dropout("dropout", &dropout)?;
        let n = x.numel();
        with_float!(dtype, "dropout", T => {
            let mut y = self.output::<T>(n)?;
            launch!(self, "elementwise", format!("dropout_{}", T::SUFFIX), grid_for(n), view::<T>(x), &mut y, &(n as i64),
                &dropout.seed, &rng::drop_threshold(dropout.p), &((1.0 / (1.0 - dropout.p)) as f32));
            tensor(x.shape().clone(), y)
        })
    }

    fn embedding_forward(&self, table: &Tensor<Self>, idx: &Tensor<Self>) -> Result<Tensor<Self>> {
        const OP: &str = "embedding";
        let (dtype, vocab, dim) = shapes::embedding(table, idx)?;
        shapes::check_indices(OP, "id", &self.to_u32(idx)?, vocab)?;
        let n = idx.numel();
        let mut out_shape = idx.dims().to_vec();
        out_shape.push(dim);
        with_float!(dtype, OP, T => {
            let mut out = self.output::<T>(n * dim)?;
            launch!(self, "embedding", format!("embedding_forward_{}", T::SUFFIX), grid_for(n * dim), view::<T>(table), ids(idx), &mut out, &(n as i64), &(dim as i32));
            tensor(out_shape, out)
        })
    }

    fn embedding_backward(
        &self,
        d_out: &Tensor<Self>,
        idx: &Tensor<Self>,
        vocab: usize,
    ) -> Result<Tensor<Self>> {
        const OP: &str = "embedding backward";
        let (dtype, rows, dim) = shapes::embedding_backward(d_out, idx)?;
        let host_ids = self.to_u32(idx)?;
        shapes::check_indices(OP, "id", &host_ids, vocab)?;
        // Group positions by id, each group in increasing position order (a stable sort).
        let mut order: Vec<u32> = (0..rows as u32).collect();
        order.sort_by_key(|&i| host_ids[i as usize]);
        let (mut starts, mut groups) = (Vec::new(), Vec::new());
        for (k, &i) in order.iter().enumerate() {
            let id = host_ids[i as usize];
            if groups.last() != Some(&id) {
                groups.push(id);
                starts.push(k as u32);
            }
        }
        starts.push(rows as u32);
        let (order_d, starts_d, groups_d) = (
            self.upload_u32(&order)?,
            self.upload_u32(&starts)?,
            self.upload_u32(&groups)?,
        );
        with_float!(dtype, OP, T => {
            let mut table = self.zeroed::<T>(vocab * dim)?;
            let cfg = LaunchConfig { grid_dim: (groups.len() as u32, 1, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
            launch!(self, "embedding", format!("embedding_backward_{}", T::SUFFIX), cfg, view::<T>(d_out), &order_d, &starts_d, &groups_d, &mut table, &(dim as i32));
            tensor([vocab, dim], table)
        })
    }

    fn cross_entropy_forward(
        &self,
        logits: &Tensor<Self>,
        labels: &Tensor<Self>,
    ) -> Result<Tensor<Self>> {
        let (dtype, rows, classes) = self.check_cross_entropy("cross_entropy", logits, labels)?;
        with_float!(dtype, "cross_entropy", T => {
            let mut loss = self.f32_output(1)?;
            launch!(self, "loss", format!("cross_entropy_forward_{}", T::SUFFIX), block_reduce(1, THREADS), view::<T>(logits), ids(labels), &mut loss, &(rows as i32), &(classes as i32));
            f32_tensor([1], loss)
        })
    }

    fn cross_entropy_backward(
        &self,
        d_loss: &Tensor<Self>,
        logits: &Tensor<Self>,
        labels: &Tensor<Self>,
    ) -> Result<Tensor<Self>> {
        const OP: &str = "cross_entropy backward";
        let (dtype, rows, classes) = self.check_cross_entropy(OP, logits, labels)?;
        let d = self.scalar_f32(OP, d_loss)?;
        with_float!(dtype, OP, T => {
            let mut out = self.output::<T>(rows * classes)?;
            launch!(self, "loss", format!("cross_entropy_backward_{}", T::SUFFIX), grid_for(rows * classes), &d, view::<T>(logits), ids(labels), &mut out, &(rows as i32), &(classes as i32));
            tensor(logits.shape().clone(), out)
        })
    }

    fn mse_forward(&self, pred: &Tensor<Self>, target: &Tensor<Self>) -> Result<Tensor<Self>> {
        let dtype = shapes::mse("mse", pred, target)?;
        let n = pred.numel();
        with_float!(dtype, "mse", T => {
            let mut loss = self.f32_output(1)?;
            launch!(self, "loss", format!("mse_forward_{}", T::SUFFIX), block_reduce(1, THREADS), view::<T>(pred), view::<T>(target), &mut loss, &(n as i32));
            f32_tensor([1], loss)
        })
    }

    fn mse_backward(
        &self,
        d_loss: &Tensor<Self>,
        pred: &Tensor<Self>,
        target: &Tensor<Self>,
    ) -> Result<Tensor<Self>> {
        const OP: &str = "mse backward";
        let dtype = shapes::mse(OP, pred, target)?;
        let d = self.scalar_f32(OP, d_loss)?;
        let n = pred.numel();
        with_float!(dtype, OP, T => {
            let mut out = self.output::<T>(n)?;
            launch!(self, "loss", format!("mse_backward_{}", T::SUFFIX), grid_for(n), &d, view::<T>(pred), view::<T>(target), &mut out, &(n as i32));
            tensor(pred.shape().clone(), out)
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
        const OP: &str = "adamw";
        for (name, t) in [("param", &*param), ("m", &*m), ("v", &*v)] {
            if t.dtype() != DType::F32 {
                return Err(Error::dtype(
                    OP,
                    format!(
                        "`{name}` must be f32 (master weights) on CUDA, got {}",
                        t.dtype()
                    ),
                ));
            }
        }
        for (name, t) in [("grad", grad), ("m", &*m), ("v", &*v)] {
            shapes::require_same_shape(OP, (name, t), ("param", param))?;
        }
        shapes::adamw(step)?;
        let n = param.numel();
        let t = step.step as i32;
        let decay = (1.0 - step.lr * step.weight_decay) as f32;
        let step_size = (step.lr / (1.0 - step.beta1.powi(t))) as f32;
        let bias2_sqrt = (1.0 - step.beta2.powi(t)).sqrt() as f32;
        let (b1, b2, eps) = (step.beta1 as f32, step.beta2 as f32, step.eps as f32);
        let (one_b1, one_b2) = ((1.0 - step.beta1) as f32, (1.0 - step.beta2) as f32);
        let p = f32::slice_mut(param.buffer_mut()).expect("checked f32");
        let ms = f32::slice_mut(m.buffer_mut()).expect("checked f32");
        let vs = f32::slice_mut(v.buffer_mut()).expect("checked f32");
        match grad.buffer() {
            CudaBuffer::F32(g) => {
                launch!(
                    self,
                    "adamw",
                    "adamw_f32",
                    grid_for(n),
                    p,
                    g,
                    ms,
                    vs,
                    &(n as i64),
                    &decay,
                    &b1,
                    &one_b1,
                    &b2,
                    &one_b2,
                    &step_size,
                    &bias2_sqrt,
                    &eps
                );
            }
            CudaBuffer::BF16(g) => {
                launch!(
                    self,
                    "adamw",
                    "adamw_bf16_grad",
                    grid_for(n),
                    p,
                    g,
                    ms,
                    vs,
                    &(n as i64),
                    &decay,
                    &b1,
                    &one_b1,
                    &b2,
                    &one_b2,
                    &step_size,
                    &bias2_sqrt,
                    &eps
                );
            }
            CudaBuffer::U32(_) => return Err(Error::dtype(OP, "`grad` must be a float tensor")),
        }
        Ok(())
    }
}

impl CudaBackend {
    /// `t` converted to `dtype` (f32 ↔ bf16; round to nearest even into bf16), on the device.
    fn cast_on_device(&self, t: &Tensor<Self>, dtype: DType) -> Result<Tensor<Self>> {
        let n = t.numel();
        let buf = match (t.buffer(), dtype) {
            (CudaBuffer::F32(x), DType::BF16) => {
                let mut y = self.output::<bf16>(n)?;
                launch!(
                    self,
                    "elementwise",
                    "cast_f32_to_bf16",
                    grid_for(n),
                    x,
                    &mut y,
                    &(n as i64)
                );
                CudaBuffer::BF16(y)
            }
            (CudaBuffer::BF16(x), DType::F32) => {
                let mut y = self.output::<f32>(n)?;
                launch!(
                    self,
                    "elementwise",
                    "cast_bf16_to_f32",
                    grid_for(n),
                    x,
                    &mut y,
                    &(n as i64)
                );
                CudaBuffer::F32(y)
            }
            (b, d) if crate::backend::DeviceBuffer::dtype(b) == d => b.clone(),
            (_, d) => {
                return Err(Error::dtype(
                    "cast",
                    format!("cannot cast {} to {d}", t.dtype()),
                ))
            }
        };
        Tensor::from_buffer(t.shape().clone(), buf)
    }

    fn unary(&self, op: &'static str, kernel: &str, x: &Tensor<Self>) -> Result<Tensor<Self>> {
        let dtype = shapes::common_float_dtype(op, &[("x", x)])?;
        let n = x.numel();
        with_float!(dtype, op, T => {
            let mut y = self.output::<T>(n)?;
            launch!(self, "elementwise", format!("{kernel}_{}", T::SUFFIX), grid_for(n), view::<T>(x), &mut y, &(n as i64));
            tensor(x.shape().clone(), y)
        })
    }

    fn binary(
        &self,
        op: &'static str,
        kernel: &str,
        a: &Tensor<Self>,
        b: &Tensor<Self>,
    ) -> Result<Tensor<Self>> {
        let dtype = shapes::common_float_dtype(op, &[("a", a), ("b", b)])?;
        shapes::require_same_shape(op, ("a", a), ("b", b))?;
        let n = a.numel();
        with_float!(dtype, op, T => {
            let mut y = self.output::<T>(n)?;
            launch!(self, "elementwise", format!("{kernel}_{}", T::SUFFIX), grid_for(n), view::<T>(a), view::<T>(b), &mut y, &(n as i64));
            tensor(a.shape().clone(), y)
        })
    }

    /// The one-element upstream gradient of a loss, as f32 on the device.
    fn scalar_f32(&self, op: &'static str, d_loss: &Tensor<Self>) -> Result<CudaSlice<f32>> {
        if d_loss.numel() != 1 {
            return Err(Error::shape(
                op,
                format!(
                    "`d_loss` must hold one element, got shape {}",
                    d_loss.shape()
                ),
            ));
        }
        let v = self.to_f64(d_loss)?[0] as f32;
        self.device
            .stream
            .clone_htod(&[v])
            .map_err(|e| driver(op, e))
    }

    fn check_cross_entropy(
        &self,
        op: &'static str,
        logits: &Tensor<Self>,
        labels: &Tensor<Self>,
    ) -> Result<(DType, usize, usize)> {
        let (dtype, rows, classes) = shapes::cross_entropy(op, logits, labels)?;
        shapes::check_indices(op, "label", &self.to_u32(labels)?, classes)?;
        Ok((dtype, rows, classes))
    }
}
