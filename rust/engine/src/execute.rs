//! Running a plan: open and validate the source, lay out every output, reserve the shard
//! files, then write every piece in one pass (in parallel, slicing and quantizing straight from
//! the source mmap), each flushed and hashed as it completes; an output is assembled and renamed
//! into place as soon as its last piece is done (see `assemble`). An interrupted run therefore
//! leaves whole outputs or none; any failure removes the staging and partial folders.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use memmap2::Mmap;

use crate::assemble::{assemble_output, describe_output, parent_dir, unique_path, Cleanup, StagedCopies};
use crate::checkpoint::{Checkpoint, INDEX_NAME};
use crate::encode;
use crate::error::{Error, Result};
use crate::hash_cursor::HashCursor;
use crate::io::{self, IoPath, Moved};
use crate::items::{col_segments, push_items, src_row_bytes, Item, STRIDED_ITEM};
use crate::layout::{self, Layout, OutputLayout};
use crate::ownership::check_replaceable;
use crate::plan::{resolve, Container, OutputSpec, Plan};
use crate::qband::{self, band_offsets};
use crate::quant::Stats;
pub use crate::report::{FileReport, OutputReport, Progress, QuantReport, Report, ShardReport};
use crate::report::quant_reports;


pub fn execute(plan: &Plan, progress: &Progress, cancel: &AtomicBool) -> Result<Report> {
    let start = Instant::now();
    let io_path = IoPath::choose(plan.portable_io);
    let _io = io_path.enter();
    if plan.outputs.is_empty() {
        return Err(Error::Plan("the plan has no outputs".into()));
    }
    let ck = Checkpoint::open(&plan.source)?;
    preflight(plan, &ck)?;
    let per_output = plan
        .outputs
        .iter()
        .map(|o| o.tensors.iter().map(|t| resolve(&ck, t, o.container)).collect::<Result<Vec<_>>>())
        .collect::<Result<Vec<_>>>()?;
    let layout = layout::build(per_output, &plan.outputs, plan.max_shard_size, plan.dedupe, &plan.metadata)?;
    for (spec, ol) in plan.outputs.iter().zip(&layout.outputs) {
        check_file_names(spec, ol)?;
    }
    let threads = plan.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let pieces_total: u64 = layout.pieces.iter().map(|p| p.size).sum();
    if plan.dry_run {
        let outputs = plan.outputs.iter().zip(&layout.outputs).map(|(s, ol)| describe_output(s, ol, &layout)).collect::<Result<_>>()?;
        return Ok(report(outputs, &layout, Moved::default(), 0, &[], start, threads, true));
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .start_handler(move |_| io_path.set_for_thread())
        .build()
        .map_err(|e| Error::Internal(format!("thread pool: {e}")))?;

    let cleanup = Mutex::new(Cleanup::default());
    let staging_parent = parent_dir(&plan.outputs[0].dir)?;
    // The fast path reserves every piece whole (a full disk fails there, before any output is
    // written); the portable one can only set sizes, so it compares with the free space first.
    if io_path == IoPath::Portable && io::free_space(&staging_parent).is_some_and(|free| free < pieces_total) {
        return Err(Error::NoSpace { dir: staging_parent, need: pieces_total });
    }
    let staging = unique_path(&staging_parent, ".gslice-staging");
    fs::create_dir(&staging).map_err(|e| Error::io(&staging, "create", e))?;
    lock(&cleanup).0.push(staging.clone());

    let hashing = plan.outputs.iter().any(|o| o.manifest.is_some());
    // The bar counts bytes written; hashing follows the writes closely and is not counted.
    progress.total.store(pieces_total, Ordering::Relaxed);
    // Every piece is reserved up front, so a full disk fails before any output is written.
    let files = create_pieces(&layout, &staging, progress).map_err(|e| match e {
        Error::Io { err, .. } if io::is_disk_full(&err) => Error::NoSpace { dir: staging_parent.clone(), need: pieces_total },
        e => e,
    })?;
    let band = plan.band_bytes.unwrap_or(STRIDED_ITEM).max(1);
    let stats: Vec<Mutex<Stats>> = layout.tensors.iter().map(|_| Mutex::default()).collect();

    // Pieces in the order the outputs first need them, so that outputs complete in plan order.
    let mut order = Vec::with_capacity(layout.pieces.len());
    let mut outputs_of: Vec<Vec<usize>> = vec![Vec::new(); layout.pieces.len()];
    for (o, ol) in layout.outputs.iter().enumerate() {
        for &(_, p) in &ol.shards {
            if outputs_of[p].is_empty() {
                order.push(p);
            }
            outputs_of[p].push(o);
        }
    }
    let waiting: Vec<AtomicUsize> = layout.outputs.iter().map(|ol| AtomicUsize::new(ol.shards.len())).collect();
    let hashes: Mutex<Vec<Option<String>>> = Mutex::new(vec![None; layout.pieces.len()]);
    let hashed = AtomicU64::new(0);
    let copies = Mutex::new(StagedCopies::default());
    let completed: Mutex<Vec<(usize, OutputReport, Instant)>> = Mutex::new(Vec::new());
    // A finished piece (flushed, hashed) may be the last one an output waited for: the thread
    // that finished it assembles that output while the others go on writing.
    let piece_done = |p: usize, digest: Option<String>| -> Result<()> {
        if let Some(h) = digest {
            hashed.fetch_add(layout.pieces[p].size, Ordering::Relaxed);
            lock(&hashes)[p] = Some(h);
        }
        for &o in &outputs_of[p] {
            if waiting[o].fetch_sub(1, Ordering::AcqRel) != 1 {
                continue;
            }
            if cancel.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            let known = lock(&hashes).clone();
            let out = assemble_output(&plan.outputs[o], &layout.outputs[o], &layout, &staging, &known, &copies, &cleanup, &ck.root)?;
            lock(&completed).push((o, out, Instant::now()));
        }
        Ok(())
    };
    let cursor_hashed = AtomicU64::new(0);
    let fin = Finish { files: &files, staging: &staging, hashing, progress, hashed: &cursor_hashed, cancel };
    let moved = pool.install(|| write_pieces(&order, &layout, &ck, &fin, band, &stats, &piece_done))?;
    drop(files);
    let _ = fs::remove_dir_all(&staging);
    let mut cleanup = cleanup.into_inner().unwrap_or_else(|e| e.into_inner());
    cleanup.0.clear();
    let outputs = in_plan_order(completed.into_inner().unwrap_or_else(|e| e.into_inner()), start);
    let stats: Vec<Stats> = stats.into_iter().map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner())).collect();
    Ok(report(outputs, &layout, moved, hashed.into_inner(), &stats, start, threads, false))
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Output reports in plan order, each with the time from the previous completion (or the
/// start of the run) to its own.
fn in_plan_order(mut done: Vec<(usize, OutputReport, Instant)>, start: Instant) -> Vec<OutputReport> {
    done.sort_by_key(|d| d.2);
    let mut since = start;
    for (_, out, at) in done.iter_mut() {
        out.seconds = at.duration_since(since).as_secs_f64();
        since = *at;
    }
    done.sort_by_key(|d| d.0);
    done.into_iter().map(|d| d.1).collect()
}

/// `stats` holds every tensor's quantization statistics (empty in a dry run, which quantizes
/// nothing).
#[allow(clippy::too_many_arguments)]
fn report(outputs: Vec<OutputReport>, layout: &Layout, moved: Moved, hashed: u64, stats: &[Stats], start: Instant, threads: usize, dry_run: bool) -> Report {
    Report {
        outputs,
        quantized: quant_reports(layout, stats),
        bytes_written: layout.pieces.iter().map(|p| p.size).sum(),
        bytes_kernel_copied: moved.kernel,
        bytes_gathered: moved.buffered,
        bytes_hashed: hashed,
        distinct_tensors: layout.tensors.len(),
        shard_files_written: layout.pieces.len(),
        seconds: start.elapsed().as_secs_f64(),
        threads,
        dry_run,
        io: io::current(),
    }
}

/// Refuses outputs that repeat each other, or that exist and are not gslice's to replace.
fn preflight(plan: &Plan, ck: &Checkpoint) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for o in &plan.outputs {
        if o.dir.file_name().is_none() {
            return Err(Error::Plan(format!("output path {} has no folder name", o.dir.display())));
        }
        if !seen.insert(o.dir.clone()) {
            return Err(Error::Plan(format!("output path {} is used twice", o.dir.display())));
        }
        check_replaceable(&o.dir, o.overwrite, o.manifest.as_ref().map(|m| m.name.as_str()), &ck.root)?;
    }
    Ok(())
}

