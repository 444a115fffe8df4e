//! Venus through libvirglrenderer (Debian trixie: 1.1), loaded at run time:
//! nothing of virglrenderer is needed to build, and a missing library or
//! symbol is an error at start (docs/virtio-gpu.md, "Stage 2 proper").
//!
//! The library is process-global state: one [`Virgl`] per process at a
//! time, used from one thread (`Rc`, so it is neither `Send` nor `Sync`).
//! Contexts and resources are RAII handles that hold the [`Virgl`] they
//! came from, so the library is cleaned up and unloaded after the last of
//! them.
//!
//! A blob's memory is what `virgl_renderer_resource_map` returns in this
//! process, and nothing else: for a venus host-visible blob on lavapipe
//! that cannot open `/dev/udmabuf` the exported fd is an OPAQUE memfd
//! whose first page is the driver's header, and the pointer lies at its
//! file offset 4096 (measured); where it can (the renderer's user in the
//! node's group, as with a real GPU's buffers) the blob is a DMABUF, which
//! the library maps from offset 0 (`VM_PFNMAP`, lent by privcmd since
//! kernel-patches 0009). The
//! test (`tests/virgl.rs`) exercises capset info, contexts and a blob_id 0
//! blob (venus's shm blob, a `vkr-shmem` memfd); a host-visible (OPAQUE)
//! blob needs a venus command stream and is exercised end to end only
//! (79-venus-vk-compute).
//!
//! The Vulkan allocator: the library maps an OPAQUE blob through its
//! `vkr_allocator`, which imports the blob's fd into a Vulkan device of
//! its own in this process. 1.1 creates that instance and device lazily,
//! on the first OPAQUE map (`vkr_allocator_resource_map` calls
//! `vkr_allocator_init`, which is not exported): reading the Vulkan
//! loader's manifests, loading the driver, starting the driver's threads,
//! reading `/sys`, all of which the renderer's seccomp filter forbids. So
//! [`VirglBackend::new`] makes the library initialise it during setup,
//! before the filter ([`Virgl::load_vulkan_allocator`]): it imports a
//! stand-in OPAQUE blob (a zeroed memfd page, `resource_import_blob`, no
//! context involved) and maps it. The allocator initialises, then finds no
//! device whose UUID matches the stand-in's (zero: it has no Vulkan
//! information) and refuses the map; once initialised it stays so until
//! `virgl_renderer_cleanup`. A real blob's map then only imports its fd
//! (`dup`, `lseek`, `read`, `mmap` on lavapipe) and maps it.
//!
//! Fences: the library is initialised with `THREAD_SYNC` and without
//! `ASYNC_FENCE_CB`, so it starts no thread of its own for them: each
//! venus context has an eventfd (`virgl_renderer_context_get_poll_fd`)
//! the render server signals, the renderer's one thread polls it and calls
//! `virgl_renderer_context_poll`, and the library reports retired fences
//! through `write_context_fence` from inside that call, on this thread.

use std::ffi::{c_char, c_int, c_void};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::ptr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use libloading::Library;
use tracing::{info, warn};

use crate::backend::{dwords, Backend, BackendBlob, BlobArgs, BlobLookup, BlobMapping, CapsetInfo};

/// The soname of trixie's libvirglrenderer1.
pub const SONAME: &str = "libvirglrenderer.so.1";
/// `VIRTIO_GPU_CAPSET_VENUS`.
pub const CAPSET_VENUS: u32 = 4;

/// `VIRGL_RENDERER_THREAD_SYNC`: each context gets a fence eventfd.
pub const FLAG_THREAD_SYNC: c_int = 1 << 1;
/// `VIRGL_RENDERER_VENUS`.
pub const FLAG_VENUS: c_int = 1 << 6;
/// `VIRGL_RENDERER_NO_VIRGL`.
pub const FLAG_NO_VIRGL: c_int = 1 << 7;
/// `VIRGL_RENDERER_RENDER_SERVER`: venus renders in the library's render
/// server (forked and exec'd by the library unless `get_server_fd`
/// hands one over).
pub const FLAG_RENDER_SERVER: c_int = 1 << 9;

const CALLBACKS_VERSION: c_int = 4;
const CONTEXT_FLAG_CAPSET_ID_MASK: u32 = 0xff;
const BLOB_MEM_HOST3D: u32 = 2;
const BLOB_FLAG_USE_MAPPABLE: u32 = 1;
const BLOB_FD_TYPE_DMABUF: u32 = 1;
const BLOB_FD_TYPE_OPAQUE: u32 = 2;
const BLOB_FD_TYPE_SHM: u32 = 3;
const MAP_CACHE_MASK: u32 = 0x0f;
/// `VIRGL_RENDERER_FENCE_FLAG_MERGEABLE`: the library may report only the
/// newest of several retired fences of a ring (the device finishes every
/// kept fence up to the id reported).
const FENCE_FLAG_MERGEABLE: u32 = 1;

