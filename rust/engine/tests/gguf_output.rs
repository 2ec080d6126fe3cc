//! GGUF outputs end to end: the header a small reader in this file parses back (keys, typed
//! values, tensor infos, aligned offsets), every tensor's bytes against the source rows taken
//! through the plan's operation, stack and padding and encoded row by row, and the manifest
//! digest that covers the whole file.

use std::fs;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use gslice_engine::ggml::{quantize_row, GgmlType};
use gslice_engine::{execute, Error, Plan, Progress};
use serde_json::json;

/// A BF16 safetensors file; element k of a tensor holds `(seed + k) / 16 - 4`, truncated to BF16.
fn write_source(path: &Path, tensors: &[(&str, &[u64], u16)]) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, shape, seed) in tensors {
        let n: u64 = shape.iter().product();
        let begin = data.len();
        for k in 0..n {
            let v = (*seed as f32 + k as f32) / 16.0 - 4.0;
            data.extend_from_slice(&((v.to_bits() >> 16) as u16).to_le_bytes());
        }
        header.insert(name.to_string(), json!({"dtype": "BF16", "shape": shape, "data_offsets": [begin, data.len()]}));
    }
    let text = serde_json::to_vec(&header).unwrap();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    out.extend(data);
    fs::write(path, out).unwrap();
}

/// The value the source holds (BF16 keeps the top 16 bits: `write_source` truncates).
fn value(seed: u16, k: u64) -> f32 {
    let v = (seed as f32 + k as f32) / 16.0 - 4.0;
    f32::from_bits(v.to_bits() & 0xFFFF_0000)
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        self.at += n;
        &self.b[self.at - n..self.at]
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().unwrap())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take(8).try_into().unwrap())
    }
    fn string(&mut self) -> String {
        let n = self.u64() as usize;
        String::from_utf8(self.take(n).to_vec()).unwrap()
    }
    fn value(&mut self, ty: u32) -> serde_json::Value {
        match ty {
            4 => json!(self.u32()),
            7 => json!(self.take(1)[0] != 0),
            8 => json!(self.string()),
            9 => {
                let item = self.u32();
                let n = self.u64();
                json!((0..n).map(|_| self.value(item)).collect::<Vec<_>>())
            }
            other => panic!("type {other} not used in this test"),
        }
    }
}

struct Parsed {
    kv: Vec<(String, serde_json::Value)>,
    /// name, shape (outermost first), type id, absolute offset
    tensors: Vec<(String, Vec<u64>, u32, u64)>,
}

fn parse(b: &[u8]) -> Parsed {
    let mut r = Reader { b, at: 0 };
    assert_eq!(r.take(4), b"GGUF");
    assert_eq!(r.u32(), 3);
    let (n_tensors, n_kv) = (r.u64(), r.u64());
    let kv = (0..n_kv)
        .map(|_| {
            let key = r.string();
            let ty = r.u32();
            (key, r.value(ty))
        })
        .collect();
    let mut tensors = Vec::new();
    for _ in 0..n_tensors {
        let name = r.string();
        let dims = r.u32();
        let mut shape: Vec<u64> = (0..dims).map(|_| r.u64()).collect();
        shape.reverse();
        tensors.push((name, shape, r.u32(), r.u64()));
    }
    let data = r.at.div_ceil(32) * 32;
    for t in &mut tensors {
        t.3 += data as u64;
    }
    Parsed { kv, tensors }
}

fn encode(t: GgmlType, rows: &[Vec<f32>]) -> Vec<u8> {
    encode_with(t, rows, None)
}

fn encode_with(t: GgmlType, rows: &[Vec<f32>], imatrix: Option<&[f32]>) -> Vec<u8> {
    let mut out = Vec::new();
    for row in rows {
        let mut o = vec![0u8; t.row_bytes(row.len() as u64).unwrap() as usize];
        quantize_row(t, row, &mut o, imatrix).unwrap();
        out.extend(o);
    }
    out
}

fn run(plan: serde_json::Value) -> Result<gslice_engine::Report, Error> {
    let plan: Plan = serde_json::from_value(plan).unwrap();
    execute(&plan, &Progress::default(), &AtomicBool::new(false))
}

