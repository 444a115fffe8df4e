//! The renderer's seccomp filters in real processes: each case runs in a
//! copy of this test binary (re-run with `GH_SANDBOX_CASE`), enters a
//! filter exactly as the renderer does (`sandbox::enter`, every thread)
//! and makes calls; the parent checks that the allowed ones return and
//! that the first call outside the filter kills the process with SIGSYS.
//! The venus filter's additions (`lseek`, `getsockopt`) are refused by the
//! test filter, and its `kill`/`waitid` reach only the render server it
//! names, with SIGKILL only.

use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};

use gpu_hostmem_renderer::sandbox::{self, BackendKind, Policy};

const CASE_ENV: &str = "GH_SANDBOX_CASE";
const NAME: &str = "each_filter_allows_its_calls_and_kills_on_the_rest";

/// A child that stands for the render server, killed if this process
/// dies first.
fn sleeper() -> Child {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new("sleep");
    c.arg("60").stdin(Stdio::null());
    // SAFETY: prctl only, in the child before exec.
    unsafe {
        c.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c.spawn().expect("sleep")
}

fn say(what: &str) {
    use std::io::Write;
    let mut o = std::io::stdout();
    let _ = writeln!(o, "{what}");
    let _ = o.flush();
}

/// Exits at once (no destructor, no harness: the filter is on in every
/// thread, the harness's included).
fn done() -> ! {
    say("CASE DONE");
    // SAFETY: _exit ends the process; nothing is left to run.
    unsafe { libc::_exit(0) }
}

fn memfd() -> libc::c_int {
    // SAFETY: a name with its NUL; the fd is ours.
    let fd = unsafe { libc::memfd_create(c"gh-sandbox".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    fd
}

fn lseek(fd: libc::c_int) -> i64 {
    // SAFETY: lseek on an fd of ours.
    unsafe { libc::lseek(fd, 0, libc::SEEK_END) }
}

fn seqpacket_fds() -> [libc::c_int; 2] {
    let mut fds = [0; 2];
    assert_eq!(
        // SAFETY: socketpair writes two fds into `fds`.
        unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0, fds.as_mut_ptr()) },
        0
    );
    fds
}

/// getsockopt(SO_TYPE): the call's result and the type.
fn getsockopt_type(fd: libc::c_int) -> (libc::c_int, libc::c_int) {
    let (mut ty, mut len) = (0 as libc::c_int, 4 as libc::socklen_t);
    // SAFETY: SO_TYPE writes one int into `ty` of `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut ty as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (rc, ty)
}

fn open_dev_null() -> libc::c_int {
    // SAFETY: a path with its NUL.
    unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY) }
}

fn kill(pid: u32, sig: libc::c_int) -> libc::c_int {
    // SAFETY: a signal to a process of ours.
    unsafe { libc::kill(pid as libc::pid_t, sig) }
}

fn waitid(idtype: libc::idtype_t, pid: u32) -> libc::c_int {
    // SAFETY: `info` is written by the kernel.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid with a valid out pointer.
    unsafe { libc::waitid(idtype, pid as libc::id_t, &mut info, libc::WEXITED) }
}

/// `ppoll` on `fd` for readability with a zero timeout (what the serving
/// loop does, without waiting).
fn ppoll_now(fd: libc::c_int) -> libc::c_int {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: one valid pollfd, a valid timespec, no signal mask.
    unsafe { libc::ppoll(&mut p, 1, &ts, std::ptr::null()) }
}

/// `eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)`, as virglrenderer makes a
/// venus context's fence fd.
fn eventfd() -> libc::c_int {
    // SAFETY: no pointers.
    unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) }
}

