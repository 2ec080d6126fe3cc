//! Byte movement. Contiguous ranges go kernel-side with `copy_file_range` (no copy through user
//! space, and a reflink on filesystems that support it); strided ones are written with
//! `pwritev` straight from the memory map, so the only copy is the kernel's into the page cache.
//! Source pages we touched are handed back to the kernel afterwards, so resident memory does not
//! grow with the model, and writeback of what we wrote starts at once, so dirty pages stay few.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use memmap2::Mmap;

/// One `pwritev` call covers at most this many bytes (and IOV_MAX segments).
pub const GATHER_BATCH: u64 = 8 << 20;
/// Segments at least this long go kernel-side with `copy_file_range` instead.
pub const DIRECT_MIN: u64 = 1 << 20;
const IOV_MAX: usize = 1024;

static KERNEL_COPY_BROKEN: AtomicBool = AtomicBool::new(false);

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
/// Short segments are batched into `pwritev` calls that read straight from the map; long ones
/// are copied kernel-side.
pub fn gather(
    src: &File,
    map: &Mmap,
    segments: impl Iterator<Item = (u64, u64)>,
    dst: &File,
    mut dst_off: u64,
) -> std::io::Result<Moved> {
    let mut batch: Vec<(u64, u64)> = Vec::with_capacity(IOV_MAX);
    let mut batch_len = 0;
    let mut moved = Moved::default();
    for (off, len) in segments {
        if len >= DIRECT_MIN {
            dst_off += write_batch(map, &mut batch, &mut batch_len, dst, dst_off, &mut moved)?;
            moved.add(copy_range(src, map, off, dst, dst_off, len)?);
            dst_off += len;
            continue;
        }
        batch.push((off, len));
        batch_len += len;
        if batch.len() == IOV_MAX || batch_len >= GATHER_BATCH {
            dst_off += write_batch(map, &mut batch, &mut batch_len, dst, dst_off, &mut moved)?;
        }
    }
    write_batch(map, &mut batch, &mut batch_len, dst, dst_off, &mut moved)?;
    Ok(moved)
}

/// Writes the batched segments at `dst_off`; returns how many bytes that was.
fn write_batch(map: &Mmap, batch: &mut Vec<(u64, u64)>, batch_len: &mut u64, dst: &File, dst_off: u64, moved: &mut Moved) -> std::io::Result<u64> {
    let total = *batch_len;
    let mut written = 0u64;
    let mut first = 0usize; // first segment not fully written
    let mut skip = 0u64; // bytes of it already written
    while written < total {
        let iov: Vec<libc::iovec> = batch[first..]
            .iter()
            .enumerate()
            .map(|(i, &(off, len))| {
                let cut = if i == 0 { skip } else { 0 };
                libc::iovec { iov_base: map[(off + cut) as usize..].as_ptr() as *mut libc::c_void, iov_len: (len - cut) as usize }
            })
            .collect();
        // SAFETY: every iovec points into the live read-only map and stays within it.
        let n = unsafe { libc::pwritev(dst.as_raw_fd(), iov.as_ptr(), iov.len() as libc::c_int, (dst_off + written) as libc::off_t) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::WriteZero, "pwritev wrote nothing"));
        }
        written += n as u64;
        let mut left = n as u64;
        while left > 0 {
            let rest = batch[first].1 - skip;
            if left < rest {
                skip += left;
                left = 0;
            } else {
                left -= rest;
                first += 1;
                skip = 0;
            }
        }
    }
    moved.buffered += total;
    batch.clear();
    *batch_len = 0;
    Ok(total)
}

/// Waits for the writeback of a range we wrote (started earlier by [`start_writeback`]) and
/// drops its pages from the page cache. Advisory: errors surface at the final flush.
pub fn flush_and_drop(file: &File, off: u64, len: u64) {
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: valid fd; both calls only act on the page cache of this range.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), off as libc::off64_t, len as libc::off64_t, flags);
        libc::posix_fadvise(file.as_raw_fd(), off as libc::off_t, len as libc::off_t, libc::POSIX_FADV_DONTNEED);
    }
}

/// Drops a source range we have finished reading from the page cache (clean pages only; a
/// range another process maps or dirtied stays). The source is read once per run, so keeping
/// it cached would only push other data out.
pub fn drop_cached(file: &File, off: u64, len: u64) {
    // SAFETY: valid fd; advisory.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), off as libc::off_t, len as libc::off_t, libc::POSIX_FADV_DONTNEED);
    }
}

/// Asks the kernel to start writing back a range we just wrote, without waiting for it: the
/// final flush then has little left to do, and dirty pages do not pile up (which matters under
/// a memory cap). Advisory: errors surface at the final flush.
pub fn start_writeback(file: &File, off: u64, len: u64) {
    // SAFETY: valid fd; the call only schedules I/O.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), off as libc::off64_t, len as libc::off64_t, libc::SYNC_FILE_RANGE_WRITE);
    }
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
