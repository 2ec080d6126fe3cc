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
use crate::ggml::GgmlType;
use crate::gguf::MetaKv;
use crate::header::{byte_size, TensorInfo};
use crate::quant::{Affine, Kernel, Symmetric};

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
    /// The output folder; for a GGUF output, the file.
    pub dir: PathBuf,
    #[serde(default)]
    pub container: Container,
    #[serde(default)]
    pub overwrite: bool,
    pub tensors: Vec<TensorSpec>,
    #[serde(default)]
    pub files: Vec<FileSpec>,
    /// A folder's manifest: a JSON file listing the size and SHA-256 of every other file of the
    /// folder, written last inside the temporary folder so the output never appears without it.
    /// A GGUF file's: a metadata string under `name` (see `gguf`).
    #[serde(default)]
    pub manifest: Option<ManifestSpec>,
    /// GGUF only: the key-value pairs, in order.
    #[serde(default)]
    pub metadata: Vec<MetaKv>,
    /// GGUF only: where tensor data starts (default 32, GGUF's own default).
    #[serde(default)]
    pub alignment: Option<u64>,
    /// A folder's `model.safetensors.index.json`.
    #[serde(default)]
    pub index: IndexSpec,
}

/// How a folder's index is written. By default only when there are several shards, with
/// `total_size` as its metadata; `always` writes it for a single shard too (the layout mlx-lm
/// writes), and `metadata` adds entries beside `total_size`.
#[derive(Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct IndexSpec {
    #[serde(default)]
    pub always: bool,
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// How an output is stored: a folder of safetensors shards (with an index when there are
/// several), or one GGUF file.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Container {
    #[default]
    Safetensors,
    Gguf,
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
    /// GGUF only: more sources of the same dtype and shape; the output stacks `op` of `source`
    /// and of each of these along a new leading dimension.
    #[serde(default)]
    pub stack: Vec<String>,
    #[serde(default)]
    pub op: Op,
    /// GGUF only: zero rows appended so that the first dimension has this many.
    #[serde(default)]
    pub pad_rows: Option<u64>,
    #[serde(default, deserialize_with = "quant_with_default_scheme")]
    pub quant: Option<QuantSpec>,
    /// GGUF only (and required there): the GGML type the tensor is stored in ("f32", "bf16",
    /// "q8_0", ...): converted or block-quantized from the source, row by row.
    #[serde(default)]
    pub ggml: Option<String>,
    /// GGUF only: an importance matrix, one weight per column (of the stored tensor, for every
    /// row), for the GGML types whose llama.cpp quantizer reads one (ignored by the others).
    #[serde(default)]
    pub imatrix: Option<Vec<f32>>,
}

/// How the (sliced) 2-D tensor is quantized, tagged by `scheme`. A plan without `scheme` means
/// `compressed_tensors`, the one scheme plans had before the tag existed. The tensor's own
/// `name` receives the first part (the packed values); the scheme's other parts follow it in
/// the output under the names given here. What each scheme computes is in `quant`.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
#[serde(tag = "scheme", rename_all = "snake_case", deny_unknown_fields)]
pub enum QuantSpec {
    /// Symmetric, compressed-tensors' `pack-quantized` layout: I32 words [rows, ceil(cols *
    /// bits / 32)], BF16 scales [rows, cols / group_size], I64 shape [2] = rows, cols.
    CompressedTensors { bits: u32, group_size: u64, scale_name: String, shape_name: String },
    /// Affine as `mx.quantize` computes it: U32 words [rows, cols * bits / 32], BF16 scales and
    /// BF16 biases [rows, cols / group_size].
    MlxAffine { bits: u32, group_size: u64, scales_name: String, biases_name: String },
}

fn quant_with_default_scheme<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<QuantSpec>, D::Error> {
    use serde::de::Error as _;
    let Some(mut v) = Option::<serde_json::Map<String, serde_json::Value>>::deserialize(d)? else {
        return Ok(None);
    };
    v.entry("scheme").or_insert_with(|| "compressed_tensors".into());
    QuantSpec::deserialize(serde_json::Value::Object(v)).map(Some).map_err(D::Error::custom)
}

impl QuantSpec {
    pub fn kernel(&self) -> Kernel {
        match *self {
            QuantSpec::CompressedTensors { bits, group_size, .. } => Kernel::Symmetric(Symmetric { bits, group_size }),
            QuantSpec::MlxAffine { bits, group_size, .. } => Kernel::Affine(Affine { bits, group_size }),
        }
    }

