//! The per-guest xenstore record (docs/interfaces.md section 4):
//! `/local/domain/0/gpu-hostmem/<domid>/{uuid,pid,state,bdf,bar-size,
//! bar-base,ioservid,control}`.

use crate::error::Result;
use crate::xenstore::Xenstore;

/// Root of every record.
pub const ROOT: &str = "/local/domain/0/gpu-hostmem";

/// Key names.
pub mod key {
    pub const UUID: &str = "uuid";
    pub const PID: &str = "pid";
    pub const STATE: &str = "state";
    pub const BDF: &str = "bdf";
    pub const BAR_SIZE: &str = "bar-size";
    pub const BAR_BASE: &str = "bar-base";
    pub const IOSERVID: &str = "ioservid";
    pub const CONTROL: &str = "control";
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
    pub pid: Option<String>,
    pub state: Option<String>,
    pub bdf: Option<String>,
    pub bar_size: Option<String>,
    pub bar_base: Option<String>,
    pub ioservid: Option<String>,
    pub control: Option<String>,
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
            pid: get(key::PID)?,
            state: get(key::STATE)?,
            bdf: get(key::BDF)?,
            bar_size: get(key::BAR_SIZE)?,
            bar_base: get(key::BAR_BASE)?,
            ioservid: get(key::IOSERVID)?,
            control: get(key::CONTROL)?,
        }))
    }

    /// The recorded pid, if it parses.
    pub fn pid(&self) -> Option<u32> {
        self.pid.as_deref().and_then(|p| p.trim().parse().ok())
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
    fn pid_parses_or_is_none() {
        let mut r = Record {
            pid: Some("123\n".into()),
            ..Record::default()
        };
        assert_eq!(r.pid(), Some(123));
        r.pid = Some("x".into());
        assert_eq!(r.pid(), None);
    }
}
