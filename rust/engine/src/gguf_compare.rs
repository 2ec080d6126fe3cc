//! Checking a GGUF file against a plan: every tensor's data, at the offset the caller read from
//! the file's header, must hold exactly the bytes the plan's operation, stack, padding and
//! GGML type produce from the source. The same bands as writing, compared in parallel through
//! memory maps. (Names, shapes, types and metadata are the caller's to compare: it reads the
//! header with a GGUF reader.)

use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use memmap2::Mmap;
use rayon::prelude::*;
use serde::Deserialize;

use crate::checkpoint::Checkpoint;
use crate::compare::{CompareReport, Mismatch};
use crate::encode;
use crate::error::{Error, Result};
use crate::execute::Progress;
use crate::io;
use crate::items::{push_items, Item, STRIDED_ITEM};
use crate::plan::{resolve, Container, TensorSpec};

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct GgufComparePlan {
    pub source: PathBuf,
    pub output: PathBuf,
    pub tensors: Vec<TensorSpec>,
    /// Absolute file offset of each tensor's data, as the file's header gives it.
    pub offsets: BTreeMap<String, u64>,
    #[serde(default)]
    pub threads: Option<usize>,
}

pub fn compare_gguf(plan: &GgufComparePlan, progress: &Progress, cancel: &AtomicBool) -> Result<CompareReport> {
    let src = Checkpoint::open(&plan.source)?;
    let file = File::open(&plan.output).map_err(|e| Error::io(&plan.output, "open", e))?;
    // SAFETY: a read-only view; a file changed under us shows up as differing bytes.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&plan.output, "memory-map", e))?;
    let mut resolved = Vec::with_capacity(plan.tensors.len());
    let mut items = Vec::new();
    let mut mismatches = Vec::new();
    for spec in &plan.tensors {
        let r = resolve(&src, spec, Container::Gguf)?;
        match plan.offsets.get(&spec.name) {
            Some(&at) if at.checked_add(r.nbytes).is_some_and(|end| end <= map.len() as u64) => {
                push_items(&mut items, 0, resolved.len(), &r, at, STRIDED_ITEM);
                resolved.push(r);
            }
            Some(_) => mismatches.push(Mismatch { tensor: spec.name.clone(), problem: "runs past the end of the file".into() }),
            None => mismatches.push(Mismatch { tensor: spec.name.clone(), problem: "missing from the output".into() }),
        }
    }
    progress.total.store(resolved.iter().map(|r| r.nbytes).sum(), Ordering::Relaxed);
    let threads = plan.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().map_err(|e| Error::Internal(format!("thread pool: {e}")))?;
    let diffs: Vec<Option<(usize, u64)>> = pool.install(|| {
        items
            .par_iter()
            .map(|item| {
                if cancel.load(Ordering::Relaxed) {
                    return Err(Error::Cancelled);
                }
                let Item::Encode { t, rows, dst_off, .. } = *item else { unreachable!("GGUF tensors are written in bands") };
                let r = &resolved[t];
                let start = plan.offsets[&r.name];
                let found = encode::encode_band(r, &src, rows, |bytes| {
                    let stored = &map[dst_off as usize..dst_off as usize + bytes.len()];
                    let first = bytes.iter().zip(stored).position(|(a, b)| a != b);
                    io::release(&map, dst_off, bytes.len() as u64);
                    progress.done.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    Ok(first.map(|i| (t, dst_off - start + i as u64)))
                })
                .map_err(|e| encode::failure_error(r, &src, e, "compare tensor"))?;
                Ok(found)
            })
            .collect::<Result<Vec<_>>>()
    })?;
    let mut first: Vec<Option<u64>> = vec![None; resolved.len()];
    for (t, off) in diffs.into_iter().flatten() {
        first[t] = Some(first[t].map_or(off, |o| o.min(off)));
    }
    for (r, off) in resolved.iter().zip(first) {
        if let Some(off) = off {
            let problem = format!("bytes differ from the source's slice (first difference at byte {off} of the tensor)");
            mismatches.push(Mismatch { tensor: r.name.clone(), problem });
        }
    }
    mismatches.sort_by(|a, b| a.tensor.cmp(&b.tensor));
    Ok(CompareReport { tensors: plan.tensors.len(), bytes_compared: resolved.iter().map(|r| r.nbytes).sum(), mismatches })
}