    /// The scheme's name in plans and reports.
    pub fn scheme(&self) -> &'static str {
        match self {
            QuantSpec::CompressedTensors { .. } => "compressed_tensors",
            QuantSpec::MlxAffine { .. } => "mlx_affine",
        }
    }

    /// Names of the parts after the first: the kernel's other row parts, then literal parts.
    pub fn other_names(&self) -> Vec<&str> {
        match self {
            QuantSpec::CompressedTensors { scale_name, shape_name, .. } => vec![scale_name, shape_name],
            QuantSpec::MlxAffine { scales_name, biases_name, .. } => vec![scales_name, biases_name],
        }
    }

    /// Parts known at planning time, written after the row parts: (dtype, shape, bytes).
    fn literal_parts(&self, rows: u64, cols: u64) -> Vec<(Dtype, Vec<u64>, Vec<u8>)> {
        match self {
            QuantSpec::CompressedTensors { .. } => {
                let bytes = [rows as i64, cols as i64].iter().flat_map(|v| v.to_le_bytes()).collect();
                vec![(Dtype::I64, vec![2], bytes)]
            }
            QuantSpec::MlxAffine { .. } => Vec::new(),
        }
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

/// The source row that output row `k` of a rows operation reads.
pub fn source_row(ranges: &[(u64, u64)], mut k: u64) -> u64 {
    for &(b, e) in ranges {
        if k < e - b {
            return b + k;
        }
        k -= e - b;
    }
    unreachable!("output rows are within the ranges' total")
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
    /// dtype and shape after the operation (a stack, padding), before any quantization.
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    pub quant: Option<QuantSpec>,
    /// A GGUF tensor's encoding, with its stacked sources and padding.
    pub gguf: Option<GgufTensor>,
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

/// How a GGUF tensor is made: its rows, seen as a matrix of `cols` columns (the last
/// dimension), are `seg_rows` rows of `op` applied to each source in turn, then zero rows; each
/// row is stored as GGML type `ggml`, quantized with the importance matrix `imatrix` if any.
#[derive(Debug, Clone)]
pub struct GgufTensor {
    pub ggml: GgmlType,
    pub imatrix: Option<std::sync::Arc<[f32]>>,
    /// (shard, tensor) of every source after the first.
    pub more: Vec<(usize, TensorInfo)>,
    pub seg_rows: u64,
    pub rows: u64,
    pub cols: u64,
}

impl GgufTensor {
    pub fn row_bytes(&self) -> u64 {
        self.ggml.row_bytes(self.cols).expect("checked when resolving")
    }

    /// Output rows that come from a source (the rest are padding).
    pub fn data_rows(&self) -> u64 {
        self.seg_rows * (1 + self.more.len() as u64)
    }
}

pub fn resolve(ck: &Checkpoint, spec: &TensorSpec, container: Container) -> Result<Resolved> {
    let (shard, src) = ck.get(&spec.source).ok_or_else(|| {
        Error::Plan(format!("tensor {} (for output {}) is not in the source", spec.source, spec.name))
    })?;
    let context = |m: String| Error::Plan(format!("tensor {} -> {}: {m}", spec.source, spec.name));
    let shape = out_shape(&src.shape, &spec.op).map_err(context)?;
    if container == Container::Gguf {
        return resolve_gguf(ck, spec, shard, src, shape);
    }
    if spec.ggml.is_some() || !spec.stack.is_empty() || spec.pad_rows.is_some() || spec.imatrix.is_some() {
        return Err(context("ggml, stack, pad_rows and imatrix apply to GGUF outputs only".into()));
    }
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
        gguf: None,
        nbytes: parts.iter().map(|p| p.nbytes).sum(),
        parts,
    })
}

