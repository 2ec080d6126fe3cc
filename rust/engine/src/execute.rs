//! Running a plan: open and validate the source, lay out every output, reserve and fill the
//! shard files in parallel (slicing and quantizing straight from the source mmap), then
//! assemble each output folder in a hidden temporary directory and rename it into place. Any
//! failure removes everything this run created.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;
use serde_json::json;

use crate::checkpoint::{Checkpoint, INDEX_NAME};
use crate::error::{Error, Result};
use crate::io::{self, Moved};
use crate::layout::{self, Layout, OutputLayout};
use crate::plan::{resolve, FileSpec, Op, OutputSpec, Plan, QuantSpec, Resolved};
use crate::quant::{self, RowBuf, Stats};

/// Contiguous copies are split into pieces of this size so that big tensors spread over threads.
const CONTIG_ITEM: u64 = 64 << 20;
/// Strided and quantizing work items cover about this many source bytes (unless the plan
/// says otherwise).
pub const STRIDED_ITEM: u64 = 16 << 20;

/// Shared with the caller, who polls it to draw a progress bar.
#[derive(Default)]
pub struct Progress {
    pub done: AtomicU64,
    pub total: AtomicU64,
}

#[derive(Serialize, Debug)]
pub struct ShardReport {
    pub name: String,
    pub bytes: u64,
    pub tensors: usize,
}

#[derive(Serialize, Debug)]
pub struct OutputReport {
    pub dir: PathBuf,
    pub shards: Vec<ShardReport>,
    pub tensors: usize,
    pub tensor_bytes: u64,
    pub file_bytes: u64,
}

/// One quantized tensor: sizes and the error of `q * scale` against the (sliced) source.
#[derive(Serialize, Debug)]
pub struct QuantReport {
    pub name: String,
    pub scale_name: String,
    pub shape_name: String,
    pub source: String,
    pub source_dtype: &'static str,
    pub shape: Vec<u64>,
    pub bits: u32,
    pub group_size: u64,
    /// The sliced tensor in its source dtype.
    pub bytes_before: u64,
    /// Packed words + scales + shape.
    pub bytes_after: u64,
    pub weight_rms: f64,
    pub rms_error: f64,
    pub max_abs_error: f64,
    /// Both errors divided by the weight's RMS (0 for an all-zero weight).
    pub rel_rms_error: f64,
    pub rel_max_abs_error: f64,
}

#[derive(Serialize, Debug)]
pub struct Report {
    pub outputs: Vec<OutputReport>,
    /// Every distinct quantized tensor, in layout order.
    pub quantized: Vec<QuantReport>,
    /// Bytes of shard files this run wrote (headers included), each shared piece counted once.
    pub bytes_written: u64,
    pub bytes_kernel_copied: u64,
    pub bytes_gathered: u64,
    pub distinct_tensors: usize,
    pub shard_files_written: usize,
    pub seconds: f64,
    pub threads: usize,
}

pub fn execute(plan: &Plan, progress: &Progress, cancel: &AtomicBool) -> Result<Report> {
    let start = Instant::now();
    if plan.outputs.is_empty() {
        return Err(Error::Plan("the plan has no outputs".into()));
    }
    let ck = Checkpoint::open(&plan.source)?;
    preflight(plan, &ck)?;
    let per_output = plan
        .outputs
        .iter()
        .map(|o| o.tensors.iter().map(|t| resolve(&ck, t)).collect::<Result<Vec<_>>>())
        .collect::<Result<Vec<_>>>()?;
    let layout = layout::build(per_output, plan.max_shard_size, plan.dedupe, &plan.metadata)?;
    for (spec, ol) in plan.outputs.iter().zip(&layout.outputs) {
        check_file_names(spec, ol)?;
    }
    let threads = plan.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| Error::Internal(format!("thread pool: {e}")))?;

    let mut cleanup = Cleanup::default();
    let staging_parent = parent_dir(&plan.outputs[0].dir)?;
    let staging = unique_path(&staging_parent, ".gslice-staging");
    fs::create_dir(&staging).map_err(|e| Error::io(&staging, "create", e))?;
    cleanup.0.push(staging.clone());

    let total: u64 = layout.pieces.iter().map(|p| p.size).sum();
    progress.total.store(total, Ordering::Relaxed);
    let files = create_pieces(&layout, &staging, progress).map_err(|e| match e {
        Error::Io { err, .. } if err.raw_os_error() == Some(libc::ENOSPC) => Error::NoSpace { dir: staging_parent.clone(), need: total },
        e => e,
    })?;
    let (moved, stats) = pool.install(|| write_tensors(&layout, &ck, &files, plan, progress, cancel))?;
    pool.install(|| {
        files.par_iter().enumerate().try_for_each(|(i, f)| f.sync_all().map_err(|e| Error::io(&piece_path(&staging, i), "flush", e)))
    })?;
    drop(files);

    let mut outputs = Vec::with_capacity(plan.outputs.len());
    for (spec, ol) in plan.outputs.iter().zip(&layout.outputs) {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        outputs.push(assemble_output(spec, ol, &layout, &staging, &mut cleanup)?);
    }
    let _ = fs::remove_dir_all(&staging);
    cleanup.0.clear();
    Ok(Report {
        outputs,
        quantized: quant_reports(&layout, &stats),
        bytes_written: total,
        bytes_kernel_copied: moved.kernel,
        bytes_gathered: moved.buffered,
        distinct_tensors: layout.tensors.len(),
        shard_files_written: layout.pieces.len(),
        seconds: start.elapsed().as_secs_f64(),
        threads,
    })
}

