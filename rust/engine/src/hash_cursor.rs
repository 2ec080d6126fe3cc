//! Following a shard file as it is written. Work items finish out of order, so each one reports
//! the byte ranges it completed; the cursor advances over the file's contiguous written prefix.
//! Behind it, two things happen while the bytes are still in the page cache:
//! * with manifests, the prefix is hashed (read back through a memory map), so a file is never
//!   read again from disk for its SHA-256, even under a memory cap that evicts it;
//! * well behind it, the written pages are flushed and dropped from the page cache, so a slice
//!   recycles its own pages instead of filling the cache (and evicting everyone else's).

use std::collections::BTreeMap;
use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use memmap2::Mmap;
use sha2::{Digest, Sha256};

use crate::io;

/// Bytes hashed between two looks at what other threads completed.
const STEP: u64 = 8 << 20;
/// Written pages are dropped once the prefix is this far past them (their writeback, started
/// when they were written, has normally finished by then).
const DROP_LAG: u64 = 64 << 20;

pub struct HashCursor {
    size: u64,
    state: Mutex<State>,
}

struct State {
    /// Set while one thread advances the cursor outside the lock.
    busy: bool,
    /// None when the file is not hashed.
    hasher: Option<Sha256>,
    /// Every byte before `pos` is written (and hashed).
    pos: u64,
    /// Every byte before `dropped` is flushed and out of the page cache.
    dropped: u64,
    /// Completed ranges the cursor has not reached: start -> end.
    pending: BTreeMap<u64, u64>,
    /// The file's completion was reported.
    complete: bool,
}

/// What the one caller whose ranges complete the file receives.
pub struct Complete {
    pub sha256: Option<String>,
}

impl HashCursor {
    pub fn new(size: u64, hashing: bool) -> Self {
        let hasher = hashing.then(Sha256::new);
        HashCursor { size, state: Mutex::new(State { busy: false, hasher, pos: 0, dropped: 0, pending: BTreeMap::new(), complete: false }) }
    }

    /// Records that `ranges` of `file` hold their final bytes and advances the cursor over what
    /// has become contiguous (unless another thread is already doing so: it will pick these
    /// up). `map` is a read-only map of the file, needed when hashing.
    pub fn written(&self, ranges: &[(u64, u64)], file: &File, map: Option<&Mmap>, hashed: &AtomicU64) -> Option<Complete> {
        let mut st = self.lock();
        for &(b, e) in ranges.iter().filter(|(b, e)| e > b) {
            st.pending.insert(b, e);
        }
        if st.busy {
            return None;
        }
        st.busy = true;
        loop {
            let end = contiguous_end(&mut st);
            if end == st.pos {
                st.busy = false;
                if st.pos == self.size && !st.complete {
                    st.complete = true;
                    let sha256 = st.hasher.take().map(|h| format!("{:x}", h.finalize()));
                    return Some(Complete { sha256 });
                }
                return None;
            }
            let (from, to) = (st.pos, end.min(st.pos + STEP));
            let mut hasher = st.hasher.take();
            let dropped = st.dropped;
            drop(st);
            if let (Some(h), Some(map)) = (hasher.as_mut(), map) {
                h.update(&map[from as usize..to as usize]);
                io::release_read(map, from, to, STEP);
                hashed.fetch_add(to - from, Ordering::Relaxed);
            }
            let new_dropped = if to >= dropped + 2 * DROP_LAG { to - DROP_LAG } else { dropped };
            if new_dropped > dropped {
                io::flush_and_drop(file, dropped, new_dropped - dropped);
            }
            st = self.lock();
            st.hasher = hasher;
            st.pos = to;
            st.dropped = new_dropped;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Merges the pending ranges that start at (or before) `pos` and returns how far the
/// contiguous prefix now reaches.
fn contiguous_end(st: &mut State) -> u64 {
    let mut end = st.pos;
    while let Some((&b, &e)) = st.pending.first_key_value() {
        if b > end {
            break;
        }
        end = end.max(e);
        st.pending.pop_first();
    }
    if end > st.pos {
        // keep what is known but not yet passed, so the next step resumes from `pos`
        st.pending.insert(st.pos, end);
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn out_of_order_ranges_hash_like_the_whole_file() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&data).unwrap();
        let map = unsafe { Mmap::map(&f).unwrap() };
        let c = HashCursor::new(data.len() as u64, true);
        let hashed = AtomicU64::new(0);
        assert!(c.written(&[(50_000, 100_000)], &f, Some(&map), &hashed).is_none());
        assert!(c.written(&[(10, 50_000)], &f, Some(&map), &hashed).is_none());
        assert_eq!(hashed.load(Ordering::Relaxed), 0); // nothing contiguous from byte 0 yet
        let done = c.written(&[(0, 10)], &f, Some(&map), &hashed).unwrap();
        assert_eq!(done.sha256.unwrap(), format!("{:x}", Sha256::digest(&data)));
        assert_eq!(hashed.load(Ordering::Relaxed), data.len() as u64);
        assert!(c.written(&[], &f, Some(&map), &hashed).is_none()); // completes only once
    }

    #[test]
    fn without_hashing_it_reports_completion_only() {
        let f = tempfile::tempfile().unwrap();
        let c = HashCursor::new(30, false);
        let hashed = AtomicU64::new(0);
        assert!(c.written(&[(10, 30)], &f, None, &hashed).is_none());
        assert!(c.written(&[(0, 10)], &f, None, &hashed).unwrap().sha256.is_none());
    }
}
