//! A process named by facts the kernel sets and the process cannot change:
//! its pid and its start time (clock ticks after boot, field 22 of
//! `/proc/PID/stat`). A pid alone may name another process once the first
//! is reaped; a pid with its start time names one process for the whole
//! boot (a pid is given again only after the pid space wrapped, never in
//! the same clock tick). The command line is no identity: a process writes
//! its own.
//!
//! The ioreqd supervisor records its worker this way (`worker-pid`,
//! `worker-start`) while the worker is its unreaped child, so its pid
//! cannot have been given to anyone else yet; teardown finds it again with
//! [`ProcessIdentity::find`], which opens a pidfd first, so the process it
//! then signals is the one whose start time it checked.

use crate::process::Pidfd;
use gpu_hostmem_xen::Result;
use std::fmt;
use std::fs;

/// One process of this boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessIdentity {
    /// Its pid.
    pub pid: u32,
    /// Its start time, in clock ticks after boot.
    pub start: u64,
}

impl fmt::Display for ProcessIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {} (start time {})", self.pid, self.start)
    }
}

/// What [`ProcessIdentity::find`] found.
#[derive(Debug)]
pub enum Found {
    /// No process has the pid, or it has exited.
    Gone,
    /// The pid names another process now.
    Other,
    /// The very process, through a pidfd: signals reach it or nobody.
    Same(Pidfd),
}

/// The start time in a `/proc/PID/stat` line: the 22nd field, counted
/// after the command name, which may hold spaces and parentheses (it ends
/// at the line's last `)`).
pub fn parse_start_time(stat: &str) -> Option<u64> {
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    // Fields 3 (state) onwards; field 22 is the 20th of them.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The start time of `pid`, None if it is gone (or /proc unreadable).
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

impl ProcessIdentity {
    /// The identity of `pid` now. Only meaningful when the caller knows
    /// the pid cannot have been reused (its own unreaped child).
    pub fn of(pid: u32) -> Option<ProcessIdentity> {
        Some(ProcessIdentity {
            pid,
            start: start_time(pid)?,
        })
    }

    /// Finds this process: a pidfd on whatever has the pid now, then its
    /// start time, then the pidfd asked whether that process is still
    /// there (if so, the start time read was its own: its pid could not be
    /// given to another process while it exists).
    pub fn find(&self) -> Result<Found> {
        let Some(p) = Pidfd::open(self.pid)? else {
            return Ok(Found::Gone);
        };
        let start = start_time(self.pid);
        if p.has_exited() {
            return Ok(Found::Gone);
        }
        Ok(match start {
            Some(s) if s == self.start => Found::Same(p),
            _ => Found::Other,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn start_time_is_field_22_whatever_the_command_name() {
        // A real line of trixie's /proc/PID/stat (sleep), fields 1-25.
        let line =
            "4242 (sleep) S 1 4242 4242 0 -1 4194304 97 0 0 0 0 0 0 0 20 0 1 0 123456 5545984 231";
        assert_eq!(parse_start_time(line), Some(123_456));
        // A command name with spaces and a ') ' of its own.
        let tricky = "4242 (a) S 1 2 3 ) b) S 1 4242 4242 0 -1 4194304 97 0 0 0 0 0 0 0 20 0 1 0 98765 5545984 231";
        assert_eq!(parse_start_time(tricky), Some(98_765));
        assert_eq!(parse_start_time("4242 (sleep) S 1 2"), None, "cut short");
        assert_eq!(parse_start_time("no parenthesis"), None);
    }

    /// The identity finds its own process, and neither a process that
    /// has another start time at that pid nor a reaped one.
    #[test]
    fn find_names_the_process_or_nothing() {
        let mut child = Command::new("sleep").arg("30").spawn().expect("spawn");
        let id = ProcessIdentity::of(child.id()).expect("identity of a live child");
        assert!(matches!(id.find().expect("find"), Found::Same(p) if p.pid() == child.id()));
        // The same pid with another start time: a process that got the
        // pid later (or a record that lies) is not ours.
        let later = ProcessIdentity {
            start: id.start + 1,
            ..id
        };
        assert!(matches!(later.find().expect("find"), Found::Other));
        let _ = child.kill();
        let _ = child.wait();
        assert!(matches!(id.find().expect("find"), Found::Gone));
        assert_eq!(ProcessIdentity::of(child.id()), None);
    }

    /// An exited but unreaped process (a zombie) is gone too: it cannot
    /// be stopped, and it holds nothing.
    #[test]
    fn a_zombie_is_gone() {
        let mut child = Command::new("true").spawn().expect("spawn");
        // Unreaped, so /proc still has it, exited or not.
        let id = ProcessIdentity::of(child.id()).expect("identity of an unreaped child");
        let t = std::time::Instant::now();
        while !matches!(id.find().expect("find"), Found::Gone) {
            assert!(t.elapsed() < std::time::Duration::from_secs(5));
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(ProcessIdentity::of(child.id()).is_some(), "still a zombie");
        let _ = child.wait();
    }
}
