"""Range downloads that go wrong, against the local Hub of tests/hub_server.py: each failure is
one line and exit 2, leaves no output, keeps what was fetched correctly, and the next run
fetches only what is missing. Also offline use, private repos, the HF cache, expired signed
URLs, manifests and `gslice verify`."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from gslice.testing import E4B_LIKE, with_changes, write_tiny_checkpoint
from gslice.units import fmt_bytes

from range_reference import (
    COMMIT, REPO, assert_recorded_bytes_are_right, commit_folder, expected_reads, headers, minus, read_header, recorded,
    same_output, total,
)
from test_hub_ranges import SPECS

E2B_ARGS, E2B_REF = SPECS["e2b"]
AUDIO_ARGS, AUDIO_REF = SPECS["audio-blocks"]
SHARD1 = "model-00001-of-00002.safetensors"


def label(name: str = SHARD1) -> str:
    return f"{REPO}@{COMMIT[:12]} {name}"


def no_output(tmp_path: Path) -> bool:
    return not (tmp_path / "out").exists() and not any(p.name.startswith(".gslice-staging") for p in tmp_path.iterdir())


def test_a_server_that_ignores_range_is_named_and_full_download_is_the_way_out(hub, e4b, tmp_path, cli):
    hub.ignore_range = True
    result = cli("slice", REPO, "-o", tmp_path / "out", *E2B_ARGS)
    size = (e4b / SHARD1).stat().st_size
    assert (result.code, result.err.splitlines()[-1]) == (2, (
        f"error: {hub.cdn.split('//')[1]} ignored the Range header for {label()}: it answered 200 with the whole "
        f"{size:,}-byte file, which gslice did not read; run with --full-download to download whole files"))
    assert no_output(tmp_path) and not (commit_folder(hub.cache) / SHARD1).exists()
    result = cli("slice", REPO, "-o", tmp_path / "out", *E2B_ARGS, "--full-download", "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["download"]["fetched"] == {
        "mode": "full", "bytes": sum(f.stat().st_size for f in e4b.glob("*.safetensors")), "requests": 0,
        "seconds": 0.0, "headers_bytes": 0, "header_requests": 0}
    assert cli("slice", e4b, "-o", tmp_path / "local", *E2B_ARGS).code == 0
    assert same_output(tmp_path / "out", tmp_path / "local") == []


@pytest.mark.parametrize("change", ["content", "size"])
def test_a_file_changed_under_its_commit_is_refused(change, hub, e4b, tmp_path, cli):
    assert cli("slice", REPO, "-o", tmp_path / "a", *E2B_ARGS).code == 0
    model = with_changes(E4B_LIKE, vocab_per_layer=272) if change == "size" else E4B_LIKE
    other = write_tiny_checkpoint(tmp_path / "other", model, shards=2, seed=7)
    hub.repos[REPO].files[SHARD1] = other / SHARD1
    hub.clear()
    result = cli("slice", REPO, "-o", tmp_path / "out", *AUDIO_ARGS)
    old, new = e4b / SHARD1, other / SHARD1
    sha = lambda p: __import__("hashlib").sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert (result.code, result.err.splitlines()[-1]) == (2, (
        f"error: {label()} on the Hub is {new.stat().st_size:,} bytes with ETag {sha(new)}, but the range cache "
        f"recorded {old.stat().st_size:,} bytes with ETag {sha(old)} for the same commit: the file changed under its "
        f"commit; delete {commit_folder(hub.cache)} to start over"))
    assert no_output(tmp_path) and hub.served() == 0


def test_a_connection_lost_mid_range_fails_in_one_line_and_the_next_run_resumes(hub, e4b, tmp_path, cli, monkeypatch):
    monkeypatch.setenv("GSLICE_RANGE_GAP", str(1 << 20))  # a few long ranges
    assert cli("plan", REPO).code == 0  # the headers
    hub.cut_after = 3000  # every answer of the CDN breaks after 3000 bytes
    hub.clear()
    result = cli("slice", REPO, "-o", tmp_path / "out", *E2B_ARGS)
    assert result.code == 2
    assert re.fullmatch(
        rf"error: connection lost while fetching {re.escape(REPO)}@{COMMIT[:12]} model-0000[12]-of-00002\.safetensors: "
        r".+ \(after 3 attempts\); [0-9.]+ [KMG]?B fetched by this run are kept in the range cache; "
        r"run the same command again to resume\n", result.err.splitlines(keepends=True)[-1]), result.err
    assert no_output(tmp_path)
    kept = recorded(hub.cache, e4b)
    assert_recorded_bytes_are_right(hub.cache, e4b, kept)
    assert 0 < total(kept) <= hub.served()
    hub.cut_after = None
    hub.clear()
    assert cli("slice", REPO, "-o", tmp_path / "out", *E2B_ARGS).code == 0
    want = expected_reads(e4b, 1 << 20, **E2B_REF)
    assert hub.served() == total(want) - total(kept)
    assert cli("slice", e4b, "-o", tmp_path / "local", *E2B_ARGS).code == 0
    assert same_output(tmp_path / "out", tmp_path / "local") == []


@pytest.fixture
def tmpfs(tmp_path):
    """A real, small filesystem (tmpfs) for the range cache; needs root."""
    mounts = []

    def mount(size: str) -> Path:
        where = tmp_path / f"tmpfs{len(mounts)}"
        where.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")
        mounts.append(where)
        return where

    yield mount
    for m in mounts:
        subprocess.run(["umount", str(m)], check=True)


def test_a_range_cache_too_small_is_refused_before_fetching(hub, e4b, tmp_path, cli, monkeypatch, tmpfs):
    cache = tmpfs("400k")
    monkeypatch.setenv("GSLICE_CACHE", str(cache))
    result = cli("slice", REPO, "-o", tmp_path / "out", *E2B_ARGS)
    free = shutil.disk_usage(cache).free
    need = total(expected_reads(e4b, 0, **E2B_REF))
    folder = cache / "hub-ranges" / f"models--{REPO.replace('/', '--')}" / COMMIT
    assert (result.code, result.err.splitlines()[-1]) == (2, (
        f"error: the range cache {folder} has {fmt_bytes(free)} free and this slice needs {fmt_bytes(need)} more; "
        "nothing was fetched: free some space, or set GSLICE_CACHE to a folder on another disk"))
    assert hub.served() == headers(e4b) and no_output(tmp_path)


def test_a_range_cache_that_fills_up_mid_fetch_keeps_what_it_got(hub, e4b, tmp_path, cli, monkeypatch, tmpfs):
    cache = tmpfs("2m")
    monkeypatch.setenv("GSLICE_CACHE", str(cache))
    assert cli("plan", REPO).code == 0  # the headers
    filler = cache / "filler"

    def fill() -> None:  # another program takes the space while gslice downloads
        if not filler.exists():
            with open(filler, "wb") as f:
                f.write(b"\0" * max(shutil.disk_usage(cache).free - (200 << 10), 0))

    hub.before_data = fill
    hub.clear()
    result = cli("slice", REPO, "-o", tmp_path / "out", *E2B_ARGS)
    folder = commit_folder(cache)
    assert result.code == 2
    assert re.fullmatch(
        rf"error: the range cache {re.escape(str(folder))} ran out of disk space; [0-9.]+ [KMG]?B fetched by this run are "
        r"kept in the range cache: free some space, or set GSLICE_CACHE to a folder on another disk, and run again\n",
        result.err.splitlines(keepends=True)[-1]), result.err
    assert no_output(tmp_path)
    kept = recorded(cache, e4b)
    assert_recorded_bytes_are_right(cache, e4b, kept)
    filler.unlink()
    hub.before_data = None
    hub.clear()
    assert cli("slice", REPO, "-o", tmp_path / "out", *E2B_ARGS).code == 0
    assert hub.served() == total(expected_reads(e4b, 0, **E2B_REF)) - total(kept)


def test_offline_slices_from_the_range_cache_and_names_what_is_missing(hub, e4b, tmp_path, cli, monkeypatch):
    assert cli("slice", REPO, "-o", tmp_path / "a", *E2B_ARGS).code == 0
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.log.clear()
    result = cli("slice", REPO, "-o", tmp_path / "b", *E2B_ARGS)
    assert result.code == 0, result.err
    assert hub.log == []  # not one request
    assert same_output(tmp_path / "a", tmp_path / "b") == []
    result = cli("slice", REPO, "-o", tmp_path / "out", *AUDIO_ARGS)
    missing = minus(expected_reads(e4b, 0, **AUDIO_REF), expected_reads(e4b, 0, **E2B_REF))
    assert (result.code, result.err.splitlines()[-1]) == (2, (
        f"error: {REPO}: {fmt_bytes(missing)} that this slice reads are not in the range cache {commit_folder(hub.cache)}, "
        "and HF_HUB_OFFLINE is set: run once with network access, or unset HF_HUB_OFFLINE"))
    assert hub.log == [] and no_output(tmp_path)


def test_offline_without_the_headers_says_so(hub, e4b, tmp_path, cli, monkeypatch):
    assert cli("info", REPO).code == 0  # small files into the HF cache, headers into the range cache
    shutil.rmtree(hub.cache)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.log.clear()
    result = cli("slice", REPO, "-o", tmp_path / "out", *E2B_ARGS)
    assert (result.code, result.err.splitlines()[-1]) == (2, (
        f"error: {label()} is neither in the Hugging Face cache nor in the range cache {commit_folder(hub.cache)}, "
        "and HF_HUB_OFFLINE is set: run once with network access, or unset HF_HUB_OFFLINE"))
    assert hub.log == [] and no_output(tmp_path)


def test_a_private_repo_needs_the_token_and_the_cdn_never_gets_it(hub, e4b, tmp_path, cli, monkeypatch):
    hub.repos[REPO].token = "hf_secret"
    result = cli("slice", REPO, "-o", tmp_path / "out", *E2B_ARGS)
    assert (result.code, result.err.splitlines()[-1]) == (2, (
        f"error: {REPO} is neither a local folder nor a Hub repository you can access "
        "(if it is private, log in with `hf auth login` or set HF_TOKEN)"))
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    hub.clear()
    assert cli("slice", REPO, "-o", tmp_path / "out", *E2B_ARGS).code == 0
    assert hub.served() == total(expected_reads(e4b, 0, **E2B_REF)) + headers(e4b)
    assert hub.leaks == [] and all(s.status < 400 for s in hub.log)


def test_shards_complete_in_the_hf_cache_are_used_and_the_others_fetched(hub, e4b, tmp_path, cli):
    assert cli("slice", REPO, "-o", tmp_path / "full", *E2B_ARGS, "--full-download").code == 0
    hub.clear()
    result = cli("slice", REPO, "-o", tmp_path / "a", *AUDIO_ARGS, "--json")
    assert result.code == 0, result.err
    assert hub.served() == 0
    manifest = json.loads((tmp_path / "a" / "gslice-manifest.json").read_text())
    assert manifest["source"]["path"] == str(tmp_path / "hf" / "hub" / f"models--{REPO.replace('/', '--')}" / "snapshots" / COMMIT)
    assert {s["from"] for s in manifest["download"]["shards"].values()} == {"hf-cache"}
    # without one of the shards in the HF cache, only that shard's ranges come from the Hub
    snapshot = Path(manifest["source"]["path"])
    (snapshot / SHARD1).unlink()
    hub.clear()
    assert cli("slice", REPO, "-o", tmp_path / "b", *AUDIO_ARGS).code == 0
    assert hub.served() == total({SHARD1: expected_reads(e4b, 0, **AUDIO_REF)[SHARD1]}) + read_header(e4b / SHARD1)[0]
    manifest = json.loads((tmp_path / "b" / "gslice-manifest.json").read_text())
    assert {n: s["from"] for n, s in manifest["download"]["shards"].items()} == {
        SHARD1: "range-cache", "model-00002-of-00002.safetensors": "hf-cache"}
    assert same_output(tmp_path / "a", tmp_path / "b") == []


def test_an_expired_signed_url_is_resolved_again(hub, e4b, tmp_path):
    from gslice.slicing import prepare_slice, write_slice
    from gslice.spec import SliceSpec

    plan = prepare_slice(REPO, SliceSpec.build(layers_to_skip=range(20, 25), ffn_dims=32))
    hub.signature = "renewed"  # the URLs the HEADs returned are no longer accepted
    hub.clear()
    report = write_slice(plan, tmp_path / "out")
    assert [s.status for s in hub.requests("cdn") if s.status == 403]  # refused at first
    heads = [s for s in hub.requests("hub", "HEAD") if "/resolve/" in s.path]
    assert sorted(s.file for s in heads) == sorted(f.name for f in e4b.glob("*.safetensors"))  # one new HEAD per shard
    assert hub.served() == total(expected_reads(e4b, 0, **E2B_REF)) == report.download["fetched"]["bytes"]


def test_hash_source_needs_whole_shards(hub, tmp_path, cli):
    result = cli("slice", REPO, "-o", tmp_path / "out", *E2B_ARGS, "--hash-source")
    assert (result.code, result.err.splitlines()[-1]) == (2, (
        "error: --hash-source hashes whole source shards, and a range download holds only the ranges a slice reads: "
        "add --full-download (the manifest records the Hub's SHA-256 of each shard either way)"))
    assert no_output(tmp_path) and hub.served() == headers(Path(hub.repos[REPO].files[SHARD1]).parent)


def test_manifests_record_the_download_and_verify_works_either_way(hub, e4b, tmp_path, cli):
    assert cli("slice", REPO, "-o", tmp_path / "ranges", *E2B_ARGS).code == 0
    assert cli("slice", REPO, "-o", tmp_path / "full", *E2B_ARGS, "--full-download").code == 0
    sha = {f.name: __import__("hashlib").sha256(f.read_bytes()).hexdigest() for f in e4b.glob("*.safetensors")}
    for name, mode, where in (("ranges", "ranges", "hub-etag"), ("full", "full", "hub")):
        m = json.loads((tmp_path / name / "gslice-manifest.json").read_text())
        assert (m["download"]["mode"], m["download"]["commit"], m["source"]["commit"]) == (mode, COMMIT, COMMIT)
        assert {s["name"]: (s["sha256"], s["sha256_from"]) for s in m["source"]["shards"]} == {
            n: (h, where) for n, h in sha.items()}
    for out in ("ranges", "full"):
        for extra in ([], ["--full-download"]):
            result = cli("verify", tmp_path / out, "--against", REPO, *extra)
            assert result.code == 0, (out, extra, result.out)
        assert cli("verify", tmp_path / out, "--against", e4b).code == 0
    # a tensor changed in the output is caught by comparing against the Hub's ranges
    shard = next((tmp_path / "ranges").glob("*.safetensors"))
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    shard.write_bytes(bytes(data))
    result = cli("verify", tmp_path / "ranges", "--against", REPO)
    assert result.code == 1 and "sha256 differs" in result.out


def test_info_fetches_only_headers(hub, e4b, cli):
    result = cli("info", REPO, "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["tensors"] == sum(len(read_header(f)[1]) - 1 for f in e4b.glob("*.safetensors"))
    assert hub.served() == headers(e4b)
