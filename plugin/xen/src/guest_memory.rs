//! Guest memory for a virtio device model on Xen: the
//! [`GuestMemory`] of `gpu-hostmem-virtio-gpu` over foreign mappings made
//! on demand, page by page, through a handle restricted to the guest, and
//! kept in a bounded cache.
//!
//! A frame that cannot be mapped (a hole, MMIO, a page lent through
//! gpu-hostmem) is [`MemError::Unmapped`] and is not cached: the guest may
//! populate it later. A mapping holds a reference to the guest's page, so
//! the cache is emptied ([`ForeignGuestMemory::clear`]) when the device is
//! reset and whenever it is full.

use std::collections::HashMap;

use gpu_hostmem_virtio_gpu::memory::{GuestMemory, MemError};

use crate::foreignmemory::{ForeignMemory, GuestPages};

const PAGE_SHIFT: u32 = 12;
const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;

/// The guest's memory through foreign mappings.
#[derive(Debug)]
pub struct ForeignGuestMemory<'f> {
    fm: &'f ForeignMemory<'f>,
    domid: u16,
    cache: HashMap<u64, GuestPages<'f>>,
    max_pages: usize,
}

impl<'f> ForeignGuestMemory<'f> {
    /// Guest `domid`'s memory through `fm`, with at most `max_pages`
    /// frames mapped at a time (at least one).
    pub fn new(fm: &'f ForeignMemory<'f>, domid: u16, max_pages: usize) -> Self {
        ForeignGuestMemory {
            fm,
            domid,
            cache: HashMap::new(),
            max_pages: max_pages.max(1),
        }
    }

    /// Frames mapped now.
    pub fn mapped_pages(&self) -> usize {
        self.cache.len()
    }

    /// Unmaps every frame (device reset, or the cache is full).
    pub fn clear(&mut self) {
        self.cache.clear();
    }

    fn page(&mut self, gfn: u64) -> Result<&GuestPages<'f>, MemError> {
        if !self.cache.contains_key(&gfn) {
            if self.cache.len() >= self.max_pages {
                self.clear();
            }
            let pages = self
                .fm
                .map_guest_pages(self.domid, &[gfn], true)
                .map_err(|_| MemError::Unmapped { gfn })?;
            if pages.page_error(0).is_some() {
                return Err(MemError::Unmapped { gfn });
            }
            self.cache.insert(gfn, pages);
        }
        self.cache.get(&gfn).ok_or(MemError::Unmapped { gfn })
    }

    /// Calls `f(page, offset in page, range in the buffer)` for each page
    /// `[addr, addr + len)` touches.
    fn each_page(
        &mut self,
        addr: u64,
        len: usize,
        mut f: impl FnMut(&GuestPages<'f>, usize, std::ops::Range<usize>) -> Result<(), MemError>,
    ) -> Result<(), MemError> {
        let end = addr.checked_add(len as u64).ok_or(MemError::Overflow {
            addr,
            len: len as u64,
        })?;
        let mut at = addr;
        while at < end {
            let gfn = at >> PAGE_SHIFT;
            let off = at & (PAGE_SIZE - 1);
            let n = (PAGE_SIZE - off).min(end - at);
            let done = (at - addr) as usize;
            let page = self.page(gfn)?;
            f(page, off as usize, done..done + n as usize)?;
            at += n;
        }
        Ok(())
    }
}

impl GuestMemory for ForeignGuestMemory<'_> {
    fn forget_mappings(&mut self) {
        self.clear();
    }

    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        self.each_page(addr, buf.len(), |p, off, r| {
            let gfn = (addr + r.start as u64) >> PAGE_SHIFT;
            p.read(0, off, &mut buf[r])
                .map_err(|_| MemError::Unmapped { gfn })
        })
    }

    fn write(&mut self, addr: u64, buf: &[u8]) -> Result<(), MemError> {
        self.each_page(addr, buf.len(), |p, off, r| {
            let gfn = (addr + r.start as u64) >> PAGE_SHIFT;
            p.write(0, off, &buf[r])
                .map_err(|_| MemError::Unmapped { gfn })
        })
    }
}