fn resolve_gguf(ck: &Checkpoint, spec: &TensorSpec, shard: usize, src: &TensorInfo, op_shape: Vec<u64>) -> Result<Resolved> {
    let context = |m: String| Error::Plan(format!("tensor {} -> {}: {m}", spec.source, spec.name));
    if spec.quant.is_some() {
        return Err(context("a GGUF tensor is quantized by its GGML type, not by quant".into()));
    }
    let name = spec.ggml.as_deref().ok_or_else(|| context("a GGUF tensor needs its GGML type (ggml)".into()))?;
    let ggml = GgmlType::parse(name).ok_or_else(|| context(format!("unknown GGML type {name:?}")))?;
    if !matches!(src.dtype, Dtype::BF16 | Dtype::F16 | Dtype::F32) {
        return Err(context(format!("dtype {} cannot be stored as {} (BF16, F16 or F32 needed)", src.dtype.name(), ggml.name())));
    }
    if matches!(spec.op, Op::Rows { .. }) && src.shape.len() != 2 {
        return Err(context("a GGUF tensor takes rows of 2-D sources only".into()));
    }
    let mut more = Vec::with_capacity(spec.stack.len());
    for other in &spec.stack {
        let (s, t) = ck.get(other).ok_or_else(|| context(format!("stacked tensor {other} is not in the source")))?;
        if t.dtype != src.dtype || t.shape != src.shape {
            return Err(context(format!(
                "stacked tensor {other} is {} {:?}, unlike {} {:?}",
                t.dtype.name(), t.shape, src.dtype.name(), src.shape
            )));
        }
        more.push((s, t.clone()));
    }
    let mut shape = op_shape.clone();
    if !more.is_empty() {
        shape.insert(0, 1 + more.len() as u64);
    }
    if shape.is_empty() {
        shape.push(1);
    }
    if let Some(n) = spec.pad_rows {
        if shape.len() < 2 {
            return Err(context("pad_rows needs a tensor of 2 or more dimensions".into()));
        }
        if n < shape[0] {
            return Err(context(format!("pad_rows {n} is fewer than the {} rows the tensor has", shape[0])));
        }
        shape[0] = n;
    }
    let cols = *shape.last().expect("at least one dimension");
    let rows: u64 = shape[..shape.len() - 1].iter().product();
    let seg_rows: u64 = op_shape[..op_shape.len().saturating_sub(1)].iter().product();
    let row_bytes = ggml.row_bytes(cols).map_err(context)?;
    let imatrix = spec.imatrix.as_deref().map(|m| check_imatrix(m, cols)).transpose().map_err(context)?;
    let g = GgufTensor { ggml, imatrix, more, seg_rows, rows, cols };
    let nbytes = rows * row_bytes;
    Ok(Resolved {
        name: spec.name.clone(),
        shard,
        src: src.clone(),
        op: spec.op.clone(),
        dtype: src.dtype,
        parts: vec![Part { name: spec.name.clone(), dtype: src.dtype, shape: shape.clone(), nbytes, literal: None }],
        shape,
        quant: None,
        gguf: Some(g),
        nbytes,
    })
}

/// An importance matrix holds one finite weight per column (llama.cpp refuses a non-finite one).
fn check_imatrix(m: &[f32], cols: u64) -> std::result::Result<std::sync::Arc<[f32]>, String> {
    if m.len() as u64 != cols {
        return Err(format!("the importance matrix has {} weights for {cols} columns", m.len()));
    }
    if let Some(i) = m.iter().position(|v| !v.is_finite()) {
        return Err(format!("weight {i} of the importance matrix is {}, not a finite number", m[i]));
    }
    Ok(m.into())
}

