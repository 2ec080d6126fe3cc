"""Rule 8 of issue 11, the newcomer's details: the README says how to get a tiny checkpoint
(`gslice demo --keep DIR`, which works twice), the "writing" bar counts bytes written, a bar's
percentage never goes backwards, `--hash-source` shows its progress, and every repository file
that the code, the tests or the README refer to exists."""

from __future__ import annotations

import fcntl
import hashlib
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from conftest import hidden_leftovers
from gslice import engine, progress, verify
from gslice.manifest import MANIFEST_NAME, source_record
from gslice.slicing import prepare_slice, write_slice
from gslice.sources import resolve_source
from gslice.spec import SliceSpec

REPO = Path(__file__).resolve().parent.parent


def test_the_readme_says_how_to_get_a_tiny_checkpoint_and_it_works_twice(tmp_path):
    assert "gslice demo --keep" in (REPO / "README.md").read_text()
    keep = tmp_path / "demo"
    for _ in range(2):
        result = subprocess.run([sys.executable, "-m", "gslice", "demo", "--keep", str(keep)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert "all 1019 tensors byte-identical to an independent numpy slice" in result.stdout
    assert sorted(os.listdir(keep)) == ["tiny-gemma-3n-E2B", "tiny-gemma-3n-E4B"]
    checked = verify.verify_output(keep / "tiny-gemma-3n-E2B", keep / "tiny-gemma-3n-E4B")
    assert checked.ok, checked.problems


def test_the_writing_bar_counts_bytes_written(e4b, tmp_path):
    calls = []
    plan = prepare_slice(e4b, SliceSpec(layers_to_skip=tuple(range(20, 25))))
    report = write_slice(plan, tmp_path / "out", progress=lambda d, t: calls.append((d, t)))
    shards = sum((tmp_path / "out" / s).stat().st_size for s in report.shards)
    assert report.bytes_written == shards
    assert {t for _, t in calls if t} == {shards}  # with a manifest the shards are hashed too, uncounted
    assert calls[-1] == (shards, shards)


class Recorder:
    """Stands in for tqdm: remembers every bar and its (n, total) after each update."""

    bars: list = []

    def __init__(self, total, desc, **kwargs):
        self.n, self.total, self.desc, self.seen, self.leave = 0, total, desc, [], True
        Recorder.bars.append(self)

    def update(self, k):
        self.n += k
        self.seen.append((self.n, self.total))

    def close(self):
        pass


def test_a_bar_never_goes_backwards_across_engine_calls(e4b, tmp_path, monkeypatch):
    out = tmp_path / "out"
    write_slice(prepare_slice(e4b, SliceSpec()), out)
    calls = []
    verify.verify_output(out, e4b, progress=lambda d, t: calls.append((d, t)))  # hashes, then compares
    monkeypatch.setattr(progress, "tqdm", Recorder)
    Recorder.bars = []
    bar = progress.ByteProgress("verifying out", phases=("hashing files", "comparing tensors"))
    bar._enabled = True
    for d, t in calls:
        bar(d, t)
    assert [b.desc for b in Recorder.bars] == ["verifying out: hashing files", "verifying out: comparing tensors"]
    for b in Recorder.bars:
        fractions = [n / total for n, total in b.seen]
        assert fractions == sorted(fractions) and fractions[-1] == 1.0, b.desc


def test_hash_source_reports_its_progress(e4b, tmp_path):
    calls = []
    plan = prepare_slice(e4b, SliceSpec())
    write_slice(plan, tmp_path / "out", hash_source=True, hash_progress=lambda d, t: calls.append((d, t)))
    total = sum(p.stat().st_size for p in plan.checkpoint.shards)
    assert calls[-1] == (total, total)
    recorded = source_record(resolve_source(e4b), plan.checkpoint.shards, hash_source=True)
    assert [s["sha256"] for s in recorded["shards"]] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in plan.checkpoint.shards]


def test_hash_source_draws_a_bar_on_a_terminal(e4b, tmp_path):
    out = tmp_path / "out"
    pid, fd = pty.fork()
    if pid == 0:  # the child: gslice on a terminal of 100 columns (tqdm draws nothing on 0)
        fcntl.ioctl(1, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
        os.execv(sys.executable, [sys.executable, "-m", "gslice", "slice", str(e4b), "-o", str(out), "--hash-source"])
    text = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        text += chunk
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, text.decode(errors="replace")
    screen = text.decode(errors="replace")
    hashed = sum(p.stat().st_size for p in e4b.glob("*.safetensors")) / 1e6
    assert re.search(rf"hashing source: 100%\|█+\| {hashed:.2f}M/{hashed:.2f}M", screen), screen
    assert screen.index("hashing source: 100%") < screen.index("writing: 100%"), screen
    assert (out / MANIFEST_NAME).is_file() and hidden_leftovers(tmp_path) == []


# Repository paths as the code, the tests and the docs write them.
REFERENCE = re.compile(r"(?<![\w/.-])((?:\.ci|benches|docs|python/gslice|rust|tests)/[\w./-]*\w)")
SCANNED = ["README.md", "docs", "python", "tests", "benches", ".ci", "rust", "pyproject.toml"]


def referenced_paths() -> dict[str, str]:
    found = {}
    for top in SCANNED:
        root = REPO / top
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file() and p.suffix in {".py", ".md", ".rs", ".toml", ""}]
        for f in files:
            if "target" in f.parts or f.name.endswith(".so"):
                continue
            for m in REFERENCE.finditer(f.read_text(errors="replace")):
                found.setdefault(m.group(1), str(f.relative_to(REPO)))
    return found


def test_every_file_the_repository_refers_to_exists():
    refs = referenced_paths()
    assert "benches/full.py" in refs and "python/gslice/data/gemma-3n-E4B.tensors.json" in refs
    missing = {ref: where for ref, where in refs.items() if not (REPO / ref).exists()}
    assert missing == {}
    brief = "DESIGN" + ".md"  # the project's brief, kept outside the repository
    for f in [*REPO.glob("*.md"), *(REPO / "docs").glob("*.md"), *(REPO / "python").rglob("*.py"), *(REPO / "tests").rglob("*.py")]:
        assert brief not in f.read_text(), f"{f} refers to {brief}, which is not in the repository"
