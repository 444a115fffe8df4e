//! Limits that keep a guest from making the host do unbounded work (I4): a
//! fault rate limit and a cap on pages lent per domain. Retries need no
//! bound here: Xen resends a request whose pages are not mapped after a
//! RETRY at most [`XEN_IOREQ_MAX_RETRIES`] times, then completes it as
//! unbacked itself.

use std::time::{Duration, Instant};

/// Xen's bound on the resends of one request answered RETRY while some
/// page it touches is not mapped (`XEN_IOREQ_MAX_RETRIES` in the contract).
pub const XEN_IOREQ_MAX_RETRIES: u32 = 8;

/// Token bucket: `rate` faults per second, bursts of up to `burst`.
#[derive(Clone, Debug)]
pub struct RateLimiter {
    rate: u64,
    burst: u64,
    tokens_milli: u64,
    last: Option<Instant>,
}

impl RateLimiter {
    /// `rate` per second (> 0), `burst` (> 0).
    pub fn new(rate: u64, burst: u64) -> Self {
        let burst = burst.max(1);
        RateLimiter {
            rate: rate.max(1),
            burst,
            tokens_milli: burst * 1000,
            last: None,
        }
    }

    /// Take one token at time `now`; false if the rate is exceeded.
    pub fn allow(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens_milli >= 1000 {
            self.tokens_milli -= 1000;
            true
        } else {
            false
        }
    }
}

impl RateLimiter {
    /// Add the tokens of the whole milliseconds since the last refill. The
    /// remainder of a millisecond is kept for the next call, so calls more
    /// frequent than one per millisecond still see the bucket refill.
    fn refill(&mut self, now: Instant) {
        let Some(last) = self.last else {
            self.last = Some(now);
            return;
        };
        let dt = now.saturating_duration_since(last);
        let ms = u64::try_from(dt.as_millis()).unwrap_or(u64::MAX);
        let add = ms.saturating_mul(self.rate);
        self.tokens_milli = self.tokens_milli.saturating_add(add).min(self.burst * 1000);
        let step = Duration::from_millis(ms.min(u64::from(u32::MAX)));
        self.last = Some(last.checked_add(step).unwrap_or(now));
    }

    /// How long after `now` a token will be available (zero if one is).
    pub fn wait(&self, now: Instant) -> Duration {
        let mut probe = self.clone();
        probe.refill(now);
        if probe.tokens_milli >= 1000 {
            return Duration::ZERO;
        }
        let need = 1000 - probe.tokens_milli;
        let ms = need.div_ceil(self.rate);
        let elapsed = probe
            .last
            .map_or(Duration::ZERO, |l| now.saturating_duration_since(l));
        Duration::from_millis(ms).saturating_sub(elapsed)
    }
}

/// Bounds how often a message the guest can trigger at will is logged, so
/// that a guest cannot fill dom0's log or disk with it (a BAR moved in a
/// loop logs a line per move). As Xen's `printk_ratelimit()`: at most
/// [`LogLimit::BURST`] messages per [`LogLimit::WINDOW`]; the first one
/// logged after some were left out says how many.
#[derive(Clone, Debug, Default)]
pub struct LogLimit {
    start: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl LogLimit {
    /// Messages logged per window.
    pub const BURST: u32 = 10;
    /// The window.
    pub const WINDOW: Duration = Duration::from_secs(5);

    /// Whether to log a message at `now`: `Some(n)` to log it, saying that
    /// `n` were left out before it; `None` to leave it out.
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        let fresh = match self.start {
            None => true,
            Some(s) => now.saturating_duration_since(s) >= Self::WINDOW,
        };
        if fresh {
            self.start = Some(now);
            self.used = 0;
        }
        if self.used >= Self::BURST {
            self.suppressed = self.suppressed.saturating_add(1);
            return None;
        }
        self.used += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// Counts a repeated event that another party controls (a compromised
/// worker's garbage lines, reports over the budget, requests a fallback
/// answers) and says when to log it: the 1st, 2nd, 4th, 8th... time, as Xen
/// logs its unbacked RETRY completions. Logging each one would let that
/// party write dom0's log at its own rate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally(u64);

impl Tally {
    /// Counts one more; `Some(total)` when this one is to be logged.
    pub fn note(&mut self) -> Option<u64> {
        self.0 = self.0.saturating_add(1);
        self.0.is_power_of_two().then_some(self.0)
    }

    /// How many were counted.
    pub fn total(&self) -> u64 {
        self.0
    }
}

/// The limits in force for one domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Registrations the kernel may hold for the guest (checked there; kept
    /// for status).
    pub max_registrations: u32,
    /// Pages lent to the domain at most.
    pub max_lent_pages: u64,
    /// Faults handled per second.
    pub fault_rate: u64,
    /// Fault burst.
    pub fault_burst: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_registrations: 1024,
            max_lent_pages: 1 << 22,
            fault_rate: 100_000,
            fault_burst: 10_000,
        }
    }
}