/// A virglrenderer call failed.
#[derive(Debug, thiserror::Error)]
pub enum VirglError {
    /// The library did not load.
    #[error("loading {library}: {source}")]
    Load {
        /// Soname or path.
        library: String,
        /// The loader's error.
        #[source]
        source: libloading::Error,
    },
    /// A symbol is missing.
    #[error("{library} has no {symbol}: {source}")]
    Symbol {
        /// Soname or path.
        library: String,
        /// The symbol.
        symbol: &'static str,
        /// The loader's error.
        #[source]
        source: libloading::Error,
    },
    /// A call returned an error.
    #[error("{op} failed: errno {errno}")]
    Call {
        /// The call.
        op: &'static str,
        /// Its errno.
        errno: i32,
    },
}

impl VirglError {
    /// The errno for the device's reply.
    pub fn errno(&self) -> i32 {
        match self {
            VirglError::Call { errno, .. } => *errno,
            _ => libc::ENODEV,
        }
    }
}

/// virglrenderer 1.1's return codes are negative or positive errnos,
/// depending on the call; -1 carries none.
fn check(op: &'static str, rc: c_int) -> Result<(), VirglError> {
    match rc {
        0 => Ok(()),
        -1 => Err(VirglError::Call {
            op,
            errno: libc::EINVAL,
        }),
        rc => Err(VirglError::Call {
            op,
            errno: rc.saturating_abs(),
        }),
    }
}

/// `struct virgl_renderer_callbacks` (version 4), from virglrenderer.h.
#[repr(C)]
struct Callbacks {
    version: c_int,
    write_fence: Option<unsafe extern "C" fn(*mut c_void, u32)>,
    create_gl_context: Option<unsafe extern "C" fn(*mut c_void, c_int, *mut c_void) -> *mut c_void>,
    destroy_gl_context: Option<unsafe extern "C" fn(*mut c_void, *mut c_void)>,
    make_current: Option<unsafe extern "C" fn(*mut c_void, c_int, *mut c_void) -> c_int>,
    get_drm_fd: Option<unsafe extern "C" fn(*mut c_void) -> c_int>,
    write_context_fence: Option<unsafe extern "C" fn(*mut c_void, u32, u32, u64)>,
    get_server_fd: Option<unsafe extern "C" fn(*mut c_void, u32) -> c_int>,
    get_egl_display: Option<unsafe extern "C" fn(*mut c_void) -> *mut c_void>,
}

/// `struct virgl_renderer_resource_create_blob_args`.
#[repr(C)]
struct CreateBlobArgs {
    res_handle: u32,
    ctx_id: u32,
    blob_mem: u32,
    blob_flags: u32,
    blob_id: u64,
    size: u64,
    iovecs: *const libc::iovec,
    num_iovs: u32,
}

/// `struct virgl_renderer_resource_import_blob_args`.
#[repr(C)]
struct ImportBlobArgs {
    res_handle: u32,
    blob_mem: u32,
    fd_type: u32,
    fd: c_int,
    size: u64,
}

/// The resource id of [`Virgl::load_vulkan_allocator`]'s stand-in blob,
/// which lives only during that call (before any guest request).
pub const STAND_IN_RES_ID: u32 = u32::MAX;

/// The environment the Vulkan driver is loaded with in this process
/// ([`Virgl::load_vulkan_allocator`]): no on-disk shader cache (Mesa's
/// would be made under `$HOME`, or the user's home directory, and be
/// locked and pruned with calls the filter does not allow; the renderer's
/// own device compiles nothing anyway).
pub const ALLOCATOR_ENV: &[(&str, &str)] = &[("MESA_SHADER_CACHE_DISABLE", "true")];

/// What mapping a stand-in OPAQUE blob gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StandInMap {
    /// The library refused the map with this errno (`EINVAL`: no Vulkan
    /// device of the allocator has the stand-in's UUID).
    Refused(i32),
    /// The library mapped it (then unmapped it): a Vulkan driver whose
    /// device UUID is zero imported the zeroed page.
    Mapped,
}

/// What [`Virgl::load_vulkan_allocator`] saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocatorLoad {
    /// The stand-in's map.
    pub map: StandInMap,
    /// This process's threads before and after (`/proc/self/status`;
    /// 0 when unreadable): the driver's own threads start here.
    pub threads: (u32, u32),
    /// Whether this process holds `/dev/udmabuf` afterwards (lavapipe
    /// opens it where it can: then the render server, which runs as the
    /// same user, exports host-visible blobs as dma-bufs; the renderer
    /// itself only maps them).
    pub udmabuf: bool,
    /// How long it took (the device's hello waits for it: the renderer
    /// answers once set up).
    pub elapsed: std::time::Duration,
}

