//! The per-guest xenstore record (docs/interfaces.md section 4):
//! `/local/domain/0/gpu-hostmem/<domid>/{uuid,unique-id,pid,worker-pid,
//! worker-start,state,bdf,bar-size,bar-base,ioservid,control,restarts}`.
//! `unique-id` (decimal) is Xen's unique id of the guest instance served:
//! the identity teardown and the backends go by; `uuid` is informational
//! (not unique).

use crate::identity::ProcessIdentity;
use gpu_hostmem_xen::Result;
use gpu_hostmem_xen::Xenstore;

/// Root of every record.
pub const ROOT: &str = "/local/domain/0/gpu-hostmem";

/// Key names.
pub mod key {
    pub const UUID: &str = "uuid";
    pub const UNIQUE_ID: &str = "unique-id";
    pub const PID: &str = "pid";
    pub const STATE: &str = "state";
    pub const BDF: &str = "bdf";
    pub const BAR_SIZE: &str = "bar-size";
    pub const BAR_BASE: &str = "bar-base";
    pub const IOSERVID: &str = "ioservid";
    pub const CONTROL: &str = "control";
    /// Worker deaths in the supervisor's window (absent until one).
    pub const RESTARTS: &str = "restarts";
    /// The worker that serves the guest (the supervisor's child), written
    /// by the supervisor when it starts one: teardown stops a worker that
    /// outlived its supervisor by this pid and [`WORKER_START`].
    pub const WORKER_PID: &str = "worker-pid";
    /// The worker's start time (clock ticks after boot, field 22 of
    /// `/proc/PID/stat`), read by the supervisor while the worker was its
    /// unreaped child: with [`WORKER_PID`], an identity no other process
    /// can have, and that the worker cannot change.
    pub const WORKER_START: &str = "worker-start";
}

/// `state` values.
pub mod state {
    pub const STARTING: &str = "starting";
    pub const RUNNING: &str = "running";
    pub const STOPPING: &str = "stopping";
    /// Prefix of `failed: <reason>`.
    pub const FAILED_PREFIX: &str = "failed: ";
}

/// The directory of `domid`'s record.
pub fn dir(domid: u16) -> String {
    format!("{ROOT}/{domid}")
}

/// The path of one key of `domid`'s record.
pub fn path(domid: u16, key: &str) -> String {
    format!("{ROOT}/{domid}/{key}")
}

/// Everything the record may hold (absent keys are None).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    pub uuid: Option<String>,
    pub unique_id: Option<String>,
    pub pid: Option<String>,
    pub state: Option<String>,
    pub bdf: Option<String>,
    pub bar_size: Option<String>,
    pub bar_base: Option<String>,
    pub ioservid: Option<String>,
    pub control: Option<String>,
    pub restarts: Option<String>,
    pub worker_pid: Option<String>,
    pub worker_start: Option<String>,
}

impl Record {
    /// Reads `domid`'s record; None if the directory does not exist.
    pub fn read(xs: &Xenstore<'_>, domid: u16) -> Result<Option<Record>> {
        if xs.read(&dir(domid))?.is_none() {
            return Ok(None);
        }
        let get = |k: &str| xs.read(&path(domid, k));
        Ok(Some(Record {
            uuid: get(key::UUID)?,
            unique_id: get(key::UNIQUE_ID)?,
            pid: get(key::PID)?,
            state: get(key::STATE)?,
            bdf: get(key::BDF)?,
            bar_size: get(key::BAR_SIZE)?,
            bar_base: get(key::BAR_BASE)?,
            ioservid: get(key::IOSERVID)?,
            control: get(key::CONTROL)?,
            restarts: get(key::RESTARTS)?,
            worker_pid: get(key::WORKER_PID)?,
            worker_start: get(key::WORKER_START)?,
        }))
    }

    /// The recorded unique id of the guest instance, if it parses (never
    /// 0: Xen gives no domain that id).
    pub fn unique_id(&self) -> Option<u64> {
        self.unique_id
            .as_deref()
            .and_then(|p| p.trim().parse().ok())
            .filter(|id| *id != 0)
    }

    /// The recorded pid (the supervisor's), if it parses.
    pub fn pid(&self) -> Option<u32> {
        self.pid.as_deref().and_then(|p| p.trim().parse().ok())
    }

    /// The recorded worker, if both its pid (never 0) and its start time
    /// parse: a worker recorded without its start time is never named.
    pub fn worker(&self) -> Option<ProcessIdentity> {
        let pid = self
            .worker_pid
            .as_deref()
            .and_then(|p| p.trim().parse().ok())
            .filter(|p| *p != 0)?;
        let start = self.worker_start.as_deref()?.trim().parse().ok()?;
        Some(ProcessIdentity { pid, start })
    }
}

