"""Rules 2 and 3 of issue 11, with real signals sent to real `gslice` processes: SIGTERM
cleans up like SIGINT, an interruption says exactly what is on disk (nothing, the previous
output unchanged, or the finished output), and a later run removes what a killed run left.

A signal "mid-write" is made certain, not likely: the test freezes the process (SIGSTOP) as
soon as its staging folder appears, checks that the output does not exist yet, then sends the
signal and lets it continue (SIGCONT). The source is a large sparse checkpoint, so the write
takes long enough for that, while making the source costs nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import hidden_leftovers, tree_digest, write_sparse_checkpoint
from gslice.testing import TinyGemma3n

# Windows has neither SIGSTOP/SIGCONT nor a SIGTERM that one process can send another.
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals sent to real processes")

GSLICE = [sys.executable, "-m", "gslice"]
# 35 x 8 PLE columns of 2**18 rows: a 147 MB source, about 125 MB of output to write.
BIG = TinyGemma3n(vocab_per_layer=1 << 18)


def like_a_terminal_job(ignore_sigint: bool = False):
    """The child's SIGINT as a shell sets it: default for a foreground job (Ctrl-C), ignored
    for a job started with ``&`` or nohup. Children inherit an ignored SIGINT, so without
    this the tests would depend on how pytest itself was started (CI in the background)."""
    return lambda: signal.signal(signal.SIGINT, signal.SIG_IGN if ignore_sigint else signal.SIG_DFL)


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    return write_sparse_checkpoint(tmp_path_factory.mktemp("big") / "src", BIG)


def stopped_when(args: list, ready, timeout: float = 60) -> subprocess.Popen:
    """Starts gslice with ``args`` and freezes it (SIGSTOP) the moment ``ready()`` holds."""
    proc = subprocess.Popen([*GSLICE, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=like_a_terminal_job())
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"gslice ended ({proc.returncode}) before it could be stopped mid-write: {err}")
        assert time.monotonic() < deadline, "gslice never reached the point to stop it at"
        time.sleep(0.001)
    os.kill(proc.pid, signal.SIGSTOP)
    return proc


def deliver(proc: subprocess.Popen, sig: int) -> tuple[int, str, str]:
    os.kill(proc.pid, sig)
    os.kill(proc.pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


def staging_exists(parent: Path) -> bool:
    return any(n.startswith(".gslice-staging-") for n in os.listdir(parent))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_write_leaves_nothing(big, tmp_path, sig):
    out = tmp_path / "out"
    proc = stopped_when(["slice", big, "-o", out, "--layers-to-skip", "20-24", "-q"], lambda: staging_exists(tmp_path))
    assert not out.exists()  # stopped mid-write
    code, stdout, err = deliver(proc, sig)
    name = signal.Signals(sig).name
    assert (code, stdout, err) == (128 + sig, "", f"interrupted ({name}): nothing was written: {out} does not exist; no temporary files are left\n")
    assert not out.exists() and hidden_leftovers(tmp_path) == []


def test_a_signal_while_replacing_keeps_the_previous_output(big, tmp_path):
    out = tmp_path / "out"
    first = subprocess.run([*GSLICE, "slice", big, "-o", out, "-q"], capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    before = tree_digest(out)
    proc = stopped_when(["slice", big, "-o", out, "--layers-to-skip", "20-24", "--overwrite", "-q"], lambda: staging_exists(tmp_path))
    code, _, err = deliver(proc, signal.SIGTERM)
    assert (code, err) == (143, f"interrupted (SIGTERM): nothing was written: the previous output {out} is unchanged; no temporary files are left\n")
    assert tree_digest(out) == before and hidden_leftovers(tmp_path) == []
    assert subprocess.run([*GSLICE, "verify", out, "-q"]).returncode == 0


def test_a_bulk_run_stopped_between_outputs_says_which_are_complete(big, tmp_path):
    out = tmp_path / "presets"
    first = out / "google-main"
    # Without de-duplication the second output's files are all its own; with one thread they are
    # written only once the first output is in place (the thread that ends a piece assembles it).
    proc = stopped_when(["bulk", big, "--presets", "google-main,google-e2b", "-o", out, "--no-dedupe", "--jobs", "1", "-q"],
                        lambda: first.exists() and staging_exists(out))
    assert not (out / "google-e2b").exists()
    code, _, err = deliver(proc, signal.SIGTERM)
    assert (code, err) == (143, "interrupted (SIGTERM): 1 of 2 outputs are complete (google-main); the other 1 were not written; "
                                "no temporary files are left; run again with --resume to finish\n")
    assert sorted(os.listdir(out)) == ["google-main"]
    resumed = subprocess.run([*GSLICE, "bulk", big, "--presets", "google-main,google-e2b", "-o", out, "--resume", "--json"],
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert {r["slug"]: r["status"] for r in json.loads(resumed.stdout)["rows"]} == {"google-main": "skipped", "google-e2b": "written"}


def test_a_killed_run_is_cleaned_up_by_the_next_one(big, tmp_path):
    out = tmp_path / "out"
    proc = stopped_when(["slice", big, "-o", out, "-q"], lambda: staging_exists(tmp_path))
    proc.kill()  # SIGKILL: nothing can clean up
    proc.communicate()
    left = hidden_leftovers(tmp_path)
    assert left and all(f"-{proc.pid}-" in n for n in left)
    again = subprocess.run([*GSLICE, "slice", big, "-o", out, "--layers-to-skip", "20-24"], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    notes = [line for line in again.stderr.splitlines() if line.startswith("note: ")]
    assert notes == [f"note: removed {tmp_path / n}, left by process {proc.pid}, which is no longer running" for n in left]
    assert hidden_leftovers(tmp_path) == []


def test_stale_leftovers_are_removed_and_a_live_run_is_left_alone(e4b, tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = subprocess.Popen(["true"])  # ended but not reaped yet: a zombie writes nothing either
    while not Path(f"/proc/{dead.pid}/stat").read_text().rsplit(")", 1)[1].startswith(" Z"):
        time.sleep(0.01)
    live = subprocess.Popen(["sleep", "60"])
    try:
        stale = [tmp_path / f".gslice-staging-{gone.pid}-0", tmp_path / f".out.gslice-partial-{gone.pid}-3"]
        zombie = tmp_path / f".gslice-staging-{dead.pid}-0"
        running = tmp_path / f".gslice-staging-{live.pid}-1"
        for d in [*stale, zombie, running]:
            d.mkdir()
            (d / "piece-00000.safetensors").write_bytes(b"partial")
        result = subprocess.run([*GSLICE, "slice", e4b, "-o", tmp_path / "out"], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        said = {running: f"note: left {running} alone: process {live.pid} is still writing it"}
        said.update({d: f"note: removed {d}, left by process {gone.pid}, which is no longer running" for d in stale})
        said[zombie] = f"note: removed {zombie}, left by process {dead.pid}, which is no longer running"
        assert result.stderr.splitlines() == [said[d] for d in sorted(said)]
        assert hidden_leftovers(tmp_path) == [running.name] and (running / "piece-00000.safetensors").read_bytes() == b"partial"
    finally:
        live.kill()
        live.wait()
        dead.wait()


# A signal that lands just as the engine returns, or while the report is printed: the output
# is complete, and the message says so. The child makes the timing certain by sending the
# signal to itself from those two places.
AT_THE_END = """
import os, signal, sys
from gslice import engine
from gslice.cli import main, slice as cli_slice
where = sys.argv.pop(1)
if where == "engine":
    real = engine._engine_report
    def late(raw):
        report = real(raw)
        os.kill(os.getpid(), signal.SIGINT)
        return report
    engine._engine_report = late