/// Refuses outputs that exist (unless allowed), repeat each other, or would replace the source.
fn preflight(plan: &Plan, ck: &Checkpoint) -> Result<()> {
    let source = fs::canonicalize(&ck.root).map_err(|e| Error::io(&ck.root, "resolve", e))?;
    let mut seen = std::collections::HashSet::new();
    for o in &plan.outputs {
        if o.dir.file_name().is_none() {
            return Err(Error::Plan(format!("output path {} has no folder name", o.dir.display())));
        }
        if !seen.insert(o.dir.clone()) {
            return Err(Error::Plan(format!("output path {} is used twice", o.dir.display())));
        }
        if o.dir.symlink_metadata().is_err() {
            continue;
        }
        if !o.overwrite {
            return Err(Error::Exists(o.dir.clone()));
        }
        let dest = fs::canonicalize(&o.dir).map_err(|e| Error::io(&o.dir, "resolve", e))?;
        if source.starts_with(&dest) {
            return Err(Error::Plan(format!(
                "output path {} holds the source checkpoint; refusing to replace it",
                o.dir.display()
            )));
        }
    }
    Ok(())
}

fn check_file_names(spec: &OutputSpec, ol: &OutputLayout) -> Result<()> {
    let mut names: std::collections::HashSet<&str> = ol.shards.iter().map(|s| s.0.as_str()).collect();
    names.insert(INDEX_NAME);
    for f in &spec.files {
        let n = f.name();
        if n.is_empty() || n.contains('/') || n == "." || n == ".." {
            return Err(Error::Plan(format!("extra file name {n:?} is not a plain file name")));
        }
        if !names.insert(n) {
            return Err(Error::Plan(format!("extra file {n} would overwrite another file of {}", spec.dir.display())));
        }
    }
    Ok(())
}

fn create_pieces(layout: &Layout, staging: &Path, progress: &Progress) -> Result<Vec<File>> {
    layout
        .pieces
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let path = piece_path(staging, i);
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| Error::io(&path, "create", e))?;
            io::reserve(&f, p.size).map_err(|e| Error::io(&path, "reserve space for", e))?;
            f.write_all_at(&p.header, 0).map_err(|e| Error::io(&path, "write", e))?;
            progress.done.fetch_add(p.header.len() as u64, Ordering::Relaxed);
            for (off, bytes) in &p.literals {
                f.write_all_at(bytes, *off).map_err(|e| Error::io(&path, "write", e))?;
                progress.done.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            }
            Ok(f)
        })
        .collect()
}

fn piece_path(staging: &Path, i: usize) -> PathBuf {
    staging.join(format!("piece-{i:05}.safetensors"))
}

/// One unit of parallel work: a contiguous byte range, a band of rows whose columns are
/// gathered, or a band of rows to quantize (`dst_off` is then the tensor's first part).
enum Item {
    Contig { piece: usize, t: usize, src_off: u64, dst_off: u64, len: u64 },
    Rows { piece: usize, t: usize, rows: (u64, u64), dst_off: u64 },
    Quant { piece: usize, t: usize, rows: (u64, u64), dst_off: u64 },
}

fn work_items(layout: &Layout, band_bytes: u64) -> Vec<Item> {
    let mut items = Vec::new();
    for (p, piece) in layout.pieces.iter().enumerate() {
        for (&t, &dst) in piece.tensors.iter().zip(&piece.offsets) {
            push_items(&mut items, p, t, &layout.tensors[t], dst, band_bytes);
        }
    }
    items
}

