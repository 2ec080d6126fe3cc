//! Hashing a shard file while it is being written. Work items finish out of order, so each one
//! reports the byte ranges it completed; the cursor hashes the file's contiguous written prefix
//! as it grows, reading those bytes back through a memory map while they are still in the page
//! cache. A file is never read again from disk for its manifest, even under a memory cap that
//! evicts it long before it is complete.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use memmap2::Mmap;
use sha2::{Digest, Sha256};

use crate::io;

/// Bytes hashed between two looks at what other threads completed.
const STEP: u64 = 8 << 20;

pub struct HashCursor {
    size: u64,
    state: Mutex<State>,
}

struct State {
    /// Taken by the thread that is hashing; None while that thread works outside the lock.
    hasher: Option<Sha256>,
    /// Every byte before `pos` is hashed.
    pos: u64,
    /// Completed ranges not hashed yet: start -> end.
    pending: BTreeMap<u64, u64>,
}

impl HashCursor {
    pub fn new(size: u64) -> Self {
        HashCursor { size, state: Mutex::new(State { hasher: Some(Sha256::new()), pos: 0, pending: BTreeMap::new() }) }
    }

    /// Records that `ranges` of the file hold their final bytes, and hashes whatever has become
    /// contiguous (unless another thread is already doing so: it will pick these up). Returns
    /// the digest to the one caller whose ranges complete the file.
    pub fn written(&self, ranges: &[(u64, u64)], map: &Mmap, hashed: &AtomicU64) -> Option<String> {
        let mut st = self.lock();
        for &(b, e) in ranges.iter().filter(|(b, e)| e > b) {
            st.pending.insert(b, e);
        }
        let mut hasher = st.hasher.take()?; // another thread holds it and will continue
        loop {
            let end = contiguous_end(&mut st);
            if end == st.pos {
                if st.pos == self.size {
                    return Some(format!("{:x}", hasher.finalize()));
                }
                st.hasher = Some(hasher);
                return None;
            }
            let (from, to) = (st.pos, end.min(st.pos + STEP));
            drop(st);
            hasher.update(&map[from as usize..to as usize]);
            io::release(map, from, to - from);
            hashed.fetch_add(to - from, Ordering::Relaxed);
            st = self.lock();
            st.pos = to;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Merges the pending ranges that start at (or before) `pos` and returns how far the hashable
/// prefix now reaches.
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
        // keep what is known but not yet hashed, so the next pass resumes from `pos`
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
        let c = HashCursor::new(data.len() as u64);
        let hashed = AtomicU64::new(0);
        assert_eq!(c.written(&[(50_000, 100_000)], &map, &hashed), None);
        assert_eq!(c.written(&[(10, 50_000)], &map, &hashed), None);
        assert_eq!(hashed.load(Ordering::Relaxed), 0); // nothing contiguous from byte 0 yet
        let digest = c.written(&[(0, 10)], &map, &hashed).unwrap();
        assert_eq!(digest, format!("{:x}", Sha256::digest(&data)));
        assert_eq!(hashed.load(Ordering::Relaxed), data.len() as u64);
    }
}
