"""Rule 7 of issue 11: with the Hub unreachable, --push-to-hub, `gslice push`, `presets
--from-hub` and a Hub source end in one line and exit 2 within seconds, not a traceback or a
minute of retries. Real `gslice` processes, with HF_ENDPOINT pointing at a closed port on
127.0.0.1 and at a server that accepts connections and never answers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from gslice.hub import PROBE_TIMEOUT

# Far more than the probe needs; a process still running by then is a failure, not a wait.
DEADLINE = 3 * PROBE_TIMEOUT


@pytest.fixture
def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def silent_server():
    """Accepts connections and never sends a byte."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    held, stop = [], threading.Event()

    def accept():
        s.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(s.accept()[0])
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{s.getsockname()[1]}"
    stop.set()
    t.join()
    for c in held:
        c.close()
    s.close()


@pytest.fixture
def output(e4b, tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "gslice", "slice", str(e4b), "-o", str(out), "-q"])
    assert done.returncode == 0
    return out


def gslice(endpoint: str, home, *args) -> tuple[int, str, str, float]:
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HOME": str(home), "HF_TOKEN": "hf_test"}
    env.pop("HF_HUB_OFFLINE", None)
    started = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "gslice", *map(str, args)], capture_output=True, text=True, env=env, timeout=DEADLINE)
    return r.returncode, r.stdout, r.stderr, time.monotonic() - started


def commands(e4b, output, tmp_path):
    return {
        "slice --push-to-hub": (["slice", e4b, "-o", tmp_path / "new", "--push-to-hub", "me/x"],
                                "cannot create or access repository me/x"),
        "push": (["push", output, "me/x"], "cannot create or access repository me/x"),
        "presets --from-hub": (["presets", "--from-hub"], None),
        "a Hub source": (["info", "me/gemma"], None),
    }


def expected(name: str, endpoint: str, reason: str, what: str | None, home) -> str:
    where = f"the Hugging Face Hub at {endpoint} ({reason})"
    if name == "presets --from-hub":
        return (f"error: cannot reach {where}, and configs.csv of the Hub dataset google/gemma3n-slicing-configs is not in "
                "the Hugging Face cache\n")
    if name == "a Hub source":
        return f"error: cannot reach {where}, and me/gemma (revision main) is not in the Hugging Face cache {home / 'hub'}\n"
    return f"error: cannot reach {where}: {what}\n"


@pytest.mark.parametrize("name", ["slice --push-to-hub", "push", "presets --from-hub", "a Hub source"])
def test_a_closed_port_is_one_line_at_once(e4b, output, tmp_path, closed_port, name):
    args, what = commands(e4b, output, tmp_path)[name]
    code, out, err, _ = gslice(closed_port, tmp_path / "hf", *args)
    assert (code, out, err) == (2, "", expected(name, closed_port, "connection refused", what, tmp_path / "hf"))
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("name", ["slice --push-to-hub", "presets --from-hub"])
def test_a_server_that_never_answers_is_one_line_within_seconds(e4b, output, tmp_path, silent_server, name):
    args, what = commands(e4b, output, tmp_path)[name]
    code, out, err, seconds = gslice(silent_server, tmp_path / "hf", *args)
    reason = f"no answer within {PROBE_TIMEOUT:g} s"
    assert (code, out, err) == (2, "", expected(name, silent_server, reason, what, tmp_path / "hf"))
    assert PROBE_TIMEOUT <= seconds < DEADLINE, seconds
    assert not (tmp_path / "new").exists()
