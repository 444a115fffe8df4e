//! The whole stage-1 device as the IOREQ server will drive it: the PCI
//! function and transport, the two split queues once the driver made the
//! device live, and the 2D commands. An MMIO access to the register BAR
//! may make the device live (queues built from what the driver
//! configured), reset it (queues and resources dropped), or notify a
//! queue, which is then served at once: each chain's request is copied
//! out, answered, and returned, and the driver is interrupted unless it
//! asked not to be. A queue that breaks a rule stops the device
//! (NEEDS_RESET) until the driver resets it.
//!
//! Work per notification is bounded by the queue size: a driver cannot
//! keep the server in one request forever.
//!
//! The response of a fenced command is kept until the work before it is
//! done ([`crate::fence`]): the used ring is then out of order (the device
//! does not offer `VIRTIO_F_IN_ORDER`). Kept responses leave when the
//! renderer reports a fence retired ([`VirtioGpu::poll_renderer`], which
//! the server calls when the renderer's socket is readable, and at every
//! notification), when their context is destroyed, or when the renderer
//! is lost; a reset drops them.

use tracing::debug;

use gpu_hostmem_core::pci::PciError;

use crate::blob::{is_blob_command, Blobs};
use crate::device::{GpuConfig, GpuDevice, CONTROL_QUEUE, CURSOR_QUEUE};
use crate::fence::{FenceStats, Fences, Refusal, Timeline};
use crate::gpu2d::{resp, respond, Gpu2d, HDR_LEN, MAX_REQUEST_LEN};
use crate::memory::GuestMemory;
use crate::queue::{Chain, QueueError, SplitQueue};
use crate::renderer::{NoRenderer, Renderer};
use crate::transport::{QueueConfig, TransportState};
use crate::{Action, ConfigChange, RestoreError, VirtioGpuFunctionState, VirtioGpuPci};

/// The virtio-gpu device of stage 1.
#[derive(Debug)]
pub struct VirtioGpu {
    pci: VirtioGpuPci<GpuDevice>,
    /// While live: each queue the driver enabled.
    queues: Option<Vec<Option<SplitQueue>>>,
    gpu: Gpu2d,
    blobs: Blobs,
    /// Responses of fenced commands, kept until their fence is done.
    fences: Fences<(Chain, Vec<u8>)>,
    served: u64,
}

use virtio_bindings::virtio_gpu as vg;
const SUBMIT_3D: u32 = vg::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_SUBMIT_3D;
const CTX_DESTROY: u32 = vg::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_CTX_DESTROY;
/// Response types from this one on are errors.
const FIRST_ERROR: u32 = vg::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_ERR_UNSPEC;

const CREATE_2D: u32 =
    virtio_bindings::virtio_gpu::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_CREATE_2D;
const UNREF: u32 = virtio_bindings::virtio_gpu::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_UNREF;

/// Merges a later action into an earlier one: the INTx level the caller
/// must end at is the last one reported.
fn merge(a: Action, b: Action) -> Action {
    Action {
        intx: b.intx.or(a.intx),
        notify: b.notify.or(a.notify),
        activated: a.activated || b.activated,
        reset: a.reset || b.reset,
    }
}

impl VirtioGpu {
    /// A device with a window of `window_size` bytes offering `cfg`, with
    /// at most `resource_limit` bytes of 2D resources.
    pub fn new(
        window_size: u64,
        subsystem: u16,
        cfg: GpuConfig,
        resource_limit: u64,
    ) -> Result<Self, PciError> {
        Self::with_renderer(
            window_size,
            subsystem,
            cfg,
            resource_limit,
            Box::new(NoRenderer),
        )
    }

    /// A device as [`VirtioGpu::new`] whose contexts and blobs `renderer`
    /// serves; at most `window_size` bytes of blobs.
    pub fn with_renderer(
        window_size: u64,
        subsystem: u16,
        cfg: GpuConfig,
        resource_limit: u64,
        renderer: Box<dyn Renderer>,
    ) -> Result<Self, PciError> {
        // The capsets the table keeps are the ones `num_capsets` counts.
        let blobs = Blobs::new(renderer, &cfg.capsets, window_size, window_size);
        let cfg = GpuConfig {
            capsets: blobs.capsets().to_vec(),
            ..cfg
        };
        let gpu = Gpu2d::new(resource_limit, cfg.num_scanouts);
        Ok(VirtioGpu {
            pci: VirtioGpuPci::new(window_size, subsystem, GpuDevice::new(cfg))?,
            queues: None,
            gpu,
            blobs,
            fences: Fences::new(),
            served: 0,
        })
    }

