//! The plan: what the caller wants written. Each output tensor is one source tensor passed
//! through one operation, optionally quantized (then it is written as three tensors: packed
//! words, scales and shape). The engine checks the plan against the source and computes every
//! output shape before a byte is written.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::checkpoint::Checkpoint;
use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::header::{byte_size, TensorInfo};
use crate::quant::Scheme;

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
    /// Source bytes per strided or quantizing work item (default 16 MiB). Smaller bands mean
    /// smaller per-thread buffers; tests use tiny ones to cross band boundaries.
    #[serde(default)]
    pub band_bytes: Option<u64>,
    /// `__metadata__` of every written shard. Plan-wide because shards can be shared by
    /// several outputs and a shared file has one header.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Lay everything out and report it, but create nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Move bytes with the portable code even where a faster platform path exists (tests and
    /// benchmarks compare the two).
    #[serde(default)]
    pub portable_io: bool,
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
    #[serde(default)]
    pub quant: Option<QuantSpec>,
}

/// Quantize the (sliced) 2-D tensor group-wise; `name` receives the packed int32 words.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct QuantSpec {
    pub bits: u32,
    pub group_size: u64,
    /// BF16 [rows, cols / group_size]
    pub scale_name: String,
    /// I64 [2]: rows, cols
    pub shape_name: String,
}

impl QuantSpec {
    pub fn scheme(&self) -> Scheme {
        Scheme { bits: self.bits, group_size: self.group_size }
    }
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
    /// dtype and shape after the operation, before any quantization.
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    pub quant: Option<QuantSpec>,
    /// The safetensors entries written, back to back: the tensor itself, or a quantized
    /// tensor's packed words, scales and shape.
    pub parts: Vec<Part>,
    /// Bytes of all parts.
    pub nbytes: u64,
}

#[derive(Debug, Clone)]
pub struct Part {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    pub nbytes: u64,
    /// Bytes known at planning time, written together with the shard header.
    pub literal: Option<Vec<u8>>,
}

pub fn resolve(ck: &Checkpoint, spec: &TensorSpec) -> Result<Resolved> {
    let (shard, src) = ck.get(&spec.source).ok_or_else(|| {
        Error::Plan(format!("tensor {} (for output {}) is not in the source", spec.source, spec.name))
    })?;
    let context = |m: String| Error::Plan(format!("tensor {} -> {}: {m}", spec.source, spec.name));
    let shape = out_shape(&src.shape, &spec.op).map_err(context)?;
    let parts = match &spec.quant {
        None => {
            let nbytes = byte_size(&shape, src.dtype).expect("a sub-shape of a valid tensor fits in 64 bits");
            vec![Part { name: spec.name.clone(), dtype: src.dtype, shape: shape.clone(), nbytes, literal: None }]
        }
        Some(q) => quant_parts(&spec.name, src.dtype, &shape, q).map_err(context)?,
    };
    Ok(Resolved {
        name: spec.name.clone(),
        shard,
        src: src.clone(),
        op: spec.op.clone(),
        dtype: src.dtype,
        shape,
        quant: spec.quant.clone(),
        nbytes: parts.iter().map(|p| p.nbytes).sum(),
        parts,
    })
}

/// The compressed-tensors `pack-quantized` entries of a quantized weight.
fn quant_parts(name: &str, dtype: Dtype, shape: &[u64], q: &QuantSpec) -> std::result::Result<Vec<Part>, String> {
    let s = q.scheme();
    s.check()?;
    if !matches!(dtype, Dtype::BF16 | Dtype::F16 | Dtype::F32) {
        return Err(format!("dtype {} cannot be quantized (BF16, F16 or F32 needed)", dtype.name()));
    }
    let &[rows, cols] = shape else {
        return Err(format!("cannot quantize shape {shape:?}: group quantization needs a 2-D weight"));
    };
    if cols % s.group_size != 0 {
        return Err(format!(
            "width {cols} is not a multiple of the quantization group size {} (every group must be whole)",
            s.group_size
        ));
    }
    let names = [name, q.scale_name.as_str(), q.shape_name.as_str()];
    if names.iter().any(|n| n.is_empty()) || names[0] == names[1] || names[0] == names[2] || names[1] == names[2] {
        return Err(format!("packed, scale and shape tensors need three distinct names, got {names:?}"));
    }
    let words = s.words(cols);
    let groups = s.groups(cols);
    let literal: Vec<u8> = [rows as i64, cols as i64].iter().flat_map(|v| v.to_le_bytes()).collect();
    Ok(vec![
        Part { name: name.into(), dtype: Dtype::I32, shape: vec![rows, words], nbytes: rows * words * 4, literal: None },
        Part { name: q.scale_name.clone(), dtype: Dtype::BF16, shape: vec![rows, groups], nbytes: rows * groups * 2, literal: None },
        Part { name: q.shape_name.clone(), dtype: Dtype::I64, shape: vec![2], nbytes: 16, literal: Some(literal) },
    ])
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

    fn quant(bits: u32, group_size: u64) -> QuantSpec {
        QuantSpec { bits, group_size, scale_name: "w.s".into(), shape_name: "w.shape".into() }
    }

    #[test]
    fn quantized_parts_and_refusals() {
        let parts = quant_parts("w.p", Dtype::BF16, &[6, 20], &quant(4, 4)).unwrap();
        let layout: Vec<_> = parts.iter().map(|p| (p.name.as_str(), p.dtype, p.shape.clone(), p.nbytes)).collect();
        assert_eq!(
            layout,
            [("w.p", Dtype::I32, vec![6, 3], 72), ("w.s", Dtype::BF16, vec![6, 5], 60), ("w.shape", Dtype::I64, vec![2], 16)]
        );
        assert_eq!(parts[2].literal.as_deref().unwrap(), [6, 0, 0, 0, 0, 0, 0, 0, 20, 0, 0, 0, 0, 0, 0, 0]);
        let err = |dtype, shape: &[u64], q| quant_parts("w.p", dtype, shape, &q).unwrap_err();
        assert_eq!(
            err(Dtype::BF16, &[6, 40], quant(4, 32)),
            "width 40 is not a multiple of the quantization group size 32 (every group must be whole)"
        );
        assert_eq!(err(Dtype::BF16, &[6, 32], quant(3, 32)), "quantization bits must be 4 or 8, not 3");
        assert_eq!(err(Dtype::BF16, &[6, 32], quant(4, 0)), "quantization group size must be positive");
        assert_eq!(err(Dtype::I32, &[6, 32], quant(4, 32)), "dtype I32 cannot be quantized (BF16, F16 or F32 needed)");
        assert_eq!(err(Dtype::BF16, &[32], quant(8, 32)), "cannot quantize shape [32]: group quantization needs a 2-D weight");
        let same = QuantSpec { scale_name: "w.p".into(), ..quant(4, 4) };
        assert!(quant_parts("w.p", Dtype::BF16, &[2, 4], &same).unwrap_err().contains("three distinct names"));
    }
}
