//! End-to-end engine tests on small hand-made checkpoints: every operation's bytes, sharding,
//! de-duplicated outputs, atomic output and strict index checks.

use std::fs;
#[cfg(unix)]
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use gslice_engine::{execute, Checkpoint, Error, Plan, Progress};
use serde_json::json;

/// Writes a safetensors file of U8 tensors; tensor `i` of shape [r, c] holds bytes
/// `seed + k` for k in 0..r*c so every byte position is distinguishable.
fn write_st(path: &Path, tensors: &[(&str, [u64; 2], u8)]) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, [r, c], seed) in tensors {
        let n = (r * c) as usize;
        header.insert(
            name.to_string(),
            json!({"dtype": "U8", "shape": [r, c], "data_offsets": [data.len(), data.len() + n]}),
        );
        data.extend((0..n).map(|k| seed.wrapping_add(k as u8)));
    }
    let text = serde_json::to_vec(&header).unwrap();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    out.extend(data);
    fs::write(path, out).unwrap();
}

fn sharded_source(dir: &Path) -> PathBuf {
    let src = dir.join("src");
    fs::create_dir(&src).unwrap();
    write_st(&src.join("a.safetensors"), &[("w", [4, 6], 0), ("v", [3, 2], 100)]);
    write_st(&src.join("b.safetensors"), &[("e", [5, 8], 50)]);
    let index = json!({"metadata": {}, "weight_map": {"w": "a.safetensors", "v": "a.safetensors", "e": "b.safetensors"}});
    fs::write(src.join("model.safetensors.index.json"), index.to_string()).unwrap();
    src
}

fn run(plan: serde_json::Value) -> Result<gslice_engine::Report, Error> {
    let plan: Plan = serde_json::from_value(plan).unwrap();
    execute(&plan, &Progress::default(), &AtomicBool::new(false))
}

fn tensor_bytes(dir: &Path, name: &str) -> (Vec<u64>, Vec<u8>) {
    let ck = Checkpoint::open(dir).unwrap();
    let (s, t) = ck.get(name).unwrap();
    let map = &ck.shards[s].map;
    (t.shape.clone(), map[t.start as usize..(t.start + t.len) as usize].to_vec())
}

fn leftovers(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect()
}

#[test]
fn every_operation_writes_the_expected_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let src = sharded_source(tmp.path());
    let out = tmp.path().join("out");
    let report = run(json!({
        "source": src, "max_shard_size": 40, "metadata": {"format": "pt"},
        "outputs": [{"dir": out, "tensors": [
            {"name": "copy", "source": "w"},
            {"name": "rows", "source": "w", "op": {"kind": "rows", "ranges": [[0, 2]]}},
            {"name": "row_blocks", "source": "e", "op": {"kind": "rows", "ranges": [[0, 1], [3, 5]]}},
            {"name": "cols", "source": "w", "op": {"kind": "cols", "ranges": [[0, 3]]}},
            {"name": "col_blocks", "source": "e", "op": {"kind": "cols", "ranges": [[2, 4], [6, 8]]}}
        ], "files": [{"name": "config.json", "text": "{}"}]}]
    }))
    .unwrap();

    let w: Vec<u8> = (0..24).collect();
    let e: Vec<u8> = (0..40).map(|k| 50 + k).collect();
    assert_eq!(tensor_bytes(&out, "copy"), (vec![4, 6], w.clone()));
    assert_eq!(tensor_bytes(&out, "rows"), (vec![2, 6], w[..12].to_vec()));
    let rb: Vec<u8> = [&e[0..8], &e[24..40]].concat();
    assert_eq!(tensor_bytes(&out, "row_blocks"), (vec![3, 8], rb));
    let cols: Vec<u8> = (0..4).flat_map(|r| w[r * 6..r * 6 + 3].to_vec()).collect();
    assert_eq!(tensor_bytes(&out, "cols"), (vec![4, 3], cols));
    let cb: Vec<u8> = (0..5).flat_map(|r| [&e[r * 8 + 2..r * 8 + 4], &e[r * 8 + 6..r * 8 + 8]].concat()).collect();
    assert_eq!(tensor_bytes(&out, "col_blocks"), (vec![5, 4], cb));

    // 40-byte shards force a split; the index must describe it.
    let n = report.outputs[0].shards.len();
    assert!(n > 1);
    let index: serde_json::Value = serde_json::from_slice(&fs::read(out.join("model.safetensors.index.json")).unwrap()).unwrap();
    assert_eq!(index["metadata"]["total_size"], 24 + 12 + 24 + 12 + 20);
    assert_eq!(index["weight_map"]["col_blocks"], format!("model-{n:05}-of-{n:05}.safetensors"));
    assert_eq!(fs::read_to_string(out.join("config.json")).unwrap(), "{}");
    assert_eq!(Checkpoint::open(&out).unwrap().shards[0].header.metadata["format"], "pt");
    assert!(leftovers(tmp.path()).is_empty());
}

