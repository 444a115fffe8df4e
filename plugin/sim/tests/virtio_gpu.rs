//! The virtio-gpu device (`device: virtio-gpu`) through the real IOREQ
//! server on the simulator: config cycles and BAR2 accesses are ioreqs the
//! server drains, the rings are in the guest's RAM, which the device reads
//! as foreign mappings would (RAM only: never a lent page or a hole), and
//! INTA goes through the platform's `set_pci_intx_level`. A Linux-like
//! driver probes to DRIVER_OK and draws into a 2D resource; a restarted
//! server goes on from the saved line; hostile values end in an error
//! status or NEEDS_RESET; the window BAR lends as before.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

use gpu_hostmem_core::ioreq::PciConfigAddress;
use gpu_hostmem_core::limits::Limits;
use gpu_hostmem_core::model::FunctionModel;
use gpu_hostmem_core::pci::{COMMAND_MASTER, COMMAND_MEMORY, REG_BAR0, REG_BAR1, REG_COMMAND};
use gpu_hostmem_core::platform::DomainIdentity;
use gpu_hostmem_core::server::Server;
use gpu_hostmem_sim::harness::{test_config, TEST_SBDF};
use gpu_hostmem_sim::{Access, Insn, Sim, SimDeviceModel, SimHostMem, SimOptions};
use gpu_hostmem_virtio_gpu::blob::{self, TEST_CAPSET_ID};
use gpu_hostmem_virtio_gpu::device::GpuConfig;
use gpu_hostmem_virtio_gpu::gpu2d::{resp, HDR_LEN};
use gpu_hostmem_virtio_gpu::layout::*;
use gpu_hostmem_virtio_gpu::memory::{GuestMemory, MemError};
use gpu_hostmem_virtio_gpu::model::GpuModel;
use gpu_hostmem_virtio_gpu::renderer::{
    BlobHandle, BlobRequest, FenceRetired, MapCache, Renderer, RendererError,
};

const MIB: u64 = 1 << 20;
const WINDOW: u64 = 0x1_0000_0000;
const REGS: u64 = 0xfeb0_0000;
const COMMON: u64 = REGS + COMMON_OFFSET;
const NOTIFY: u64 = REGS + NOTIFY_OFFSET;
const ISR: u64 = REGS + ISR_OFFSET;
/// Control queue rings at 0x1_0000, cursor queue at 0x2_0000.
const RINGS: [u64; 2] = [0x1_0000, 0x2_0000];
const SIZE: u16 = 16;
/// Guest RAM: 4 MiB from 0.
const RAM_PAGES: u64 = 1024;

/// Guest memory as the worker's foreign mappings see it.
#[derive(Clone)]
struct SimGuestMemory {
    sim: Sim,
    dom: DomainIdentity,
    forgotten: Rc<RefCell<u32>>,
}

impl GuestMemory for SimGuestMemory {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        self.sim
            .foreign_read(&self.dom, addr, buf)
            .map_err(|gfn| MemError::Unmapped { gfn })
    }

    fn write(&mut self, addr: u64, buf: &[u8]) -> Result<(), MemError> {
        self.sim
            .foreign_write(&self.dom, addr, buf)
            .map_err(|gfn| MemError::Unmapped { gfn })
    }

    fn forget_mappings(&mut self) {
        *self.forgotten.borrow_mut() += 1;
    }
}

type GpuServer = Server<SimDeviceModel, SimHostMem, GpuModel<SimGuestMemory>>;

struct Vm {
    sim: Sim,
    dom: DomainIdentity,
    server: Option<GpuServer>,
    saved: Rc<RefCell<String>>,
    forgotten: Rc<RefCell<u32>>,
    avail_idx: [u16; 2],
    used_seen: [u16; 2],
    next_desc: [u16; 2],
}

fn model(sim: &Sim, dom: DomainIdentity, forgotten: &Rc<RefCell<u32>>) -> GpuModel<SimGuestMemory> {
    let mem = SimGuestMemory {
        sim: sim.clone(),
        dom,
        forgotten: forgotten.clone(),
    };
    GpuModel::new(64 * MIB, 1, mem).expect("model")
}

impl Vm {
    /// `xl create` with `device: virtio-gpu`, then the firmware's BAR
    /// placement: the window high, BAR2 in the low hole, decode and bus
    /// mastering on.
    fn new() -> Vm {
        Vm::with(model)
    }

    /// As [`Vm::new`] with the device `make` builds.
    fn with(
        make: impl FnOnce(&Sim, DomainIdentity, &Rc<RefCell<u32>>) -> GpuModel<SimGuestMemory>,
    ) -> Vm {
        let sim = Sim::new(SimOptions::default());
        let dom = sim.create_domain(4, 1).expect("domain");
        sim.add_guest_ram(&dom, 0, RAM_PAGES);
        let forgotten = Rc::new(RefCell::new(0));
        let cfg = test_config(64 * MIB, 64 * 1024, Limits::default());
        let func = make(&sim, dom, &forgotten);
        let server = Server::start_with(sim.device_model(), sim.host_mem(), dom, cfg, func)
            .map_err(|(e, _, _)| e)
            .expect("server");
        let mut vm = Vm {
            sim,
            dom,
            server: Some(server),
            saved: Rc::new(RefCell::new(String::new())),
            forgotten,
            avail_idx: [0; 2],
            used_seen: [0; 2],
            next_desc: [0; 2],
        };
        vm.saver();
        vm.cfg_w(REG_BAR0, 4, WINDOW as u32 | 0xc);
        vm.cfg_w(REG_BAR1, 4, (WINDOW >> 32) as u32);
        vm.cfg_w(REG_BAR2, 4, REGS as u32);
        vm.cfg_w(REG_COMMAND, 2, u32::from(COMMAND_MEMORY | COMMAND_MASTER));
        vm
    }

