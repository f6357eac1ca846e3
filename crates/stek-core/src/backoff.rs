//! Retry delays and jitter, one of each for the whole workspace.
//!
//! [`Backoff`] is exponential backoff: the delays double from a first value up to a cap, and go
//! back to the first value after a success. [`jitter`] scales a delay by a random factor in
//! `[0.8, 1.2)`. A reconnect loop uses both:
//!
//! ```
//! use std::time::Duration;
//! use stek_core::{jitter, Backoff};
//!
//! let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
//! let pause = jitter(backoff.next()); // 80..120 ms; the next one is around 200 ms
//! assert!(pause >= Duration::from_millis(80) && pause < Duration::from_millis(120));
//! // ... once connected again:
//! backoff.reset();
//! ```
//!
//! Pure: no clock, no sleeping, no async runtime. The caller waits.

use core::time::Duration;

/// Exponential backoff: `first`, `2 × first`, `4 × first`, ... up to `max`, then `max` forever.
///
/// The contract:
/// - [`Backoff::next`] returns the delay to wait now and doubles the one after it, capped at
///   `max` (doubling saturates, so it never overflows);
/// - [`Backoff::peek`] returns what `next` would return, without advancing;
/// - [`Backoff::reset`] starts over at `first` (call it after a success);
/// - `max` is never below `first`: [`Backoff::new`] raises a smaller `max` to `first`.
///
/// The delays are exact; pass each one through [`jitter`] before sleeping when many processes
/// may be retrying the same thing. A zero `first` gives zero delays forever.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// Backoff starting at `first` and doubling up to `max` (raised to `first` if smaller).
    pub const fn new(first: Duration, max: Duration) -> Backoff {
        let max = if max.as_nanos() < first.as_nanos() {
            first
        } else {
            max
        };
        Backoff {
            first,
            max,
            current: first,
        }
    }

    /// The same backoff with another cap (raised to `first` if smaller). The pending delay is
    /// lowered to the new cap if it was above it.
    #[must_use]
    pub fn with_max(self, max: Duration) -> Backoff {
        let max = max.max(self.first);
        Backoff {
            first: self.first,
            max,
            current: self.current.min(max),
        }
    }

    /// The delay to wait now. The following call returns twice as much, capped at `max`.
    // Not an `Iterator`: it never ends, and `reset` has no iterator counterpart.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Duration {
        let now = self.current;
        self.current = now.saturating_mul(2).min(self.max);
        now
    }

    /// The delay [`Backoff::next`] would return, without advancing.
    pub fn peek(&self) -> Duration {
        self.current
    }

    /// Starts over: the next delay is `first` again.
    pub fn reset(&mut self) {
        self.current = self.first;
    }

    /// The first delay, the one after a reset.
    pub fn first(&self) -> Duration {
        self.first
    }

    /// The cap of the delays.
    pub fn max(&self) -> Duration {
        self.max
    }
}