/// Whether two paths are links to one file: a byte appended through `a` shows through `b`
/// (then it is removed again). Works wherever links do, without inode numbers.
fn same_file(a: &Path, b: &Path) -> bool {
    let len = fs::metadata(a).unwrap().len();
    let f = fs::OpenOptions::new().append(true).open(a).unwrap();
    std::io::Write::write_all(&mut &f, b"!").unwrap();
    let seen = fs::metadata(b).unwrap().len() == len + 1;
    f.set_len(len).unwrap();
    seen
}

#[test]
fn shared_tensors_are_written_once_and_hard_linked() {
    let tmp = tempfile::tempdir().unwrap();
    let src = sharded_source(tmp.path());
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    fs::write(src.join("tok.json"), "tokens").unwrap();
    let tok = json!([{"name": "tok.json", "copy_from": src.join("tok.json")}]);
    let report = run(json!({
        "source": src,
        "outputs": [
            {"dir": a, "tensors": [{"name": "e", "source": "e"}, {"name": "w", "source": "w"}], "files": tok},
            {"dir": b, "tensors": [{"name": "e", "source": "e"}, {"name": "v", "source": "v"}], "files": tok}
        ]
    }))
    .unwrap();
    assert_eq!(report.distinct_tensors, 3);
    // copied side files are staged once and linked too
    assert!(same_file(&a.join("tok.json"), &b.join("tok.json")));
    assert_eq!(fs::read_to_string(b.join("tok.json")).unwrap(), "tokens");
    assert!(same_file(&a.join("model-00001-of-00002.safetensors"), &b.join("model-00001-of-00002.safetensors")));
    assert!(!same_file(&a.join("model-00002-of-00002.safetensors"), &b.join("model-00002-of-00002.safetensors")));
    assert_eq!(tensor_bytes(&b, "v").1, vec![100, 101, 102, 103, 104, 105]);
}

#[test]
fn only_a_previous_output_is_replaced_and_only_once_the_new_one_is_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let src = sharded_source(tmp.path());
    let out = tmp.path().join("out");
    fs::create_dir(&out).unwrap();
    fs::write(out.join("old.txt"), "x").unwrap();
    let manifest = json!({"name": "manifest.json", "fields": {"tool": "test"}});
    let plan = |overwrite: bool| {
        json!({"source": src, "outputs": [{"dir": out, "overwrite": overwrite, "manifest": manifest,
               "tensors": [{"name": "v", "source": "v"}]}]})
    };
    assert!(matches!(run(plan(false)), Err(Error::Exists(_))));
    // A folder without the manifest is not gslice's: refused, untouched, nothing left behind.
    let err = run(plan(true)).unwrap_err();
    assert_eq!(err.kind(), "protected");
    assert_eq!(err.to_string(), format!("output path {} is a folder gslice did not write (it has no manifest.json); refusing to replace it", out.display()));
    assert_eq!(fs::read_to_string(out.join("old.txt")).unwrap(), "x");
    assert!(leftovers(tmp.path()).is_empty());
    // A previous output (it holds the manifest) is exchanged for the new one.
    fs::remove_file(out.join("old.txt")).unwrap();
    fs::remove_dir(&out).unwrap();
    run(plan(false)).unwrap();
    #[cfg(unix)]
    let before = fs::metadata(&out).unwrap().ino();
    fs::write(out.join("note.txt"), "old output").unwrap();
    run(plan(true)).unwrap();
    #[cfg(unix)]
    assert_ne!(fs::metadata(&out).unwrap().ino(), before);
    assert!(!out.join("note.txt").exists());
    assert!(out.join("model.safetensors").exists() && out.join("manifest.json").exists());
    assert!(leftovers(tmp.path()).is_empty());
}

