//! What the load harnesses share: their knobs and the latency statistics of a run.

/// A numeric knob from the environment (`LOAD_SECS=10 cargo bench ...`), or its default.
pub fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The outcome of one load run.
pub struct LoadResult {
    /// Successful operations per second.
    pub rate: f64,
    /// Latency of each success, sorted.
    pub latencies_ms: Vec<f64>,
    pub failed: usize,
}

impl LoadResult {
    /// Gathers the workers' (latencies, failures) after a run of `elapsed` seconds.
    pub fn gather(parts: Vec<(Vec<f64>, usize)>, elapsed: f64) -> Self {
        let mut latencies_ms = Vec::new();
        let mut failed = 0;
        for (latencies, failures) in parts {
            latencies_ms.extend(latencies);
            failed += failures;
        }
        latencies_ms.sort_by(f64::total_cmp);
        Self {
            rate: latencies_ms.len() as f64 / elapsed,
            latencies_ms,
            failed,
        }
    }

    /// The latency at percentile `p` (nearest rank), in milliseconds.
    pub fn percentile(&self, p: f64) -> f64 {
        if self.latencies_ms.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * (self.latencies_ms.len() - 1) as f64).round() as usize;
        self.latencies_ms[rank.min(self.latencies_ms.len() - 1)]
    }
}
