//! Strict parsing of one safetensors header. The rules follow the format's reference
//! implementation: the JSON header is bounded and lies inside the file, every tensor has a known
//! dtype, its byte span equals shape x element size, and the spans tile the data section exactly
//! (no overlap, no gap, nothing missing at the end, nothing extra after it).

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::dtype::Dtype;

/// Headers above this size are refused before they are read: a corrupt length prefix must not
/// make us allocate gigabytes.
pub const MAX_HEADER_LEN: u64 = 100 * 1024 * 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    /// Absolute offset of the first data byte in the file.
    pub start: u64,
    pub len: u64,
}

#[derive(Debug)]
pub struct Header {
    pub data_start: u64,
    pub tensors: Vec<TensorInfo>,
    pub metadata: BTreeMap<String, String>,
}

/// Reads the 8-byte little-endian header length and checks it against the file size.
pub fn header_len(prefix: &[u8], file_len: u64) -> Result<u64, String> {
    if file_len < 8 {
        return Err(format!(
            "file is {file_len} bytes, shorter than the 8-byte header length prefix"
        ));
    }
    let n = u64::from_le_bytes(prefix[..8].try_into().expect("8 bytes"));
    if n > MAX_HEADER_LEN {
        return Err(format!("header length {n} exceeds the {MAX_HEADER_LEN}-byte limit"));
    }
    if n > file_len - 8 {
        return Err(format!("header length {n} exceeds the file size {file_len}"));
    }
    Ok(n)
}

