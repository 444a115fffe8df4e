//! Which slots of PCI bus 0 the guest's QEMU placed its own devices in.
//!
//! The server claims its PCI function with Xen, which from then on sends
//! the guest's config cycles for that slot to us and no longer to QEMU: a
//! QEMU device in the same slot would vanish from the guest without an
//! error. QEMU places the devices libxl asks for without an address at the
//! lowest free slot (docs/operator-guide.md, "Slot and PCI ids"), so which
//! slots are taken depends on the guest's xl.cfg. Before claiming, the
//! worker asks QEMU itself, with `query-pci` over the QMP socket libxl
//! gives every qemu-xen device model.
//!
//! A minimal QMP client: greeting, `qmp_capabilities`, one command,
//! asynchronous events skipped, every read and write bounded by a timeout.

use serde_json::{json, Value};
use std::fmt;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How many asynchronous events a reply may follow before we stop reading.
const MAX_EVENTS: usize = 64;

/// libxl's QMP socket of a guest's qemu-xen (`libxl__qemu_qmp_path()`).
pub fn socket_path(domid: u16) -> PathBuf {
    PathBuf::from(format!("/var/run/xen/qmp-libxl-{domid}"))
}

/// A QMP exchange that failed: the operation, and the errno or QEMU's words.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("{op} {path}: {source} (errno {errno})", errno = source.raw_os_error().unwrap_or(0))]
    Io {
        op: &'static str,
        path: String,
        source: io::Error,
    },
    #[error("{op} {path}: {msg}")]
    Protocol {
        op: &'static str,
        path: String,
        msg: String,
    },
}

/// One function of bus 0 as QEMU reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuFunction {
    pub slot: u8,
    pub function: u8,
    pub vendor: u16,
    pub device: u16,
    /// QEMU's description of the class ("VGA controller"), or the class
    /// number in hex when QEMU has no name for it.
    pub class: String,
    /// The device's id on QEMU's command line ("" when it has none).
    pub qdev_id: String,
}

impl fmt::Display for QemuFunction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00:{:02x}.{} {:04x}:{:04x} ({}",
            self.slot, self.function, self.vendor, self.device, self.class
        )?;
        if !self.qdev_id.is_empty() {
            write!(f, ", id {}", self.qdev_id)?;
        }
        write!(f, ")")
    }
}