else:
    def late(*args):
        os.kill(os.getpid(), signal.SIGTERM)
    cli_slice.render_report = late
main(sys.argv[1:], prog_name="gslice")
"""


@pytest.mark.parametrize("where,sig", [("engine", signal.SIGINT), ("report", signal.SIGTERM)])
def test_a_signal_after_the_output_is_finished_says_it_is_complete(e4b, tmp_path, where, sig):
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-c", AT_THE_END, where, "slice", e4b, "-o", out], capture_output=True, text=True,
                            preexec_fn=like_a_terminal_job())
    name = signal.Signals(sig).name
    said = {
        "engine": f"{out} is complete: it was finished and put in place before the run stopped; no temporary files are left",
        "report": f"the output {out} is complete",
    }[where]
    assert (result.returncode, result.stdout, result.stderr) == (128 + sig, "", f"interrupted ({name}): {said}\n")
    assert subprocess.run([*GSLICE, "verify", out, "--against", e4b, "-q"]).returncode == 0
    assert hidden_leftovers(tmp_path) == []


def test_a_run_started_with_sigint_ignored_keeps_ignoring_it(e4b, tmp_path):
    # `gslice slice ... &` from a script: the shell ignores SIGINT for the job, and gslice
    # leaves that choice alone (it installs its handler only over the default one).
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-c", AT_THE_END, "engine", "slice", e4b, "-o", out, "-q"],
                            capture_output=True, text=True, preexec_fn=like_a_terminal_job(ignore_sigint=True))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert subprocess.run([*GSLICE, "verify", out, "--against", e4b, "-q"]).returncode == 0
