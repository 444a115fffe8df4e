//! The core platform traits on the Xen bindings, against the fake Xen
//! library: identity checks (I5), ioreq page mapping and per-vCPU event
//! channel binding, and teardown order.

mod common;

use gpu_hostmem_core::ioreq::{STATE_IOREQ_INPROCESS, STATE_IORESP_READY};
use gpu_hostmem_core::platform::{
    DeviceModel, DomainIdentity, Errno, HostMem, IoreqChannel, RevokeRange, Wake,
};
use gpu_hostmem_xen::platform::{Identity, XenDeviceModel, XenHostMem};
use gpu_hostmem_xen::{DeviceModelLib, EvtchnLib, ForeignMemoryLib, Privcmd, XenctrlLib};
use std::ffi::c_int;
use std::time::Duration;

struct Fake {
    lib: libloading::Library,
}

impl Fake {
    fn load() -> Self {
        // SAFETY: the fake library has no constructors.
        let lib = unsafe { libloading::Library::new(common::fake_lib()) }.expect("load fake");
        Fake { lib }
    }

    fn set_domain(&self, domid: c_int, handle: [u8; 16], nr_vcpus: u32, dying: bool) {
        // SAFETY: the C prototype is
        // void fake_set_domain(int, const uint8_t[16], uint32_t, int).
        unsafe {
            let f = self
                .lib
                .get::<unsafe extern "C" fn(c_int, *const u8, u32, c_int)>(b"fake_set_domain\0")
                .expect("symbol");
            f(domid, handle.as_ptr(), nr_vcpus, c_int::from(dying));
        }
    }

    fn counter(&self, name: &[u8]) -> c_int {
        // SAFETY: the counters are `int name(void)`.
        unsafe {
            let f = self
                .lib
                .get::<unsafe extern "C" fn() -> c_int>(name)
                .expect("symbol");
            f()
        }
    }
}

const UUID: [u8; 16] = [0x11; 16];
const OTHER: [u8; 16] = [0x22; 16];

/// Host memory: identity first (`dom` current, `stranger` not), then the
/// (here absent) ioctl.
fn host_mem_checks_identity(id: Identity<'_>, dom: &DomainIdentity, stranger: &DomainIdentity) {
    let mut hm = XenHostMem::new(Privcmd::open_path("/dev/null").expect("null"), id);
    assert_eq!(
        hm.lend(stranger, 0, 0x1000, 1).unwrap_err().errno,
        Errno::ESRCH
    );
    assert_eq!(
        hm.lend(dom, 0, 0x1000, 1).unwrap_err().errno,
        Errno(libc::ENOTTY)
    );
    hm.revoke(stranger, RevokeRange::All)
        .expect("revoking for a domain that is not there is vacuous");
    assert_eq!(
        hm.revoke(dom, RevokeRange::All).unwrap_err().op,
        "IOCTL_PRIVCMD_HOSTMEM_REVOKE"
    );
    assert_eq!(hm.query(stranger).unwrap_err().errno, Errno::ESRCH);
}

