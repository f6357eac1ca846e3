//! The one place that reads the wall clock. Everything else takes `now`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of the current time as a duration since the Unix epoch.
pub trait Clock: Send + Sync + 'static {
    /// The current time since the Unix epoch.
    fn now(&self) -> Duration;
}

/// The system clock, optionally shifted by a fixed offset (for tests that simulate hosts whose
/// clocks disagree).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock {
    offset_ms: i64,
}

impl SystemClock {
    /// The system clock as it is.
    pub fn new() -> Self {
        Self::default()
    }

    /// The system clock shifted by `offset_ms` milliseconds (negative: behind).
    pub fn with_offset_ms(offset_ms: i64) -> Self {
        SystemClock { offset_ms }
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        // A clock before 1970 is treated as the epoch: the schedule then sits in slot 0 and
        // nothing is lost but resumption.
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        let shift = Duration::from_millis(self.offset_ms.unsigned_abs());
        if self.offset_ms >= 0 {
            t.saturating_add(shift)
        } else {
            t.saturating_sub(shift)
        }
    }
}

#[cfg(test)]
pub(crate) mod manual {
    //! A clock tests move by hand.
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    #[derive(Debug, Clone, Default)]
    pub(crate) struct ManualClock(Arc<AtomicU64>);

    impl ManualClock {
        pub(crate) fn at(secs: u64) -> Self {
            ManualClock(Arc::new(AtomicU64::new(secs * 1000)))
        }
        pub(crate) fn advance(&self, d: Duration) {
            self.0.fetch_add(d.as_millis() as u64, Ordering::SeqCst);
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> Duration {
            Duration::from_millis(self.0.load(Ordering::SeqCst))
        }
    }
}
