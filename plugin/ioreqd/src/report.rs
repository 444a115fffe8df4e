//! What the worker tells its supervisor, which keeps the xenstore record.
//!
//! The worker parses guest-controlled requests and runs unprivileged; a
//! xenstore connection of dom0 would let it rewrite any node of any domain
//! (xenstored cannot narrow a dom0 connection). So it holds none once set
//! up: it reports over a socket it inherits from the supervisor (fd
//! [`REPORT_FD`]), one line per event, and the supervisor, which keeps
//! root, checks each line and writes the record. Keys the supervisor knows
//! itself (the domain's handle and unique id, its own pid, the control
//! socket path, the worker's own pid and start time) are never taken from
//! the worker.
//!
//! A report that cannot be delivered because the supervisor is gone (it
//! was killed) is not an error: the worker serves on without it (see
//! supervisor.rs), and [`Reporter`] says once that the supervisor is gone.
//!
//! Nor does a supervisor that stops reading (stopped, or stuck in a slow
//! xenstore write) stall the worker: the worker's end never blocks. What
//! the socket cannot take yet waits in the worker and goes out with the
//! next report or [`Reporter::flush`] (the event loop calls it on every
//! round), BAR moves coalesced to the latest while it waits, so the guest,
//! which moves its BAR at will, can neither stop its own service through
//! the reports nor make the worker's memory grow.

use gpu_hostmem_core::ioreq::Sbdf;
use std::cell::{Cell, RefCell};
use std::fmt;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// The fd on which a worker finds its report socket.
pub const REPORT_FD: i32 = 3;

/// Longest line accepted; longer input is cut there.
pub const MAX_LINE: usize = 1024;

/// One event of the worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// Set up and serving: the ioreq server, the PCI function, the BAR.
    Running {
        /// Xen's ioreq server id.
        ioservid: u16,
        /// The emulated function.
        sbdf: Sbdf,
        /// BAR size in bytes.
        bar_size: u64,
    },
    /// The guest placed the BAR here (`None`: unmapped).
    BarBase(Option<u64>),
    /// Tearing down.
    Stopping,
    /// Setup or service failed; the reason, for the operator.
    Failed(String),
}

impl fmt::Display for Report {
    /// The line sent (without its newline).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Report::Running {
                ioservid,
                sbdf,
                bar_size,
            } => write!(f, "running {ioservid} {:#x} {bar_size}", sbdf.to_u32()),
            Report::BarBase(None) => f.write_str("bar-base unmapped"),
            Report::BarBase(Some(b)) => write!(f, "bar-base {b:#x}"),
            Report::Stopping => f.write_str("stopping"),
            Report::Failed(why) => write!(f, "failed {}", printable(why)),
        }
    }
}

/// `s` with control characters replaced (one line, nothing a terminal or
/// xenstore reader would interpret), cut at [`MAX_LINE`] bytes.
fn printable(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > MAX_LINE {
        let mut cut = MAX_LINE;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

fn hex_u64(s: &str) -> Option<u64> {
    u64::from_str_radix(s.strip_prefix("0x")?, 16).ok()
}

impl Report {
    /// Parses one line from a worker, which the supervisor does not trust:
    /// anything but the forms above is refused.
    pub fn parse(line: &str) -> Result<Report, String> {
        let bad = || format!("unrecognised report {:?}", printable(line));
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        match word {
            "running" => {
                let f: Vec<&str> = rest.split(' ').collect();
                let [id, sbdf, size] = f[..] else {
                    return Err(bad());
                };
                let sbdf = hex_u64(sbdf)
                    .and_then(|v| u32::try_from(v).ok())
                    .map(Sbdf::from_u32)
                    .ok_or_else(bad)?;
                Ok(Report::Running {
                    ioservid: id.parse().map_err(|_| bad())?,
                    sbdf,
                    bar_size: size.parse().map_err(|_| bad())?,
                })
            }
            "bar-base" if rest == "unmapped" => Ok(Report::BarBase(None)),
            "bar-base" => Ok(Report::BarBase(Some(hex_u64(rest).ok_or_else(bad)?))),
            "stopping" if rest.is_empty() => Ok(Report::Stopping),
            "failed" if !rest.is_empty() => Ok(Report::Failed(printable(rest))),
            _ => Err(bad()),
        }
    }
}

/// Reports applied per [`BUDGET_WINDOW`]: a worker sends a handful in its
/// life, plus one per BAR move, which the guest controls.
pub const BUDGET: u32 = 32;
/// The window of [`BUDGET`].
pub const BUDGET_WINDOW: Duration = Duration::from_secs(1);

/// How many reports the supervisor applies, so that neither a guest moving
/// its BAR in a loop nor a compromised worker can turn into a flood of
/// xenstore writes.
#[derive(Debug)]
pub struct Budget {
    start: Instant,
    used: u32,
}

impl Budget {
    /// A full budget from `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            start: now,
            used: 0,
        }
    }

    /// Takes one report's worth at `now`; false when the window's budget
    /// is spent.
    pub fn take(&mut self, now: Instant) -> bool {
        if now.saturating_duration_since(self.start) >= BUDGET_WINDOW {
            self.start = now;
            self.used = 0;
        }
        if self.used >= BUDGET {
            return false;
        }
        self.used += 1;
        true
    }
}

