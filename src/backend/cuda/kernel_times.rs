//! Device time per kernel: an event recorded on the stream before and after each launch
//! while timing is on, read back when it stops. The pair brackets the kernel alone, so a gap
//! where the device waits for the host (launch overhead, a download) counts in no kernel:
//! the kernels' sum beside the wall time of the same work tells how busy the device was.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaContext, CudaEvent, CudaStream, DriverError};

use crate::backend::KernelTime;
use crate::error::{Error, Result};

const OP: &str = "kernel timing";

fn driver(e: DriverError) -> Error {
    Error::Device {
        op: OP,
        detail: e.to_string(),
    }
}

/// One timed launch.
struct TimedLaunch {
    kernel: String,
    start: CudaEvent,
    end: CudaEvent,
}

/// The launches timed since [`KernelTimer::start`]; off (one atomic load per launch) until
/// then.
#[derive(Default)]
pub(super) struct KernelTimer {
    on: AtomicBool,
    launches: Mutex<Vec<TimedLaunch>>,
}

impl KernelTimer {
    /// Times every launch from now on, forgetting any earlier ones.
    pub(super) fn start(&self) {
        self.lock().clear();
        self.on.store(true, Ordering::Release);
    }

    /// The event before a launch, when timing is on.
    pub(super) fn before_launch(
        &self,
        ctx: &Arc<CudaContext>,
        stream: &CudaStream,
    ) -> Result<Option<CudaEvent>> {
        if !self.on.load(Ordering::Acquire) {
            return Ok(None);
        }
        let event = ctx
            .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(driver)?;
        event.record(stream).map_err(driver)?;
        Ok(Some(event))
    }

    /// Closes the bracket `before_launch` opened, once `kernel` is queued.
    pub(super) fn after_launch(
        &self,
        start: Option<CudaEvent>,
        kernel: &str,
        stream: &CudaStream,
    ) -> Result<()> {
        let Some(start) = start else {
            return Ok(());
        };
        let end = stream
            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(driver)?;
        self.lock().push(TimedLaunch {
            kernel: kernel.to_string(),
            start,
            end,
        });
        Ok(())
    }

    /// Stops timing and returns each kernel's launches and device milliseconds, most time
    /// first (waits for the timed launches to finish); `None` when timing was not on.
    pub(super) fn stop(&self) -> Result<Option<Vec<KernelTime>>> {
        if !self.on.swap(false, Ordering::AcqRel) {
            return Ok(None);
        }
        let launches = std::mem::take(&mut *self.lock());
        let mut by_kernel: BTreeMap<String, (u64, f64)> = BTreeMap::new();
        for launch in launches {
            let ms = launch.start.elapsed_ms(&launch.end).map_err(driver)?;
            let entry = by_kernel.entry(launch.kernel).or_default();
            entry.0 += 1;
            entry.1 += f64::from(ms);
        }
        let mut times: Vec<KernelTime> = by_kernel
            .into_iter()
            .map(|(kernel, (launches, milliseconds))| KernelTime {
                kernel,
                launches,
                milliseconds,
            })
            .collect();
        times.sort_by(|a, b| b.milliseconds.total_cmp(&a.milliseconds));
        Ok(Some(times))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<TimedLaunch>> {
        // A panic while pushing leaves a list that is still a list.
        self.launches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
