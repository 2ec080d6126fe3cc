//! Quantizing a band of rows of one output tensor straight from the source map, for every
//! scheme: the kernel turns each row into its row parts (see the contract in `quant`), and a
//! band of rows is one contiguous byte range of each row part. Writing and verifying both call
//! this, so a verified checkpoint is checked against the very bytes the writer would produce.

use std::cell::RefCell;

use crate::checkpoint::{Checkpoint, Shard};
use crate::error::Error;
use crate::io;
use crate::plan::{source_row, Op, Resolved};
use crate::quant::{self, Kernel, RowBuf, Stats};

thread_local! {
    /// One row as f32 with the kernel's scratch, and the band's bytes of each row part.
    static QBUF: RefCell<(RowBuf, Vec<Vec<u8>>)> = RefCell::default();
}

pub enum QuantFailure {
    Io(std::io::Error),
    /// Output row index.
    NonFinite(u64),
}

fn kernel(r: &Resolved) -> Kernel {
    r.quant.as_ref().expect("quant bands are made for quantized tensors").kernel()
}

/// Bytes per row of each row part.
pub fn row_bytes(r: &Resolved) -> Vec<u64> {
    kernel(r).row_parts(r.shape[1]).iter().map(|p| p.row_bytes()).collect()
}

/// Byte offsets, relative to the tensor's first part, of output row `r0` in each row part
/// (the parts are laid out back to back, each `rows * row_bytes` long).
pub fn band_offsets(r: &Resolved, r0: u64) -> Vec<u64> {
    let rows = r.shape[0];
    let mut start = 0;
    row_bytes(r)
        .into_iter()
        .map(|b| {
            let at = start + r0 * b;
            start += rows * b;
            at
        })
        .collect()
}

/// Quantizes output rows [r0, r1): each row is read through the tensor's operation into f32
/// and quantized into the thread's buffers, which `sink(parts)` then consumes (`parts[k]`: the
/// band's bytes of row part `k`).
pub fn quantize_band<T>(
    r: &Resolved,
    ck: &Checkpoint,
    (r0, r1): (u64, u64),
    sink: impl FnOnce(&[Vec<u8>]) -> std::io::Result<T>,
) -> Result<(Stats, T), QuantFailure> {
    let kernel = kernel(r);
    let n_parts = kernel.row_parts(r.shape[1]).len();
    let shard = &ck.shards[r.shard];
    let map = &shard.map[..];
    let es = r.dtype.size();
    let cols = r.shape[1];
    let src_row = r.src.shape[1] * es;
    QBUF.with(|cell| {
        let (row, outs) = &mut *cell.borrow_mut();
        outs.resize_with(n_parts, Vec::new);
        outs.iter_mut().for_each(Vec::clear);
        let mut st = Stats::default();
        row.xs.resize(cols as usize, 0.0);
        for out_row in r0..r1 {
            let mut filled = 0usize;
            let mut take = |off: u64, len: u64| {
                let n = (len / es) as usize;
                quant::to_f32(&mut row.xs[filled..filled + n], &map[off as usize..(off + len) as usize], r.dtype);
                filled += n;
            };
            match &r.op {
                Op::Copy => take(r.src.start + out_row * src_row, src_row),
                Op::Rows { ranges } => take(r.src.start + source_row(ranges, out_row) * src_row, src_row),
                Op::Cols { ranges } => {
                    for &(b, e) in ranges {
                        take(r.src.start + out_row * src_row + b * es, (e - b) * es);
                    }
                }
            }
            let mut row_st = Stats::default();
            kernel.quantize_row(row, outs, &mut row_st);
            if !row_st.finite() {
                return Err(QuantFailure::NonFinite(out_row));
            }
            st.merge(&row_st);
        }
        let out = sink(outs).map_err(QuantFailure::Io)?;
        release_source_rows(r, shard, (r0, r1));
        Ok((st, out))
    })
}

/// The one-line error of a failed band.
pub fn failure_error(r: &Resolved, ck: &Checkpoint, e: QuantFailure, action: &'static str) -> Error {
    match e {
        QuantFailure::Io(err) => Error::Io { path: r.name.clone().into(), action, err },
        QuantFailure::NonFinite(row) => Error::format(
            &ck.shards[r.shard].path,
            format!("tensor {}: row {row} of {} holds NaN or infinity, which cannot be quantized", r.src.name, r.name),
        ),
    }
}

/// Unmaps the source rows a band read and drops them from the page cache.
fn release_source_rows(r: &Resolved, shard: &Shard, (r0, r1): (u64, u64)) {
    let src_row = r.src.shape[1] * r.dtype.size();
    let release = |at: u64, len: u64| {
        io::release(&shard.map, at, len);
        io::drop_cached(&shard.file, at, len);
    };
    match &r.op {
        Op::Rows { ranges } => {
            // Bands are short compared with blocks, so releasing row by row is cheap enough.
            for k in r0..r1 {
                release(r.src.start + source_row(ranges, k) * src_row, src_row);
            }
        }
        _ => release(r.src.start + r0 * src_row, (r1 - r0) * src_row),
    }
}
