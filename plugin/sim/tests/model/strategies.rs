//! Strategies: random transitions over a few domid slots, so creation,
//! destruction and domid reuse collide often.

use gpu_hostmem_core::pci::MAX_DECODE_END;
use proptest::prelude::*;

/// Domid slots (domid = slot + 1).
pub const SLOTS: u8 = 3;
/// BAR pages (4 MiB BAR).
pub const BAR_PAGES: u64 = 1024;
/// BAR size in bytes.
pub const BAR_SIZE: u64 = BAR_PAGES * 4096;
/// Where firmware places the BAR at creation.
pub const FIRMWARE_BASE: u64 = 0x1_0000_0000;

/// An armed fault, mapped to `gpu_hostmem_sim::Fault` by the SUT.
#[derive(Clone, Copy, Debug)]
pub enum FaultKind {
    LendBusy(u32),
    LendPartial(u32),
    DomainDiesDuringLend(u32),
    RevokeFails,
    MapMmioFails,
    RevokeBeforeRetryCheck(u32),
    CompleteFails,
}

/// One transition.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    Create {
        slot: u8,
        vcpus: u32,
    },
    Register {
        slot: u8,
        id: u8,
        page: u64,
        nr: u64,
    },
    Unregister {
        slot: u8,
        id: u8,
    },
    Migrate {
        slot: u8,
        id: u8,
        page: u64,
    },
    Read {
        slot: u8,
        vcpu: u32,
        page: u64,
        size: u32,
    },
    Write {
        slot: u8,
        vcpu: u32,
        page: u64,
    },
    MoveBar {
        slot: u8,
        base: u64,
    },
    ToggleDecode {
        slot: u8,
    },
    ProbeBar {
        slot: u8,
    },
    KillServer {
        slot: u8,
    },
    Destroy {
        slot: u8,
    },
    StaleTeardown {
        slot: u8,
    },
    Fault(FaultKind),
    /// A fault armed right before a read (so faults meet the lend path).
    FaultyRead {
        fault: FaultKind,
        slot: u8,
        vcpu: u32,
        page: u64,
    },
    /// Any instruction form Xen turns into BAR requests, checked byte for
    /// byte against the backend's memory.
    Exec {
        slot: u8,
        vcpu: u32,
        form: Form,
    },
}

/// An instruction on the BAR: `page`/`off` place its BAR side (`off` may
/// run past the page: straddling accesses); `len` bytes in all for string
/// forms.
#[derive(Clone, Copy, Debug)]
pub enum Form {
    Load {
        page: u64,
        off: u64,
        size: u32,
    },
    Store {
        page: u64,
        off: u64,
        size: u32,
        seed: u8,
    },
    RepStos {
        page: u64,
        off: u64,
        size: u32,
        len: u64,
        df: bool,
        seed: u8,
    },
    /// Between the BAR and guest RAM (`data_is_ptr` requests).
    RepMovs {
        to_bar: bool,
        page: u64,
        off: u64,
        ram_off: u64,
        size: u32,
        len: u64,
        df: bool,
    },
    /// BAR to BAR (Xen: one element at a time).
    BarToBar {
        dst_page: u64,
        src_page: u64,
        off: u64,
        size: u32,
        len: u64,
        df: bool,
    },
}

fn elem_size() -> impl Strategy<Value = u32> {
    prop_oneof![Just(1u32), Just(2), Just(4), Just(8)]
}

fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![2 => 0u64..4096, 1 => 4080u64..4096, 1 => Just(0u64)]
}

fn form() -> impl Strategy<Value = Form> {
    prop_oneof![
        (
            page(),
            offset(),
            prop_oneof![Just(1u32), Just(2), Just(4), Just(8), Just(16)]
        )
            .prop_map(|(page, off, size)| Form::Load { page, off, size }),
        (
            page(),
            offset(),
            prop_oneof![Just(1u32), Just(2), Just(4), Just(8), Just(16)],
            any::<u8>()
        )
            .prop_map(|(page, off, size, seed)| Form::Store {
                page,
                off,
                size,
                seed
            }),
        (
            page(),
            offset(),
            elem_size(),
            1u64..20000,
            any::<bool>(),
            any::<u8>()
        )
            .prop_map(|(page, off, size, len, df, seed)| Form::RepStos {
                page,
                off,
                size,
                len,
                df,
                seed
            }),
        (
            any::<bool>(),
            page(),
            offset(),
            0u64..4096,
            elem_size(),
            1u64..12000,
            any::<bool>()
        )
            .prop_map(
                |(to_bar, page, off, ram_off, size, len, df)| Form::RepMovs {
                    to_bar,
                    page,
                    off,
                    ram_off,
                    size,
                    len,
                    df
                }
            ),
        (
            page(),
            page(),
            offset(),
            elem_size(),
            1u64..2000,
            any::<bool>()
        )
            .prop_map(|(dst_page, src_page, off, size, len, df)| Form::BarToBar {
                dst_page,
                src_page,
                off,
                size,
                len,
                df
            }),
    ]
}