fn push_items(items: &mut Vec<Item>, piece: usize, t: usize, r: &Resolved, mut dst: u64, band_bytes: u64) {
    let contig = |items: &mut Vec<Item>, src_off: u64, len: u64, dst: u64| {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(CONTIG_ITEM);
            items.push(Item::Contig { piece, t, src_off: src_off + done, dst_off: dst + done, len: n });
            done += n;
        }
    };
    if r.quant.is_some() {
        let (rows, cols) = (r.shape[0], r.shape[1]);
        let band = (band_bytes / (cols * r.dtype.size()).max(1)).max(1);
        let mut r0 = 0;
        while r0 < rows && cols > 0 {
            let r1 = (r0 + band).min(rows);
            items.push(Item::Quant { piece, t, rows: (r0, r1), dst_off: dst });
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
            let src_row = *r.src.shape.last().expect("cols ops have 2+ dims") * r.dtype.size();
            let out_row = *r.shape.last().expect("same rank") * r.dtype.size();
            let rows: u64 = r.shape[..r.shape.len() - 1].iter().product();
            if src_row == 0 || out_row == 0 {
                return;
            }
            let band = (band_bytes / src_row).max(1);
            let mut r0 = 0;
            while r0 < rows {
                let r1 = (r0 + band).min(rows);
                items.push(Item::Rows { piece, t, rows: (r0, r1), dst_off: dst + r0 * out_row });
                r0 = r1;
            }
        }
    }
}

fn row_bytes(r: &Resolved) -> u64 {
    let rows = r.src.shape[0];
    if rows == 0 { 0 } else { r.src.len / rows }
}

/// Returns how bytes moved, and the quantization statistics of every tensor (zero for the
/// tensors that are not quantized).
fn write_tensors(layout: &Layout, ck: &Checkpoint, files: &[File], plan: &Plan, progress: &Progress, cancel: &AtomicBool) -> Result<(Moved, Vec<Stats>)> {
    let items = work_items(layout, plan.band_bytes.unwrap_or(STRIDED_ITEM).max(1));
    let stats: Vec<Mutex<Stats>> = layout.tensors.iter().map(|_| Mutex::default()).collect();
    let moved = items
        .par_iter()
        .map(|item| {
            if cancel.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            let (moved, n) = run_item(item, layout, ck, files, &stats)?;
            progress.done.fetch_add(n, Ordering::Relaxed);
            Ok(moved)
        })
        .try_reduce(Moved::default, |mut a, b| {
            a.add(b);
            Ok(a)
        })?;
    let stats = stats.into_iter().map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner())).collect();
    Ok((moved, stats))
}

/// Returns how the bytes moved and how many output bytes were produced.
fn run_item(item: &Item, layout: &Layout, ck: &Checkpoint, files: &[File], stats: &[Mutex<Stats>]) -> Result<(Moved, u64)> {
    match *item {
        Item::Quant { piece, t, rows, dst_off } => {
            let (st, n) = quantize_band(&layout.tensors[t], ck, rows, &files[piece], dst_off)
                .map_err(|e| match e {
                    QuantFailure::Io(e) => write_error(layout, t, e),
                    QuantFailure::NonFinite(row) => Error::format(
                        &ck.shards[layout.tensors[t].shard].path,
                        format!(
                            "tensor {}: row {row} of {} holds NaN or infinity, which cannot be quantized",
                            layout.tensors[t].src.name, layout.tensors[t].name
                        ),
                    ),
                })?;
            stats[t].lock().unwrap_or_else(|p| p.into_inner()).merge(&st);
            Ok((Moved { kernel: 0, buffered: n }, n))
        }
        Item::Contig { piece, t, src_off, dst_off, len } => {
            let shard = &ck.shards[layout.tensors[t].shard];
            let moved = io::copy_range(&shard.file, &shard.map, src_off, &files[piece], dst_off, len)
                .map_err(|e| write_error(layout, t, e))?;
            Ok((moved, len))
        }
        Item::Rows { piece, t, rows: (r0, r1), dst_off } => {
            let r = &layout.tensors[t];
            let shard = &ck.shards[r.shard];
            let Op::Cols { ranges } = &r.op else { unreachable!("row bands are made for cols ops") };
            let es = r.dtype.size();
            let src_row = r.src.shape.last().copied().unwrap_or(0) * es;
            let base = r.src.start;
            let segments = (r0..r1).flat_map(|row| {
                ranges.iter().map(move |&(b, e)| (base + row * src_row + b * es, (e - b) * es))
            });
            let moved = io::gather(&shard.file, &shard.map, segments, &files[piece], dst_off)
                .map_err(|e| write_error(layout, t, e))?;
            io::release(&shard.map, base + r0 * src_row, (r1 - r0) * src_row);
            Ok((moved, moved.kernel + moved.buffered))
        }
    }
}

