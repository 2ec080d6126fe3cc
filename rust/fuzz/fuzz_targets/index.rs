//! Any bytes as the index of a two-shard checkpoint: opening never panics, and an accepted
//! index names exactly the tensors the shards hold, in the shards that hold them.
#![no_main]

use std::fs;
use std::sync::OnceLock;

use gslice_engine::Checkpoint;
use libfuzzer_sys::fuzz_target;

fn shard(names: [&str; 2]) -> Vec<u8> {
    let header = format!(
        r#"{{"{}":{{"dtype":"U8","shape":[2],"data_offsets":[0,2]}},"{}":{{"dtype":"U8","shape":[3],"data_offsets":[2,5]}}}}"#,
        names[0], names[1]
    );
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header.as_bytes());
    out.extend([1, 2, 3, 4, 5]);
    out
}

fn folder() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.safetensors"), shard(["x", "y"])).unwrap();
        fs::write(dir.path().join("b.safetensors"), shard(["z", "w"])).unwrap();
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let dir = folder().path();
    fs::write(dir.join("model.safetensors.index.json"), data).unwrap();
    if let Ok(ck) = Checkpoint::open(dir) {
        let index: serde_json::Value = serde_json::from_slice(data).unwrap();
        let map = index["weight_map"].as_object().unwrap();
        assert_eq!(map.len(), ck.len());
        for (name, file) in map {
            let (s, _) = ck.get(name).unwrap();
            assert_eq!(ck.shards[s].path.file_name().unwrap().to_str(), file.as_str());
        }
    }
});
