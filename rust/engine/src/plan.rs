//! The plan: what the caller wants written. Each output tensor is one source tensor passed
//! through one operation. The engine checks the plan against the source and computes every
//! output shape before a byte is written.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::checkpoint::Checkpoint;
use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::header::{byte_size, TensorInfo};

pub const DEFAULT_MAX_SHARD_SIZE: u64 = 5_000_000_000;

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub source: PathBuf,
    pub outputs: Vec<OutputSpec>,
    #[serde(default = "default_max_shard_size")]
    pub max_shard_size: u64,
    /// Write a tensor shared by several outputs once and hard-link the shard holding it.
    #[serde(default = "yes")]
    pub dedupe: bool,
    #[serde(default)]
    pub threads: Option<usize>,
    /// `__metadata__` of every written shard. Plan-wide because shards can be shared by
    /// several outputs and a shared file has one header.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Lay everything out and report it, but create nothing.
    #[serde(default)]
    pub dry_run: bool,
}

fn default_max_shard_size() -> u64 {
    DEFAULT_MAX_SHARD_SIZE
}

fn yes() -> bool {
    true
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    pub dir: PathBuf,
    #[serde(default)]
    pub overwrite: bool,
    pub tensors: Vec<TensorSpec>,
    #[serde(default)]
    pub files: Vec<FileSpec>,
    /// A JSON file listing the size and SHA-256 of every other file of the folder, written
    /// last inside the temporary folder so the output never appears without it.
    #[serde(default)]
    pub manifest: Option<ManifestSpec>,
}

/// `fields` are the caller's (what the output is, where it came from); the engine adds
/// `"files": {name: {"size": n, "sha256": hex}}`.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct ManifestSpec {
    pub name: String,
    #[serde(default)]
    pub fields: serde_json::Map<String, serde_json::Value>,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    pub name: String,
    pub source: String,
    #[serde(default)]
    pub op: Op,
}

/// Ranges are half-open `[begin, end)` element indices along the first dimension (rows) or
/// the last dimension (cols). "Leading rows" is one range from 0; "row blocks" is several.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq, Hash, Default)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Op {
    #[default]
    Copy,
    Rows { ranges: Vec<(u64, u64)> },
    Cols { ranges: Vec<(u64, u64)> },
}

/// An extra file of an output folder: literal text (config.json, a model card) or a copy of a
/// source file (tokenizer, chat template).
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged, deny_unknown_fields)]
pub enum FileSpec {
    Text { name: String, text: String },
    Copy { name: String, copy_from: PathBuf },
}

impl FileSpec {
    pub fn name(&self) -> &str {
        match self {
            FileSpec::Text { name, .. } | FileSpec::Copy { name, .. } => name,
        }
    }
}

/// An output tensor with everything needed to write it.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub name: String,
    pub shard: usize,
    pub src: TensorInfo,
    pub op: Op,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    pub nbytes: u64,
}

pub fn resolve(ck: &Checkpoint, spec: &TensorSpec) -> Result<Resolved> {
    let (shard, src) = ck.get(&spec.source).ok_or_else(|| {
        Error::Plan(format!("tensor {} (for output {}) is not in the source", spec.source, spec.name))
    })?;
    let shape = out_shape(&src.shape, &spec.op)
        .map_err(|m| Error::Plan(format!("tensor {} -> {}: {m}", spec.source, spec.name)))?;
    let nbytes = byte_size(&shape, src.dtype).expect("a sub-shape of a valid tensor fits in 64 bits");
    Ok(Resolved {
        name: spec.name.clone(),
        shard,
        src: src.clone(),
        op: spec.op.clone(),
        dtype: src.dtype,
        shape,
        nbytes,
    })
}

fn out_shape(shape: &[u64], op: &Op) -> std::result::Result<Vec<u64>, String> {
    let (axis, ranges) = match op {
        Op::Copy => return Ok(shape.to_vec()),
        Op::Rows { ranges } if !shape.is_empty() => (0, ranges),
        Op::Cols { ranges } if shape.len() >= 2 => (shape.len() - 1, ranges),
        Op::Rows { .. } => return Err("cannot select rows of a scalar".into()),
        Op::Cols { .. } => return Err(format!("cannot select columns of a {}-D tensor", shape.len())),
    };
    if ranges.is_empty() {
        return Err("the operation selects no range".into());
    }
    let dim = shape[axis];
    let mut kept = 0;
    for &(b, e) in ranges {
        if b >= e || e > dim {
            return Err(format!("range [{b}, {e}) is empty or outside 0..{dim} of shape {shape:?}"));
        }
        kept += e - b;
    }
    let mut out = shape.to_vec();
    out[axis] = kept;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_shapes() {
        assert_eq!(out_shape(&[8, 4], &Op::Copy).unwrap(), [8, 4]);
        assert_eq!(out_shape(&[8, 4], &Op::Rows { ranges: vec![(0, 3)] }).unwrap(), [3, 4]);
        assert_eq!(out_shape(&[8, 4], &Op::Cols { ranges: vec![(0, 1), (2, 4)] }).unwrap(), [8, 3]);
        assert!(out_shape(&[8], &Op::Cols { ranges: vec![(0, 1)] }).unwrap_err().contains("1-D"));
        assert!(out_shape(&[8, 4], &Op::Rows { ranges: vec![(2, 9)] }).unwrap_err().contains("outside 0..8"));
        assert!(out_shape(&[8, 4], &Op::Rows { ranges: vec![] }).is_err());
    }

    #[test]
    fn plan_json_parses() {
        let p: Plan = serde_json::from_str(
            r#"{"source":"/s","outputs":[{"dir":"/o","tensors":[
                {"name":"a","source":"a"},
                {"name":"b","source":"b","op":{"kind":"cols","ranges":[[0,2],[4,6]]}}],
                "files":[{"name":"config.json","text":"{}"},{"name":"t.json","copy_from":"/s/t.json"}]}]}"#,
        )
        .unwrap();
        assert_eq!(p.max_shard_size, DEFAULT_MAX_SHARD_SIZE);
        assert_eq!(p.outputs[0].tensors[1].op, Op::Cols { ranges: vec![(0, 2), (4, 6)] });
        assert!(matches!(p.outputs[0].files[1], FileSpec::Copy { .. }));
        assert!(serde_json::from_str::<Plan>(r#"{"source":"/s","outputs":[],"bogus":1}"#).is_err());
    }
}
