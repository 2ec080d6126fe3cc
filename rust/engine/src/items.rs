//! Units of parallel work over one output tensor: contiguous byte ranges (split so that big
//! tensors spread over threads), bands of rows whose column ranges are gathered, or bands of
//! rows to quantize. Writing and comparing walk the same items, so both follow the plan's
//! operations identically.

use crate::plan::{Op, Resolved};

/// Contiguous copies are split into pieces of this size so that big tensors spread over threads.
pub const CONTIG_ITEM: u64 = 64 << 20;
/// Strided and quantizing work items cover about this many source bytes (unless the plan says
/// otherwise).
pub const STRIDED_ITEM: u64 = 16 << 20;

/// `file` is the destination file (a piece when writing, an output shard when comparing) and
/// `t` the tensor's index in the caller's list.
pub enum Item {
    Contig { file: usize, t: usize, src_off: u64, dst_off: u64, len: u64 },
    Rows { file: usize, t: usize, rows: (u64, u64), dst_off: u64 },
    /// `dst_off` is where the tensor's first part (its packed words) starts.
    Quant { file: usize, t: usize, rows: (u64, u64), dst_off: u64 },
    /// Rows of a GGUF tensor, encoded as its GGML type; `dst_off` is where row `rows.0` goes.
    Encode { file: usize, t: usize, rows: (u64, u64), dst_off: u64 },
}

impl Item {
    /// The destination file the item writes (or compares).
    pub fn file(&self) -> usize {
        match *self {
            Item::Contig { file, .. } | Item::Rows { file, .. } | Item::Quant { file, .. } | Item::Encode { file, .. } => file,
        }
    }
}

/// Appends the items producing tensor `r`, whose data starts at `dst` in `file`; strided and
/// quantizing bands cover about `band_bytes` source bytes.
pub fn push_items(items: &mut Vec<Item>, file: usize, t: usize, r: &Resolved, mut dst: u64, band_bytes: u64) {
    let contig = |items: &mut Vec<Item>, src_off: u64, len: u64, dst: u64| {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(CONTIG_ITEM);
            items.push(Item::Contig { file, t, src_off: src_off + done, dst_off: dst + done, len: n });
            done += n;
        }
    };
    if let Some(g) = &r.gguf {
        let band = (band_bytes / (g.cols * r.dtype.size()).max(1)).max(1);
        let mut r0 = 0;
        while r0 < g.rows {
            let r1 = (r0 + band).min(g.rows);
            items.push(Item::Encode { file, t, rows: (r0, r1), dst_off: dst + r0 * g.row_bytes() });
            r0 = r1;
        }
        return;
    }
    if r.quant.is_some() {
        let (rows, cols) = (r.shape[0], r.shape[1]);
        let band = (band_bytes / (cols * r.dtype.size()).max(1)).max(1);
        let mut r0 = 0;
        while r0 < rows && cols > 0 {
            let r1 = (r0 + band).min(rows);
            items.push(Item::Quant { file, t, rows: (r0, r1), dst_off: dst });
            r0 = r1;
        }
        return;
    }
    match &r.op {
        Op::Copy => contig(items, r.src.start, r.src.len, dst),
        Op::Rows { ranges } => {
            let row = row_bytes(r);
            for &(b, e) in ranges {
                contig(items, r.src.start + b * row, (e - b) * row, dst);
                dst += (e - b) * row;
            }
        }
        Op::Cols { .. } => {
            let src_row = src_row_bytes(r);
            let out_row = *r.shape.last().expect("same rank") * r.dtype.size();
            let rows: u64 = r.shape[..r.shape.len() - 1].iter().product();
            if src_row == 0 || out_row == 0 {
                return;
            }
            let band = (band_bytes / src_row).max(1);
            let mut r0 = 0;
            while r0 < rows {
                let r1 = (r0 + band).min(rows);
                items.push(Item::Rows { file, t, rows: (r0, r1), dst_off: dst + r0 * out_row });
                r0 = r1;
            }
        }
    }
}

fn row_bytes(r: &Resolved) -> u64 {
    r.src.len.checked_div(r.src.shape[0]).unwrap_or(0)
}

/// Bytes of one source row along the last dimension (for column operations).
pub fn src_row_bytes(r: &Resolved) -> u64 {
    *r.src.shape.last().expect("cols ops have 2+ dims") * r.dtype.size()
}

/// The source segments (offset, length) of rows `r0..r1` of a column operation, in output order.
pub fn col_segments(r: &Resolved, (r0, r1): (u64, u64)) -> impl Iterator<Item = (u64, u64)> + '_ {
    let Op::Cols { ranges } = &r.op else { unreachable!("row bands are made for cols ops") };
    let es = r.dtype.size();
    let src_row = src_row_bytes(r);
    let base = r.src.start;
    (r0..r1).flat_map(move |row| ranges.iter().map(move |&(b, e)| (base + row * src_row + b * es, (e - b) * es)))
}
