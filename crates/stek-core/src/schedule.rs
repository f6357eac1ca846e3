//! The key schedule of docs/DESIGN.md §1.
//!
//! Every host computes the same schedule from its clock alone: the slot of time `t` is
//! `floor(t / P)`, a host in slot `e` encrypts with `K_e` and decrypts with `K_j` for
//! `e - R <= j <= e + 1` where `R = ceil(L / P)`. Nothing here reads a clock: every function
//! takes `now` (time since the Unix epoch) so tests can run days of rotation in microseconds.

use core::fmt;
use core::time::Duration;

/// The longest ticket lifetime TLS 1.3 allows (RFC 8446 §4.6.1: 604800 seconds).
pub const MAX_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// The most keys a window may hold unless the operator explicitly allows more
/// ([`Schedule::check_window`]). Every key of the window is held in locked memory and written to
/// every sink (an nginx file, a tmpfs page each) and rewritten at each rotation, so the cost grows
/// linearly with `ceil(L / P)`: 1 s periods with a 7 d lifetime would be 604,802 keys. 1,000 keys
/// allows 1 s periods for 16 minutes or 1 h periods for 41 days (more than the 7 d cap on `L`).
pub const MAX_WINDOW_KEYS: usize = 1000;

/// One period of the schedule, numbered from the Unix epoch: slot `e` starts at `e * P`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Slot(pub u64);

impl Slot {
    /// The slot `n` periods later (saturating: slots near `u64::MAX` are never reached by a
    /// real clock, but a record from the store may name one).
    pub fn plus(self, n: u64) -> Slot {
        Slot(self.0.saturating_add(n))
    }

    /// The slot `n` periods earlier, saturating at slot 0.
    pub fn minus(self, n: u64) -> Slot {
        Slot(self.0.saturating_sub(n))
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What a key in a host's window is used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// The key of the host's current slot: it encrypts new tickets.
    Encrypt,
    /// The key of the next slot: decrypt-only, so that a host whose clock is ahead (and already
    /// encrypts with it) is understood.
    Next,
    /// A key of a past slot, `age` periods old (1 = the previous slot): decrypt-only, so that
    /// tickets younger than the lifetime still resume.
    Past {
        /// How many periods before the current slot.
        age: u64,
    },
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Encrypt => f.write_str("encrypt"),
            Role::Next => f.write_str("next"),
            Role::Past { age } => write!(f, "past-{age}"),
        }
    }
}

/// Why a schedule could not be built.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ScheduleError {
    /// The period is zero or not a whole number of seconds.
    BadPeriod(Duration),
    /// The lifetime is zero or not a whole number of seconds.
    BadLifetime(Duration),
    /// The lifetime exceeds the 7 days TLS 1.3 allows a ticket (RFC 8446 §4.6.1).
    LifetimeTooLong(Duration),
    /// The period exceeds 7 days: a key encrypting for longer defeats the point of rotation.
    PeriodTooLong(Duration),
    /// The lead is zero or longer than the past window.
    BadLead(u64),
    /// The window holds more keys than [`MAX_WINDOW_KEYS`] (from [`Schedule::check_window`]).
    WindowTooLarge {
        /// The keys of the window: past + current + next.
        keys: usize,
        /// The bound it exceeds.
        max: usize,
    },
}

impl fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScheduleError::BadPeriod(d) => write!(
                f,
                "period must be a whole number of seconds, at least 1s (got {d:?})"
            ),
            ScheduleError::BadLifetime(d) => write!(
                f,
                "lifetime must be a whole number of seconds, at least 1s (got {d:?})"
            ),
            ScheduleError::LifetimeTooLong(d) => write!(
                f,
                "lifetime {}s exceeds 7 days (604800s), the longest ticket lifetime TLS 1.3 allows",
                d.as_secs()
            ),
            ScheduleError::PeriodTooLong(d) => write!(
                f,
                "period {}s exceeds 7 days; rotate at least weekly",
                d.as_secs()
            ),
            ScheduleError::BadLead(a) => {
                write!(
                    f,
                    "lead must be between 1 and the number of past keys (got {a})"
                )
            }
            ScheduleError::WindowTooLarge { keys, max } => write!(
                f,
                "a window of {keys} keys ({} past + current + next) exceeds the bound of {max} keys",
                keys.saturating_sub(2)
            ),
        }
    }
}

