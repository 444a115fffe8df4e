//! The 2D commands of the control queue (virtio 1.2, 5.7.6), what stage 1
//! needs for the guest's DRM device: display info, 2D resources, guest
//! backing, transfers, flush, unref. Resources are host memory of the
//! process that runs this (the renderer in the final split,
//! docs/virtio-gpu.md), bounded by a byte limit.
//!
//! A request is the bytes the driver put in the chain's readable part, the
//! response is what goes to its writable part. Every field is checked:
//! sizes against the command, rectangles against the resource (without
//! overflow), the number of backing entries against a bound, transfers
//! against the backing's length. Anything wrong is an error response, never
//! a panic, and leaves the state as it was.

use std::collections::HashMap;

use virtio_bindings::virtio_gpu as g;

use crate::memory::GuestMemory;

/// Size of `struct virtio_gpu_ctrl_hdr`.
pub const HDR_LEN: usize = 24;
/// Most backing entries one ATTACH_BACKING may carry (QEMU's bound).
pub const MAX_BACKING_ENTRIES: u32 = 16384;
/// Largest request: ATTACH_BACKING with the most entries.
pub const MAX_REQUEST_LEN: usize = HDR_LEN + 8 + 16 * MAX_BACKING_ENTRIES as usize;
/// Bytes per pixel of every 2D format.
const BPP: u64 = 4;

/// The formats of 2D resources (all 32 bits per pixel).
const FORMATS: [u32; 8] = [
    g::virtio_gpu_formats_VIRTIO_GPU_FORMAT_B8G8R8A8_UNORM,
    g::virtio_gpu_formats_VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM,
    g::virtio_gpu_formats_VIRTIO_GPU_FORMAT_A8R8G8B8_UNORM,
    g::virtio_gpu_formats_VIRTIO_GPU_FORMAT_X8R8G8B8_UNORM,
    g::virtio_gpu_formats_VIRTIO_GPU_FORMAT_R8G8B8A8_UNORM,
    g::virtio_gpu_formats_VIRTIO_GPU_FORMAT_X8B8G8R8_UNORM,
    g::virtio_gpu_formats_VIRTIO_GPU_FORMAT_A8B8G8R8_UNORM,
    g::virtio_gpu_formats_VIRTIO_GPU_FORMAT_R8G8B8X8_UNORM,
];

/// Response types.
pub mod resp {
    use virtio_bindings::virtio_gpu as g;
    /// OK, no data.
    pub const OK_NODATA: u32 = g::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_OK_NODATA;
    /// OK, display info follows.
    pub const OK_DISPLAY_INFO: u32 = g::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_OK_DISPLAY_INFO;
    /// Unspecified error (also: unknown command).
    pub const ERR_UNSPEC: u32 = g::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_ERR_UNSPEC;
    /// Out of memory.
    pub const ERR_OUT_OF_MEMORY: u32 = g::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY;
    /// No such scanout.
    pub const ERR_INVALID_SCANOUT_ID: u32 =
        g::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID;
    /// No such resource, or it exists already.
    pub const ERR_INVALID_RESOURCE_ID: u32 =
        g::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID;
    /// A parameter is out of range.
    pub const ERR_INVALID_PARAMETER: u32 =
        g::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER;
}

/// One backing entry: guest-physical address and length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackingEntry {
    /// Guest-physical address.
    pub addr: u64,
    /// Length.
    pub len: u32,
}

#[derive(Clone, Debug)]
struct Resource {
    width: u32,
    height: u32,
    data: Vec<u8>,
    backing: Vec<BackingEntry>,
}

/// Little-endian field reader over a request.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn u32(&self, at: usize) -> u32 {
        self.0
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u32::from_le_bytes)
    }
    fn u64(&self, at: usize) -> u64 {
        self.0
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_le_bytes)
    }
}

/// A rectangle, checked against a resource.
#[derive(Clone, Copy, Debug)]
struct Rect {
    x: u32,
    y: u32,
    w: u32,
    h: u32,
}