#[test]
fn platform_on_fake_xen() {
    let fake = Fake::load();
    fake.set_domain(7, UUID, 2, false);
    let path = common::fake_lib();
    let dml = DeviceModelLib::load_from(path).expect("dm");
    let fml = ForeignMemoryLib::load_from(path).expect("fm");
    let evl = EvtchnLib::load_from(path).expect("evtchn");
    let xcl = XenctrlLib::load_from(path).expect("xc");
    let dm = dml.open().expect("open");
    let fm = fml.open().expect("open");
    let xce = evl.open().expect("open");
    let xc = xcl.open().expect("open");
    let mut p = XenDeviceModel::new(&dm, &fm, &xce, Identity::Xenctrl(&xc));

    // The fake's unique id is the first 8 bytes of the handle: a new
    // handle at domid 7 is another instance.
    let dom = DomainIdentity::from_unique_id(7, u64::from_le_bytes([0x11; 8]));
    let stranger = DomainIdentity::from_unique_id(7, u64::from_le_bytes([0x22; 8]));
    assert_eq!(p.lookup(7).expect("lookup"), Some(dom));
    assert_eq!(
        p.lookup(8).expect("lookup"),
        None,
        "next domain is not domid 8"
    );
    assert!(p.is_alive(&dom).expect("alive"));
    assert!(!p.is_alive(&stranger).expect("alive"));

    // Guest RAM for a data_is_ptr read: the fake maps frames below
    // 0x100000 and fails those above (a hole) with EFAULT. Every page is
    // checked before a byte is written; each mapping is undone at once.
    let ones = [0xffu8; 24];
    p.write_guest_ram(&dom, 0x20_0ff4, &ones)
        .expect("two pages of RAM");
    assert_eq!(fake.counter(b"fake_guest_mapped\0"), 0, "unmapped after");
    let e = p
        .write_guest_ram(&dom, 0x1_0000_0ff4, &ones)
        .expect_err("a hole");
    assert_eq!((e.op, e.errno), ("xenforeignmemory_map", Errno::EFAULT));
    let e = p
        .write_guest_ram(&dom, 0xffff_ffff_ffff_fff0, &ones)
        .expect_err("wraps");
    assert_eq!(e.errno, Errno::EINVAL);
    let e = p
        .write_guest_ram(&stranger, 0x20_0000, &ones)
        .expect_err("another instance");
    assert_eq!(e.errno, Errno::ESRCH);
    assert_eq!(fake.counter(b"fake_guest_mapped\0"), 0);

    // I5: nothing is done for an identity that is not the current one.
    let e = p.create_server(&stranger, false).unwrap_err();
    assert_eq!(e.errno, Errno::ESRCH);
    // The fake hypervisor refuses the RETRY flag (unpatched Xen).
    assert_eq!(
        p.create_server(&dom, true).unwrap_err().errno,
        Errno::EINVAL
    );
    let id = p.create_server(&dom, false).expect("create");
    assert_eq!(id, 3);
    assert!(!p.retry_enabled(&dom, id));

    let mut ch = p.open_channel(&dom, id).expect("channel");
    assert_eq!(ch.nr_vcpus(), 2);
    assert_eq!(fake.counter(b"fake_mapped\0"), 1);
    // The fake page carries remote ports 10, 11; the fake binds them at +100.
    assert_eq!(ch.local_port(0), Some(110));
    assert_eq!(ch.local_port(1), Some(111));
    assert_eq!(fake.counter(b"fake_bound\0"), 2);
    // The fake evtchn fd is /dev/null (always readable) with nothing
    // pending: a wake-up without event.
    assert_eq!(
        ch.wait(Some(Duration::from_millis(10))).expect("wait"),
        Wake::Timeout
    );
    assert_eq!(ch.state(1).expect("state"), 0);
    ch.set_state(1, STATE_IOREQ_INPROCESS).expect("set");
    ch.complete(1, 42, STATE_IORESP_READY).expect("complete");
    let r = ch.read(1).expect("read");
    assert_eq!((r.state, r.data, r.vp_eport), (STATE_IORESP_READY, 42, 11));
    assert_eq!(ch.state(2).unwrap_err().errno, Errno::EINVAL);
    assert_eq!(ch.notify(0).unwrap_err().op, "xenevtchn_notify");

    // Xen's RETRY counters: read for the current instance only (I5).
    assert_eq!(
        p.retry_stats(&dom).expect("retry stats"),
        gpu_hostmem_core::platform::RetryStats::default()
    );
    let e = p.retry_stats(&stranger).unwrap_err();
    assert_eq!(
        (e.op, e.errno),
        ("xendevicemodel_get_retry_stats", Errno::ESRCH)
    );

    p.set_server_state(&dom, id, true).expect("enable");
    assert_eq!(
        p.set_server_state(&stranger, id, true).unwrap_err().errno,
        Errno::ESRCH
    );
    assert_eq!(
        p.map_mmio(&dom, id + 1, 0, 0xfff).unwrap_err().errno,
        Errno::ENOENT
    );
    p.map_mmio(&dom, id, 0xe000_0000, 0xe0ff_ffff).expect("map");
    let e = p
        .map_mmio(&stranger, id, 0xe000_0000, 0xe0ff_ffff)
        .unwrap_err();
    assert_eq!(
        (e.op, e.errno),
        ("xendevicemodel_map_io_range_to_ioreq_server", Errno::ESRCH)
    );

    drop(ch);
    assert_eq!(fake.counter(b"fake_bound\0"), 0, "ports unbound on drop");
    assert_eq!(fake.counter(b"fake_mapped\0"), 0, "page unmapped on drop");

    p.destroy_server(&dom, id).expect("destroy");
    assert_eq!(fake.counter(b"fake_destroyed\0"), 1);
    assert_eq!(p.destroy_server(&dom, id).unwrap_err().errno, Errno::ENOENT);

    // Domid reuse: our domain died and domid 7 is someone else's now. The
    // server is forgotten, never destroyed on the stranger.
    let id = p.create_server(&dom, false).expect("create");
    fake.set_domain(7, OTHER, 1, false);
    assert_eq!(p.destroy_server(&dom, id).unwrap_err().errno, Errno::ESRCH);
    assert_eq!(fake.counter(b"fake_destroyed\0"), 1);

    // A fatal error shuts the guest down as crashed: not once the domid
    // names another domain, and never the stranger.
    assert_eq!(
        p.crash_domain(&dom, "test").unwrap_err().errno,
        Errno::ESRCH
    );
    fake.set_domain(7, UUID, 1, false);
    assert_eq!(
        p.crash_domain(&stranger, "test").unwrap_err().errno,
        Errno::ESRCH
    );
    assert_eq!(fake.counter(b"fake_shutdowns\0"), 0);
    p.crash_domain(&dom, "test").expect("crash");
    assert_eq!(fake.counter(b"fake_shutdowns\0"), 1);
    assert_eq!(fake.counter(b"fake_shutdown_reason\0"), 3, "SHUTDOWN_crash");

    // A dying domain gets no new server.
    fake.set_domain(7, UUID, 1, true);
    assert_eq!(
        p.create_server(&dom, false).unwrap_err().errno,
        Errno::ESRCH
    );
    assert!(!p.is_alive(&dom).expect("alive"));
    // A server left by a killed process is adopted and destroyed, but only
    // for the identity it was recorded with.
    assert_eq!(p.adopt(&stranger, 3).unwrap_err().errno, Errno::ESRCH);
    p.adopt(&dom, 3).expect("adopt");
    p.destroy_server(&dom, 3).expect("destroy adopted");
    assert_eq!(fake.counter(b"fake_destroyed\0"), 2);

    // Host memory: identity first, then the (here absent) ioctl.
    fake.set_domain(7, UUID, 1, false);
    host_mem_checks_identity(Identity::Xenctrl(&xc), &dom, &stranger);
    drop(p);

    // The same checks with no xenctrl handle at all, through the
    // device-model handle (XEN_DMOP_get_instance, XEN_DMOP_nr_vcpus), as
    // the deprivileged worker makes them.
    drop(xc);
    let calls = fake.counter(b"fake_instance_calls\0");
    fake.set_domain(7, UUID, 2, false);
    let mut p = XenDeviceModel::new(&dm, &fm, &xce, Identity::DeviceModel(&dm));
    assert_eq!(p.lookup(7).expect("lookup"), Some(dom));
    assert_eq!(p.lookup(8).expect("lookup"), None);
    assert!(p.is_alive(&dom).expect("alive"));
    assert!(!p.is_alive(&stranger).expect("alive"));
    assert_eq!(
        p.create_server(&stranger, false).unwrap_err().errno,
        Errno::ESRCH
    );
    let id = p.create_server(&dom, false).expect("create");
    let ch = p.open_channel(&dom, id).expect("channel");
    assert_eq!(ch.nr_vcpus(), 2, "vCPUs from XEN_DMOP_nr_vcpus");
    drop(ch);
    assert_eq!(p.retry_stats(&stranger).unwrap_err().errno, Errno::ESRCH);
    // Domid reuse: the server is forgotten, never destroyed on the stranger.
    let destroyed = fake.counter(b"fake_destroyed\0");
    fake.set_domain(7, OTHER, 1, false);
    assert_eq!(p.destroy_server(&dom, id).unwrap_err().errno, Errno::ESRCH);
    assert_eq!(fake.counter(b"fake_destroyed\0"), destroyed);
    assert_eq!(
        p.crash_domain(&dom, "test").unwrap_err().errno,
        Errno::ESRCH
    );
    // Dying: no new server, not alive; adopt still works for the instance.
    fake.set_domain(7, UUID, 1, true);
    assert!(!p.is_alive(&dom).expect("alive"));
    assert_eq!(
        p.create_server(&dom, false).unwrap_err().errno,
        Errno::ESRCH
    );
    assert_eq!(p.adopt(&stranger, 3).unwrap_err().errno, Errno::ESRCH);
    p.adopt(&dom, 3).expect("adopt");
    p.destroy_server(&dom, 3).expect("destroy adopted");
    assert_eq!(fake.counter(b"fake_destroyed\0"), destroyed + 1);
    fake.set_domain(7, UUID, 1, false);
    host_mem_checks_identity(Identity::DeviceModel(&dm), &dom, &stranger);
    assert!(
        fake.counter(b"fake_instance_calls\0") > calls + 10,
        "every check asked XEN_DMOP_get_instance"
    );
    drop(p);
}
