//! Where every byte goes, decided before anything is written. Identical output tensors
//! (same name, source, operation and quantization) are written once: tensors are grouped by the exact set of
//! outputs that contain them, each group becomes one or more physical shard files ("pieces"),
//! and every output folder links the pieces it needs under its own shard names. A GGUF output
//! is one piece of its own, renamed into place as the output file.

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::gguf;
use crate::plan::{Container, Op, OutputSpec, QuantSpec, Resolved};

pub struct Piece {
    /// Indices into `Layout::tensors`, in file order.
    pub tensors: Vec<usize>,
    /// Absolute file offset of each tensor's data (its first part's).
    pub offsets: Vec<u64>,
    /// Length prefix + JSON header, padded to 8 bytes.
    pub header: Vec<u8>,
    /// Data known at planning time (a quantized tensor's shape): (file offset, bytes).
    pub literals: Vec<(u64, Vec<u8>)>,
    /// safetensors entries in the header (GGUF: tensors).
    pub entries: usize,
    pub size: u64,
    /// A GGUF piece's manifest digest: where its 64 hex digits go once the file is hashed.
    pub digest_at: Option<u64>,
    /// Alignment padding between tensors: zeros already (the file is allocated zeroed).
    pub gaps: Vec<(u64, u64)>,
}

pub struct OutputLayout {
    /// (file name in the output folder, piece index)
    pub shards: Vec<(String, usize)>,
    pub weight_map: BTreeMap<String, String>,
    /// Sum of tensor bytes, as the index's `total_size` counts it.
    pub total_size: u64,
    /// A single-file output (GGUF): its one piece becomes the output path itself.
    pub single_file: bool,
}

pub struct Layout {
    pub tensors: Vec<Resolved>,
    pub pieces: Vec<Piece>,
    pub outputs: Vec<OutputLayout>,
}

type Key = (String, String, Op, Option<QuantSpec>);

/// `per_output[o]` is output o's tensors in plan order, `specs[o]` its spec. With `dedupe` off
/// every output gets its own pieces.
pub fn build(
    per_output: Vec<Vec<Resolved>>,
    specs: &[OutputSpec],
    max_shard_size: u64,
    dedupe: bool,
    metadata: &BTreeMap<String, String>,
) -> Result<Layout> {
    let mut folders = Vec::new();
    let mut files = Vec::new();
    for (o, list) in per_output.into_iter().enumerate() {
        match specs[o].container {
            Container::Safetensors => folders.push((o, list)),
            Container::Gguf => files.push((o, list)),
        }
    }
    let folder_index: Vec<usize> = folders.iter().map(|f| f.0).collect();
    let mut layout = build_folders(folders.into_iter().map(|f| f.1).collect(), max_shard_size, dedupe, metadata)?;
    let mut outputs: Vec<Option<OutputLayout>> = (0..specs.len()).map(|_| None).collect();
    for (o, ol) in folder_index.into_iter().zip(std::mem::take(&mut layout.outputs)) {
        outputs[o] = Some(ol);
    }
    for (o, list) in files {
        outputs[o] = Some(add_gguf(&mut layout, list, &specs[o]).map_err(|e| Error::Plan(format!("{}: {e}", specs[o].dir.display())))?);
    }
    layout.outputs = outputs.into_iter().map(|o| o.expect("every output is laid out")).collect();
    Ok(layout)
}