/// The functions on bus 0 in a `query-pci` reply (its `return` value).
/// Functions behind bridges are on other buses and never conflict with a
/// slot of bus 0; entries without a slot or function are skipped.
pub fn parse_query_pci(ret: &Value) -> Vec<QemuFunction> {
    let mut out = Vec::new();
    let buses = ret.as_array().map(Vec::as_slice).unwrap_or_default();
    for bus in buses.iter().filter(|b| b["bus"].as_u64() == Some(0)) {
        let devices = bus["devices"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        for d in devices {
            let (Some(slot), Some(function)) = (
                d["slot"].as_u64().and_then(|v| u8::try_from(v).ok()),
                d["function"].as_u64().and_then(|v| u8::try_from(v).ok()),
            ) else {
                continue;
            };
            let id16 = |k: &str| {
                d["id"][k]
                    .as_u64()
                    .and_then(|v| u16::try_from(v).ok())
                    .unwrap_or(0xffff)
            };
            let class = match d["class_info"]["desc"].as_str() {
                Some(desc) => desc.to_owned(),
                None => format!(
                    "class {:#06x}",
                    d["class_info"]["class"].as_u64().unwrap_or(0)
                ),
            };
            out.push(QemuFunction {
                slot,
                function,
                vendor: id16("vendor"),
                device: id16("device"),
                class,
                qdev_id: d["qdev_id"].as_str().unwrap_or_default().to_owned(),
            });
        }
    }
    out
}

/// Asks the QEMU behind `path` for the functions of bus 0.
pub fn query_bus0(path: &Path, timeout: Duration) -> Result<Vec<QemuFunction>, QmpError> {
    let p = path.display().to_string();
    let io_err = |op: &'static str| {
        let p = p.clone();
        move |source| QmpError::Io {
            op,
            path: p,
            source,
        }
    };
    let stream = UnixStream::connect(path).map_err(io_err("connect to QMP socket"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(io_err("set QMP timeouts"))?;
    let mut w = stream.try_clone().map_err(io_err("clone QMP socket"))?;
    let mut r = BufReader::new(stream);
    let greeting = read_message(&mut r, "read QMP greeting", &p)?;
    if greeting.get("QMP").is_none() {
        return Err(QmpError::Protocol {
            op: "read QMP greeting",
            path: p,
            msg: format!("not a QMP greeting: {greeting}"),
        });
    }
    execute(&mut r, &mut w, "qmp_capabilities", &p)?;
    let ret = execute(&mut r, &mut w, "query-pci", &p)?;
    Ok(parse_query_pci(&ret))
}

fn read_message(r: &mut impl BufRead, op: &'static str, path: &str) -> Result<Value, QmpError> {
    let mut line = String::new();
    let n = r.read_line(&mut line).map_err(|source| QmpError::Io {
        op,
        path: path.to_owned(),
        source,
    })?;
    if n == 0 {
        return Err(QmpError::Protocol {
            op,
            path: path.to_owned(),
            msg: "QEMU closed the connection".into(),
        });
    }
    serde_json::from_str(line.trim_end()).map_err(|e| QmpError::Protocol {
        op,
        path: path.to_owned(),
        msg: format!("not JSON ({e}): {:?}", line.trim_end()),
    })
}

/// Sends one command and returns its `return` value, skipping events.
fn execute(
    r: &mut impl BufRead,
    w: &mut impl Write,
    command: &'static str,
    path: &str,
) -> Result<Value, QmpError> {
    let mut msg = json!({ "execute": command }).to_string();
    msg.push('\n');
    w.write_all(msg.as_bytes())
        .and_then(|()| w.flush())
        .map_err(|source| QmpError::Io {
            op: command,
            path: path.to_owned(),
            source,
        })?;
    for _ in 0..=MAX_EVENTS {
        let mut v = read_message(r, command, path)?;
        if let Some(ret) = v.get_mut("return") {
            return Ok(ret.take());
        }
        if let Some(err) = v.get("error") {
            return Err(QmpError::Protocol {
                op: command,
                path: path.to_owned(),
                msg: format!("QEMU refused: {err}"),
            });
        }
        if v.get("event").is_none() {
            return Err(QmpError::Protocol {
                op: command,
                path: path.to_owned(),
                msg: format!("unexpected reply: {v}"),
            });
        }
    }
    Err(QmpError::Protocol {
        op: command,
        path: path.to_owned(),
        msg: format!("no reply after {MAX_EVENTS} events"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixListener;
    use std::thread;

    /// A `query-pci` reply of the shape QEMU's qapi/pci.json defines, for a
    /// xenfv guest with stdvga: host bridge, PIIX3 functions, the Xen
    /// platform device in slot 2, the VGA in slot 3, and a bridge with a
    /// device on bus 1 behind it.
    fn reply() -> Value {
        json!([
            { "bus": 0, "devices": [
                { "bus": 0, "slot": 0, "function": 0, "class_info": { "desc": "Host bridge", "class": 1536 },
                  "id": { "vendor": 32902, "device": 4663 }, "qdev_id": "", "regions": [] },
                { "bus": 0, "slot": 1, "function": 1, "class_info": { "desc": "IDE controller", "class": 257 },
                  "id": { "vendor": 32902, "device": 28688 }, "qdev_id": "", "regions": [] },
                { "bus": 0, "slot": 2, "function": 0, "class_info": { "class": 65280 },
                  "id": { "vendor": 22611, "device": 1 }, "qdev_id": "", "regions": [] },
                { "bus": 0, "slot": 3, "function": 0, "class_info": { "desc": "VGA controller", "class": 768 },
                  "id": { "vendor": 4660, "device": 4369 }, "qdev_id": "video", "regions": [] },
                { "bus": 0, "slot": 4, "function": 0, "class_info": { "desc": "PCI bridge", "class": 1540 },
                  "id": { "vendor": 6966, "device": 1 }, "qdev_id": "br0", "regions": [],
                  "pci_bridge": { "bus": { "number": 1, "secondary": 1, "subordinate": 1 },
                    "devices": [ { "bus": 1, "slot": 5, "function": 0, "class_info": { "class": 512 },
                                   "id": { "vendor": 1, "device": 2 }, "qdev_id": "nic", "regions": [] } ] } }
            ] },
            { "bus": 1, "devices": [
                { "bus": 1, "slot": 5, "function": 0, "class_info": { "class": 512 },
                  "id": { "vendor": 1, "device": 2 }, "qdev_id": "nic", "regions": [] }
            ] }
        ])
    }

    #[test]
    fn functions_of_bus_0_are_read_with_ids_and_class() {
        let f = parse_query_pci(&reply());
        let slots: Vec<(u8, u8)> = f.iter().map(|f| (f.slot, f.function)).collect();
        assert_eq!(slots, [(0, 0), (1, 1), (2, 0), (3, 0), (4, 0)]);
        assert_eq!(
            f[3].to_string(),
            "00:03.0 1234:1111 (VGA controller, id video)"
        );
        assert_eq!(f[2].to_string(), "00:02.0 5853:0001 (class 0xff00)");
        assert!(!f.iter().any(|f| f.qdev_id == "nic"), "bus 1 is not bus 0");
    }

    #[test]
    fn malformed_entries_are_skipped() {
        let f = parse_query_pci(&json!([
            { "bus": 0, "devices": [ { "slot": 300, "function": 0 }, { "function": 0 }, "x",
                                     { "slot": 7, "function": 0 } ] },
            "not a bus"
        ]));
        assert_eq!(f.len(), 1);
        assert_eq!((f[0].slot, f[0].vendor, f[0].device), (7, 0xffff, 0xffff));
        assert!(parse_query_pci(&json!({"bus": 0})).is_empty());
    }

    /// A fake QEMU on a Unix socket: greeting, then for each command line
    /// it reads, the next scripted replies (events first where given).
    fn fake_qemu(
        dir: &Path,
        script: Vec<Vec<Value>>,
    ) -> (PathBuf, thread::JoinHandle<Vec<String>>) {
        let path = dir.join("qmp");
        let l = UnixListener::bind(&path).expect("bind");
        let h = thread::spawn(move || {
            let (s, _) = l.accept().expect("accept");
            let mut w = s.try_clone().expect("clone");
            let mut r = BufReader::new(s);
            let hello = json!({"QMP": {"version": {"qemu": {"major": 10}}, "capabilities": []}});
            writeln!(w, "{hello}").expect("greeting");
            let mut seen = Vec::new();
            for replies in script {
                let mut line = String::new();
                if r.read_line(&mut line).expect("read") == 0 {
                    break;
                }
                seen.push(line.trim_end().to_owned());
                for v in replies {
                    write!(w, "{v}\r\n").expect("reply");
                }
            }
            let mut rest = String::new();
            let _ = r.read_to_string(&mut rest);
            seen
        });
        (path, h)
    }

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("gh-qmp-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("tmpdir");
        d
    }

    #[test]
    fn query_negotiates_then_asks_and_skips_events() {
        let d = tmpdir("ok");
        let (path, h) = fake_qemu(
            &d,
            vec![
                vec![json!({"return": {}})],
                vec![
                    json!({"event": "RESUME", "timestamp": {"seconds": 1, "microseconds": 0}}),
                    json!({"return": reply()}),
                ],
            ],
        );
        let f = query_bus0(&path, Duration::from_secs(5)).expect("query");
        assert_eq!(f.len(), 5);
        let seen = h.join().expect("fake qemu");
        assert_eq!(
            seen,
            [
                r#"{"execute":"qmp_capabilities"}"#,
                r#"{"execute":"query-pci"}"#
            ]
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn errors_name_the_operation() {
        let d = tmpdir("err");
        let (path, h) = fake_qemu(
            &d,
            vec![
                vec![json!({"return": {}})],
                vec![json!({"error": {"class": "CommandNotFound", "desc": "no"}})],
            ],
        );
        let e = query_bus0(&path, Duration::from_secs(5)).expect_err("refused");
        assert!(
            e.to_string().starts_with("query-pci ") && e.to_string().contains("CommandNotFound"),
            "{e}"
        );
        h.join().expect("fake qemu");
        let e = query_bus0(&d.join("absent"), Duration::from_secs(1)).expect_err("no socket");
        assert!(
            e.to_string().starts_with("connect to QMP socket ")
                && e.to_string().contains("errno 2"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_silent_qemu_times_out() {
        let d = tmpdir("silent");
        let path = d.join("qmp");
        let l = UnixListener::bind(&path).expect("bind");
        // Accepted but never greeted: a monitor busy with another client.
        let h = thread::spawn(move || {
            let (s, _) = l.accept().expect("accept");
            thread::sleep(Duration::from_millis(600));
            drop(s);
        });
        let e = query_bus0(&path, Duration::from_millis(200)).expect_err("timeout");
        assert!(e.to_string().starts_with("read QMP greeting "), "{e}");
        h.join().expect("listener");
        let _ = std::fs::remove_dir_all(&d);
    }
}