/// One case, in the child; never returns. Its children (stand-ins for the
/// render server) die with it (PR_SET_PDEATHSIG), so none is waited for.
#[allow(clippy::zombie_processes)]
fn run_case(case: &str) -> ! {
    match case {
        "test-allowed" => {
            let fd = memfd();
            sandbox::enter(&Policy::test()).expect("filter");
            // What the loop does: memory, a socket pair's I/O, logging.
            // SAFETY: ftruncate on our memfd.
            assert_eq!(unsafe { libc::ftruncate(fd, 4096) }, 0);
            let v = vec![0u8; 1 << 20];
            drop(v);
            assert_eq!(ppoll_now(fd), 1, "a memfd is readable");
            say("allowed calls returned");
            done()
        }
        "test-lseek" => {
            let fd = memfd();
            sandbox::enter(&Policy::test()).expect("filter");
            say("BEFORE");
            lseek(fd);
            done()
        }
        "test-getsockopt" => {
            let fds = seqpacket_fds();
            sandbox::enter(&Policy::test()).expect("filter");
            say("BEFORE");
            getsockopt_type(fds[0]);
            done()
        }
        "test-open" => {
            sandbox::enter(&Policy::test()).expect("filter");
            say("BEFORE");
            open_dev_null();
            done()
        }
        "test-eventfd" => {
            sandbox::enter(&Policy::test()).expect("filter");
            say("BEFORE");
            eventfd();
            done()
        }
        "venus-allowed" => {
            let server = sleeper();
            let fds = seqpacket_fds();
            let fd = memfd();
            sandbox::enter(&Policy::venus(server.id() as libc::pid_t).expect("policy"))
                .expect("filter");
            assert_eq!(lseek(fd), 0);
            assert_eq!(getsockopt_type(fds[0]), (0, libc::SOCK_SEQPACKET));
            // Fences: a context's eventfd, the poll of the render server's
            // socket without waiting (`proxy_socket_is_connected`), and
            // the serving loop's ppoll.
            let efd = eventfd();
            assert!(efd >= 0, "eventfd");
            let mut p = libc::pollfd {
                fd: fds[0],
                events: 0,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            assert_eq!(unsafe { libc::poll(&mut p, 1, 0) }, 0, "poll");
            assert_eq!(ppoll_now(efd), 0, "ppoll");
            // virgl_renderer_cleanup: kill(server, SIGKILL), waitid(P_PID).
            assert_eq!(kill(server.id(), libc::SIGKILL), 0);
            assert_eq!(waitid(libc::P_PID, server.id()), 0);
            say("allowed calls returned");
            done()
        }
        "venus-kill-another" => {
            let server = sleeper();
            let other = sleeper();
            sandbox::enter(&Policy::venus(server.id() as libc::pid_t).expect("policy"))
                .expect("filter");
            say("BEFORE");
            kill(other.id(), libc::SIGKILL);
            done()
        }
        "venus-kill-other-signal" => {
            let server = sleeper();
            sandbox::enter(&Policy::venus(server.id() as libc::pid_t).expect("policy"))
                .expect("filter");
            say("BEFORE");
            kill(server.id(), libc::SIGTERM);
            done()
        }
        "venus-wait-any" => {
            let server = sleeper();
            sandbox::enter(&Policy::venus(server.id() as libc::pid_t).expect("policy"))
                .expect("filter");
            say("BEFORE");
            waitid(libc::P_ALL, 0);
            done()
        }
        "venus-open" => {
            let server = sleeper();
            sandbox::enter(&Policy::venus(server.id() as libc::pid_t).expect("policy"))
                .expect("filter");
            say("BEFORE");
            open_dev_null();
            done()
        }
        "venus-clone" => {
            let server = sleeper();
            sandbox::enter(&Policy::venus(server.id() as libc::pid_t).expect("policy"))
                .expect("filter");
            say("BEFORE");
            let _ = std::thread::spawn(|| ()).join();
            done()
        }
        "venus-policy" => {
            // The render server is this process's only child; none or two
            // are refused.
            let e = Policy::for_this_process(BackendKind::Venus).expect_err("no child");
            assert!(e.contains("only child"), "{e}");
            let server = sleeper();
            let p = Policy::for_this_process(BackendKind::Venus).expect("one child");
            assert_eq!(p.render_server(), Some(server.id() as libc::pid_t));
            let _second = sleeper();
            assert!(Policy::for_this_process(BackendKind::Venus).is_err());
            assert_eq!(
                Policy::for_this_process(BackendKind::Test).expect("test"),
                Policy::test()
            );
            say("policies checked");
            done()
        }
        other => panic!("unknown case {other}"),
    }
}

/// Runs `case` in a copy of this binary: its exit status and stdout.
fn child(case: &str) -> (std::process::ExitStatus, String) {
    let out = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", NAME, "--nocapture", "--test-threads", "1"])
        .env(CASE_ENV, case)
        .stdin(Stdio::null())
        .output()
        .expect("run the case");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn each_filter_allows_its_calls_and_kills_on_the_rest() {
    if let Ok(case) = std::env::var(CASE_ENV) {
        run_case(&case);
    }
    for case in ["test-allowed", "venus-allowed", "venus-policy"] {
        let (st, out) = child(case);
        assert!(
            st.success() && out.contains("CASE DONE"),
            "{case}: {st}: {out}"
        );
    }
    for case in [
        "test-lseek",
        "test-getsockopt",
        "test-open",
        "test-eventfd",
        "venus-kill-another",
        "venus-kill-other-signal",
        "venus-wait-any",
        "venus-open",
        "venus-clone",
    ] {
        let (st, out) = child(case);
        assert_eq!(st.signal(), Some(libc::SIGSYS), "{case}: {st}: {out}");
        assert!(out.contains("BEFORE"), "{case}: filter entered: {out}");
        assert!(!out.contains("CASE DONE"), "{case}: {out}");
    }
}
