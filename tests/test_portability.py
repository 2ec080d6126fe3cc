"""What keeps gslice working beyond Linux, checked on Linux: the engine's portable I/O path
(what macOS and Windows run; ``GSLICE_PORTABLE_IO=1`` here) writes the same bytes as the
Linux fast path; hard links fall back to copies; Windows' naming and path-length rules are
enforced before anything is written; process liveness never signals another process."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import gslice
from gslice import engine, interrupts, system
from gslice.bulk import prepare_bulk, select_presets, write_bulk
from gslice.errors import GsliceError, Interrupted

from conftest import hidden_leftovers

E2B = dict(layers_to_skip=range(20, 25), ffn_dims=32)


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every file's bytes; the manifest without its creation time (the only field that
    differs between two runs)."""
    files = {}
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            data = f.read_bytes()
            if f.name == "gslice-manifest.json":
                manifest = json.loads(data)
                manifest.pop("created")
                data = json.dumps(manifest, sort_keys=True).encode()
            files[str(f.relative_to(folder))] = data
    return files


@pytest.mark.parametrize("quant", [None, "int4"])
def test_the_portable_path_writes_what_the_fast_path_writes(e4b, tmp_path, monkeypatch, quant):
    reports = {}
    for value in ("0", "1"):
        monkeypatch.setenv(engine.PORTABLE_IO_ENV, value)
        kw = dict(quant=quant, group_size=32) if quant else {}
        reports[value] = gslice.slice_model(e4b, tmp_path / value / "out", **E2B, **kw)
    fast, portable = reports["0"], reports["1"]
    assert fast.io == ("linux-fast" if sys.platform == "linux" else "portable")
    assert portable.io == "portable"
    assert portable.bytes_kernel_copied == 0
    a, b = folder_bytes(tmp_path / "0" / "out"), folder_bytes(tmp_path / "1" / "out")
    assert a.keys() == b.keys() and len(a) >= 5
    assert [name for name in a if a[name] != b[name]] == []


def test_bulk_on_the_portable_path_equals_the_fast_path(e4b, tmp_path, monkeypatch):
    """Shared shards hard-linked into several outputs, on both paths."""
    written = {}
    for value in ("0", "1"):
        monkeypatch.setenv(engine.PORTABLE_IO_ENV, value)
        out = tmp_path / value
        report = write_bulk(prepare_bulk(e4b, select_presets("google-e2b,google-main,google-e2.54b-layer"), out))
        assert [r.status for r in report.rows] == ["written"] * 3
        written[value] = folder_bytes(out)
    assert written["0"].keys() == written["1"].keys()
    assert [name for name in written["0"] if written["0"][name] != written["1"][name]] == []


def test_the_summary_says_how_bytes_moved(cli, e4b, tmp_path, monkeypatch):
    lines = {}
    for value in ("0", "1"):
        monkeypatch.setenv(engine.PORTABLE_IO_ENV, value)
        result = cli("slice", e4b, "-o", tmp_path / value, "--layers-to-skip", "20-24", "--ffn-dims", "32")
        assert result.code == 0, result.err
        lines[value] = next(line for line in result.out.splitlines() if line.startswith("written"))
    assert lines["1"].endswith("/s, portable I/O)")
    if sys.platform == "linux":
        assert lines["0"].endswith(" copied in-kernel)")


def test_the_io_path_setting_is_checked(cli, e4b, tmp_path, monkeypatch):
    monkeypatch.setenv(engine.PORTABLE_IO_ENV, "yes")
    result = cli("slice", e4b, "-o", tmp_path / "out", "--layers-to-skip", "20-24", "--ffn-dims", "32")
    assert result.code == 2
    assert result.err == (
        "error: GSLICE_PORTABLE_IO='yes': must be 1 (the portable I/O path), or 0 or unset (the platform's fastest)\n"
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(sys.platform != "linux" or os.geteuid() != 0 or shutil.which("mount") is None,
                    reason="mounting a tmpfs needs Linux and root")
def test_outputs_on_another_filesystem_get_copies_instead_of_links(e4b, tmp_path):
    """Two outputs share every shard; the second lives on another filesystem, where a hard
    link from the staging folder (beside the first) is impossible: it gets copies."""
    other = tmp_path / "other-fs"
    other.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(other)], check=True)
    try:
        tensors = [engine.TensorPlan(n, n) for n in engine.inspect(e4b).tensors]
        near, far = tmp_path / "near", other / "far"
        report = engine.execute(e4b, [engine.OutputPlan(near, tensors), engine.OutputPlan(far, tensors)])
        assert report.shard_files_written == len(report.outputs[0].shards)  # written once
        for shard in report.outputs[0].shards:
            assert (far / shard.name).read_bytes() == (near / shard.name).read_bytes()
            assert (far / shard.name).stat().st_nlink == 1  # a copy, not a link
            assert (far / shard.name).stat().st_dev != (near / shard.name).stat().st_dev
        assert hidden_leftovers(tmp_path) == [] and hidden_leftovers(other) == []
    finally:
        subprocess.run(["umount", str(other)], check=True)