thread_local! {
    /// One row as f32, its integer values, and the band's packed words and scales.
    static QBUF: RefCell<(RowBuf, Vec<u8>, Vec<u8>)> = RefCell::default();
}

enum QuantFailure {
    Io(std::io::Error),
    /// Output row index.
    NonFinite(u64),
}

/// Quantizes output rows [r0, r1) of a quantized tensor straight from the source map: each row
/// is read through the tensor's operation into a row of f32, then quantized and packed into
/// the thread's band buffers, which are written with one `pwrite` per part.
fn quantize_band(r: &Resolved, ck: &Checkpoint, (r0, r1): (u64, u64), dst: &File, base: u64) -> std::result::Result<(Stats, u64), QuantFailure> {
    let q: &QuantSpec = r.quant.as_ref().expect("quant items are made for quantized tensors");
    let scheme = q.scheme();
    let shard = &ck.shards[r.shard];
    let map = &shard.map[..];
    let es = r.dtype.size();
    let (rows, cols) = (r.shape[0], r.shape[1]);
    let src_row = r.src.shape[1] * es;
    let (words_row, scales_row) = (scheme.words(cols) * 4, scheme.groups(cols) * 2);
    QBUF.with(|cell| {
        let (row, words, scales) = &mut *cell.borrow_mut();
        words.clear();
        scales.clear();
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
            quant::quantize_row(row, scheme, words, scales, &mut row_st);
            if !row_st.finite() {
                return Err(QuantFailure::NonFinite(out_row));
            }
            st.merge(&row_st);
        }
        dst.write_all_at(words, base + r0 * words_row).map_err(QuantFailure::Io)?;
        dst.write_all_at(scales, base + rows * words_row + r0 * scales_row).map_err(QuantFailure::Io)?;
        release_source_rows(r, &shard.map, (r0, r1));
        Ok((st, (words.len() + scales.len()) as u64))
    })
}

/// The source row that output row `k` of a rows operation reads.
fn source_row(ranges: &[(u64, u64)], mut k: u64) -> u64 {
    for &(b, e) in ranges {
        if k < e - b {
            return b + k;
        }
        k -= e - b;
    }
    unreachable!("output rows are within the ranges' total")
}

fn release_source_rows(r: &Resolved, map: &memmap2::Mmap, (r0, r1): (u64, u64)) {
    let src_row = r.src.shape[1] * r.dtype.size();
    match &r.op {
        Op::Rows { ranges } => {
            // Bands are short compared with blocks, so releasing row by row is cheap enough.
            for k in r0..r1 {
                io::release(map, r.src.start + source_row(ranges, k) * src_row, src_row);
            }
        }
        _ => io::release(map, r.src.start + r0 * src_row, (r1 - r0) * src_row),
    }
}

fn quant_reports(layout: &Layout, stats: &[Stats]) -> Vec<QuantReport> {
    let rel = |a: f64, rms: f64| if rms > 0.0 { a / rms } else { 0.0 };
    layout
        .tensors
        .iter()
        .zip(stats)
        .filter_map(|(r, st)| {
            let q = r.quant.as_ref()?;
            let (rms, rms_err) = (st.rms(), st.rms_err());
            Some(QuantReport {
                name: r.name.clone(),
                scale_name: q.scale_name.clone(),
                shape_name: q.shape_name.clone(),
                source: r.src.name.clone(),
                source_dtype: r.dtype.name(),
                shape: r.shape.clone(),
                bits: q.bits,
                group_size: q.group_size,
                bytes_before: r.shape.iter().product::<u64>() * r.dtype.size(),
                bytes_after: r.nbytes,
                weight_rms: rms,
                rms_error: rms_err,
                max_abs_error: st.max_abs_err,
                rel_rms_error: rel(rms_err, rms),
                rel_max_abs_error: rel(st.max_abs_err, rms),
            })
        })
        .collect()
}

fn write_error(layout: &Layout, t: usize, e: std::io::Error) -> Error {
    Error::Io {
        path: PathBuf::from(&layout.tensors[t].name),
        action: "write tensor",
        err: e,
    }
}

