//! The one place that reads the wall clock. Everything else takes `now`.
//!
//! The schedule runs on the wall clock (every host must agree on the slot), but timers run on
//! the monotonic clock. [`ClockWatch`] compares the two, so a wall clock that is stepped (by
//! hand, by NTP after a long suspend, by a VM restored from a snapshot) is noticed in either
//! direction, however far it moved.

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

/// A step of the wall clock: how far it moved beyond (or short of) the monotonic clock between
/// two readings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Jump {
    /// Whether the wall clock moved ahead of the monotonic clock (true) or behind it.
    pub forward: bool,
    /// How far.
    pub size: Duration,
}

impl Jump {
    /// The jump in seconds, negative when the clock went back.
    pub fn secs_f64(&self) -> f64 {
        if self.forward {
            self.size.as_secs_f64()
        } else {
            -self.size.as_secs_f64()
        }
    }
}

/// Notices steps of the wall clock by comparing its progress with the monotonic clock's.
#[derive(Debug, Clone)]
pub struct ClockWatch {
    threshold: Duration,
    last: Option<(Duration, tokio::time::Instant)>,
}

impl ClockWatch {
    /// A watch that reports steps larger than `threshold`.
    pub fn new(threshold: Duration) -> ClockWatch {
        ClockWatch {
            threshold,
            last: None,
        }
    }

    /// Takes a reading of both clocks (`wall` from a [`Clock`], `mono` from
    /// `tokio::time::Instant::now()`); returns the step since the previous reading if the wall
    /// clock moved more than the threshold away from the monotonic clock.
    pub fn observe(&mut self, wall: Duration, mono: tokio::time::Instant) -> Option<Jump> {
        let previous = self.last.replace((wall, mono));
        let (wall0, mono0) = previous?;
        let elapsed = mono.saturating_duration_since(mono0);
        let (forward, size) = if wall >= wall0 {
            let moved = wall - wall0;
            if moved >= elapsed {
                (true, moved - elapsed)
            } else {
                (false, elapsed - moved)
            }
        } else {
            (false, elapsed + (wall0 - wall))
        };
        (size > self.threshold).then_some(Jump { forward, size })
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

    /// A wall clock that follows tokio's clock (so `tokio::time::pause()` makes whole days pass
    /// in milliseconds) and can be stepped by hand, as an operator or NTP would.
    #[derive(Debug, Clone)]
    pub(crate) struct TokioClock {
        base: Duration,
        start: tokio::time::Instant,
        /// Steps so far, in milliseconds (negative: back).
        shift: Arc<std::sync::atomic::AtomicI64>,
    }

    impl TokioClock {
        /// A clock reading `secs` now. Call within a tokio runtime.
        pub(crate) fn at(secs: u64) -> Self {
            TokioClock {
                base: Duration::from_secs(secs),
                start: tokio::time::Instant::now(),
                shift: Arc::default(),
            }
        }

        /// Steps the wall clock by `ms` milliseconds (negative: back); tokio's clock is unmoved.
        pub(crate) fn step_ms(&self, ms: i64) {
            self.shift.fetch_add(ms, Ordering::SeqCst);
        }
    }

    impl Clock for TokioClock {
        fn now(&self) -> Duration {
            let t = self.base + self.start.elapsed();
            let shift = self.shift.load(Ordering::SeqCst);
            let by = Duration::from_millis(shift.unsigned_abs());
            if shift >= 0 {
                t + by
            } else {
                t.saturating_sub(by)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    #[test]
    fn clock_watch_sees_steps_both_ways() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut w = ClockWatch::new(s(15));
        assert_eq!(
            w.observe(s(1000), t0),
            None,
            "the first reading has nothing to compare"
        );
        // Both clocks moved 10 s: no step.
        assert_eq!(w.observe(s(1010), t0 + s(10)), None);
        // 1 s of monotonic time, an hour of wall time.
        let j = w.observe(s(1010 + 3601), t0 + s(11)).unwrap();
        assert_eq!((j.forward, j.size), (true, s(3600)));
        assert_eq!(j.secs_f64(), 3600.0);
        // And back by an hour.
        let j = w.observe(s(1012), t0 + s(12)).unwrap();
        assert_eq!((j.forward, j.size), (false, s(3600)));
        assert_eq!(j.secs_f64(), -3600.0);
        // A wall clock that stood still for 20 s while 20 s passed went back by 20 s.
        let j = w.observe(s(1012), t0 + s(32)).unwrap();
        assert_eq!((j.forward, j.size), (false, s(20)));
        // Drift below the threshold is not a step.
        assert_eq!(w.observe(s(1012 + 70), t0 + s(32 + 60)), None);
    }
}
