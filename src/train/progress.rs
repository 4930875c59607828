use std::cell::RefCell;
use std::io::{IsTerminal, Write};

/// A one-line progress display on stderr: redrawn in place on a terminal, a plain line every
/// `every` steps otherwise (logs stay readable). It also keeps the run's notices.
#[derive(Debug)]
pub struct Progress {
    enabled: bool,
    notices_on_stderr: bool,
    terminal: bool,
    every: usize,
    notices: RefCell<Vec<String>>,
}

impl Progress {
    /// Shows progress when `enabled`; notices go to stderr too when `enabled` or
    /// `notices_on_stderr`.
    pub fn new(enabled: bool, notices_on_stderr: bool, every: usize) -> Self {
        Progress {
            enabled,
            notices_on_stderr,
            terminal: std::io::stderr().is_terminal(),
            every: every.max(1),
            notices: RefCell::new(Vec::new()),
        }
    }

    /// The notices given so far.
    pub fn into_notices(self) -> Vec<String> {
        self.notices.into_inner()
    }

    /// Reports step `step` of `total`.
    pub fn step(&self, step: usize, total: usize, epoch: usize, loss: f64, samples_per_s: f64) {
        if !self.enabled || (!self.terminal && !step.is_multiple_of(self.every) && step != total) {
            return;
        }
        let width = 30;
        let filled = (step * width)
            .checked_div(total)
            .unwrap_or(width)
            .min(width);
        let bar: String = "#".repeat(filled) + &"-".repeat(width - filled);
        let line = format!(
            "epoch {epoch} [{bar}] {step}/{total} loss {loss:.4} {samples_per_s:.1} samples/s"
        );
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let _ = write!(err, "\r{line}\x1b[K");
            if step == total {
                let _ = writeln!(err);
            }
        } else {
            let _ = writeln!(err, "{line}");
        }
    }

    /// A line on stderr wherever notices are shown, not kept as a notice: what the run
    /// does, said once at its start.
    pub fn headline(&self, text: &str) {
        if self.enabled || self.notices_on_stderr {
            self.print_line(text);
        }
    }

    /// Prints a message on its own line.
    pub fn message(&self, text: &str) {
        if self.enabled {
            self.print_line(text);
        }
    }

    /// Something the user must know: kept for the run's report, and shown on stderr even
    /// without a progress display when notices go there.
    pub fn notice(&self, text: &str) {
        self.notices.borrow_mut().push(text.to_string());
        if self.enabled || self.notices_on_stderr {
            self.print_line(text);
        }
    }

    /// `text` on stderr on a line of its own, clearing a progress bar drawn in place.
    fn print_line(&self, text: &str) {
        let mut err = std::io::stderr().lock();
        if self.enabled && self.terminal {
            let _ = write!(err, "\r\x1b[K");
        }
        let _ = writeln!(err, "{text}");
    }
}
