//! gpu-hostmem-host: what the libxl plugin, `gpu-hostmem-ioreqd` and the
//! `gpu-hostmem` CLI share on the host side, above the Xen bindings of
//! `gpu-hostmem-xen`.
//!
//! - [`record`]: the per-guest xenstore record (docs/interfaces.md
//!   section 4), its keys and states;
//! - [`control`]: the control socket of the IOREQ server (its path and the
//!   client side of its protocol);
//! - [`process`]: signalling a process through a pidfd;
//! - [`identity`]: a process named by its pid and start time, found again
//!   only if it is that very process;
//! - [`teardown`]: the total, idempotent teardown of one guest from outside
//!   the IOREQ server process;
//! - [`users`]: the unprivileged user a process drops to.
//!
//! Its only `unsafe` is in [`process`] (libc calls: `kill`,
//! `pidfd_open`, `pidfd_send_signal`, `poll`) and [`users`]
//! (`getpwnam_r`, the id changes); every Xen call goes through
//! `gpu-hostmem-xen`. The test-only environment overrides (the control
//! directory among them) are those of `gpu_hostmem_xen::testenv`, live only
//! with that crate's `test-env` feature.

pub mod control;
pub mod identity;
pub mod process;
pub mod record;
pub mod teardown;
pub mod users;
