//! Property tests standing in for a fuzzer (cargo-fuzz needs a nightly toolchain, which CI does
//! not have): the safetensors header parser and the index/shard checks get valid inputs, the
//! same inputs mutated at the byte and at the JSON level, truncations and random bytes. They
//! must never panic; what they accept must satisfy the format's invariants, and a valid input
//! must be accepted as it is. Bounded by case counts so `cargo test` stays fast.

use std::fs;
use std::path::Path;

use gslice_engine::dtype::Dtype;
use gslice_engine::header::{byte_size, parse, Header};
use gslice_engine::Checkpoint;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

const DTYPES: [&str; 15] = [
    "BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "F64", "I64", "U64",
];

/// A tensor of a valid file: name, dtype, shape.
type Spec = (String, &'static str, Vec<u64>);

fn tensor_specs() -> impl Strategy<Value = Vec<Spec>> {
    let name = prop_oneof!["[a-z]{1,6}(\\.[0-9]{1,2})?", "[\\PC]{1,4}"];
    let one = (name, proptest::sample::select(&DTYPES[..]), proptest::collection::vec(0u64..5, 0..4));
    proptest::collection::vec(one, 0..6).prop_map(|mut v| {
        let mut seen = std::collections::HashSet::new();
        v.retain(|(n, _, _)| n != "__metadata__" && seen.insert(n.clone()));
        v
    })
}

/// The header object of a valid file, its tensors stored in `order`, and the data length.
fn header_value(specs: &[Spec], order: &[usize], metadata: bool) -> (Map<String, Value>, usize) {
    let mut header = Map::new();
    if metadata {
        header.insert("__metadata__".into(), json!({"format": "pt"}));
    }
    let mut at = 0u64;
    let mut offsets = vec![(0, 0); specs.len()];
    for &i in order {
        let (_, dtype, shape) = &specs[i];
        let n = byte_size(shape, Dtype::parse(dtype).unwrap()).unwrap();
        offsets[i] = (at, at + n);
        at += n;
    }
    for (i, (name, dtype, shape)) in specs.iter().enumerate() {
        header.insert(name.clone(), json!({"dtype": dtype, "shape": shape, "data_offsets": [offsets[i].0, offsets[i].1]}));
    }
    (header, at as usize)
}

fn file_bytes(header_text: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = (header_text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header_text);
    out.extend_from_slice(data);
    out
}

fn valid_file() -> impl Strategy<Value = (Vec<Spec>, Vec<u8>)> {
    (tensor_specs(), any::<bool>(), any::<u64>()).prop_map(|(specs, metadata, seed)| {
        let mut order: Vec<usize> = (0..specs.len()).collect();
        order.sort_by_key(|&i| (seed.rotate_left(i as u32 * 7) ^ i as u64) % 97);
        let (header, data_len) = header_value(&specs, &order, metadata);
        let text = serde_json::to_vec(&Value::Object(header)).unwrap();
        let data: Vec<u8> = (0..data_len).map(|k| (k as u64 ^ seed) as u8).collect();
        (specs, file_bytes(&text, &data))
    })
}

/// Everything an accepted file must satisfy.
fn check_invariants(h: &Header, file_len: u64) {
    assert!(h.data_start >= 8 && h.data_start <= file_len);
    let mut end = h.data_start;
    for t in &h.tensors {
        assert_eq!(t.start, end, "tensors must tile the data section");
        assert_eq!(Some(t.len), byte_size(&t.shape, t.dtype));
        end = t.start + t.len;
    }
    assert_eq!(end, file_len, "the last tensor must end the file");
}

#[derive(Debug, Clone)]
enum ByteEdit {
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    LengthPrefix(u64),
}

fn byte_edit() -> impl Strategy<Value = ByteEdit> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(i, x)| ByteEdit::Flip(i, x)),
        any::<usize>().prop_map(ByteEdit::Truncate),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..8)).prop_map(|(i, b)| ByteEdit::Insert(i, b)),
        (any::<usize>(), 1usize..16).prop_map(|(i, n)| ByteEdit::Delete(i, n)),
        prop_oneof![Just(0u64), Just(u64::MAX), Just(1 << 40), any::<u64>()].prop_map(ByteEdit::LengthPrefix),
    ]
}