#[test]
#[cfg(unix)] // FIFOs, and symbolic links without privileges
fn files_special_files_links_and_the_current_directory_are_never_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let src = sharded_source(tmp.path());
    let plan = |out: &Path| {
        json!({"source": src, "outputs": [{"dir": out, "overwrite": true,
               "manifest": {"name": "manifest.json", "fields": {}}, "tensors": [{"name": "v", "source": "v"}]}]})
    };
    let file = tmp.path().join("notes.txt");
    fs::write(&file, "mine").unwrap();
    let fifo = tmp.path().join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let gslice_out = tmp.path().join("prev");
    fs::create_dir(&gslice_out).unwrap();
    fs::write(gslice_out.join("manifest.json"), "{}").unwrap();
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&gslice_out, &link).unwrap();
    let cases = [
        (&file, "is a file gslice did not write"),
        (&fifo, "is a special file (a device, FIFO or socket)"),
        (&link, "is a symbolic link"),
        (&src.join("a.safetensors"), "lies inside the source checkpoint"),
    ];
    for (path, why) in cases {
        let err = run(plan(path)).unwrap_err();
        assert_eq!(err.to_string(), format!("output path {} {why}; refusing to replace it", path.display()));
    }
    assert_eq!(fs::read_to_string(&file).unwrap(), "mine");
    assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
    assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    let cwd = std::env::current_dir().unwrap();
    let err = run(plan(&cwd)).unwrap_err();
    assert!(err.to_string().ends_with("is the current directory or one of its parents; refusing to replace it"), "{err}");
    assert!(leftovers(tmp.path()).is_empty());
}

#[test]
fn a_failing_plan_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let src = sharded_source(tmp.path());
    let out = tmp.path().join("out");
    let err = run(json!({"source": src, "outputs": [{"dir": out, "tensors": [
        {"name": "v", "source": "v"}, {"name": "x", "source": "missing"}]}]}))
    .unwrap_err();
    assert_eq!(err.to_string(), "tensor missing (for output x) is not in the source");
    let err = run(json!({"source": src, "outputs": [{"dir": out, "tensors": [
        {"name": "v", "source": "v"}],
        "files": [{"name": "t.json", "copy_from": tmp.path().join("nope.json")}]}]}))
    .unwrap_err();
    assert!(err.to_string().starts_with("cannot copy"), "{err}");
    assert!(!out.exists());
    assert!(leftovers(tmp.path()).is_empty());
}

#[test]
fn replacing_the_source_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let src = sharded_source(tmp.path());
    let err = run(json!({"source": src, "outputs": [{"dir": src, "overwrite": true, "tensors": [{"name": "v", "source": "v"}]}]}))
        .unwrap_err();
    assert!(err.to_string().contains("holds the source checkpoint"), "{err}");
}

#[test]
fn the_index_must_agree_with_the_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let src = sharded_source(tmp.path());
    let index = src.join("model.safetensors.index.json");
    let with_map = |m: serde_json::Value| fs::write(&index, json!({"weight_map": m}).to_string()).unwrap();
    let open_err = || Checkpoint::open(&src).err().unwrap().to_string();

    with_map(json!({"w": "a.safetensors", "v": "a.safetensors", "e": "c.safetensors"}));
    assert!(open_err().ends_with("names shard c.safetensors, which does not exist"));
    with_map(json!({"w": "a.safetensors", "v": "a.safetensors", "e": "a.safetensors", "zz": "b.safetensors"}));
    assert!(open_err().ends_with("maps tensor e to a.safetensors, but it is stored in b.safetensors"));
    with_map(json!({"w": "a.safetensors", "e": "b.safetensors"}));
    assert!(open_err().ends_with("holds tensor v, which the index does not list"));
    with_map(json!({"w": "a.safetensors", "v": "a.safetensors", "e": "b.safetensors", "q": "b.safetensors"}));
    assert!(open_err().ends_with("maps tensor q to b.safetensors, which does not contain it"));

    write_st(&src.join("b.safetensors"), &[("e", [5, 8], 50), ("w", [1, 1], 0)]);
    with_map(json!({"w": "a.safetensors", "v": "a.safetensors", "e": "b.safetensors"}));
    assert!(open_err().contains("tensor w is also stored in"));
}

#[test]
fn a_truncated_shard_names_the_file_and_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let src = sharded_source(tmp.path());
    let b = src.join("b.safetensors");
    let bytes = fs::read(&b).unwrap();
    fs::write(&b, &bytes[..bytes.len() - 3]).unwrap();
    let err = Checkpoint::open(&src).err().unwrap().to_string();
    assert!(err.starts_with(&b.display().to_string()), "{err}");
    assert!(err.contains("tensor e: data_offsets end 40 lies past the end of the data section (37 bytes)"), "{err}");
}

fn sha256_hex(path: &Path) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(fs::read(path).unwrap()))
}