#[test]
fn a_gguf_file_holds_the_metadata_and_every_encoded_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.safetensors");
    write_source(&src, &[("w", &[4, 64], 0), ("x0", &[2, 32], 300), ("x1", &[2, 32], 400), ("x2", &[2, 32], 500), ("n", &[32], 7)]);
    let out = dir.path().join("out").join("m.gguf");
    let plan = json!({
        "source": src, "band_bytes": 64,
        "outputs": [{
            "dir": out, "container": "gguf",
            "metadata": [
                {"key": "general.architecture", "type": "string", "value": "test"},
                {"key": "test.count", "type": "uint32", "value": 3},
                {"key": "test.flags", "type": "array", "item": "bool", "value": [true, false]},
            ],
            "manifest": {"name": "gslice.manifest", "fields": {"format": "gslice-manifest/1"}},
            "tensors": [
                {"name": "raw", "source": "w", "ggml": "bf16"},
                {"name": "cols", "source": "w", "op": {"kind": "cols", "ranges": [[0, 16], [48, 64]]}, "ggml": "f32"},
                {"name": "stacked", "source": "x0", "stack": ["x1", "x2"], "ggml": "f16"},
                {"name": "padded", "source": "w", "op": {"kind": "rows", "ranges": [[1, 3]]}, "pad_rows": 5, "ggml": "q8_0"},
                {"name": "q4", "source": "w", "ggml": "q4_0"},
                {"name": "norm", "source": "n", "ggml": "f32"},
            ],
        }],
    });
    let report = run(plan).unwrap();
    let bytes = fs::read(&out).unwrap();
    assert_eq!(report.outputs[0].files.len(), 1);
    assert_eq!(report.outputs[0].files[0].bytes, bytes.len() as u64);
    let p = parse(&bytes);
    let keys: Vec<&str> = p.kv.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["general.architecture", "test.count", "test.flags", "gslice.manifest"]);
    assert_eq!(p.kv[1].1, json!(3));
    assert_eq!(p.kv[2].1, json!([true, false]));

    // The digest covers the whole file with its own 64 digits read as zeros.
    let manifest: serde_json::Value = serde_json::from_str(p.kv[3].1.as_str().unwrap()).unwrap();
    let digest = manifest["file_sha256"].as_str().unwrap().to_string();
    assert_eq!(report.outputs[0].files[0].sha256.as_deref(), Some(digest.as_str()));
    let at = bytes.windows(64).position(|w| w == digest.as_bytes()).unwrap();
    let mut zeroed = bytes.clone();
    zeroed[at..at + 64].copy_from_slice("0".repeat(64).as_bytes());
    use sha2::Digest;
    assert_eq!(format!("{:x}", sha2::Sha256::digest(&zeroed)), digest);

    let w: Vec<Vec<f32>> = (0..4).map(|r| (0..64).map(|c| value(0, r * 64 + c)).collect()).collect();
    let x = |seed: u16| -> Vec<Vec<f32>> { (0..2).map(|r| (0..32).map(|c| value(seed, r * 32 + c)).collect()).collect() };
    let cols: Vec<Vec<f32>> = w.iter().map(|r| [&r[..16], &r[48..]].concat()).collect();
    let mut padded = vec![w[1].clone(), w[2].clone()];
    padded.extend(vec![vec![0.0; 64]; 3]);
    let stacked: Vec<Vec<f32>> = [x(300), x(400), x(500)].concat();
    let norm = vec![(0..32).map(|k| value(7, k)).collect::<Vec<f32>>()];
    let want: [(&str, Vec<u64>, GgmlType, Vec<u8>); 6] = [
        ("raw", vec![4, 64], GgmlType::BF16, encode(GgmlType::BF16, &w)),
        ("cols", vec![4, 32], GgmlType::F32, encode(GgmlType::F32, &cols)),
        ("stacked", vec![3, 2, 32], GgmlType::F16, encode(GgmlType::F16, &stacked)),
        ("padded", vec![5, 64], GgmlType::Q8_0, encode(GgmlType::Q8_0, &padded)),
        ("q4", vec![4, 64], GgmlType::Q4_0, encode(GgmlType::Q4_0, &w)),
        ("norm", vec![32], GgmlType::F32, encode(GgmlType::F32, &norm)),
    ];
    assert_eq!(p.tensors.len(), want.len());
    for ((name, shape, ty, off), (wname, wshape, wty, wbytes)) in p.tensors.iter().zip(&want) {
        assert_eq!((name.as_str(), shape, *ty), (*wname, wshape, wty.id()));
        assert_eq!(off % 32, 0, "{name} is not aligned");
        assert_eq!(&bytes[*off as usize..*off as usize + wbytes.len()], &wbytes[..], "{name}");
    }
    // nothing but the file itself is left in the output folder
    let names: Vec<_> = fs::read_dir(out.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["m.gguf"]);
}

