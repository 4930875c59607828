//! Learning-rate schedules as transformers defines them: linear warmup from 0 to the peak,
//! then linear decay to 0 (`get_linear_schedule_with_warmup`, the default), half a cosine to
//! 0 (`get_cosine_schedule_with_warmup`), or the peak held (`get_constant_schedule_with_warmup`).

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// What the learning rate does after warmup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ScheduleKind {
    /// Falls linearly to 0 one step past the last (as transformers' schedule: the last step
    /// keeps peak / decay steps).
    #[default]
    Linear,
    /// Falls along half a cosine to 0 one step past the last.
    Cosine,
    /// Stays at the peak.
    Constant,
}

impl ScheduleKind {
    /// Every kind, in the order the CLI lists them.
    pub const ALL: [ScheduleKind; 3] = [Self::Linear, Self::Cosine, Self::Constant];

    /// The name `--lr-schedule` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Linear => "linear",
            Self::Cosine => "cosine",
            Self::Constant => "constant",
        }
    }
}

impl fmt::Display for ScheduleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ScheduleKind {
    type Err = Error;

    /// A kind by name, in any case.
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                Error::invalid(
                    "--lr-schedule",
                    format!("`{s}`: expected linear, cosine or constant"),
                )
            })
    }
}

/// A learning-rate schedule over a run: optimizer step `k` (0-based) uses
/// `peak · k / warmup` during warmup, then `peak · f(p)` with `p = (k − warmup) /
/// (total − warmup)`: `1 − p` (linear), `(1 + cos πp) / 2` (cosine), `1` (constant).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LrSchedule {
    /// After warmup.
    pub kind: ScheduleKind,
    /// Peak learning rate.
    pub peak: f64,
    /// Warmup steps.
    pub warmup: usize,
    /// Total optimizer steps.
    pub total: usize,
}

impl LrSchedule {
    /// Learning rate of optimizer step `k` (0-based).
    pub fn lr(&self, k: usize) -> f64 {
        if k < self.warmup {
            return self.peak * k as f64 / self.warmup.max(1) as f64;
        }
        let span = self.total.saturating_sub(self.warmup).max(1) as f64;
        match self.kind {
            ScheduleKind::Linear => {
                let left = self.total.saturating_sub(k) as f64;
                self.peak * (left / span).max(0.0)
            }
            ScheduleKind::Cosine => {
                let progress = (k - self.warmup) as f64 / span;
                self.peak * (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
            }
            ScheduleKind::Constant => self.peak,
        }
    }
}

/// Linear warmup then linear decay to zero, as transformers'
/// `get_linear_schedule_with_warmup`: optimizer step `k` (0-based) uses
/// `lr · k / warmup` during warmup, then `lr · (total − k) / (total − warmup)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinearSchedule {
    /// Peak learning rate.
    pub peak: f64,
    /// Warmup steps.
    pub warmup: usize,
    /// Total optimizer steps.
    pub total: usize,
}

impl LinearSchedule {
    /// A schedule warming up over `ratio · total` steps (rounded up, as transformers does with
    /// `math.ceil`).
    pub fn with_warmup_ratio(peak: f64, ratio: f64, total: usize) -> Self {
        LinearSchedule {
            peak,
            warmup: warmup_steps(ratio, total),
            total,
        }
    }

    /// Learning rate of optimizer step `k` (0-based).
    pub fn lr(&self, k: usize) -> f64 {
        LrSchedule {
            kind: ScheduleKind::Linear,
            peak: self.peak,
            warmup: self.warmup,
            total: self.total,
        }
        .lr(k)
    }
}

/// The warmup of `ratio · total` steps, rounded up as transformers does (`math.ceil`).
pub fn warmup_steps(ratio: f64, total: usize) -> usize {
    (ratio * total as f64).ceil() as usize
}