/// `Threads:` of `/proc/self/status`, 0 when unreadable.
fn thread_count() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Whether one of this process's fds is `/dev/udmabuf`.
fn holds_udmabuf() -> bool {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten().any(|e| {
                std::fs::read_link(e.path())
                    .map(|t| t == std::path::Path::new("/dev/udmabuf"))
                    .unwrap_or(false)
            })
        })
        .unwrap_or(false)
}

/// `VIRGL_RENDERER_BLOB_FD_TYPE_*` by name, for the log.
fn fd_type_name(fd_type: u32) -> &'static str {
    match fd_type {
        BLOB_FD_TYPE_DMABUF => "dmabuf",
        BLOB_FD_TYPE_OPAQUE => "opaque",
        BLOB_FD_TYPE_SHM => "shm",
        _ => "unknown",
    }
}

/// The errno of the last failed libc call.
fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Global (ctx0) fences are virgl's, not served (`NO_VIRGL`).
unsafe extern "C" fn write_fence(_cookie: *mut c_void, _fence: u32) {}

/// Fences the library retired, as (context, ring, fence id), until the
/// backend takes them. The library calls back only from
/// `virgl_renderer_context_poll`, on the thread that calls it.
static RETIRED: Mutex<Vec<(u32, u32, u64)>> = Mutex::new(Vec::new());

/// `write_context_fence`: a context's fence retired. Must not unwind into
/// C: a poisoned lock is taken as it is.
unsafe extern "C" fn write_context_fence(
    _cookie: *mut c_void,
    ctx_id: u32,
    ring_idx: u32,
    fence_id: u64,
) {
    let mut v = RETIRED.lock().unwrap_or_else(|p| p.into_inner());
    v.push((ctx_id, ring_idx, fence_id));
}

/// libvirglrenderer and every symbol we use from it, resolved once; the
/// prototypes are transcribed from virglrenderer 1.1's virglrenderer.h.
struct VirglLib {
    init: unsafe extern "C" fn(*mut c_void, c_int, *mut Callbacks) -> c_int,
    cleanup: unsafe extern "C" fn(*mut c_void),
    get_cap_set: unsafe extern "C" fn(u32, *mut u32, *mut u32),
    fill_caps: unsafe extern "C" fn(u32, u32, *mut c_void),
    context_create_with_flags: unsafe extern "C" fn(u32, u32, u32, *const c_char) -> c_int,
    context_destroy: unsafe extern "C" fn(u32),
    resource_create_blob: unsafe extern "C" fn(*const CreateBlobArgs) -> c_int,
    resource_unref: unsafe extern "C" fn(u32),
    resource_map: unsafe extern "C" fn(u32, *mut *mut c_void, *mut u64) -> c_int,
    resource_unmap: unsafe extern "C" fn(u32) -> c_int,
    resource_get_map_info: unsafe extern "C" fn(u32, *mut u32) -> c_int,
    resource_export_blob: unsafe extern "C" fn(u32, *mut u32, *mut c_int) -> c_int,
    resource_import_blob: unsafe extern "C" fn(*const ImportBlobArgs) -> c_int,
    submit_cmd: unsafe extern "C" fn(*mut c_void, c_int, c_int) -> c_int,
    context_create_fence: unsafe extern "C" fn(u32, u32, u32, u64) -> c_int,
    context_poll: unsafe extern "C" fn(u32),
    context_get_poll_fd: unsafe extern "C" fn(u32) -> c_int,
    // Declared last: dropped after the pointers above (plain pointers,
    // only called through `Virgl`, which owns this struct).
    _lib: Library,
}

