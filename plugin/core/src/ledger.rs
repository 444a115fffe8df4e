//! The mapping ledger of one guest instance (a server serves one): which
//! GFN runs were lent from which BAR offsets. It serves status, the
//! lent-page limit and revoke-by-range on BAR moves. The kernel revokes
//! pages on its own (invalidation, a backend unregistering or exiting):
//! the ledger is an upper bound, brought back to the kernel's view by
//! [`DomainLedger::keep_within`] whenever the server asks the kernel.
//! Total teardown never trusts it and revokes everything of the domain
//! (`RevokeRange::All`), so a stale ledger can only make a revoke do
//! vacuous work, never leave a page lent.

use std::collections::BTreeMap;
use std::ops::Range;

use crate::fault_around::{PAGE_SHIFT, PAGE_SIZE};

/// A run of lent GFNs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LentRun {
    /// First GFN.
    pub first_gfn: u64,
    /// Pages requested (the run covers `first_gfn..first_gfn + nr_pages`).
    pub nr_pages: u64,
    /// BAR offset of the first page.
    pub bar_offset: u64,
    /// Pages the kernel reported lent in the run (unregistered ones skipped).
    pub lent: u64,
}

/// What was lent to one domain.
#[derive(Clone, Debug, Default)]
pub struct DomainLedger {
    runs: BTreeMap<u64, LentRun>,
    lent_pages: u64,
}

impl DomainLedger {
    /// Record a successful lend. The part of any recorded run that the new
    /// run overlaps is replaced (the kernel re-lent or skipped those pages,
    /// and counted the ones already lent); the rest of such a run stays.
    pub fn record(&mut self, first_gfn: u64, nr_pages: u64, bar_offset: u64, lent: u64) {
        if nr_pages == 0 {
            return;
        }
        self.forget(first_gfn, nr_pages);
        self.runs.insert(
            first_gfn,
            LentRun {
                first_gfn,
                nr_pages,
                bar_offset,
                lent,
            },
        );
        self.lent_pages += lent;
    }

    /// Forget `[first_gfn, first_gfn + nr_pages)` (after revoking it).
    /// Runs overlapping it are cut: the parts outside stay recorded, each
    /// with at most as many lent pages as it has pages, so the total stays
    /// an upper bound of what the kernel has lent. Returns the parts
    /// removed.
    pub fn forget(&mut self, first_gfn: u64, nr_pages: u64) -> Vec<LentRun> {
        let end = first_gfn.saturating_add(nr_pages);
        let mut keys: Vec<u64> = Vec::new();
        if let Some((k, r)) = self.runs.range(..first_gfn).next_back() {
            if r.first_gfn + r.nr_pages > first_gfn {
                keys.push(*k);
            }
        }
        keys.extend(self.runs.range(first_gfn..end).map(|(k, _)| *k));
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            let Some(r) = self.runs.remove(&k) else {
                continue;
            };
            self.lent_pages -= r.lent;
            let r_end = r.first_gfn + r.nr_pages;
            let lo = r.first_gfn.max(first_gfn);
            let hi = r_end.min(end);
            for (from, to) in [(r.first_gfn, lo), (hi, r_end)] {
                if from < to {
                    let part = LentRun {
                        first_gfn: from,
                        nr_pages: to - from,
                        bar_offset: r.bar_offset + ((from - r.first_gfn) << PAGE_SHIFT),
                        lent: r.lent.min(to - from),
                    };
                    self.lent_pages += part.lent;
                    self.runs.insert(from, part);
                }
            }
            out.push(LentRun {
                first_gfn: lo,
                nr_pages: hi - lo,
                bar_offset: r.bar_offset + ((lo - r.first_gfn) << PAGE_SHIFT),
                lent: r.lent.min(hi - lo),
            });
        }
        out
    }

    /// Forget every page whose BAR offset lies outside all of `live`
    /// (byte ranges of the BAR): the kernel says nothing is lent there
    /// (its registration is gone, or none of it is lent). The kernel
    /// revokes on unregistration and invalidation without telling the
    /// server, so this is how the ledger learns of it. Returns the pages
    /// forgotten.
    pub fn keep_within(&mut self, live: &[Range<u64>]) -> u64 {
        let before = self.lent_pages;
        let runs: Vec<LentRun> = self.runs.values().copied().collect();
        for r in runs {
            let bytes = r.bar_offset..r.bar_offset.saturating_add(r.nr_pages << PAGE_SHIFT);
            for gap in uncovered(bytes, live) {
                let first_gfn = r.first_gfn + ((gap.start - r.bar_offset) >> PAGE_SHIFT);
                let nr_pages = (gap.end - gap.start).div_ceil(PAGE_SIZE);
                self.forget(first_gfn, nr_pages);
            }
        }
        before - self.lent_pages
    }

    /// Forget everything; returns the runs.
    pub fn forget_all(&mut self) -> Vec<LentRun> {
        self.lent_pages = 0;
        std::mem::take(&mut self.runs).into_values().collect()
    }

    /// Pages recorded lent (an upper bound: the kernel may have revoked
    /// some on invalidation since).
    pub fn lent_pages(&self) -> u64 {
        self.lent_pages
    }

    /// Runs by GFN.
    pub fn runs(&self) -> impl Iterator<Item = &LentRun> {
        self.runs.values()
    }
}