/// One GGUF output: its tensors in plan order, laid out as one piece.
fn add_gguf(layout: &mut Layout, list: Vec<Resolved>, spec: &OutputSpec) -> std::result::Result<OutputLayout, String> {
    if list.is_empty() {
        return Err("a GGUF output needs tensors".into());
    }
    let entries: Vec<gguf::TensorEntry> = list
        .iter()
        .map(|r| gguf::TensorEntry {
            name: &r.name,
            shape: &r.shape,
            ggml: r.gguf.as_ref().expect("GGUF tensors are resolved as such").ggml,
            nbytes: r.nbytes,
        })
        .collect();
    let manifest = spec.manifest.as_ref().map(|m| (m.name.as_str(), &m.fields));
    let file = gguf::layout(&spec.metadata, &entries, spec.alignment.unwrap_or(gguf::DEFAULT_ALIGNMENT), manifest)?;
    let first = layout.tensors.len();
    let name = spec.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let weight_map = list.iter().map(|r| (r.name.clone(), name.clone())).collect();
    let total_size = list.iter().map(|r| r.nbytes).sum();
    let n = list.len();
    let ends = file.offsets.iter().zip(&list).map(|(o, r)| o + r.nbytes);
    let starts = file.offsets.iter().skip(1).copied().chain([file.size]);
    let gaps = ends.zip(starts).filter(|(e, s)| s > e).collect();
    layout.tensors.extend(list);
    layout.pieces.push(Piece {
        tensors: (first..first + n).collect(),
        offsets: file.offsets,
        header: file.header,
        literals: Vec::new(),
        entries: n,
        size: file.size,
        digest_at: file.digest_at,
        gaps,
    });
    Ok(OutputLayout { shards: vec![(name, layout.pieces.len() - 1)], weight_map, total_size, single_file: true })
}

fn build_folders(
    per_output: Vec<Vec<Resolved>>,
    max_shard_size: u64,
    dedupe: bool,
    metadata: &BTreeMap<String, String>,
) -> Result<Layout> {
    let n_lists = per_output.len();
    let (tensors, members, order) = unique_tensors(per_output, dedupe)?;
    let mut groups: Vec<(Vec<usize>, Vec<usize>)> = Vec::new();
    let mut group_of: HashMap<Vec<usize>, usize> = HashMap::new();
    for &uid in &order {
        let set = &members[uid];
        let g = *group_of.entry(set.clone()).or_insert_with(|| {
            groups.push((set.clone(), Vec::new()));
            groups.len() - 1
        });
        groups[g].1.push(uid);
    }
    let n_outputs = members.iter().flatten().max().map_or(0, |m| m + 1).max(n_lists);
    let mut pieces = Vec::new();
    let mut pieces_of_output: Vec<Vec<usize>> = vec![Vec::new(); n_outputs];
    for (set, uids) in &groups {
        for chunk in split_by_size(uids, &tensors, max_shard_size) {
            let piece = make_piece(chunk, &tensors, metadata)?;
            for &o in set {
                pieces_of_output[o].push(pieces.len());
            }
            pieces.push(piece);
        }
    }
    let outputs = pieces_of_output
        .into_iter()
        .map(|ps| output_layout(&ps, &pieces, &tensors))
        .collect();
    Ok(Layout { tensors, pieces, outputs })
}

/// Returns the distinct tensors, for each the sorted outputs that hold it, and the order in
/// which they were first met.
#[allow(clippy::type_complexity)]
fn unique_tensors(per_output: Vec<Vec<Resolved>>, dedupe: bool) -> Result<(Vec<Resolved>, Vec<Vec<usize>>, Vec<usize>)> {
    let mut tensors: Vec<Resolved> = Vec::new();
    let mut members: Vec<Vec<usize>> = Vec::new();
    let mut order = Vec::new();
    let mut by_key: HashMap<(Key, usize), usize> = HashMap::new();
    for (o, list) in per_output.into_iter().enumerate() {
        if list.is_empty() {
            return Err(Error::Plan(format!("output #{o} has no tensors")));
        }
        let mut names = std::collections::HashSet::new();
        for t in list {
            for part in &t.parts {
                if !names.insert(part.name.clone()) {
                    return Err(Error::Plan(format!("output #{o} lists tensor {} twice", part.name)));
                }
            }
            let key = ((t.name.clone(), t.src.name.clone(), t.op.clone(), t.quant.clone()), if dedupe { 0 } else { o });
            let uid = *by_key.entry(key).or_insert_with(|| {
                tensors.push(t);
                members.push(Vec::new());
                order.push(tensors.len() - 1);
                tensors.len() - 1
            });
            members[uid].push(o);
        }
    }
    Ok((tensors, members, order))
}

fn split_by_size<'a>(uids: &'a [usize], tensors: &[Resolved], max: u64) -> Vec<&'a [usize]> {
    let mut out = Vec::new();
    let (mut start, mut size) = (0, 0u64);
    for (i, &u) in uids.iter().enumerate() {
        let n = tensors[u].nbytes;
        if i > start && size + n > max {
            out.push(&uids[start..i]);
            start = i;
            size = 0;
        }
        size += n;
    }
    if start < uids.len() {
        out.push(&uids[start..]);
    }
    out
}

