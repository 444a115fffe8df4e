//! BAR offset -> registration lookup.
//!
//! The kernel owns the registrations; the server keeps this cache of them
//! (refreshed from [`crate::platform::HostMem::query`]) to find the
//! registration of a faulting offset and clip fault-around to it. Entries
//! are [`RegionInfo`]s without their lent-page count, which changes with
//! every lend and revoke: the cache knows only what stays true while the
//! registration lives.
//! Registrations never overlap, so a `BTreeMap` keyed by start offset
//! answers a lookup with one range query: O(log n).

use std::collections::BTreeMap;

use crate::platform::RegionInfo;

/// Why a registration was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// Size zero or offset+size wraps.
    #[error("registration {id}: empty or wrapping range")]
    BadRange {
        /// The id.
        id: u32,
    },
    /// Overlaps an existing registration.
    #[error("registration {id} overlaps registration {other}")]
    Overlap {
        /// The id.
        id: u32,
        /// The registration it overlaps.
        other: u32,
    },
}

/// Non-overlapping registrations by offset.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    by_offset: BTreeMap<u64, RegionInfo>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of registrations.
    pub fn len(&self) -> usize {
        self.by_offset.len()
    }

    /// True if empty.
    pub fn is_empty(&self) -> bool {
        self.by_offset.is_empty()
    }

    /// Insert, refusing empty, wrapping or overlapping ranges.
    pub fn insert(&mut self, r: RegionInfo) -> Result<(), RegistryError> {
        if r.size == 0 || r.offset.checked_add(r.size).is_none() {
            return Err(RegistryError::BadRange { id: r.id });
        }
        if let Some(prev) = self.by_offset.range(..r.end()).next_back() {
            if prev.1.end() > r.offset {
                return Err(RegistryError::Overlap {
                    id: r.id,
                    other: prev.1.id,
                });
            }
        }
        self.by_offset.insert(
            r.offset,
            RegionInfo {
                lent_pages: None,
                ..r
            },
        );
        Ok(())
    }

    /// Remove the registration with this id; returns it.
    pub fn remove(&mut self, id: u32) -> Option<RegionInfo> {
        let key = self
            .by_offset
            .iter()
            .find(|(_, r)| r.id == id)
            .map(|(k, _)| *k)?;
        self.by_offset.remove(&key)
    }

    /// The registration containing BAR offset `off`.
    pub fn lookup(&self, off: u64) -> Option<&RegionInfo> {
        self.by_offset
            .range(..=off)
            .next_back()
            .map(|(_, r)| r)
            .filter(|r| off < r.end())
    }

    /// Replace everything with the kernel's view. Overlapping entries (which
    /// a correct kernel never reports) are dropped.
    pub fn replace_from(&mut self, regions: &[RegionInfo]) {
        self.by_offset.clear();
        for r in regions {
            let _ = self.insert(*r);
        }
    }

    /// All registrations by offset.
    pub fn iter(&self) -> impl Iterator<Item = &RegionInfo> {
        self.by_offset.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reg(id: u32, offset: u64, size: u64) -> RegionInfo {
        RegionInfo::new(id, offset, size)
    }

    #[test]
    fn lookup_finds_containing_registration_only() {
        let mut r = Registry::new();
        r.insert(reg(1, 0x1000, 0x2000)).expect("insert");
        r.insert(reg(2, 0x8000, 0x1000)).expect("insert");
        assert_eq!(r.lookup(0x0fff), None);
        assert_eq!(r.lookup(0x1000).map(|r| r.id), Some(1));
        assert_eq!(r.lookup(0x2fff).map(|r| r.id), Some(1));
        assert_eq!(r.lookup(0x3000), None);
        assert_eq!(r.lookup(0x8fff).map(|r| r.id), Some(2));
        assert_eq!(r.lookup(u64::MAX), None);
    }

    #[test]
    fn overlapping_or_empty_registrations_are_refused() {
        let mut r = Registry::new();
        r.insert(reg(1, 0x1000, 0x2000)).expect("insert");
        assert_eq!(
            r.insert(reg(2, 0x2000, 0x1000)),
            Err(RegistryError::Overlap { id: 2, other: 1 })
        );
        assert_eq!(
            r.insert(reg(3, 0x0, 0x2000)),
            Err(RegistryError::Overlap { id: 3, other: 1 })
        );
        assert_eq!(
            r.insert(reg(4, 0x0, 0)),
            Err(RegistryError::BadRange { id: 4 })
        );
        assert_eq!(
            r.insert(reg(5, u64::MAX - 10, 0x1000)),
            Err(RegistryError::BadRange { id: 5 })
        );
        r.insert(reg(6, 0x3000, 0x1000)).expect("adjacent is fine");
        assert_eq!(r.remove(1).map(|r| r.id), Some(1));
        r.insert(reg(2, 0x2000, 0x1000)).expect("free now");
    }

    #[test]
    fn the_kernels_view_is_kept_without_its_lent_page_count() {
        let mut r = Registry::new();
        let from_kernel = [
            RegionInfo {
                lent_pages: Some(16),
                owner_pid: Some(42),
                ..reg(1, 0x1000, 0x2000)
            },
            // Overlaps the first: a kernel never says so; dropped.
            reg(2, 0x2000, 0x1000),
            reg(3, 0x8000, 0x1000),
        ];
        r.replace_from(&from_kernel);
        let kept: Vec<RegionInfo> = r.iter().copied().collect();
        assert_eq!(
            kept,
            [
                RegionInfo {
                    owner_pid: Some(42),
                    ..reg(1, 0x1000, 0x2000)
                },
                reg(3, 0x8000, 0x1000)
            ]
        );
        assert_eq!(r.lookup(0x2fff).map(|x| x.end()), Some(0x3000));
    }

    proptest! {
        #[test]
        fn lookup_agrees_with_linear_scan(
            regs in proptest::collection::vec((0u64..64, 1u64..8), 0..20),
            probes in proptest::collection::vec(0u64..80, 1..40),
        ) {
            let mut r = Registry::new();
            let mut accepted = Vec::new();
            for (i, (start, len)) in regs.into_iter().enumerate() {
                let x = reg(i as u32, start * 4096, len * 4096);
                if r.insert(x).is_ok() {
                    accepted.push(x);
                }
            }
            for p in probes {
                let off = p * 4096 + 7;
                let linear = accepted.iter().find(|x| x.offset <= off && off < x.end());
                prop_assert_eq!(r.lookup(off), linear);
            }
        }
    }
}