    /// The PCI function and transport.
    pub fn pci(&self) -> &VirtioGpuPci<GpuDevice> {
        &self.pci
    }

    /// The 2D state.
    pub fn gpu(&self) -> &Gpu2d {
        &self.gpu
    }

    /// Contexts and blobs.
    pub fn blobs(&self) -> &Blobs {
        &self.blobs
    }

    /// Kept fenced responses and what happened to fences.
    pub fn fence_stats(&self) -> FenceStats {
        self.fences.stats()
    }

    /// The reset generation fences are asked in.
    pub fn fence_generation(&self) -> u64 {
        self.fences.generation()
    }

    /// Takes the renderer's fence reports (without waiting) and answers
    /// the kept responses that are done now; interrupts the driver if any
    /// left and it wants to be. The server calls it when the renderer's
    /// socket is readable.
    pub fn poll_renderer(&mut self, mem: &mut impl GuestMemory) -> Action {
        take_events(&mut self.blobs, &mut self.fences);
        let Some(q) = self
            .queues
            .as_mut()
            .and_then(|qs| qs.get_mut(usize::from(CONTROL_QUEUE)))
            .and_then(Option::as_mut)
        else {
            return Action::default();
        };
        let r = push_ready(&mut self.fences, q, mem).and_then(|n| {
            self.served += u64::from(n);
            Ok(n > 0 && q.wants_interrupt(mem)?)
        });
        match r {
            Ok(true) => self.pci.signal_used(),
            Ok(false) => Action::default(),
            Err(e) => {
                debug!(%e, "control queue broke a rule: NEEDS_RESET");
                self.queues = None;
                self.fences.reset();
                self.pci.device_error()
            }
        }
    }

    /// Requests answered since creation.
    pub fn served(&self) -> u64 {
        self.served
    }

    /// True while the queues are in use.
    pub fn is_running(&self) -> bool {
        self.queues.is_some()
    }

    /// A config read.
    pub fn config_read(&self, reg: u32, size: u32) -> u32 {
        self.pci.config_read(reg, size)
    }

    /// A config write.
    pub fn config_write(&mut self, reg: u32, size: u32, value: u32) -> (ConfigChange, Action) {
        self.pci.config_write(reg, size, value)
    }

    /// An MMIO read; `None` if `addr` is not in the register BAR.
    pub fn mmio_read(&mut self, addr: u64, size: u32) -> Option<(u64, Action)> {
        self.pci.mmio_read(addr, size)
    }

    /// An MMIO write, and whatever it starts; `None` if `addr` is not in
    /// the register BAR. On `reset` the caller also drops its guest
    /// memory mappings.
    pub fn mmio_write(
        &mut self,
        mem: &mut impl GuestMemory,
        addr: u64,
        size: u32,
        value: u64,
    ) -> Option<Action> {
        let a = self.pci.mmio_write(addr, size, value)?;
        Some(self.after(mem, a))
    }

    fn after(&mut self, mem: &mut impl GuestMemory, a: Action) -> Action {
        let mut out = a;
        if a.reset {
            self.queues = None;
            self.gpu.reset();
            self.blobs.reset();
            // Kept responses go unanswered (the driver reset the queues);
            // events of the old generation are ignored from now on.
            self.fences.reset();
        }
        if a.activated {
            let built = self.build_queues(None);
            match built {
                Ok(q) => self.queues = Some(q),
                Err(e) => {
                    debug!(%e, "queues unusable at DRIVER_OK");
                    out = merge(out, self.pci.device_error());
                }
            }
        }
        if let Some(q) = a.notify {
            out = merge(out, self.service(mem, q));
        }
        // FAILED or NEEDS_RESET: the queues are no longer used, nor is
        // anything kept for them.
        if !self.pci.transport().is_live() {
            self.queues = None;
            if self.fences.kept() > 0 {
                self.fences.reset();
            }
        }
        out
    }

    /// The enabled queues, at `positions` (next available, next used) or
    /// from the start.
    fn build_queues(
        &self,
        positions: Option<&[(u16, u16)]>,
    ) -> Result<Vec<Option<SplitQueue>>, QueueError> {
        self.pci
            .transport()
            .queues()
            .iter()
            .enumerate()
            .map(|(i, cfg)| {
                let (a, u) = positions.and_then(|p| p.get(i).copied()).unwrap_or((0, 0));
                cfg.enabled
                    .then(|| SplitQueue::resume(cfg, a, u))
                    .transpose()
            })
            .collect()
    }

