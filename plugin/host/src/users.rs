//! Users to drop to: `run_as` of the IOREQ server's worker, `--user` of
//! `gpu-hostmem backend`.

use std::ffi::CString;

/// The ids to drop to for `run_as` (`NAME` or `UID:GID`), or `None` for
/// `root` (no drop). uid and gid 0 are refused otherwise.
pub fn resolve(run_as: &str) -> Result<Option<(libc::uid_t, libc::gid_t)>, String> {
    let bad = |why: &str| format!("user {run_as:?}: {why}");
    if run_as == "root" {
        return Ok(None);
    }
    let (uid, gid) = if let Some((u, g)) = run_as.split_once(':') {
        (
            u.parse().map_err(|_| bad("UID:GID must be numbers"))?,
            g.parse().map_err(|_| bad("UID:GID must be numbers"))?,
        )
    } else {
        lookup_user(run_as).ok_or_else(|| bad("no such user"))?
    };
    if uid == 0 || gid == 0 {
        return Err(bad(
            "must not be uid or gid 0 (write root to run without a drop)",
        ));
    }
    Ok(Some((uid, gid)))
}

/// The uid and primary gid of the user `name`, if there is one.
pub fn lookup_user(name: &str) -> Option<(libc::uid_t, libc::gid_t)> {
    let cname = CString::new(name).ok()?;
    let mut pw: libc::passwd = unsafe_zeroed_passwd();
    let mut buf = vec![0 as libc::c_char; 16384];
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call: `pw` and `out` are live
    // locals, `buf` is a live buffer of `buf.len()` bytes; the strings the
    // result points to live in `buf`, which we do not read.
    let rc = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pw,
            buf.as_mut_ptr(),
            buf.len(),
            &mut out,
        )
    };
    (rc == 0 && !out.is_null()).then_some((pw.pw_uid, pw.pw_gid))
}

/// The gids of `groups` (names or numbers), for a process's supplementary
/// groups; gid 0 and unknown names are refused.
pub fn resolve_groups(groups: &[String]) -> Result<Vec<libc::gid_t>, String> {
    groups
        .iter()
        .map(|g| {
            let gid = match g.parse::<libc::gid_t>() {
                Ok(n) => n,
                Err(_) => lookup_group(g).ok_or_else(|| format!("group {g:?}: no such group"))?,
            };
            if gid == 0 {
                return Err(format!("group {g:?}: must not be gid 0"));
            }
            Ok(gid)
        })
        .collect()
}

/// The gid of the group `name`, if there is one.
pub fn lookup_group(name: &str) -> Option<libc::gid_t> {
    let cname = CString::new(name).ok()?;
    // SAFETY: `group` is a plain C struct of integers and pointers, for
    // which all-zero bytes are a valid value.
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 65536];
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: as for getpwnam_r in `lookup_user`: live locals and a live
    // buffer of `buf.len()` bytes, whose strings we do not read.
    let rc = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            &mut gr,
            buf.as_mut_ptr(),
            buf.len(),
            &mut out,
        )
    };
    (rc == 0 && !out.is_null()).then_some(gr.gr_gid)
}

fn unsafe_zeroed_passwd() -> libc::passwd {
    // SAFETY: `passwd` is a plain C struct of integers and pointers, for
    // which all-zero bytes (NULL pointers, zero ids) are a valid value.
    unsafe { std::mem::zeroed() }
}

/// Drops to `uid`/`gid` with no supplementary group, for good (real,
/// effective and saved ids), and checks that no capability is left.
pub fn drop_to(uid: libc::uid_t, gid: libc::gid_t) -> Result<(), String> {
    let os = |op: &str| format!("{op}: {}", std::io::Error::last_os_error());
    // SAFETY: plain system calls with integer arguments (a NULL, empty
    // group list for setgroups); glibc applies the id changes to every
    // thread of the process.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0 {
            return Err(os("setgroups"));
        }
        if libc::setresgid(gid, gid, gid) != 0 {
            return Err(os("setresgid"));
        }
        if libc::setresuid(uid, uid, uid) != 0 {
            return Err(os("setresuid"));
        }
    }
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| e.to_string())?;
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| v.trim().to_owned());
    if cap_eff.as_deref() != Some("0000000000000000") {
        return Err(format!("capabilities left after the drop: {cap_eff:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_by_name_or_number_never_root() {
        assert_eq!(lookup_group("root"), Some(0));
        assert_eq!(
            resolve_groups(&["65534".into(), "4242".into()]),
            Ok(vec![65534, 4242])
        );
        assert_eq!(resolve_groups(&[]), Ok(vec![]));
        for bad in ["root", "0", "no-such-group-gpu-hostmem"] {
            let e = resolve_groups(&["65534".into(), bad.into()]).expect_err(bad);
            assert!(e.contains(bad), "{e}");
        }
    }
}
