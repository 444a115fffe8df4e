//! gpu-hostmem-ioreqd: the IOREQ server of one guest.
//!
//! `gpu-hostmem-ioreqd --domid N --uuid U [--config PATH] [--bar-size-mib M]
//! [--ready-path XSPATH]`
//!
//! Started by libxl (libxl__spawn_spawn, with the command line the plugin's
//! create hook gives, stdio to `/var/log/xen/gpu-hostmem-<domid>.log`)
//! before the guest is unpaused. It runs in the foreground: libxl detaches
//! it once it wrote `running` into XSPATH, or fails the creation when it
//! writes `failed: <reason>` there, exits, or is late.
//! The process libxl starts is the supervisor (root, supervisor.rs):
//! it keeps the xenstore record and runs the server as a worker child
//! (daemon.rs), which sets up in explicit stages, drops its privileges
//! (sandbox.rs), reports `running` to the supervisor (report.rs), serves
//! ioreqs until SIGTERM or the domain's death, then revokes everything and
//! destroys the ioreq server; the supervisor then removes the record.

mod control;
mod daemon;
mod logging;
mod qemu_slots;
mod report;
mod sandbox;
mod supervisor;

use clap::Parser;
use gpu_hostmem_core::config::{Config, DEFAULT_PATH};
use std::path::PathBuf;
use std::process::ExitCode;

/// The IOREQ server of one gpu-hostmem guest.
#[derive(Debug, Parser)]
#[command(name = "gpu-hostmem-ioreqd", version, about)]
pub struct Args {
    /// Guest domain id.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..0x7ff0))]
    pub domid: u16,
    /// Guest domain handle (UUID): the server refuses any other domain.
    #[arg(long, value_parser = parse_uuid_arg)]
    pub uuid: [u8; 16],
    /// Configuration file.
    #[arg(long, default_value = DEFAULT_PATH)]
    pub config: PathBuf,
    /// BAR size in MiB (xl.cfg gpu_hostmem_size, which libxl always
    /// passes); without it, DEFAULT_BAR_SIZE_MIB (libxl's default).
    #[arg(long)]
    pub bar_size_mib: Option<u64>,
    /// The xenstore node libxl watches for startup: the supervisor writes
    /// `running` there once the server serves the guest, or
    /// `failed: <reason>`, once (gpu_hostmem_plugin.h).
    #[arg(long, value_parser = parse_ready_path)]
    pub ready_path: Option<String>,
    /// Internal: run as the worker of a supervisor (the process the plugin
    /// starts), which restarts it if it dies.
    #[arg(long, hide = true)]
    pub worker: bool,
    /// Internal (with --worker): take over the ioreq server a worker that
    /// died left, instead of creating one.
    #[arg(long, hide = true, requires = "worker")]
    pub attach: bool,
    /// Internal (with --worker): Xen's unique id of the guest instance the
    /// supervisor serves; the worker refuses any other instance of the
    /// domid, and re-attaches only to a record of this one.
    #[arg(long, hide = true, requires = "worker")]
    pub unique_id: Option<u64>,
    /// Internal (with --attach): the ioreq server to take over, from the
    /// record of this instance (the supervisor read it).
    #[arg(long, hide = true, requires = "attach")]
    pub ioservid: Option<u16>,
    /// Internal (with --worker): the fd of the connected socket to the
    /// renderer process the supervisor started (device: virtio-gpu with a
    /// `virtio_gpu.renderer`).
    #[arg(long, hide = true, requires = "worker")]
    pub renderer_fd: Option<i32>,
}

fn parse_uuid_arg(s: &str) -> Result<[u8; 16], String> {
    gpu_hostmem_host::record::parse_uuid(s)
        .ok_or_else(|| format!("{s:?} is not a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)"))
}

fn parse_ready_path(s: &str) -> Result<String, String> {
    if s.starts_with('/') && s.len() > 1 && s.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(s.to_owned())
    } else {
        Err(format!("{s:?} is not an absolute xenstore path"))
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let explicit = args.config.as_os_str() != DEFAULT_PATH;
    let cfg = match Config::load(&args.config, explicit) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gpu-hostmem-ioreqd: {e}");
            supervisor::setup_failed(&args, &format!("configuration: {e}"));
            return ExitCode::FAILURE;
        }
    };
    logging::init(&cfg.log);
    if !args.worker {
        return supervisor::run(&args, &cfg);
    }
    // The worker reports to its supervisor, which keeps the record: it
    // holds no xenstore connection of its own (report.rs).
    let reporter = match report::Reporter::inherited() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(domid = args.domid, error = %e, "no report socket from the supervisor");
            return ExitCode::FAILURE;
        }
    };
    match daemon::run(&args, &cfg, &reporter) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(domid = args.domid, error = %e, "gpu-hostmem-ioreqd failed");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_validated() {
        let ok = Args::try_parse_from([
            "x",
            "--domid",
            "3",
            "--uuid",
            "00112233-4455-6677-8899-aabbccddeeff",
        ])
        .expect("parse");
        assert_eq!(ok.domid, 3);
        assert_eq!(ok.uuid[15], 0xff);
        assert_eq!(ok.config, PathBuf::from(DEFAULT_PATH));
        assert_eq!(ok.ready_path, None);
        let with = Args::try_parse_from([
            "x",
            "--domid",
            "3",
            "--uuid",
            "00112233-4455-6677-8899-aabbccddeeff",
            "--ready-path",
            "/libxl/3/gpu-hostmem/state",
        ])
        .expect("parse");
        assert_eq!(
            with.ready_path.as_deref(),
            Some("/libxl/3/gpu-hostmem/state")
        );
        for bad in [
            vec![
                "x",
                "--domid",
                "0",
                "--uuid",
                "00112233-4455-6677-8899-aabbccddeeff",
            ],
            vec![
                "x",
                "--domid",
                "32752",
                "--uuid",
                "00112233-4455-6677-8899-aabbccddeeff",
            ],
            vec!["x", "--domid", "3", "--uuid", "not-a-uuid"],
            vec!["x", "--domid", "3"],
            vec![
                "x",
                "--domid",
                "3",
                "--uuid",
                "00112233-4455-6677-8899-aabbccddeeff",
                "--ready-path",
                "libxl/3",
            ],
        ] {
            assert!(Args::try_parse_from(&bad).is_err(), "{bad:?}");
        }
    }
}
