//! Injectable faults: each is armed once and consumed by the first
//! operation it applies to.

use gpu_hostmem_core::platform::Errno;

/// One fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The next `n` lends answer EBUSY (an invalidation is running).
    LendBusy(u32),
    /// The next lend lends `after` pages, then fails with `errno`
    /// (partial progress of a batch).
    LendPartial {
        /// Pages lent before the failure.
        after: u32,
        /// The error.
        errno: Errno,
    },
    /// The domain starts dying in the middle of the next lend, after
    /// `after` pages.
    DomainDiesDuringLend {
        /// Pages lent before.
        after: u32,
    },
    /// The next ranged revoke fails with this errno (not ESRCH).
    RevokeFails(Errno),
    /// The next `create_server` fails.
    CreateServer(Errno),
    /// The next `open_channel` fails.
    OpenChannel(Errno),
    /// The next `map_pcidev` fails.
    MapPciDev(Errno),
    /// The next `set_server_state(true)` fails.
    Enable(Errno),
    /// The next `map_mmio` fails.
    MapMmio(Errno),
    /// The next `n` RETRY answers race with an invalidation that revokes
    /// a page of the request before Xen checks it, so Xen sends the
    /// request again (or, after its resends, completes it as unbacked).
    RevokeBeforeRetryCheck(u32),
    /// The next revoke of every page (`RevokeRange::All`) fails with this
    /// errno (not ESRCH).
    RevokeAllFails(Errno),
    /// The next completion of an ioreq slot (`IoreqChannel::complete`)
    /// fails with this errno.
    CompleteFails(Errno),
    /// The next foreign mapping of guest RAM
    /// (`DeviceModel::write_guest_ram`) fails with this errno.
    GuestMapFails(Errno),
}

/// Faults armed and not yet consumed.
#[derive(Clone, Debug, Default)]
pub struct FaultPlan {
    armed: Vec<Fault>,
}

impl FaultPlan {
    /// Arm a fault.
    pub fn arm(&mut self, f: Fault) {
        self.armed.push(f);
    }

    /// Disarm everything.
    pub fn clear(&mut self) {
        self.armed.clear();
    }

    /// Faults still armed.
    pub fn armed(&self) -> &[Fault] {
        &self.armed
    }

    /// Consume the first armed fault for which `pick` returns Some.
    pub fn take<T>(&mut self, mut pick: impl FnMut(&mut Fault) -> Option<(T, bool)>) -> Option<T> {
        for i in 0..self.armed.len() {
            if let Some((v, consumed)) = pick(&mut self.armed[i]) {
                if consumed {
                    self.armed.remove(i);
                }
                return Some(v);
            }
        }
        None
    }

    /// Consume a counted fault (`LendBusy`, `RevokeBeforeRetryCheck`).
    pub fn take_counted(&mut self, is: fn(&mut Fault) -> Option<&mut u32>) -> bool {
        self.take(|f| {
            let n = is(f)?;
            if *n == 0 {
                return Some((false, true));
            }
            *n -= 1;
            Some((true, *n == 0))
        })
        .unwrap_or(false)
    }
}
