//! The two I/O paths (Linux fast path, portable path) write the same bytes. One build runs
//! both: the plan's `portable_io` picks the portable path per run. Sizes cross every boundary
//! of both: a contiguous copy longer than one portable chunk (8 MiB), column segments at and
//! above the 1 MiB direct-copy threshold between short ones, and more short segments than one
//! gather buffer (1 MiB) or one `pwritev` batch (1024 segments) holds.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use gslice_engine::io::IoPath;
use gslice_engine::{execute, Checkpoint, Plan, Progress, Report};
use serde_json::{json, Value};

const MIB: u64 = 1 << 20;

/// A U8 tensor whose bytes all differ from their neighbours' (a pseudo-random pattern), so
/// that any misplaced byte shows.
fn pattern(n: u64, seed: u64) -> Vec<u8> {
    (0..n).map(|k| ((k.wrapping_mul(2_654_435_761) ^ seed) >> 7) as u8).collect()
}

/// Writes a safetensors file; returns each tensor's bytes.
fn write_source(path: &Path, tensors: &[(&str, &str, [u64; 2])]) -> BTreeMap<String, Vec<u8>> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    let mut bytes = BTreeMap::new();
    for (i, (name, dtype, [r, c])) in tensors.iter().enumerate() {
        let size = if *dtype == "BF16" { 2 } else { 1 };
        let mut b = pattern(r * c * size, i as u64 * 977);
        if *dtype == "BF16" {
            // finite values only: clear each element's top exponent bit
            b.iter_mut().skip(1).step_by(2).for_each(|x| *x &= 0x3F);
        }
        header.insert(name.to_string(), json!({"dtype": dtype, "shape": [r, c], "data_offsets": [data.len(), data.len() + b.len()]}));
        data.extend_from_slice(&b);
        bytes.insert(name.to_string(), b);
    }
    let text = serde_json::to_vec(&header).unwrap();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    out.extend(data);
    fs::write(path, out).unwrap();
    bytes
}

fn cols(ranges: &[(u64, u64)]) -> Value {
    json!({"kind": "cols", "ranges": ranges})
}

fn rows(ranges: &[(u64, u64)]) -> Value {
    json!({"kind": "rows", "ranges": ranges})
}

/// The expected bytes of a U8 tensor after a column operation, computed naively.
fn sliced_cols(src: &[u8], width: u64, ranges: &[(u64, u64)]) -> Vec<u8> {
    src.chunks(width as usize).flat_map(|row| ranges.iter().flat_map(move |&(b, e)| row[b as usize..e as usize].to_vec())).collect()
}

fn sliced_rows(src: &[u8], width: u64, ranges: &[(u64, u64)]) -> Vec<u8> {
    ranges.iter().flat_map(|&(b, e)| src[(b * width) as usize..(e * width) as usize].to_vec()).collect()
}

fn run(src: &Path, out: &Path, portable: bool) -> Report {
    let wide_cols = [(0, MIB + 5), (MIB + 100, MIB + 200), (2 * MIB, 3 * MIB)];
    let many_cols = [(0, 40), (48, 50)];
    let quant = json!({"bits": 4, "group_size": 32, "scale_name": "q_scale", "shape_name": "q_shape"});
    let tensors = json!([
        {"name": "copy", "source": "big"},
        {"name": "rows", "source": "big", "op": rows(&[(1, 11)])},
        {"name": "wide", "source": "wide", "op": cols(&wide_cols)},
        {"name": "many", "source": "many", "op": cols(&many_cols)},
        {"name": "q", "source": "bf16", "op": rows(&[(2, 40), (50, 64)]), "quant": quant}
    ]);
    let manifest = json!({"name": "manifest.json", "fields": {"what": "io paths"}});
    let plan: Plan = serde_json::from_value(json!({
        "source": src, "max_shard_size": 16 * MIB, "portable_io": portable, "band_bytes": 3 * MIB,
        "outputs": [
            {"dir": out.join("a"), "tensors": tensors, "manifest": manifest, "files": [{"name": "config.json", "text": "{}"}]},
            {"dir": out.join("b"), "tensors": [{"name": "many", "source": "many", "op": cols(&many_cols)}], "manifest": manifest}
        ]
    }))
    .unwrap();
    execute(&plan, &Progress::default(), &AtomicBool::new(false)).unwrap()
}

fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir).unwrap().map(|e| e.unwrap()).map(|e| (e.file_name().to_string_lossy().into_owned(), fs::read(e.path()).unwrap())).collect()
}

#[test]
fn the_portable_path_writes_the_same_bytes_as_the_fast_path() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src.safetensors");
    let original = write_source(
        &src,
        &[("big", "U8", [12, MIB]), ("wide", "U8", [3, 3 * MIB]), ("many", "U8", [40_000, 64]), ("bf16", "BF16", [64, 96])],
    );
    let (fast_out, portable_out) = (tmp.path().join("fast"), tmp.path().join("portable"));
    let fast = run(&src, &fast_out, false);
    let portable = run(&src, &portable_out, true);

    assert_eq!(fast.io, IoPath::choose(false));
    assert_eq!(portable.io, IoPath::Portable);
    assert_eq!(portable.bytes_kernel_copied, 0);
    assert_eq!(fast.bytes_written, portable.bytes_written);
    if cfg!(target_os = "linux") && !cfg!(feature = "portable-io") {
        assert_eq!(fast.io, IoPath::LinuxFast);
    }

    // The fast path's tensors hold the bytes a naive slice of the source gives.
    let ck = Checkpoint::open(&fast_out.join("a")).unwrap();
    let tensor = |name: &str| {
        let (s, t) = ck.get(name).unwrap();
        ck.shards[s].map[t.start as usize..(t.start + t.len) as usize].to_vec()
    };
    assert_eq!(tensor("copy"), original["big"]);
    assert_eq!(tensor("rows"), sliced_rows(&original["big"], MIB, &[(1, 11)]));
    assert_eq!(tensor("wide"), sliced_cols(&original["wide"], 3 * MIB, &[(0, MIB + 5), (MIB + 100, MIB + 200), (2 * MIB, 3 * MIB)]));
    assert_eq!(tensor("many"), sliced_cols(&original["many"], 64, &[(0, 40), (48, 50)]));
    drop(ck);

    // And the portable path's folders are byte-identical to the fast path's, file by file.
    for out in ["a", "b"] {
        let (f, p) = (files(&fast_out.join(out)), files(&portable_out.join(out)));
        assert_eq!(f.keys().collect::<Vec<_>>(), p.keys().collect::<Vec<_>>());
        for (name, bytes) in &f {
            assert!(bytes == &p[name], "{out}/{name} differs between the fast and the portable path");
        }
    }
    assert!(files(&fast_out.join("a")).len() >= 4, "shards, index, config and manifest");
}