impl std::error::Error for ScheduleError {}

/// The parameters of one group's schedule: period `P`, lifetime `L`, lead `A` (in periods).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Schedule {
    period: u64,
    lifetime: u64,
    lead: u64,
}

impl Default for Schedule {
    /// `P` = 1 h, `L` = 18 h, `A` = 1: 18 past keys + current + next = 20 keys.
    fn default() -> Self {
        Schedule {
            period: 3600,
            lifetime: 18 * 3600,
            lead: 1,
        }
    }
}

fn whole_secs(d: Duration) -> Option<u64> {
    (d.subsec_nanos() == 0 && d.as_secs() > 0).then_some(d.as_secs())
}

impl Schedule {
    /// A schedule with period `P`, lifetime `L` and lead 1. `L < P` is allowed (the past window
    /// is then one key).
    pub fn new(period: Duration, lifetime: Duration) -> Result<Self, ScheduleError> {
        let p = whole_secs(period).ok_or(ScheduleError::BadPeriod(period))?;
        let l = whole_secs(lifetime).ok_or(ScheduleError::BadLifetime(lifetime))?;
        if lifetime > MAX_LIFETIME {
            return Err(ScheduleError::LifetimeTooLong(lifetime));
        }
        if period > MAX_LIFETIME {
            return Err(ScheduleError::PeriodTooLong(period));
        }
        Ok(Schedule {
            period: p,
            lifetime: l,
            lead: 1,
        })
    }

    /// The same schedule with keys made `lead` periods ahead of their slot.
    pub fn with_lead(mut self, lead: u64) -> Result<Self, ScheduleError> {
        if lead == 0 || lead > self.past_keys() {
            return Err(ScheduleError::BadLead(lead));
        }
        self.lead = lead;
        Ok(self)
    }

    /// The period `P`.
    pub fn period(&self) -> Duration {
        Duration::from_secs(self.period)
    }

    /// The lifetime `L`.
    pub fn lifetime(&self) -> Duration {
        Duration::from_secs(self.lifetime)
    }

    /// The lead `A`, in periods.
    pub fn lead(&self) -> u64 {
        self.lead
    }

    /// `R = ceil(L / P)`: how many past keys a host keeps.
    pub fn past_keys(&self) -> u64 {
        self.lifetime.div_ceil(self.period)
    }

    /// How many keys a window holds: `R` past, the current one and the next one.
    pub fn window_len(&self) -> usize {
        // R <= 604800, so this always fits.
        usize::try_from(self.past_keys() + 2).unwrap_or(usize::MAX)
    }

    /// Whether the window stays within [`MAX_WINDOW_KEYS`]. Separate from [`Schedule::new`]:
    /// any schedule is valid, but a window this large is almost always a mistake (a period in
    /// seconds with a lifetime in days), which callers refuse unless the operator insists.
    pub fn check_window(&self) -> Result<(), ScheduleError> {
        let keys = self.window_len();
        if keys > MAX_WINDOW_KEYS {
            return Err(ScheduleError::WindowTooLarge {
                keys,
                max: MAX_WINDOW_KEYS,
            });
        }
        Ok(())
    }

    /// The ticket lifetime hint to announce, in seconds: `L` (at most 7 days by construction).
    pub fn lifetime_hint(&self) -> u32 {
        // L <= 604800 by construction.
        u32::try_from(self.lifetime).unwrap_or(u32::MAX)
    }

    /// The slot of time `now`: `floor(now / P)`.
    pub fn slot_at(&self, now: Duration) -> Slot {
        Slot(now.as_secs() / self.period)
    }