impl Rect {
    fn at(f: &Fields<'_>, at: usize) -> Rect {
        Rect {
            x: f.u32(at),
            y: f.u32(at + 4),
            w: f.u32(at + 8),
            h: f.u32(at + 12),
        }
    }

    fn within(&self, width: u32, height: u32) -> bool {
        let fits = |o: u32, l: u32, max: u32| o.checked_add(l).is_some_and(|e| e <= max);
        fits(self.x, self.w, width) && fits(self.y, self.h, height)
    }
}

/// The 2D state of the device.
#[derive(Clone, Debug)]
pub struct Gpu2d {
    resources: HashMap<u32, Resource>,
    bytes: u64,
    limit: u64,
    num_scanouts: u32,
}

impl Gpu2d {
    /// No resources; at most `limit` bytes of them; `num_scanouts` displays.
    pub fn new(limit: u64, num_scanouts: u32) -> Self {
        Gpu2d {
            resources: HashMap::new(),
            bytes: 0,
            limit,
            num_scanouts,
        }
    }

    /// The pixels of resource `id`, row by row.
    pub fn resource_data(&self, id: u32) -> Option<&[u8]> {
        self.resources.get(&id).map(|r| r.data.as_slice())
    }

    /// Bytes of host memory the resources use.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Drops every resource (the device was reset).
    pub fn reset(&mut self) {
        self.resources.clear();
        self.bytes = 0;
    }

    /// Handles one control-queue request; returns the response.
    pub fn handle(&mut self, mem: &mut impl GuestMemory, req: &[u8]) -> Vec<u8> {
        let (ty, body) = self.command(mem, req);
        respond(req, ty, &body)
    }

    /// True if `id` is a 2D resource.
    pub fn contains(&self, id: u32) -> bool {
        self.resources.contains_key(&id)
    }

    /// Handles one control-queue request; returns the response type and
    /// the bytes after the response header.
    pub fn command(&mut self, mem: &mut impl GuestMemory, req: &[u8]) -> (u32, Vec<u8>) {
        let f = Fields(req);
        let cmd = f.u32(0);
        if req.len() < HDR_LEN {
            (resp::ERR_UNSPEC, Vec::new())
        } else {
            match cmd {
                g::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_GET_DISPLAY_INFO => {
                    (resp::OK_DISPLAY_INFO, self.display_info())
                }
                g::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_CREATE_2D => {
                    (self.create_2d(&f, req.len()), Vec::new())
                }
                g::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_UNREF => {
                    (self.unref(&f, req.len()), Vec::new())
                }
                g::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING => {
                    (self.attach_backing(&f, req.len()), Vec::new())
                }
                g::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING => {
                    (self.detach_backing(&f, req.len()), Vec::new())
                }
                g::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D => {
                    (self.transfer(mem, &f, req.len()), Vec::new())
                }
                g::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_FLUSH => {
                    (self.flush(&f, req.len()), Vec::new())
                }
                g::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_SET_SCANOUT => {
                    (self.set_scanout(&f, req.len()), Vec::new())
                }
                _ => (resp::ERR_UNSPEC, Vec::new()),
            }
        }
    }

    fn display_info(&self) -> Vec<u8> {
        // 16 x struct virtio_gpu_display_one, none enabled: the device is
        // headless (num_scanouts 0 in stage 1, docs/virtio-gpu.md).
        vec![0u8; 16 * 24]
    }