/// Parses the whole file prefix (length + JSON); `file_len` is the size of the file on disk.
pub fn parse(bytes: &[u8], file_len: u64) -> Result<Header, String> {
    let n = header_len(bytes, file_len)?;
    let json = &bytes[8..8 + n as usize];
    if json.first() != Some(&b'{') {
        return Err("header does not start with '{'".into());
    }
    let entries: Entries =
        serde_json::from_slice(json).map_err(|e| format!("header is not valid JSON: {e}"))?;
    let data_start = 8 + n;
    let data_len = file_len - data_start;
    let mut metadata = BTreeMap::new();
    let mut tensors = Vec::with_capacity(entries.0.len());
    let mut seen = std::collections::HashSet::new();
    for (name, value) in entries.0 {
        if !seen.insert(name.clone()) {
            return Err(format!("tensor {name} appears twice in the header"));
        }
        if name == "__metadata__" {
            metadata = serde_json::from_value(value)
                .map_err(|_| "__metadata__ must map strings to strings".to_string())?;
            continue;
        }
        tensors.push(tensor(&name, value, data_start, data_len)?);
    }
    check_tiling(&mut tensors, data_start, data_len)?;
    Ok(Header { data_start, tensors, metadata })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTensor {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: (u64, u64),
}

fn tensor(name: &str, value: serde_json::Value, data_start: u64, data_len: u64) -> Result<TensorInfo, String> {
    let raw: RawTensor = serde_json::from_value(value)
        .map_err(|e| format!("tensor {name}: malformed entry ({e})"))?;
    let dtype = Dtype::parse(&raw.dtype)
        .ok_or_else(|| format!("tensor {name}: unknown dtype {:?}", raw.dtype))?;
    let (begin, end) = raw.data_offsets;
    if begin > end {
        return Err(format!("tensor {name}: data_offsets [{begin}, {end}] run backwards"));
    }
    let need = byte_size(&raw.shape, dtype)
        .ok_or_else(|| format!("tensor {name}: shape {:?} overflows 64 bits", raw.shape))?;
    if end - begin != need {
        return Err(format!(
            "tensor {name}: shape {:?} of {} needs {need} bytes but data_offsets [{begin}, {end}] span {}",
            raw.shape,
            dtype.name(),
            end - begin
        ));
    }
    if end > data_len {
        return Err(format!(
            "tensor {name}: data_offsets end {end} lies past the end of the data section ({data_len} bytes): the file is truncated or the offsets are wrong"
        ));
    }
    Ok(TensorInfo { name: name.to_owned(), dtype, shape: raw.shape, start: data_start + begin, len: need })
}

/// Bytes a tensor of this shape occupies, or None on overflow.
pub fn byte_size(shape: &[u64], dtype: Dtype) -> Option<u64> {
    shape.iter().try_fold(dtype.size(), |acc, &d| acc.checked_mul(d))
}

/// Sorts tensors by offset and requires them to tile [0, data_len) exactly.
fn check_tiling(tensors: &mut [TensorInfo], data_start: u64, data_len: u64) -> Result<(), String> {
    tensors.sort_by_key(|t| (t.start, t.len));
    let mut end = data_start;
    let mut prev: Option<&TensorInfo> = None;
    for t in tensors.iter() {
        if t.start < end {
            let p = prev.expect("only a previous tensor can end after data_start");
            return Err(format!(
                "tensors {} [{}, {}) and {} [{}, {}) overlap",
                p.name,
                p.start - data_start,
                end - data_start,
                t.name,
                t.start - data_start,
                t.start + t.len - data_start
            ));
        }
        if t.start > end {
            return Err(format!(
                "{} unused bytes before tensor {} at data offset {}",
                t.start - end,
                t.name,
                t.start - data_start
            ));
        }
        end = t.start + t.len;
        prev = Some(t);
    }
    let total = data_start + data_len;
    if end != total {
        return Err(format!("{} bytes after the last tensor's data are not described by the header", total - end));
    }
    Ok(())
}

/// The header's top-level entries in file order, keeping duplicates so they can be refused
/// (a plain JSON map would silently keep the last one).
struct Entries(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut out = Vec::new();
                while let Some(kv) = map.next_entry::<String, serde_json::Value>()? {
                    out.push(kv);
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(json: &str, data_len: usize) -> Vec<u8> {
        let mut v = (json.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(json.as_bytes());
        v.resize(v.len() + data_len, 0);
        v
    }

    fn parse_file(v: &[u8]) -> Result<Header, String> {
        parse(v, v.len() as u64)
    }

    #[test]
    fn accepts_a_valid_header() {
        let v = file(
            r#"{"__metadata__":{"format":"pt"},"b":{"dtype":"BF16","shape":[2,3],"data_offsets":[4,16]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
            16,
        );
        let h = parse_file(&v).unwrap();
        assert_eq!(h.tensors.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(h.tensors[1].start, h.data_start + 4);
        assert_eq!(h.metadata["format"], "pt");
    }

    #[test]
    fn refuses_header_length_past_the_file() {
        let mut v = file(r#"{}"#, 0);
        v[..8].copy_from_slice(&1000u64.to_le_bytes());
        assert_eq!(parse_file(&v).unwrap_err(), "header length 1000 exceeds the file size 10");
    }

    #[test]
    fn refuses_short_files_and_huge_lengths() {
        assert!(parse(&[1, 2, 3], 3).unwrap_err().contains("shorter than the 8-byte"));
        let mut v = file("{}", 0);
        v[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(parse_file(&v).unwrap_err().contains("exceeds the 104857600-byte limit"));
    }

    #[test]
    fn refuses_invalid_json_and_unknown_dtype() {
        assert!(parse_file(&file("{\"a\":", 0)).unwrap_err().starts_with("header is not valid JSON"));
        let v = file(r#"{"a":{"dtype":"F4","shape":[2],"data_offsets":[0,1]}}"#, 1);
        assert_eq!(parse_file(&v).unwrap_err(), "tensor a: unknown dtype \"F4\"");
    }

    #[test]
    fn refuses_size_mismatch_and_offsets_past_end() {
        let v = file(r#"{"a":{"dtype":"BF16","shape":[4],"data_offsets":[0,6]}}"#, 6);
        assert_eq!(
            parse_file(&v).unwrap_err(),
            "tensor a: shape [4] of BF16 needs 8 bytes but data_offsets [0, 6] span 6"
        );
        let v = file(r#"{"a":{"dtype":"BF16","shape":[4],"data_offsets":[0,8]}}"#, 4);
        assert!(parse_file(&v).unwrap_err().contains("lies past the end of the data section (4 bytes)"));
    }

    #[test]
    fn refuses_overlap_gap_trailing_and_duplicates() {
        let v = file(
            r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}"#,
            6,
        );
        assert_eq!(parse_file(&v).unwrap_err(), "tensors a [0, 4) and b [2, 6) overlap");
        let v = file(r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}"#, 6);
        assert_eq!(parse_file(&v).unwrap_err(), "2 unused bytes before tensor a at data offset 2");
        let v = file(r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}"#, 7);
        assert!(parse_file(&v).unwrap_err().starts_with("3 bytes after the last tensor"));
        let v = file(
            r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}"#,
            2,
        );
        assert_eq!(parse_file(&v).unwrap_err(), "tensor a appears twice in the header");
    }

    #[test]
    fn refuses_overflowing_shapes() {
        let v = file(r#"{"a":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,0]}}"#, 0);
        assert!(parse_file(&v).unwrap_err().contains("overflows 64 bits"));
    }
}
