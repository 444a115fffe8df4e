//! `gpu-hostmem`: the operator's view of one guest.
//!
//! - `gpu-hostmem status DOMID [--json]`: the xenstore record, the IOREQ
//!   server's own status (control socket: BAR address and size,
//!   registrations, lent pages, faults, retries, and Xen's counters of
//!   how those RETRY answers ended) and the kernel's view
//!   (`IOCTL_PRIVCMD_HOSTMEM_QUERY`). Each source is optional: what cannot
//!   be reached is reported, not fatal.
//! - `gpu-hostmem teardown DOMID`: what the plugin's destroy hook does,
//!   forced and idempotent: stop the server, revoke every lent page, destroy
//!   a leftover ioreq server, remove the record. Prints each step.
//! - `gpu-hostmem check-config [FILE]`: parse and check a configuration file
//!   (default `/etc/xen/gpu-hostmem.yaml`) as the IOREQ server would, so that
//!   a mistake shows before `xl create`.
//! - `gpu-hostmem backend DOMID [--user USER] -- COMMAND [ARG...]`: run a
//!   backend with only a backend's rights: a privcmd fd restricted to the
//!   guest and narrowed to registering memory (`IOCTL_PRIVCMD_HOSTMEM_BACKEND`),
//!   inherited as `GPU_HOSTMEM_PRIVCMD_FD` with the guest's unique id in
//!   `GPU_HOSTMEM_UNIQUE_ID`, as USER (default nobody) with no capability.

use clap::{Parser, Subcommand};
use gpu_hostmem_core::limits::bar_paging_kib;
use gpu_hostmem_core::platform::HostMemQuery;
use gpu_hostmem_core::status::Status;
use gpu_hostmem_host::control::{self, REQUEST_STATUS};
use gpu_hostmem_host::identity::Found;
use gpu_hostmem_host::record::Record;
use gpu_hostmem_host::teardown::{self, Timeouts};
use gpu_hostmem_xen::{Privcmd, XenctrlLib, XenstoreLib};
use serde::Serialize;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// gpu-hostmem operator CLI.
#[derive(Debug, Parser)]
#[command(name = "gpu-hostmem", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Show a guest's gpu-hostmem state.
    Status {
        /// Guest domain id.
        #[arg(value_parser = clap::value_parser!(u16).range(1..0x7ff0))]
        domid: u16,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Force the cleanup of a guest's gpu-hostmem state (idempotent).
    Teardown {
        /// Guest domain id.
        #[arg(value_parser = clap::value_parser!(u16).range(1..0x7ff0))]
        domid: u16,
    },
    /// Check a configuration file as the IOREQ server reads it.
    CheckConfig {
        /// The file.
        #[arg(default_value = gpu_hostmem_core::config::DEFAULT_PATH)]
        file: PathBuf,
    },
    /// Run a backend with a backend's rights only: a privcmd fd narrowed to
    /// registering memory for the guest, as an unprivileged user.
    Backend {
        /// Guest domain id.
        #[arg(value_parser = clap::value_parser!(u16).range(1..0x7ff0))]
        domid: u16,
        /// User to run as: NAME or UID:GID (no supplementary group).
        #[arg(long, default_value = "nobody")]
        user: String,
        /// The backend and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<OsString>,
    },
}