fn make_piece(uids: &[usize], tensors: &[Resolved], metadata: &BTreeMap<String, String>) -> Result<Piece> {
    let mut map = Map::new();
    if !metadata.is_empty() {
        map.insert("__metadata__".into(), json!(metadata));
    }
    let mut rel = 0u64;
    let mut rel_offsets = Vec::with_capacity(uids.len());
    let mut rel_literals = Vec::new();
    for &u in uids {
        rel_offsets.push(rel);
        for part in &tensors[u].parts {
            map.insert(
                part.name.clone(),
                json!({"dtype": part.dtype.name(), "shape": part.shape, "data_offsets": [rel, rel + part.nbytes]}),
            );
            if let Some(bytes) = &part.literal {
                rel_literals.push((rel, bytes.clone()));
            }
            rel += part.nbytes;
        }
    }
    let entries = map.len() - usize::from(map.contains_key("__metadata__"));
    let mut text = serde_json::to_vec(&Value::Object(map)).map_err(|e| Error::Internal(e.to_string()))?;
    // Pad so the data section starts 8-byte aligned, as the reference writer does.
    while (8 + text.len()) % 8 != 0 {
        text.push(b' ');
    }
    let mut header = (text.len() as u64).to_le_bytes().to_vec();
    header.extend_from_slice(&text);
    let data_start = header.len() as u64;
    Ok(Piece {
        tensors: uids.to_vec(),
        offsets: rel_offsets.iter().map(|r| data_start + r).collect(),
        literals: rel_literals.into_iter().map(|(r, b)| (data_start + r, b)).collect(),
        entries,
        size: data_start + rel,
        header,
        digest_at: None,
        gaps: Vec::new(),
    })
}

fn output_layout(pieces_idx: &[usize], pieces: &[Piece], tensors: &[Resolved]) -> OutputLayout {
    let n = pieces_idx.len();
    let mut shards = Vec::with_capacity(n);
    let mut weight_map = BTreeMap::new();
    let mut total_size = 0;
    for (k, &p) in pieces_idx.iter().enumerate() {
        let name = shard_name(k, n);
        for &u in &pieces[p].tensors {
            for part in &tensors[u].parts {
                weight_map.insert(part.name.clone(), name.clone());
            }
            total_size += tensors[u].nbytes;
        }
        shards.push((name, p));
    }
    OutputLayout { shards, weight_map, total_size, single_file: false }
}