fn apply(bytes: &mut Vec<u8>, edit: &ByteEdit) {
    let len = bytes.len();
    match edit {
        ByteEdit::Flip(i, x) if len > 0 => bytes[i % len] ^= x,
        ByteEdit::Truncate(n) => bytes.truncate(n % (len + 1)),
        ByteEdit::Insert(i, b) => {
            let at = i % (len + 1);
            bytes.splice(at..at, b.iter().copied());
        }
        ByteEdit::Delete(i, n) if len > 0 => {
            let at = i % len;
            bytes.drain(at..(at + n).min(len));
        }
        ByteEdit::LengthPrefix(n) if len >= 8 => bytes[..8].copy_from_slice(&n.to_le_bytes()),
        _ => {}
    }
}

/// Edits of one tensor entry (or of the header object), kept as valid JSON.
#[derive(Debug, Clone)]
enum JsonEdit {
    Offsets(u64, u64),
    Shape(Vec<u64>),
    Dtype(String),
    Remove,
    UnknownField,
    NotAnObject,
    Metadata(Value),
    Duplicate,
}

fn json_edit() -> impl Strategy<Value = JsonEdit> {
    let big = prop_oneof![0u64..64, Just(u64::MAX), Just(u64::MAX / 2), Just(1u64 << 32), any::<u64>()];
    prop_oneof![
        (big.clone(), big.clone()).prop_map(|(a, b)| JsonEdit::Offsets(a, b)),
        proptest::collection::vec(big, 0..5).prop_map(JsonEdit::Shape),
        "[A-Z0-9_]{0,8}".prop_map(JsonEdit::Dtype),
        Just(JsonEdit::Remove),
        Just(JsonEdit::UnknownField),
        Just(JsonEdit::NotAnObject),
        prop_oneof![Just(json!({"a": 1})), Just(json!([])), Just(json!("x")), Just(json!({"k": "v"}))].prop_map(JsonEdit::Metadata),
        Just(JsonEdit::Duplicate),
    ]
}

/// None when the file has no tensor to edit.
fn edit_header(file: &[u8], which: usize, edit: &JsonEdit) -> Option<Vec<u8>> {
    let n = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
    let mut header: Map<String, Value> = serde_json::from_slice(&file[8..8 + n]).unwrap();
    let data = &file[8 + n..];
    let names: Vec<String> = header.keys().filter(|k| *k != "__metadata__").cloned().collect();
    let name = names.get(which % names.len().max(1))?.clone();
    let entry = header.get_mut(&name).unwrap();
    match edit {
        JsonEdit::Offsets(a, b) => entry["data_offsets"] = json!([a, b]),
        JsonEdit::Shape(s) => entry["shape"] = json!(s),
        JsonEdit::Dtype(d) => entry["dtype"] = json!(d),
        JsonEdit::Remove => {
            header.remove(&name);
        }
        JsonEdit::UnknownField => entry["extra"] = json!(1),
        JsonEdit::NotAnObject => *entry = json!([1, 2]),
        JsonEdit::Metadata(v) => {
            header.insert("__metadata__".into(), v.clone());
        }
        JsonEdit::Duplicate => {
            // serde_json maps cannot hold a key twice: splice a second copy into the text.
            let text = serde_json::to_string(&header).unwrap();
            let dup = format!("{}:{},", json!(name), header[&name]);
            return Some(file_bytes(format!("{{{dup}{}", &text[1..]).as_bytes(), data));
        }
    }
    Some(file_bytes(&serde_json::to_vec(&header).unwrap(), data))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn valid_headers_are_accepted_as_they_are((specs, bytes) in valid_file()) {
        let h = parse(&bytes, bytes.len() as u64).unwrap();
        check_invariants(&h, bytes.len() as u64);
        let mut got: Vec<_> = h.tensors.iter().map(|t| (t.name.clone(), t.dtype.name(), t.shape.clone())).collect();
        let mut want: Vec<_> = specs.iter().map(|(n, d, s)| (n.clone(), *d, s.clone())).collect();
        got.sort();
        want.sort();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn byte_mutations_never_panic((_, bytes) in valid_file(), edits in proptest::collection::vec(byte_edit(), 1..4)) {
        let mut bytes = bytes;
        for e in &edits {
            apply(&mut bytes, e);
        }
        if let Ok(h) = parse(&bytes, bytes.len() as u64) {
            check_invariants(&h, bytes.len() as u64);
        }
    }

    #[test]
    fn json_mutations_never_panic((_, bytes) in valid_file(), which in any::<usize>(), edit in json_edit()) {
        let Some(bytes) = edit_header(&bytes, which, &edit) else { return Ok(()) };
        if let Ok(h) = parse(&bytes, bytes.len() as u64) {
            check_invariants(&h, bytes.len() as u64);
            prop_assert!(!matches!(edit, JsonEdit::Duplicate | JsonEdit::UnknownField | JsonEdit::NotAnObject));
        }
    }

    #[test]
    fn every_truncation_is_refused((_, bytes) in valid_file(), cut in any::<usize>()) {
        let keep = cut % bytes.len();
        prop_assert!(parse(&bytes[..keep], keep as u64).is_err());
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256), prefix in any::<bool>()) {
        let mut bytes = bytes;
        if prefix && bytes.len() >= 8 {
            // a plausible length prefix, so the JSON parser gets to see the rest
            let n = (bytes.len() - 8) as u64;
            bytes[..8].copy_from_slice(&n.to_le_bytes());
        }
        if let Ok(h) = parse(&bytes, bytes.len() as u64) {
            check_invariants(&h, bytes.len() as u64);
        }
    }
}

