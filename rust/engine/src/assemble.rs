//! Assembling an output folder: the shards it needs hard-linked from the staging folder (copied
//! where links are impossible), its index, config and side files, and last its manifest, all in
//! a hidden temporary folder that is flushed and renamed into place in one step. A single-file
//! output (GGUF) is its one piece: its manifest digest is filled in, then it is renamed into
//! place.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use serde_json::{json, Value};

use crate::checkpoint::INDEX_NAME;
use crate::error::{Error, Result};
use crate::execute::{lock, piece_path};
use crate::hash::{sha256_bytes, sha256_file};
use crate::io;
use crate::layout::{Layout, OutputLayout};
use crate::ownership::check_replaceable;
use crate::plan::{FileSpec, ManifestSpec, OutputSpec};
use crate::report::{FileReport, OutputReport, ShardReport};

fn shard_reports(ol: &OutputLayout, layout: &Layout) -> Vec<ShardReport> {
    ol.shards
        .iter()
        .map(|(file, p)| ShardReport {
            name: file.clone(),
            bytes: layout.pieces[*p].size,
            tensors: layout.pieces[*p].entries,
            piece: *p,
            shared_by: layout.outputs.iter().filter(|o| o.shards.iter().any(|s| s.1 == *p)).count(),
        })
        .collect()
}

fn index_text(spec: &OutputSpec, ol: &OutputLayout) -> Result<Option<String>> {
    if ol.shards.len() < 2 && !spec.index.always {
        return Ok(None);
    }
    let mut metadata = spec.index.metadata.clone();
    metadata.insert("total_size".into(), json!(ol.total_size));
    let index = json!({"metadata": metadata, "weight_map": ol.weight_map});
    Ok(Some(serde_json::to_string_pretty(&index).map_err(|e| Error::Internal(e.to_string()))? + "\n"))
}

/// The manifest: the caller's fields plus the size and hash of every other file.
fn manifest_text(m: &ManifestSpec, files: &[FileReport]) -> Result<String> {
    let mut listed = BTreeMap::new();
    for f in files {
        // A dry run has no hashes yet; a placeholder of the same length keeps the size exact.
        let sha = f.sha256.clone().unwrap_or_else(|| "0".repeat(64));
        listed.insert(f.name.clone(), json!({"size": f.bytes, "sha256": sha}));
    }
    let mut fields = m.fields.clone();
    fields.insert("files".into(), json!(listed));
    Ok(serde_json::to_string_pretty(&Value::Object(fields)).map_err(|e| Error::Internal(e.to_string()))? + "\n")
}

fn finish_report(spec: &OutputSpec, ol: &OutputLayout, shards: Vec<ShardReport>, files: Vec<FileReport>) -> OutputReport {
    OutputReport {
        dir: spec.dir.clone(),
        tensors: ol.weight_map.len(),
        tensor_bytes: ol.total_size,
        file_bytes: shards.iter().map(|s| s.bytes).sum(),
        shards,
        files,
        seconds: 0.0,
    }
}

