//! Random access to an RBD snapshot through librbd, loaded at run time.
//!
//! Loading `librados.so.2` and `librbd.so.1` with `dlopen` keeps backy buildable
//! and runnable on hosts without Ceph; only sampled verification needs them. This
//! is the crate's only unsafe code: the C calls below, each with its contract.
#![allow(unsafe_code)]

use std::ffi::{CString, c_char, c_int, c_void};
use std::ptr;

use libloading::Library;

use super::error::RbdError;
use crate::error::Result;

type Handle = *mut c_void;

/// An open, read-only RBD image (or snapshot).
pub struct RbdImage {
    // Field order matters for Drop: close the image, then the ioctx, then the cluster,
    // and only then unload the libraries (kept alive by `_libs`).
    image: Handle,
    ioctx: Handle,
    cluster: Handle,
    api: Api,
    _libs: (Library, Library),
}

struct Api {
    rbd_read: unsafe extern "C" fn(Handle, u64, usize, *mut c_char) -> isize,
    rbd_close: unsafe extern "C" fn(Handle) -> c_int,
    rbd_get_size: unsafe extern "C" fn(Handle, *mut u64) -> c_int,
    rados_ioctx_destroy: unsafe extern "C" fn(Handle),
    rados_shutdown: unsafe extern "C" fn(Handle),
}

fn cstring(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| RbdError::NulByte(s.to_string()).into())
}

fn check(what: &'static str, ret: c_int) -> Result<()> {
    if ret < 0 {
        let source = std::io::Error::from_raw_os_error(-ret);
        return Err(RbdError::Call { call: what, source }.into());
    }
    Ok(())
}

impl RbdImage {
    /// Connects as `client.admin` (or what `CEPH_ARGS` says) to the cluster named by
    /// `CEPH_CLUSTER` (default `ceph`) with the config `CEPH_CONF` or the default
    /// path, and opens `pool/image@snap` read-only.
    pub fn open(pool: &str, image: &str, snap: &str) -> Result<RbdImage> {
        // SAFETY: loading a shared library runs its initialisers; librados and librbd
        // are the system's Ceph client libraries, which are designed to be loaded so.
        let load = |name: &str| unsafe { Library::new(name) };
        let librados = load("librados.so.2").map_err(|e| RbdError::Load {
            library: "librados.so.2",
            reason: e.to_string(),
            packages: "librados2 and librbd1",
        })?;
        let librbd = load("librbd.so.1").map_err(|e| RbdError::Load {
            library: "librbd.so.1",
            reason: e.to_string(),
            packages: "librbd1",
        })?;
        macro_rules! sym {
            ($lib:expr, $name:literal) => {
                // SAFETY: the declared type matches the C prototype in librados.h /
                // librbd.h for this symbol; the pointer is used only while the
                // library stays loaded (it is kept in the returned RbdImage).
                *unsafe { $lib.get(concat!($name, "\0").as_bytes()) }.map_err(|e| {
                    RbdError::Symbol {
                        symbol: $name,
                        reason: e.to_string(),
                    }
                })?
            };
        }
        let rados_create2: unsafe extern "C" fn(
            *mut Handle,
            *const c_char,
            *const c_char,
            u64,
        ) -> c_int = sym!(librados, "rados_create2");
        let rados_conf_read_file: unsafe extern "C" fn(Handle, *const c_char) -> c_int =
            sym!(librados, "rados_conf_read_file");
        let rados_conf_parse_env: unsafe extern "C" fn(Handle, *const c_char) -> c_int =
            sym!(librados, "rados_conf_parse_env");
        let rados_conf_set: unsafe extern "C" fn(Handle, *const c_char, *const c_char) -> c_int =
            sym!(librados, "rados_conf_set");
        let rados_connect: unsafe extern "C" fn(Handle) -> c_int = sym!(librados, "rados_connect");
        let rados_ioctx_create: unsafe extern "C" fn(Handle, *const c_char, *mut Handle) -> c_int =
            sym!(librados, "rados_ioctx_create");
        let rbd_open_read_only: unsafe extern "C" fn(
            Handle,
            *const c_char,
            *mut Handle,
            *const c_char,
        ) -> c_int = sym!(librbd, "rbd_open_read_only");
        let api = Api {
            rbd_read: sym!(librbd, "rbd_read"),
            rbd_close: sym!(librbd, "rbd_close"),
            rbd_get_size: sym!(librbd, "rbd_get_size"),
            rados_ioctx_destroy: sym!(librados, "rados_ioctx_destroy"),
            rados_shutdown: sym!(librados, "rados_shutdown"),
        };
        let cluster_name =
            cstring(&std::env::var("CEPH_CLUSTER").unwrap_or_else(|_| "ceph".into()))?;
        let client = cstring("client.admin")?;
        let (pool_c, image_c, snap_c) = (cstring(pool)?, cstring(image)?, cstring(snap)?);

        let mut cluster: Handle = ptr::null_mut();
        // SAFETY: `cluster` is a valid out pointer; the names are NUL-terminated and
        // outlive the call.
        check("rados_create2", unsafe {
            rados_create2(&mut cluster, cluster_name.as_ptr(), client.as_ptr(), 0)
        })?;
        let mut this = RbdImage {
            image: ptr::null_mut(),
            ioctx: ptr::null_mut(),
            cluster,
            api,
            _libs: (librbd, librados),
        };
        let timeout_key = cstring("client_mount_timeout")?;
        let timeout = cstring("30")?;
        // SAFETY: `cluster` was created above and is not yet connected, which the
        // configuration calls require; NULL means "the default file".
        check("rados_conf_read_file", unsafe {
            rados_conf_read_file(cluster, ptr::null())
        })?;
        // SAFETY: as above; NULL means "the CEPH_ARGS environment variable".
        check("rados_conf_parse_env", unsafe {
            rados_conf_parse_env(cluster, ptr::null())
        })?;
        // SAFETY: as above; key and value are NUL-terminated and outlive the call.
        check("rados_conf_set", unsafe {
            rados_conf_set(cluster, timeout_key.as_ptr(), timeout.as_ptr())
        })?;
        // SAFETY: `cluster` is configured and not yet connected; on failure it is
        // still shut down by Drop, which librados allows.
        check("rados_connect", unsafe { rados_connect(cluster) })?;
        // SAFETY: `cluster` is connected; the pool name is NUL-terminated and
        // outlives the call; `this.ioctx` is a valid out pointer, destroyed in Drop.
        check("rados_ioctx_create", unsafe {
            rados_ioctx_create(cluster, pool_c.as_ptr(), &mut this.ioctx)
        })?;
        // SAFETY: `this.ioctx` was created above; names are NUL-terminated and
        // outlive the call; `this.image` is a valid out pointer, closed in Drop.
        check("rbd_open_read_only", unsafe {
            rbd_open_read_only(
                this.ioctx,
                image_c.as_ptr(),
                &mut this.image,
                snap_c.as_ptr(),
            )
        })?;
        Ok(this)
    }