#[test]
fn the_manifest_lists_every_other_file_with_its_hash() {
    let tmp = tempfile::tempdir().unwrap();
    let src = sharded_source(tmp.path());
    fs::write(src.join("tok.json"), "tokens").unwrap();
    let out = tmp.path().join("out");
    let report = run(json!({
        "source": src, "max_shard_size": 40,
        "outputs": [{"dir": out, "tensors": [{"name": "w", "source": "w"}, {"name": "e", "source": "e"}],
            "files": [{"name": "config.json", "text": "{}"}, {"name": "tok.json", "copy_from": src.join("tok.json")}],
            "manifest": {"name": "manifest.json", "fields": {"tool": "test", "spec": {"k": [1, 2]}}}}]
    }))
    .unwrap();
    let m: serde_json::Value = serde_json::from_slice(&fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["tool"], "test");
    assert_eq!(m["spec"]["k"], json!([1, 2]));
    let listed: Vec<&String> = m["files"].as_object().unwrap().keys().collect();
    let mut on_disk: Vec<String> = fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    on_disk.retain(|n| n != "manifest.json");
    on_disk.sort();
    assert_eq!(listed, on_disk.iter().collect::<Vec<_>>());
    for name in &on_disk {
        let p = out.join(name);
        assert_eq!(m["files"][name]["sha256"], sha256_hex(&p), "{name}");
        assert_eq!(m["files"][name]["size"], fs::metadata(&p).unwrap().len(), "{name}");
    }
    let shard_bytes: u64 = report.outputs[0].shards.iter().map(|s| s.bytes).sum();
    assert_eq!(report.bytes_hashed, shard_bytes);
    let manifest = report.outputs[0].files.iter().find(|f| f.name == "manifest.json").unwrap();
    assert_eq!(manifest.sha256.as_deref(), Some(sha256_hex(&out.join("manifest.json")).as_str()));
    assert!(leftovers(tmp.path()).is_empty());
}

#[test]
fn a_dry_run_reports_the_files_and_creates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let src = sharded_source(tmp.path());
    let plan = |dir: PathBuf, dry: bool| json!({
        "source": src, "max_shard_size": 40, "dry_run": dry,
        "outputs": [{"dir": dir, "tensors": [{"name": "w", "source": "w"}, {"name": "e", "source": "e"}],
            "files": [{"name": "config.json", "text": "{}"}],
            "manifest": {"name": "manifest.json", "fields": {"tool": "test"}}}]
    });
    let dry = run(plan(tmp.path().join("sub/out"), true)).unwrap();
    assert!(!tmp.path().join("sub").exists());
    assert!(dry.dry_run && dry.bytes_hashed == 0);
    let real = run(plan(tmp.path().join("sub/out"), false)).unwrap();
    let sizes = |r: &gslice_engine::Report| r.outputs[0].files.iter().map(|f| (f.name.clone(), f.bytes)).collect::<Vec<_>>();
    assert_eq!(sizes(&dry), sizes(&real));
    assert_eq!(dry.bytes_written, real.bytes_written);
    for f in &real.outputs[0].files {
        assert_eq!(fs::metadata(tmp.path().join("sub/out").join(&f.name)).unwrap().len(), f.bytes);
    }
}

#[test]
fn an_index_can_be_asked_for_a_single_shard_with_more_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    let src = sharded_source(tmp.path());
    let plan = |dir: PathBuf, index: serde_json::Value, dry: bool| json!({
        "source": src, "dry_run": dry, "metadata": {"format": "mlx"},
        "outputs": [{"dir": dir, "tensors": [{"name": "w", "source": "w"}, {"name": "e", "source": "e"}], "index": index}]
    });
    let index = json!({"always": true, "metadata": {"total_parameters": 64}});
    let out = tmp.path().join("one");
    let dry = run(plan(out.clone(), index.clone(), true)).unwrap();
    let report = run(plan(out.clone(), index, false)).unwrap();
    assert_eq!(report.outputs[0].shards.len(), 1);
    let files = |r: &gslice_engine::Report| r.outputs[0].files.iter().map(|f| (f.name.clone(), f.bytes)).collect::<Vec<_>>();
    assert_eq!(files(&dry), files(&report));
    let text = fs::read(out.join("model.safetensors.index.json")).unwrap();
    let index: serde_json::Value = serde_json::from_slice(&text).unwrap();
    assert_eq!(index, json!({"metadata": {"total_size": 24 + 40, "total_parameters": 64},
                             "weight_map": {"e": "model.safetensors", "w": "model.safetensors"}}));
    let ck = Checkpoint::open(&out).unwrap();
    assert_eq!(ck.shards[0].header.metadata["format"], "mlx");

    // By default one shard has no index; total_size is the engine's to write.
    let plain = tmp.path().join("plain");
    run(plan(plain.clone(), json!({}), false)).unwrap();
    assert!(!plain.join("model.safetensors.index.json").exists());
    let err = run(plan(tmp.path().join("bad"), json!({"metadata": {"total_size": 1}}), false)).unwrap_err();
    assert!(err.to_string().contains("must not contain \"total_size\""), "{err}");
    assert!(!tmp.path().join("bad").exists());
}