/// What became of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// It is on its way to the supervisor.
    Delivered,
    /// The socket is full (the supervisor is not reading): the report
    /// waits in the worker and goes out with a later
    /// [`Reporter::send`] or [`Reporter::flush`], a BAR move replaced by a
    /// later one.
    Queued,
    /// The supervisor is gone (its end of the socket is closed): nobody
    /// will read it, and nobody will restart the worker.
    SupervisorGone,
}

/// Reports the worker holds while the socket is full.
#[derive(Debug, Default)]
struct Backlog {
    /// Bytes of reports other than BAR moves (a handful in a worker's
    /// life: running, stopping, failed), in order, not yet written.
    bytes: Vec<u8>,
    /// The latest BAR move not yet written: only the last one matters.
    bar: Option<Report>,
}

/// The worker's end: sends reports without ever blocking, and tells
/// whether the supervisor is still there.
#[derive(Debug)]
pub struct Reporter {
    sock: UnixStream,
    gone: Cell<bool>,
    backlog: RefCell<Backlog>,
}

impl Reporter {
    /// Uses `sock`, the worker's end of the report socket, which it makes
    /// non-blocking.
    pub fn new(sock: UnixStream) -> io::Result<Self> {
        sock.set_nonblocking(true)?;
        Ok(Self {
            sock,
            gone: Cell::new(false),
            backlog: RefCell::new(Backlog::default()),
        })
    }

