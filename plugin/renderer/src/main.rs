//! `gpu-hostmem-renderer --socket-fd N`: serve the virtio-gpu device of one
//! guest on the connected `SOCK_SEQPACKET` socket N, registering blobs
//! through the privcmd file a backend gets from `gpu-hostmem backend DOMID
//! -- gpu-hostmem-renderer ...` (`GPU_HOSTMEM_PRIVCMD_FD`, restricted to
//! the guest and narrowed to registering memory, with
//! `GPU_HOSTMEM_UNIQUE_ID` and `GPU_HOSTMEM_DOMID`). It refuses to run as
//! root: it needs no privilege beyond that file. `--backend venus` loads
//! libvirglrenderer and initialises venus and its Vulkan allocator first
//! (`virgl.rs`); `test`, the default, serves the test-only capset. Once set up it serves under its
//! backend's seccomp filter (`sandbox.rs`).

use std::os::fd::RawFd;
use std::os::unix::net::UnixDatagram;
use std::process::ExitCode;

use tracing::{error, info};
use tracing_subscriber::EnvFilter;

use gpu_hostmem_host::process::{take_inherited_fd, Inherited};
use gpu_hostmem_renderer::backend::{Backend, TestBackend};
use gpu_hostmem_renderer::sandbox::{self, BackendKind, Policy};
use gpu_hostmem_renderer::virgl::{VirglBackend, SONAME};
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

const USAGE: &str = "usage: gpu-hostmem-renderer --socket-fd N [--backend test|venus]";

/// `--socket-fd N [--backend NAME]`, in that order.
fn parse_args(args: &[String]) -> Result<(RawFd, BackendKind), String> {
    let (fd, kind) = match args {
        [flag, n] if flag == "--socket-fd" => (n, "test"),
        [flag, n, b, kind] if flag == "--socket-fd" && b == "--backend" => (n, kind.as_str()),
        _ => return Err(USAGE.into()),
    };
    let fd = fd.parse().map_err(|_| format!("bad fd {fd}"))?;
    Ok((fd, kind.parse()?))
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (socket_fd, kind) = parse_args(&args)?;
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
    match kind {
        BackendKind::Test => serve_with(TestBackend, kind, reg, &sock, dom, unique_id),
        BackendKind::Venus => {
            // Loaded and initialised (the render server forked, the Vulkan
            // allocator loaded) before the filter, which then allows only
            // what serving needs.
            let b = VirglBackend::new(SONAME).map_err(|e| format!("venus backend: {e}"))?;
            serve_with(b, kind, reg, &sock, dom, unique_id)
        }
    }
}

/// Serves `sock` with `backend` under `kind`'s seccomp filter.
fn serve_with<B: Backend>(
    backend: B,
    kind: BackendKind,
    reg: PrivcmdRegistrar,
    sock: &UnixDatagram,
    dom: u16,
    unique_id: u64,
) -> Result<(), String> {
    let mut state = RendererState::with_backend(reg, backend, RendererLimits::default());
    let policy = Policy::for_this_process(kind)?;
    sandbox::enter(&policy)?;
    info!(
        dom,
        unique_id,
        backend = kind.name(),
        render_server = ?policy.render_server(),
        "serving the device (seccomp filter on)"
    );
    let r = serve(sock, &mut state);
    let s = state.stats();
    info!(
        registered = s.registered,
        unregistered = s.unregistered,
        stamped_pages = s.stamped_pages,
        submits = s.submits,
        fences = s.fences,
        fence_events = s.fence_events,
        refused = s.refused,
        "done"
    );
    // The backend goes here (venus: virgl_renderer_cleanup kills and reaps
    // the render server, which the filter allows).
    drop(state);
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