    /// When `slot` starts (and its key starts encrypting).
    pub fn start(&self, slot: Slot) -> Duration {
        Duration::from_secs(slot.0.saturating_mul(self.period))
    }

    /// When the slot after the one of `now` starts: the next moment a window changes.
    pub fn next_rotation(&self, now: Duration) -> Duration {
        self.start(self.slot_at(now).plus(1))
    }

    /// The window of a host in slot `current`: slots `current - R ..= current + 1`.
    pub fn window(&self, current: Slot) -> Window {
        Window {
            first: current.minus(self.past_keys()),
            current,
            last: current.plus(1),
        }
    }

    /// The window of a host whose clock reads `now`.
    pub fn window_at(&self, now: Duration) -> Window {
        self.window(self.slot_at(now))
    }

    /// The role of slot `key`'s key for a host in slot `current`, if it holds that key at all.
    pub fn role(&self, current: Slot, key: Slot) -> Option<Role> {
        if key == current {
            Some(Role::Encrypt)
        } else if key == current.plus(1) && current.0 < u64::MAX {
            Some(Role::Next)
        } else if key < current && current.0 - key.0 <= self.past_keys() {
            Some(Role::Past {
                age: current.0 - key.0,
            })
        } else {
            None
        }
    }

    /// The last slot whose key a generator must have made by `now`: keys exist `A` periods
    /// ahead, so at `now` every slot up to `slot_at(now) + A` has its key.
    pub fn newest_needed(&self, now: Duration) -> Slot {
        self.slot_at(now).plus(self.lead)
    }

    /// The deadline for making slot `key`'s key: `start(key) - A*P`.
    pub fn create_by(&self, key: Slot) -> Duration {
        self.start(key.minus(self.lead))
    }

    /// The moment slot `key`'s key leaves every window (`e - R > key`) and must be erased
    /// everywhere: the start of slot `key + R + 1`.
    pub fn erase_at(&self, key: Slot) -> Duration {
        self.start(key.plus(self.past_keys() + 1))
    }

    /// The longest a session is exposed to its ticket key (from its handshake until the key is
    /// gone everywhere), without clock skew: `(R + 1) * P`, at most `L + 2P`.
    pub fn exposure_bound(&self) -> Duration {
        Duration::from_secs((self.past_keys() + 1) * self.period)
    }

    /// The longest a key exists, from its making until its erasure: `(A + R + 1) * P`.
    pub fn key_existence_bound(&self) -> Duration {
        Duration::from_secs((self.lead + self.past_keys() + 1) * self.period)
    }
}

/// The slots a host holds keys for: `first ..= last`, with `current` encrypting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// The oldest slot held (`current - R`, or 0 near the epoch).
    pub first: Slot,
    /// The slot whose key encrypts.
    pub current: Slot,
    /// The newest slot held (`current + 1`).
    pub last: Slot,
}

impl Window {
    /// Whether `slot` lies in the window.
    pub fn contains(&self, slot: Slot) -> bool {
        self.first <= slot && slot <= self.last
    }

    /// The slots of the window, oldest first.
    pub fn slots(&self) -> impl DoubleEndedIterator<Item = Slot> + Clone {
        (self.first.0..=self.last.0).map(Slot)
    }