/// `backend`: the narrowed fd and the guest's unique id, then the drop.
/// Returns only on failure (the exec replaces the process).
fn run_backend(domid: u16, user: &str, command: &[OsString]) -> String {
    let ids = match gpu_hostmem_host::users::resolve(user) {
        Ok(Some(ids)) => ids,
        Ok(None) => {
            return "--user root would give the backend every right: name another user".into()
        }
        Err(e) => return e,
    };
    // The instance the memory is for: the domain that has the domid now.
    let unique_id = match XenctrlLib::load().map_err(|e| e.to_string()).and_then(|l| {
        l.open()
            .and_then(|xc| xc.unique_id(domid))
            .map_err(|e| e.to_string())
    }) {
        Ok(Some(id)) => id,
        Ok(None) => return format!("no domain {domid}"),
        Err(e) => return format!("domain {domid}: {e}"),
    };
    let fd: OwnedFd = match Privcmd::open().and_then(|p| {
        p.restrict(domid)?;
        p.narrow_to_backend()?;
        Ok(p.into_fd())
    }) {
        Ok(f) => f,
        Err(e) => return format!("privcmd for domain {domid}: {e}"),
    };
    if let Err(e) = gpu_hostmem_host::users::drop_to(ids.0, ids.1) {
        return format!("drop to {user}: {e}");
    }
    let Some((prog, args)) = command.split_first() else {
        return "no command".into();
    };
    let raw = fd.as_raw_fd();
    let mut cmd = std::process::Command::new(prog);
    cmd.args(args)
        .env("GPU_HOSTMEM_PRIVCMD_FD", raw.to_string())
        .env("GPU_HOSTMEM_UNIQUE_ID", unique_id.to_string())
        .env("GPU_HOSTMEM_DOMID", domid.to_string());
    // SAFETY: fcntl(2) in the child before exec, on an fd open there; it
    // only clears close-on-exec so that the backend inherits the fd.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(raw, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let e = cmd.exec();
    format!("exec {}: {e}", prog.to_string_lossy())
}

/// `check-config`: the error, or a summary of the settings in effect.
fn check_config(file: &std::path::Path) -> Result<String, String> {
    let cfg = gpu_hostmem_core::config::Config::load(file, true).map_err(|e| e.to_string())?;
    let (vendor, device) = match cfg.device {
        gpu_hostmem_core::config::Device::Hostmem => (cfg.vendor_id, cfg.device_id),
        gpu_hostmem_core::config::Device::VirtioGpu => (0x1af4, 0x1050),
    };
    let vg = &cfg.virtio_gpu;
    let renderer = match &vg.renderer {
        Some(p) => format!(
            ", renderer {} as {}{}{}, backend {}",
            p.display(),
            vg.renderer_user,
            if vg.renderer_groups.is_empty() {
                String::new()
            } else {
                format!(" with groups {}", vg.renderer_groups.join(","))
            },
            if vg.test_capset {
                ", test capset offered"
            } else {
                ""
            },
            vg.backend.name(),
        ),
        None => String::new(),
    };
    Ok(format!(
        "{}: valid (device {}, pci_slot {}, ids {:04x}:{:04x}, fault_around_kib {}, run_as {}{renderer})",
        file.display(),
        cfg.device.name(),
        cfg.pci_slot,
        vendor,
        device,
        cfg.fault_around_kib,
        cfg.run_as
    ))
}

/// The xenstore record, as shown.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
struct RecordView {
    uuid: Option<String>,
    pid: Option<String>,
    state: Option<String>,
    bdf: Option<String>,
    bar_size: Option<String>,
    bar_base: Option<String>,
    ioservid: Option<String>,
    control: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    restarts: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    worker_pid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    worker_start: Option<String>,
    /// Whether `pid` still runs our supervisor for the domain (None: no
    /// pid recorded). Not a key: seen by `status` through a pidfd.
    #[serde(skip_serializing_if = "Option::is_none")]
    supervisor_running: Option<bool>,
    /// Whether the recorded worker (pid and start time) still runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    worker_running: Option<bool>,
}

impl From<Record> for RecordView {
    fn from(r: Record) -> Self {
        RecordView {
            uuid: r.uuid,
            pid: r.pid,
            state: r.state,
            bdf: r.bdf,
            bar_size: r.bar_size,
            bar_base: r.bar_base,
            ioservid: r.ioservid,
            control: r.control,
            restarts: r.restarts,
            worker_pid: r.worker_pid,
            worker_start: r.worker_start,
            supervisor_running: None,
            worker_running: None,
        }
    }
}

/// Everything `status` found; each part or the reason it is missing.
#[derive(Debug, Serialize)]
struct Report {
    domid: u16,
    xenstore: Option<RecordView>,
    xenstore_error: Option<String>,
    server: Option<Status>,
    server_error: Option<String>,
    kernel: Option<HostMemQuery>,
    kernel_error: Option<String>,
    /// Xen's paging pool of the domain, in KiB.
    xen_paging_kib: Option<u64>,
    xen_error: Option<String>,
}