fn check_file_names(spec: &OutputSpec, ol: &OutputLayout) -> Result<()> {
    if ol.single_file {
        if !spec.files.is_empty() {
            return Err(Error::Plan(format!("{} is a single file: it cannot hold extra files", spec.dir.display())));
        }
        if spec.index.always || !spec.index.metadata.is_empty() {
            return Err(Error::Plan(format!("{} is a single file: it has no index", spec.dir.display())));
        }
        return Ok(());
    }
    if spec.container == Container::Safetensors && (!spec.metadata.is_empty() || spec.alignment.is_some()) {
        return Err(Error::Plan("metadata and alignment apply to GGUF outputs only".into()));
    }
    if spec.index.metadata.contains_key("total_size") {
        return Err(Error::Plan("index metadata must not contain \"total_size\": the engine writes it".into()));
    }
    let mut names: std::collections::HashSet<&str> = ol.shards.iter().map(|s| s.0.as_str()).collect();
    names.insert(INDEX_NAME);
    let extra = spec.files.iter().map(|f| f.name()).chain(spec.manifest.as_ref().map(|m| m.name.as_str()));
    for n in extra {
        if n.is_empty() || n.contains(['/', '\\']) || n == "." || n == ".." {
            return Err(Error::Plan(format!("extra file name {n:?} is not a plain file name")));
        }
        if !names.insert(n) {
            return Err(Error::Plan(format!("extra file {n} would overwrite another file of {}", spec.dir.display())));
        }
    }
    if spec.manifest.as_ref().is_some_and(|m| m.fields.contains_key("files")) {
        return Err(Error::Plan("manifest fields must not contain \"files\": the engine writes it".into()));
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
            io::write_all_at(&f, &p.header, 0).map_err(|e| Error::io(&path, "write", e))?;
            progress.done.fetch_add(p.header.len() as u64, Ordering::Relaxed);
            for (off, bytes) in &p.literals {
                io::write_all_at(&f, bytes, *off).map_err(|e| Error::io(&path, "write", e))?;
                progress.done.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            }
            Ok(f)
        })
        .collect()
}