#[test]
fn outputs_report_which_pieces_they_share() {
    let tmp = tempfile::tempdir().unwrap();
    let src = sharded_source(tmp.path());
    let report = run(json!({
        "source": src,
        "outputs": [
            {"dir": tmp.path().join("a"), "tensors": [{"name": "e", "source": "e"}, {"name": "w", "source": "w"}]},
            {"dir": tmp.path().join("b"), "tensors": [{"name": "e", "source": "e"}, {"name": "v", "source": "v"}]},
            {"dir": tmp.path().join("c"), "tensors": [{"name": "e", "source": "e"}]}
        ]
    }))
    .unwrap();
    let shared: Vec<Vec<(usize, usize)>> = report.outputs.iter().map(|o| o.shards.iter().map(|s| (s.piece, s.shared_by)).collect()).collect();
    assert_eq!(shared, vec![vec![(0, 3), (1, 1)], vec![(0, 3), (2, 1)], vec![(0, 3)]]);
}

fn compare_plan(src: &Path, out: &Path, tensors: serde_json::Value) -> Vec<(String, String)> {
    let plan: gslice_engine::compare::ComparePlan = serde_json::from_value(json!({"source": src, "output": out, "tensors": tensors})).unwrap();
    let r = gslice_engine::compare(&plan, &Progress::default(), &AtomicBool::new(false)).unwrap();
    r.mismatches.into_iter().map(|m| (m.tensor, m.problem)).collect()
}

#[test]
fn compare_finds_changed_bytes_and_missing_or_unexpected_tensors() {
    let tmp = tempfile::tempdir().unwrap();
    let src = sharded_source(tmp.path());
    let out = tmp.path().join("out");
    let tensors = json!([
        {"name": "w", "source": "w"},
        {"name": "cb", "source": "e", "op": {"kind": "cols", "ranges": [[2, 4], [6, 8]]}},
        {"name": "rb", "source": "e", "op": {"kind": "rows", "ranges": [[0, 1], [3, 5]]}}
    ]);
    run(json!({"source": src, "outputs": [{"dir": out, "tensors": tensors}]})).unwrap();
    assert_eq!(compare_plan(&src, &out, tensors.clone()), vec![]);

    // Flip byte 5 of tensor cb (row 1, its second column block).
    let ck = Checkpoint::open(&out).unwrap();
    let (_, t) = ck.get("cb").unwrap();
    let at = (t.start + 5) as usize;
    drop(ck);
    let file = out.join("model.safetensors");
    let mut bytes = fs::read(&file).unwrap();
    bytes[at] ^= 0xff;
    fs::write(&file, bytes).unwrap();
    assert_eq!(
        compare_plan(&src, &out, tensors.clone()),
        vec![("cb".into(), "bytes differ from the source's slice (first difference at byte 5 of the tensor)".into())]
    );

    let fewer = json!([{"name": "w", "source": "w"}, {"name": "rb", "source": "e", "op": {"kind": "rows", "ranges": [[0, 1], [3, 5]]}},
                       {"name": "zz", "source": "v"}]);
    assert_eq!(
        compare_plan(&src, &out, fewer),
        vec![
            ("cb".into(), "is not produced by the spec (unexpected tensor)".into()),
            ("zz".into(), "missing from the output".into()),
        ]
    );
    let wrong_shape = json!([{"name": "w", "source": "w", "op": {"kind": "rows", "ranges": [[0, 2]]}}, {"name": "cb", "source": "e"}, {"name": "rb", "source": "e"}]);
    let m = compare_plan(&src, &out, wrong_shape);
    assert_eq!(m[0], ("cb".into(), "is U8 [5, 4], expected U8 [5, 8]".into()));
    assert_eq!(m[2], ("w".into(), "is U8 [4, 6], expected U8 [2, 6]".into()));
}

// -- quantization -------------------------------------------------------------------------

use gslice_engine::quant::{self, Affine, Kernel, Symmetric};