/// Writes several keys of `domid`'s record atomically (one transaction,
/// retried on conflict).
pub fn write(xs: &Xenstore<'_>, domid: u16, kvs: &[(&str, &str)]) -> Result<()> {
    loop {
        let t = xs.transaction()?;
        for (k, v) in kvs {
            t.write(&path(domid, k), v)?;
        }
        if t.commit()? {
            return Ok(());
        }
    }
}

/// Sets `domid`'s `state` to `new` and returns the state it had, in one
/// transaction (retried on conflict): of several callers, exactly one sees
/// a given previous state.
pub fn take_state(xs: &Xenstore<'_>, domid: u16, new: &str) -> Result<Option<String>> {
    loop {
        let t = xs.transaction()?;
        let prev = t.read(&path(domid, key::STATE))?;
        t.write(&path(domid, key::STATE), new)?;
        if t.commit()? {
            return Ok(prev);
        }
    }
}

/// The xenstore node in which hvmloader reads the functions whose 64-bit
/// memory BARs are memory rather than registers (xen-patches 0012,
/// `HVM_XS_PCI_WB_BAR_DEVFNS`): it places them above 4 GiB, outside the
/// ranges it makes UC in the guest's MTRRs, so the guest can map our BAR
/// write-back.
pub fn wb_bar_hint_path(domid: u16) -> String {
    format!("/local/domain/{domid}/hvmloader/pci/wb-bar-devfns")
}

/// The value naming one function on bus 0 in [`wb_bar_hint_path`]: its
/// devfn (`dev << 3 | func`) in C syntax, as hvmloader parses it.
pub fn wb_bar_hint_value(dev: u8, func: u8) -> String {
    format!("{:#04x}", (u32::from(dev) << 3) | u32::from(func & 7))
}

/// Removes `domid`'s whole record (absent is success).
pub fn remove(xs: &Xenstore<'_>, domid: u16) -> Result<()> {
    xs.rm(&dir(domid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_contract() {
        assert_eq!(dir(7), "/local/domain/0/gpu-hostmem/7");
        assert_eq!(
            path(7, key::BAR_BASE),
            "/local/domain/0/gpu-hostmem/7/bar-base"
        );
    }

    #[test]
    fn wb_bar_hint_names_the_function_as_hvmloader_parses_it() {
        assert_eq!(
            wb_bar_hint_path(7),
            "/local/domain/7/hvmloader/pci/wb-bar-devfns"
        );
        assert_eq!(wb_bar_hint_value(7, 0), "0x38");
        assert_eq!(wb_bar_hint_value(0, 1), "0x01");
        assert_eq!(wb_bar_hint_value(31, 7), "0xff");
    }

    #[test]
    fn pid_parses_or_is_none() {
        let mut r = Record {
            pid: Some("123\n".into()),
            ..Record::default()
        };
        assert_eq!(r.pid(), Some(123));
        r.pid = Some("x".into());
        assert_eq!(r.pid(), None);
    }

    #[test]
    fn the_worker_is_named_only_with_its_start_time() {
        let mut r = Record {
            worker_pid: Some(" 456\n".into()),
            ..Record::default()
        };
        assert_eq!(r.worker(), None, "no start time: no identity");
        r.worker_start = Some("789".into());
        assert_eq!(
            r.worker(),
            Some(ProcessIdentity {
                pid: 456,
                start: 789
            })
        );
        r.worker_start = Some("-1".into());
        assert_eq!(r.worker(), None);
        r.worker_start = Some("789".into());
        r.worker_pid = Some("0".into());
        assert_eq!(r.worker(), None, "pid 0 names no process");
    }
}

/// Parses a canonical UUID (`8-4-4-4-12` hex digits) into 16 bytes.
pub fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let s = s.trim();
    let groups: Vec<&str> = s.split('-').collect();
    if groups.iter().map(|g| g.len()).collect::<Vec<_>>() != [8, 4, 4, 4, 12] {
        return None;
    }
    let hex: String = groups.concat();
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod uuid_tests {
    use super::parse_uuid;
    use gpu_hostmem_core::platform::DomainIdentity;

    #[test]
    fn uuid_round_trips_with_the_core_format() {
        let uid: [u8; 16] = core::array::from_fn(|i| (i as u8) * 17);
        let s = DomainIdentity::new(1, uid).uid_string();
        assert_eq!(parse_uuid(&s), Some(uid));
        assert_eq!(parse_uuid(&s.to_uppercase()), Some(uid));
    }

    #[test]
    fn malformed_uuids_are_refused() {
        for bad in [
            "",
            "00112233445566778899aabbccddeeff",
            "00112233-4455-6677-8899-aabbccddeefg",
            "00112233-4455-6677-8899-aabbccddee",
            "+0112233-4455-6677-8899-aabbccddeeff",
        ] {
            assert_eq!(parse_uuid(bad), None, "{bad}");
        }
    }
}