    /// The socket the supervisor left on [`REPORT_FD`]. Refused unless
    /// that fd is open and a socket (a worker started by hand, or with the
    /// fd taken by something else).
    pub fn inherited() -> io::Result<Self> {
        // SAFETY: fstat(2) on an fd number only fills `st`, a valid local.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstat(REPORT_FD, &mut st) } < 0 {
            return Err(io::Error::last_os_error());
        }
        if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("fd {REPORT_FD} is not the supervisor's report socket"),
            ));
        }
        // SAFETY: REPORT_FD is open (fstat succeeded) and nothing else in
        // this process owns it: the supervisor put it there for us alone,
        // and it is taken once, at start.
        let fd = unsafe { OwnedFd::from_raw_fd(REPORT_FD) };
        // SAFETY: fcntl(2) on an fd we own; no pointer.
        unsafe { libc::fcntl(REPORT_FD, libc::F_SETFD, libc::FD_CLOEXEC) };
        Self::new(UnixStream::from(fd))
    }

    /// Sends one report, or queues it when the socket is full
    /// ([`Sent::Queued`]); never blocks. A supervisor that is gone is no
    /// error ([`Sent::SupervisorGone`]); any other failure is.
    pub fn send(&self, r: &Report) -> io::Result<Sent> {
        {
            let mut b = self.backlog.borrow_mut();
            if let Report::BarBase(_) = r {
                b.bar = Some(r.clone());
            } else {
                // An earlier BAR move goes first, as it happened.
                if let Some(bar) = b.bar.take() {
                    b.bytes.extend(line(&bar));
                }
                b.bytes.extend(line(r));
            }
        }
        self.flush()
    }

    /// Writes what waits, as far as the socket takes it without blocking:
    /// [`Sent::Delivered`] when nothing is left, [`Sent::Queued`] when
    /// something is.
    pub fn flush(&self) -> io::Result<Sent> {
        if self.gone.get() {
            return Ok(Sent::SupervisorGone);
        }
        let mut b = self.backlog.borrow_mut();
        loop {
            // The ordered reports first, then the latest BAR move.
            if b.bytes.is_empty() {
                match b.bar.take() {
                    Some(bar) => b.bytes = line(&bar),
                    None => return Ok(Sent::Delivered),
                }
            }
            match (&self.sock).write(&b.bytes) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    b.bytes.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Sent::Queued),
                Err(e) if is_hang_up(&e) => {
                    self.gone.set(true);
                    *b = Backlog::default();
                    return Ok(Sent::SupervisorGone);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// [`Reporter::flush`], waiting up to `limit` for the socket to take
    /// what is left: for the last report of a worker that is about to
    /// exit. Gives up (the reports are lost, [`Sent::Queued`]) rather
    /// than wait longer on a supervisor that does not read.
    pub fn flush_within(&self, limit: Duration) -> io::Result<Sent> {
        let until = Instant::now() + limit;
        loop {
            let sent = self.flush()?;
            let left = until.saturating_duration_since(Instant::now());
            if sent != Sent::Queued || left.is_zero() {
                return Ok(sent);
            }
            let mut p = libc::pollfd {
                fd: self.sock.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            };
            let ms = libc::c_int::try_from(left.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
            // SAFETY: one valid pollfd on a socket we own.
            unsafe { libc::poll(&mut p, 1, ms) };
        }
    }

    /// Whether the supervisor is gone: a report found its end closed, or
    /// the socket says so now (a hang-up; the supervisor never writes to
    /// the worker). Never blocks.
    pub fn supervisor_gone(&self) -> bool {
        if self.gone.get() {
            return true;
        }
        let mut p = libc::pollfd {
            fd: self.sock.as_raw_fd(),
            events: 0,
            revents: 0,
        };
        // SAFETY: one valid pollfd on a socket we own; a zero timeout.
        let rc = unsafe { libc::poll(&mut p, 1, 0) };
        if rc > 0 && p.revents & (libc::POLLHUP | libc::POLLERR) != 0 {
            self.gone.set(true);
        }
        self.gone.get()
    }
}

/// The bytes of `r` on the socket: its line and the newline.
fn line(r: &Report) -> Vec<u8> {
    format!("{r}\n").into_bytes()
}

/// Whether a failed send means the other end is closed.
fn is_hang_up(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::NotConnected
    )
}

/// The supervisor's end: splits what arrived into lines. Reads never
/// block; a line longer than [`MAX_LINE`] is cut there and its rest
/// dropped.
#[derive(Debug, Default)]
pub struct Lines {
    buf: Vec<u8>,
    skipping: bool,
}

impl Lines {
    /// Adds bytes read from the socket; returns the complete lines.
    pub fn push(&mut self, data: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        for &b in data {
            if b == b'\n' {
                if !self.skipping || !self.buf.is_empty() {
                    out.push(String::from_utf8_lossy(&self.buf).into_owned());
                }
                self.buf.clear();
                self.skipping = false;
            } else if self.buf.len() < MAX_LINE {
                self.buf.push(b);
            } else {
                self.skipping = true;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_report_survives_the_line() {
        for r in [
            Report::Running {
                ioservid: 3,
                sbdf: Sbdf {
                    seg: 0,
                    bus: 0,
                    dev: 5,
                    func: 0,
                },
                bar_size: 2 << 30,
            },
            Report::BarBase(None),
            Report::BarBase(Some(0x1_0000_0000)),
            Report::Stopping,
            Report::Failed("ioreq server: CreateServer: EINVAL".into()),
        ] {
            assert_eq!(Report::parse(&r.to_string()), Ok(r.clone()), "{r}");
        }
    }

    #[test]
    fn a_hostile_worker_gets_nothing_else_through() {
        for bad in [
            "",
            "running",
            "running 3 0x28",
            "running 70000 0x28 4096",
            "running 3 0x1_0000_0000 4096",
            "running 3 0x28 4096 extra",
            "running 3 40 4096",
            "bar-base",
            "bar-base 4096",
            "bar-base 0xzz",
            "stopping now",
            "failed",
            "state running",
            "set /local/domain/0/x y",
        ] {
            assert!(Report::parse(bad).is_err(), "{bad:?}");
        }
        // A reason cannot smuggle a second line or control characters.
        let r = Report::Failed("a\nstopping\u{1b}[2J".into()).to_string();
        assert!(!r.contains('\n') && !r.contains('\u{1b}'), "{r:?}");
        assert_eq!(
            Report::parse(&r),
            Ok(Report::Failed("a stopping [2J".into()))
        );
    }

    #[test]
    fn the_budget_bounds_reports_per_window() {
        let t0 = Instant::now();
        let mut b = Budget::new(t0);
        for _ in 0..BUDGET {
            assert!(b.take(t0));
        }
        assert!(!b.take(t0 + Duration::from_millis(999)), "spent");
        assert!(b.take(t0 + BUDGET_WINDOW), "a new window");
    }

    /// A killed supervisor is no error for the worker: its reports then
    /// go nowhere, and it can tell the supervisor is gone without sending.
    #[test]
    fn a_supervisor_that_is_gone_is_seen_and_is_no_error() {
        let (theirs, ours) = UnixStream::pair().expect("pair");
        let r = Reporter::new(theirs).expect("reporter");
        assert!(!r.supervisor_gone(), "the supervisor's end is open");
        assert_eq!(r.send(&Report::Stopping).expect("send"), Sent::Delivered);
        assert!(!r.supervisor_gone(), "data in flight is no hang-up");
        drop(ours);
        assert!(r.supervisor_gone(), "its end closed: a hang-up");
        assert_eq!(
            r.send(&Report::BarBase(None)).expect("no error"),
            Sent::SupervisorGone
        );

        // Seen by a send first (no poll before it).
        let (theirs, ours) = UnixStream::pair().expect("pair");
        let r = Reporter::new(theirs).expect("reporter");
        drop(ours);
        assert_eq!(
            r.send(&Report::Stopping).expect("no error"),
            Sent::SupervisorGone
        );
        assert!(r.supervisor_gone());
    }

    /// Runs `f` on another thread; fails the test (instead of hanging it)
    /// if `f` has not returned within 30 s.
    fn must_return<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(Duration::from_secs(30))
            .expect("the worker's reporter blocked")
    }

    /// Reads everything the socket holds now.
    fn drain(sock: &mut UnixStream, lines: &mut Lines, got: &mut Vec<String>) {
        use std::io::Read;
        sock.set_nonblocking(true).expect("nonblocking");
        let mut buf = [0u8; 65536];
        loop {
            match sock.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => got.extend(lines.push(&buf[..n])),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// A supervisor that stops reading (stopped, stuck in xenstore) must
    /// not stall the worker, whose guest moves its BAR at will: sends never
    /// block, BAR moves queue as the latest only, other reports keep their
    /// order, and everything left goes out once the supervisor reads.
    #[test]
    fn a_supervisor_that_does_not_read_never_blocks_the_worker() {
        const MOVES: u64 = 200_000;
        let (theirs, mut ours) = UnixStream::pair().expect("pair");
        let (r, queued) = must_return(move || {
            let r = Reporter::new(theirs).expect("reporter");
            let mut queued = 0u64;
            for i in 0..MOVES {
                let sent = r.send(&Report::BarBase(Some(i << 32))).expect("send");
                queued += u64::from(sent == Sent::Queued);
            }
            (r, queued)
        });
        assert!(
            queued > 0,
            "the socket never filled: the test proves nothing"
        );
        assert_eq!(
            r.send(&Report::Stopping).expect("send"),
            Sent::Queued,
            "stopping waits behind the full socket"
        );

        let mut lines = Lines::default();
        let mut got = Vec::new();
        for _ in 0..1000 {
            drain(&mut ours, &mut lines, &mut got);
            if r.flush().expect("flush") == Sent::Delivered {
                break;
            }
        }
        drain(&mut ours, &mut lines, &mut got);
        assert_eq!(r.flush().expect("flush"), Sent::Delivered);

        let parsed: Vec<Report> = got
            .iter()
            .map(|l| Report::parse(l).expect("a whole report"))
            .collect();
        assert!(
            (parsed.len() as u64) < MOVES,
            "moves queued while full were coalesced ({} lines)",
            parsed.len()
        );
        let (last, bars) = parsed.split_last().expect("lines");
        assert_eq!(*last, Report::Stopping, "stopping comes last");
        assert_eq!(
            bars.last(),
            Some(&Report::BarBase(Some((MOVES - 1) << 32))),
            "the latest BAR move is never lost"
        );
        let mut prev = None;
        for b in bars {
            let Report::BarBase(Some(v)) = b else {
                panic!("not a BAR move: {b}");
            };
            assert!(prev < Some(*v), "BAR moves in the order they happened");
            prev = Some(*v);
        }
    }

    /// A worker about to exit waits a bounded time for its last report,
    /// then gives it up rather than hang on a supervisor that never reads.
    #[test]
    fn the_last_report_is_given_up_after_the_limit() {
        let (theirs, _ours) = UnixStream::pair().expect("pair");
        let sent = must_return(move || {
            let r = Reporter::new(theirs).expect("reporter");
            let mut i = 0u64;
            while r.send(&Report::BarBase(Some(i << 32))).expect("send") != Sent::Queued {
                i += 1;
            }
            r.send(&Report::Stopping).expect("send");
            r.flush_within(Duration::from_millis(50)).expect("flush")
        });
        assert_eq!(sent, Sent::Queued);
    }

    #[test]
    fn lines_are_split_and_bounded() {
        let mut l = Lines::default();
        assert_eq!(l.push(b"stop"), Vec::<String>::new());
        assert_eq!(
            l.push(b"ping\nbar-base unmapped\n"),
            ["stopping", "bar-base unmapped"]
        );
        let mut long = vec![b'x'; MAX_LINE + 100];
        long.push(b'\n');
        long.extend_from_slice(b"stopping\n");
        let got = l.push(&long);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].len(), MAX_LINE, "cut at the bound");
        assert_eq!(got[1], "stopping");
    }
}