/// What a dry run reports: every file the output would hold, with its size.
pub(crate) fn describe_output(spec: &OutputSpec, ol: &OutputLayout, layout: &Layout) -> Result<OutputReport> {
    let shards = shard_reports(ol, layout);
    if ol.single_file {
        let files = shards.iter().map(|s| FileReport { name: s.name.clone(), bytes: s.bytes, sha256: None }).collect();
        return Ok(finish_report(spec, ol, shards, files));
    }
    let mut files: Vec<FileReport> = shards.iter().map(|s| FileReport { name: s.name.clone(), bytes: s.bytes, sha256: None }).collect();
    if let Some(text) = index_text(spec, ol)? {
        files.push(FileReport { name: INDEX_NAME.into(), bytes: text.len() as u64, sha256: None });
    }
    for f in &spec.files {
        let bytes = match f {
            FileSpec::Text { text, .. } => text.len() as u64,
            FileSpec::Copy { copy_from, .. } => fs::metadata(copy_from).map_err(|e| Error::io(copy_from, "stat", e))?.len(),
        };
        files.push(FileReport { name: f.name().into(), bytes, sha256: None });
    }
    if let Some(m) = &spec.manifest {
        let bytes = manifest_text(m, &files)?.len() as u64;
        files.push(FileReport { name: m.name.clone(), bytes, sha256: None });
    }
    Ok(finish_report(spec, ol, shards, files))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn assemble_output(
    spec: &OutputSpec,
    ol: &OutputLayout,
    layout: &Layout,
    staging: &Path,
    hashes: &[Option<String>],
    copies: &Mutex<StagedCopies>,
    cleanup: &Mutex<Cleanup>,
    source: &Path,
) -> Result<OutputReport> {
    if ol.single_file {
        return assemble_file(spec, ol, layout, staging, hashes, source);
    }
    let parent = parent_dir(&spec.dir)?;
    let name = spec.dir.file_name().expect("checked in preflight").to_string_lossy().into_owned();
    let tmp = unique_path(&parent, &format!(".{name}.gslice-partial"));
    fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, "create", e))?;
    lock(cleanup).0.push(tmp.clone());

    let shards = shard_reports(ol, layout);
    let mut files = Vec::new();
    for s in &shards {
        link_or_copy(&piece_path(staging, s.piece), &tmp.join(&s.name))?;
        files.push(FileReport { name: s.name.clone(), bytes: s.bytes, sha256: hashes[s.piece].clone() });
    }
    let hashing = spec.manifest.is_some();
    let put = |files: &mut Vec<FileReport>, name: &str, bytes: &[u8]| -> Result<()> {
        write_synced(&tmp.join(name), bytes)?;
        let sha256 = hashing.then(|| sha256_bytes(bytes));
        files.push(FileReport { name: name.into(), bytes: bytes.len() as u64, sha256 });
        Ok(())
    };
    if let Some(text) = index_text(spec, ol)? {
        put(&mut files, INDEX_NAME, text.as_bytes())?;
    }
    for f in &spec.files {
        match f {
            FileSpec::Text { text, .. } => put(&mut files, f.name(), text.as_bytes())?,
            FileSpec::Copy { copy_from, .. } => {
                let mut copies = lock(copies);
                let staged = copies.get(copy_from, staging, hashing)?;
                link_or_copy(&staged.path, &tmp.join(f.name()))?;
                files.push(FileReport { name: f.name().into(), bytes: staged.bytes, sha256: staged.sha256.clone() });
            }
        }
    }
    if let Some(m) = &spec.manifest {
        // Written last, once every other file is in place and hashed.
        let text = manifest_text(m, &files)?;
        put(&mut files, &m.name, text.as_bytes())?;
    }
    sync_dir(&tmp)?;
    // The path may have changed since the run started: the same rule decides again.
    check_replaceable(&spec.dir, spec.overwrite, spec.manifest.as_ref().map(|m| m.name.as_str()), source)?;
    // From here the output is complete; once it is in place nothing may turn that into a failure.
    let previous = commit(&tmp, &spec.dir)?;
    lock(cleanup).0.retain(|p| p != &tmp);
    if let Some(old) = previous {
        // A failure to delete the previous output leaves a hidden folder named by this
        // process, which the next run into this folder reports and removes.
        let _ = fs::remove_dir_all(old);
    }
    Ok(finish_report(spec, ol, shards, files))
}

/// A single-file output: its piece, with the manifest digest written into its header (the hash
/// was taken with the digits still zero), flushed and renamed into place.
fn assemble_file(spec: &OutputSpec, ol: &OutputLayout, layout: &Layout, staging: &Path, hashes: &[Option<String>], source: &Path) -> Result<OutputReport> {
    let (name, p) = ol.shards[0].clone();
    let path = piece_path(staging, p);
    let digest = hashes[p].clone();
    if let (Some(at), Some(hex)) = (layout.pieces[p].digest_at, digest.as_ref()) {
        let f = fs::OpenOptions::new().write(true).open(&path).map_err(|e| Error::io(&path, "open", e))?;
        io::write_all_at(&f, hex.as_bytes(), at).map_err(|e| Error::io(&path, "write", e))?;
        f.sync_all().map_err(|e| Error::io(&path, "flush", e))?;
    }
    check_replaceable(&spec.dir, spec.overwrite, spec.manifest.as_ref().map(|m| m.name.as_str()), source)?;
    if let Some(old) = commit(&path, &spec.dir)? {
        let _ = fs::remove_file(old); // the previous file, swapped out (see assemble_output)
    }
    let shards = shard_reports(ol, layout);
    let files = vec![FileReport { name, bytes: layout.pieces[p].size, sha256: digest }];
    Ok(finish_report(spec, ol, shards, files))
}

