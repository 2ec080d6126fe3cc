//! Opening a checkpoint: one `.safetensors` file, or a folder holding `model.safetensors` or a
//! sharded set described by `model.safetensors.index.json`. Every shard is memory-mapped and
//! its header validated; the index must agree with the shards exactly.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::header::{self, Header, TensorInfo};

pub const INDEX_NAME: &str = "model.safetensors.index.json";
pub const SINGLE_NAME: &str = "model.safetensors";

pub struct Shard {
    pub path: PathBuf,
    pub file: File,
    pub map: Mmap,
    pub header: Header,
}

pub struct Checkpoint {
    pub root: PathBuf,
    pub shards: Vec<Shard>,
    /// tensor name -> (shard index, position in that shard's header)
    by_name: HashMap<String, (usize, usize)>,
}

impl Checkpoint {
    pub fn open(path: &Path) -> Result<Self> {
        if path.is_file() {
            let shard = open_shard(path)?;
            return Self::from_shards(path.to_path_buf(), vec![shard]);
        }
        if !path.is_dir() {
            return Err(Error::Plan(format!("source {} does not exist", path.display())));
        }
        let index = path.join(INDEX_NAME);
        if index.is_file() {
            return open_indexed(path, &index);
        }
        let single = path.join(SINGLE_NAME);
        if single.is_file() {
            let shard = open_shard(&single)?;
            return Self::from_shards(path.to_path_buf(), vec![shard]);
        }
        Err(Error::Plan(format!(
            "{} holds neither {SINGLE_NAME} nor {INDEX_NAME}",
            path.display()
        )))
    }

    fn from_shards(root: PathBuf, shards: Vec<Shard>) -> Result<Self> {
        let mut by_name: HashMap<String, (usize, usize)> = HashMap::new();
        for (si, shard) in shards.iter().enumerate() {
            for (ti, t) in shard.header.tensors.iter().enumerate() {
                if let Some(&(other, _)) = by_name.get(&t.name) {
                    return Err(Error::format(
                        &shard.path,
                        format!("tensor {} is also stored in {}", t.name, shards[other].path.display()),
                    ));
                }
                by_name.insert(t.name.clone(), (si, ti));
            }
        }
        Ok(Checkpoint { root, shards, by_name })
    }

    pub fn get(&self, name: &str) -> Option<(usize, &TensorInfo)> {
        self.by_name.get(name).map(|&(s, t)| (s, &self.shards[s].header.tensors[t]))
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

fn open_shard(path: &Path) -> Result<Shard> {
    let file = File::open(path).map_err(|e| Error::io(path, "open", e))?;
    let len = file.metadata().map_err(|e| Error::io(path, "stat", e))?.len();
    if len < 8 {
        // mmap of an empty file fails with an unhelpful EINVAL; report the format problem.
        return Err(Error::format(path, header::header_len(&[], len).unwrap_err()));
    }
    // SAFETY: the map is read-only; a concurrent truncation by another process could fault,
    // which is the accepted contract of every mmap-based safetensors reader.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, "memory-map", e))?;
    let header = header::parse(&map, len).map_err(|m| Error::format(path, m))?;
    Ok(Shard { path: path.to_path_buf(), file, map, header })
}

#[derive(Deserialize)]
struct IndexFile {
    weight_map: BTreeMap<String, String>,
}

fn open_indexed(root: &Path, index_path: &Path) -> Result<Checkpoint> {
    let text = std::fs::read(index_path).map_err(|e| Error::io(index_path, "read", e))?;
    let index: IndexFile = serde_json::from_slice(&text)
        .map_err(|e| Error::format(index_path, format!("not a valid index ({e})")))?;
    let mut files: Vec<String> = index.weight_map.values().cloned().collect();
    files.sort();
    files.dedup();
    let mut shards = Vec::with_capacity(files.len());
    for f in &files {
        if f.contains('/') || f.contains('\\') || f == ".." {
            return Err(Error::format(index_path, format!("shard name {f:?} is not a plain file name")));
        }
        let p = root.join(f);
        if !p.is_file() {
            return Err(Error::format(index_path, format!("names shard {f}, which does not exist")));
        }
        shards.push(open_shard(&p)?);
    }
    let ck = Checkpoint::from_shards(root.to_path_buf(), shards)?;
    check_index_agrees(&ck, &index.weight_map, &files, index_path)?;
    Ok(ck)
}

fn check_index_agrees(
    ck: &Checkpoint,
    weight_map: &BTreeMap<String, String>,
    files: &[String],
    index_path: &Path,
) -> Result<()> {
    for (name, file) in weight_map {
        match ck.get(name) {
            None => {
                return Err(Error::format(
                    index_path,
                    format!("maps tensor {name} to {file}, which does not contain it"),
                ))
            }
            Some((s, _)) if files[s] != *file => {
                return Err(Error::format(
                    index_path,
                    format!("maps tensor {name} to {file}, but it is stored in {}", files[s]),
                ))
            }
            Some(_) => {}
        }
    }
    for shard in &ck.shards {
        for t in &shard.header.tensors {
            if !weight_map.contains_key(&t.name) {
                return Err(Error::format(
                    &shard.path,
                    format!("holds tensor {}, which the index does not list", t.name),
                ));
            }
        }
    }
    Ok(())
}