    fn create_2d(&mut self, f: &Fields<'_>, len: usize) -> u32 {
        if len < HDR_LEN + 16 {
            return resp::ERR_INVALID_PARAMETER;
        }
        let (id, format, width, height) = (
            f.u32(HDR_LEN),
            f.u32(HDR_LEN + 4),
            f.u32(HDR_LEN + 8),
            f.u32(HDR_LEN + 12),
        );
        if id == 0 || self.resources.contains_key(&id) {
            return resp::ERR_INVALID_RESOURCE_ID;
        }
        if !FORMATS.contains(&format) || width == 0 || height == 0 {
            return resp::ERR_INVALID_PARAMETER;
        }
        let size = u64::from(width)
            .checked_mul(u64::from(height))
            .and_then(|p| p.checked_mul(BPP));
        let Some(size) = size.filter(|&n| self.bytes + n <= self.limit) else {
            return resp::ERR_OUT_OF_MEMORY;
        };
        let Ok(n) = usize::try_from(size) else {
            return resp::ERR_OUT_OF_MEMORY;
        };
        self.resources.insert(
            id,
            Resource {
                width,
                height,
                data: vec![0; n],
                backing: Vec::new(),
            },
        );
        self.bytes += size;
        resp::OK_NODATA
    }

    fn unref(&mut self, f: &Fields<'_>, len: usize) -> u32 {
        if len < HDR_LEN + 8 {
            return resp::ERR_INVALID_PARAMETER;
        }
        match self.resources.remove(&f.u32(HDR_LEN)) {
            Some(r) => {
                self.bytes -= r.data.len() as u64;
                resp::OK_NODATA
            }
            None => resp::ERR_INVALID_RESOURCE_ID,
        }
    }

    fn attach_backing(&mut self, f: &Fields<'_>, len: usize) -> u32 {
        if len < HDR_LEN + 8 {
            return resp::ERR_INVALID_PARAMETER;
        }
        let (id, n) = (f.u32(HDR_LEN), f.u32(HDR_LEN + 4));
        let Some(r) = self.resources.get_mut(&id) else {
            return resp::ERR_INVALID_RESOURCE_ID;
        };
        let first = HDR_LEN + 8;
        if n == 0 || n > MAX_BACKING_ENTRIES || len < first + 16 * n as usize {
            return resp::ERR_INVALID_PARAMETER;
        }
        if !r.backing.is_empty() {
            return resp::ERR_UNSPEC;
        }
        let mut entries = Vec::with_capacity(n as usize);
        for i in 0..n as usize {
            let at = first + 16 * i;
            let e = BackingEntry {
                addr: f.u64(at),
                len: f.u32(at + 8),
            };
            if e.addr.checked_add(u64::from(e.len)).is_none() {
                return resp::ERR_INVALID_PARAMETER;
            }
            entries.push(e);
        }
        r.backing = entries;
        resp::OK_NODATA
    }

    fn detach_backing(&mut self, f: &Fields<'_>, len: usize) -> u32 {
        if len < HDR_LEN + 8 {
            return resp::ERR_INVALID_PARAMETER;
        }
        match self.resources.get_mut(&f.u32(HDR_LEN)) {
            Some(r) if !r.backing.is_empty() => {
                r.backing.clear();
                resp::OK_NODATA
            }
            Some(_) => resp::ERR_UNSPEC,
            None => resp::ERR_INVALID_RESOURCE_ID,
        }
    }

    /// TRANSFER_TO_HOST_2D: row `y + h` of the rectangle comes from the
    /// backing at `offset + h * stride` (stride = width * 4), as QEMU and
    /// the Linux driver agree.
    fn transfer(&mut self, mem: &mut impl GuestMemory, f: &Fields<'_>, len: usize) -> u32 {
        if len < HDR_LEN + 32 {
            return resp::ERR_INVALID_PARAMETER;
        }
        let rect = Rect::at(f, HDR_LEN);
        let offset = f.u64(HDR_LEN + 16);
        let Some(r) = self.resources.get_mut(&f.u32(HDR_LEN + 24)) else {
            return resp::ERR_INVALID_RESOURCE_ID;
        };
        if r.backing.is_empty() || !rect.within(r.width, r.height) {
            return resp::ERR_INVALID_PARAMETER;
        }
        let stride = u64::from(r.width) * BPP;
        let row = (u64::from(rect.w) * BPP) as usize;
        // Copy into a scratch row first: a failed read changes nothing.
        let mut rows = Vec::with_capacity(rect.h as usize);
        for h in 0..u64::from(rect.h) {
            let Some(src) = offset.checked_add(h * stride) else {
                return resp::ERR_INVALID_PARAMETER;
            };
            let mut buf = vec![0u8; row];
            if read_backing(mem, &r.backing, src, &mut buf).is_err() {
                return resp::ERR_INVALID_PARAMETER;
            }
            rows.push(buf);
        }
        for (h, buf) in rows.into_iter().enumerate() {
            let dst = ((u64::from(rect.y) + h as u64) * stride + u64::from(rect.x) * BPP) as usize;
            r.data[dst..dst + row].copy_from_slice(&buf);
        }
        resp::OK_NODATA
    }

