//! The GGUF container (version 3, little-endian), as llama.cpp reads it: magic, version,
//! tensor and key-value counts, the typed key-value pairs, one info per tensor (name, shape
//! with the innermost dimension first, GGML type, data offset), then the data section, every
//! tensor starting at a multiple of the alignment (padded with zeros, the last one too, as
//! gguf-py's writer does). The engine knows the container only: which keys and tensor names a
//! model needs comes from the caller.
//!
//! A manifest (the caller's JSON fields) becomes one more string pair, last, holding the field
//! `file_sha256`: the SHA-256 of the whole file as written with those 64 hex digits still all
//! `0`. The engine writes the zeros first, hashes the file as it is written, then puts the
//! digest in their place; a reader checks the file by reading it back with the digits zeroed.

use serde::Deserialize;
use serde_json::Value;

use crate::ggml::GgmlType;

pub const MAGIC: &[u8; 4] = b"GGUF";
pub const VERSION: u32 = 3;
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// `GGML_MAX_NAME`: a tensor name and its terminating NUL must fit in 64 bytes.
pub const MAX_NAME: usize = 63;
/// The manifest field whose value is the file's own digest.
pub const DIGEST_FIELD: &str = "file_sha256";

/// One metadata pair as the plan gives it: `{"key": ..., "type": "uint32", "value": 5}`, or for
/// arrays `{"key": ..., "type": "array", "item": "string", "value": [...]}`.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct MetaKv {
    pub key: String,
    #[serde(rename = "type")]
    pub ty: String,
    #[serde(default)]
    pub item: Option<String>,
    pub value: Value,
}

/// GGUF value types (`enum gguf_type`).
fn type_id(name: &str) -> Option<u32> {
    Some(match name {
        "uint8" => 0,
        "int8" => 1,
        "uint16" => 2,
        "int16" => 3,
        "uint32" => 4,
        "int32" => 5,
        "float32" => 6,
        "bool" => 7,
        "string" => 8,
        "array" => 9,
        "uint64" => 10,
        "int64" => 11,
        "float64" => 12,
        _ => return None,
    })
}

pub fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Appends one scalar of GGUF type `ty`; refuses a JSON value that does not fit it.
fn put_scalar(out: &mut Vec<u8>, ty: &str, v: &Value) -> Result<(), String> {
    let bad = || format!("{v} is not a valid {ty}");
    let int = |lo: i128, hi: i128| -> Result<i128, String> {
        let x = v.as_i64().map(i128::from).or_else(|| v.as_u64().map(i128::from)).ok_or_else(bad)?;
        if x < lo || x > hi {
            return Err(bad());
        }
        Ok(x)
    };
    match ty {
        "uint8" => out.push(int(0, u8::MAX as i128)? as u8),
        "int8" => out.push(int(i8::MIN as i128, i8::MAX as i128)? as i8 as u8),
        "uint16" => out.extend_from_slice(&(int(0, u16::MAX as i128)? as u16).to_le_bytes()),
        "int16" => out.extend_from_slice(&(int(i16::MIN as i128, i16::MAX as i128)? as i16).to_le_bytes()),
        "uint32" => out.extend_from_slice(&(int(0, u32::MAX as i128)? as u32).to_le_bytes()),
        "int32" => out.extend_from_slice(&(int(i32::MIN as i128, i32::MAX as i128)? as i32).to_le_bytes()),
        "uint64" => out.extend_from_slice(&(int(0, u64::MAX as i128)? as u64).to_le_bytes()),
        "int64" => out.extend_from_slice(&(int(i64::MIN as i128, i64::MAX as i128)? as i64).to_le_bytes()),
        // JSON numbers are f64; a float32 value given as the f64 of an f32 converts exactly.
        "float32" => out.extend_from_slice(&(float(v).ok_or_else(bad)? as f32).to_le_bytes()),
        "float64" => out.extend_from_slice(&float(v).ok_or_else(bad)?.to_le_bytes()),
        "bool" => out.push(u8::from(v.as_bool().ok_or_else(bad)?)),
        "string" => put_string(out, v.as_str().ok_or_else(bad)?),
        _ => return Err(format!("unknown GGUF value type {ty:?}")),
    }
    Ok(())
}

/// A JSON number, or one of the strings "inf", "-inf" and "nan" (JSON has no such numbers).
fn float(v: &Value) -> Option<f64> {
    match v.as_str() {
        Some("inf") => Some(f64::INFINITY),
        Some("-inf") => Some(f64::NEG_INFINITY),
        Some("nan") => Some(f64::NAN),
        Some(_) => None,
        None => v.as_f64(),
    }
}