/// Writes one BF16 tensor holding a deterministic, sign-varying pattern (and exact zeros in
/// row 1 so that all-zero groups occur).
fn write_bf16(path: &Path, name: &str, rows: u64, cols: u64) -> Vec<f32> {
    let vals: Vec<f32> = (0..rows * cols)
        .map(|k| {
            let (r, c) = (k / cols, k % cols);
            if r == 1 { 0.0 } else { ((k * 7919 % 1013) as f32 - 506.0) * 0.001 * (1.0 + (c % 5) as f32) }
        })
        .map(|v| quant::bf16_to_f32(quant::bf16_bits(v)))
        .collect();
    let header = json!({name: {"dtype": "BF16", "shape": [rows, cols], "data_offsets": [0, rows * cols * 2]}});
    let text = serde_json::to_vec(&header).unwrap();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    out.extend(vals.iter().flat_map(|&v| quant::bf16_bits(v).to_le_bytes()));
    fs::write(path, out).unwrap();
    vals
}

/// Quantizes an already-sliced matrix row by row with the kernel: the fused engine path
/// (slicing and quantizing straight from the map, in bands) must give the same bytes of each
/// row part.
fn quantize_whole(rows: &[Vec<f32>], k: Kernel) -> Vec<Vec<u8>> {
    let mut outs = vec![Vec::new(); k.row_parts(rows[0].len() as u64).len()];
    let (mut st, mut buf) = (quant::Stats::default(), quant::RowBuf::default());
    for r in rows {
        buf.xs.clear();
        buf.xs.extend_from_slice(r);
        k.quantize_row(&mut buf, &mut outs, &mut st);
    }
    outs
}

fn quant_spec(name: &str, bits: u32, group_size: u64) -> serde_json::Value {
    json!({"bits": bits, "group_size": group_size, "scale_name": format!("{name}_scale"), "shape_name": format!("{name}_shape")})
}

fn affine_spec(name: &str, bits: u32, group_size: u64) -> serde_json::Value {
    json!({"scheme": "mlx_affine", "bits": bits, "group_size": group_size, "scales_name": format!("{name}.scales"), "biases_name": format!("{name}.biases")})
}

#[test]
fn quantization_is_fused_with_every_slicing_operation() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src.safetensors");
    // Work items of 5 rows of 1024 BF16, so band offsets are exercised.
    let (rows, cols) = (210u64, 1024u64);
    let vals = write_bf16(&src, "w", rows, cols);
    let row = |r: u64| vals[(r * cols) as usize..((r + 1) * cols) as usize].to_vec();
    let out = tmp.path().join("out");
    let row_ranges = [(0u64, 4u64), (200, 210), (10, 203)];
    // 40 + 256 + 88 = 384 columns: 12 groups of 32, some straddling two ranges.
    let col_ranges = [(0u64, 40u64), (512, 768), (930, 1018)];
    let report = run(json!({"source": src, "max_shard_size": 200_000, "band_bytes": 5 * 2048, "outputs": [{"dir": out, "tensors": [
        {"name": "copy4", "source": "w", "quant": quant_spec("copy4", 4, 32)},
        {"name": "rows8", "source": "w", "op": {"kind": "rows", "ranges": row_ranges}, "quant": quant_spec("rows8", 8, 64)},
        {"name": "cols4", "source": "w", "op": {"kind": "cols", "ranges": col_ranges}, "quant": quant_spec("cols4", 4, 32)},
        {"name": "plain", "source": "w", "op": {"kind": "rows", "ranges": [[0, 1]]}}
    ]}]}))
    .unwrap();

    let copy: Vec<Vec<f32>> = (0..rows).map(row).collect();
    let picked: Vec<Vec<f32>> = row_ranges.iter().flat_map(|&(b, e)| (b..e).map(row)).collect();
    let narrowed: Vec<Vec<f32>> = (0..rows)
        .map(|r| col_ranges.iter().flat_map(|&(b, e)| row(r)[b as usize..e as usize].to_vec()).collect())
        .collect();
    for (name, m, s) in [
        ("copy4", &copy, Symmetric { bits: 4, group_size: 32 }),
        ("rows8", &picked, Symmetric { bits: 8, group_size: 64 }),
        ("cols4", &narrowed, Symmetric { bits: 4, group_size: 32 }),
    ] {
        let [words, scales] = <[Vec<u8>; 2]>::try_from(quantize_whole(m, Kernel::Symmetric(s))).unwrap();
        let (n, c) = (m.len() as u64, m[0].len() as u64);
        assert_eq!(tensor_bytes(&out, name), (vec![n, quant::words(c, s.bits)], words), "{name}");
        assert_eq!(tensor_bytes(&out, &format!("{name}_scale")), (vec![n, c / s.group_size], scales), "{name}");
        let shape: Vec<u8> = [n as i64, c as i64].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(tensor_bytes(&out, &format!("{name}_shape")), (vec![2], shape), "{name}");
    }
    let ck = Checkpoint::open(&out).unwrap();
    assert_eq!(ck.get("copy4").unwrap().1.dtype.name(), "I32");
    assert_eq!(ck.get("copy4_scale").unwrap().1.dtype.name(), "BF16");
    assert_eq!(ck.get("copy4_shape").unwrap().1.dtype.name(), "I64");

    // The report: sizes, and errors that are small but not zero.
    let q = &report.quantized;
    assert_eq!(q.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["copy4", "rows8", "cols4"]);
    assert_eq!(q[0].bytes_before, rows * cols * 2);
    assert_eq!(q[0].bytes_after, rows * cols / 2 + rows * (cols / 32) * 2 + 16);
    assert_eq!(q[1].shape, [207, 1024]);
    assert_eq!(q[2].shape, [210, 384]);
    for r in q {
        assert!(r.rel_rms_error > 0.0 && r.rel_rms_error < if r.bits == 4 { 0.2 } else { 0.02 }, "{r:?}");
        assert!(r.max_abs_error > 0.0 && r.max_abs_error <= r.rel_max_abs_error * r.weight_rms * 1.000001);
    }
    assert!(report.outputs[0].shards.len() > 1);
}