impl VirglLib {
    fn load(name: &str) -> Result<Self, VirglError> {
        // SAFETY: loading libvirglrenderer runs its ELF constructors (and
        // those of libepoxy, libdrm, ...), which have no preconditions.
        let lib = unsafe { Library::new(name) }.map_err(|source| VirglError::Load {
            library: name.to_owned(),
            source,
        })?;
        fn sym<T: Copy>(
            lib: &Library,
            library: &str,
            symbol: &'static str,
        ) -> Result<T, VirglError> {
            let mut n = symbol.as_bytes().to_vec();
            n.push(0);
            // SAFETY: every `T` below is the `unsafe extern "C" fn` type
            // of the symbol's prototype in virglrenderer.h 1.1, and the
            // pointer is kept next to the library, which outlives it.
            let s = unsafe { lib.get::<T>(&n) }.map_err(|source| VirglError::Symbol {
                library: library.to_owned(),
                symbol,
                source,
            })?;
            Ok(*s)
        }
        Ok(VirglLib {
            init: sym(&lib, name, "virgl_renderer_init")?,
            cleanup: sym(&lib, name, "virgl_renderer_cleanup")?,
            get_cap_set: sym(&lib, name, "virgl_renderer_get_cap_set")?,
            fill_caps: sym(&lib, name, "virgl_renderer_fill_caps")?,
            context_create_with_flags: sym(&lib, name, "virgl_renderer_context_create_with_flags")?,
            context_destroy: sym(&lib, name, "virgl_renderer_context_destroy")?,
            resource_create_blob: sym(&lib, name, "virgl_renderer_resource_create_blob")?,
            resource_unref: sym(&lib, name, "virgl_renderer_resource_unref")?,
            resource_map: sym(&lib, name, "virgl_renderer_resource_map")?,
            resource_unmap: sym(&lib, name, "virgl_renderer_resource_unmap")?,
            resource_get_map_info: sym(&lib, name, "virgl_renderer_resource_get_map_info")?,
            resource_export_blob: sym(&lib, name, "virgl_renderer_resource_export_blob")?,
            resource_import_blob: sym(&lib, name, "virgl_renderer_resource_import_blob")?,
            submit_cmd: sym(&lib, name, "virgl_renderer_submit_cmd")?,
            context_create_fence: sym(&lib, name, "virgl_renderer_context_create_fence")?,
            context_poll: sym(&lib, name, "virgl_renderer_context_poll")?,
            context_get_poll_fd: sym(&lib, name, "virgl_renderer_context_get_poll_fd")?,
            _lib: lib,
        })
    }
}

/// Set while a [`Virgl`] is initialised: the library's state is global.
static IN_USE: AtomicBool = AtomicBool::new(false);

/// An initialised libvirglrenderer: `virgl_renderer_cleanup` and unload on
/// drop (after every context and resource, which hold it).
pub struct Virgl {
    lib: VirglLib,
    /// Handed to `virgl_renderer_init`, which keeps the pointer: boxed so
    /// it does not move, freed after `cleanup`.
    _cbs: Box<Callbacks>,
}

impl std::fmt::Debug for Virgl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Virgl").finish_non_exhaustive()
    }
}

impl Virgl {
    /// Loads `library` (e.g. [`SONAME`]) and initialises it with `flags`
    /// (venus: [`FLAG_VENUS`] | [`FLAG_NO_VIRGL`] | [`FLAG_RENDER_SERVER`]).
    /// EBUSY while another [`Virgl`] of this process lives.
    pub fn init(library: &str, flags: c_int) -> Result<Rc<Self>, VirglError> {
        let lib = VirglLib::load(library)?;
        if IN_USE.swap(true, Ordering::AcqRel) {
            return Err(VirglError::Call {
                op: "virgl_renderer_init",
                errno: libc::EBUSY,
            });
        }
        let mut cbs = Box::new(Callbacks {
            version: CALLBACKS_VERSION,
            write_fence: Some(write_fence),
            create_gl_context: None,
            destroy_gl_context: None,
            make_current: None,
            get_drm_fd: None,
            write_context_fence: Some(write_context_fence),
            get_server_fd: None,
            get_egl_display: None,
        });
        // SAFETY: cookie NULL (our callbacks ignore it); `cbs` is a valid
        // version-4 struct that lives in the returned `Virgl`, i.e. until
        // after `virgl_renderer_cleanup`.
        let rc = unsafe { (lib.init)(ptr::null_mut(), flags, &mut *cbs) };
        if let Err(e) = check("virgl_renderer_init", rc) {
            IN_USE.store(false, Ordering::Release);
            return Err(e);
        }
        info!(
            library,
            flags = format_args!("{flags:#x}"),
            "virglrenderer initialised"
        );
        Ok(Rc::new(Virgl { lib, _cbs: cbs }))
    }

    /// `virgl_renderer_get_cap_set`: `None` when the library reports no
    /// data for `capset`. Version 0 is a version: 1.1 reports max_version
    /// 0 for venus, and Mesa's venus driver asks for version 0.
    pub fn capset_info(&self, capset: u32) -> Option<CapsetInfo> {
        let (mut max_version, mut max_size) = (0u32, 0u32);
        // SAFETY: two valid out pointers.
        unsafe { (self.lib.get_cap_set)(capset, &mut max_version, &mut max_size) };
        (max_size != 0).then_some(CapsetInfo {
            max_version,
            max_size,
        })
    }

    /// `virgl_renderer_fill_caps` into a buffer of the capset's size.
    pub fn capset(&self, capset: u32, version: u32) -> Result<Vec<u8>, VirglError> {
        let info = self.capset_info(capset).ok_or(VirglError::Call {
            op: "virgl_renderer_get_cap_set",
            errno: libc::EINVAL,
        })?;
        if version > info.max_version {
            return Err(VirglError::Call {
                op: "virgl_renderer_fill_caps",
                errno: libc::EINVAL,
            });
        }
        let mut buf = vec![0u8; info.max_size as usize];
        // SAFETY: `buf` holds the `max_size` bytes the library said the
        // capset has.
        unsafe { (self.lib.fill_caps)(capset, version, buf.as_mut_ptr().cast()) };
        Ok(buf)
    }
}