/// Two valid shards and an index mapping their tensors; returns the weight map.
fn write_checkpoint(dir: &Path) -> Map<String, Value> {
    let shards = [("a.safetensors", ["x", "y"]), ("b.safetensors", ["z", "w"])];
    let mut map = Map::new();
    for (file, names) in shards {
        let specs: Vec<Spec> = names.iter().map(|n| (n.to_string(), "BF16", vec![2, 3])).collect();
        let (header, len) = header_value(&specs, &[0, 1], true);
        fs::write(dir.join(file), file_bytes(&serde_json::to_vec(&Value::Object(header)).unwrap(), &vec![7; len])).unwrap();
        for n in names {
            map.insert(n.into(), json!(file));
        }
    }
    map
}

#[derive(Debug, Clone)]
enum IndexEdit {
    Drop(usize),
    Point(usize, String),
    Add(String, String),
    NotAString(usize),
    Raw(Vec<u8>),
    NoWeightMap,
}

fn index_edit() -> impl Strategy<Value = IndexEdit> {
    let file = prop_oneof![
        Just("a.safetensors".to_string()),
        Just("b.safetensors".to_string()),
        Just("../a.safetensors".to_string()),
        Just("/etc/passwd".to_string()),
        Just("missing.safetensors".to_string()),
        Just("".to_string()),
        Just(".".to_string()),
        "[a-z./]{0,12}",
    ];
    prop_oneof![
        any::<usize>().prop_map(IndexEdit::Drop),
        (any::<usize>(), file.clone()).prop_map(|(i, f)| IndexEdit::Point(i, f)),
        ("[a-z]{1,3}", file).prop_map(|(n, f)| IndexEdit::Add(n, f)),
        any::<usize>().prop_map(IndexEdit::NotAString),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(IndexEdit::Raw),
        Just(IndexEdit::NoWeightMap),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn index_mutations_never_panic_and_what_opens_agrees(edits in proptest::collection::vec(index_edit(), 1..4)) {
        let tmp = tempfile::tempdir().unwrap();
        let mut map = write_checkpoint(tmp.path());
        let mut raw = None;
        let mut drop_map = false;
        for e in &edits {
            let keys: Vec<String> = map.keys().cloned().collect();
            let key = |i: usize| keys.get(i % keys.len().max(1)).cloned();
            match e {
                IndexEdit::Drop(i) => { if let Some(k) = key(*i) { map.remove(&k); } }
                IndexEdit::Point(i, f) => { if let Some(k) = key(*i) { map.insert(k, json!(f)); } }
                IndexEdit::Add(n, f) => { map.insert(n.clone(), json!(f)); }
                IndexEdit::NotAString(i) => { if let Some(k) = key(*i) { map.insert(k, json!(5)); } }
                IndexEdit::Raw(b) => raw = Some(b.clone()),
                IndexEdit::NoWeightMap => drop_map = true,
            }
        }
        let index = if drop_map { json!({"metadata": {}}) } else { json!({"metadata": {}, "weight_map": map}) };
        let text = raw.unwrap_or_else(|| serde_json::to_vec(&index).unwrap());
        fs::write(tmp.path().join("model.safetensors.index.json"), &text).unwrap();
        if let Ok(ck) = Checkpoint::open(tmp.path()) {
            // accepted: the index names exactly the tensors the shards hold, where they are
            let index: Value = serde_json::from_slice(&text).unwrap();
            let map = index["weight_map"].as_object().unwrap();
            prop_assert_eq!(map.len(), ck.len());
            for (name, file) in map {
                let (shard, _) = ck.get(name).expect("every indexed tensor is in a shard");
                prop_assert_eq!(ck.shards[shard].path.file_name().unwrap().to_str(), file.as_str());
            }
        }
    }
}