    /// The state a restarted server needs to go on: PCI function,
    /// transport and ring positions, as one line of fixed length for a
    /// given device (so that it can be rewritten in place). 2D resources
    /// are not in it: they live in the renderer process in the final split
    /// (docs/virtio-gpu.md); here a restart loses them.
    pub fn saved(&self) -> String {
        let (f, t) = self.pci.state();
        let mut out = format!(
            "pci:{};bar2:{:08x};st:{:02x};gen:{:02x};isr:{:02x};feat:{:016x}",
            f.inner, f.bar2, t.status, t.config_generation, t.isr, t.driver_features
        );
        for (i, q) in t.queues.iter().enumerate() {
            let (a, u) = self
                .queues
                .as_ref()
                .and_then(|qs| qs.get(i))
                .and_then(|q| q.as_ref())
                .map_or((0, 0), |q| (q.next_avail(), q.next_used()));
            out.push_str(&format!(
                ";q{i}:{:04x}/{}/{:016x}/{:016x}/{:016x}/{a:04x}/{u:04x}",
                q.size,
                u8::from(q.enabled),
                q.desc,
                q.driver,
                q.device
            ));
        }
        out
    }

    /// Takes what [`VirtioGpu::saved`] wrote; the device goes on where it
    /// was (queues at their positions if it was live). Anything malformed
    /// or that the device could not be in is refused and changes nothing.
    /// The action re-asserts INTA if it was raised.
    pub fn restore(&mut self, saved: &str) -> Result<Action, RestoreError> {
        let bad = || RestoreError::Malformed(saved.chars().take(80).collect());
        let mut fields = std::collections::HashMap::new();
        for part in saved.trim().split(';') {
            let (k, v) = part.split_once(':').ok_or_else(bad)?;
            if fields.insert(k, v).is_some() {
                return Err(bad());
            }
        }
        let hex = |k: &str| -> Result<u64, RestoreError> {
            fields
                .get(k)
                .and_then(|v| u64::from_str_radix(v, 16).ok())
                .ok_or_else(bad)
        };
        let byte = |k: &str| hex(k).and_then(|v| u8::try_from(v).map_err(|_| bad()));
        let function = VirtioGpuFunctionState {
            inner: fields.get("pci").ok_or_else(bad)?.to_string(),
            bar2: u32::try_from(hex("bar2")?).map_err(|_| bad())?,
        };
        let n = self.pci.transport().queues().len();
        if fields.len() != 6 + n {
            return Err(bad());
        }
        let mut queues = Vec::with_capacity(n);
        let mut positions = Vec::with_capacity(n);
        for (i, mine) in self.pci.transport().queues().iter().enumerate() {
            let v = fields.get(format!("q{i}").as_str()).ok_or_else(bad)?;
            let p: Vec<&str> = v.split('/').collect();
            let [size, en, desc, drv, dev, a, u] = p[..] else {
                return Err(bad());
            };
            let h16 = |s: &str| u16::from_str_radix(s, 16).map_err(|_| bad());
            let h64 = |s: &str| u64::from_str_radix(s, 16).map_err(|_| bad());
            queues.push(QueueConfig {
                max_size: mine.max_size,
                size: h16(size)?,
                enabled: match en {
                    "0" => false,
                    "1" => true,
                    _ => return Err(bad()),
                },
                desc: h64(desc)?,
                driver: h64(drv)?,
                device: h64(dev)?,
            });
            positions.push((h16(a)?, h16(u)?));
        }
        let transport = TransportState {
            status: byte("st")?,
            driver_features: hex("feat")?,
            config_generation: byte("gen")?,
            isr: byte("isr")?,
            queues,
        };
        let before = self.pci.state();
        let action = self.pci.restore(&function, &transport)?;
        if self.pci.transport().is_live() {
            match self.build_queues(Some(&positions)) {
                Ok(q) => self.queues = Some(q),
                Err(_) => {
                    // Cannot happen after the transport's checks; undo.
                    let _ = self.pci.restore(&before.0, &before.1);
                    return Err(bad());
                }
            }
        } else {
            self.queues = None;
        }
        Ok(action)
    }

