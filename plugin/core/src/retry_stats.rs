//! Watching Xen's counters of the domain's RETRY answers
//! ([`RetryStats`], `XEN_DMOP_get_retry_stats`).
//!
//! The server answers `STATE_IORESP_RETRY` and trusts Xen to complete the
//! access from the memory it just lent. Xen counts how each answer ended;
//! a *refused* one (completed as unbacked: the guest read all ones, its
//! write was dropped) means Xen finished the instruction without the
//! server's memory. [`RetryWatch`] reads the counters at most once per
//! [`RetryWatch::INTERVAL`] and says what must be logged: refused answers
//! that appeared since the last reading, or, once, that the counters
//! cannot be read at all (an unpatched library or hypervisor), after which
//! it stops asking.

use std::time::{Duration, Instant};

use crate::platform::{Errno, PlatformError, PlatformResult, RetryStats};

/// What a reading showed that the operator must see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RetryNews {
    /// The first reading already counts refused answers (a server
    /// restarted after a crash, or answers given before it started).
    RefusedBefore(RetryStats),
    /// The refused count went up by `by` since the last reading.
    Refused {
        /// New refused answers.
        by: u64,
        /// The counters now.
        now: RetryStats,
    },
    /// The counters cannot be read on this system; not asked again.
    Unavailable(PlatformError),
}

/// The last reading of Xen's counters and when to read them again.
#[derive(Clone, Debug, Default)]
pub struct RetryWatch {
    last: Option<RetryStats>,
    unavailable: Option<PlatformError>,
    next: Option<Instant>,
}

impl RetryWatch {
    /// Shortest time between two readings for the warning (a reading is
    /// one hypercall; the event loop wakes at least once a second anyway).
    pub const INTERVAL: Duration = Duration::from_secs(1);

    /// True if a reading is due at `now` (never once unavailable).
    pub fn due(&self, now: Instant) -> bool {
        self.unavailable.is_none() && !matches!(self.next, Some(n) if now < n)
    }

    /// Whether the counters were found unreadable for good, and why.
    pub fn unavailable(&self) -> Option<&PlatformError> {
        self.unavailable.as_ref()
    }

    /// The last successful reading.
    pub fn last(&self) -> Option<RetryStats> {
        self.last
    }

    /// Take a reading made at `now`. Errors that say the call or the DMOP
    /// does not exist here (`ENOSYS`, `EOPNOTSUPP`), or that we may not
    /// make it (`EPERM`, `EACCES`), make the counters unavailable for
    /// good; others (the domain going away) are passed over.
    pub fn observe(&mut self, r: &PlatformResult<RetryStats>, now: Instant) -> Option<RetryNews> {
        self.next = now.checked_add(Self::INTERVAL);
        let st = match r {
            Ok(st) => *st,
            Err(e) => {
                let permanent = [
                    Errno::ENOSYS,
                    Errno::EOPNOTSUPP,
                    Errno::EPERM,
                    Errno::EACCES,
                ]
                .contains(&e.errno);
                if permanent && self.unavailable.is_none() {
                    self.unavailable = Some(e.clone());
                    return Some(RetryNews::Unavailable(e.clone()));
                }
                return None;
            }
        };
        let before = self.last.replace(st);
        match before {
            None if st.refused > 0 => Some(RetryNews::RefusedBefore(st)),
            Some(b) if st.refused > b.refused => Some(RetryNews::Refused {
                by: st.refused - b.refused,
                now: st,
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(completed: u64, resent: u64, refused: u64) -> RetryStats {
        RetryStats {
            completed,
            resent,
            refused,
        }
    }

    #[test]
    fn refused_going_up_is_news_once_per_increase() {
        let t0 = Instant::now();
        let mut w = RetryWatch::default();
        assert!(w.due(t0));
        assert_eq!(w.observe(&Ok(st(3, 0, 0)), t0), None);
        assert!(!w.due(t0));
        assert!(w.due(t0 + RetryWatch::INTERVAL));
        // Honoured and resent answers are the normal life of the server.
        assert_eq!(w.observe(&Ok(st(9, 4, 0)), t0), None);
        assert_eq!(
            w.observe(&Ok(st(9, 12, 2)), t0),
            Some(RetryNews::Refused {
                by: 2,
                now: st(9, 12, 2)
            })
        );
        assert_eq!(w.observe(&Ok(st(10, 12, 2)), t0), None);
        assert_eq!(w.last(), Some(st(10, 12, 2)));
    }

    #[test]
    fn refused_before_the_first_reading_is_news() {
        let mut w = RetryWatch::default();
        assert_eq!(
            w.observe(&Ok(st(1, 8, 1)), Instant::now()),
            Some(RetryNews::RefusedBefore(st(1, 8, 1)))
        );
    }

    #[test]
    fn a_missing_call_is_said_once_and_not_asked_again() {
        let t0 = Instant::now();
        let mut w = RetryWatch::default();
        let e = PlatformError::new("xendevicemodel_get_retry_stats", Errno::ENOSYS);
        assert_eq!(
            w.observe(&Err(e.clone()), t0),
            Some(RetryNews::Unavailable(e.clone()))
        );
        assert_eq!(w.unavailable(), Some(&e));
        assert!(!w.due(t0 + 10 * RetryWatch::INTERVAL));
        assert_eq!(w.observe(&Err(e), t0), None);
    }

    #[test]
    fn a_passing_error_is_not_news_and_keeps_asking() {
        let t0 = Instant::now();
        let mut w = RetryWatch::default();
        let e = PlatformError::new("xendevicemodel_get_retry_stats", Errno::ESRCH);
        assert_eq!(w.observe(&Err(e), t0), None);
        assert!(w.unavailable().is_none());
        assert!(w.due(t0 + RetryWatch::INTERVAL));
    }
}
