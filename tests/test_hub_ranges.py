"""Range downloads from a Hub source, against a Hub on 127.0.0.1 (tests/hub_server.py) that
counts every byte it serves.

What is expected is derived independently of gslice's planner: every source tensor becomes an
array holding the file position of each of its elements, the numpy reference slicer
(gslice.testing.reference_slice) slices those arrays, and the positions that come out are the
bytes a slice reads; the test merges them across gaps of at most GSLICE_RANGE_GAP bytes itself.
Outputs are compared with slicing a local copy of the same checkpoint."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from gslice import download as dl
from gslice.catalogue import find_preset
from gslice.gemma3n import architecture
from gslice.testing import TinyGemma3n, write_tiny_checkpoint
from gslice.units import fmt_bytes

from hub_server import FakeHub
from range_reference import (
    COMMIT, REPO, assert_recorded_bytes_are_right, expected_reads, headers, minus, read_header, recorded, same_output, total, union,
)

SPECS = {
    "e2b": (["--layers-to-skip", "20-24", "--ffn-dims", "32"], dict(layers_to_skip=range(20, 25), widths=[32] * 30)),
    "text-only": (["--layers-to-skip", "5-9,25-29", "--ffn-dims", "48", "--text-only"],
                  dict(layers_to_skip=[*range(5, 10), *range(25, 30)], widths=[48] * 25, drop_vision=True, drop_audio=True)),
    "audio-blocks": (["--layers-to-skip", "30-34", "--audio-layers-to-skip", "8-11", "--drop-vision"],
                     dict(layers_to_skip=range(30, 35), audio_layers_to_skip=range(8, 12), drop_vision=True)),
    "int8": (["--layers-to-skip", "20-24", "--ffn-dims", "32", "--quant", "int8", "--group-size", "32"],
             dict(layers_to_skip=range(20, 25), widths=[32] * 30)),
}


@pytest.mark.parametrize("name, gap", [("e2b", 0), ("e2b", 700), ("text-only", 0), ("audio-blocks", 700), ("int8", 700)])
def test_fetches_exactly_the_planned_ranges_and_slices_identically(name, gap, hub, e4b, tmp_path, cli, monkeypatch):
    monkeypatch.setenv("GSLICE_RANGE_GAP", str(gap))
    args, ref_spec = SPECS[name]
    result = cli("slice", REPO, "-o", tmp_path / "out", *args, "--json")
    assert result.code == 0, result.err
    want = expected_reads(e4b, gap, **ref_spec)
    exact = total(expected_reads(e4b, 0, **ref_spec))
    assert hub.served() == total(want) + headers(e4b)
    assert hub.leaks == []  # the CDN never saw the authorization header
    assert cli("slice", e4b, "-o", tmp_path / "local", *args).code == 0
    assert same_output(tmp_path / "out", tmp_path / "local") == []
    d = json.loads(result.out)["download"]
    assert (d["mode"], d["commit"], d["gap"]) == ("ranges", COMMIT, gap)
    assert (d["bytes_read_by_plan"], d["bytes_planned"], d["slack_bytes"]) == (exact, total(want), total(want) - exact)
    assert d["fetched"]["bytes"] + d["fetched"]["headers_bytes"] == hub.served()
    # slack: at most `gap` bytes for each gap closed
    closed = sum(len(rs) for rs in expected_reads(e4b, 0, **ref_spec).values()) - sum(len(rs) for rs in want.values())
    assert total(want) - exact <= gap * closed
    if gap == 0:
        assert total(want) == exact
    manifest = json.loads((tmp_path / "out" / "gslice-manifest.json").read_text())
    shards = manifest["download"]["shards"]
    assert {n: [tuple(r) for r in s["ranges"]] for n, s in shards.items()} == want
    assert {s["from"] for s in shards.values()} == {"range-cache"}


def test_bytes_served_are_the_headers_then_the_data_ranges_each_once(hub, e4b, tmp_path, cli):
    assert cli("slice", REPO, "-o", tmp_path / "out", *SPECS["e2b"][0]).code == 0
    data = [s for s in hub.requests() if s.file.endswith(".safetensors")]
    heads = [s for s in data if s.range and s.range[1] <= read_header(e4b / s.file)[0]]
    assert sorted((s.file, s.range) for s in heads) == sorted(
        (f.name, r) for f in e4b.glob("*.safetensors") for r in ((0, 8), (8, read_header(f)[0])))
    body = {}
    for s in data:
        if s not in heads:
            assert s.status == 206 and s.sent == s.range[1] - s.range[0]
            body.setdefault(s.file, []).append(s.range)
    want = expected_reads(e4b, 0, **SPECS["e2b"][1])
    for name, ranges in body.items():  # pieces of the planned ranges, none asked twice
        assert union(ranges) == want[name]
        assert sum(e - b for b, e in ranges) == total({name: want[name]})


def test_a_second_spec_fetches_only_its_extra_ranges(hub, e4b, tmp_path, cli):
    assert cli("slice", REPO, "-o", tmp_path / "a", *SPECS["e2b"][0]).code == 0
    hub.clear()
    result = cli("slice", REPO, "-o", tmp_path / "b", *SPECS["audio-blocks"][0], "--json")
    assert result.code == 0, result.err
    first = expected_reads(e4b, 0, **SPECS["e2b"][1])
    second = expected_reads(e4b, 0, **SPECS["audio-blocks"][1])
    assert hub.served() == minus(second, first) > 0
    assert json.loads(result.out)["download"]["fetched"]["headers_bytes"] == 0
    hub.clear()
    assert cli("slice", REPO, "-o", tmp_path / "c", *SPECS["e2b"][0]).code == 0
    assert hub.served() == 0  # everything was cached
    assert [s.method for s in hub.requests("hub", "HEAD") if "/resolve/" in s.path and s.file.endswith(".safetensors")] == ["HEAD"] * 2


def test_plan_and_dry_run_say_what_would_be_downloaded_and_fetch_only_headers(hub, e4b, tmp_path, cli):
    result = cli("plan", REPO, "--layers-to-skip", "20-24", "--ffn-dims", "32", "--json")
    assert result.code == 0, result.err
    want = total(expected_reads(e4b, 0, **SPECS["e2b"][1]))
    size = sum(f.stat().st_size for f in e4b.glob("*.safetensors"))
    d = json.loads(result.out)["download"]
    assert (d["bytes_to_fetch"], d["total_bytes"]) == (want, size)
    assert hub.served() == headers(e4b)
    from gslice.units import fmt_bytes

    line = f"download: {fmt_bytes(want)} of {fmt_bytes(size)} ({100 * want / size:.1f}%) from {REPO}: "
    text = cli("plan", REPO, "--layers-to-skip", "20-24", "--ffn-dims", "32")
    assert text.code == 0 and text.out.splitlines()[-1].startswith(line)
    dry = cli("slice", REPO, "-o", tmp_path / "out", *SPECS["e2b"][0], "--dry-run")
    assert dry.code == 0 and dry.out.splitlines()[-1].startswith(line)
    assert hub.served() == headers(e4b) and not (tmp_path / "out").exists()
    full = cli("slice", REPO, "-o", tmp_path / "out", *SPECS["e2b"][0], "--dry-run", "--full-download")
    assert full.code == 0 and full.out.splitlines()[-1] == (
        f"download: {fmt_bytes(size)} of {fmt_bytes(size)} (100.0%) from {REPO}: 2 whole shard(s) not in the Hugging Face cache")
    bulk = cli("bulk", REPO, "--presets", "google-e2b", "-o", tmp_path / "bulk", "--dry-run")
    assert bulk.code == 0, bulk.err
    assert any(l.startswith("download: ") for l in bulk.out.splitlines())
    assert hub.served() == headers(e4b)


def test_progress_counts_up_to_the_bytes_fetched(hub, e4b, tmp_path):
    from gslice.slicing import prepare_slice, write_slice
    from gslice.spec import SliceSpec

    plan = prepare_slice(REPO, SliceSpec.build(layers_to_skip=range(20, 25), ffn_dims=32))
    calls = []
    write_slice(plan, tmp_path / "out", download_progress=lambda done, todo: calls.append((done, todo)))
    want = total(expected_reads(e4b, 0, **SPECS["e2b"][1]))
    assert calls[-1] == (want, want)
    assert all(t == want for _, t in calls) and [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_bulk_fetches_the_union_once_and_records_each_outputs_ranges(hub, e4b, tmp_path, cli):
    result = cli("bulk", REPO, "--presets", "google-e2b,google-e2.54b-layer", "-o", tmp_path / "out", "--json")
    assert result.code == 0, result.err
    arch = architecture(json.loads((e4b / "config.json").read_text()), "config")
    both: dict[str, list] = {}
    for slug in ("google-e2b", "google-e2.54b-layer"):
        spec = find_preset(slug).spec_for(arch)
        ref = dict(layers_to_skip=spec.layers_to_skip, widths=[spec.ffn_dims[0]] * (35 - len(spec.layers_to_skip))
                   if len(spec.ffn_dims) == 1 else list(spec.ffn_dims))
        mine = expected_reads(e4b, 0, **ref)
        manifest = json.loads((tmp_path / "out" / slug / "gslice-manifest.json").read_text())
        assert {n: [tuple(r) for r in s["ranges"]] for n, s in manifest["download"]["shards"].items()} == mine
        for n, rs in mine.items():
            both.setdefault(n, []).extend(rs)
    assert hub.served() == total({n: union(rs) for n, rs in both.items()}) + headers(e4b)
    assert cli("verify", tmp_path / "out", "--against", REPO).code == 0


# -- a fetch killed at a random point --------------------------------------------------------

BIG = TinyGemma3n(hidden=64, ffn=2048, ple_dim=64, vocab=4096, vocab_per_layer=4096, head_dim=32)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_killed_fetch_resumes_with_only_the_missing_bytes(sig, tmp_path, monkeypatch):
    src = write_tiny_checkpoint(tmp_path / "big", BIG, shards=2)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "GSLICE_"))}
    env.update(HF_HOME=str(tmp_path / "hf"), GSLICE_CACHE=str(tmp_path / "cache"))
    args = ["slice", REPO, "-o", str(tmp_path / "out"), "--layers-to-skip", "20-24", "--ffn-dims", "1024", "-q"]
    want = expected_reads(src, dl.coalesce_gap(), layers_to_skip=range(20, 25), widths=[1024] * 30)
    seed = random.randrange(1 << 30)
    delay = random.Random(seed).uniform(0.0, 1.5)  # after the first record of a fetched range
    with FakeHub(rate=3 << 20) as hub:  # 3 MiB/s per connection
        hub.add_repo(REPO, src, COMMIT)
        env["HF_ENDPOINT"] = hub.endpoint
        proc = subprocess.Popen([sys.executable, "-m", "gslice", *args], env=env, stderr=subprocess.PIPE, text=True)
        while not total(recorded(tmp_path / "cache", src)) and proc.poll() is None:
            time.sleep(0.01)
        time.sleep(delay)
        assert proc.poll() is None, f"seed {seed}: the run ended before it was killed"
        proc.send_signal(sig)
        err = proc.communicate()[1]
        first = hub.streaming() - headers(src)  # bytes sent, whether or not they arrived
        kept = recorded(tmp_path / "cache", src)
        if sig == signal.SIGKILL:
            assert proc.returncode == -signal.SIGKILL, f"seed {seed}"
        else:  # a clean stop that says what the range cache keeps
            assert proc.returncode == 128 + signal.SIGTERM, f"seed {seed}: {err}"
            assert err.splitlines()[-1] == (
                f"interrupted (SIGTERM): nothing was written; {fmt_bytes(total(kept))} fetched by this run are kept in "
                "the range cache"), f"seed {seed}"
            assert not (tmp_path / "out").exists()
        assert_recorded_bytes_are_right(tmp_path / "cache", src, kept)
        assert minus(kept, want) == 0, f"seed {seed}: recorded bytes outside the plan"
        got = total(kept)
        assert 0 < got < total(want), f"seed {seed}"
        hub.clear()
        hub.rate = None
        done = subprocess.run([sys.executable, "-m", "gslice", *args], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert hub.served() == total(want) - got, f"seed {seed}"
    # what the killed run received but had not recorded was fetched again: at most one
    # record interval per connection, plus what sat in socket buffers
    assert first - got <= dl.CONNECTIONS * (dl.RECORD_EVERY + (4 << 20)), f"seed {seed}"
    assert subprocess.run([sys.executable, "-m", "gslice", "slice", str(src), "-o", str(tmp_path / "local"), *args[4:]],
                          env=env).returncode == 0
    assert same_output(tmp_path / "out", tmp_path / "local") == []


def test_a_single_file_checkpoint_without_an_index(hub, e2b, tmp_path, cli):
    hub.add_repo("google/gemma-3n-E2B-it", e2b, COMMIT)
    args = ["--layers-to-skip", "5-9", "--ffn-dims", "16", "--text-only"]
    result = cli("slice", "google/gemma-3n-E2B-it", "-o", tmp_path / "out", *args)
    assert result.code == 0, result.err
    want = expected_reads(e2b, 0, layers_to_skip=range(5, 10), widths=[16] * 25, drop_vision=True, drop_audio=True)
    assert list(want) == ["model.safetensors"]
    assert hub.served() == total(want) + headers(e2b)
    assert cli("slice", e2b, "-o", tmp_path / "local", *args).code == 0
    assert same_output(tmp_path / "out", tmp_path / "local") == []
