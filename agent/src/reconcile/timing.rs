//! The reconciler's clock: its timing knobs, the steady refresh's jitter
//! and the failures' backoff, and the RFC 3339 timestamps of its status.

use std::time::{Duration, SystemTime};

/// Timing knobs (shortened in tests).
#[derive(Debug, Clone)]
pub struct Timing {
    pub refresh: Duration,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// The retry delay while a remote answers 401 to the private document:
    /// it does not know this cluster yet (its operator has not linked us, or
    /// its agent has not fetched our key yet). Not backed off, so the
    /// remote's own link completes the join within this delay.
    pub join_retry: Duration,
    /// How long a token for the private document lives.
    pub token_ttl_secs: i64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            refresh: Duration::from_secs(30),
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(60),
            join_retry: Duration::from_secs(2),
            token_ttl_secs: 60,
        }
    }
}

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `d` ± `frac`.
pub(super) fn jitter(d: Duration, frac: f64) -> Duration {
    let f = 1.0 + frac * (2.0 * rand::random::<f64>() - 1.0);
    d.mul_f64(f.max(0.0))
}

/// Exponential backoff with full jitter, capped.
pub fn backoff(base: Duration, cap: Duration, failures: u32) -> Duration {
    backoff_at(base, cap, failures, rand::random::<f64>())
}

/// [`backoff`] with its jitter drawn as `r` (0 to 1): half to all of
/// `base` doubled per failure after the first, capped.
pub fn backoff_at(base: Duration, cap: Duration, failures: u32, r: f64) -> Duration {
    let exp = base.saturating_mul(1u32 << failures.min(20).saturating_sub(1)).min(cap);
    exp.mul_f64(0.5 + 0.5 * r.clamp(0.0, 1.0))
}