/// The entries of a quantized tensor: the kernel's row parts (the first under the tensor's own
/// name), then the scheme's literal parts.
fn quant_parts(name: &str, dtype: Dtype, shape: &[u64], q: &QuantSpec) -> std::result::Result<Vec<Part>, String> {
    if !matches!(dtype, Dtype::BF16 | Dtype::F16 | Dtype::F32) {
        return Err(format!("dtype {} cannot be quantized (BF16, F16 or F32 needed)", dtype.name()));
    }
    let &[rows, cols] = shape else {
        return Err(format!("cannot quantize shape {shape:?}: group quantization needs a 2-D weight"));
    };
    let kernel = q.kernel();
    kernel.check(cols)?;
    let names: Vec<&str> = std::iter::once(name).chain(q.other_names()).collect();
    let distinct: std::collections::HashSet<&&str> = names.iter().collect();
    if names.iter().any(|n| n.is_empty()) || distinct.len() != names.len() {
        return Err(format!("the parts of a {} tensor need {} distinct names, got {names:?}", q.scheme(), names.len()));
    }
    let row_parts = kernel.row_parts(cols);
    let literals = q.literal_parts(rows, cols);
    debug_assert_eq!(row_parts.len() + literals.len(), names.len());
    let mut parts: Vec<Part> = row_parts
        .iter()
        .zip(&names)
        .map(|(p, n)| Part { name: n.to_string(), dtype: p.dtype, shape: vec![rows, p.width], nbytes: rows * p.row_bytes(), literal: None })
        .collect();
    for ((dtype, shape, bytes), n) in literals.into_iter().zip(&names[row_parts.len()..]) {
        parts.push(Part { name: n.to_string(), dtype, shape, nbytes: bytes.len() as u64, literal: Some(bytes) });
    }
    Ok(parts)
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
        QuantSpec::CompressedTensors { bits, group_size, scale_name: "w.s".into(), shape_name: "w.shape".into() }
    }

    fn affine(bits: u32, group_size: u64) -> QuantSpec {
        QuantSpec::MlxAffine { bits, group_size, scales_name: "w.scales".into(), biases_name: "w.biases".into() }
    }

    fn tensor_spec(json: &str) -> std::result::Result<TensorSpec, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn quant_is_tagged_by_scheme_and_defaults_to_compressed_tensors() {
        let old = tensor_spec(r#"{"name":"w","source":"w","quant":{"bits":4,"group_size":4,"scale_name":"w.s","shape_name":"w.shape"}}"#);
        assert_eq!(old.unwrap().quant, Some(quant(4, 4)));
        let tagged = tensor_spec(
            r#"{"name":"w","source":"w","quant":{"scheme":"compressed_tensors","bits":4,"group_size":4,"scale_name":"w.s","shape_name":"w.shape"}}"#,
        );
        assert_eq!(tagged.unwrap().quant, Some(quant(4, 4)));
        let mlx = tensor_spec(
            r#"{"name":"w","source":"w","quant":{"scheme":"mlx_affine","bits":8,"group_size":64,"scales_name":"w.scales","biases_name":"w.biases"}}"#,
        );
        assert_eq!(mlx.unwrap().quant, Some(affine(8, 64)));
        assert_eq!(tensor_spec(r#"{"name":"w","source":"w"}"#).unwrap().quant, None);
        let err = tensor_spec(r#"{"name":"w","source":"w","quant":{"scheme":"nf4","bits":4}}"#).unwrap_err();
        assert!(err.contains("unknown variant `nf4`, expected `compressed_tensors` or `mlx_affine`"), "{err}");
        // A field of another scheme is refused, not ignored.
        let err = tensor_spec(
            r#"{"name":"w","source":"w","quant":{"scheme":"mlx_affine","bits":4,"group_size":64,"scales_name":"s","biases_name":"b","shape_name":"x"}}"#,
        )
        .unwrap_err();
        assert!(err.contains("unknown field `shape_name`"), "{err}");
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
        let same = QuantSpec::CompressedTensors { scale_name: "w.p".into(), bits: 4, group_size: 4, shape_name: "w.shape".into() };
        assert_eq!(
            quant_parts("w.p", Dtype::BF16, &[2, 4], &same).unwrap_err(),
            r#"the parts of a compressed_tensors tensor need 3 distinct names, got ["w.p", "w.p", "w.shape"]"#
        );
    }

    #[test]
    fn affine_parts_and_refusals() {
        let parts = quant_parts("w", Dtype::F16, &[3, 256], &affine(4, 64)).unwrap();
        let layout: Vec<_> = parts.iter().map(|p| (p.name.as_str(), p.dtype, p.shape.clone(), p.nbytes, p.literal.is_some())).collect();
        assert_eq!(
            layout,
            [
                ("w", Dtype::U32, vec![3, 32], 384, false),
                ("w.scales", Dtype::BF16, vec![3, 4], 24, false),
                ("w.biases", Dtype::BF16, vec![3, 4], 24, false)
            ]
        );
        let parts = quant_parts("w", Dtype::BF16, &[1, 128], &affine(8, 128)).unwrap();
        assert_eq!(parts[0].shape, [1, 32]);
        let err = |shape: &[u64], q| quant_parts("w", Dtype::BF16, shape, &q).unwrap_err();
        assert_eq!(
            err(&[2, 96], affine(4, 64)),
            "width 96 is not a multiple of the quantization group size 64 (every group must be whole)"
        );
        assert_eq!(
            err(&[2, 96], affine(4, 48)),
            "affine quantization group size must be 32, 64 or 128 (what mlx computes with), not 48"
        );
        assert_eq!(err(&[2, 64], affine(3, 32)), "affine quantization bits must be 4 or 8, not 3");
        let same = QuantSpec::MlxAffine { bits: 4, group_size: 32, scales_name: "w.b".into(), biases_name: "w.b".into() };
        assert!(err(&[2, 64], same).contains("need 3 distinct names"));
    }
}