impl Virgl {
    /// Imports a zeroed memfd page as an OPAQUE `HOST3D` blob `res_id`,
    /// maps it through the library, unmaps it if that worked, and
    /// unreferences it. Mapping an OPAQUE blob goes through the library's
    /// Vulkan allocator, which initialises on the first such map (see the
    /// module's notes); the stand-in belongs to no Vulkan device, so the
    /// allocator refuses it afterwards. Errors are those of making and
    /// importing the stand-in; the map's answer is the [`StandInMap`].
    pub fn map_stand_in_opaque(&self, res_id: u32) -> Result<StandInMap, VirglError> {
        const SIZE: u64 = 4096;
        // SAFETY: a NUL-terminated name; valid flags.
        let fd = unsafe { libc::memfd_create(c"gpu-hostmem-stand-in".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(VirglError::Call {
                op: "memfd_create(stand-in blob)",
                errno: last_errno(),
            });
        }
        // SAFETY: a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: an fd of ours; a size that fits off_t.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), SIZE as libc::off_t) } < 0 {
            return Err(VirglError::Call {
                op: "ftruncate(stand-in blob)",
                errno: last_errno(),
            });
        }
        let args = ImportBlobArgs {
            res_handle: res_id,
            blob_mem: BLOB_MEM_HOST3D,
            fd_type: BLOB_FD_TYPE_OPAQUE,
            fd: fd.as_raw_fd(),
            size: SIZE,
        };
        // SAFETY: a valid struct. Who owns the fd afterwards: 1.1's
        // `virgl_renderer_resource_import_blob` returns -EINVAL from its
        // argument checks with the fd untouched (ours to close); past
        // them the library owns it: it closes it when the resource goes,
        // or at once when it cannot make one (-ENOMEM).
        let rc = unsafe { (self.lib.resource_import_blob)(&args) };
        if rc == -libc::EINVAL {
            drop(fd);
        } else {
            let _ = fd.into_raw_fd();
        }
        check("virgl_renderer_resource_import_blob", rc)?;
        let (mut p, mut len) = (ptr::null_mut::<c_void>(), 0u64);
        // SAFETY: the resource just imported; two valid out pointers.
        let rc = unsafe { (self.lib.resource_map)(res_id, &mut p, &mut len) };
        let map = match check("virgl_renderer_resource_map", rc) {
            Ok(()) if !p.is_null() => {
                // SAFETY: mapped just now, unmapped once.
                unsafe { (self.lib.resource_unmap)(res_id) };
                StandInMap::Mapped
            }
            Ok(()) => StandInMap::Refused(libc::EINVAL),
            Err(e) => StandInMap::Refused(e.errno()),
        };
        // SAFETY: the resource imported above, unreferenced once (the
        // library closes its fd).
        unsafe { (self.lib.resource_unref)(res_id) };
        Ok(map)
    }

    /// Has the library initialise its Vulkan allocator now, in this
    /// process, with [`ALLOCATOR_ENV`] set: during setup, before the
    /// seccomp filter (module notes). After [`Virgl::init`], which forks
    /// the render server: the environment set here is this process's
    /// only. It sets the environment, so call it while no other thread of
    /// this process reads it (the renderer is single threaded until here:
    /// the library starts no thread in `init`).
    pub fn load_vulkan_allocator(&self) -> Result<AllocatorLoad, VirglError> {
        for (k, v) in ALLOCATOR_ENV {
            std::env::set_var(k, v);
        }
        let before = thread_count();
        let t0 = std::time::Instant::now();
        let map = self.map_stand_in_opaque(STAND_IN_RES_ID)?;
        let load = AllocatorLoad {
            map,
            threads: (before, thread_count()),
            udmabuf: holds_udmabuf(),
            elapsed: t0.elapsed(),
        };
        info!(
            map = ?load.map,
            threads_before = load.threads.0,
            threads_after = load.threads.1,
            udmabuf = load.udmabuf,
            ms = u64::try_from(load.elapsed.as_millis()).unwrap_or(u64::MAX),
            "Vulkan allocator loaded before the filter"
        );
        Ok(load)
    }
}

impl Drop for Virgl {
    fn drop(&mut self) {
        // SAFETY: the library was initialised in `init`; no context or
        // resource is left (they hold an `Rc` of this).
        unsafe { (self.lib.cleanup)(ptr::null_mut()) };
        IN_USE.store(false, Ordering::Release);
    }
}

/// A virglrenderer context, destroyed on drop.
#[derive(Debug)]
pub struct VirglContext {
    virgl: Rc<Virgl>,
    id: u32,
}