fn slot() -> impl Strategy<Value = u8> {
    0..SLOTS
}

/// BAR pages, mostly in the low part where registrations cluster, and the
/// last page of a 64 KiB fault-around chunk there (an access running off
/// its end touches two chunks).
fn page() -> impl Strategy<Value = u64> {
    prop_oneof![4 => 0u64..64, 1 => 0..BAR_PAGES, 1 => (0u64..4).prop_map(|k| k * 16 + 15)]
}

/// Size-aligned multiples of the BAR size in `[lo, hi)`.
fn aligned(lo: u64, hi: u64) -> impl Strategy<Value = u64> {
    (lo / BAR_SIZE..hi / BAR_SIZE).prop_map(|k| k * BAR_SIZE)
}

/// Any size-aligned BAR base a guest may write: below and above 4 GiB,
/// anywhere it can address, ones whose lower dword has every writable bit
/// set (which a size probe also writes), the highest decodable one, and
/// ones beyond what any access can reach (decoded nowhere).
fn bar_base() -> impl Strategy<Value = u64> {
    let lo_all_ones = u64::from(!((BAR_SIZE - 1) as u32) & !0xf);
    prop_oneof![
        3 => aligned(BAR_SIZE, 1 << 32),
        3 => aligned(1 << 32, 1 << 40),
        1 => aligned(1 << 40, MAX_DECODE_END),
        2 => (0u64..1 << 20).prop_map(move |hi| (hi << 32) | lo_all_ones),
        1 => Just(MAX_DECODE_END - BAR_SIZE),
        1 => aligned(MAX_DECODE_END, u64::MAX),
    ]
}

fn fault() -> impl Strategy<Value = FaultKind> {
    prop_oneof![
        (1u32..5).prop_map(FaultKind::LendBusy),
        (0u32..16).prop_map(FaultKind::LendPartial),
        (0u32..16).prop_map(FaultKind::DomainDiesDuringLend),
        Just(FaultKind::RevokeFails),
        Just(FaultKind::MapMmioFails),
        (1u32..12).prop_map(FaultKind::RevokeBeforeRetryCheck),
        Just(FaultKind::CompleteFails),
    ]
}

/// Any transition, weighted towards guest accesses.
pub fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (slot(), 1u32..4).prop_map(|(slot, vcpus)| Op::Create { slot, vcpus }),
        6 => (slot(), 0u8..4, page(), 1u64..96)
            .prop_map(|(slot, id, page, nr)| Op::Register { slot, id, page, nr }),
        1 => (slot(), 0u8..4).prop_map(|(slot, id)| Op::Unregister { slot, id }),
        1 => (slot(), 0u8..4, 0u64..80).prop_map(|(slot, id, page)| Op::Migrate { slot, id, page }),
        10 => (slot(), 0u32..3, page(), prop_oneof![Just(1u32), Just(4), Just(8)])
            .prop_map(|(slot, vcpu, page, size)| Op::Read { slot, vcpu, page, size }),
        2 => (slot(), 0u32..3, page()).prop_map(|(slot, vcpu, page)| Op::Write { slot, vcpu, page }),
        2 => (slot(), bar_base()).prop_map(|(slot, base)| Op::MoveBar { slot, base }),
        1 => slot().prop_map(|slot| Op::ToggleDecode { slot }),
        1 => slot().prop_map(|slot| Op::ProbeBar { slot }),
        1 => slot().prop_map(|slot| Op::KillServer { slot }),
        2 => slot().prop_map(|slot| Op::Destroy { slot }),
        1 => slot().prop_map(|slot| Op::StaleTeardown { slot }),
        1 => fault().prop_map(Op::Fault),
        2 => (fault(), slot(), 0u32..3, page())
            .prop_map(|(fault, slot, vcpu, page)| Op::FaultyRead { fault, slot, vcpu, page }),
        6 => (slot(), 0u32..3, form()).prop_map(|(slot, vcpu, form)| Op::Exec { slot, vcpu, form }),
    ]
}
