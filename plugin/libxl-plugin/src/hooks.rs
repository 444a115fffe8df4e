//! The create and destroy hooks, in safe Rust.

use crate::abi::{GpuHostmemDomain, GPU_HOSTMEM_PLUGIN_ABI_VERSION};
use gpu_hostmem_core::pci::{MAX_BAR_SIZE, MIN_BAR_SIZE};
use gpu_hostmem_core::platform::DomainIdentity;
use gpu_hostmem_host::record::{self, key, state, Record};
use gpu_hostmem_host::teardown::{self, is_our_ioreqd, TeardownError, Timeouts};
use gpu_hostmem_xen::{XenError, XenctrlLib, XenstoreLib};
use std::fmt;
use std::path::PathBuf;

/// Where the IOREQ server is installed.
pub const IOREQD_PATH: &str = "/usr/lib/xen/gpu-hostmem/gpu-hostmem-ioreqd";
/// Test-only override of [`IOREQD_PATH`] (`test-env` builds only).
pub const IOREQD_ENV: &str = "GPU_HOSTMEM_IOREQD";
/// Directory of the per-guest log files.
pub const LOG_DIR: &str = "/var/log/xen";
/// Test-only override of [`LOG_DIR`] (`test-env` builds only).
pub const LOG_DIR_ENV: &str = "GPU_HOSTMEM_LOG_DIR";
/// Longest absolute xenstore path (`XENSTORE_ABS_PATH_MAX`).
const XENSTORE_ABS_PATH_MAX: usize = 3072;
/// First domid Xen reserves (`DOMID_FIRST_RESERVED`).
const DOMID_FIRST_RESERVED: u32 = 0x7ff0;

/// A hook failure: a positive errno and a reason for libxl's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookError {
    pub errno: i32,
    pub msg: String,
}

impl HookError {
    fn new(errno: i32, msg: impl Into<String>) -> Self {
        Self {
            errno,
            msg: msg.into(),
        }
    }

    fn xen(e: XenError) -> Self {
        Self::new(e.as_errno(), e.to_string())
    }
}

impl fmt::Display for HookError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl From<XenError> for HookError {
    fn from(e: XenError) -> Self {
        Self::xen(e)
    }
}

/// A checked `struct gpu_hostmem_domain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Domain {
    pub domid: u16,
    pub uuid: [u8; 16],
    /// 0: the configuration's default.
    pub bar_size_mib: u64,
    pub max_vcpus: u32,
}

impl Domain {
    /// Checks the caller's struct (ABI version, flags, domid, BAR size).
    pub fn from_raw(raw: Option<&GpuHostmemDomain>) -> Result<Self, HookError> {
        let inval = |m: String| HookError::new(libc::EINVAL, m);
        let raw = raw.ok_or_else(|| inval("NULL struct gpu_hostmem_domain".into()))?;
        if raw.abi_version != GPU_HOSTMEM_PLUGIN_ABI_VERSION {
            return Err(inval(format!(
                "caller has ABI version {}, this plugin {}",
                raw.abi_version, GPU_HOSTMEM_PLUGIN_ABI_VERSION
            )));
        }
        if raw.flags != 0 {
            return Err(inval(format!("flags {:#x}: must be 0", raw.flags)));
        }
        if raw.domid == 0 || raw.domid >= DOMID_FIRST_RESERVED {
            return Err(inval(format!(
                "domid {}: must be 1 .. {}",
                raw.domid,
                DOMID_FIRST_RESERVED - 1
            )));
        }
        let mib = raw.bar_size_mib;
        let ok = mib == 0
            || (mib.is_power_of_two() && (MIN_BAR_SIZE >> 20..=MAX_BAR_SIZE >> 20).contains(&mib));
        if !ok {
            return Err(inval(format!(
                "bar_size_mib {mib}: must be 0 or a power of two from {} to {}",
                MIN_BAR_SIZE >> 20,
                MAX_BAR_SIZE >> 20
            )));
        }
        Ok(Domain {
            domid: raw.domid as u16,
            uuid: raw.uuid,
            bar_size_mib: mib,
            max_vcpus: raw.max_vcpus,
        })
    }

    fn uuid_string(&self) -> String {
        DomainIdentity::new(self.domid, self.uuid).uid_string()
    }
}

fn ioreqd_path() -> PathBuf {
    gpu_hostmem_xen::testenv::var_os(IOREQD_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(IOREQD_PATH))
}

/// The log file of `domid`'s IOREQ server.
pub fn log_path(domid: u16) -> PathBuf {
    let dir = gpu_hostmem_xen::testenv::var_os(LOG_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(LOG_DIR));
    dir.join(format!("gpu-hostmem-{domid}.log"))
}

/// The IOREQ server libxl is to execute for a guest (the create hook's
/// answer: `struct gpu_hostmem_server`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// The program.
    pub path: PathBuf,
    /// Its arguments, `argv[0]` first.
    pub argv: Vec<String>,
    /// The file for its stdout and stderr.
    pub log: PathBuf,
}

