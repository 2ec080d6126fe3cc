//! The platform layer: every OS-specific call of the engine lives under this module, and the
//! rest of the engine moves bytes only through it.
//!
//! Two byte-moving paths share one interface:
//! * `linux`: contiguous ranges go kernel-side with `copy_file_range` (a reflink where the
//!   filesystem can); strided ones are written with `pwritev` straight from the memory map;
//!   source pages we read and written pages we flushed are handed back to the kernel
//!   (`posix_fadvise`), writeback starts at once (`sync_file_range`) and files are reserved
//!   whole (`posix_fallocate`). Built on Linux unless the `portable-io` feature is on
//!   (`cfg(fast_io)`, set by build.rs).
//! * `portable`: std's positional writes (`FileExt::write_at` on Unix, `seek_write` on
//!   Windows) from the memory map, in bounded chunks, with short segments gathered into one
//!   bounded buffer per thread; no page-cache hints. What macOS and Windows run.
//!
//! Each run picks one (see [`IoPath`]): the platform's default, or the portable path when the
//! plan asks for it, so that one Linux build can run both and tests can compare their bytes.
//! What both paths share (positional writes of small buffers, dropping mapped pages from the
//! resident set, flushing by path, free space) is here, per OS; atomic renames are in `rename`.

#[cfg(fast_io)]
mod linux;
mod portable;
mod rename;

pub use rename::{rename_exchange, rename_no_replace};

use std::cell::Cell;
use std::fs::{File, OpenOptions};
use std::path::Path;

use memmap2::Mmap;
use serde::Serialize;

/// Segments at least this long are copied on their own (kernel-side, or straight from the
/// map); shorter ones are batched.
pub const DIRECT_MIN: u64 = 1 << 20;

/// How a run moves bytes.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum IoPath {
    LinuxFast,
    Portable,
}

impl IoPath {
    /// The path a run takes: the platform's fastest unless `portable` is asked for.
    pub fn choose(portable: bool) -> IoPath {
        if portable || !FAST_AVAILABLE {
            IoPath::Portable
        } else {
            IoPath::LinuxFast
        }
    }

    /// Makes this thread move bytes this way until the guard is dropped.
    pub fn enter(self) -> PathGuard {
        PathGuard(PATH.with(|p| p.replace(Some(self))))
    }

    /// For a worker thread that lives only for one run (a rayon pool's start handler).
    pub fn set_for_thread(self) {
        PATH.with(|p| p.set(Some(self)));
    }
}

const FAST_AVAILABLE: bool = cfg!(fast_io);

thread_local! {
    // Per thread, not per process, so that concurrent runs in one process (tests) can take
    // different paths; a run sets it on its own threads.
    static PATH: Cell<Option<IoPath>> = const { Cell::new(None) };
}

pub struct PathGuard(Option<IoPath>);

impl Drop for PathGuard {
    fn drop(&mut self) {
        PATH.with(|p| p.set(self.0));
    }
}

/// The path of the run this thread works for (the platform default outside a run).
pub fn current() -> IoPath {
    PATH.with(|p| p.get()).unwrap_or_else(|| IoPath::choose(false))
}

#[cfg(fast_io)]
fn fast() -> bool {
    current() == IoPath::LinuxFast
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
    #[cfg(fast_io)]
    if fast() {
        return linux::copy_range(src, map, src_off, dst, dst_off, len);
    }
    portable::copy_range(src, map, src_off, dst, dst_off, len)
}

/// Writes a list of source segments, in order, to consecutive bytes of `dst` from `dst_off`.
pub fn gather(src: &File, map: &Mmap, segments: impl Iterator<Item = (u64, u64)>, dst: &File, dst_off: u64) -> std::io::Result<Moved> {
    #[cfg(fast_io)]
    if fast() {
        return linux::gather(src, map, segments, dst, dst_off);
    }
    portable::gather(src, map, segments, dst, dst_off)
}

/// Asks the kernel to start writing back a range we just wrote, without waiting: the final
/// flush then has little left to do and dirty pages do not pile up. Advisory.
#[cfg_attr(not(fast_io), allow(unused_variables))]
pub fn start_writeback(file: &File, off: u64, len: u64) {
    #[cfg(fast_io)]
    if fast() {
        linux::start_writeback(file, off, len)
    }
}

/// Waits for the writeback of a range we wrote and drops its pages from the page cache.
/// Advisory: errors surface at the final flush.
#[cfg_attr(not(fast_io), allow(unused_variables))]
pub fn flush_and_drop(file: &File, off: u64, len: u64) {
    #[cfg(fast_io)]
    if fast() {
        linux::flush_and_drop(file, off, len)
    }
}

/// Drops a source range we have finished reading from the page cache (clean pages only). The
/// source is read once per run, so keeping it cached would only push other data out.
#[cfg_attr(not(fast_io), allow(unused_variables))]
pub fn drop_cached(file: &File, off: u64, len: u64) {
    #[cfg(fast_io)]
    if fast() {
        linux::drop_cached(file, off, len)
    }
}