    fn flush(&mut self, f: &Fields<'_>, len: usize) -> u32 {
        if len < HDR_LEN + 24 {
            return resp::ERR_INVALID_PARAMETER;
        }
        let rect = Rect::at(f, HDR_LEN);
        match self.resources.get(&f.u32(HDR_LEN + 16)) {
            None => resp::ERR_INVALID_RESOURCE_ID,
            Some(r) if !rect.within(r.width, r.height) => resp::ERR_INVALID_PARAMETER,
            // No display to update.
            Some(_) => resp::OK_NODATA,
        }
    }

    fn set_scanout(&mut self, f: &Fields<'_>, len: usize) -> u32 {
        if len < HDR_LEN + 24 {
            return resp::ERR_INVALID_PARAMETER;
        }
        if f.u32(HDR_LEN + 16) >= self.num_scanouts {
            return resp::ERR_INVALID_SCANOUT_ID;
        }
        let id = f.u32(HDR_LEN + 20);
        if id != 0 && !self.resources.contains_key(&id) {
            return resp::ERR_INVALID_RESOURCE_ID;
        }
        resp::OK_NODATA
    }
}

/// The response to `req`: header of type `ty` (a fenced request gets its
/// fence back, 5.7.6.7; with INFO_RING_IDX its ring index too), then
/// `body`.
pub fn respond(req: &[u8], ty: u32, body: &[u8]) -> Vec<u8> {
    let f = Fields(req);
    let mut out = Vec::with_capacity(HDR_LEN + body.len());
    out.extend_from_slice(&ty.to_le_bytes());
    let flags = if req.len() >= HDR_LEN { f.u32(4) } else { 0 };
    let fenced = flags & g::VIRTIO_GPU_FLAG_FENCE != 0;
    let keep = if fenced {
        flags & (g::VIRTIO_GPU_FLAG_FENCE | g::VIRTIO_GPU_FLAG_INFO_RING_IDX)
    } else {
        0
    };
    out.extend_from_slice(&keep.to_le_bytes());
    out.extend_from_slice(&(if fenced { f.u64(8) } else { 0 }).to_le_bytes());
    out.extend_from_slice(&(if fenced { f.u32(16) } else { 0 }).to_le_bytes());
    let ring_idx = if keep & g::VIRTIO_GPU_FLAG_INFO_RING_IDX != 0 {
        req[20]
    } else {
        0
    };
    out.extend_from_slice(&[ring_idx, 0, 0, 0]);
    out.extend_from_slice(body);
    out
}

/// Reads `buf.len()` bytes at `offset` of the scatter list `backing`.
fn read_backing(
    mem: &mut impl GuestMemory,
    backing: &[BackingEntry],
    mut offset: u64,
    buf: &mut [u8],
) -> Result<(), ()> {
    let mut done = 0;
    for e in backing {
        if done == buf.len() {
            break;
        }
        let len = u64::from(e.len);
        if offset >= len {
            offset -= len;
            continue;
        }
        let n = ((len - offset) as usize).min(buf.len() - done);
        mem.read(e.addr + offset, &mut buf[done..done + n])
            .map_err(|_| ())?;
        done += n;
        offset = 0;
    }
    if done == buf.len() {
        Ok(())
    } else {
        Err(())
    }
}