/// The IOREQ server command line for `d`; it writes its readiness into
/// `ready_path`, which libxl watches.
pub fn server(d: &Domain, ready_path: &str) -> Server {
    let path = ioreqd_path();
    let mut argv = vec![
        path.display().to_string(),
        "--domid".into(),
        d.domid.to_string(),
        "--uuid".into(),
        d.uuid_string(),
    ];
    if d.bar_size_mib != 0 {
        argv.push("--bar-size-mib".into());
        argv.push(d.bar_size_mib.to_string());
    }
    argv.push("--ready-path".into());
    argv.push(ready_path.to_owned());
    Server {
        path,
        argv,
        log: log_path(d.domid),
    }
}

/// Checks the xenstore path libxl chose for the server's readiness: an
/// absolute path, as xenstore takes it.
fn check_ready_path(p: &str) -> Result<(), HookError> {
    let ok = p.starts_with('/')
        && p.len() <= XENSTORE_ABS_PATH_MAX
        && p.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(HookError::new(
            libc::EINVAL,
            format!("ready path {p:?}: must be an absolute xenstore path"),
        ))
    }
}

/// Create hook: clear what an earlier domain with this domid left, record
/// that the calling process (which libxl then execs the server in) serves
/// the guest, and describe the server. It neither forks nor waits: libxl
/// starts the server and watches `ready_path` (libxl__spawn_spawn); if the
/// server fails or is late, libxl destroys the domain, which calls
/// [`destroy`] with this record.
pub fn create(d: &Domain, ready_path: &str) -> Result<Server, HookError> {
    check_ready_path(ready_path)?;
    let lib = XenstoreLib::load()?;
    let xs = lib.open()?;
    if let Some(rec) = Record::read(&xs, d.domid)? {
        // "Already served" only for a record of the instance that has the
        // domid now, by Xen's unique id (the UUID is not unique: xl keeps it
        // across a reboot, users may set it), whose process is still our
        // server (checked through a pidfd, so a reused pid never counts).
        let xc = XenctrlLib::load()?;
        let current = xc.open()?.unique_id(d.domid)?;
        let same = current.is_some() && rec.unique_id() == current;
        let live = rec.pid().is_some_and(|p| is_our_ioreqd(p, d.domid));
        if same && live {
            return Err(HookError::new(
                libc::EEXIST,
                format!("a gpu-hostmem server already runs for domain {}", d.domid),
            ));
        }
        // Left by a crash, or by an earlier domain with this domid: clean
        // it with the identity it records.
        teardown::teardown(d.domid, None, Timeouts::default())
            .map_err(|e| HookError::new(libc::EBUSY, format!("stale gpu-hostmem state: {e}")))?;
    }
    let srv = server(d, ready_path);
    if let Some(dir) = srv.log.parent() {
        std::fs::create_dir_all(dir).map_err(|e| {
            HookError::new(
                e.raw_os_error().unwrap_or(libc::EIO),
                format!("create {}: {e}", dir.display()),
            )
        })?;
    }
    // The pid is this process's: libxl execs the server in it. Teardown
    // signals it only once it runs the server (its command line).
    record::write(
        &xs,
        d.domid,
        &[
            (key::UUID, &d.uuid_string()),
            (key::PID, &std::process::id().to_string()),
            (key::STATE, state::STARTING),
        ],
    )?;
    Ok(srv)
}

/// Destroy hook: the shared teardown, refusing a record of another domain.
pub fn destroy(d: &Domain) -> Result<(), HookError> {
    match teardown::teardown(d.domid, Some(d.uuid), Timeouts::default()) {
        Ok(_) => Ok(()),
        Err(e @ TeardownError::OtherDomain { .. }) => {
            Err(HookError::new(libc::EEXIST, e.to_string()))
        }
        Err(TeardownError::Xen(e)) => Err(HookError::xen(e)),
        Err(e @ TeardownError::Incomplete { .. }) => Err(HookError::new(libc::EIO, e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dom(mib: u64) -> Domain {
        Domain {
            domid: 9,
            uuid: [0xab; 16],
            bar_size_mib: mib,
            max_vcpus: 1,
        }
    }

    #[test]
    fn command_line_names_the_domain_bar_size_and_ready_path() {
        let ready = "/libxl/9/gpu-hostmem/state";
        let s = server(&dom(0), ready);
        assert_eq!(s.argv[0], s.path.display().to_string());
        assert_eq!(
            s.argv[1..],
            [
                "--domid",
                "9",
                "--uuid",
                "abababab-abab-abab-abab-abababababab",
                "--ready-path",
                ready
            ]
        );
        assert_eq!(
            server(&dom(64), ready).argv[5..],
            ["--bar-size-mib", "64", "--ready-path", ready]
        );
        assert_eq!(s.log, log_path(9));
        assert_eq!(
            log_path(9).file_name().and_then(|n| n.to_str()),
            Some("gpu-hostmem-9.log")
        );
    }

    #[test]
    fn ready_path_must_be_an_absolute_xenstore_path() {
        assert!(check_ready_path("/libxl/9/gpu-hostmem/state").is_ok());
        for bad in ["", "libxl/9", "/a b", "/a\nb"] {
            let e = check_ready_path(bad).expect_err(bad);
            assert_eq!(e.errno, libc::EINVAL, "{bad}");
        }
        assert!(check_ready_path(&format!("/{}", "x".repeat(XENSTORE_ABS_PATH_MAX))).is_err());
    }
}