/// Reserves the file's full size on disk so that a full disk fails now, not mid-write (the
/// portable path only sets the size: [`free_space`] is checked before instead).
pub fn reserve(file: &File, len: u64) -> std::io::Result<()> {
    #[cfg(fast_io)]
    if fast() {
        return linux::reserve(file, len);
    }
    portable::reserve(file, len)
}

/// Writes all of `buf` at `off`, whatever the file position.
pub fn write_all_at(file: &File, buf: &[u8], off: u64) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::write_all_at(file, buf, off)
    }
    #[cfg(windows)]
    {
        let (mut buf, mut off) = (buf, off);
        while !buf.is_empty() {
            match std::os::windows::fs::FileExt::seek_write(file, buf, off) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    buf = &buf[n..];
                    off += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Drops our page-table references to a range of a read-only map we have finished reading.
/// The page cache keeps the data; only this process's resident set shrinks, which keeps memory
/// flat however large the model.
pub fn release(map: &Mmap, off: u64, len: u64) {
    let end = (off + len).min(map.len() as u64);
    if end <= off {
        return;
    }
    #[cfg(unix)]
    // SAFETY: the range lies inside the read-only mapping (memmap2 widens it to whole pages);
    // dropping pages of a file-backed read-only map only means they are faulted in again.
    unsafe {
        let _ = map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, off as usize, (end - off) as usize);
    }
    #[cfg(windows)]
    // SAFETY: the range lies inside the mapping. VirtualUnlock on pages that are not locked
    // removes them from the working set (and reports ERROR_NOT_LOCKED, which is expected).
    unsafe {
        windows_sys::Win32::System::Memory::VirtualUnlock(map.as_ptr().add(off as usize).cast(), (end - off) as usize);
    }
}

/// Releases [from, to) of a map read front to back, and `behind` bytes before it: faulting a
/// page in maps its neighbours too (fault-around, large folios), some of them before `from`,
/// where the previous release has already passed.
pub fn release_read(map: &Mmap, from: u64, to: u64, behind: u64) {
    let back = from.saturating_sub(behind);
    release(map, back, to - back);
}

/// Tells the kernel a map will be read from start to end (read-ahead). Advisory.
pub fn advise_sequential(map: &Mmap) {
    #[cfg(unix)]
    let _ = map.advise(memmap2::Advice::Sequential);
    #[cfg(not(unix))]
    let _ = map;
}

/// Flushes a file we wrote (or linked) by its path, to stable storage.
pub fn sync_path(path: &Path) -> std::io::Result<()> {
    // Windows flushes only through a handle open for writing; Unix accepts any descriptor.
    let f = if cfg!(windows) { OpenOptions::new().write(true).open(path)? } else { File::open(path)? };
    f.sync_all()
}

/// Flushes a folder's entries (new names, renames) to stable storage.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(windows)]
    {
        // A folder cannot be opened as a file on Windows; NTFS journals its entries itself.
        let _ = dir;
        Ok(())
    }
}

/// Bytes an unprivileged writer can still put in the filesystem holding `dir`, if known.
pub fn free_space(dir: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
        let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: a valid C string and a buffer of the right type, written by the call.
        if unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) } != 0 {
            return None;
        }
        // SAFETY: statvfs returned 0, so it filled the buffer.
        let st = unsafe { st.assume_init() };
        #[allow(clippy::unnecessary_cast)] // the fields' types differ between Unixes
        Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
    }
    #[cfg(windows)]
    {
        use std::os::windows::ffi::OsStrExt;
        let wide: Vec<u16> = dir.as_os_str().encode_wide().chain(Some(0)).collect();
        let mut avail = 0u64;
        // SAFETY: a NUL-terminated wide string and one output pointer; the others may be null.
        let ok = unsafe {
            windows_sys::Win32::Storage::FileSystem::GetDiskFreeSpaceExW(wide.as_ptr(), &mut avail, std::ptr::null_mut(), std::ptr::null_mut())
        };
        (ok != 0).then_some(avail)
    }
}

/// Whether an error means the filesystem is full.
pub fn is_disk_full(err: &std::io::Error) -> bool {
    err.kind() == std::io::ErrorKind::StorageFull
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_is_known_and_a_full_disk_is_recognised() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_space(dir.path()).is_some_and(|n| n > 0));
        assert_eq!(free_space(&dir.path().join("missing")), None);
        #[cfg(unix)]
        assert!(is_disk_full(&std::io::Error::from_raw_os_error(libc::ENOSPC)));
        assert!(!is_disk_full(&std::io::Error::from(std::io::ErrorKind::PermissionDenied)));
    }

    #[test]
    fn a_run_path_holds_on_its_thread_until_dropped() {
        let default = current();
        {
            let _guard = IoPath::Portable.enter();
            assert_eq!(current(), IoPath::Portable);
            std::thread::spawn(move || assert_eq!(current(), default)).join().unwrap();
        }
        assert_eq!(current(), default);
    }
}