pub(crate) fn piece_path(staging: &Path, i: usize) -> PathBuf {
    staging.join(format!("piece-{i:05}.safetensors"))
}

/// What happens to a piece once its last byte is written: it is flushed right away, by the
/// thread that finished it, while the other threads go on writing; with manifests, its SHA-256
/// is computed as it is written (see `hash_cursor`).
struct Finish<'a> {
    files: &'a [File],
    staging: &'a Path,
    hashing: bool,
    progress: &'a Progress,
    /// Bytes hashed so far (kept apart from `progress`, which counts bytes written).
    hashed: &'a AtomicU64,
    cancel: &'a AtomicBool,
}

/// Per piece: the cursor following its written prefix, and a map to hash it through.
struct PieceState {
    cursor: HashCursor,
    map: Option<Mmap>,
}

/// Fills the data sections of `pieces` (headers are already written) and finishes each piece
/// as soon as it is complete: flushes it and calls `piece_done(piece, digest)` (the digest when
/// hashing). Returns how bytes moved; quantization statistics accumulate in `stats`.
///
/// Items are handed out in file order to every thread of the pool (not split into halves, as a
/// parallel iterator would), so each file fills from its start and its cursor follows closely.
fn write_pieces(
    pieces: &[usize],
    layout: &Layout,
    ck: &Checkpoint,
    fin: &Finish,
    band: u64,
    stats: &[Mutex<Stats>],
    piece_done: &(dyn Fn(usize, Option<String>) -> Result<()> + Sync),
) -> Result<Moved> {
    let mut items = Vec::new();
    let mut states: Vec<Option<PieceState>> = layout.pieces.iter().map(|_| None).collect();
    for &p in pieces {
        let piece = &layout.pieces[p];
        for (&t, &dst) in piece.tensors.iter().zip(&piece.offsets) {
            push_items(&mut items, p, t, &layout.tensors[t], dst, band);
        }
        states[p] = Some(piece_state(p, layout, fin)?);
    }
    let moved = Mutex::new(Moved::default());
    let completed = |p: usize, ranges: &[(u64, u64)]| -> Result<()> {
        let st = states[p].as_ref().expect("state of a piece being written");
        let Some(done) = st.cursor.written(ranges, &fin.files[p], st.map.as_ref(), fin.hashed) else {
            return Ok(());
        };
        let path = piece_path(fin.staging, p);
        fin.files[p].sync_all().map_err(|e| Error::io(&path, "flush", e))?;
        io::drop_cached(&fin.files[p], 0, layout.pieces[p].size);
        piece_done(p, done.sha256)
    };
    // What is written before any item runs: the header and the bytes known at planning time.
    for &p in pieces {
        let piece = &layout.pieces[p];
        let mut known = vec![(0, piece.header.len() as u64)];
        known.extend(piece.literals.iter().map(|(off, bytes)| (*off, off + bytes.len() as u64)));
        known.extend(piece.gaps.iter().copied());
        completed(p, &known)?;
    }
    in_file_order(items.len(), fin.cancel, |i| {
        let item = &items[i];
        let (m, ranges) = run_item(item, layout, ck, fin.files, stats)?;
        let n: u64 = ranges.iter().map(|(b, e)| e - b).sum();
        fin.progress.done.fetch_add(n, Ordering::Relaxed);
        lock(&moved).add(m);
        completed(item.file(), &ranges)
    })?;
    Ok(moved.into_inner().unwrap_or_else(|e| e.into_inner()))
}