impl VirglContext {
    /// `virgl_renderer_context_create_with_flags(id, capset)`.
    pub fn new(virgl: &Rc<Virgl>, id: u32, capset: u32, name: &str) -> Result<Self, VirglError> {
        if id == 0 || capset & !CONTEXT_FLAG_CAPSET_ID_MASK != 0 {
            return Err(VirglError::Call {
                op: "virgl_renderer_context_create_with_flags",
                errno: libc::EINVAL,
            });
        }
        let nlen = u32::try_from(name.len()).map_err(|_| VirglError::Call {
            op: "virgl_renderer_context_create_with_flags",
            errno: libc::EINVAL,
        })?;
        // SAFETY: `name` is `nlen` bytes (no NUL needed, the length is
        // passed); the library copies it.
        let rc = unsafe {
            (virgl.lib.context_create_with_flags)(id, capset, nlen, name.as_ptr().cast())
        };
        check("virgl_renderer_context_create_with_flags", rc)?;
        Ok(VirglContext {
            virgl: Rc::clone(virgl),
            id,
        })
    }

    /// Its id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// `virgl_renderer_context_create_fence(id, MERGEABLE, ring, fence_id)`:
    /// a fence after the streams submitted so far.
    pub fn create_fence(&mut self, ring: u32, fence_id: u64) -> Result<(), VirglError> {
        // SAFETY: a context this handle created; plain integers.
        let rc = unsafe {
            (self.virgl.lib.context_create_fence)(self.id, FENCE_FLAG_MERGEABLE, ring, fence_id)
        };
        check("virgl_renderer_context_create_fence", rc)
    }

    /// `virgl_renderer_context_poll`, then the fences it retired, as
    /// (ring, fence id). Reports of other contexts (none are expected:
    /// the library reports from this call, for this context) are dropped.
    pub fn poll_fences(&mut self) -> Vec<(u32, u64)> {
        // SAFETY: a context this handle created; the library calls
        // `write_context_fence` from inside, on this thread.
        unsafe { (self.virgl.lib.context_poll)(self.id) };
        let mut v = RETIRED.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *v)
            .into_iter()
            .filter(|&(c, _, _)| c == self.id)
            .map(|(_, r, f)| (r, f))
            .collect()
    }

    /// The fd that becomes readable when the render server retired
    /// fences of this context (the library's; valid while it lives).
    pub fn poll_fd(&self) -> Option<RawFd> {
        // SAFETY: a context this handle created.
        let fd = unsafe { (self.virgl.lib.context_get_poll_fd)(self.id) };
        (fd >= 0).then_some(fd)
    }

    /// `virgl_renderer_submit_cmd`: the context runs (venus: queues to its
    /// render server) `cmds`, whole dwords.
    pub fn submit(&mut self, cmds: &[u8]) -> Result<(), VirglError> {
        let op = "virgl_renderer_submit_cmd";
        let bad = VirglError::Call {
            op,
            errno: libc::EINVAL,
        };
        // The library reads dwords: give it aligned ones of its own.
        let Some(mut words) = dwords(cmds) else {
            return Err(bad);
        };
        let (Ok(ctx), Ok(ndw)) = (c_int::try_from(self.id), c_int::try_from(words.len())) else {
            return Err(bad);
        };
        // SAFETY: `words` is `ndw` dwords, valid and exclusively ours for
        // the call; the library does not keep the pointer (it copies or
        // decodes the stream before returning; QEMU frees its buffer right
        // after the call). `ctx` is a context this
        // handle created.
        let rc = unsafe { (self.virgl.lib.submit_cmd)(words.as_mut_ptr().cast(), ctx, ndw) };
        check(op, rc)
    }
}

impl Drop for VirglContext {
    fn drop(&mut self) {
        // SAFETY: a context this handle created, destroyed once.
        unsafe { (self.virgl.lib.context_destroy)(self.id) };
    }
}

/// A blob resource: unmapped (if mapped) and unreferenced on drop.
#[derive(Debug)]
pub struct VirglBlob {
    virgl: Rc<Virgl>,
    res_id: u32,
    size: u64,
    mapped: Option<BlobMapping>,
}

impl VirglBlob {
    /// `virgl_renderer_resource_create_blob` of a mappable `HOST3D` blob
    /// `blob_id` of `size` bytes in context `ctx` as resource `res_id`.
    pub fn new(
        ctx: &VirglContext,
        res_id: u32,
        blob_id: u64,
        size: u64,
    ) -> Result<Self, VirglError> {
        if res_id == 0 {
            return Err(VirglError::Call {
                op: "virgl_renderer_resource_create_blob",
                errno: libc::EINVAL,
            });
        }
        let args = CreateBlobArgs {
            res_handle: res_id,
            ctx_id: ctx.id,
            blob_mem: BLOB_MEM_HOST3D,
            blob_flags: BLOB_FLAG_USE_MAPPABLE,
            blob_id,
            size,
            iovecs: ptr::null(),
            num_iovs: 0,
        };
        // SAFETY: `args` is a valid struct; HOST3D takes no iovecs.
        let rc = unsafe { (ctx.virgl.lib.resource_create_blob)(&args) };
        check("virgl_renderer_resource_create_blob", rc)?;
        Ok(VirglBlob {
            virgl: Rc::clone(&ctx.virgl),
            res_id,
            size,
            mapped: None,
        })
    }