impl Report {
    fn found_anything(&self) -> bool {
        self.xenstore.is_some()
            || self.server.is_some()
            || self
                .kernel
                .as_ref()
                .is_some_and(|k| k.lent_pages > 0 || !k.regions.is_empty())
    }

    fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "gpu-hostmem state of domain {}", self.domid);
        let _ = writeln!(s, "\nxenstore /local/domain/0/gpu-hostmem/{}:", self.domid);
        match (&self.xenstore, &self.xenstore_error) {
            (Some(r), _) => {
                for (k, v) in [
                    ("uuid", &r.uuid),
                    ("pid", &r.pid),
                    ("state", &r.state),
                    ("bdf", &r.bdf),
                    ("bar-size", &r.bar_size),
                    ("bar-base", &r.bar_base),
                    ("ioservid", &r.ioservid),
                    ("control", &r.control),
                ] {
                    let _ = writeln!(s, "  {k:<10} {}", v.as_deref().unwrap_or("-"));
                }
                if let Some(p) = &r.worker_pid {
                    let _ = writeln!(s, "  {:<10} {p}", "worker-pid");
                }
                if r.supervisor_running == Some(false) && r.worker_running == Some(true) {
                    let _ = writeln!(
                        s,
                        "  supervisor gone: the worker serves on, but a crash of it is no longer \
                         restarted (xl destroy stops it)"
                    );
                }
                if let Some(n) = &r.restarts {
                    let _ = writeln!(
                        s,
                        "  {:<10} {n} (the IOREQ server died and was restarted; see the log)",
                        "restarts"
                    );
                }
            }
            (None, Some(e)) => {
                let _ = writeln!(s, "  unavailable: {e}");
            }
            (None, None) => {
                let _ = writeln!(s, "  no record");
            }
        }
        let _ = writeln!(s, "\nIOREQ server:");
        match (&self.server, &self.server_error) {
            (Some(st), _) => {
                for line in st.to_text().lines() {
                    let _ = writeln!(s, "  {line}");
                }
            }
            (None, e) => {
                let _ = writeln!(s, "  not reachable: {}", e.as_deref().unwrap_or("-"));
            }
        }
        let _ = writeln!(s, "\nkernel (privcmd):");
        match (&self.kernel, &self.kernel_error) {
            (Some(k), _) => {
                let _ = writeln!(s, "  lent pages  {}", k.lent_pages);
                let _ = writeln!(s, "  registrations {}", k.regions.len());
                for r in &k.regions {
                    let _ = writeln!(
                        s,
                        "    id {:<6} offset {:#x} size {:#x} lent {} owner pid {}",
                        r.id,
                        r.offset,
                        r.size,
                        opt(r.lent_pages),
                        opt(r.owner_pid)
                    );
                }
            }
            (None, e) => {
                let _ = writeln!(s, "  unavailable: {}", e.as_deref().unwrap_or("-"));
            }
        }
        let _ = writeln!(s, "\nXen:");
        match (self.xen_paging_kib, &self.xen_error) {
            (Some(kib), _) => {
                // What the p2m of a fully lent BAR takes from the pool.
                let bar = self
                    .xenstore
                    .as_ref()
                    .and_then(|r| r.bar_size.as_deref())
                    .and_then(|b| b.parse::<u64>().ok())
                    .map(|b| {
                        let need = bar_paging_kib(b);
                        format!(" (a fully lent BAR needs {need} KiB of it)")
                    })
                    .unwrap_or_default();
                let _ = writeln!(s, "  paging memory {kib} KiB{bar}");
            }
            (None, e) => {
                let _ = writeln!(s, "  unavailable: {}", e.as_deref().unwrap_or("-"));
            }
        }
        s
    }
}

/// A value the kernel may not have given, or `-`.
fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// The record, and whether the processes it names still run (each
/// checked through a pidfd: the supervisor by its command line, the
/// worker by its pid and start time).
fn view_with_processes(r: Record, domid: u16) -> RecordView {
    let supervisor_running = r.pid().map(|p| teardown::is_our_ioreqd(p, domid));
    let worker_running = r.worker().map(|w| matches!(w.find(), Ok(Found::Same(_))));
    RecordView {
        supervisor_running,
        worker_running,
        ..RecordView::from(r)
    }
}