pub fn shard_name(k: usize, n: usize) -> String {
    if n == 1 {
        crate::checkpoint::SINGLE_NAME.to_string()
    } else {
        format!("model-{:05}-of-{:05}.safetensors", k + 1, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::Dtype;
    use crate::header::TensorInfo;
    use crate::plan::Part;

    fn t(name: &str, src: &str, nbytes: u64) -> Resolved {
        Resolved {
            name: name.into(),
            shard: 0,
            src: TensorInfo { name: src.into(), dtype: Dtype::U8, shape: vec![nbytes], start: 0, len: nbytes },
            op: Op::Copy,
            dtype: Dtype::U8,
            shape: vec![nbytes],
            quant: None,
            gguf: None,
            parts: vec![Part { name: name.into(), dtype: Dtype::U8, shape: vec![nbytes], nbytes, literal: None }],
            nbytes,
        }
    }

    /// A quantized tensor: packed words, scales, and a literal shape.
    fn q(name: &str, src: &str, group_size: u64) -> Resolved {
        let spec = QuantSpec::CompressedTensors { bits: 4, group_size, scale_name: format!("{name}.s"), shape_name: format!("{name}.shape") };
        let part = |n: String, dtype, nbytes, literal: Option<Vec<u8>>| Part { name: n, dtype, shape: vec![nbytes], nbytes, literal };
        Resolved {
            quant: Some(spec),
            parts: vec![
                part(name.into(), Dtype::U8, 8, None),
                part(format!("{name}.s"), Dtype::U8, 4, None),
                part(format!("{name}.shape"), Dtype::U8, 2, Some(vec![7, 9])),
            ],
            nbytes: 14,
            ..t(name, src, 16)
        }
    }

    #[test]
    fn quantized_tensors_lay_out_their_parts_back_to_back() {
        let l = build_folders(vec![vec![t("a", "a", 3), q("w", "w", 4)]], 100, true, &BTreeMap::new()).unwrap();
        let p = &l.pieces[0];
        assert_eq!(p.entries, 4);
        let data = p.header.len() as u64;
        assert_eq!(p.offsets, [data, data + 3]);
        assert_eq!(p.literals, [(data + 3 + 12, vec![7, 9])]);
        assert_eq!(p.size, data + 17);
        assert_eq!(l.outputs[0].weight_map.keys().collect::<Vec<_>>(), ["a", "w", "w.s", "w.shape"]);
        assert_eq!(l.outputs[0].total_size, 17);
        let text = String::from_utf8(p.header[8..].to_vec()).unwrap();
        assert!(text.contains(r#""w.s":{"data_offsets":[11,15]"#), "{text}");
    }

    #[test]
    fn quantization_is_part_of_the_identity_of_a_tensor() {
        let l = build_folders(vec![vec![q("w", "w", 4)], vec![q("w", "w", 8)], vec![q("w", "w", 4)]], 100, true, &BTreeMap::new()).unwrap();
        assert_eq!(l.tensors.len(), 2);
        let l = build_folders(vec![vec![t("w", "w", 16)], vec![q("w", "w", 4)]], 100, true, &BTreeMap::new()).unwrap();
        assert_eq!(l.tensors.len(), 2);
        // A quantized tensor's scale name may not collide with another tensor of the output.
        assert!(build_folders(vec![vec![q("w", "w", 4), t("w.s", "x", 2)]], 100, true, &BTreeMap::new()).is_err());
    }

    #[test]
    fn splits_by_size_and_names_shards() {
        let l = build_folders(vec![vec![t("a", "a", 6), t("b", "b", 6), t("c", "c", 3)]], 10, true, &BTreeMap::new()).unwrap();
        assert_eq!(l.pieces.len(), 2);
        assert_eq!(l.pieces[0].tensors, [0]);
        assert_eq!(l.pieces[1].tensors, [1, 2]);
        let o = &l.outputs[0];
        assert_eq!(o.shards[1].0, "model-00002-of-00002.safetensors");
        assert_eq!(o.weight_map["c"], "model-00002-of-00002.safetensors");
        assert_eq!(o.total_size, 15);
        assert_eq!(l.pieces[1].header.len() % 8, 0);
    }

    #[test]
    fn shares_tensors_common_to_outputs() {
        let a = vec![t("e", "e", 4), t("x", "x", 2)];
        let b = vec![t("e", "e", 4), t("y", "y", 2)];
        let l = build_folders(vec![a.clone(), b.clone()], 100, true, &BTreeMap::new()).unwrap();
        // groups: {0,1}: e ; {0}: x ; {1}: y
        assert_eq!(l.pieces.len(), 3);
        assert_eq!(l.outputs[0].shards.iter().map(|s| s.1).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(l.outputs[1].shards.iter().map(|s| s.1).collect::<Vec<_>>(), [0, 2]);
        let l = build_folders(vec![a, b], 100, false, &BTreeMap::new()).unwrap();
        assert_eq!(l.pieces.len(), 2);
        assert_eq!(l.outputs[1].shards[0].0, "model.safetensors");
    }

    #[test]
    fn same_source_under_another_name_is_not_shared() {
        let l = build_folders(vec![vec![t("l.20", "l.25", 4)], vec![t("l.25", "l.25", 4)]], 100, true, &BTreeMap::new()).unwrap();
        assert_eq!(l.pieces.len(), 2);
    }

    #[test]
    fn refuses_duplicate_names_and_empty_outputs() {
        assert!(build_folders(vec![vec![t("a", "a", 1), t("a", "b", 1)]], 10, true, &BTreeMap::new()).is_err());
        assert!(build_folders(vec![vec![]], 10, true, &BTreeMap::new()).is_err());
    }
}