fn piece_state(p: usize, layout: &Layout, fin: &Finish) -> Result<PieceState> {
    let map = if fin.hashing {
        let path = piece_path(fin.staging, p);
        // SAFETY: a read-only view of a file this run created and sized; the page cache keeps
        // it coherent with our own writes.
        Some(unsafe { Mmap::map(&fin.files[p]) }.map_err(|e| Error::io(&path, "memory-map", e))?)
    } else {
        None
    };
    Ok(PieceState { cursor: HashCursor::new(layout.pieces[p].size, fin.hashing), map })
}

/// Runs `f(0..n)` on every thread of the current pool, each taking the next index in turn;
/// the first error stops the others. Cancelled only if a cancel left items unrun: once every
/// item has run, the work is done (and its outputs may already be in place).
fn in_file_order(n: usize, cancel: &AtomicBool, f: impl Fn(usize) -> Result<()> + Sync) -> Result<()> {
    let next = AtomicUsize::new(0);
    let failed: Mutex<Option<Error>> = Mutex::new(None);
    let stop = AtomicBool::new(false);
    rayon::scope(|s| {
        for _ in 0..rayon::current_num_threads() {
            s.spawn(|_| loop {
                if stop.load(Ordering::Relaxed) || cancel.load(Ordering::Relaxed) {
                    return;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return;
                }
                if let Err(e) = f(i) {
                    failed.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                    stop.store(true, Ordering::Relaxed);
                }
            });
        }
    });
    if let Some(e) = failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    // Every item taken has run; a cancel that came after the last one was taken changes nothing.
    if cancel.load(Ordering::Relaxed) && next.load(Ordering::Relaxed) < n {
        return Err(Error::Cancelled);
    }
    Ok(())
}

/// Returns how the bytes moved and the output byte ranges the item completed.
fn run_item(item: &Item, layout: &Layout, ck: &Checkpoint, files: &[File], stats: &[Mutex<Stats>]) -> Result<(Moved, Vec<(u64, u64)>)> {
    match *item {
        Item::Quant { file, t, rows, dst_off } => {
            let r = &layout.tensors[t];
            let offsets = band_offsets(r, rows.0);
            let (st, ranges) = qband::quantize_band(r, ck, rows, |parts| {
                let f = &files[file];
                let mut ranges = Vec::with_capacity(parts.len());
                for (off, bytes) in offsets.iter().zip(parts) {
                    let at = dst_off + off;
                    io::write_all_at(f, bytes, at)?;
                    io::start_writeback(f, at, bytes.len() as u64);
                    ranges.push((at, at + bytes.len() as u64));
                }
                Ok(ranges)
            })
            .map_err(|e| qband::failure_error(r, ck, e, "write tensor"))?;
            stats[t].lock().unwrap_or_else(|p| p.into_inner()).merge(&st);
            let n = ranges.iter().map(|(b, e)| e - b).sum();
            Ok((Moved { kernel: 0, buffered: n }, ranges))
        }
        Item::Encode { file, t, rows, dst_off } => {
            let r = &layout.tensors[t];
            let n = encode::encode_band(r, ck, rows, |bytes| {
                let f = &files[file];
                io::write_all_at(f, bytes, dst_off)?;
                io::start_writeback(f, dst_off, bytes.len() as u64);
                Ok(bytes.len() as u64)
            })
            .map_err(|e| encode::failure_error(r, ck, e, "write tensor"))?;
            Ok((Moved { kernel: 0, buffered: n }, vec![(dst_off, dst_off + n)]))
        }
        Item::Contig { file, t, src_off, dst_off, len } => {
            let shard = &ck.shards[layout.tensors[t].shard];
            let moved = io::copy_range(&shard.file, &shard.map, src_off, &files[file], dst_off, len)
                .map_err(|e| write_error(layout, t, e))?;
            io::drop_cached(&shard.file, src_off, len);
            io::start_writeback(&files[file], dst_off, len);
            Ok((moved, vec![(dst_off, dst_off + len)]))
        }
        Item::Rows { file, t, rows, dst_off } => {
            let r = &layout.tensors[t];
            let shard = &ck.shards[r.shard];
            let moved = io::gather(&shard.file, &shard.map, col_segments(r, rows), &files[file], dst_off)
                .map_err(|e| write_error(layout, t, e))?;
            let src_row = src_row_bytes(r);
            let (span_at, span) = (r.src.start + rows.0 * src_row, (rows.1 - rows.0) * src_row);
            io::release(&shard.map, span_at, span);
            io::drop_cached(&shard.file, span_at, span);
            let n = moved.kernel + moved.buffered;
            io::start_writeback(&files[file], dst_off, n);
            Ok((moved, vec![(dst_off, dst_off + n)]))
        }
    }
}

fn write_error(layout: &Layout, t: usize, e: std::io::Error) -> Error {
    Error::Io {
        path: PathBuf::from(&layout.tensors[t].name),
        action: "write tensor",
        err: e,
    }
}