    /// Serves queue `index`: at most its size in chains.
    fn service(&mut self, mem: &mut impl GuestMemory, index: u16) -> Action {
        match self.try_service(mem, index) {
            Ok(true) => self.pci.signal_used(),
            Ok(false) => Action::default(),
            Err(e) => {
                debug!(queue = index, %e, "queue broke a rule: NEEDS_RESET");
                self.queues = None;
                self.fences.reset();
                self.pci.device_error()
            }
        }
    }

    /// Returns whether the driver is to be interrupted.
    fn try_service(&mut self, mem: &mut impl GuestMemory, index: u16) -> Result<bool, QueueError> {
        let Some(queues) = self.queues.as_mut() else {
            return Ok(false);
        };
        let Some(Some(q)) = queues.get_mut(usize::from(index)) else {
            return Ok(false);
        };
        let size = self
            .pci
            .transport()
            .queues()
            .get(usize::from(index))
            .map_or(0, |c| c.size);
        let mut used = 0u32;
        if index == CONTROL_QUEUE {
            take_events(&mut self.blobs, &mut self.fences);
        }
        for _ in 0..size {
            let Some(chain) = q.pop(mem)? else { break };
            let answered = match index {
                CONTROL_QUEUE => {
                    // A request the device cannot read gets ERR_UNSPEC
                    // (its header, and so its fence, is unknown); a
                    // response it cannot write is returned empty. Only a
                    // broken ring stops the device.
                    match chain.read_to_vec(mem, MAX_REQUEST_LEN) {
                        Ok(req) => control(
                            &mut self.gpu,
                            &mut self.blobs,
                            &mut self.fences,
                            mem,
                            &req,
                            chain,
                        ),
                        Err(e) => {
                            debug!(%e, "request unreadable");
                            Some((chain, respond(&[], resp::ERR_UNSPEC, &[])))
                        }
                    }
                }
                // Cursor updates need no answer: no display (headless).
                CURSOR_QUEUE => Some((chain, Vec::new())),
                _ => Some((chain, Vec::new())),
            };
            let Some((chain, resp)) = answered else {
                continue;
            };
            let written = if resp.is_empty() {
                0
            } else {
                chain.write_from(mem, &resp).unwrap_or(0)
            };
            q.push_used(mem, chain.head, written)?;
            self.served += 1;
            used += 1;
        }
        if index == CONTROL_QUEUE {
            // What the commands above finished (a destroyed context, a
            // done response behind nothing), and what the renderer retired
            // meanwhile.
            take_events(&mut self.blobs, &mut self.fences);
            let n = push_ready(&mut self.fences, q, mem)?;
            self.served += u64::from(n);
            used += n;
        }
        Ok(used > 0 && q.wants_interrupt(mem)?)
    }
}

/// The renderer's fence reports into the kept responses; a lost renderer
/// ends every fence still waiting for it.
fn take_events(blobs: &mut Blobs, fences: &mut Fences<(Chain, Vec<u8>)>) {
    for e in blobs.poll_events() {
        if !fences.retire(&e) {
            debug!(?e, "renderer event dropped");
        }
    }
    if blobs.renderer_lost() {
        fences.renderer_lost();
    }
}

/// Returns the kept responses that may leave to the used ring (those the
/// renderer never ran are answered ERR_UNSPEC); how many.
fn push_ready(
    fences: &mut Fences<(Chain, Vec<u8>)>,
    q: &mut SplitQueue,
    mem: &mut impl GuestMemory,
) -> Result<u32, QueueError> {
    let mut n = 0;
    for r in fences.take_ready() {
        let (chain, mut resp) = r.item;
        if r.ended {
            if let Some(t) = resp.get_mut(0..4) {
                t.copy_from_slice(&resp::ERR_UNSPEC.to_le_bytes());
            }
        }
        let written = chain.write_from(mem, &resp).unwrap_or(0);
        q.push_used(mem, chain.head, written)?;
        n += 1;
    }
    Ok(n)
}

/// The fence a request asks for: (timeline, context, ring, fence id).
fn fence_of(req: &[u8]) -> Option<(Timeline, u32, u32, u64)> {
    let word = |at: usize| {
        req.get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u32::from_le_bytes)
    };
    if req.len() < HDR_LEN || word(4) & vg::VIRTIO_GPU_FLAG_FENCE == 0 {
        return None;
    }
    let fence_id = req
        .get(8..16)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes);
    let ctx = word(16);
    if word(4) & vg::VIRTIO_GPU_FLAG_INFO_RING_IDX != 0 {
        let ring = u32::from(req[20]);
        Some((Timeline::Ring { ctx, ring }, ctx, ring, fence_id))
    } else {
        // Without a ring: Linux's one global timeline; the renderer's
        // fence goes on the context's ring 0.
        Some((Timeline::Global, ctx, 0, fence_id))
    }
}