    fn saver(&mut self) {
        let saved = self.saved.clone();
        if let Some(s) = self.server.as_mut() {
            s.set_pci_saver(Box::new(move |line| {
                *saved.borrow_mut() = line.to_owned();
                Ok(())
            }));
        }
    }

    fn server(&self) -> &GpuServer {
        self.server.as_ref().expect("server running")
    }

    fn config(&mut self, reg: u32, size: u32, write: Option<u32>) -> Access {
        let (sim, dom) = (self.sim.clone(), self.dom);
        let server = &mut self.server;
        sim.pci_config(
            &dom,
            0,
            PciConfigAddress {
                sbdf: TEST_SBDF,
                reg,
            },
            size,
            write,
            &mut || {
                if let Some(s) = server.as_mut() {
                    s.drain(Instant::now()).expect("drain");
                }
            },
        )
    }

    fn cfg_r(&mut self, reg: u32, size: u32) -> u32 {
        match self.config(reg, size, None) {
            Access::Emulated { value } => value as u32,
            a => panic!("config read {reg:#x}: {a:?}"),
        }
    }

    fn cfg_w(&mut self, reg: u32, size: u32, v: u32) {
        assert!(matches!(
            self.config(reg, size, Some(v)),
            Access::Emulated { .. }
        ));
    }

    fn access(&mut self, gpa: u64, size: u32, write: Option<u64>) -> Access {
        let (sim, dom) = (self.sim.clone(), self.dom);
        let server = &mut self.server;
        sim.guest_access(&dom, 0, gpa, size, write, &mut || {
            if let Some(s) = server.as_mut() {
                s.drain(Instant::now()).expect("drain");
            }
        })
        .access
    }

    fn w(&mut self, addr: u64, size: u32, v: u64) {
        let a = self.access(addr, size, Some(v));
        assert!(
            matches!(a, Access::Emulated { .. }),
            "write {addr:#x}: {a:?}"
        );
    }

    fn r(&mut self, addr: u64, size: u32) -> u64 {
        match self.access(addr, size, None) {
            Access::Emulated { value } => value,
            a => panic!("read {addr:#x}: {a:?}"),
        }
    }

    fn ram_w(&self, gpa: u64, data: &[u8]) {
        assert!(self.sim.mem_write(&self.dom, gpa, data), "RAM at {gpa:#x}");
    }

    fn ram_u16(&self, gpa: u64) -> u16 {
        let b = self.sim.mem_read(&self.dom, gpa, 2).expect("RAM");
        u16::from_le_bytes([b[0], b[1]])
    }

    fn ram_u32(&self, gpa: u64) -> u32 {
        let b = self.sim.mem_read(&self.dom, gpa, 4).expect("RAM");
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    fn intx(&self) -> bool {
        self.sim.intx(&self.dom, TEST_SBDF).0
    }

    /// What Linux's virtio_pci_modern + virtio_gpu do up to DRIVER_OK.
    fn probe(&mut self) {
        self.w(COMMON + common::STATUS, 1, 0);
        self.avail_idx = [0; 2];
        self.used_seen = [0; 2];
        self.next_desc = [0; 2];
        for base in RINGS {
            self.ram_w(base + 0x1000, &[0; 0x2000]);
        }
        self.w(COMMON + common::STATUS, 1, 1);
        self.w(COMMON + common::STATUS, 1, 3);
        self.w(COMMON + common::DFSELECT, 4, 1);
        assert_eq!(self.r(COMMON + common::DF, 4) & 1, 1, "VERSION_1 offered");
        self.w(COMMON + common::GFSELECT, 4, 1);
        self.w(COMMON + common::GF, 4, 1);
        self.w(COMMON + common::STATUS, 1, 3 | 8);
        assert_eq!(
            self.r(COMMON + common::STATUS, 1),
            3 | 8,
            "FEATURES_OK kept"
        );
        assert_eq!(self.r(COMMON + common::NUMQ, 2), 2);
        for q in 0..2u16 {
            let base = RINGS[usize::from(q)];
            self.w(COMMON + common::Q_SELECT, 2, u64::from(q));
            self.w(COMMON + common::Q_SIZE, 2, u64::from(SIZE));
            self.w(COMMON + common::Q_DESCLO, 4, base);
            self.w(COMMON + common::Q_AVAILLO, 4, base + 0x1000);
            self.w(COMMON + common::Q_USEDLO, 4, base + 0x2000);
            self.w(COMMON + common::Q_ENABLE, 2, 1);
        }
        self.w(COMMON + common::STATUS, 1, 3 | 8 | 4);
    }

    fn desc(&self, q: usize, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&addr.to_le_bytes());
        b[8..12].copy_from_slice(&len.to_le_bytes());
        b[12..14].copy_from_slice(&flags.to_le_bytes());
        b[14..16].copy_from_slice(&next.to_le_bytes());
        self.ram_w(RINGS[q] + 16 * u64::from(i), &b);
    }

