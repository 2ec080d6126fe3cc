//! Checking an existing checkpoint against a plan: every tensor of the output must hold exactly
//! the bytes the plan's operation takes from the source, and nothing else may be there. The
//! comparison walks the same work items as writing, through memory maps, in parallel, with
//! bounded memory.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::execute::Progress;
use crate::io;
use crate::items::{col_segments, push_items, src_row_bytes, Item};
use crate::plan::{resolve, Resolved, TensorSpec};

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct ComparePlan {
    pub source: PathBuf,
    pub output: PathBuf,
    pub tensors: Vec<TensorSpec>,
    #[serde(default)]
    pub threads: Option<usize>,
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
    let src = Checkpoint::open(&plan.source)?;
    let out = Checkpoint::open(&plan.output)?;
    let mut mismatches = Vec::new();
    let mut expected = HashSet::new();
    let mut checked: Vec<(Resolved, u64)> = Vec::new();
    let mut items = Vec::new();
    for spec in &plan.tensors {
        if !expected.insert(spec.name.as_str()) {
            return Err(Error::Plan(format!("the plan lists tensor {} twice", spec.name)));
        }
        let r = resolve(&src, spec)?;
        let Some((shard, t)) = out.get(&spec.name) else {
            mismatches.push(Mismatch { tensor: spec.name.clone(), problem: "missing from the output".into() });
            continue;
        };
        if t.dtype != r.dtype || t.shape != r.shape {
            let problem = format!("is {} {:?}, expected {} {:?}", t.dtype.name(), t.shape, r.dtype.name(), r.shape);
            mismatches.push(Mismatch { tensor: spec.name.clone(), problem });
            continue;
        }
        push_items(&mut items, shard, checked.len(), &r, t.start);
        checked.push((r, t.start));
    }
    for shard in &out.shards {
        for t in &shard.header.tensors {
            if !expected.contains(t.name.as_str()) {
                mismatches.push(Mismatch { tensor: t.name.clone(), problem: "is not produced by the spec (unexpected tensor)".into() });
            }
        }
    }
    let total: u64 = checked.iter().map(|(r, _)| r.nbytes).sum();
    progress.total.store(total, Ordering::Relaxed);

    let threads = plan.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
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
                Ok(compare_item(item, &checked, &src, &out, progress))
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
            mismatches.push(Mismatch { tensor: checked[t].0.name.clone(), problem });
        }
    }
    mismatches.sort_by(|a, b| a.tensor.cmp(&b.tensor));
    Ok(CompareReport { tensors: plan.tensors.len(), bytes_compared: total, mismatches })
}

/// Returns the tensor and the offset (within it) of the first differing byte of this item.
fn compare_item(item: &Item, checked: &[(Resolved, u64)], src: &Checkpoint, out: &Checkpoint, progress: &Progress) -> Option<(usize, u64)> {
    let (segments, file, t, mut dst): (Vec<(u64, u64)>, usize, usize, u64) = match *item {
        Item::Contig { file, t, src_off, dst_off, len } => (vec![(src_off, len)], file, t, dst_off),
        Item::Rows { file, t, rows, dst_off } => (col_segments(&checked[t].0, rows).collect(), file, t, dst_off),
    };
    let (r, out_start) = &checked[t];
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
    let (src_lo, src_len) = match *item {
        Item::Contig { src_off, len, .. } => (src_off, len),
        Item::Rows { rows, .. } => {
            let row = src_row_bytes(r);
            (r.src.start + rows.0 * row, (rows.1 - rows.0) * row)
        }
    };
    io::release(smap, src_lo, src_len);
    let out_len = match *item {
        Item::Contig { len, .. } => len,
        Item::Rows { rows, .. } => (rows.1 - rows.0) * r.shape.last().copied().unwrap_or(0) * r.dtype.size(),
    };
    io::release(omap, begin, out_len);
    progress.done.fetch_add(out_len, Ordering::Relaxed);
    found
}