/// One control-queue request: its answer now (`Some`), or `None` if the
/// response is kept with its chain until its fence is done.
fn control(
    gpu: &mut Gpu2d,
    blobs: &mut Blobs,
    fences: &mut Fences<(Chain, Vec<u8>)>,
    mem: &mut impl GuestMemory,
    req: &[u8],
    chain: Chain,
) -> Option<(Chain, Vec<u8>)> {
    let ctx = req
        .get(16..20)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes);
    let live = blobs.has_context(ctx);
    let Some((timeline, fctx, ring, fence_id)) = fence_of(req) else {
        let r = answer(gpu, blobs, mem, req);
        if live && !blobs.has_context(ctx) {
            fences.context_gone(ctx);
        }
        return Some((chain, r));
    };
    // Kept responses count against their live context, or 0.
    let owner = if live { fctx } else { 0 };
    match fences.check(timeline, owner, fence_id) {
        Err(Refusal::Full) => {
            // Not run, answered at once without its fence: with it, Linux
            // would signal the earlier fences of its timeline, which are
            // not done. Its own fence signals with a later one.
            debug!(ctx, fence_id, "fenced command over the bound: refused");
            let mut r = respond(req, resp::ERR_OUT_OF_MEMORY, &[]);
            if let Some(h) = r.get_mut(4..HDR_LEN) {
                h.fill(0);
            }
            return Some((chain, r));
        }
        Err(why) => {
            // Not run; answered with its fence once the earlier ones of
            // its timeline are done.
            debug!(ctx, fence_id, ?why, "fenced command refused");
            let r = respond(req, resp::ERR_INVALID_PARAMETER, &[]);
            fences.keep(timeline, owner, fence_id, None, (chain, r));
            return None;
        }
        Ok(()) => {}
    }
    let mut r = answer(gpu, blobs, mem, req);
    let ty = r
        .get(0..4)
        .and_then(|b| b.try_into().ok())
        .map_or(resp::ERR_UNSPEC, u32::from_le_bytes);
    let cmd = req
        .get(0..4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes);
    let stream = req
        .get(HDR_LEN..HDR_LEN + 4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes);
    let mut waits = None;
    if ty < FIRST_ERROR && cmd == SUBMIT_3D && stream > 0 && live {
        // The renderer took the stream: the response waits for its fence.
        fences.asking(fctx, ring, fence_id);
        if blobs.create_fence(fctx, ring, fence_id, fences.generation()) {
            waits = Some((fctx, ring));
        } else if let Some(t) = r.get_mut(0..4) {
            t.copy_from_slice(&resp::ERR_UNSPEC.to_le_bytes());
        }
    }
    fences.keep(timeline, owner, fence_id, waits, (chain, r));
    if cmd == CTX_DESTROY && live && !blobs.has_context(ctx) {
        fences.context_gone(ctx);
    }
    None
}

/// Answers one control-queue request: contexts and blobs to [`Blobs`], the
/// rest to [`Gpu2d`]; 2D resources and blobs share one id space.
fn answer(gpu: &mut Gpu2d, blobs: &mut Blobs, mem: &mut impl GuestMemory, req: &[u8]) -> Vec<u8> {
    if req.len() < HDR_LEN {
        return respond(req, resp::ERR_UNSPEC, &[]);
    }
    let word = |at: usize| {
        req.get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u32::from_le_bytes)
    };
    let (cmd, id) = (word(0), word(HDR_LEN));
    let (ty, body) = if is_blob_command(cmd) {
        blobs.handle(req, |i| gpu.contains(i))
    } else if cmd == UNREF && req.len() >= HDR_LEN + 8 && blobs.contains(id) {
        (blobs.unref(id), Vec::new())
    } else if cmd == CREATE_2D && req.len() >= HDR_LEN + 4 && blobs.contains(id) {
        (resp::ERR_INVALID_RESOURCE_ID, Vec::new())
    } else {
        gpu.command(mem, req)
    };
    respond(req, ty, &body)
}