#[test]
fn an_importance_matrix_reaches_the_kernel_for_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.safetensors");
    write_source(&src, &[("k", &[3, 256], 11)]);
    let out = dir.path().join("m.gguf");
    let m: Vec<f32> = (0..256).map(|i| if i % 7 == 3 { 0.0 } else { 0.25 + (i % 13) as f32 }).collect();
    run(json!({
        "source": src, "band_bytes": 512,
        "outputs": [{"dir": out, "container": "gguf", "tensors": [
            {"name": "plain", "source": "k", "ggml": "q4_K"},
            {"name": "weighted", "source": "k", "pad_rows": 5, "ggml": "q4_K", "imatrix": m},
            {"name": "cols", "source": "k", "op": {"kind": "cols", "ranges": [[32, 96]]}, "ggml": "q5_1", "imatrix": &m[..64]},
            {"name": "raw", "source": "k", "ggml": "bf16", "imatrix": m},
        ]}],
    }))
    .unwrap();
    let bytes = fs::read(&out).unwrap();
    let p = parse(&bytes);
    let k: Vec<Vec<f32>> = (0..3).map(|r| (0..256).map(|c| value(11, r * 256 + c)).collect()).collect();
    let mut padded = k.clone();
    padded.extend(vec![vec![0.0; 256]; 2]);
    let cols: Vec<Vec<f32>> = k.iter().map(|r| r[32..96].to_vec()).collect();
    let want = [
        encode(GgmlType::Q4_K, &k),
        encode_with(GgmlType::Q4_K, &padded, Some(&m)),
        encode_with(GgmlType::Q5_1, &cols, Some(&m[..64])),
        encode(GgmlType::BF16, &k),
    ];
    let data: Vec<&[u8]> = p.tensors.iter().zip(&want).map(|(t, w)| &bytes[t.3 as usize..t.3 as usize + w.len()]).collect();
    for (name, (d, w)) in ["plain", "weighted", "cols", "raw"].iter().zip(data.iter().zip(&want)) {
        assert_eq!(d, &&w[..], "{name}");
    }
    // Control: the weights change the blocks.
    assert_ne!(data[0], &data[1][..data[0].len()]);
}

#[test]
fn gguf_plans_are_checked_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.safetensors");
    write_source(&src, &[("w", &[4, 48], 0), ("v", &[2, 48], 0)]);
    let out = dir.path().join("m.gguf");
    let err = |tensor: serde_json::Value| {
        run(json!({"source": src, "outputs": [{"dir": out, "container": "gguf", "tensors": [tensor]}]})).unwrap_err().to_string()
    };
    assert_eq!(
        err(json!({"name": "a", "source": "w", "ggml": "q8_0"})),
        "tensor w -> a: q8_0 stores rows in blocks of 32 elements: a row of 48 is not a multiple of 32"
    );
    assert_eq!(err(json!({"name": "a", "source": "w"})), "tensor w -> a: a GGUF tensor needs its GGML type (ggml)");
    assert_eq!(err(json!({"name": "a", "source": "w", "ggml": "q3_x"})), "tensor w -> a: unknown GGML type \"q3_x\"");
    assert_eq!(
        err(json!({"name": "a", "source": "w", "stack": ["v"], "ggml": "f32"})),
        "tensor w -> a: stacked tensor v is BF16 [2, 48], unlike BF16 [4, 48]"
    );
    assert_eq!(
        err(json!({"name": "a", "source": "w", "pad_rows": 3, "ggml": "f32"})),
        "tensor w -> a: pad_rows 3 is fewer than the 4 rows the tensor has"
    );
    assert_eq!(
        err(json!({"name": "a", "source": "w", "ggml": "f32", "imatrix": vec![1.0f32; 47]})),
        "tensor w -> a: the importance matrix has 47 weights for 48 columns"
    );
    let mut m = vec![1.0f32; 48];
    m[5] = f32::INFINITY;
    let plan = json!({"source": src, "outputs": [{"dir": out, "container": "gguf", "tensors": [
        {"name": "a", "source": "w", "ggml": "f32", "imatrix": serde_json::Value::Null}]}]});
    let mut plan: Plan = serde_json::from_value(plan).unwrap();
    plan.outputs[0].tensors[0].imatrix = Some(m);
    assert_eq!(
        execute(&plan, &Progress::default(), &AtomicBool::new(false)).unwrap_err().to_string(),
        "tensor w -> a: weight 5 of the importance matrix is inf, not a finite number"
    );
    let safetensors = run(json!({"source": src, "outputs": [{"dir": dir.path().join("st"), "tensors": [
        {"name": "a", "source": "w", "ggml": "f32"}]}]}));
    assert_eq!(safetensors.unwrap_err().to_string(), "tensor w -> a: ggml, stack, pad_rows and imatrix apply to GGUF outputs only");
    assert!(!out.exists());
    let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["src.safetensors"]);
}