    fn publish(&mut self, q: usize, head: u16) {
        let slot = u64::from(self.avail_idx[q] % SIZE);
        self.ram_w(RINGS[q] + 0x1000 + 4 + 2 * slot, &head.to_le_bytes());
        self.avail_idx[q] = self.avail_idx[q].wrapping_add(1);
        let idx = self.avail_idx[q];
        self.ram_w(RINGS[q] + 0x1002, &idx.to_le_bytes());
    }

    /// Posts a command on the control queue (request, then a response
    /// buffer at `resp_at` or the default one) and kicks; returns the
    /// response type if the device returned the buffers.
    fn command_to(&mut self, req: &[u8], resp_at: Option<u64>) -> Option<u32> {
        let n = u64::from(self.avail_idx[0] % SIZE);
        let (rq, rs) = (0x10_0000 + 0x2000 * n, 0x10_1000 + 0x2000 * n);
        let rs = resp_at.unwrap_or(rs);
        self.ram_w(rq, req);
        let d = self.next_desc[0];
        self.next_desc[0] = (d + 2) % SIZE;
        self.desc(0, d, rq, req.len() as u32, 1, d + 1);
        self.desc(0, d + 1, rs, 512, 2, 0);
        self.publish(0, d);
        self.w(NOTIFY, 2, 0);
        let used = self.ram_u16(RINGS[0] + 0x2002);
        if used == self.used_seen[0] {
            return None;
        }
        self.used_seen[0] = used;
        self.sim
            .mem_read(&self.dom, rs, 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn command(&mut self, req: &[u8]) -> Option<u32> {
        self.command_to(req, None)
    }
}

fn hdr(ty: u32, words: &[u32]) -> Vec<u8> {
    let mut v = vec![0u8; HDR_LEN];
    v[0..4].copy_from_slice(&ty.to_le_bytes());
    for w in words {
        v.extend_from_slice(&w.to_le_bytes());
    }
    v
}

const GET_DISPLAY_INFO: u32 = 0x100;
const RESOURCE_CREATE_2D: u32 = 0x101;
const TRANSFER_TO_HOST_2D: u32 = 0x105;
const ATTACH_BACKING: u32 = 0x106;

fn attach(id: u32, addr: u64, len: u32) -> Vec<u8> {
    let mut v = hdr(ATTACH_BACKING, &[id, 1]);
    v.extend_from_slice(&addr.to_le_bytes());
    v.extend_from_slice(&len.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v
}

fn transfer(id: u32, w: u32, h: u32) -> Vec<u8> {
    let mut v = hdr(TRANSFER_TO_HOST_2D, &[0, 0, w, h]);
    v.extend_from_slice(&0u64.to_le_bytes());
    v.extend_from_slice(&id.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v
}

#[test]
fn the_function_is_virtio_gpu_and_bar2_is_routed_with_the_bar() {
    let mut vm = Vm::new();
    assert_eq!(vm.cfg_r(0, 4), 0x1050_1af4);
    assert_eq!(vm.cfg_r(PCI_CAPABILITY_LIST, 1), 0x40);
    assert_eq!(vm.cfg_r(0x3d, 1), 1, "INTA");
    assert_eq!(vm.cfg_r(REG_BAR2, 4), REGS as u32);
    let routed = |vm: &Vm| {
        vm.sim.with_world(|w| {
            w.domains[&vm.dom.domid]
                .servers
                .values()
                .flat_map(|s| s.mmio.clone())
                .collect::<Vec<_>>()
        })
    };
    assert!(
        routed(&vm).contains(&(REGS, REGS + 0x3fff)),
        "{:x?}",
        routed(&vm)
    );
    assert!(routed(&vm).contains(&(WINDOW, WINDOW + 64 * MIB - 1)));
    // The device's registers answer through the server.
    assert_eq!(vm.r(COMMON + common::NUMQ, 2), 2);
    // The guest moves BAR2: the old range is released, the new one routed.
    vm.cfg_w(REG_BAR2, 4, 0xfea0_0000);
    assert!(!routed(&vm).contains(&(REGS, REGS + 0x3fff)));
    assert!(routed(&vm).contains(&(0xfea0_0000, 0xfea0_3fff)));
    assert_eq!(vm.r(0xfea0_0000 + common::NUMQ, 2), 2);
    assert!(matches!(
        vm.access(COMMON + common::NUMQ, 2, None),
        Access::NoDevice { .. }
    ));
    // Memory decode off: neither BAR is routed.
    vm.cfg_w(REG_COMMAND, 2, 0);
    assert!(routed(&vm).is_empty(), "{:x?}", routed(&vm));
    let st = vm.server.as_mut().expect("server").status(false);
    assert!(st.counters.register_accesses >= 2);
}

#[test]
fn a_linux_like_driver_probes_and_draws_through_the_server() {
    let mut vm = Vm::new();
    vm.probe();
    assert!(vm.server().model().device().is_running());
    assert!(!vm.intx());

    assert_eq!(
        vm.command(&hdr(GET_DISPLAY_INFO, &[])),
        Some(resp::OK_DISPLAY_INFO)
    );
    assert!(vm.intx(), "INTA raised through set_pci_intx_level");
    assert_eq!(vm.r(ISR, 1), u64::from(VIRTIO_PCI_ISR_QUEUE));
    assert!(!vm.intx(), "and lowered by the ISR read");

    // A 4x2 resource backed by guest RAM at 0x30_0000.
    let pixels: Vec<u8> = (0..32).collect();
    vm.ram_w(0x30_0000, &pixels);
    assert_eq!(
        vm.command(&hdr(RESOURCE_CREATE_2D, &[5, 2, 4, 2])),
        Some(resp::OK_NODATA)
    );
    assert_eq!(vm.command(&attach(5, 0x30_0000, 32)), Some(resp::OK_NODATA));
    assert_eq!(vm.command(&transfer(5, 4, 2)), Some(resp::OK_NODATA));
    assert_eq!(
        vm.server().model().device().gpu().resource_data(5),
        Some(&pixels[..])
    );
    let st = vm.server.as_mut().expect("server").status(false);
    let d = st.device.expect("device summary");
    assert!(d.contains("requests answered 4"), "{d}");
    assert!(d.contains("status 0x0f (running)"), "{d}");
    assert_eq!(st.counters.intx_changes, vm.sim.intx(&vm.dom, TEST_SBDF).1);
}

#[test]
fn a_restarted_server_goes_on_from_the_saved_line() {
    let mut vm = Vm::new();
    vm.probe();
    assert_eq!(
        vm.command(&hdr(GET_DISPLAY_INFO, &[])),
        Some(resp::OK_DISPLAY_INFO)
    );
    assert!(vm.intx());
    let saved = vm.saved.borrow().clone();
    assert_eq!(saved, vm.server().model().saved(), "saved at every change");
    // SIGKILL: the handles close; the Xen server, the line and the ring
    // stay. The new worker takes the server over with the saved line.
    let id = vm.server().ioservid();
    drop(vm.server.take());
    let cfg = test_config(64 * MIB, 64 * 1024, Limits::default());
    let func = model(&vm.sim, vm.dom, &vm.forgotten);
    let s = Server::attach_with(
        vm.sim.device_model(),
        vm.sim.host_mem(),
        vm.dom,
        id,
        cfg,
        func,
        Some(&saved),
    )
    .map_err(|(e, _, _)| e)
    .expect("attach");
    vm.server = Some(s);
    vm.saver();
    assert!(vm.server().model().device().is_running());
    assert!(vm.intx(), "INTA still up: the ISR was never read");
    // The ring goes on at its second entry, BAR2 still answers.
    assert_eq!(
        vm.command(&hdr(GET_DISPLAY_INFO, &[])),
        Some(resp::OK_DISPLAY_INFO)
    );
    assert_eq!(vm.ram_u16(RINGS[0] + 0x2002), 2);
    assert_eq!(vm.r(ISR, 1), u64::from(VIRTIO_PCI_ISR_QUEUE));
    assert!(!vm.intx());

    // A line the device could not be in is refused: nothing is served.
    drop(vm.server.take());
    let func = model(&vm.sim, vm.dom, &vm.forgotten);
    let cfg = test_config(64 * MIB, 64 * 1024, Limits::default());
    let r = Server::attach_with(
        vm.sim.device_model(),
        vm.sim.host_mem(),
        vm.dom,
        id,
        cfg,
        func,
        Some("pci:00=ffffffff;bar2:zz"),
    );
    assert!(r.is_err());
}

#[test]
fn a_buffer_outside_guest_ram_gets_an_error_and_the_device_goes_on() {
    let mut vm = Vm::new();
    vm.probe();
    // The response buffer in the window (a lent page is never mapped as
    // foreign memory) and in a hole: the buffers are returned with
    // nothing written, the device stays live.
    for (i, rs) in [WINDOW + 0x1000, 0x8000_0000].into_iter().enumerate() {
        let r = vm.command_to(&hdr(GET_DISPLAY_INFO, &[]), Some(rs));
        assert_eq!(r, None, "nothing readable at {rs:#x}");
        assert_eq!(vm.ram_u16(RINGS[0] + 0x2002), i as u16 + 1, "returned");
        assert_eq!(vm.ram_u32(RINGS[0] + 0x2004 + 8 * i as u64 + 4), 0, "empty");
        assert!(vm.server().model().device().is_running());
    }
    // A descriptor whose range wraps around the address space breaks the
    // ring's rules: NEEDS_RESET, never a read.
    assert_eq!(
        vm.command_to(&hdr(GET_DISPLAY_INFO, &[]), Some(u64::MAX - 8)),
        None
    );
    assert_ne!(vm.r(COMMON + common::STATUS, 1) & 64, 0, "NEEDS_RESET");
    vm.probe();
    // Backing outside RAM: the transfer fails with an error, no crash.
    assert_eq!(
        vm.command(&hdr(RESOURCE_CREATE_2D, &[7, 2, 4, 2])),
        Some(resp::OK_NODATA)
    );
    assert_eq!(
        vm.command(&attach(7, WINDOW, 32)),
        Some(resp::OK_NODATA),
        "backing is checked when used"
    );
    let r = vm.command(&transfer(7, 4, 2));
    assert_ne!(r, Some(resp::OK_NODATA));
    assert!(vm.server().model().device().is_running());
    assert_eq!(
        vm.command(&hdr(GET_DISPLAY_INFO, &[])),
        Some(resp::OK_DISPLAY_INFO)
    );
}

#[test]
fn a_ring_outside_guest_ram_stops_the_device_until_a_reset() {
    let mut vm = Vm::new();
    vm.probe();
    vm.r(ISR, 1);
    // The driver moves nothing, but its descriptor chain loops.
    vm.desc(0, 2, 0x10_0000, 24, 1, 3);
    vm.desc(0, 3, 0x10_0000, 24, 1, 2);
    vm.publish(0, 2);
    vm.w(NOTIFY, 2, 0);
    assert_ne!(vm.r(COMMON + common::STATUS, 1) & 64, 0, "NEEDS_RESET");
    assert!(vm.intx(), "configuration interrupt");
    assert_eq!(vm.r(ISR, 1), u64::from(VIRTIO_PCI_ISR_CONFIG));
    assert!(!vm.server().model().device().is_running());
    // Reset: mappings dropped, and a ring in a hole never starts.
    let before = *vm.forgotten.borrow();
    vm.w(COMMON + common::STATUS, 1, 0);
    assert!(*vm.forgotten.borrow() > before, "mappings dropped on reset");
    vm.w(COMMON + common::STATUS, 1, 3);
    vm.w(COMMON + common::GFSELECT, 4, 1);
    vm.w(COMMON + common::GF, 4, 1);
    vm.w(COMMON + common::STATUS, 1, 11);
    vm.w(COMMON + common::Q_SELECT, 2, 0);
    vm.w(COMMON + common::Q_SIZE, 2, u64::from(SIZE));
    vm.w(COMMON + common::Q_DESCLO, 4, 0x7000_0000);
    vm.w(COMMON + common::Q_AVAILLO, 4, 0x7000_1000);
    vm.w(COMMON + common::Q_USEDLO, 4, 0x7000_2000);
    vm.w(COMMON + common::Q_ENABLE, 2, 1);
    vm.w(COMMON + common::STATUS, 1, 15);
    vm.w(NOTIFY, 2, 0);
    assert_ne!(vm.r(COMMON + common::STATUS, 1) & 64, 0, "NEEDS_RESET");
    // The driver starts over properly and is served.
    vm.probe();
    assert_eq!(
        vm.command(&hdr(GET_DISPLAY_INFO, &[])),
        Some(resp::OK_DISPLAY_INFO)
    );
}

#[test]
fn register_accesses_of_forms_linux_never_makes_are_unbacked() {
    let mut vm = Vm::new();
    vm.probe();
    let unsupported = |vm: &mut Vm| {
        vm.server
            .as_mut()
            .expect("server")
            .status(false)
            .counters
            .unsupported
    };
    let before = unsupported(&mut vm);
    // `rep movs` from RAM into the registers (data_is_ptr), `rep stos`.
    let r = vm.sim.execute(
        &vm.dom,
        0,
        &Insn::RepStos {
            gpa: COMMON,
            size: 4,
            count: 4,
            value: 0,
            df: false,
        },
        &mut || {
            if let Some(s) = vm.server.as_mut() {
                s.drain(Instant::now()).expect("drain");
            }
        },
    );
    let _ = r;
    assert!(unsupported(&mut vm) > before);
    // `rep movs` from the registers into RAM (a data_is_ptr read): the
    // device is not asked, the buffer gets ones over exactly the bytes
    // copied, in one round trip.
    let buf = (RAM_PAGES - 1) * 4096 + 0x100;
    assert!(vm.sim.mem_write(&vm.dom, buf - 8, &[0x11; 48]));
    let before = unsupported(&mut vm);
    let r = vm.sim.execute(
        &vm.dom,
        0,
        &Insn::RepMovs {
            dst: buf,
            src: COMMON,
            size: 4,
            count: 8,
            df: false,
        },
        &mut || {
            if let Some(s) = vm.server.as_mut() {
                s.drain(Instant::now()).expect("drain");
            }
        },
    );
    assert_eq!((r.stopped, r.requests, r.retries), (None, 1, 0), "{r:?}");
    let got = vm.sim.mem_read(&vm.dom, buf - 8, 48).expect("RAM");
    assert_eq!(&got[..8], &[0x11; 8]);
    assert_eq!(&got[8..40], &[0xff; 32]);
    assert_eq!(&got[40..], &[0x11; 8]);
    assert_eq!(unsupported(&mut vm), before + 1);
    assert!(
        vm.server().model().device().is_running(),
        "status untouched"
    );
    // Reads past the registers of BAR2 read as ones or zero, never fail.
    let v = vm.r(REGS + 0x3ffc, 4);
    assert!(v == 0 || v == 0xffff_ffff, "{v:#x}");
}

#[test]
fn the_window_still_lends_behind_a_virtio_gpu_function() {
    let mut vm = Vm::new();
    vm.probe();
    vm.sim.register(&vm.dom, 1, 0, 16, 100).expect("register");
    match vm.access(WINDOW + 0x1234, 8, None) {
        Access::Ram { .. } => {}
        a => panic!("window read: {a:?}"),
    }
    assert!(vm.sim.lent_pages(&vm.dom) > 0);
    let st = vm.server.as_mut().expect("server").status(false);
    assert!(st.counters.lends > 0 && st.counters.retries > 0);
    // The device keeps working beside it.
    assert_eq!(
        vm.command(&hdr(GET_DISPLAY_INFO, &[])),
        Some(resp::OK_DISPLAY_INFO)
    );
    // Teardown: everything unmapped and revoked, the mappings dropped.
    let before = *vm.forgotten.borrow();
    let (_, _, report) = vm.server.take().expect("server").shutdown();
    assert!(report.is_clean(), "{:?}", report.errors);
    assert_eq!(vm.sim.lent_pages(&vm.dom), 0);
    assert!(*vm.forgotten.borrow() > before);
}

#[test]
fn bar2_placed_over_the_window_is_harmless_and_can_move_away() {
    let mut vm = Vm::new();
    // The window moved below 4 GiB, BAR2 inside it: Xen refuses the
    // overlapping range (EEXIST within one server); the window's range
    // still brings those accesses to the server, which serves the
    // registers first.
    let low = 0xe000_0000u64;
    vm.cfg_w(REG_BAR1, 4, 0);
    vm.cfg_w(REG_BAR0, 4, low as u32 | 0xc);
    vm.cfg_w(REG_BAR2, 4, (low as u32) | 0x10_0000);
    assert_eq!(vm.r(low + 0x10_0000 + common::NUMQ, 2), 2);
    // Moved away (the range Xen never mapped is not unmapped), it is
    // routed and served again.
    vm.cfg_w(REG_BAR2, 4, REGS as u32);
    assert_eq!(vm.r(COMMON + common::NUMQ, 2), 2);
    vm.probe();
    assert_eq!(
        vm.command(&hdr(GET_DISPLAY_INFO, &[])),
        Some(resp::OK_DISPLAY_INFO)
    );
    // BAR2 over guest RAM: RAM wins, as on Xen; nothing reaches the server.
    let before = vm
        .server
        .as_mut()
        .expect("server")
        .status(false)
        .counters
        .register_accesses;
    vm.cfg_w(REG_BAR2, 4, 0x20_0000);
    assert!(!matches!(
        vm.access(0x20_0000 + common::NUMQ, 2, None),
        Access::Emulated { value: 2 }
    ));
    let after = vm
        .server
        .as_mut()
        .expect("server")
        .status(false)
        .counters
        .register_accesses;
    assert_eq!(before, after);
}

#[test]
fn intx_disable_in_command_lowers_and_restores_the_line() {
    use gpu_hostmem_core::pci::COMMAND_INTX_DISABLE;
    let mut vm = Vm::new();
    vm.probe();
    assert_eq!(
        vm.command(&hdr(GET_DISPLAY_INFO, &[])),
        Some(resp::OK_DISPLAY_INFO)
    );
    assert!(vm.intx());
    let on = COMMAND_MEMORY | COMMAND_MASTER;
    vm.cfg_w(REG_COMMAND, 2, u32::from(on | COMMAND_INTX_DISABLE));
    assert!(!vm.intx(), "INTX_DISABLE masks the line");
    vm.cfg_w(REG_COMMAND, 2, u32::from(on));
    assert!(vm.intx(), "the ISR is still set: the line comes back");
    assert_eq!(vm.r(ISR, 1), u64::from(VIRTIO_PCI_ISR_QUEUE));
    assert!(!vm.intx());
    // Bus mastering off: a notification is ignored (the device may not
    // touch guest memory), nothing is answered.
    vm.cfg_w(REG_COMMAND, 2, u32::from(COMMAND_MEMORY));
    assert_eq!(vm.command(&hdr(GET_DISPLAY_INFO, &[])), None);
    assert!(!vm.intx());
}

/// A renderer whose blobs are the simulator's backend memory: mapping a
/// blob registers fresh pages at its window offset, unmapping or
/// destroying it unregisters them (the notifier revokes what was lent), as
/// `gpu-hostmem-renderer` does with privcmd.
#[derive(Debug)]
struct SimRenderer {
    sim: SimHandle,
    dom: DomainIdentity,
    /// handle -> (pages, registered)
    blobs: std::collections::HashMap<u64, (u64, bool)>,
    next: u64,
}

/// `Sim` without `Debug`.
#[derive(Clone)]
struct SimHandle(Sim);

impl std::fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sim")
    }
}

impl Renderer for SimRenderer {
    fn create_context(&mut self, _: u32, capset: u32) -> Result<(), RendererError> {
        assert_eq!(capset, TEST_CAPSET_ID);
        Ok(())
    }
    fn destroy_context(&mut self, _: u32) -> Result<(), RendererError> {
        Ok(())
    }
    fn create_blob(&mut self, r: BlobRequest) -> Result<BlobHandle, RendererError> {
        self.next += 1;
        self.blobs.insert(self.next, (r.size / 4096, false));
        Ok(BlobHandle(self.next))
    }
    fn map_blob(&mut self, h: BlobHandle, offset: u64) -> Result<MapCache, RendererError> {
        let b = self.blobs.get_mut(&h.0).expect("blob");
        self.sim
            .0
            .register(&self.dom, h.0 as u32, offset, b.0, 4242)
            .map_err(|e| RendererError::Refused {
                op: "register",
                errno: e.errno.0,
            })?;
        b.1 = true;
        Ok(MapCache::Cached)
    }
    fn unmap_blob(&mut self, h: BlobHandle) -> Result<(), RendererError> {
        let b = self.blobs.get_mut(&h.0).expect("blob");
        if b.1 {
            b.1 = false;
            let _ = self.sim.0.unregister(&self.dom, h.0 as u32);
        }
        Ok(())
    }
    fn destroy_blob(&mut self, h: BlobHandle) -> Result<(), RendererError> {
        self.unmap_blob(h)?;
        self.blobs.remove(&h.0);
        Ok(())
    }
    fn capset(&mut self, capset: u32, _: u32, _: u32) -> Result<Vec<u8>, RendererError> {
        assert_eq!(capset, TEST_CAPSET_ID);
        Ok(blob::TEST_CAPSET_DATA.to_vec())
    }
    fn submit(&mut self, _: u32, capset: u32, _: &[u8]) -> Result<(), RendererError> {
        assert_eq!(capset, TEST_CAPSET_ID);
        Ok(())
    }
}

fn blob_model(
    sim: &Sim,
    dom: DomainIdentity,
    forgotten: &Rc<RefCell<u32>>,
) -> GpuModel<SimGuestMemory> {
    let mem = SimGuestMemory {
        sim: sim.clone(),
        dom,
        forgotten: forgotten.clone(),
    };
    let r = SimRenderer {
        sim: SimHandle(sim.clone()),
        dom,
        blobs: Default::default(),
        next: 0,
    };
    GpuModel::with_renderer(
        64 * MIB,
        1,
        mem,
        GpuConfig::default().with_test_capset(),
        Box::new(r),
    )
    .expect("model")
}

fn ctx_hdr(ty: u32, ctx: u32, words: &[u32]) -> Vec<u8> {
    let mut v = hdr(ty, words);
    v[16..20].copy_from_slice(&ctx.to_le_bytes());
    v
}

#[test]
fn a_mapped_blob_is_lent_on_fault_and_revoked_by_unref() {
    let mut vm = Vm::with(blob_model);
    vm.probe();
    let mut ctx = ctx_hdr(0x200, 1, &[4, TEST_CAPSET_ID]);
    ctx.extend_from_slice(&[b'x'; 64]);
    assert_eq!(vm.command(&ctx), Some(resp::OK_NODATA));
    let blob = |id: u32, pages: u64| {
        let mut v = ctx_hdr(0x10c, 1, &[id, 2, 1, 0]);
        v.extend_from_slice(&0u64.to_le_bytes());
        v.extend_from_slice(&(pages * 4096).to_le_bytes());
        v
    };
    let map = |id: u32, offset: u64| {
        let mut v = hdr(0x208, &[id, 0]);
        v.extend_from_slice(&offset.to_le_bytes());
        v
    };
    assert_eq!(vm.command(&blob(5, 4)), Some(resp::OK_NODATA));
    assert_eq!(vm.command(&blob(6, 4)), Some(resp::OK_NODATA));
    assert_eq!(
        vm.command(&map(5, 0x10_0000)),
        Some(blob::resp::OK_MAP_INFO)
    );
    // Another blob over it is refused before the renderer is asked.
    assert_eq!(
        vm.command(&map(6, 0x10_2000)),
        Some(resp::ERR_INVALID_PARAMETER)
    );
    // Nothing is lent until the guest touches the blob; then the server
    // lends the renderer's pages and the access completes from RAM.
    assert_eq!(vm.sim.lent_pages(&vm.dom), 0);
    match vm.access(WINDOW + 0x10_1008, 8, Some(0x1122_3344_5566_7788)) {
        Access::Ram { .. } => {}
        a => panic!("blob write: {a:?}"),
    }
    assert!(vm.sim.lent_pages(&vm.dom) > 0);
    assert_eq!(
        vm.sim.backend_bytes(&vm.dom, 0x10_1008, 2),
        [Some(0x88), Some(0x77)],
        "the renderer sees the guest's bytes"
    );
    let st = vm.server.as_mut().expect("server").status(false);
    assert!(st.counters.lends > 0, "{:?}", st.counters);
    let d = st.device.expect("summary");
    assert!(
        d.contains("contexts 1, blobs 2 (32768 bytes), mapped 1 (16384 bytes)"),
        "{d}"
    );
    // UNREF of the mapped blob unregisters it: nothing stays lent and
    // the window reads as unbacked there again.
    assert_eq!(vm.command(&hdr(0x102, &[5, 0])), Some(resp::OK_NODATA));
    assert_eq!(vm.sim.lent_pages(&vm.dom), 0);
    assert_eq!(vm.sim.backend_bytes(&vm.dom, 0x10_1008, 1), [None]);
    let a = vm.access(WINDOW + 0x10_1008, 8, None);
    assert!(
        !matches!(a, Access::Ram { .. }),
        "revoked blob still backed: {a:?}"
    );
    // The offset is free for the other blob.
    assert_eq!(
        vm.command(&map(6, 0x10_2000)),
        Some(blob::resp::OK_MAP_INFO)
    );
    let (_, _, report) = vm.server.take().expect("server").shutdown();
    assert!(report.is_clean(), "{:?}", report.errors);
    assert_eq!(vm.sim.lent_pages(&vm.dom), 0);
}

/// A fence asked for: (ctx, ring, id, generation).
type Asked = (u32, u32, u64, u64);

/// A renderer that takes every stream and fence and reports a fence
/// retired when the test says.
#[derive(Debug, Clone, Default)]
struct Fencing {
    /// Fences asked for: (ctx, ring, id, generation).
    asked: Rc<RefCell<Vec<Asked>>>,
    /// Reports for the next poll.
    events: Rc<RefCell<Vec<FenceRetired>>>,
}

impl Renderer for Fencing {
    fn create_context(&mut self, _: u32, _: u32) -> Result<(), RendererError> {
        Ok(())
    }
    fn destroy_context(&mut self, _: u32) -> Result<(), RendererError> {
        Ok(())
    }
    fn create_blob(&mut self, r: BlobRequest) -> Result<BlobHandle, RendererError> {
        Ok(BlobHandle(u64::from(r.resource_id)))
    }
    fn map_blob(&mut self, _: BlobHandle, _: u64) -> Result<MapCache, RendererError> {
        Ok(MapCache::Cached)
    }
    fn unmap_blob(&mut self, _: BlobHandle) -> Result<(), RendererError> {
        Ok(())
    }
    fn destroy_blob(&mut self, _: BlobHandle) -> Result<(), RendererError> {
        Ok(())
    }
    fn capset(&mut self, _: u32, _: u32, _: u32) -> Result<Vec<u8>, RendererError> {
        Ok(blob::TEST_CAPSET_DATA.to_vec())
    }
    fn submit(&mut self, _: u32, _: u32, _: &[u8]) -> Result<(), RendererError> {
        Ok(())
    }
    fn create_fence(
        &mut self,
        ctx: u32,
        _: u32,
        ring: u32,
        id: u64,
        generation: u64,
    ) -> Result<(), RendererError> {
        self.asked.borrow_mut().push((ctx, ring, id, generation));
        Ok(())
    }
    fn poll_events(&mut self) -> Vec<FenceRetired> {
        std::mem::take(&mut *self.events.borrow_mut())
    }
}

#[test]
fn a_fenced_response_is_answered_by_the_server_when_the_renderer_retires_it() {
    let fencing = Fencing::default();
    let f = fencing.clone();
    let mut vm = Vm::with(move |sim, dom, forgotten| {
        let mem = SimGuestMemory {
            sim: sim.clone(),
            dom,
            forgotten: forgotten.clone(),
        };
        GpuModel::with_renderer(
            64 * MIB,
            1,
            mem,
            GpuConfig::default().with_test_capset(),
            Box::new(f),
        )
        .expect("model")
    });
    vm.probe();
    let mut ctx = ctx_hdr(0x200, 1, &[4, TEST_CAPSET_ID]);
    ctx.extend_from_slice(&[b'x'; 64]);
    assert_eq!(vm.command(&ctx), Some(resp::OK_NODATA));
    vm.r(ISR, 1);
    assert!(!vm.intx());
    // SUBMIT_3D with VIRTIO_GPU_FLAG_FENCE | INFO_RING_IDX, fence 9, ring 2.
    let mut submit = ctx_hdr(0x207, 1, &[16, 0, 1, 5, 0, 7]);
    submit[4] = 3;
    submit[8..16].copy_from_slice(&9u64.to_le_bytes());
    submit[20] = 2;
    let rs = 0x10_1000 + 0x2000 * u64::from(vm.avail_idx[0] % SIZE);
    assert_eq!(vm.command(&submit), None, "kept until its fence retires");
    let (c, r, id, gen) = fencing.asked.borrow()[0];
    assert_eq!((c, r, id), (1, 2, 9));
    let saved = vm.saved.borrow().clone();
    // Nothing retired: a wake-up of the server answers nothing.
    vm.server.as_mut().expect("server").background();
    assert_eq!(vm.ram_u16(RINGS[0] + 0x2002), vm.used_seen[0]);
    assert!(!vm.intx());
    fencing.events.borrow_mut().push(FenceRetired {
        ctx_id: 1,
        ring_idx: 2,
        fence_id: 9,
        generation: gen,
    });
    vm.server.as_mut().expect("server").background();
    assert_eq!(
        vm.ram_u16(RINGS[0] + 0x2002),
        vm.used_seen[0].wrapping_add(1),
        "the kept response went to the used ring"
    );
    assert_eq!(vm.ram_u32(rs), resp::OK_NODATA);
    assert_eq!(vm.ram_u32(rs + 4), 3, "FENCE | INFO_RING_IDX");
    assert_eq!(vm.ram_u32(rs + 8), 9, "fence id");
    assert!(vm.intx(), "INTA raised through set_pci_intx_level");
    assert_ne!(*vm.saved.borrow(), saved, "the new ring position is saved");
    let st = vm.server.as_mut().expect("server").status(false);
    let d = st.device.expect("summary");
    assert!(d.contains("fences kept 0 (waiting 0, answered 1"), "{d}");
}
