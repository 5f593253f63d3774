//! A shared memory mapping of an mmapable BPF array map: how user space
//! reads the request event ring (`probes::net`) without a system call.

use std::os::fd::{AsFd as _, AsRawFd as _};
use std::ptr::NonNull;

use anyhow::{Context as _, bail};
use aya::maps::{Map, MapData};

/// A shared memory mapping of an mmapable BPF array map (`BPF_F_MMAPABLE`),
/// read and written in place.
pub struct Mapping {
    pub ptr: NonNull<u8>,
    len: usize,
    // Programs loaded later refer to the map by this fd: it must stay open
    // until they are (the mapping alone would keep the map, not the fd).
    _map: MapData,
}

// SAFETY: plain shared memory, accessed through `EventRing` only.
unsafe impl Send for Mapping {}

impl Mapping {
    pub fn of_array(map: Map, bytes: usize) -> anyhow::Result<Mapping> {
        let Map::Array(data) = map else {
            bail!("event ring map is not an ARRAY");
        };
        let fd = data.fd().as_fd();
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let len = bytes.div_ceil(page) * page;
        // SAFETY: a new shared mapping of the whole map; checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error())
                .context("mapping the request event ring (an mmapable BPF array, Linux 5.5+)");
        }
        let ptr = NonNull::new(ptr.cast()).expect("mmap returned a non-null address");
        Ok(Mapping { ptr, len, _map: data })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `of_array`.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