/// Xen paging memory, in KiB, that the p2m entries of a BAR of `bar_size`
/// bytes take once every page of it is lent (the status report compares it
/// with the guest's paging pool). Xen maps lent pages with 4 KiB entries:
/// one page-table page per 2 MiB of BAR, one per GiB for the level above,
/// and one per 512 GiB above that. A BAR is a power of two placed at a
/// multiple of its size, so it touches exactly `ceil(size / span)` tables
/// of each level, at least one of each however small it is.
///
/// libxl-patches/0005 (`libxl__gpu_hostmem_paging_memkb`) computes the same
/// in whole MiB when it sizes the pool, for every size libxl accepts (1 MiB
/// to 64 GiB); 20-libxl-05 checks what libxl gives against this formula.
pub fn bar_paging_kib(bar_size: u64) -> u64 {
    let tables =
        bar_size.div_ceil(2 << 20) + bar_size.div_ceil(1 << 30) + bar_size.div_ceil(512 << 30);
    tables * 4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_logs_at_powers_of_two_only() {
        let mut t = Tally::default();
        let logged: Vec<u64> = (0..1000).filter_map(|_| t.note()).collect();
        assert_eq!(logged, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]);
        assert_eq!(t.total(), 1000);
        let mut full = Tally(u64::MAX - 1);
        assert_eq!(full.note(), None);
        assert_eq!(full.note(), None, "saturates, never wraps to log again");
        assert_eq!(full.total(), u64::MAX);
    }

    #[test]
    fn log_limit_admits_a_burst_per_window_and_counts_the_rest() {
        let t0 = Instant::now();
        let mut l = LogLimit::default();
        for _ in 0..LogLimit::BURST {
            assert_eq!(l.admit(t0), Some(0));
        }
        // A guest looping: a million more in the same window, none logged.
        for i in 0..1_000_000u64 {
            let at = t0 + Duration::from_nanos(i);
            assert_eq!(l.admit(at), None);
        }
        // The next window: the first line says what was left out.
        let t1 = t0 + LogLimit::WINDOW;
        assert_eq!(l.admit(t1), Some(1_000_000));
        assert_eq!(l.admit(t1), Some(0), "counted once");
    }

    #[test]
    fn paging_memory_of_a_bar() {
        // 512 L1 + 1 L2 + 1 L3 pages, as libxl-patches/0005 gives libxl.
        assert_eq!(bar_paging_kib(1 << 30), 2056);
        // What 20-libxl-05-hooks measures libxl adding for 4 GiB.
        assert_eq!(bar_paging_kib(4 << 30), 8212);
        assert_eq!(bar_paging_kib(64 << 30), 4 * (32768 + 64 + 1));
        // Under 2 MiB a BAR still needs one table of each level.
        assert_eq!(bar_paging_kib(2 << 20), 12);
        assert_eq!(bar_paging_kib(1 << 20), 12);
        assert_eq!(bar_paging_kib(0), 0);
    }

    #[test]
    fn rate_limiter_allows_burst_then_rate() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(10, 3);
        assert!(l.allow(t0) && l.allow(t0) && l.allow(t0));
        assert!(!l.allow(t0));
        assert!(l.allow(t0 + Duration::from_millis(100)));
        assert!(!l.allow(t0 + Duration::from_millis(100)));
        let later = t0 + Duration::from_secs(10);
        assert!(l.allow(later) && l.allow(later) && l.allow(later));
        assert!(!l.allow(later));
    }

    #[test]
    fn rate_limiter_refills_under_frequent_calls() {
        // Calls every 0.5 ms at 1000 per second: one token per ms must
        // come back, though no single call sees a whole millisecond. This
        // failed before the refill kept the remainder (no token ever came
        // back, so a busy guest was refused for good).
        let t0 = Instant::now();
        let mut l = RateLimiter::new(1000, 1);
        assert!(l.allow(t0));
        let granted = (1..=20)
            .filter(|i| l.allow(t0 + Duration::from_micros(500 * i)))
            .count();
        assert_eq!(granted, 10);
    }

    #[test]
    fn rate_limiter_says_when_the_next_token_comes() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(10, 1);
        assert_eq!(l.wait(t0), Duration::ZERO);
        assert!(l.allow(t0));
        assert_eq!(l.wait(t0), Duration::from_millis(100));
        assert_eq!(
            l.wait(t0 + Duration::from_millis(40)),
            Duration::from_millis(60)
        );
        assert!(!l.allow(t0 + Duration::from_millis(99)));
        assert_eq!(
            l.wait(t0 + Duration::from_millis(99)),
            Duration::from_millis(1)
        );
        assert!(l.allow(t0 + Duration::from_millis(100)));
    }
}