/// Appends one key-value pair.
pub fn put_kv(out: &mut Vec<u8>, kv: &MetaKv) -> Result<(), String> {
    let context = |e: String| format!("metadata {}: {e}", kv.key);
    if kv.key.is_empty() {
        return Err("metadata keys must not be empty".into());
    }
    let id = type_id(&kv.ty).ok_or_else(|| context(format!("unknown GGUF value type {:?}", kv.ty)))?;
    put_string(out, &kv.key);
    out.extend_from_slice(&id.to_le_bytes());
    if kv.ty != "array" {
        if kv.item.is_some() {
            return Err(context("only arrays have an item type".into()));
        }
        return put_scalar(out, &kv.ty, &kv.value).map_err(context);
    }
    let item = kv.item.as_deref().ok_or_else(|| context("an array needs its item type".into()))?;
    let item_id = type_id(item).filter(|_| item != "array").ok_or_else(|| context(format!("unsupported array item type {item:?}")))?;
    let items = kv.value.as_array().ok_or_else(|| context("an array's value must be a JSON array".into()))?;
    out.extend_from_slice(&item_id.to_le_bytes());
    out.extend_from_slice(&(items.len() as u64).to_le_bytes());
    for v in items {
        put_scalar(out, item, v).map_err(context)?;
    }
    Ok(())
}

pub fn align(x: u64, alignment: u64) -> u64 {
    x.div_ceil(alignment) * alignment
}

/// A tensor as the header describes it.
pub struct TensorEntry<'a> {
    pub name: &'a str,
    /// Outermost dimension first, as in safetensors and numpy; written innermost first.
    pub shape: &'a [u64],
    pub ggml: GgmlType,
    pub nbytes: u64,
}

#[derive(Debug)]
/// A laid-out GGUF file: its header (up to the data section, padding included), the absolute
/// offset of each tensor's data, the total size, and where the manifest digest goes.
pub struct FileLayout {
    pub header: Vec<u8>,
    pub offsets: Vec<u64>,
    pub size: u64,
    /// Absolute offset of the 64 hex digits of the manifest's `file_sha256`.
    pub digest_at: Option<u64>,
}

/// Lays out a GGUF file. `manifest` is the manifest's JSON fields (without the digest) and the
/// key it is stored under.
pub fn layout(
    metadata: &[MetaKv],
    tensors: &[TensorEntry],
    alignment: u64,
    manifest: Option<(&str, &serde_json::Map<String, Value>)>,
) -> Result<FileLayout, String> {
    if alignment == 0 || alignment % 8 != 0 {
        return Err(format!("GGUF alignment {alignment} must be a positive multiple of 8"));
    }
    let mut keys = std::collections::HashSet::new();
    let manifest_key = manifest.map(|(k, _)| k);
    for k in metadata.iter().map(|kv| kv.key.as_str()).chain(manifest_key) {
        if !keys.insert(k) {
            return Err(format!("metadata key {k} is given twice"));
        }
    }
    if alignment != DEFAULT_ALIGNMENT && !keys.contains("general.alignment") {
        return Err(format!("alignment {alignment} needs the key general.alignment (readers assume {DEFAULT_ALIGNMENT})"));
    }
    let mut names = std::collections::HashSet::new();
    for t in tensors {
        if t.name.is_empty() || t.name.len() > MAX_NAME {
            return Err(format!("tensor name {:?} must be 1 to {MAX_NAME} bytes long (GGML_MAX_NAME)", t.name));
        }
        if !names.insert(t.name) {
            return Err(format!("tensor {} is listed twice", t.name));
        }
    }
    let n_kv = metadata.len() + usize::from(manifest.is_some());
    let mut h = Vec::new();
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&VERSION.to_le_bytes());
    h.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    h.extend_from_slice(&(n_kv as u64).to_le_bytes());
    for kv in metadata {
        put_kv(&mut h, kv)?;
    }
    let mut digest_at = None;
    if let Some((key, fields)) = manifest {
        let (text, at) = manifest_text(fields)?;
        put_string(&mut h, key);
        h.extend_from_slice(&8u32.to_le_bytes());
        h.extend_from_slice(&(text.len() as u64).to_le_bytes());
        digest_at = Some((h.len() + at) as u64);
        h.extend_from_slice(text.as_bytes());
    }
    let mut rel = 0u64;
    let mut rel_offsets = Vec::with_capacity(tensors.len());
    for t in tensors {
        put_string(&mut h, t.name);
        h.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
        for &d in t.shape.iter().rev() {
            h.extend_from_slice(&d.to_le_bytes());
        }
        h.extend_from_slice(&t.ggml.id().to_le_bytes());
        h.extend_from_slice(&rel.to_le_bytes());
        rel_offsets.push(rel);
        rel = align(rel + t.nbytes, alignment);
    }
    let data = align(h.len() as u64, alignment);
    h.resize(data as usize, 0);
    Ok(FileLayout { offsets: rel_offsets.iter().map(|r| data + r).collect(), size: data + rel, header: h, digest_at })
}

