"""`gslice bulk`: Google's 16 official presets from the tiny E4B-shaped checkpoint, written in
one engine run with shared tensors written once and hard-linked, checked against single
slices, an independent numpy slice, and independently computed byte counts."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
import safetensors

from gslice import gemma3n, slice_model
from gslice.bulk import select_presets
from gslice.catalogue import official_presets
from gslice.errors import SpecError
from gslice.testing import TinyGemma3n, compare_to_reference, read_checkpoint, write_tiny_checkpoint

from conftest import hidden_leftovers


def arch_of(src: Path):
    return gemma3n.architecture(gemma3n.read_config(src))


def shard_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def tensor_keys(folder: Path) -> dict[str, tuple[Path, str]]:
    """tensor name -> (shard file, sha256 of its bytes), read with the reference parser."""
    out = {}
    for f in shard_files(folder):
        for name, t in safetensors.deserialize(f.read_bytes()):
            out[name] = (f, hashlib.sha256(bytes(t["data"])).hexdigest())
    return out


@pytest.fixture(scope="module")
def official_bulk(e4b, tmp_path_factory):
    """The 16 official presets, in bulk (dedupe on), once for the module."""
    from click.testing import CliRunner

    from gslice.cli import main

    out = tmp_path_factory.mktemp("bulk") / "presets"
    r = CliRunner().invoke(main, ["bulk", str(e4b), "--presets", "official", "-o", str(out), "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    return out, json.loads(r.stdout)


def test_preset_selection():
    official = select_presets("official")
    assert len(official) == 16 and len({p.slug for p in official}) == 16
    assert len(select_presets("all")) > 16
    assert [p.slug for p in select_presets("google-e2b, Main model,google-e2b")] == ["google-e2b", "google-main"]
    with pytest.raises(SpecError, match="--presets: unknown preset 'google-e2x'; did you mean 'google-e2b'"):
        select_presets("google-e2x")


def test_widths_scale_to_the_tiny_source(e4b):
    e2b = select_presets("google-e2b")[0]
    assert e2b.spec_for(arch_of(e4b)).ffn_dims == (32,) * 30  # 8192 of 16384 -> 32 of 64


def test_every_output_equals_a_single_slice_and_the_numpy_reference(official_bulk, e4b, tmp_path):
    out, report = official_bulk
    arch = arch_of(e4b)
    assert [r["slug"] for r in report["rows"]] == [p.slug for p in official_presets()]
    for p in official_presets():
        spec = p.spec_for(arch)
        single = tmp_path / p.slug
        slice_model(e4b, single, spec=spec)
        got, want = read_checkpoint(out / p.slug), read_checkpoint(single)
        assert got.keys() == want.keys(), p.slug
        for name in want:
            assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape, (p.slug, name)
            assert got[name].tobytes() == want[name].tobytes(), (p.slug, name)
        kept = 35 - len(spec.layers_to_skip)
        assert compare_to_reference(e4b, out / p.slug, layers_to_skip=spec.layers_to_skip, widths=list(spec.ffn_dims)) == [], p.slug
        assert (out / p.slug / "config.json").read_text() == (single / "config.json").read_text()
        index = json.loads((out / p.slug / "model.safetensors.index.json").read_text())
        assert set(index["weight_map"]) == set(want)  # its own index, exactly its own tensors
        assert json.loads((out / p.slug / "config.json").read_text())["text_config"]["num_hidden_layers"] == kept


def test_bytes_written_are_the_distinct_tensors(official_bulk):
    out, report = official_bulk
    # Independently: a tensor is identified by its name and content; collect all of them.
    distinct: dict[tuple[str, str], int] = {}
    members: dict[tuple[str, str], set[str]] = defaultdict(set)
    inode_of: dict[tuple[str, str], set[int]] = defaultdict(set)
    for p in official_presets():
        for f in shard_files(out / p.slug):
            for name, t in safetensors.deserialize(f.read_bytes()):
                key = (name, hashlib.sha256(bytes(t["data"])).hexdigest())
                distinct[key] = len(t["data"])
                members[key].add(p.slug)
                inode_of[key].add(f.stat().st_ino)
    physical = {f.stat().st_ino: f for p in official_presets() for f in shard_files(out / p.slug)}
    data_bytes = 0
    for f in physical.values():
        header_len = int.from_bytes(f.read_bytes()[:8], "little")
        data_bytes += f.stat().st_size - 8 - header_len
    assert data_bytes == sum(distinct.values())  # every distinct tensor stored once
    assert report["bytes_written"] == sum(f.stat().st_size for f in physical.values())
    assert report["bytes_written"] == sum(r["written"] for r in report["rows"])
    independent = sum(f.stat().st_size for p in official_presets() for f in shard_files(out / p.slug))
    assert report["bytes_if_independent"] == independent
    assert report["bytes_written"] < independent / 5  # the figure this test run prints below
    print(f"\ntiny bulk of 16 presets: {report['bytes_written']:,} bytes written, {independent:,} if independent")
    # Each tensor lives in one physical file, shared by exactly the outputs that hold it.
    by_inode: dict[int, set[frozenset]] = defaultdict(set)
    for key, inos in inode_of.items():
        assert len(inos) == 1, key
        by_inode[next(iter(inos))].add(frozenset(members[key]))
    for ino, sets in by_inode.items():
        assert len(sets) == 1  # grouped by the exact set of outputs containing them
        (holders,) = sets
        assert physical[ino].stat().st_nlink == len(holders)
    embed = ("model.language_model.embed_tokens.weight",)
    holders = {inode_of[k].copy().pop() for k in distinct if k[0] in embed}
    assert len(holders) == 1  # one file, linked from all 16 outputs
    assert physical[holders.pop()].stat().st_nlink == 16


def test_no_dedupe_writes_independent_files_with_the_same_tensors(official_bulk, e4b, tmp_path, cli):
    out, _ = official_bulk
    solo = tmp_path / "solo"
    result = cli("bulk", e4b, "--presets", "official", "-o", solo, "--no-dedupe", "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    inodes = []
    for p in official_presets():
        a, b = read_checkpoint(out / p.slug), read_checkpoint(solo / p.slug)
        assert a.keys() == b.keys() and all(a[n].tobytes() == b[n].tobytes() for n in a), p.slug
        for f in shard_files(solo / p.slug):
            assert f.stat().st_nlink == 1
            inodes.append(f.stat().st_ino)
    assert len(set(inodes)) == len(inodes)
    assert report["bytes_written"] == report["bytes_if_independent"] == sum(
        f.stat().st_size for p in official_presets() for f in shard_files(solo / p.slug))


def test_everything_is_validated_before_anything_is_written(e2b, tmp_path, cli):
    # Google's presets are written for E4B's 35 layers; on an E2B-shaped source (30 layers)
    # they break the rules. The whole run stops up front, naming every failing preset.
    result = cli("bulk", e2b, "--presets", "google-main,google-e2b", "-o", tmp_path / "out")
    assert result.code == 2
    assert result.err.splitlines() == [
        f"error: preset {name}: defined for the 35-layer E4B layout, but the source has 30 layers "
        "(preset layer indices are not remapped to other layer counts)"
        for name in ("google-main", "google-e2b")
    ]
    assert not (tmp_path / "out").exists()


def test_widths_that_do_not_scale_are_refused(tmp_path, cli):
    src = write_tiny_checkpoint(tmp_path / "odd", TinyGemma3n(ffn=45), shards=1)
    result = cli("bulk", src, "--presets", "google-main,google-e2b", "-o", tmp_path / "out")
    assert (result.code, result.err) == (
        2, "error: preset google-e2b: width 8192 scaled to the source's FFN width 45 is 8192 x 45 / 16384 = 22.5, not a whole number\n")
    assert not (tmp_path / "out").exists()


def test_existing_outputs_are_refused_without_resume(e4b, tmp_path, cli):
    out = tmp_path / "out"
    (out / "google-main").mkdir(parents=True)
    result = cli("bulk", e4b, "--presets", "google-main,google-e2b", "-o", out)
    assert (result.code, result.err) == (
        2, f"error: output {out / 'google-main'} already exists (--resume keeps finished presets, --overwrite replaces them)\n")
    result = cli("bulk", e4b, "--presets", "google-main", "-o", out, "--resume")
    assert (result.code, result.err) == (
        2, f"error: output path {out / 'google-main'} is a folder gslice did not write (it has no gslice-manifest.json); refusing to replace it\n")
    assert sorted(p.name for p in out.iterdir()) == ["google-main"]


def test_unknown_preset(cli, e4b, tmp_path):
    result = cli("bulk", e4b, "--presets", "e9b", "-o", tmp_path / "out")
    assert result.code == 2
    assert result.err == "error: --presets: unknown preset 'e9b' (`gslice presets` lists them)\n"


def test_resume_skips_verified_outputs_and_redoes_changed_ones(e4b, tmp_path, cli):
    out = tmp_path / "out"
    names = "google-main,google-e2b,google-e2.54b-layer"
    assert cli("bulk", e4b, "--presets", names, "-o", out).code == 0
    before = {p: (out / p / "config.json").stat().st_ino for p in names.split(",")}
    # Damage one output; leave what an interrupted run of a dead process would leave.
    (out / "google-e2b" / "config.json").write_text("{}")
    (out / ".gslice-staging-999999999-0").mkdir()
    (out / ".google-e2.54b-layer.gslice-partial-999999999-3").mkdir()
    result = cli("bulk", e4b, "--presets", names, "-o", out, "--resume", "--json")
    assert result.code == 0, result.err
    status = {r["slug"]: (r["status"], r["reason"]) for r in json.loads(result.out)["rows"]}
    assert status == {
        "google-main": ("skipped", "finished, manifest checks out"),
        "google-e2b": ("replaced", "config.json: 2 bytes, the manifest says "
                               f"{json.loads((out / 'google-e2b' / 'gslice-manifest.json').read_text())['files']['config.json']['size']}"),
        "google-e2.54b-layer": ("skipped", "finished, manifest checks out"),
    }
    assert (out / "google-main" / "config.json").stat().st_ino == before["google-main"]
    assert hidden_leftovers(out) == []
    assert cli("verify", out, "--against", e4b).code == 0


def test_resume_refuses_to_clear_the_folders_of_a_live_run(e4b, tmp_path, cli):
    out = tmp_path / "out"
    out.mkdir()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (out / f".gslice-staging-{live.pid}-0").mkdir()
        result = cli("bulk", e4b, "--presets", "google-main", "-o", out, "--resume")
        assert (result.code, result.err) == (
            2, f"error: another gslice run (pid {live.pid}) is writing {out / f'.gslice-staging-{live.pid}-0'}; wait for it to finish\n")
    finally:
        live.kill()
        live.wait()


def test_an_interrupted_run_resumes_to_verified_outputs(tmp_path):
    """SIGKILL a bulk run once its first output is complete; --resume finishes the rest."""
    big = TinyGemma3n(hidden=128, ffn=1024, ple_dim=32, vocab=2048, vocab_per_layer=2048, head_dim=32)
    src = write_tiny_checkpoint(tmp_path / "src", big, shards=2)
    out = tmp_path / "out"
    gslice = [sys.executable, "-m", "gslice"]
    run = subprocess.Popen([*gslice, "bulk", str(src), "-o", str(out), "--jobs", "1", "-q"], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (out / "google-main" / "gslice-manifest.json").exists():
        assert run.poll() is None, run.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.002)
    run.kill()  # SIGKILL (TerminateProcess on Windows): no chance to clean up
    run.wait()
    finished = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert "google-main" in finished and len(finished) < 16, finished  # killed mid-way
    assert any(n.startswith(".gslice-staging-") for n in os.listdir(out))  # it left its staging folder
    kept_ino = (out / "google-main" / "config.json").stat().st_ino

    resumed = subprocess.run([*gslice, "bulk", str(src), "-o", str(out), "--resume", "--json"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    rows = {r["slug"]: r["status"] for r in json.loads(resumed.stdout)["rows"]}
    assert all(rows[n] == "skipped" for n in finished)
    assert sorted(n for n, s in rows.items() if s == "written") == sorted(set(rows) - set(finished))
    assert (out / "google-main" / "config.json").stat().st_ino == kept_ino
    assert hidden_leftovers(out) == []
    check = subprocess.run([*gslice, "verify", str(out), "--against", str(src), "-q"], capture_output=True, text=True)
    assert (check.returncode, check.stdout, check.stderr) == (0, "", "")
    assert len([p for p in out.iterdir()]) == 16