/// `d` scaled by a random factor in `[0.8, 1.2)`: uniform in steps of 1/163840, from the
/// operating system's random generator (2 bytes, not for cryptography). If the generator fails,
/// `d` itself. Never panics: the result saturates at [`Duration::MAX`].
///
/// Why one range, ±20%, for every use: jitter is there to keep a fleet out of step. Agents
/// started together (a deploy) would otherwise poll the store at the same instants forever, and
/// agents that lost the same store at the same moment would otherwise all reconnect at the same
/// instants, each retry a thundering herd. Any fresh random factor breaks that lockstep; drawn
/// anew at every wait, the phases keep drifting apart, so a wider range buys little. ±20% keeps
/// the mean delay equal to the nominal one (a "poll every P/4" still polls every P/4 on
/// average), keeps every delay within 20% of what the caller chose, so backoff keeps its meaning
/// (no retry comes back almost at once, as with "full jitter" in `[0, d)`), and bounds by 1.2 ×
/// `d` any deadline derived from a delay. With [`Backoff`], each retry's spread grows with its
/// delay, so the longer an outage lasts, the thinner the reconnections are spread.
pub fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    if crate::key::fill_random(&mut b).is_err() {
        return d;
    }
    let r = u128::from(u16::from_le_bytes(b));
    // d × (4 × 65536 + 2r) / (5 × 65536): from 0.8 (r = 0) up to, not including, 1.2. In whole
    // nanoseconds: at most about 1.8e28 × 4e5, far below u128::MAX.
    let scaled = d.as_nanos() * (4 * 65536 + 2 * r) / (5 * 65536);
    let secs = scaled / 1_000_000_000;
    let nanos = (scaled % 1_000_000_000) as u32;
    match u64::try_from(secs) {
        Ok(secs) => Duration::new(secs, nanos),
        Err(_) => Duration::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_up_to_the_cap() {
        let mut b = Backoff::new(100 * MS, 1000 * MS);
        let delays: Vec<u32> = (0..7).map(|_| b.next().as_millis() as u32).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000, 1000]);
        assert_eq!(b.peek(), 1000 * MS);
    }

    #[test]
    fn peek_does_not_advance() {
        let mut b = Backoff::new(250 * MS, 10_000 * MS);
        assert_eq!(b.peek(), 250 * MS);
        assert_eq!(b.peek(), 250 * MS);
        assert_eq!(b.next(), 250 * MS);
        assert_eq!(b.peek(), 500 * MS);
        assert_eq!(b.next(), 500 * MS);
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::new(100 * MS, 5000 * MS);
        for _ in 0..10 {
            b.next();
        }
        assert_eq!(b.peek(), 5000 * MS);
        b.reset();
        assert_eq!(b.peek(), 100 * MS);
        assert_eq!(b.next(), 100 * MS);
        assert_eq!(b.next(), 200 * MS);
        assert_eq!(b, {
            let mut fresh = Backoff::new(100 * MS, 5000 * MS);
            fresh.next();
            fresh.next();
            fresh
        });
    }

    #[test]
    fn a_max_below_first_is_first() {
        let mut b = Backoff::new(300 * MS, 100 * MS);
        assert_eq!(b.max(), 300 * MS);
        assert_eq!(b.first(), 300 * MS);
        for _ in 0..5 {
            assert_eq!(b.next(), 300 * MS);
        }
        // Same through with_max.
        let b = Backoff::new(300 * MS, 10_000 * MS).with_max(MS);
        assert_eq!(b.max(), 300 * MS);
    }

    #[test]
    fn with_max_lowers_the_pending_delay() {
        let mut b = Backoff::new(100 * MS, 10_000 * MS);
        for _ in 0..4 {
            b.next();
        }
        assert_eq!(b.peek(), 1600 * MS);
        let mut b = b.with_max(1000 * MS);
        assert_eq!(b.next(), 1000 * MS);
        assert_eq!(b.next(), 1000 * MS);
        b.reset();
        assert_eq!(b.next(), 100 * MS);
    }

    #[test]
    fn doubling_saturates() {
        let mut b = Backoff::new(Duration::from_secs(u64::MAX / 2 + 1), Duration::MAX);
        b.next();
        assert_eq!(b.next(), Duration::MAX);
        assert_eq!(b.next(), Duration::MAX);
        let mut zero = Backoff::new(Duration::ZERO, Duration::from_secs(1));
        assert_eq!(zero.next(), Duration::ZERO);
        assert_eq!(zero.next(), Duration::ZERO);
    }

    #[test]
    fn const_construction() {
        const B: Backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(10));
        assert_eq!(B.peek(), 250 * MS);
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let d = Duration::from_secs(10);
        let draws: Vec<Duration> = (0..2000).map(|_| jitter(d)).collect();
        for j in &draws {
            assert!(
                *j >= Duration::from_secs(8) && *j < Duration::from_secs(12),
                "{j:?}"
            );
        }
        assert!(draws.iter().any(|j| *j != draws[0]), "all draws equal");
        // Both halves of the range are used.
        assert!(draws.iter().any(|j| *j < d));
        assert!(draws.iter().any(|j| *j > d));
    }

    #[test]
    fn jitter_at_the_edges() {
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
        for _ in 0..100 {
            assert!(jitter(Duration::from_nanos(5)) < Duration::from_nanos(6));
            // Saturates instead of panicking.
            assert!(jitter(Duration::MAX) >= Duration::MAX.mul_f64(0.79));
        }
    }
}