/// The manifest as a JSON string with a zero digest, and the byte offset of the digest in it.
fn manifest_text(fields: &serde_json::Map<String, Value>) -> Result<(String, usize), String> {
    if fields.contains_key(DIGEST_FIELD) {
        return Err(format!("manifest fields must not contain {DIGEST_FIELD:?}: the engine writes it"));
    }
    let mut all = fields.clone();
    all.insert(DIGEST_FIELD.into(), Value::String("0".repeat(64)));
    let text = serde_json::to_string(&Value::Object(all)).map_err(|e| e.to_string())?;
    let marker = format!("\"{DIGEST_FIELD}\":\"{}\"", "0".repeat(64));
    let at = text.find(&marker).ok_or("the manifest digest field is missing from its JSON")?;
    Ok((text, at + marker.len() - 65))
}

/// Whether `path` is a GGUF file whose metadata holds a string under `key` (read from the
/// header only; any read or format problem means no).
pub fn file_has_key(path: &std::path::Path, key: &str) -> bool {
    let Ok(f) = std::fs::File::open(path) else { return false };
    let mut r = std::io::BufReader::new(f);
    find_string_key(&mut r, key).unwrap_or(false)
}

fn find_string_key(r: &mut impl std::io::Read, key: &str) -> std::io::Result<bool> {
    let mut magic = [0u8; 4];
    r.read_exact(&mut magic)?;
    if &magic != MAGIC || read_u32(r)? != VERSION {
        return Ok(false);
    }
    let _tensors = read_u64(r)?;
    let n_kv = read_u64(r)?;
    for _ in 0..n_kv {
        let k = read_bytes(r)?;
        let ty = read_u32(r)?;
        if ty == 8 && k == key.as_bytes() {
            return Ok(true);
        }
        skip_value(r, ty)?;
    }
    Ok(false)
}

fn read_u32(r: &mut impl std::io::Read) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_u64(r: &mut impl std::io::Read) -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// A GGUF string, at most 1 MiB long (a key; values are skipped, not read).
fn read_bytes(r: &mut impl std::io::Read) -> std::io::Result<Vec<u8>> {
    let n = read_u64(r)?;
    if n > 1 << 20 {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "key too long"));
    }
    let mut b = vec![0u8; n as usize];
    r.read_exact(&mut b)?;
    Ok(b)
}