    /// The kind of fd the library exports the blob as
    /// (`VIRGL_RENDERER_BLOB_FD_TYPE_*`); the fd itself is closed.
    pub fn export_fd_type(&self) -> Result<u32, VirglError> {
        let (mut ty, mut fd) = (0u32, -1 as c_int);
        // SAFETY: two valid out pointers; on success we own `fd`.
        let rc = unsafe { (self.virgl.lib.resource_export_blob)(self.res_id, &mut ty, &mut fd) };
        check("virgl_renderer_resource_export_blob", rc)?;
        if fd >= 0 {
            // SAFETY: the library handed this new fd over to us.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        Ok(ty)
    }

    /// Maps the blob in this process through the library and says where
    /// (the pointer to register, which for an OPAQUE blob is not the
    /// exported fd's offset 0).
    ///
    /// Every kind of blob is mapped: SHM and DMABUF by the library's own
    /// `mmap(fd, 0)` of exactly the blob's size, OPAQUE through its Vulkan
    /// allocator. A dma-buf's mapping (a udmabuf's, a GPU driver's buffer
    /// object) is `VM_PFNMAP`, which privcmd lends when the frames are RAM
    /// (kernel-patches 0009); what it still refuses (`VM_MIXEDMAP`, `VM_IO`
    /// without `VM_PFNMAP`, MMIO such as a GPU's VRAM) is refused by the
    /// register ioctl or at the first lend, with EACCES, not guessed here.
    pub fn map(&mut self) -> Result<BlobMapping, VirglError> {
        if let Some(m) = self.mapped {
            return Ok(m);
        }
        let fd_type = self.export_fd_type()?;
        let mut map_info = 0u32;
        // SAFETY: one valid out pointer.
        let rc = unsafe { (self.virgl.lib.resource_get_map_info)(self.res_id, &mut map_info) };
        check("virgl_renderer_resource_get_map_info", rc)?;
        let (mut p, mut len) = (ptr::null_mut::<c_void>(), 0u64);
        // SAFETY: two valid out pointers; the mapping stays until
        // `resource_unmap` (in `unmap` or drop).
        let rc = unsafe { (self.virgl.lib.resource_map)(self.res_id, &mut p, &mut len) };
        check("virgl_renderer_resource_map", rc)?;
        let m = BlobMapping {
            addr: p as usize,
            len,
            map_info: map_info & MAP_CACHE_MASK,
        };
        // The kind of memory, for the operator (and 79-venus-vk-compute,
        // which checks that lavapipe with /dev/udmabuf gives dma-bufs).
        info!(
            res = self.res_id,
            fd_type = fd_type_name(fd_type),
            addr = format_args!("{:#x}", m.addr),
            len = m.len,
            map_info = m.map_info,
            "venus blob mapped"
        );
        self.mapped = Some(m);
        Ok(m)
    }

    /// Undoes [`VirglBlob::map`].
    pub fn unmap(&mut self) {
        if self.mapped.take().is_some() {
            // SAFETY: the resource is mapped (by `map`), unmapped once.
            let rc = unsafe { (self.virgl.lib.resource_unmap)(self.res_id) };
            if let Err(e) = check("virgl_renderer_resource_unmap", rc) {
                warn!(%e, res = self.res_id, "unmap");
            }
        }
    }
}

impl BackendBlob for VirglBlob {
    fn size(&self) -> u64 {
        self.size
    }
}

impl Drop for VirglBlob {
    fn drop(&mut self) {
        self.unmap();
        // SAFETY: the resource this handle created, unreferenced once.
        unsafe { (self.virgl.lib.resource_unref)(self.res_id) };
    }
}

/// The venus backend: contexts of [`CAPSET_VENUS`] and their blobs.
#[derive(Debug)]
pub struct VirglBackend {
    virgl: Rc<Virgl>,
    allocator: AllocatorLoad,
}

impl VirglBackend {
    /// Loads `library`, initialises venus (render server, no virgl,
    /// fence eventfds polled by the caller) and has it load its Vulkan
    /// allocator ([`Virgl::load_vulkan_allocator`]): everything that must
    /// happen before the filter.
    pub fn new(library: &str) -> Result<Self, VirglError> {
        let virgl = Virgl::init(
            library,
            FLAG_VENUS | FLAG_NO_VIRGL | FLAG_RENDER_SERVER | FLAG_THREAD_SYNC,
        )?;
        let allocator = virgl.load_vulkan_allocator()?;
        Ok(VirglBackend { virgl, allocator })
    }