/// Source files copied into outputs (tokenizer, chat template): each is copied once into the
/// staging folder, then hard-linked into every output that lists it, like the shards.
#[derive(Default)]
pub(crate) struct StagedCopies(std::collections::HashMap<PathBuf, StagedCopy>);

struct StagedCopy {
    path: PathBuf,
    bytes: u64,
    sha256: Option<String>,
}

impl StagedCopies {
    fn get(&mut self, from: &Path, staging: &Path, hashing: bool) -> Result<&StagedCopy> {
        let n = self.0.len();
        if !self.0.contains_key(from) {
            let path = staging.join(format!("copy-{n:05}"));
            let bytes = fs::copy(from, &path).map_err(|e| Error::io(from, "copy", e))?;
            io::sync_path(&path).map_err(|e| Error::io(&path, "flush", e))?;
            self.0.insert(from.to_path_buf(), StagedCopy { path, bytes, sha256: None });
        }
        let staged = self.0.get_mut(from).expect("inserted above");
        if hashing && staged.sha256.is_none() {
            staged.sha256 = Some(sha256_file(&staged.path, &AtomicU64::new(0), &AtomicBool::new(false))?);
        }
        Ok(staged)
    }
}

fn link_or_copy(from: &Path, to: &Path) -> Result<()> {
    if fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    // Another filesystem, or links not allowed (FAT, some network shares): std's copy uses the
    // system's own (copy_file_range on Linux, a clone on APFS, CopyFileEx on Windows).
    fs::copy(from, to).map_err(|e| Error::io(to, "copy shard to", e))?;
    io::sync_path(to).map_err(|e| Error::io(to, "flush", e))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let f = File::create(path).map_err(|e| Error::io(path, "create", e))?;
    io::write_all_at(&f, bytes, 0).map_err(|e| Error::io(path, "write", e))?;
    f.sync_all().map_err(|e| Error::io(path, "flush", e))
}

fn sync_dir(dir: &Path) -> Result<()> {
    io::sync_dir(dir).map_err(|e| Error::io(dir, "flush", e))
}

/// Puts the finished folder `tmp` at `dest`. An existing `dest` (checked replaceable by the
/// caller) is exchanged with it in one atomic step where the system allows it, so there is no
/// moment without an output; returns where the previous output now is, for the caller to
/// delete. Flushing the parent afterwards is best-effort: the output is already in place.
fn commit(tmp: &Path, dest: &Path) -> Result<Option<PathBuf>> {
    let parent = parent_dir(dest)?;
    let previous = if dest.symlink_metadata().is_ok() {
        if io::rename_exchange(tmp, dest).is_ok() {
            Some(tmp.to_path_buf())
        } else {
            // No atomic exchange here: move the old output aside, then put the new one in.
            let name = dest.file_name().expect("checked in preflight").to_string_lossy().into_owned();
            let old = unique_path(&parent, &format!(".{name}.gslice-old"));
            fs::rename(dest, &old).map_err(|e| Error::io(dest, "move aside", e))?;
            if let Err(e) = fs::rename(tmp, dest) {
                let _ = fs::rename(&old, dest);
                return Err(Error::io(dest, "rename into", e));
            }
            Some(old)
        }
    } else {
        rename_new(tmp, dest)?;
        None
    };
    let _ = sync_dir(&parent);
    Ok(previous)
}

/// Renames `tmp` to `dest`, failing if `dest` appeared meanwhile (where the system can tell).
fn rename_new(tmp: &Path, dest: &Path) -> Result<()> {
    match io::rename_no_replace(tmp, dest) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(Error::Exists(dest.to_path_buf())),
        Err(e) => Err(Error::io(dest, "rename into", e)),
    }
}

/// The folder an output will live in, created if needed (like `mkdir -p`).
pub(crate) fn parent_dir(dest: &Path) -> Result<PathBuf> {
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, "create", e))?;
    Ok(parent)
}

pub(crate) fn unique_path(parent: &Path, prefix: &str) -> PathBuf {
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
pub(crate) struct Cleanup(pub(crate) Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in self.0.drain(..).rev() {
            let _ = fs::remove_dir_all(&p);
        }
    }
}
