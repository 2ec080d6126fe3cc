//! SHA-256 of written files, for the manifest each output folder carries and for checking it.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use memmap2::MmapOptions;

use crate::error::{Error, Result};
use crate::io;

const CHUNK: usize = 8 << 20;

pub fn sha256_bytes(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// Hashes a file through a memory map (no copy into a read buffer); `done` counts the bytes
/// hashed, `cancel` stops early.
pub fn sha256_file(path: &Path, done: &AtomicU64, cancel: &AtomicBool) -> Result<String> {
    let f = File::open(path).map_err(|e| Error::io(path, "open", e))?;
    let len = f.metadata().map_err(|e| Error::io(path, "stat", e))?.len();
    let mut hasher = Sha256::new();
    if len > 0 {
        // SAFETY: read-only map of a file this process wrote or is checking; a concurrent
        // truncation could fault, as for any mmap reader.
        let map = unsafe { MmapOptions::new().len(len as usize).map(&f) }.map_err(|e| Error::io(path, "memory-map", e))?;
        io::advise_sequential(&map);
        let mut at = 0u64;
        while at < len {
            if cancel.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            let n = (len - at).min(CHUNK as u64);
            hasher.update(&map[at as usize..(at + n) as usize]);
            io::release_read(&map, at, at + n, CHUNK as u64);
            done.fetch_add(n, Ordering::Relaxed);
            at += n;
        }
    }
    Ok(format!("{:x}", hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digests() {
        assert_eq!(sha256_bytes(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("abc");
        std::fs::write(&p, b"abc").unwrap();
        let done = AtomicU64::new(0);
        let h = sha256_file(&p, &done, &AtomicBool::new(false)).unwrap();
        assert_eq!(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(done.load(Ordering::Relaxed), 3);
    }
}
