//! The IOREQ channel's wake fds against the fake Xen library (a test
//! binary of its own: the fake's state is per process).

mod common;

use gpu_hostmem_core::platform::{DeviceModel, DomainIdentity, IoreqChannel};
use gpu_hostmem_xen::platform::{Identity, XenDeviceModel};
use gpu_hostmem_xen::{DeviceModelLib, EvtchnLib, ForeignMemoryLib, XenctrlLib};
use std::ffi::c_int;
use std::time::Duration;

const UUID: [u8; 16] = [0x11; 16];

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
}

/// A wake fd whose other end is gone (the renderer died) wakes the wait
/// once and is then left out; a live one stays.
#[test]
fn a_hung_up_wake_fd_is_left_out() {
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;
    let fake = Fake::load();
    fake.set_domain(9, UUID, 1, false);
    let path = common::fake_lib();
    let dml = DeviceModelLib::load_from(path).expect("dm");
    let fml = ForeignMemoryLib::load_from(path).expect("fm");
    let evl = EvtchnLib::load_from(path).expect("evtchn");
    let xcl = XenctrlLib::load_from(path).expect("xc");
    let dm = dml.open().expect("open");
    let fm = fml.open().expect("open");
    let xce = evl.open().expect("open");
    let xc = xcl.open().expect("open");
    let (live, _live_peer) = UnixStream::pair().expect("pair");
    let (hung, hung_peer) = UnixStream::pair().expect("pair");
    let mut p = XenDeviceModel::new(&dm, &fm, &xce, Identity::Xenctrl(&xc));
    p.add_wake_fd(live.as_fd());
    p.add_wake_fd(hung.as_fd());
    let dom = DomainIdentity::from_unique_id(9, u64::from_le_bytes([0x11; 8]));
    let id = p.create_server(&dom, false).expect("create");
    let mut ch = p.open_channel(&dom, id).expect("channel");
    assert_eq!(ch.wake_fd_count(), 2);
    ch.wait(Some(Duration::from_millis(10))).expect("wait");
    assert_eq!(ch.wake_fd_count(), 2, "nothing hung up yet");
    drop(hung_peer);
    ch.wait(Some(Duration::from_millis(10))).expect("wait");
    assert_eq!(ch.wake_fd_count(), 1, "the hung-up one is left out");
    ch.wait(Some(Duration::from_millis(10))).expect("wait");
    assert_eq!(ch.wake_fd_count(), 1);
    drop(ch);
    p.destroy_server(&dom, id).expect("destroy");
}
