//! Byte movement. Contiguous ranges go kernel-side with `copy_file_range` (no copy through user
//! space, and a reflink on filesystems that support it); anything strided is gathered from the
//! memory map into one bounded buffer per thread. Source pages we touched are handed back to
//! the kernel afterwards so resident memory does not grow with the model.

use std::cell::RefCell;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use memmap2::Mmap;

/// Strided writes are flushed once this many bytes are buffered.
pub const GATHER_BUF: usize = 8 << 20;
/// Segments at least this long skip the buffer and go kernel-side.
pub const DIRECT_MIN: u64 = 1 << 20;

static KERNEL_COPY_BROKEN: AtomicBool = AtomicBool::new(false);

thread_local! {
    static BUF: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(GATHER_BUF));
}

/// How bytes reached the destination, for the report.
#[derive(Default, Clone, Copy)]
pub struct Moved {
    pub kernel: u64,
    pub buffered: u64,
}

impl Moved {
    pub fn add(&mut self, o: Moved) {
        self.kernel += o.kernel;
        self.buffered += o.buffered;
    }
}

/// Copies `len` bytes at `src_off` of `src` (also mapped as `map`) to `dst_off` of `dst`.
pub fn copy_range(src: &File, map: &Mmap, src_off: u64, dst: &File, dst_off: u64, len: u64) -> std::io::Result<Moved> {
    let mut done = 0;
    if !KERNEL_COPY_BROKEN.load(Ordering::Relaxed) {
        done = kernel_copy(src, src_off, dst, dst_off, len)?;
    }
    if done < len {
        let (s, e) = ((src_off + done) as usize, (src_off + len) as usize);
        dst.write_all_at(&map[s..e], dst_off + done)?;
        release(map, src_off + done, len - done);
    }
    Ok(Moved { kernel: done, buffered: len - done })
}

/// Returns how many bytes the kernel copied; stops early (and disables itself for the rest of
/// the process) when the filesystem pair does not support `copy_file_range`.
fn kernel_copy(src: &File, src_off: u64, dst: &File, dst_off: u64, len: u64) -> std::io::Result<u64> {
    let mut off_in = src_off as libc::loff_t;
    let mut off_out = dst_off as libc::loff_t;
    let mut done = 0u64;
    while done < len {
        let want = (len - done).min(1 << 30) as usize;
        // SAFETY: valid fds and offset pointers owned by this frame.
        let n = unsafe {
            libc::copy_file_range(src.as_raw_fd(), &mut off_in, dst.as_raw_fd(), &mut off_out, want, 0)
        };
        if n > 0 {
            done += n as u64;
            continue;
        }
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "source ended early"));
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EXDEV | libc::ENOSYS | libc::EOPNOTSUPP | libc::EINVAL | libc::EPERM) => {
                KERNEL_COPY_BROKEN.store(true, Ordering::Relaxed);
                return Ok(done);
            }
            _ => return Err(err),
        }
    }
    Ok(done)
}

/// Writes a list of source segments, in order, to consecutive bytes of `dst` from `dst_off`.
/// Small segments are gathered through the thread's buffer; large ones are copied directly.
pub fn gather(
    src: &File,
    map: &Mmap,
    segments: impl Iterator<Item = (u64, u64)>,
    dst: &File,
    mut dst_off: u64,
) -> std::io::Result<Moved> {
    BUF.with(|cell| {
        let mut buf = cell.borrow_mut();
        buf.clear();
        let mut moved = Moved::default();
        for (off, len) in segments {
            if len >= DIRECT_MIN {
                flush(&mut buf, dst, &mut dst_off, &mut moved)?;
                moved.add(copy_range(src, map, off, dst, dst_off, len)?);
                dst_off += len;
                continue;
            }
            buf.extend_from_slice(&map[off as usize..(off + len) as usize]);
            if buf.len() >= GATHER_BUF {
                flush(&mut buf, dst, &mut dst_off, &mut moved)?;
            }
        }
        flush(&mut buf, dst, &mut dst_off, &mut moved)?;
        Ok(moved)
    })
}

fn flush(buf: &mut Vec<u8>, dst: &File, dst_off: &mut u64, moved: &mut Moved) -> std::io::Result<()> {
    if !buf.is_empty() {
        dst.write_all_at(buf, *dst_off)?;
        *dst_off += buf.len() as u64;
        moved.buffered += buf.len() as u64;
        buf.clear();
    }
    Ok(())
}

/// Drops our page-table references to a source range we have finished reading. The page cache
/// keeps the data; only this process's resident set shrinks.
pub fn release(map: &Mmap, off: u64, len: u64) {
    let page = page_size();
    let start = off / page * page;
    let end = (off + len).min(map.len() as u64);
    if end <= start {
        return;
    }
    // SAFETY: the range lies inside the read-only mapping; dropping pages of a file-backed
    // read-only map only means they are faulted in again if read later.
    unsafe {
        let _ = map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start as usize, (end - start) as usize);
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 { n as u64 } else { 4096 }
}

/// Reserves the file's full size on disk so that a full disk fails now, not mid-write.
pub fn reserve(file: &File, len: u64) -> std::io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    // SAFETY: valid fd.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len as libc::off_t) };
    match rc {
        0 => Ok(()),
        libc::EOPNOTSUPP | libc::EINVAL => file.set_len(len),
        e => Err(std::io::Error::from_raw_os_error(e)),
    }
}