    /// What loading the Vulkan allocator gave.
    pub fn allocator(&self) -> AllocatorLoad {
        self.allocator
    }

    /// The library.
    pub fn virgl(&self) -> &Rc<Virgl> {
        &self.virgl
    }
}

impl Backend for VirglBackend {
    type Context = VirglContext;
    type Blob = VirglBlob;

    fn capset_info(&self, capset: u32) -> Option<CapsetInfo> {
        // Only venus: the library would also answer for virgl's capsets,
        // which this backend does not serve (NO_VIRGL).
        if capset != CAPSET_VENUS {
            return None;
        }
        self.virgl.capset_info(capset)
    }

    fn capset(&self, capset: u32, version: u32) -> Result<Vec<u8>, i32> {
        if capset != CAPSET_VENUS {
            return Err(libc::EINVAL);
        }
        self.virgl.capset(capset, version).map_err(|e| e.errno())
    }

    fn create_context(&mut self, ctx_id: u32, capset: u32) -> Result<VirglContext, i32> {
        if capset != CAPSET_VENUS {
            return Err(libc::EINVAL);
        }
        VirglContext::new(&self.virgl, ctx_id, capset, "gpu-hostmem").map_err(|e| {
            warn!(%e, ctx_id, "venus context");
            e.errno()
        })
    }

    fn create_blob(&mut self, ctx: &VirglContext, args: &BlobArgs) -> Result<VirglBlob, i32> {
        VirglBlob::new(ctx, args.resource_id, args.blob_id, args.size).map_err(|e| {
            warn!(%e, resource = args.resource_id, blob_id = args.blob_id, "venus blob");
            e.errno()
        })
    }

    fn map_blob(&mut self, blob: &mut VirglBlob) -> Result<BlobMapping, i32> {
        blob.map().map_err(|e| {
            warn!(%e, res = blob.res_id, "venus blob map");
            e.errno()
        })
    }

    fn unmap_blob(&mut self, blob: &mut VirglBlob) {
        blob.unmap();
    }

    /// The context's venus command stream, to libvirglrenderer (which
    /// knows its resources itself: `blobs` is not used).
    fn submit(
        &mut self,
        ctx: &mut VirglContext,
        cmds: &[u8],
        _blobs: &mut dyn BlobLookup<VirglBlob>,
    ) -> Result<(), i32> {
        ctx.submit(cmds).map_err(|e| {
            warn!(%e, ctx = ctx.id(), bytes = cmds.len(), "venus submit");
            e.errno()
        })
    }

    fn create_fence(
        &mut self,
        ctx: &mut VirglContext,
        ring: u32,
        fence_id: u64,
    ) -> Result<(), i32> {
        ctx.create_fence(ring, fence_id).map_err(|e| {
            warn!(%e, ctx = ctx.id(), ring, fence_id, "venus fence");
            e.errno()
        })
    }

    fn retired_fences(&mut self, ctx: &mut VirglContext) -> Vec<(u32, u64)> {
        ctx.poll_fences()
    }

    fn poll_fd(&self, ctx: &VirglContext) -> Option<RawFd> {
        ctx.poll_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_is_an_error_naming_it() {
        let e = VirglBackend::new("libvirglrenderer-not-here.so.0").expect_err("loaded");
        assert!(matches!(e, VirglError::Load { .. }));
        assert!(e.to_string().contains("libvirglrenderer-not-here.so.0"));
        assert_eq!(e.errno(), libc::ENODEV);
    }

    #[test]
    fn import_args_are_laid_out_as_in_virglrenderer_h() {
        // u32 res_handle, blob_mem, fd_type; int fd; u64 size.
        assert_eq!(std::mem::size_of::<ImportBlobArgs>(), 24);
        assert_eq!(std::mem::offset_of!(ImportBlobArgs, fd), 12);
        assert_eq!(std::mem::offset_of!(ImportBlobArgs, size), 16);
    }

    #[test]
    fn this_process_has_threads_and_no_udmabuf() {
        assert!(thread_count() >= 1);
        assert!(!holds_udmabuf());
    }

    #[test]
    fn return_codes_of_either_sign_are_errnos() {
        assert!(check("x", 0).is_ok());
        assert_eq!(
            check("x", -libc::ENOMEM).map_err(|e| e.errno()),
            Err(libc::ENOMEM)
        );
        assert_eq!(
            check("x", libc::EINVAL).map_err(|e| e.errno()),
            Err(libc::EINVAL)
        );
        assert_eq!(check("x", -1).map_err(|e| e.errno()), Err(libc::EINVAL));
    }
}
