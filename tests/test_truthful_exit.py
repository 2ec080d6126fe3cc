"""Rule 2 of issue 11: the exit status and the message tell the truth about the disk. Every
check and every computation that can fail runs before the first byte is written, and after the
output is in place nothing can turn success into failure. (Signals: tests/test_signals.py.)"""

from __future__ import annotations

import json

import pytest

import gslice
from conftest import hidden_leftovers, read_json
from gslice import accounting, modelcard

# Each of these once wrote a complete output and then failed with a TypeError in the size
# accounting (and `plan` / `--dry-run` gave tracebacks).
BAD_FIELDS = [
    ("head_dim", None, "text config field head_dim is None, expected a positive integer"),
    ("num_key_value_heads", "1", "text config field num_key_value_heads is '1', expected a positive integer"),
    ("sliding_window", "512", "text config field sliding_window is '512', expected a positive integer"),
    ("num_kv_shared_layers", 15.0, "text config field num_kv_shared_layers is 15.0, expected an integer of at least 0"),
    ("layer_types", "sliding_attention", "text config field layer_types is 'sliding_attention', expected a list of layer type names"),
]


@pytest.mark.parametrize("field,value,why", BAD_FIELDS, ids=[f for f, _, _ in BAD_FIELDS])
def test_a_bad_config_field_is_refused_while_planning(cli, e4b_copy, tmp_path, field, value, why):
    config = read_json(e4b_copy / "config.json")
    config["text_config"][field] = value
    (e4b_copy / "config.json").write_text(json.dumps(config))
    message = f"error: {e4b_copy / 'config.json'}: {why}\n"
    out = tmp_path / "out"
    for args in (["slice", e4b_copy, "-o", out], ["slice", e4b_copy, "-o", out, "--dry-run"], ["plan", e4b_copy], ["info", e4b_copy]):
        result = cli(*args)
        assert (result.code, result.out, result.err) == (2, "", message), args
    assert not out.exists() and hidden_leftovers(tmp_path) == []


@pytest.mark.parametrize("where", ["size accounting", "model card"])
def test_what_can_fail_fails_before_the_first_byte(e4b, tmp_path, monkeypatch, where):
    def broken(*args, **kwargs):
        raise gslice.InternalError(f"{where} failed")

    if where == "size accounting":
        monkeypatch.setattr(accounting, "size_plan", broken)
    else:
        monkeypatch.setattr(modelcard, "model_card", broken)
    with pytest.raises(gslice.InternalError, match=f"^{where} failed$"):
        gslice.slice_model(e4b, tmp_path / "out", layers_to_skip=range(20, 25))
    assert list(tmp_path.iterdir()) == []  # not even a staging folder was made


def test_a_failing_progress_bar_does_not_undo_a_finished_slice(e4b, tmp_path):
    """A callback that raises cancels a run, but once the output is in place there is nothing
    left to cancel: the slice stands and is reported."""
    out, seen = tmp_path / "out", []

    def bar(done, total):
        seen.append((done, total))
        if out.exists():
            raise OSError("the terminal went away")

    report = gslice.slice_model(e4b, out, progress=bar)
    assert seen[-1] == (report.bytes_written, report.bytes_written)
    assert gslice.verify.verify_output(tmp_path / "out", e4b).ok
    assert hidden_leftovers(tmp_path) == []


def test_a_failed_upload_says_the_output_is_complete(cli, e4b, tmp_path, monkeypatch):
    from gslice import hub

    monkeypatch.setattr(hub, "create_repo", lambda repo, private=False: f"https://huggingface.co/{repo}")
    monkeypatch.setattr(hub, "unreachable", lambda: "connection refused")
    out = tmp_path / "out"
    result = cli("slice", e4b, "-o", out, "--push-to-hub", "me/x", "-q")
    assert (result.code, result.out) == (2, "")
    assert result.err == (f"error: cannot reach the Hugging Face Hub at {hub.endpoint()} (connection refused): the upload of {out} "
                          f"to me/x did not start; the output {out} is complete on disk (`gslice push {out} me/x` uploads it)\n")
    assert cli("verify", out, "--against", e4b, "-q").code == 0
