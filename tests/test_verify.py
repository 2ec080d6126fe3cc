"""The manifest every output carries, and `gslice verify`: exit 0 when all is well, 1 with one
line per problem (flipped byte, missing shard, extra file, changed tensor), 2 when there is
nothing to check against."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from gslice import __version__, slice_model


def header_of(shard: Path) -> tuple[int, dict]:
    raw = shard.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return 8 + n, json.loads(raw[8 : 8 + n])


def flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


@pytest.fixture
def out(e4b, tmp_path) -> Path:
    """An E2B-config slice split over three shards."""
    folder = tmp_path / "out"
    slice_model(e4b, folder, layers_to_skip=range(20, 25), ffn_dims=32, max_shard_size=300_000)
    return folder


def test_the_manifest_describes_source_spec_tool_and_files(e4b, out):
    m = json.loads((out / "gslice-manifest.json").read_text())
    assert m["format"] == "gslice-manifest/1" and m["tool"] == f"gslice {__version__}"
    assert m["spec"] == {"layers_to_skip": [20, 21, 22, 23, 24], "ffn_dims": 32, "audio_layers_to_skip": [],
                         "drop_vision": False, "drop_audio": False}
    assert m["result"]["layers"] == 30 and m["result"]["ffn_dims"] == [32] * 30
    src = m["source"]
    assert (src["label"], src["path"], src["repo_id"], src["commit"]) == (str(e4b), str(e4b), None, None)
    assert src["config_sha256"] == hashlib.sha256((e4b / "config.json").read_bytes()).hexdigest()
    for rec, shard in zip(src["shards"], sorted(e4b.glob("*.safetensors"))):
        head_len, _ = header_of(shard)
        assert rec == {
            "name": shard.name,
            "size": shard.stat().st_size,
            "mtime_ns": shard.stat().st_mtime_ns,
            "header_sha256": hashlib.sha256(shard.read_bytes()[:head_len]).hexdigest(),
        }
    on_disk = sorted(p.name for p in out.iterdir() if p.name != "gslice-manifest.json")
    assert sorted(m["files"]) == on_disk
    assert len([n for n in on_disk if n.endswith(".safetensors")]) == 3
    for name in on_disk:
        data = (out / name).read_bytes()
        assert m["files"][name] == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_hash_source_records_whole_shard_hashes(e4b, tmp_path, cli):
    assert cli("slice", e4b, "-o", tmp_path / "o", "--ffn-dims", "32", "--hash-source").code == 0
    shards = json.loads((tmp_path / "o" / "gslice-manifest.json").read_text())["source"]["shards"]
    assert [(s["sha256"], s["sha256_from"]) for s in shards] == [
        (hashlib.sha256(p.read_bytes()).hexdigest(), "computed") for p in sorted(e4b.glob("*.safetensors"))]


def test_a_good_output_verifies(e4b, out, cli):
    result = cli("verify", out, "--against", e4b)
    assert (result.code, result.err) == (0, "")
    assert result.out == f"{out}: ok (11 files match their sha256; 1019 tensors byte-identical to {e4b}'s slice)\n"


def test_a_flipped_byte_is_found_by_hash_and_by_tensor(e4b, out, cli):
    shard = out / "model-00002-of-00003.safetensors"
    head_len, header = header_of(shard)
    name, meta = sorted(((n, t) for n, t in header.items() if n != "__metadata__"), key=lambda kv: kv[1]["data_offsets"][0])[3]
    flip(shard, head_len + meta["data_offsets"][0] + 5)
    result = cli("verify", out)
    assert (result.code, result.out) == (
        1, f"{out}: model-00002-of-00003.safetensors: sha256 differs from the manifest (the file changed after it was written)\n")
    result = cli("verify", out, "--against", e4b)
    assert result.code == 1
    assert result.out.splitlines() == [
        f"{out}: model-00002-of-00003.safetensors: sha256 differs from the manifest (the file changed after it was written)",
        f"{out}: tensor {name} bytes differ from the source's slice (first difference at byte 5 of the tensor)",
    ]


def test_a_missing_shard_and_an_extra_file(e4b, out, cli):
    (out / "model-00003-of-00003.safetensors").unlink()
    (out / "notes.txt").write_text("mine")
    result = cli("verify", out)
    assert result.code == 1
    assert result.out.splitlines() == [
        f"{out}: missing file model-00003-of-00003.safetensors (listed in the manifest)",
        f"{out}: extra file notes.txt (not listed in the manifest)",
    ]
    result = cli("verify", out, "--against", e4b)
    assert result.out.splitlines()[-1] == (
        f"{out}: cannot compare tensors: {out / 'model.safetensors.index.json'}: "
        "names shard model-00003-of-00003.safetensors, which does not exist")


def test_a_changed_config_and_tokenizer_file(e4b, out, cli):
    cfg = json.loads((out / "config.json").read_text())
    cfg["text_config"]["num_hidden_layers"] = 35
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (out / "tokenizer_config.json").write_text('{"model_max_length": 1, "tokenizer_class": "GemmaTokenizer"}')
    lines = cli("verify", out, "--against", e4b).out.splitlines()
    assert f"{out}: config.json differs from the config the spec derives from the source" in lines
    assert f"{out}: tokenizer_config.json differs from the source's tokenizer_config.json" in lines


def test_another_source_is_caught(e4b, out, tmp_path, cli):
    from gslice.testing import E4B_LIKE, write_tiny_checkpoint

    # Same layout, other weights (a fine-tune): headers and sizes match, so only the bytes tell.
    other = write_tiny_checkpoint(tmp_path / "other", E4B_LIKE, shards=2, seed=1)
    result = cli("verify", out, "--against", other)
    assert result.code == 1
    lines = result.out.splitlines()
    assert len(lines) == 1019
    assert all(line.startswith(f"{out}: tensor ") and " bytes differ from the source's slice " in line for line in lines)
    # Another sharding of the same weights: the fingerprint says so, the tensors still match.
    one = write_tiny_checkpoint(tmp_path / "one", E4B_LIKE, shards=1, seed=0)
    result = cli("verify", out, "--against", one)
    assert (result.code, result.out) == (
        1, f"{out}: source shards are ['model.safetensors'], the manifest recorded "
           "['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']\n")


def test_nothing_to_check_against(tmp_path, e4b, cli):
    result = cli("verify", e4b)
    assert (result.code, result.err) == (
        2, f"error: {e4b} has no gslice-manifest.json: it was not written by gslice, so there is nothing to check it against\n")


def test_verify_json(e4b, out, cli):
    flip(out / "config.json", 3)
    result = cli("verify", out, "--json")
    assert result.code == 1
    (r,) = json.loads(result.out)
    assert r["ok"] is False and r["tensors_compared"] is None
    assert r["problems"] == ["config.json: sha256 differs from the manifest (the file changed after it was written)"]
