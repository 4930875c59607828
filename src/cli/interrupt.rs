//! Ctrl-C (SIGINT) and SIGTERM during `spafit train --output`: the first one stops the run
//! after the step in progress and saves its state, so `--resume` loses nothing (a batch
//! scheduler's SIGTERM before its SIGKILL, a user's Ctrl-C); a second one ends the process
//! at once, as the default action would have. `spafit merge` defers the first one the same
//! way, to the end of its writes.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicUsize, Ordering};

/// The signal that asked the run to stop, 0 before one came.
static RECEIVED: AtomicI32 = AtomicI32::new(0);

/// What the handler writes on the first signal (a `'static` byte string, set before the
/// handlers are installed).
static MESSAGE: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static MESSAGE_LEN: AtomicUsize = AtomicUsize::new(0);

/// What `spafit train` says when the first signal comes.
pub const TRAINING_STOPS: &[u8] =
    b"\nspafit: stopping after this step and saving the run to resume (interrupt again to quit \
      at once)\n";

/// What it says once the run's last step is done and only its results are left to write.
pub const FINISHING: &[u8] =
    b"\nspafit: the run is over: finishing its results (interrupt again to quit at once)\n";

const SIGNALS: [libc::c_int; 2] = [libc::SIGINT, libc::SIGTERM];

/// Sets what the handler says on the first signal. Its length is cleared first, so a
/// handler running meanwhile writes nothing rather than a mix.
fn set_message(message: &'static [u8]) {
    MESSAGE_LEN.store(0, Ordering::SeqCst);
    MESSAGE.store(message.as_ptr().cast_mut(), Ordering::SeqCst);
    MESSAGE_LEN.store(message.len(), Ordering::SeqCst);
}

/// Only what is async-signal-safe: an atomic, write(2), signal(2), raise(3).
extern "C" fn on_signal(signal: libc::c_int) {
    if RECEIVED
        .compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst)
        .is_err()
    {
        // SAFETY: restoring the default action and raising the signal again are
        // async-signal-safe, and end the process as the signal would have without us.
        unsafe {
            libc::signal(signal, libc::SIG_DFL);
            libc::raise(signal);
        }
        return;
    }
    let message = MESSAGE.load(Ordering::SeqCst);
    // SAFETY: write(2) on stderr with a static buffer is async-signal-safe; nothing can be
    // done about a failed write here.
    unsafe {
        libc::write(2, message.cast(), MESSAGE_LEN.load(Ordering::SeqCst));
    }
}

/// Signal handlers for the time a run trains: dropped, the default actions come back (a
/// signal after the run's last step ends the process as usual while the results are
/// written).
pub struct StopOnSignal {
    previous: Vec<(libc::c_int, libc::sigaction)>,
}

impl StopOnSignal {
    /// Installs the handlers, which say `message` on the first signal; `None` where the
    /// system refused one (the command then goes on with the default actions). A signal the
    /// process was started ignoring (a job a script put in the background, `nohup`) stays
    /// ignored, as the shell meant.
    pub fn install(message: &'static [u8]) -> Option<Self> {
        set_message(message);
        let mut previous = Vec::new();
        for signal in SIGNALS {
            // SAFETY: a zeroed sigaction is a valid value to fill; the handler only does
            // async-signal-safe work; SA_RESTART keeps interrupted reads and writes going.
            unsafe {
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(signal, std::ptr::null(), &mut old) != 0 {
                    drop(StopOnSignal { previous });
                    return None;
                }
                if old.sa_sigaction == libc::SIG_IGN {
                    continue;
                }
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
                action.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
                    drop(StopOnSignal { previous });
                    return None;
                }
                previous.push((signal, old));
            }
        }
        Some(StopOnSignal { previous })
    }

    /// Says `message` on a first signal from now on (the run's phase changed).
    pub fn say(&self, message: &'static [u8]) {
        set_message(message);
    }
}

impl Drop for StopOnSignal {
    fn drop(&mut self) {
        for (signal, old) in &self.previous {
            // SAFETY: puts back the action that was in place before `install`.
            unsafe {
                libc::sigaction(*signal, old, std::ptr::null_mut());
            }
        }
    }
}

/// The signal received, by name, and the exit status a shell shows for a process it ended
/// (128 + its number).
pub fn received() -> Option<(&'static str, i32)> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        libc::SIGINT => Some(("SIGINT", 128 + libc::SIGINT)),
        libc::SIGTERM => Some(("SIGTERM", 128 + libc::SIGTERM)),
        other => Some(("a signal", 128 + other)),
    }
}

/// Whether a run stopped early for a signal: the command then ends with the signal's status.
static STOPPED_RUN: AtomicBool = AtomicBool::new(false);

/// Records that the run stopped for the signal received.
pub fn stopped_run() {
    STOPPED_RUN.store(true, Ordering::SeqCst);
}

/// The exit status of a command whose run a signal stopped.
pub fn exit_status() -> Option<i32> {
    match STOPPED_RUN.load(Ordering::SeqCst) {
        true => received().map(|(_, status)| status),
        false => None,
    }
}
