//! Renames with the guarantees plain `rename` lacks: swapping two folders in one step, and
//! refusing to land on a path that appeared meanwhile. Linux has `renameat2`, macOS
//! `renamex_np`; elsewhere (Windows) there is no atomic swap and the caller moves the old
//! folder aside instead.

use std::path::Path;

/// Swaps two paths atomically; `ErrorKind::Unsupported` where the system cannot.
pub fn rename_exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "macos"))]
    {
        rename_flags(a, b, Mode::Exchange)
    }
    #[cfg(not(any(target_os = "linux", target_os = "macos")))]
    {
        let _ = (a, b);
        Err(std::io::ErrorKind::Unsupported.into())
    }
}

/// Renames `from` to `to`, failing with `ErrorKind::AlreadyExists` if `to` exists, where the
/// system can tell atomically; elsewhere (or on a filesystem without it) a plain rename, which
/// never replaces a folder with another on Windows either.
pub fn rename_no_replace(from: &Path, to: &Path) -> std::io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "macos"))]
    match rename_flags(from, to, Mode::NoReplace) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS | libc::ENOTSUP)) => {}
        done => return done,
    }
    std::fs::rename(from, to)
}

#[cfg(any(target_os = "linux", target_os = "macos"))]
enum Mode {
    Exchange,
    NoReplace,
}

#[cfg(target_os = "linux")]
fn rename_flags(from: &Path, to: &Path, mode: Mode) -> std::io::Result<()> {
    let (a, b) = (c_path(from)?, c_path(to)?);
    let flags = match mode {
        Mode::Exchange => libc::RENAME_EXCHANGE,
        Mode::NoReplace => libc::RENAME_NOREPLACE,
    };
    // The raw system call: glibc's wrapper appeared only in 2.28, newer than manylinux wheels allow.
    // SAFETY: two NUL-terminated paths that outlive the call.
    let r = unsafe { libc::syscall(libc::SYS_renameat2, libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), flags) };
    if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

#[cfg(target_os = "macos")]
fn rename_flags(from: &Path, to: &Path, mode: Mode) -> std::io::Result<()> {
    let (a, b) = (c_path(from)?, c_path(to)?);
    let flags = match mode {
        Mode::Exchange => libc::RENAME_SWAP,
        Mode::NoReplace => libc::RENAME_EXCL,
    };
    // SAFETY: two NUL-terminated paths that outlive the call.
    let r = unsafe { libc::renamex_np(a.as_ptr(), b.as_ptr(), flags) };
    if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

#[cfg(any(target_os = "linux", target_os = "macos"))]
fn c_path(p: &Path) -> std::io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other)
}