    /// The size of the opened snapshot.
    pub fn size(&self) -> Result<u64> {
        let mut size = 0u64;
        // SAFETY: `self.image` is open (set by a successful rbd_open_read_only).
        check("rbd_get_size", unsafe {
            (self.api.rbd_get_size)(self.image, &mut size)
        })?;
        Ok(size)
    }

    /// Reads `buf.len()` bytes at `offset` (short only at the end of the image).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            // SAFETY: the image is open and `buf[done..]` is valid writable memory of
            // exactly the length passed.
            let n = unsafe {
                (self.api.rbd_read)(
                    self.image,
                    offset + done as u64,
                    buf.len() - done,
                    buf[done..].as_mut_ptr().cast(),
                )
            };
            if n < 0 {
                check("rbd_read", n as c_int)?;
            }
            if n == 0 {
                break;
            }
            done += n as usize;
        }
        Ok(done)
    }
}

// SAFETY: the handles are plain pointers to librados/librbd objects, which
// those libraries allow to be used from any thread (one at a time: `RbdImage`
// is not `Sync`, and every method takes it by reference on one thread). Moving
// the struct moves the libraries it keeps loaded along with them.
unsafe impl Send for RbdImage {}

impl Drop for RbdImage {
    fn drop(&mut self) {
        if !self.image.is_null() {
            // SAFETY: the image was opened by rbd_open_read_only and is closed only
            // here, before its ioctx; the libraries are still loaded (`_libs`).
            unsafe { (self.api.rbd_close)(self.image) };
        }
        if !self.ioctx.is_null() {
            // SAFETY: the ioctx was created by rados_ioctx_create, its image is
            // closed, and it is destroyed only here, before the cluster handle.
            unsafe { (self.api.rados_ioctx_destroy)(self.ioctx) };
        }
        // SAFETY: the cluster handle was created by rados_create2 (connected or
        // not, which rados_shutdown accepts) and is shut down only here, last.
        unsafe { (self.api.rados_shutdown)(self.cluster) };
    }
}
