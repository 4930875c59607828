//! Device time per kernel: an event recorded on the stream before and after each launch
//! while timing is on, read back when it stops. The pair brackets the kernel alone, so a gap
//! where the device waits for the host (launch overhead, a download) counts in no kernel:
//! the kernels' sum beside the wall time of the same work tells how busy the device was.
//! Events are made before timing starts and reused, so the timed work pays for recording
//! them only (creating one is a driver call of its own). Backends on one device share its
//! stream: kernels another backend queues meanwhile fall between the events too.

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

/// Events made ahead of a timed stretch: two per launch of a BERT-base step's ~1000.
const SPARE_EVENTS: usize = 2048;

/// The launches timed since [`KernelTimer::start`]; off (one atomic load per launch) until
/// then.
#[derive(Default)]
pub(super) struct KernelTimer {
    on: AtomicBool,
    launches: Mutex<Vec<TimedLaunch>>,
    spare: Mutex<Vec<CudaEvent>>,
}

impl KernelTimer {
    /// Times every launch from now on, forgetting any earlier ones.
    pub(super) fn start(&self, ctx: &Arc<CudaContext>) -> Result<()> {
        let earlier = std::mem::take(&mut *self.lock());
        let mut spare = lock(&self.spare);
        spare.extend(earlier.into_iter().flat_map(|l| [l.start, l.end]));
        while spare.len() < SPARE_EVENTS {
            spare.push(new_event(ctx)?);
        }
        drop(spare);
        self.on.store(true, Ordering::Release);
        Ok(())
    }

    /// An event made ahead, or a new one when they are used up.
    fn event(&self, ctx: &Arc<CudaContext>) -> Result<CudaEvent> {
        match lock(&self.spare).pop() {
            Some(event) => Ok(event),
            None => new_event(ctx),
        }
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
        let event = self.event(ctx)?;
        event.record(stream).map_err(driver)?;
        Ok(Some(event))
    }

    /// Closes the bracket `before_launch` opened, once `kernel` is queued.
    pub(super) fn after_launch(
        &self,
        start: Option<CudaEvent>,
        kernel: &str,
        ctx: &Arc<CudaContext>,
        stream: &CudaStream,
    ) -> Result<()> {
        let Some(start) = start else {
            return Ok(());
        };
        let end = self.event(ctx)?;
        end.record(stream).map_err(driver)?;
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
        let mut used = Vec::with_capacity(2 * launches.len());
        for launch in launches {
            let ms = launch.start.elapsed_ms(&launch.end).map_err(driver)?;
            let entry = by_kernel.entry(launch.kernel).or_default();
            entry.0 += 1;
            entry.1 += f64::from(ms);
            used.extend([launch.start, launch.end]);
        }
        lock(&self.spare).extend(used);
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
        lock(&self.launches)
    }
}

fn lock<T>(list: &Mutex<Vec<T>>) -> std::sync::MutexGuard<'_, Vec<T>> {
    // A panic while pushing leaves a list that is still a list.
    list.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An event that can time (cudarc's default would be one that cannot).
fn new_event(ctx: &Arc<CudaContext>) -> Result<CudaEvent> {
    ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
        .map_err(driver)
}
