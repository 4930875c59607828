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
            warmup: (ratio * total as f64).ceil() as usize,
            total,
        }
    }

    /// Learning rate of optimizer step `k` (0-based).
    pub fn lr(&self, k: usize) -> f64 {
        if k < self.warmup {
            self.peak * k as f64 / self.warmup.max(1) as f64
        } else {
            let left = self.total.saturating_sub(k) as f64;
            self.peak * (left / self.total.saturating_sub(self.warmup).max(1) as f64).max(0.0)
        }
    }
}