# -- Windows naming rules (checked here by pretending to be Windows) ----------------------


@pytest.mark.parametrize("name, problem", [
    ("CON", "CON is a reserved device name"),
    ("nul.txt", "NUL is a reserved device name"),
    ("Com1", "COM1 is a reserved device name"),
    ("LPT\u00b9.tar.gz", "LPT\u00b9 is a reserved device name"),
    ("aux .json", "AUX is a reserved device name"),
    ("out.", "it ends with a dot or a space, which Windows drops, so it would name another folder"),
    ("out ", "it ends with a dot or a space, which Windows drops, so it would name another folder"),
    ("a:b?", "it contains ':', '?'"),
    ("tab\there", "it contains '\\t'"),
])
def test_names_windows_cannot_hold(name, problem):
    assert system.windows_name_problem(name) == problem


@pytest.mark.parametrize("name", ["gemma-3n-E2B", "CONSOLE", "com10", "nul-free", "LPT", ".hidden", "a.b.c"])
def test_names_windows_can_hold(name):
    assert system.windows_name_problem(name) is None


def test_a_reserved_output_name_is_refused_before_anything_is_written(cli, e4b, tmp_path, monkeypatch):
    monkeypatch.setattr(system, "WINDOWS", True)
    out = tmp_path / "new" / "CON"
    result = cli("slice", e4b, "-o", out, "--layers-to-skip", "20-24", "--ffn-dims", "32")
    assert result.code == 2
    assert result.err == f"error: output path {out}: 'CON' is not a valid name on Windows (CON is a reserved device name)\n"
    assert list(tmp_path.iterdir()) == []


def test_a_trailing_dot_is_refused_in_bulk_too(cli, e4b, tmp_path, monkeypatch):
    monkeypatch.setattr(system, "WINDOWS", True)
    out = tmp_path / "presets."
    result = cli("bulk", e4b, "--presets", "google-e2b", "-o", out)
    assert result.code == 2
    assert result.err == (f"error: output path {out / 'google-e2b'}: 'presets.' is not a valid name on Windows "
                          "(it ends with a dot or a space, which Windows drops, so it would name another folder)\n")
    assert list(tmp_path.iterdir()) == []


def test_paths_longer_than_windows_allows_are_refused_unless_long_paths_are_on(e4b, tmp_path, monkeypatch):
    monkeypatch.setattr(system, "WINDOWS", True)
    monkeypatch.setattr(system, "long_paths_enabled", lambda: False)
    deep = tmp_path / ("d" * (250 - len(str(tmp_path))))
    out = deep / "out"
    # the longest file is the shard name (32 characters) inside the temporary folder
    # ".out.gslice-partial-<pid>-<n>" beside the output
    length = len(str(deep)) + 1 + len(".out.gslice-partial-4294967295-99999") + 1 + len("model-99999-of-99999.safetensors")
    with pytest.raises(GsliceError) as e:
        gslice.slice_model(e4b, out, **E2B)
    assert str(e.value) == (f"output path {out}: its files' paths reach {length} characters, over Windows' limit of 259 "
                            "(choose a shorter output path, or enable long paths: LongPathsEnabled)")
    assert not deep.exists()
    monkeypatch.setattr(system, "long_paths_enabled", lambda: True)
    assert gslice.slice_model(e4b, out, **E2B).layers == 30


def test_ctrl_break_stops_a_run_like_ctrl_c(monkeypatch):
    """Windows' SIGBREAK is trapped with SIGINT and SIGTERM; off Windows, SIGUSR1 stands in."""
    stand_in = getattr(signal, "SIGBREAK", None) or signal.SIGUSR1
    monkeypatch.setattr(signal, "SIGBREAK", stand_in, raising=False)
    importlib.reload(interrupts)
    try:
        assert stand_in in interrupts.SIGNALS
        previous = signal.signal(stand_in, signal.SIG_DFL)
        with pytest.raises(Interrupted) as e, interrupts.trapped("nothing was written"):
            signal.raise_signal(stand_in)
        assert e.value.signum == stand_in
        assert str(e.value) == f"interrupted ({signal.Signals(stand_in).name}): nothing was written"
        assert signal.getsignal(stand_in) == signal.SIG_DFL  # restored after the block
        signal.signal(stand_in, previous)
    finally:
        monkeypatch.undo()
        importlib.reload(interrupts)


def test_process_liveness_sends_no_signal():
    assert system.process_alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: its pid is free
    assert not system.process_alive(child.pid)
