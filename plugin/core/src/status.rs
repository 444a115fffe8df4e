//! A serializable snapshot of one guest's gpu-hostmem state, for
//! `gpu-hostmem status DOMID [--json]`.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::platform::{RegionInfo, RetryStats};

/// Event counters of a server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// ioreqs handled.
    pub requests: u64,
    /// PCI config accesses.
    pub pci_config: u64,
    /// BAR accesses that reached the server (faults).
    pub bar_faults: u64,
    /// Successful lend calls.
    pub lends: u64,
    /// Pages reported lent by those calls.
    pub pages_lent: u64,
    /// RETRY answers.
    pub retries: u64,
    /// Reads completed as unbacked (all-ones), or answered so that Xen
    /// completes them as unbacked.
    pub unbacked_reads: u64,
    /// Writes dropped as unbacked.
    pub unbacked_writes: u64,
    /// BAR requests left pending to be answered later (by the rate limit,
    /// the lent-page limit, or a busy kernel).
    pub deferred: u64,
    /// Times the rate limit delayed a request.
    pub rate_limited: u64,
    /// Times the lent-page limit delayed a request (nothing left to
    /// revoke to make room).
    pub limit_deferred: u64,
    /// Lent pages revoked to make room under the lent-page limit.
    pub evicted_pages: u64,
    /// Lend calls that failed.
    pub lend_errors: u64,
    /// BAR moves (mapping removed or added).
    pub bar_moves: u64,
    /// Revoke calls made.
    pub revokes: u64,
    /// Requests of a type we do not handle.
    pub unsupported: u64,
    /// Accesses to the device's register BAR (virtio-gpu's BAR2).
    #[serde(default)]
    pub register_accesses: u64,
    /// Changes of the function's INTA level asked of Xen.
    #[serde(default)]
    pub intx_changes: u64,
    /// `data_is_ptr` reads of unbacked offsets whose guest buffer the
    /// server filled with ones itself (then answered READY).
    #[serde(default)]
    pub buffer_fills: u64,
    /// `data_is_ptr` reads of unbacked offsets into lent memory, handed
    /// to Xen: answered RETRY with nothing lent until Xen's last resend,
    /// after which Xen fills the buffer with ones and counts the answer
    /// as refused (one per request).
    #[serde(default)]
    pub xen_fills: u64,
}

/// Status of one guest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Domain id.
    pub domid: u16,
    /// Xen's unique id of the guest instance served (never reused, unlike
    /// the domid and the UUID).
    pub unique_id: u64,
    /// `starting` | `running` | `stopping` | `stopped` | `failed: ...`.
    pub state: String,
    /// PCI address `ssss:bb:dd.f`.
    pub bdf: String,
    /// Guest-physical BAR base while decoded.
    pub bar_base: Option<u64>,
    /// BAR size in bytes.
    pub bar_size: u64,
    /// ioreq server id.
    pub ioservid: Option<u16>,
    /// Registrations.
    pub registrations: Vec<RegionInfo>,
    /// Pages lent according to the server's ledger (upper bound).
    pub ledger_lent_pages: u64,
    /// Pages lent according to the kernel, if asked.
    pub kernel_lent_pages: Option<u64>,
    /// Counters.
    pub counters: Counters,
    /// Xen's counters of how the domain's RETRY answers ended
    /// (`XEN_DMOP_get_retry_stats`), if Xen could be asked.
    #[serde(default)]
    pub xen_retry: Option<RetryStats>,
    /// Why `xen_retry` is missing (operation and errno).
    #[serde(default)]
    pub xen_retry_error: Option<String>,
    /// The device model's own state (virtio-gpu), if it has any beyond
    /// the window.
    #[serde(default)]
    pub device: Option<String>,
}