fn gather(domid: u16) -> Report {
    let (xenstore, xenstore_error) = match XenstoreLib::load()
        .and_then(|lib| lib.open().and_then(|xs| Record::read(&xs, domid)))
    {
        Ok(r) => (r.map(|r| view_with_processes(r, domid)), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let sock = xenstore
        .as_ref()
        .and_then(|r| r.control.clone())
        .map(PathBuf::from)
        .unwrap_or_else(|| control::socket_path(domid));
    let (server, server_error) =
        match control::request(&sock, REQUEST_STATUS, Duration::from_secs(5)) {
            Ok(line) => match serde_json::from_str::<Status>(&line) {
                Ok(st) => (Some(st), None),
                Err(e) => (
                    None,
                    Some(format!("{}: bad reply: {e}: {line}", sock.display())),
                ),
            },
            Err(e) => (None, Some(format!("{}: {e}", sock.display()))),
        };
    let (kernel, kernel_error) = match Privcmd::open().and_then(|p| p.hostmem_query(domid)) {
        Ok(q) => (Some(q), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let (xen_paging_kib, xen_error) = match XenctrlLib::load()
        .and_then(|lib| lib.open().and_then(|xc| xc.paging_mempool_size(domid)))
    {
        Ok(bytes) => (Some(bytes >> 10), None),
        Err(e) => (None, Some(e.to_string())),
    };
    Report {
        domid,
        xenstore,
        xenstore_error,
        server,
        server_error,
        kernel,
        kernel_error,
        xen_paging_kib,
        xen_error,
    }
}

fn main() -> ExitCode {
    match Cli::parse().cmd {
        Cmd::Status { domid, json } => {
            let r = gather(domid);
            if json {
                match serde_json::to_string_pretty(&r) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("gpu-hostmem: cannot encode the report: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", r.to_text());
            }
            if r.found_anything() {
                ExitCode::SUCCESS
            } else {
                if !json {
                    eprintln!("gpu-hostmem: no gpu-hostmem state found for domain {domid}");
                }
                ExitCode::FAILURE
            }
        }
        Cmd::CheckConfig { file } => match check_config(&file) {
            Ok(s) => {
                println!("{s}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("gpu-hostmem check-config: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Backend {
            domid,
            user,
            command,
        } => {
            let e = run_backend(domid, &user, &command);
            eprintln!("gpu-hostmem backend {domid}: {e}");
            ExitCode::FAILURE
        }
        Cmd::Teardown { domid } => match teardown::teardown(domid, None, Timeouts::default()) {
            Ok(out) => {
                for a in &out.actions {
                    println!("{a}");
                }
                println!("domain {domid}: gpu-hostmem state torn down");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("gpu-hostmem teardown {domid}: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_takes_a_command_and_never_runs_it_as_root() {
        let cli = Cli::try_parse_from(["gpu-hostmem", "backend", "5", "--", "b", "-d", "5"])
            .expect("parse");
        let Cmd::Backend {
            domid,
            user,
            command,
        } = cli.cmd
        else {
            panic!("not backend");
        };
        assert_eq!((domid, user.as_str(), command.len()), (5, "nobody", 3));
        assert!(Cli::try_parse_from(["gpu-hostmem", "backend", "5"]).is_err());
        let e = run_backend(5, "root", &command);
        assert!(e.contains("every right"), "{e}");
        let e = run_backend(5, "0:0", &command);
        assert!(e.contains("uid or gid 0"), "{e}");
    }

    #[test]
    fn check_config_accepts_the_example_and_names_the_bad_key() {
        let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../examples/gpu-hostmem.yaml");
        let ok = check_config(&example).expect("the example is valid");
        assert!(ok.contains("valid") && ok.contains("run_as nobody"), "{ok}");
        let dir = std::env::temp_dir().join(format!("gh-check-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let bad = dir.join("bad.yaml");
        std::fs::write(&bad, "limits:\n  fault_burst: lots\n").expect("write");
        let e = check_config(&bad).unwrap_err();
        assert!(e.contains("limits.fault_burst"), "{e}");
        let gpu = dir.join("gpu.yaml");
        std::fs::write(&gpu, "device: virtio-gpu\n").expect("write");
        let ok = check_config(&gpu).expect("valid");
        assert!(
            ok.contains("device virtio-gpu") && ok.contains("ids 1af4:1050"),
            "{ok}"
        );
        std::fs::write(&bad, "device: virtio-gpu\ndevice_id: 0x10f1\n").expect("write");
        let e = check_config(&bad).unwrap_err();
        assert!(
            e.contains("device_id") && e.contains("device: hostmem"),
            "{e}"
        );
        let venus = dir.join("venus.yaml");
        std::fs::write(
            &venus,
            "device: virtio-gpu\nvirtio_gpu:\n  renderer: /usr/lib/gpu-hostmem/bin/gpu-hostmem-renderer\n  backend: venus\n",
        )
        .expect("write");
        let ok = check_config(&venus).expect("valid");
        assert!(ok.contains("as nobody, backend venus"), "{ok}");
        std::fs::write(
            &venus,
            "device: virtio-gpu\nvirtio_gpu:\n  renderer: /r\n  renderer_groups: [kvm, render]\n  backend: venus\n",
        )
        .expect("write");
        let ok = check_config(&venus).expect("valid");
        assert!(
            ok.contains("as nobody with groups kvm,render, backend venus"),
            "{ok}"
        );
        std::fs::write(
            &bad,
            "device: virtio-gpu\nvirtio_gpu:\n  renderer: /r\n  backend: venu\n",
        )
        .expect("write");
        let e = check_config(&bad).unwrap_err();
        assert!(
            e.contains("virtio_gpu.backend") && e.contains("venus"),
            "{e}"
        );
        let e = check_config(&dir.join("missing.yaml")).unwrap_err();
        assert!(e.contains("cannot read"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
    use gpu_hostmem_core::platform::RetryStats;
    use gpu_hostmem_core::status::Counters;

    #[test]
    fn arguments_are_checked() {
        assert!(Cli::try_parse_from(["gpu-hostmem", "status", "3", "--json"]).is_ok());
        assert!(Cli::try_parse_from(["gpu-hostmem", "teardown", "3"]).is_ok());
        assert!(Cli::try_parse_from(["gpu-hostmem", "status", "0"]).is_err());
        assert!(Cli::try_parse_from(["gpu-hostmem", "teardown", "32752"]).is_err());
        assert!(Cli::try_parse_from(["gpu-hostmem", "status"]).is_err());
    }

    fn report() -> Report {
        Report {
            domid: 4,
            xenstore: Some(RecordView {
                state: Some("running".into()),
                bar_base: Some("0xe0000000".into()),
                bar_size: Some("1073741824".into()),
                ..RecordView::default()
            }),
            xenstore_error: None,
            server: Some(Status {
                domid: 4,
                unique_id: 4,
                state: "running".into(),
                bdf: "0000:00:05.0".into(),
                bar_base: Some(0xe000_0000),
                bar_size: 64 << 20,
                ioservid: Some(1),
                registrations: vec![],
                ledger_lent_pages: 512,
                kernel_lent_pages: Some(512),
                counters: Counters {
                    bar_faults: 3,
                    retries: 3,
                    ..Counters::default()
                },
                xen_retry: Some(RetryStats {
                    completed: 3,
                    resent: 0,
                    refused: 0,
                }),
                xen_retry_error: None,
                device: None,
            }),
            server_error: None,
            kernel: None,
            kernel_error: Some("open /dev/xen/privcmd failed".into()),
            xen_paging_kib: Some(4136),
            xen_error: None,
        }
    }

    #[test]
    fn text_shows_every_source_or_why_it_is_missing() {
        let t = report().to_text();
        assert!(t.contains("state      running"), "{t}");
        // Xen's RETRY counters beside the server's own.
        assert!(
            t.contains("  faults      3 (lends 0, retries 3")
                && t.contains("  Xen RETRY   completed 3 (honoured), resent 0, refused 0"),
            "{t}"
        );
        assert!(t.contains("0xe0000000"), "{t}");
        assert!(
            t.contains("unavailable: open /dev/xen/privcmd failed"),
            "{t}"
        );
        assert!(
            t.contains("paging memory 4136 KiB (a fully lent BAR needs 2056 KiB of it)"),
            "{t}"
        );
        assert!(report().found_anything());
    }

    /// Issue 19: a worker that outlived its supervisor is shown so.
    #[test]
    fn text_and_json_say_the_supervisor_is_gone() {
        let supervised = report().to_text();
        assert!(!supervised.contains("supervisor gone"), "{supervised}");
        let mut r = report();
        if let Some(x) = r.xenstore.as_mut() {
            x.worker_pid = Some("812".into());
            x.worker_start = Some("4242".into());
            x.supervisor_running = Some(true);
            x.worker_running = Some(true);
        }
        let t = r.to_text();
        assert!(t.contains("  worker-pid 812"), "{t}");
        assert!(!t.contains("supervisor gone"), "both run: {t}");
        if let Some(x) = r.xenstore.as_mut() {
            x.supervisor_running = Some(false);
        }
        let t = r.to_text();
        assert!(
            t.contains("  supervisor gone: the worker serves on, but a crash of it is no longer restarted (xl destroy stops it)"),
            "{t}"
        );
        let v: serde_json::Value = serde_json::to_value(&r).expect("json");
        assert_eq!(v["xenstore"]["supervisor_running"], false);
        assert_eq!(v["xenstore"]["worker_running"], true);
        assert_eq!(v["xenstore"]["worker_pid"], "812");
    }

    #[test]
    fn paging_memory_of_a_small_bar_counts_its_page_table() {
        // A 1 MiB BAR lies inside one 2 MiB range: fully lent it needs one
        // L1 page, one L2 and one L3 page, 12 KiB.
        let mut r = report();
        if let Some(x) = r.xenstore.as_mut() {
            x.bar_size = Some((1u64 << 20).to_string());
        }
        let t = r.to_text();
        assert!(t.contains("(a fully lent BAR needs 12 KiB of it)"), "{t}");
    }

    #[test]
    fn json_carries_the_server_status() {
        let v: serde_json::Value = serde_json::to_value(report()).expect("json");
        assert_eq!(v["server"]["bar_base"], 0xe000_0000u64);
        assert_eq!(v["server"]["counters"]["retries"], 3);
        assert_eq!(v["server"]["xen_retry"]["completed"], 3);
        assert_eq!(v["server"]["xen_retry"]["refused"], 0);
        assert_eq!(v["xenstore"]["state"], "running");
        assert!(v["kernel"].is_null());
    }

    #[test]
    fn kernel_view_is_the_core_region_type_with_lent_pages_first() {
        let mut r = report();
        r.kernel = Some(HostMemQuery {
            lent_pages: 16,
            regions: vec![gpu_hostmem_core::platform::RegionInfo {
                id: 9,
                offset: 0x10_0000,
                size: 0x1_0000,
                lent_pages: Some(16),
                owner_pid: Some(77),
            }],
        });
        // tests/e2e/scenarios/hostmem-common.sh reads `"kernel": {
        // "lent_pages": N` from this JSON with sed.
        let j = serde_json::to_string_pretty(&r).expect("json");
        let one_line: String = j.split_whitespace().collect();
        assert!(one_line.contains("\"kernel\":{\"lent_pages\":16,"), "{j}");
        let t = r.to_text();
        assert!(
            t.contains("id 9      offset 0x100000 size 0x10000 lent 16 owner pid 77"),
            "{t}"
        );
    }

    #[test]
    fn nothing_found_on_a_machine_without_xen() {
        // No Xen here: no record, no socket for an unused domid, no privcmd.
        let r = gather(0x7fe0);
        assert!(!r.found_anything(), "{r:?}");
        assert!(r.server_error.is_some());
        assert!(r.kernel_error.is_some() || r.kernel.is_some());
    }
}
