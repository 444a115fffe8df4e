//! `gpu-hostmem-renderer --socket-fd N`: serve the virtio-gpu device of one
//! guest on the connected `SOCK_SEQPACKET` socket N, registering blobs
//! through the privcmd file a backend gets from `gpu-hostmem backend DOMID
//! -- gpu-hostmem-renderer ...` (`GPU_HOSTMEM_PRIVCMD_FD`, restricted to
//! the guest and narrowed to registering memory, with
//! `GPU_HOSTMEM_UNIQUE_ID` and `GPU_HOSTMEM_DOMID`). It refuses to run as
//! root: it needs no privilege beyond that file. Once set up it serves
//! under a seccomp filter (`sandbox.rs`).

use std::os::fd::RawFd;
use std::os::unix::net::UnixDatagram;
use std::process::ExitCode;

use tracing::{error, info};
use tracing_subscriber::EnvFilter;

use gpu_hostmem_host::process::{take_inherited_fd, Inherited};
use gpu_hostmem_renderer::{serve, PrivcmdRegistrar, RendererLimits, RendererState};
use gpu_hostmem_xen::Privcmd;

fn env_num<T: std::str::FromStr>(name: &str) -> Result<T, String> {
    std::env::var(name)
        .map_err(|_| {
            format!("{name} is not set (start me with `gpu-hostmem backend DOMID -- ...`)")
        })?
        .parse()
        .map_err(|_| format!("{name} is not a number"))
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let socket_fd: RawFd = match args.as_slice() {
        [flag, n] if flag == "--socket-fd" => n.parse().map_err(|_| format!("bad fd {n}"))?,
        _ => return Err("usage: gpu-hostmem-renderer --socket-fd N".into()),
    };
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return Err(
            "refusing to run as root: start me with `gpu-hostmem backend DOMID --user USER -- ...`"
                .into(),
        );
    }
    let dom: u16 = env_num("GPU_HOSTMEM_DOMID")?;
    let unique_id: u64 = env_num("GPU_HOSTMEM_UNIQUE_ID")?;
    let privcmd_fd: RawFd = env_num("GPU_HOSTMEM_PRIVCMD_FD")?;
    let privcmd = Privcmd::from_fd(take_inherited_fd(privcmd_fd, Inherited::Any)?);
    let sock = UnixDatagram::from(take_inherited_fd(socket_fd, Inherited::SeqpacketSocket)?);
    let reg = PrivcmdRegistrar::new(privcmd, dom, unique_id);
    let mut state = RendererState::new(reg, RendererLimits::default());
    gpu_hostmem_renderer::sandbox::enter()?;
    info!(dom, unique_id, "serving the device (seccomp filter on)");
    let r = serve(&sock, &mut state);
    let s = state.stats();
    info!(
        registered = s.registered,
        unregistered = s.unregistered,
        stamped_pages = s.stamped_pages,
        refused = s.refused,
        "done"
    );
    r.map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    // Set by the supervisor, which starts us with a cleared environment:
    // its own filter (the configured level).
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("GPU_HOSTMEM_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            eprintln!("gpu-hostmem-renderer: {e}");
            ExitCode::FAILURE
        }
    }
}
