//! Checking an existing checkpoint against a plan: every tensor of the output must hold exactly
//! the bytes the plan's operation takes from the source (for a quantized tensor: the bytes a
//! fresh quantization produces), and nothing else may be there. The comparison walks the same
//! work items as writing, through memory maps, in parallel, with bounded memory.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::execute::Progress;
use crate::io::{self, IoPath};
use crate::items::{col_segments, push_items, src_row_bytes, Item, STRIDED_ITEM};
use crate::plan::{resolve, Container, Resolved, TensorSpec};
use crate::qband;

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct ComparePlan {
    pub source: PathBuf,
    pub output: PathBuf,
    pub tensors: Vec<TensorSpec>,
    #[serde(default)]
    pub threads: Option<usize>,
    /// As for [`crate::Plan`]: the portable I/O code even where a faster path exists.
    #[serde(default)]
    pub portable_io: bool,
}

#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub tensor: String,
    pub problem: String,
}

#[derive(Serialize, Debug)]
pub struct CompareReport {
    pub tensors: usize,
    pub bytes_compared: u64,
    pub mismatches: Vec<Mismatch>,
}

pub fn compare(plan: &ComparePlan, progress: &Progress, cancel: &AtomicBool) -> Result<CompareReport> {
    let io_path = IoPath::choose(plan.portable_io);
    let _io = io_path.enter();
    let src = Checkpoint::open(&plan.source)?;
    let out = Checkpoint::open(&plan.output)?;
    let mut mismatches = Vec::new();
    let mut expected = HashSet::new();
    let mut checked: Vec<Checked> = Vec::new();
    let mut items = Vec::new();
    for spec in &plan.tensors {
        if !expected.insert(spec.name.clone()) {
            return Err(Error::Plan(format!("the plan lists tensor {} twice", spec.name)));
        }
        let r = resolve(&src, spec, Container::Safetensors)?;
        let mut places = Vec::with_capacity(r.parts.len());
        for part in &r.parts {
            expected.insert(part.name.clone());
            match out.get(&part.name) {
                None => mismatches.push(Mismatch { tensor: part.name.clone(), problem: "missing from the output".into() }),
                Some((_, t)) if t.dtype != part.dtype || t.shape != part.shape => {
                    let problem = format!("is {} {:?}, expected {} {:?}", t.dtype.name(), t.shape, part.dtype.name(), part.shape);
                    mismatches.push(Mismatch { tensor: part.name.clone(), problem });
                }
                Some((shard, t)) => places.push((shard, t.start)),
            }
        }
        if places.len() != r.parts.len() {
            continue;
        }
        for (part, &(shard, start)) in r.parts.iter().zip(&places) {
            let Some(bytes) = &part.literal else { continue };
            if &out.shards[shard].map[start as usize..start as usize + bytes.len()] != bytes.as_slice() {
                mismatches.push(Mismatch { tensor: part.name.clone(), problem: "does not hold what the plan says (written at planning time)".into() });
            }
        }
        push_items(&mut items, places[0].0, checked.len(), &r, places[0].1, STRIDED_ITEM);
        checked.push(Checked { places, r });
    }
    for shard in &out.shards {
        for t in &shard.header.tensors {
            if !expected.contains(t.name.as_str()) {
                mismatches.push(Mismatch { tensor: t.name.clone(), problem: "is not produced by the spec (unexpected tensor)".into() });
            }
        }
    }
    let total: u64 = checked.iter().map(|c| c.r.nbytes).sum();
    progress.total.store(total, Ordering::Relaxed);

    let threads = plan.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .start_handler(move |_| io_path.set_for_thread())
        .build()
        .map_err(|e| Error::Internal(format!("thread pool: {e}")))?;
    // For each differing item: (tensor, first differing byte offset within the tensor).
    let diffs: Vec<(usize, u64)> = pool.install(|| {
        items
            .par_iter()
            .map(|item| {
                if cancel.load(Ordering::Relaxed) {
                    return Err(Error::Cancelled);
                }
                compare_item(item, &checked, &src, &out, progress)
            })
            .collect::<Result<Vec<_>>>()
    })?
    .into_iter()
    .flatten()
    .collect();
    let mut first: Vec<Option<u64>> = vec![None; checked.len()];
    for (t, off) in diffs {
        first[t] = Some(first[t].map_or(off, |o: u64| o.min(off)));
    }
    for (t, off) in first.iter().enumerate() {
        if let Some(off) = off {
            let problem = format!("bytes differ from the source's slice (first difference at byte {off} of the tensor)");
            mismatches.push(Mismatch { tensor: checked[t].r.name.clone(), problem });
        }
    }
    mismatches.sort_by(|a, b| a.tensor.cmp(&b.tensor));
    Ok(CompareReport { tensors: plan.tensors.len(), bytes_compared: total, mismatches })
}