impl Status {
    /// Human-readable form.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "domain      {} (unique id {})",
            self.domid, self.unique_id
        );
        let _ = writeln!(s, "state       {}", self.state);
        let _ = writeln!(s, "device      {}", self.bdf);
        match self.bar_base {
            Some(b) => {
                let _ = writeln!(
                    s,
                    "BAR         {:#x}-{:#x} ({} MiB)",
                    b,
                    b + self.bar_size - 1,
                    self.bar_size >> 20
                );
            }
            None => {
                let _ = writeln!(s, "BAR         unmapped ({} MiB)", self.bar_size >> 20);
            }
        }
        if let Some(id) = self.ioservid {
            let _ = writeln!(s, "ioservid    {id}");
        }
        let _ = writeln!(
            s,
            "lent pages  {} (ledger){}",
            self.ledger_lent_pages,
            self.kernel_lent_pages
                .map(|k| format!(", {k} (kernel)"))
                .unwrap_or_default()
        );
        let c = &self.counters;
        let _ = writeln!(
            s,
            "faults      {} (lends {}, retries {}, unbacked reads {}, unbacked writes {}, deferred {}, rate-limited {}, limit {}, evicted pages {}, lend errors {})",
            c.bar_faults, c.lends, c.retries, c.unbacked_reads, c.unbacked_writes,
            c.deferred, c.rate_limited, c.limit_deferred, c.evicted_pages, c.lend_errors
        );
        if c.buffer_fills > 0 || c.xen_fills > 0 {
            let _ = writeln!(
                s,
                "rep reads   {} guest buffers filled with ones, {} into lent memory left to Xen",
                c.buffer_fills, c.xen_fills
            );
        }
        match (&self.xen_retry, &self.xen_retry_error) {
            (Some(x), _) => {
                let _ = writeln!(
                    s,
                    "Xen RETRY   completed {} (honoured), resent {}, refused {}{}",
                    x.completed,
                    x.resent,
                    x.refused,
                    if x.refused > 0 {
                        " (completed as unbacked: all ones, writes dropped)"
                    } else {
                        ""
                    }
                );
            }
            (None, e) => {
                let _ = writeln!(
                    s,
                    "Xen RETRY   unavailable: {}",
                    e.as_deref().unwrap_or("not asked")
                );
            }
        }
        if let Some(d) = &self.device {
            let _ = writeln!(
                s,
                "model       {d} (register accesses {}, INTA changes {})",
                self.counters.register_accesses, self.counters.intx_changes
            );
        }
        let _ = writeln!(s, "registrations {}", self.registrations.len());
        for r in &self.registrations {
            let _ = writeln!(
                s,
                "  id {:<8} offset {:#012x} size {:#x}{}{}",
                r.id,
                r.offset,
                r.size,
                r.lent_pages
                    .map(|l| format!(" lent {l}"))
                    .unwrap_or_default(),
                r.owner_pid.map(|p| format!(" pid {p}")).unwrap_or_default()
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Status {
        Status {
            domid: 7,
            unique_id: 0x0807_0605_0403_0201,
            state: "running".into(),
            bdf: "0000:00:05.0".into(),
            bar_base: Some(0x1_0000_0000),
            bar_size: 1 << 30,
            ioservid: Some(1),
            registrations: vec![RegionInfo {
                id: 3,
                offset: 0x20_0000,
                size: 0x10_0000,
                lent_pages: Some(256),
                owner_pid: Some(4242),
            }],
            ledger_lent_pages: 256,
            kernel_lent_pages: Some(256),
            counters: Counters {
                bar_faults: 2,
                retries: 1,
                ..Counters::default()
            },
            xen_retry: Some(RetryStats {
                completed: 1,
                resent: 16,
                refused: 2,
            }),
            xen_retry_error: None,
            device: None,
        }
    }

    #[test]
    fn text_shows_the_device_model_only_when_there_is_one() {
        assert!(!sample().to_text().contains("model"));
        let mut s = sample();
        s.device = Some("virtio-gpu status 0x0f".into());
        s.counters.register_accesses = 40;
        s.counters.intx_changes = 6;
        let t = s.to_text();
        assert!(
            t.contains("model       virtio-gpu status 0x0f (register accesses 40, INTA changes 6)"),
            "{t}"
        );
    }

    #[test]
    fn text_shows_bar_registrations_and_counters() {
        let t = sample().to_text();
        assert!(
            t.contains("domain      7 (unique id 578437695752307201)"),
            "{t}"
        );
        assert!(
            t.contains("BAR         0x100000000-0x13fffffff (1024 MiB)"),
            "{t}"
        );
        assert!(t.contains("lent pages  256 (ledger), 256 (kernel)"), "{t}");
        assert!(t.contains("faults      2 (lends 0, retries 1"), "{t}");
        assert!(t.contains("id 3") && t.contains("lent 256 pid 4242"), "{t}");
        let mut s = sample();
        s.bar_base = None;
        assert!(s.to_text().contains("BAR         unmapped (1024 MiB)"));
    }

    #[test]
    fn text_shows_xen_retry_counters_or_why_not() {
        let t = sample().to_text();
        assert!(
            t.contains(
                "Xen RETRY   completed 1 (honoured), resent 16, refused 2 (completed as unbacked"
            ),
            "{t}"
        );
        let mut s = sample();
        s.xen_retry = Some(RetryStats {
            completed: 5,
            ..RetryStats::default()
        });
        let t = s.to_text();
        assert!(
            t.contains("Xen RETRY   completed 5 (honoured), resent 0, refused 0\n"),
            "{t}"
        );
        s.xen_retry = None;
        s.xen_retry_error = Some("xendevicemodel_get_retry_stats failed: ENOSYS (38)".into());
        assert!(
            s.to_text().contains(
                "Xen RETRY   unavailable: xendevicemodel_get_retry_stats failed: ENOSYS (38)"
            ),
            "{}",
            s.to_text()
        );
    }

    #[test]
    fn json_names_xen_counters_and_reads_a_status_without_them() {
        let j = serde_json::to_string(&sample()).expect("serialize");
        assert!(
            j.contains("\"xen_retry\":{\"completed\":1,\"resent\":16,\"refused\":2}"),
            "{j}"
        );
        // A status from a server that predates the counters still parses.
        let v: serde_json::Value = serde_json::from_str(&j).expect("json");
        let mut m = v.as_object().cloned().expect("object");
        m.remove("xen_retry");
        m.remove("xen_retry_error");
        let old: Status = serde_json::from_value(serde_json::Value::Object(m)).expect("old form");
        assert_eq!(old.xen_retry, None);
    }

    #[test]
    fn json_round_trips() {
        let s = sample();
        let j = serde_json::to_string(&s).expect("serialize");
        assert!(j.contains("\"bar_base\":4294967296"));
        let back: Status = serde_json::from_str(&j).expect("deserialize");
        assert_eq!(back, s);
    }
}
