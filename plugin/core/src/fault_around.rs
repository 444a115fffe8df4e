//! Fault-around planning: on a fault at one BAR offset, lend the whole
//! aligned chunk around it, clipped to the BAR, to the registration that
//! contains the offset, and to what the limits still allow.

use std::ops::Range;

/// Page size (4 KiB).
pub const PAGE_SIZE: u64 = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;

/// A run of pages to lend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// BAR offset of the first page (page aligned).
    pub offset: u64,
    /// Number of pages (>= 1, and includes the faulting page).
    pub nr_pages: u64,
}

impl Plan {
    /// The planned offsets, half-open.
    pub fn range(&self) -> Range<u64> {
        self.offset..self.offset + self.nr_pages * PAGE_SIZE
    }
}

/// Plan the chunk for a fault at `fault_off`.
///
/// - `chunk`: fault-around size in bytes (a power of two >= 4 KiB).
/// - `bar_size`: the BAR size.
/// - `allowed`: the registration's range (offsets) the fault fell in.
/// - `max_pages`: how many more pages the limits allow (>= 1 to lend).
///
/// Returns `None` if the fault is outside `allowed` or the BAR, or
/// `max_pages` is 0. The plan always contains the faulting page; when
/// `max_pages` is smaller than the chunk, the plan shrinks around it.
pub fn plan(
    fault_off: u64,
    chunk: u64,
    bar_size: u64,
    allowed: Range<u64>,
    max_pages: u64,
) -> Option<Plan> {
    if fault_off >= bar_size || !allowed.contains(&fault_off) || max_pages == 0 {
        return None;
    }
    let chunk = chunk.max(PAGE_SIZE);
    let chunk = if chunk.is_power_of_two() {
        chunk
    } else {
        PAGE_SIZE
    };
    let page = fault_off & !(PAGE_SIZE - 1);
    let c_start = fault_off & !(chunk - 1);
    let c_end = c_start.saturating_add(chunk);
    let lo = c_start.max(allowed.start & !(PAGE_SIZE - 1));
    let hi = c_end.min(bar_size).min(round_up(allowed.end));
    let mut start = lo;
    let mut end = hi;
    let max_bytes = max_pages.saturating_mul(PAGE_SIZE);
    if end - start > max_bytes {
        // Keep the faulting page; take as much after it as allowed, then
        // before it.
        end = page.saturating_add(max_bytes).min(hi);
        start = end.saturating_sub(max_bytes).max(lo);
    }
    Some(Plan {
        offset: start,
        nr_pages: (end - start) / PAGE_SIZE,
    })
}

fn round_up(x: u64) -> u64 {
    x.checked_add(PAGE_SIZE - 1)
        .map(|v| v & !(PAGE_SIZE - 1))
        .unwrap_or(!(PAGE_SIZE - 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn whole_aligned_chunk_inside_registration() {
        let p = plan(3 * MIB + 5, 2 * MIB, 64 * MIB, 0..64 * MIB, u64::MAX);
        assert_eq!(
            p,
            Some(Plan {
                offset: 2 * MIB,
                nr_pages: 512
            })
        );
    }

    #[test]
    fn clipped_to_registration_and_bar() {
        let p = plan(MIB + 4096, 2 * MIB, 64 * MIB, MIB..MIB + 8192, u64::MAX);
        assert_eq!(
            p,
            Some(Plan {
                offset: MIB,
                nr_pages: 2
            })
        );
        let p = plan(MIB - 1, 2 * MIB, MIB, 0..64 * MIB, u64::MAX);
        assert_eq!(
            p,
            Some(Plan {
                offset: 0,
                nr_pages: 256
            })
        );
    }

    #[test]
    fn limit_shrinks_plan_around_fault() {
        let p = plan(MIB, 2 * MIB, 64 * MIB, 0..64 * MIB, 3).expect("plan");
        assert_eq!(p.nr_pages, 3);
        assert!(p.range().contains(&MIB));
        assert_eq!(plan(MIB, 2 * MIB, 64 * MIB, 0..64 * MIB, 0), None);
    }

    #[test]
    fn outside_registration_or_bar_gives_nothing() {
        assert_eq!(plan(0, 2 * MIB, MIB, 4096..8192, 10), None);
        assert_eq!(plan(MIB, 2 * MIB, MIB, 0..2 * MIB, 10), None);
    }

    proptest! {
        #[test]
        fn plan_contains_fault_and_stays_inside_every_bound(
            bar_pages in 1u64..4096,
            reg_start in 0u64..4096, reg_len in 1u64..4096,
            fault in 0u64..(4096 * 4096),
            chunk_shift in 12u32..23,
            max_pages in 0u64..1024,
        ) {
            let bar = bar_pages * PAGE_SIZE;
            let allowed = reg_start * PAGE_SIZE..(reg_start + reg_len) * PAGE_SIZE;
            let chunk = 1u64 << chunk_shift;
            match plan(fault, chunk, bar, allowed.clone(), max_pages) {
                None => prop_assert!(fault >= bar || !allowed.contains(&fault) || max_pages == 0),
                Some(p) => {
                    let r = p.range();
                    prop_assert!(p.nr_pages >= 1 && p.nr_pages <= max_pages);
                    prop_assert!(r.contains(&fault));
                    prop_assert!(r.start >= allowed.start && r.end <= allowed.end);
                    prop_assert!(r.end <= bar);
                    prop_assert!(r.end - r.start <= chunk);
                    prop_assert_eq!(r.start / chunk, (r.end - 1) / chunk);
                }
            }
        }
    }
}