#[test]
fn affine_quantization_is_fused_with_every_slicing_operation_and_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src.safetensors");
    let (rows, cols) = (210u64, 1024u64);
    let vals = write_bf16(&src, "w", rows, cols);
    let row = |r: u64| vals[(r * cols) as usize..((r + 1) * cols) as usize].to_vec();
    let out = tmp.path().join("out");
    let row_ranges = [(0u64, 4u64), (200, 210), (10, 203)];
    let col_ranges = [(0u64, 64u64), (512, 768), (896, 1024)];
    let tensors = json!([
        {"name": "copy4", "source": "w", "quant": affine_spec("copy4", 4, 64)},
        {"name": "rows8", "source": "w", "op": {"kind": "rows", "ranges": row_ranges}, "quant": affine_spec("rows8", 8, 128)},
        {"name": "cols4", "source": "w", "op": {"kind": "cols", "ranges": col_ranges}, "quant": affine_spec("cols4", 4, 32)},
        {"name": "ct4", "source": "w", "quant": quant_spec("ct4", 4, 32)}
    ]);
    let report = run(json!({"source": src, "max_shard_size": 200_000, "band_bytes": 5 * 2048,
        "outputs": [{"dir": out, "tensors": tensors}]}))
    .unwrap();

    let copy: Vec<Vec<f32>> = (0..rows).map(row).collect();
    let picked: Vec<Vec<f32>> = row_ranges.iter().flat_map(|&(b, e)| (b..e).map(row)).collect();
    let narrowed: Vec<Vec<f32>> = (0..rows)
        .map(|r| col_ranges.iter().flat_map(|&(b, e)| row(r)[b as usize..e as usize].to_vec()).collect())
        .collect();
    for (name, m, k) in [
        ("copy4", &copy, Affine { bits: 4, group_size: 64 }),
        ("rows8", &picked, Affine { bits: 8, group_size: 128 }),
        ("cols4", &narrowed, Affine { bits: 4, group_size: 32 }),
    ] {
        let [words, scales, biases] = <[Vec<u8>; 3]>::try_from(quantize_whole(m, Kernel::Affine(k))).unwrap();
        let (n, c) = (m.len() as u64, m[0].len() as u64);
        let g = c / k.group_size;
        assert_eq!(tensor_bytes(&out, name), (vec![n, c * k.bits as u64 / 32], words), "{name}");
        assert_eq!(tensor_bytes(&out, &format!("{name}.scales")), (vec![n, g], scales), "{name}");
        assert_eq!(tensor_bytes(&out, &format!("{name}.biases")), (vec![n, g], biases), "{name}");
    }
    let ck = Checkpoint::open(&out).unwrap();
    let dtype = |n: &str| ck.get(n).unwrap().1.dtype.name();
    assert_eq!([dtype("copy4"), dtype("copy4.scales"), dtype("copy4.biases")], ["U32", "BF16", "BF16"]);

    let q = &report.quantized;
    assert_eq!(q.iter().map(|r| (r.name.as_str(), r.scheme)).collect::<Vec<_>>(), [
        ("copy4", "mlx_affine"), ("rows8", "mlx_affine"), ("cols4", "mlx_affine"), ("ct4", "compressed_tensors")
    ]);
    assert_eq!(q[0].parts, ["copy4.scales", "copy4.biases"]);
    assert_eq!(q[3].parts, ["ct4_scale", "ct4_shape"]);
    assert_eq!(q[0].bytes_after, rows * cols / 2 + 2 * rows * (cols / 64) * 2);
    for r in q {
        assert!(r.rel_rms_error > 0.0 && r.rel_rms_error < if r.bits == 4 { 0.2 } else { 0.02 }, "{r:?}");
    }

    // Verification re-quantizes every band; one changed bias is found at its offset.
    assert!(compare_plan(&src, &out, tensors.clone()).is_empty());
    let (s, info) = ck.get("rows8.biases").map(|(s, t)| (s, t.clone())).unwrap();
    let shard = ck.shards[s].path.clone();
    drop(ck);
    let mut bytes = fs::read(&shard).unwrap();
    bytes[info.start as usize + 2 * 3] ^= 1; // the 4th bias of row 0
    fs::write(&shard, bytes).unwrap();
    let (words, scales) = (207 * 1024 * 8 / 32 * 4, 207 * 8 * 2);
    let problem = format!("bytes differ from the source's slice (first difference at byte {} of the tensor)", words + scales + 6);
    assert_eq!(compare_plan(&src, &out, tensors), [("rows8".to_string(), problem)]);
}