fn skip_value(r: &mut impl std::io::Read, ty: u32) -> std::io::Result<()> {
    let fixed = match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        10..=12 => 8,
        8 => read_u64(r)?,
        9 => {
            let item = read_u32(r)?;
            let n = read_u64(r)?;
            for _ in 0..n {
                skip_value(r, item)?;
            }
            return Ok(());
        }
        _ => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "unknown GGUF value type")),
    };
    let (mut left, mut buf) = (fixed, [0u8; 4096]);
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        r.read_exact(&mut buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kv(key: &str, ty: &str, value: Value) -> MetaKv {
        MetaKv { key: key.into(), ty: ty.into(), item: None, value }
    }

    #[test]
    fn scalars_and_arrays_encode_as_gguf() {
        let mut out = Vec::new();
        put_kv(&mut out, &kv("a", "uint32", json!(7))).unwrap();
        assert_eq!(out, [1, 0, 0, 0, 0, 0, 0, 0, b'a', 4, 0, 0, 0, 7, 0, 0, 0]);
        let mut out = Vec::new();
        let arr = MetaKv { key: "b".into(), ty: "array".into(), item: Some("string".into()), value: json!(["x", "yz"]) };
        put_kv(&mut out, &arr).unwrap();
        let mut want = vec![1, 0, 0, 0, 0, 0, 0, 0, b'b', 9, 0, 0, 0, 8, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0];
        want.extend([1, 0, 0, 0, 0, 0, 0, 0, b'x', 2, 0, 0, 0, 0, 0, 0, 0, b'y', b'z']);
        assert_eq!(out, want);
        let mut out = Vec::new();
        put_kv(&mut out, &kv("f", "float32", json!(0.1f32 as f64))).unwrap();
        assert_eq!(&out[13..], 0.1f32.to_le_bytes());
        let mut out = Vec::new();
        put_kv(&mut out, &MetaKv { key: "s".into(), ty: "array".into(), item: Some("float32".into()), value: json!([1.5, "-inf"]) }).unwrap();
        assert_eq!(&out[25..], [1.5f32.to_le_bytes(), f32::NEG_INFINITY.to_le_bytes()].concat());
    }

    #[test]
    fn values_that_do_not_fit_are_refused() {
        let err = |k: MetaKv| put_kv(&mut Vec::new(), &k).unwrap_err();
        assert_eq!(err(kv("n", "uint8", json!(256))), "metadata n: 256 is not a valid uint8");
        assert_eq!(err(kv("n", "int32", json!("1"))), "metadata n: \"1\" is not a valid int32");
        assert_eq!(err(kv("n", "uint16", json!(-1))), "metadata n: -1 is not a valid uint16");
        assert_eq!(err(kv("n", "complex", json!(1))), "metadata n: unknown GGUF value type \"complex\"");
        assert_eq!(err(kv("n", "array", json!([1]))), "metadata n: an array needs its item type");
    }

    #[test]
    fn tensors_are_aligned_and_the_digest_is_found() {
        let shape_a = [3u64, 5];
        let shape_b = [7u64];
        let tensors = [
            TensorEntry { name: "a", shape: &shape_a, ggml: GgmlType::F32, nbytes: 60 },
            TensorEntry { name: "b", shape: &shape_b, ggml: GgmlType::F16, nbytes: 14 },
        ];
        let fields = json!({"format": "gslice-manifest/1"}).as_object().unwrap().clone();
        let l = layout(&[kv("k", "bool", json!(true))], &tensors, 32, Some(("gslice.manifest", &fields))).unwrap();
        assert_eq!(l.header.len() % 32, 0);
        let data = l.header.len() as u64;
        assert_eq!(l.offsets, [data, data + 64]);
        assert_eq!(l.size, data + 96);
        let at = l.digest_at.unwrap() as usize;
        assert_eq!(&l.header[at..at + 64], "0".repeat(64).as_bytes());
        assert_eq!(&l.header[at - 15..at - 1], b"\"file_sha256\":");
        // the second tensor's info: name, 1 dimension of 7, type f16 (1), offset 64
        let tail: Vec<u8> = [1u64.to_le_bytes().to_vec(), b"b".to_vec(), 1u32.to_le_bytes().to_vec(), 7u64.to_le_bytes().to_vec(),
            1u32.to_le_bytes().to_vec(), 64u64.to_le_bytes().to_vec()].concat();
        let end = l.header.iter().rposition(|&b| b != 0).unwrap() + 1;
        assert!(l.header[..end + 7].ends_with(&tail), "{:?}", &l.header[end - 40..end]);
    }

    #[test]
    fn a_file_is_recognised_by_its_manifest_key() {
        let dir = tempfile::tempdir().unwrap();
        let fields = json!({"format": "gslice-manifest/1"}).as_object().unwrap().clone();
        let meta = [kv("general.tags", "array", json!(["a", "b"])), kv("n", "uint64", json!(7))];
        let meta = [MetaKv { item: Some("string".into()), ..meta[0].clone() }, meta[1].clone()];
        let ours = layout(&meta, &[], 32, Some(("gslice.manifest", &fields))).unwrap();
        let theirs = layout(&meta, &[], 32, None).unwrap();
        let (a, b, c) = (dir.path().join("a.gguf"), dir.path().join("b.gguf"), dir.path().join("c.gguf"));
        std::fs::write(&a, &ours.header).unwrap();
        std::fs::write(&b, &theirs.header).unwrap();
        std::fs::write(&c, b"not a gguf file").unwrap();
        assert!(file_has_key(&a, "gslice.manifest"));
        assert!(!file_has_key(&a, "gslice-manifest.json"));
        assert!(!file_has_key(&b, "gslice.manifest"));
        assert!(!file_has_key(&c, "gslice.manifest"));
        assert!(!file_has_key(&dir.path().join("missing"), "gslice.manifest"));
    }

    #[test]
    fn bad_layouts_are_refused() {
        let shape = [1u64];
        let t = |name| TensorEntry { name, shape: &shape, ggml: GgmlType::F32, nbytes: 4 };
        let long = "x".repeat(64);
        assert!(layout(&[], &[t(&long)], 32, None).unwrap_err().contains("1 to 63 bytes"));
        assert_eq!(layout(&[], &[t("a"), t("a")], 32, None).unwrap_err(), "tensor a is listed twice");
        assert_eq!(
            layout(&[kv("k", "bool", json!(true)), kv("k", "bool", json!(false))], &[], 32, None).unwrap_err(),
            "metadata key k is given twice"
        );
        assert!(layout(&[], &[], 64, None).unwrap_err().contains("general.alignment"));
    }
}
