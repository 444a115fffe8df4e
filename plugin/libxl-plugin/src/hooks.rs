//! The create and destroy hooks, in safe Rust.

use crate::abi::{GpuHostmemDomain, GPU_HOSTMEM_PLUGIN_ABI_VERSION};
use gpu_hostmem_core::pci::{MAX_BAR_SIZE, MIN_BAR_SIZE};
use gpu_hostmem_core::platform::DomainIdentity;
use gpu_hostmem_host::process;
use gpu_hostmem_host::record::{self, key, state, Record};
use gpu_hostmem_host::teardown::{self, is_our_ioreqd, TeardownError, Timeouts};
use gpu_hostmem_xen::{XenError, XenctrlLib, Xenstore, XenstoreLib};
use std::fmt;
use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Where the IOREQ server is installed.
pub const IOREQD_PATH: &str = "/usr/lib/xen/gpu-hostmem/gpu-hostmem-ioreqd";
/// Test-only override of [`IOREQD_PATH`] (`test-env` builds only).
pub const IOREQD_ENV: &str = "GPU_HOSTMEM_IOREQD";
/// Directory of the per-guest log files.
pub const LOG_DIR: &str = "/var/log/xen";
/// Test-only override of [`LOG_DIR`] (`test-env` builds only).
pub const LOG_DIR_ENV: &str = "GPU_HOSTMEM_LOG_DIR";
/// How long create waits for `state = running`.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
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

/// The IOREQ server command line for `d`.
pub fn ioreqd_command(d: &Domain) -> Command {
    let mut cmd = Command::new(ioreqd_path());
    cmd.arg("--domid")
        .arg(d.domid.to_string())
        .arg("--uuid")
        .arg(d.uuid_string());
    if d.bar_size_mib != 0 {
        cmd.arg("--bar-size-mib").arg(d.bar_size_mib.to_string());
    }
    cmd
}

/// Create hook: spawn the IOREQ server detached and wait until it reports
/// `running`; on any failure leave nothing behind.
pub fn create(d: &Domain) -> Result<(), HookError> {
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
    record::write(
        &xs,
        d.domid,
        &[(key::UUID, &d.uuid_string()), (key::STATE, state::STARTING)],
    )?;
    match spawn_and_wait(&xs, d) {
        Ok(()) => Ok(()),
        Err(e) => {
            if let Err(t) = teardown::teardown(d.domid, Some(d.uuid), Timeouts::default()) {
                return Err(HookError::new(e.errno, format!("{e}; cleanup: {t}")));
            }
            Err(e)
        }
    }
}

fn spawn_and_wait(xs: &Xenstore<'_>, d: &Domain) -> Result<(), HookError> {
    let log = log_path(d.domid);
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).map_err(|e| {
            HookError::new(
                e.raw_os_error().unwrap_or(libc::EIO),
                format!("create {}: {e}", dir.display()),
            )
        })?;
    }
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| {
            HookError::new(
                e.raw_os_error().unwrap_or(libc::EIO),
                format!("open {}: {e}", log.display()),
            )
        })?;
    let err = out.try_clone().map_err(|e| {
        HookError::new(
            e.raw_os_error().unwrap_or(libc::EIO),
            format!("dup log fd: {e}"),
        )
    })?;
    let mut cmd = ioreqd_command(d);
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let mut child = process::spawn_detached(&mut cmd).map_err(|e| {
        HookError::new(
            e.errno().unwrap_or(libc::EIO),
            format!("cannot start {}: {e}", ioreqd_path().display()),
        )
    })?;
    let _ = xs.write(&record::path(d.domid, key::PID), &child.id().to_string());
    let r = wait_running(xs, d.domid, &mut child, START_TIMEOUT);
    if r.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    r.map_err(|e| HookError::new(e.errno, format!("{e} (see {})", log.display())))
}

/// Waits until `domid`'s record says `running`, the server reports a
/// failure, exits, or `timeout` passes.
pub fn wait_running(
    xs: &Xenstore<'_>,
    domid: u16,
    child: &mut Child,
    timeout: Duration,
) -> Result<(), HookError> {
    let start = Instant::now();
    let state_key = record::path(domid, key::STATE);
    loop {
        let st = xs.read(&state_key)?;
        match st.as_deref() {
            Some(state::RUNNING) => return Ok(()),
            Some(s) if s.starts_with(state::FAILED_PREFIX) => {
                return Err(HookError::new(libc::EIO, format!("gpu-hostmem-ioreqd {s}")));
            }
            _ => {}
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(HookError::new(
                libc::EIO,
                format!(
                    "gpu-hostmem-ioreqd exited ({status}) before it was running (state {})",
                    st.as_deref().unwrap_or("absent")
                ),
            ));
        }
        if start.elapsed() >= timeout {
            return Err(HookError::new(
                libc::ETIMEDOUT,
                format!("gpu-hostmem-ioreqd not running after {timeout:?}"),
            ));
        }
        sleep(Duration::from_millis(50));
    }
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
    fn command_line_names_the_domain_and_bar_size() {
        let args = |d: &Domain| -> Vec<String> {
            ioreqd_command(d)
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(
            args(&dom(0)),
            [
                "--domid",
                "9",
                "--uuid",
                "abababab-abab-abab-abab-abababababab"
            ]
        );
        assert_eq!(args(&dom(64))[4..], ["--bar-size-mib", "64"]);
        assert_eq!(
            log_path(9).file_name().and_then(|n| n.to_str()),
            Some("gpu-hostmem-9.log")
        );
    }
}
