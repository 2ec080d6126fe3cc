//! The Linux fast path. Contiguous ranges go kernel-side with `copy_file_range` (no copy through
//! user space, and a reflink on filesystems that support it); strided ones are written with
//! `pwritev` straight from the memory map, so the only copy is the kernel's into the page cache.
//! Source pages we touched are handed back to the kernel afterwards, so resident memory does not
//! grow with the model, and writeback of what we wrote starts at once, so dirty pages stay few.

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use memmap2::Mmap;

use super::{portable, Moved, DIRECT_MIN};

/// One `pwritev` call covers at most this many bytes (and IOV_MAX segments).
const GATHER_BATCH: u64 = 8 << 20;
const IOV_MAX: usize = 1024;

static KERNEL_COPY_BROKEN: AtomicBool = AtomicBool::new(false);

pub fn copy_range(src: &File, map: &Mmap, src_off: u64, dst: &File, dst_off: u64, len: u64) -> std::io::Result<Moved> {
    let mut done = 0;
    if !KERNEL_COPY_BROKEN.load(Ordering::Relaxed) {
        done = kernel_copy(src, src_off, dst, dst_off, len)?;
    }
    if done < len {
        portable::copy_range(src, map, src_off + done, dst, dst_off + done, len - done)?;
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

/// Short segments are batched into `pwritev` calls that read straight from the map; long ones
/// are copied kernel-side.
pub fn gather(src: &File, map: &Mmap, segments: impl Iterator<Item = (u64, u64)>, dst: &File, mut dst_off: u64) -> std::io::Result<Moved> {
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

pub fn flush_and_drop(file: &File, off: u64, len: u64) {
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: valid fd; both calls only act on the page cache of this range.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), off as libc::off64_t, len as libc::off64_t, flags);
        libc::posix_fadvise(file.as_raw_fd(), off as libc::off_t, len as libc::off_t, libc::POSIX_FADV_DONTNEED);
    }
}

/// Clean pages only; a range another process maps or dirtied stays.
pub fn drop_cached(file: &File, off: u64, len: u64) {
    // SAFETY: valid fd; advisory.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), off as libc::off_t, len as libc::off_t, libc::POSIX_FADV_DONTNEED);
    }
}

pub fn start_writeback(file: &File, off: u64, len: u64) {
    // SAFETY: valid fd; the call only schedules I/O.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), off as libc::off64_t, len as libc::off64_t, libc::SYNC_FILE_RANGE_WRITE);
    }
}

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