/// A tensor being checked, and where each of its parts starts in the output (shard, offset).
struct Checked {
    r: Resolved,
    places: Vec<(usize, u64)>,
}

/// Returns the tensor and the offset (within it) of the first differing byte of this item.
fn compare_item(item: &Item, checked: &[Checked], src: &Checkpoint, out: &Checkpoint, progress: &Progress) -> Result<Option<(usize, u64)>> {
    if let Item::Quant { t, rows, .. } = *item {
        return compare_quant_band(&checked[t], t, rows, src, out, progress);
    }
    let (segments, file, t, mut dst): (Vec<(u64, u64)>, usize, usize, u64) = match *item {
        Item::Contig { file, t, src_off, dst_off, len } => (vec![(src_off, len)], file, t, dst_off),
        Item::Rows { file, t, rows, dst_off } => (col_segments(&checked[t].r, rows).collect(), file, t, dst_off),
        Item::Quant { .. } | Item::Encode { .. } => unreachable!("handled above (GGUF tensors are not compared here)"),
    };
    let Checked { r, places } = &checked[t];
    let out_start = places[0].1;
    let smap = &src.shards[r.shard].map;
    let omap = &out.shards[file].map;
    let begin = dst;
    let mut found = None;
    for (off, len) in segments {
        let a = &smap[off as usize..(off + len) as usize];
        let b = &omap[dst as usize..(dst + len) as usize];
        if a != b {
            let i = a.iter().zip(b).position(|(x, y)| x != y).expect("slices differ") as u64;
            found = Some((t, dst + i - out_start));
            break;
        }
        dst += len;
    }
    let (src_lo, src_len, out_len) = match *item {
        Item::Contig { src_off, len, .. } => (src_off, len, len),
        Item::Rows { rows, .. } => {
            let row = src_row_bytes(r);
            let out_row = r.shape.last().copied().unwrap_or(0) * r.dtype.size();
            (r.src.start + rows.0 * row, (rows.1 - rows.0) * row, (rows.1 - rows.0) * out_row)
        }
        Item::Quant { .. } | Item::Encode { .. } => unreachable!("handled above (GGUF tensors are not compared here)"),
    };
    io::release(smap, src_lo, src_len);
    io::release(omap, begin, out_len);
    progress.done.fetch_add(out_len, Ordering::Relaxed);
    Ok(found)
}

/// Re-quantizes a band from the source and compares it with the stored row parts. A
/// difference is reported at its offset in the parts laid out back to back.
fn compare_quant_band(
    c: &Checked,
    t: usize,
    rows: (u64, u64),
    src: &Checkpoint,
    out: &Checkpoint,
    progress: &Progress,
) -> Result<Option<(usize, u64)>> {
    let r = &c.r;
    let row_bytes = qband::row_bytes(r);
    let offsets = qband::band_offsets(r, rows.0);
    let n_rows = rows.1 - rows.0;
    // Where this band of each row part is stored: (shard, offset).
    let stored: Vec<(usize, u64)> = c.places.iter().zip(&row_bytes).map(|(&(shard, start), b)| (shard, start + rows.0 * b)).collect();
    let (_, found) = qband::quantize_band(r, src, rows, |parts| {
        for (k, bytes) in parts.iter().enumerate() {
            let (shard, at) = stored[k];
            let have = &out.shards[shard].map[at as usize..at as usize + bytes.len()];
            if let Some(i) = bytes.iter().zip(have).position(|(x, y)| x != y) {
                return Ok(Some(offsets[k] + i as u64));
            }
        }
        Ok(None)
    })
    .map_err(|e| qband::failure_error(r, src, e, "compare tensor"))?;
    for (&(shard, at), b) in stored.iter().zip(&row_bytes) {
        io::release(&out.shards[shard].map, at, n_rows * b);
    }
    progress.done.fetch_add(n_rows * row_bytes.iter().sum::<u64>(), Ordering::Relaxed);
    Ok(found.map(|off| (t, off)))
}
