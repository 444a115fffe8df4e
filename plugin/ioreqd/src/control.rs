//! Server side of the control socket (`gpu_hostmem_host::control` has the
//! path and the client): answers `status` with the JSON of the core's
//! status snapshot. Served from the event loop, never blocking it for long.

use gpu_hostmem_core::status::Status;
use gpu_hostmem_host::control::{control_dir, socket_path, REQUEST_STATUS};
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tracing::{debug, warn};

/// Longest request line.
const MAX_REQUEST: u64 = 4096;
/// How long one client may hold the loop.
const CLIENT_TIMEOUT: Duration = Duration::from_millis(200);

/// The listening socket; its file is removed on drop.
#[derive(Debug)]
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlSocket {
    /// Binds `/run/gpu-hostmem/<domid>.sock` (the directory is 0700).
    pub fn bind(domid: u16) -> io::Result<Self> {
        let dir = control_dir();
        fs::create_dir_all(&dir)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        Self::bind_at(&socket_path(domid))
    }

    /// Binds at `path`, replacing a stale socket file.
    pub fn bind_at(path: &Path) -> io::Result<Self> {
        match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        Ok(Self {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// Answers every pending client; `status` builds the reply on demand.
    pub fn serve(&self, mut status: impl FnMut() -> Status) {
        loop {
            match self.listener.accept() {
                Ok((s, _)) => {
                    if let Err(e) = answer(s, &mut status) {
                        debug!(error = %e, "control client dropped");
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!(error = %e, "control socket accept failed");
                    return;
                }
            }
        }
    }
}

fn answer(s: UnixStream, status: &mut impl FnMut() -> Status) -> io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    s.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new((&s).take(MAX_REQUEST)).read_line(&mut line)?;
    let reply = match line.trim() {
        REQUEST_STATUS => serde_json::to_string(&status())
            .unwrap_or_else(|e| format!("{{\"error\":\"cannot encode status: {e}\"}}")),
        other => {
            debug!(request = other, "unknown control request refused");
            serde_json::json!({ "error": format!("unknown request {other:?}; known: status") })
                .to_string()
        }
    };
    (&s).write_all(reply.as_bytes())?;
    (&s).write_all(b"\n")
}

impl AsFd for ControlSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpu_hostmem_core::status::Counters;
    use gpu_hostmem_host::control::request;

    fn sample() -> Status {
        Status {
            domid: 4,
            unique_id: 1,
            state: "running".into(),
            bdf: "0000:00:05.0".into(),
            bar_base: Some(0xe000_0000),
            bar_size: 1 << 30,
            ioservid: Some(1),
            registrations: vec![],
            ledger_lent_pages: 512,
            kernel_lent_pages: Some(512),
            counters: Counters::default(),
            xen_retry: None,
            xen_retry_error: None,
            device: None,
        }
    }

    #[test]
    fn status_request_gets_the_json_snapshot_and_file_goes_on_drop() {
        let dir = std::env::temp_dir().join(format!("gh-ioreqd-ctl-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("4.sock");
        let ctl = ControlSocket::bind_at(&path).expect("bind");
        let p = path.clone();
        let client = std::thread::spawn(move || {
            let a = request(&p, "status", Duration::from_secs(5)).expect("status");
            let b = request(&p, "reboot", Duration::from_secs(5)).expect("reply");
            (a, b)
        });
        while !client.is_finished() {
            ctl.serve(sample);
            std::thread::sleep(Duration::from_millis(5));
        }
        let (a, b) = client.join().expect("client");
        let got: Status = serde_json::from_str(&a).expect("json status");
        assert_eq!(got, sample());
        assert!(b.contains("unknown request"), "{b}");
        drop(ctl);
        assert!(!path.exists(), "socket file removed on drop");
        let _ = fs::remove_dir_all(&dir);
    }
}