    /// The slots in nginx order: the encrypting one, then the next, then past ones newest first.
    pub fn encrypt_first(&self) -> impl Iterator<Item = Slot> + Clone {
        let current = self.current;
        let past = (self.first.0..current.0).rev().map(Slot);
        core::iter::once(current)
            .chain((self.last > current).then_some(self.last))
            .chain(past)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn defaults_match_the_design() {
        let s = Schedule::default();
        assert_eq!((s.period(), s.lifetime()), (secs(3600), secs(18 * 3600)));
        let t = Schedule::new(secs(4), secs(12)).unwrap();
        assert_eq!((t.period(), t.lifetime()), (secs(4), secs(12)));
        // The next boundary and a key's deadline, at and inside a slot.
        assert_eq!(t.next_rotation(secs(400)), secs(404));
        assert_eq!(t.next_rotation(secs(403)), secs(404));
        assert_eq!(t.create_by(Slot(101)), secs(400), "one period ahead");
        // Ages of past keys, up to R and no further.
        assert_eq!(t.role(Slot(100), Slot(98)), Some(Role::Past { age: 2 }));
        assert_eq!(t.role(Slot(100), Slot(97)), Some(Role::Past { age: 3 }));
        assert_eq!(t.role(Slot(100), Slot(96)), None);
        // Slots and roles print as logs and key files name them.
        assert_eq!(format!("{}", Slot(499_068)), "499068");
        let roles = [Role::Encrypt, Role::Next, Role::Past { age: 3 }];
        assert_eq!(roles.map(|r| r.to_string()), ["encrypt", "next", "past-3"]);
        assert_eq!(s.past_keys(), 18);
        assert_eq!(s.window_len(), 20);
        assert_eq!(s.lifetime_hint(), 64800);
        assert_eq!(s.exposure_bound(), secs(19 * 3600));
        assert_eq!(s.key_existence_bound(), secs(20 * 3600));
    }

    #[test]
    fn rejects_nonsense() {
        assert_eq!(
            Schedule::new(secs(0), secs(10)),
            Err(ScheduleError::BadPeriod(secs(0)))
        );
        assert!(matches!(
            Schedule::new(Duration::from_millis(1500), secs(10)),
            Err(ScheduleError::BadPeriod(_))
        ));
        assert!(matches!(
            Schedule::new(secs(10), secs(0)),
            Err(ScheduleError::BadLifetime(_))
        ));
        assert!(matches!(
            Schedule::new(secs(3600), MAX_LIFETIME + secs(1)),
            Err(ScheduleError::LifetimeTooLong(_))
        ));
        assert!(Schedule::new(secs(3600), MAX_LIFETIME).is_ok());
        assert!(matches!(
            Schedule::new(MAX_LIFETIME + secs(1), secs(60)),
            Err(ScheduleError::PeriodTooLong(_))
        ));
        let s = Schedule::new(secs(4), secs(12)).unwrap();
        assert!(s.with_lead(0).is_err());
        assert!(s.with_lead(4).is_err());
        assert_eq!(s.with_lead(3).unwrap().lead(), 3);
    }

    #[test]
    fn window_bound() {
        let s = |p: u64, l: u64| Schedule::new(secs(p), secs(l)).unwrap();
        // 998 past + current + next = 1000 keys: at the bound.
        assert_eq!(s(1, 998).window_len(), MAX_WINDOW_KEYS);
        assert_eq!(s(1, 998).check_window(), Ok(()));
        assert_eq!(
            s(1, 999).check_window(),
            Err(ScheduleError::WindowTooLarge {
                keys: 1001,
                max: MAX_WINDOW_KEYS
            })
        );
        let big = s(1, 7 * 24 * 3600).check_window().unwrap_err();
        assert_eq!(
            big.to_string(),
            "a window of 604802 keys (604800 past + current + next) exceeds the bound of 1000 keys"
        );
        // 1 h periods fit any lifetime TLS 1.3 allows; so does the default.
        assert_eq!(s(3600, 7 * 24 * 3600).check_window(), Ok(()));
        assert_eq!(Schedule::default().check_window(), Ok(()));
    }

    #[test]
    fn lifetime_shorter_than_period_keeps_one_past_key() {
        let s = Schedule::new(secs(60), secs(10)).unwrap();
        assert_eq!(s.past_keys(), 1);
        assert_eq!(s.window_len(), 3);
    }

    #[test]
    fn short_period_window_in_nginx_order() {
        // The example: P = 4 s, L = 12 s gives 5 lines.
        let s = Schedule::new(secs(4), secs(12)).unwrap();
        let w = s.window_at(secs(401));
        assert_eq!(w.current, Slot(100));
        let order: Vec<u64> = w.encrypt_first().map(|s| s.0).collect();
        assert_eq!(order, vec![100, 101, 99, 98, 97]);
        let oldest_first: Vec<u64> = w.slots().map(|s| s.0).collect();
        assert_eq!(oldest_first, vec![97, 98, 99, 100, 101]);
    }

    #[test]
    fn window_near_the_epoch_is_clipped() {
        let s = Schedule::default();
        let w = s.window_at(secs(5));
        assert_eq!(w.first, Slot(0));
        assert_eq!(w.encrypt_first().count(), 2);
    }

    /// Runs three simulated days of 5-minute slots with one host ahead and one behind by up to
    /// 0.4 P, checking every 7 s that a ticket minted by any host is understood by every
    /// other host and refused once older than L + 2P.
    #[test]
    fn days_of_slots_with_clock_offsets() {
        let s = Schedule::new(secs(300), secs(3600)).unwrap();
        let offsets: [i64; 3] = [-120, 0, 120]; // ±0.4 P
        let start = 1_800_000_000u64;
        for t in (start..start + 3 * 86_400).step_by(7) {
            for &minter in &offsets {
                let mint_clock = secs(t.checked_add_signed(minter).unwrap());
                let key = s.slot_at(mint_clock);
                for &reader in &offsets {
                    // Read back right away, a period later, and as late as skew allows: a
                    // ticket resumes while the reader's clock says it is younger than L.
                    for age in [0, 1, 300, 3599 - 240] {
                        let read_clock = secs((t + age).checked_add_signed(reader).unwrap());
                        assert!(
                            s.role(s.slot_at(read_clock), key).is_some(),
                            "ticket minted at {t}{minter:+} by slot {key} refused at age {age} by {reader:+}"
                        );
                    }
                    // Past L + 2P plus any skew, it must be gone.
                    let late = secs((t + 3600 + 600 + 300).checked_add_signed(reader).unwrap());
                    assert!(s.role(s.slot_at(late), key).is_none());
                }
            }
        }
    }

    proptest! {
        #[test]
        fn window_invariants(p in 1u64..=7200, l in 1u64..=604_800, t in 0u64..4_000_000_000) {
            let s = Schedule::new(secs(p), secs(l)).unwrap();
            let now = secs(t);
            let w = s.window_at(now);
            let e = s.slot_at(now);
            // t lies in its slot.
            prop_assert!(s.start(e) <= now && now < s.start(e.plus(1)));
            prop_assert_eq!(w.current, e);
            // Exactly R + 2 keys (clipped near the epoch), roles agree with the window.
            let n = w.slots().count() as u64;
            prop_assert_eq!(n, (s.past_keys() + 2).min(e.0 + 2));
            for j in w.slots() {
                prop_assert!(s.role(e, j).is_some());
            }
            prop_assert!(s.role(e, w.last.plus(1)).is_none());
            if w.first.0 > 0 {
                prop_assert!(s.role(e, w.first.minus(1)).is_none());
            }
            // A ticket encrypted now decrypts for all of L, and never after erase_at.
            prop_assert!(s.role(s.slot_at(now + secs(l.saturating_sub(1))), e).is_some());
            prop_assert!(s.erase_at(e) > now + secs(l).saturating_sub(secs(1)));
            prop_assert!(s.role(s.slot_at(s.erase_at(e)), e).is_none());
            prop_assert!(s.erase_at(e) - s.start(e) < secs(l + 2 * p));
            prop_assert!(s.erase_at(e) - now <= s.exposure_bound());
            prop_assert!(s.exposure_bound() <= secs(l + 2 * p));
            // Keys exist in time: the next slot's key is due by the start of this one.
            prop_assert!(s.create_by(e.plus(1)) <= s.start(e));
            prop_assert!(s.newest_needed(now) >= w.last);
            // nginx order: a permutation of the window, encrypting key first.
            let order: Vec<Slot> = w.encrypt_first().collect();
            prop_assert_eq!(order[0], e);
            let mut sorted = order.clone();
            sorted.sort();
            prop_assert_eq!(sorted, w.slots().collect::<Vec<_>>());
        }
    }
}