#[test]
fn quantization_refuses_partial_groups_and_non_finite_values() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src.safetensors");
    write_bf16(&src, "w", 4, 96);
    let out = tmp.path().join("out");
    let err = run(json!({"source": src, "outputs": [{"dir": out, "tensors": [
        {"name": "w", "source": "w", "op": {"kind": "cols", "ranges": [[0, 40]]}, "quant": quant_spec("w", 4, 32)}]}]}))
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "tensor w -> w: width 40 is not a multiple of the quantization group size 32 (every group must be whole)"
    );

    // A NaN in row 2 (BF16 0x7FC0 at element 2 * 96 + 5).
    let mut bytes = fs::read(&src).unwrap();
    let data = bytes.len() - 4 * 96 * 2;
    let at = data + (2 * 96 + 5) * 2;
    bytes[at..at + 2].copy_from_slice(&0x7FC0u16.to_le_bytes());
    fs::write(&src, bytes).unwrap();
    let err = run(json!({"source": src, "outputs": [{"dir": out, "tensors": [
        {"name": "q", "source": "w", "op": {"kind": "rows", "ranges": [[1, 4]]}, "quant": quant_spec("q", 4, 32)}]}]}))
    .unwrap_err();
    assert_eq!(err.kind(), "format");
    assert!(err.to_string().ends_with("tensor w: row 1 of q holds NaN or infinity, which cannot be quantized"), "{err}");
    assert!(!out.exists());
    assert!(leftovers(tmp.path()).is_empty());
}

#[test]
fn a_cancelled_run_removes_what_it_created() {
    let tmp = tempfile::tempdir().unwrap();
    let src = sharded_source(tmp.path());
    let out = tmp.path().join("out");
    let plan: Plan = serde_json::from_value(json!({"source": src, "outputs": [{"dir": out, "tensors": [
        {"name": "w", "source": "w"}, {"name": "e", "source": "e", "op": {"kind": "cols", "ranges": [[0, 2]]}}]}]}))
    .unwrap();
    // Ctrl-C arrives (the binding sets this flag) after the staging folder exists.
    let err = execute(&plan, &Progress::default(), &AtomicBool::new(true)).unwrap_err();
    assert!(matches!(err, Error::Cancelled), "{err}");
    assert!(!out.exists());
    assert!(leftovers(tmp.path()).is_empty());
}

#[test]
fn extra_file_names_must_be_plain_on_every_platform() {
    let tmp = tempfile::tempdir().unwrap();
    let src = sharded_source(tmp.path());
    let out = tmp.path().join("out");
    for name in ["sub/x.json", "sub\\x.json", "..", ""] {
        let err = run(json!({"source": src, "outputs": [{"dir": out, "tensors": [{"name": "w", "source": "w"}],
            "files": [{"name": name, "text": "{}"}]}]}))
        .unwrap_err();
        assert_eq!(err.to_string(), format!("extra file name {name:?} is not a plain file name"));
        assert!(!out.exists());
    }
}