fn assemble_output(spec: &OutputSpec, ol: &OutputLayout, layout: &Layout, staging: &Path, cleanup: &mut Cleanup) -> Result<OutputReport> {
    let parent = parent_dir(&spec.dir)?;
    let name = spec.dir.file_name().expect("checked in preflight").to_string_lossy().into_owned();
    let tmp = unique_path(&parent, &format!(".{name}.gslice-partial"));
    fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, "create", e))?;
    cleanup.0.push(tmp.clone());

    let mut shards = Vec::with_capacity(ol.shards.len());
    for (file, p) in &ol.shards {
        link_or_copy(&piece_path(staging, *p), &tmp.join(file))?;
        let piece = &layout.pieces[*p];
        shards.push(ShardReport { name: file.clone(), bytes: piece.size, tensors: piece.entries });
    }
    if ol.shards.len() > 1 {
        let index = json!({"metadata": {"total_size": ol.total_size}, "weight_map": ol.weight_map});
        let text = serde_json::to_string_pretty(&index).map_err(|e| Error::Internal(e.to_string()))? + "\n";
        write_synced(&tmp.join(INDEX_NAME), text.as_bytes())?;
    }
    for f in &spec.files {
        let dest = tmp.join(f.name());
        match f {
            FileSpec::Text { text, .. } => write_synced(&dest, text.as_bytes())?,
            FileSpec::Copy { copy_from, .. } => {
                let bytes = fs::read(copy_from).map_err(|e| Error::io(copy_from, "read", e))?;
                write_synced(&dest, &bytes)?;
            }
        }
    }
    sync_dir(&tmp)?;
    commit(&tmp, &spec.dir, spec.overwrite)?;
    cleanup.0.retain(|p| p != &tmp);
    let file_bytes = shards.iter().map(|s| s.bytes).sum();
    Ok(OutputReport {
        dir: spec.dir.clone(),
        tensors: ol.weight_map.len(),
        tensor_bytes: ol.total_size,
        file_bytes,
        shards,
    })
}

fn link_or_copy(from: &Path, to: &Path) -> Result<()> {
    if fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    // Another filesystem, or links not allowed: std's copy uses copy_file_range (a reflink
    // where the filesystem can) before falling back to read/write.
    fs::copy(from, to).map_err(|e| Error::io(to, "copy shard to", e))?;
    File::open(to).and_then(|f| f.sync_all()).map_err(|e| Error::io(to, "flush", e))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let f = File::create(path).map_err(|e| Error::io(path, "create", e))?;
    f.write_all_at(bytes, 0).map_err(|e| Error::io(path, "write", e))?;
    f.sync_all().map_err(|e| Error::io(path, "flush", e))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|f| f.sync_all()).map_err(|e| Error::io(dir, "flush", e))
}

/// Renames the finished folder into place; an existing one (allowed by `overwrite`) is moved
/// aside first and deleted only once the new one is in place.
fn commit(tmp: &Path, dest: &Path, overwrite: bool) -> Result<()> {
    let parent = parent_dir(dest)?;
    if dest.symlink_metadata().is_ok() {
        if !overwrite {
            return Err(Error::Exists(dest.to_path_buf()));
        }
        let name = dest.file_name().expect("checked").to_string_lossy().into_owned();
        let old = unique_path(&parent, &format!(".{name}.gslice-old"));
        fs::rename(dest, &old).map_err(|e| Error::io(dest, "move aside", e))?;
        if let Err(e) = fs::rename(tmp, dest) {
            let _ = fs::rename(&old, dest);
            return Err(Error::io(dest, "rename into", e));
        }
        remove_any(&old);
    } else {
        fs::rename(tmp, dest).map_err(|e| Error::io(dest, "rename into", e))?;
    }
    sync_dir(&parent)
}

fn remove_any(path: &Path) {
    if path.is_dir() {
        let _ = fs::remove_dir_all(path);
    } else {
        let _ = fs::remove_file(path);
    }
}

/// The folder an output will live in, created if needed (like `mkdir -p`).
fn parent_dir(dest: &Path) -> Result<PathBuf> {
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, "create", e))?;
    Ok(parent)
}

fn unique_path(parent: &Path, prefix: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    loop {
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = parent.join(format!("{prefix}-{}-{n}", std::process::id()));
        if p.symlink_metadata().is_err() {
            return p;
        }
    }
}

/// Removes what a failed run created. Runs on early returns and on unwinding alike.
#[derive(Default)]
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in self.0.drain(..).rev() {
            let _ = fs::remove_dir_all(&p);
        }
    }
}
