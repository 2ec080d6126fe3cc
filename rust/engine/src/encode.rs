//! Writing a band of rows of a GGUF tensor straight from the source map: each output row is
//! read through the tensor's operation from the source it stacks (or is a row of zeros, for
//! padding), then stored as the tensor's GGML type: raw bytes when the type is the source's
//! own, else converted to f32 and passed to the GGML kernel (`ggml::quantize_row`), which
//! converts to F32/F16/BF16 or quantizes into blocks exactly as llama.cpp does (with the
//! tensor's importance matrix, if the plan gives one).

use std::cell::RefCell;

use crate::checkpoint::Checkpoint;
use crate::dtype::Dtype;
use crate::error::Error;
use crate::ggml::GgmlType;
use crate::header::TensorInfo;
use crate::io;
use crate::plan::{source_row, Op, Resolved};
use crate::quant;

thread_local! {
    /// One source row as bytes and as f32, and the band's encoded rows.
    static EBUF: RefCell<(Vec<u8>, Vec<f32>, Vec<u8>)> = RefCell::default();
}

pub enum EncodeFailure {
    Io(std::io::Error),
    /// Output row index: a block type cannot hold NaN or infinity.
    NonFinite(u64),
}

/// The GGML type that stores a source dtype unchanged.
pub fn same_type(dtype: Dtype) -> Option<GgmlType> {
    match dtype {
        Dtype::F32 => Some(GgmlType::F32),
        Dtype::F16 => Some(GgmlType::F16),
        Dtype::BF16 => Some(GgmlType::BF16),
        _ => None,
    }
}

/// Encodes output rows [r0, r1) into the thread's buffer, which `sink(bytes)` then consumes
/// (rows back to back, `row_bytes` each).
pub fn encode_band<T>(
    r: &Resolved,
    ck: &Checkpoint,
    (r0, r1): (u64, u64),
    sink: impl FnOnce(&[u8]) -> std::io::Result<T>,
) -> Result<T, EncodeFailure> {
    let g = r.gguf.as_ref().expect("encode bands are made for GGUF tensors");
    let raw = same_type(r.dtype) == Some(g.ggml);
    let row_bytes = g.row_bytes() as usize;
    let cols = g.cols as usize;
    let es = r.dtype.size() as usize;
    EBUF.with(|cell| {
        let (bytes, xs, out) = &mut *cell.borrow_mut();
        out.clear();
        out.resize((r1 - r0) as usize * row_bytes, 0);
        bytes.resize(cols * es, 0);
        xs.resize(cols, 0.0);
        for (k, row) in (r0..r1).enumerate() {
            let dst = &mut out[k * row_bytes..(k + 1) * row_bytes];
            let Some((shard, src, local)) = source_of(r, row) else {
                if !raw {
                    xs.fill(0.0);
                    crate::ggml::quantize_row(g.ggml, xs, dst, g.imatrix.as_deref()).expect("sizes were checked when resolving");
                }
                continue; // padding: zeros, in the source dtype or encoded
            };
            read_row(r, &ck.shards[shard].map, src, local, bytes);
            if raw {
                dst.copy_from_slice(bytes);
                continue;
            }
            quant::to_f32(xs, bytes, r.dtype);
            if g.ggml.block_size() > 1 && !xs.iter().all(|x| x.is_finite()) {
                return Err(EncodeFailure::NonFinite(row));
            }
            crate::ggml::quantize_row(g.ggml, xs, dst, g.imatrix.as_deref()).expect("sizes were checked when resolving");
        }
        let t = sink(out).map_err(EncodeFailure::Io)?;
        release_rows(r, ck, (r0, r1));
        Ok(t)
    })
}

/// The one-line error of a failed band.
pub fn failure_error(r: &Resolved, ck: &Checkpoint, e: EncodeFailure, action: &'static str) -> Error {
    match e {
        EncodeFailure::Io(err) => Error::Io { path: r.name.clone().into(), action, err },
        EncodeFailure::NonFinite(row) => Error::format(
            &ck.shards[r.shard].path,
            format!(
                "tensor {}: row {row} of {} holds NaN or infinity, which {} cannot store",
                r.src.name,
                r.name,
                r.gguf.as_ref().map_or("", |g| g.ggml.name())
            ),
        ),
    }
}

/// The (shard, source tensor, row of the operation's output) that output row `row` comes
/// from, or None for a padding row.
fn source_of(r: &Resolved, row: u64) -> Option<(usize, &TensorInfo, u64)> {
    let g = r.gguf.as_ref()?;
    if row >= g.data_rows() {
        return None;
    }
    let (seg, local) = (row / g.seg_rows, row % g.seg_rows);
    if seg == 0 {
        Some((r.shard, &r.src, local))
    } else {
        let (shard, t) = &g.more[seg as usize - 1];
        Some((*shard, t, local))
    }
}

/// Bytes of one row of the source along its last dimension.
fn src_row_bytes(r: &Resolved, src: &TensorInfo) -> u64 {
    src.shape.last().copied().unwrap_or(1) * r.dtype.size()
}

/// Copies row `k` of `op(src)` into `out`.
fn read_row(r: &Resolved, map: &[u8], src: &TensorInfo, k: u64, out: &mut [u8]) {
    let es = r.dtype.size();
    let row = src_row_bytes(r, src);
    let mut filled = 0usize;
    let mut take = |off: u64, len: u64| {
        out[filled..filled + len as usize].copy_from_slice(&map[off as usize..(off + len) as usize]);
        filled += len as usize;
    };
    match &r.op {
        Op::Copy => take(src.start + k * row, row),
        Op::Rows { ranges } => take(src.start + source_row(ranges, k) * row, row),
        Op::Cols { ranges } => {
            for &(b, e) in ranges {
                take(src.start + k * row + b * es, (e - b) * es);
            }
        }
    }
}

/// Unmaps the source rows a band read and drops them from the page cache, adjacent rows as
/// one range.
fn release_rows(r: &Resolved, ck: &Checkpoint, (r0, r1): (u64, u64)) {
    let mut pending: Option<(usize, u64, u64)> = None;
    let flush = |p: Option<(usize, u64, u64)>| {
        if let Some((shard, at, len)) = p {
            let s = &ck.shards[shard];
            io::release(&s.map, at, len);
            io::drop_cached(&s.file, at, len);
        }
    };
    for row in r0..r1 {
        let Some((shard, src, local)) = source_of(r, row) else { continue };
        let len = src_row_bytes(r, src);
        let at = match &r.op {
            Op::Rows { ranges } => src.start + source_row(ranges, local) * len,
            _ => src.start + local * len,
        };
        match pending {
            Some((s, b, n)) if s == shard && b + n == at => pending = Some((s, b, n + len)),
            _ => {
                flush(pending);
                pending = Some((shard, at, len));
            }
        }
    }
    flush(pending);
}
