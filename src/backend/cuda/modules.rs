//! Kernel modules on the device: machine code where the build has some for the GPU, else PTX
//! the driver compiles; each loaded on first use and kept, with its functions and their
//! shared-memory limits.

use std::sync::Arc;

use cudarc::driver::{CudaFunction, CudaModule};

use super::{driver, kernels, unavailable, CudaBackend};
use crate::error::{Error, Result};

/// Where a loaded kernel module came from.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum ModuleSource {
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

impl CudaBackend {
    pub(super) fn function(&self, module: &'static str, name: &str) -> Result<CudaFunction> {
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
    pub(super) fn function_with_shared(
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
}
