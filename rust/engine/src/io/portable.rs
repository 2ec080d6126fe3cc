//! The portable path: std's positional writes only, from the memory map in bounded chunks.
//! Every mapped range is released as soon as it is written, so resident memory stays at a few
//! chunks per thread whatever the tensor size. No page-cache hints exist here: the OS decides
//! when to write back and what to evict.

use std::cell::RefCell;
use std::fs::File;

use memmap2::Mmap;

use super::{release, write_all_at, Moved, DIRECT_MIN};

/// Bytes written (and released) per call when copying straight from the map.
const CHUNK: u64 = 8 << 20;
/// Short segments are gathered into a per-thread buffer of this size before one write.
const GATHER_BUF: usize = 1 << 20;

thread_local! {
    static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

pub fn copy_range(_src: &File, map: &Mmap, src_off: u64, dst: &File, dst_off: u64, len: u64) -> std::io::Result<Moved> {
    let mut done = 0;
    while done < len {
        let n = (len - done).min(CHUNK);
        let at = src_off + done;
        write_all_at(dst, &map[at as usize..(at + n) as usize], dst_off + done)?;
        release(map, at, n);
        done += n;
    }
    Ok(Moved { kernel: 0, buffered: len })
}

pub fn gather(src: &File, map: &Mmap, segments: impl Iterator<Item = (u64, u64)>, dst: &File, mut dst_off: u64) -> std::io::Result<Moved> {
    BUF.with(|cell| {
        let mut buf = cell.borrow_mut();
        buf.clear();
        let mut buf_at = dst_off; // where the buffer's first byte goes
        let mut total = 0;
        for (off, len) in segments {
            if len >= DIRECT_MIN || buf.len() + len as usize > GATHER_BUF {
                flush(dst, &mut buf, buf_at)?;
                buf_at = dst_off;
            }
            if len >= DIRECT_MIN {
                copy_range(src, map, off, dst, dst_off, len)?;
                buf_at = dst_off + len;
            } else {
                buf.extend_from_slice(&map[off as usize..(off + len) as usize]);
            }
            dst_off += len;
            total += len;
        }
        flush(dst, &mut buf, buf_at)?;
        Ok(Moved { kernel: 0, buffered: total })
    })
}

fn flush(dst: &File, buf: &mut Vec<u8>, at: u64) -> std::io::Result<()> {
    if !buf.is_empty() {
        write_all_at(dst, buf, at)?;
        buf.clear();
    }
    Ok(())
}

pub fn reserve(file: &File, len: u64) -> std::io::Result<()> {
    file.set_len(len)
}
