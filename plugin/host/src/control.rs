//! The control socket of `gpu-hostmem-ioreqd`: a unix stream socket at
//! `/run/gpu-hostmem/<domid>.sock`. One request line, one reply line:
//! `status\n` -> the JSON of `gpu_hostmem_core::status::Status`.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Directory of the control sockets.
pub const CONTROL_DIR: &str = "/run/gpu-hostmem";
/// Test-only override of [`CONTROL_DIR`] (`test-env` builds only, see
/// [`gpu_hostmem_xen::testenv`]).
pub const CONTROL_DIR_ENV: &str = "GPU_HOSTMEM_RUN_DIR";

/// The status request line.
pub const REQUEST_STATUS: &str = "status";

/// Longest reply accepted (a status with 64k registrations fits).
pub const MAX_REPLY: usize = 16 << 20;

/// The directory of the control sockets ([`CONTROL_DIR`], or
/// `$GPU_HOSTMEM_RUN_DIR` for tests).
pub fn control_dir() -> PathBuf {
    gpu_hostmem_xen::testenv::var_os(CONTROL_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(CONTROL_DIR))
}

/// The control socket path of `domid`.
pub fn socket_path(domid: u16) -> PathBuf {
    control_dir().join(format!("{domid}.sock"))
}

/// The file where `domid`'s IOREQ server keeps the guest-written PCI
/// state for a restarted server (docs/interfaces.md section 4).
pub fn pci_state_path(domid: u16) -> PathBuf {
    control_dir().join(format!("{domid}.pci"))
}

/// Sends one request line and returns the reply line (without newline).
pub fn request(path: &Path, line: &str, timeout: Duration) -> io::Result<String> {
    let mut s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(line.as_bytes())?;
    s.write_all(b"\n")?;
    let mut reply = String::new();
    let mut r = BufReader::new(s.take(MAX_REPLY as u64));
    r.read_line(&mut reply)?;
    if !reply.ends_with('\n') {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "control socket closed before a full reply",
        ));
    }
    reply.pop();
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn request_reads_one_reply_line() {
        let dir = std::env::temp_dir().join(format!("gh-ctl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("1.sock");
        let _ = std::fs::remove_file(&path);
        let l = UnixListener::bind(&path).expect("bind");
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().expect("accept");
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).expect("read");
            assert_eq!(line, "status\n");
            (&s).write_all(b"{\"ok\":1}\n").expect("write");
        });
        let r = request(&path, REQUEST_STATUS, Duration::from_secs(5)).expect("request");
        assert_eq!(r, "{\"ok\":1}");
        t.join().expect("server thread");
        if gpu_hostmem_xen::testenv::var_os(CONTROL_DIR_ENV).is_none() {
            assert_eq!(socket_path(7), PathBuf::from("/run/gpu-hostmem/7.sock"));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn truncated_reply_is_an_error() {
        let dir = std::env::temp_dir().join(format!("gh-ctl2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("2.sock");
        let _ = std::fs::remove_file(&path);
        let l = UnixListener::bind(&path).expect("bind");
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().expect("accept");
            (&s).write_all(b"{\"partial").expect("write");
        });
        assert!(request(&path, REQUEST_STATUS, Duration::from_secs(5)).is_err());
        t.join().expect("server thread");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