/// The parts of `r` no range of `by` covers, in order.
fn uncovered(r: Range<u64>, by: &[Range<u64>]) -> Vec<Range<u64>> {
    let mut cover: Vec<&Range<u64>> = by
        .iter()
        .filter(|b| b.start < r.end && r.start < b.end)
        .collect();
    cover.sort_by_key(|b| b.start);
    let mut out = Vec::new();
    let mut at = r.start;
    for b in cover {
        if b.start > at {
            out.push(at..b.start);
        }
        at = at.max(b.end);
        if at >= r.end {
            return out;
        }
    }
    if at < r.end {
        out.push(at..r.end);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// True if `gfn` is inside a recorded run.
    fn covers(l: &DomainLedger, gfn: u64) -> bool {
        l.runs()
            .any(|r| r.first_gfn <= gfn && gfn < r.first_gfn + r.nr_pages)
    }

    #[test]
    fn record_forget_and_cover() {
        let mut l = DomainLedger::default();
        l.record(0x100, 512, 0, 512);
        l.record(0x400, 16, 0x30_0000, 10);
        assert_eq!(l.lent_pages(), 522);
        assert!(covers(&l, 0x100) && covers(&l, 0x2ff) && !covers(&l, 0x300));
        let gone = l.forget(0x100, 0x310);
        assert_eq!(gone.len(), 2);
        assert_eq!(l.lent_pages(), 0);
        assert!(!covers(&l, 0x100) && !covers(&l, 0x40f));
    }

    #[test]
    fn forgetting_part_of_a_run_keeps_the_rest_as_an_upper_bound() {
        // [0x100, 0x300) with 512 lent and [0x400, 0x410) with 10 lent;
        // forget [0x2ff, 0x401): 0x100..0x2ff stays (511 pages, at most 511
        // lent), 0x401..0x410 stays (15 pages, at most 10 lent).
        let mut l = DomainLedger::default();
        l.record(0x100, 512, 0, 512);
        l.record(0x400, 16, 0x30_0000, 10);
        let gone = l.forget(0x2ff, 0x102);
        assert_eq!(gone.len(), 2);
        assert_eq!(l.lent_pages(), 511 + 10);
        assert!(covers(&l, 0x2fe) && !covers(&l, 0x2ff) && !covers(&l, 0x400) && covers(&l, 0x401));
        let tail = l.runs().find(|r| r.first_gfn == 0x401).copied();
        assert_eq!(
            tail,
            Some(LentRun {
                first_gfn: 0x401,
                nr_pages: 15,
                bar_offset: 0x30_1000,
                lent: 10
            })
        );
    }

    #[test]
    fn recording_inside_a_run_does_not_forget_its_other_pages() {
        // The kernel lent 6 pages of [32, 44) (the rest was not
        // registered); a later lend of [32, 37) lends 5: the pages of
        // 37..44 are still lent, and the ledger must still count them.
        let mut l = DomainLedger::default();
        l.record(32, 12, 32 << 12, 6);
        l.record(32, 5, 32 << 12, 5);
        assert_eq!(l.lent_pages(), 5 + 6);
        assert!(covers(&l, 40));
    }

    #[test]
    fn keep_within_forgets_pages_outside_every_live_range() {
        // Run A: GFNs 0x100.. from BAR offset 0, 16 pages, all lent; run
        // B: GFNs 0x200.. from 0x10_0000, 16 pages, 12 lent.
        let mut l = DomainLedger::default();
        l.record(0x100, 16, 0, 16);
        l.record(0x200, 16, 0x10_0000, 12);
        // Everything still registered (one range covering both, one
        // covering B exactly): nothing forgotten.
        let everything = 0..0x20_0000;
        assert_eq!(l.keep_within(std::slice::from_ref(&everything)), 0);
        assert_eq!(l.keep_within(&[0x10_0000..0x11_0000, 0..0x1_0000]), 0);
        assert_eq!(l.lent_pages(), 28);
        // A's registration shrank to its first 4 pages, B's is gone.
        let first_four = 0..0x4000;
        assert_eq!(l.keep_within(std::slice::from_ref(&first_four)), 24);
        assert_eq!(l.lent_pages(), 4);
        assert!(covers(&l, 0x103) && !covers(&l, 0x104) && !covers(&l, 0x200));
        // Holes inside a run: pages 1 and 3 stay.
        let mut l = DomainLedger::default();
        l.record(0x100, 4, 0x8000, 4);
        assert_eq!(l.keep_within(&[0x9000..0xa000, 0xb000..0xc000]), 2);
        let left: Vec<(u64, u64, u64)> = l
            .runs()
            .map(|r| (r.first_gfn, r.nr_pages, r.bar_offset))
            .collect();
        assert_eq!(left, [(0x101, 1, 0x9000), (0x103, 1, 0xb000)]);
        // Nothing registered: nothing lent.
        assert_eq!(l.keep_within(&[]), 2);
        assert_eq!((l.lent_pages(), l.runs().count()), (0, 0));
    }

    #[test]
    fn rerecording_an_overlapping_run_does_not_double_count() {
        let mut l = DomainLedger::default();
        l.record(0x100, 512, 0, 512);
        l.record(0x100, 512, 0, 512);
        assert_eq!(l.lent_pages(), 512);
        assert_eq!(l.runs().count(), 1);
    }
}
