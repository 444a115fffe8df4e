//! What the renderer's integration tests share: a registrar that stands
//! for privcmd.

#![allow(dead_code)] // each test binary uses its own part

use std::sync::{Arc, Mutex};

use gpu_hostmem_renderer::{Registrar, RendererOsError};

/// The page size the fake registrar insists on.
pub const PAGE: u64 = 4096;

/// One registration the fake registrar holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reg {
    pub id: u32,
    pub addr: usize,
    pub size: u64,
    pub offset: u64,
}

/// Records registrations (page-aligned, ids unique) and can refuse the
/// next one; clones share the record.
#[derive(Debug, Clone, Default)]
pub struct FakeRegistrar {
    pub regs: Arc<Mutex<Vec<Reg>>>,
    /// Refuse the next register with this errno.
    pub fail: Arc<Mutex<Option<i32>>>,
}

impl Registrar for FakeRegistrar {
    fn register(
        &mut self,
        id: u32,
        addr: usize,
        size: u64,
        offset: u64,
    ) -> Result<(), RendererOsError> {
        if let Some(errno) = self.fail.lock().expect("fail").take() {
            return Err(RendererOsError {
                op: "IOCTL_PRIVCMD_HOSTMEM_REGISTER",
                source: std::io::Error::from_raw_os_error(errno),
            });
        }
        let mut r = self.regs.lock().expect("regs");
        assert!(r.iter().all(|x| x.id != id), "id {id} registered twice");
        assert!(addr % PAGE as usize == 0 && size % PAGE == 0 && offset % PAGE == 0);
        r.push(Reg {
            id,
            addr,
            size,
            offset,
        });
        Ok(())
    }

    fn unregister(&mut self, id: u32) -> Result<(), RendererOsError> {
        let mut r = self.regs.lock().expect("regs");
        let n = r.len();
        r.retain(|x| x.id != id);
        if r.len() == n {
            return Err(RendererOsError {
                op: "IOCTL_PRIVCMD_HOSTMEM_UNREGISTER",
                source: std::io::Error::from_raw_os_error(libc::ENOENT),
            });
        }
        Ok(())
    }
}
