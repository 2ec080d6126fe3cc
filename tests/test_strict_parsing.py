"""Rule 5 of issue 11: strict input parsing. Integers are ASCII digits only, a spec file must
say something and say it once, and every unusable config, spec or manifest file (unreadable,
not UTF-8, absurdly nested, holding a huge integer) ends in exit 2 with the file named, never a
traceback. A manifest that names a path outside its folder is refused without reading it."""

from __future__ import annotations

import json
import os

import pytest

from conftest import hidden_leftovers, read_json


def assert_refused(result, message: str, out) -> None:
    assert (result.code, result.out, result.err) == (2, "", f"error: {message}\n")
    assert not out.exists() and hidden_leftovers(out.parent) == []


NOT_ASCII = [
    (["--layers-to-skip", "١"], "--layers-to-skip: '١' is not an integer (ASCII digits only)"),
    (["--layers-to-skip", "1_0"], "--layers-to-skip: '1_0' is not an integer (ASCII digits only)"),
    (["--layers-to-skip", "20-２４"], "--layers-to-skip: '２４' is not an integer (ASCII digits only)"),
    (["--ffn-dims", "２０"], "--ffn-dims: '２０' is not an integer (ASCII digits only)"),
    (["--ffn-dims", "+32"], "--ffn-dims: '+32' is not an integer (ASCII digits only)"),
    (["--layers-to-skip", "9" * 40], "--layers-to-skip: 999999999999... has 40 digits; no index or width is that large"),
    (["--quant", "int4", "--group-size", "６４"], "--group-size: '６４' is not an integer (ASCII digits only)"),
    (["--max-shard-size", "١GB"], "--max-shard-size: '١GB' is not a size (examples: 5GB, 512MiB, 1000000)"),
]


@pytest.mark.parametrize("args,message", NOT_ASCII, ids=[a[-1] for a, _ in NOT_ASCII])
def test_integers_are_ascii_digits(cli, e4b, tmp_path, args, message):
    out = tmp_path / "out"
    assert_refused(cli("slice", e4b, "-o", out, *args), message, out)


def test_integer_options_are_ascii_digits_too(cli, e4b, tmp_path):
    out = tmp_path / "out"
    result = cli("slice", e4b, "-o", out, "--threads", "٢")
    assert result.code == 2 and "'٢' is not an integer (ASCII digits only)" in result.err
    result = cli("plan", e4b, "--context", "4_096")
    assert result.code == 2 and "'4_096' is not an integer (ASCII digits only)" in result.err
    assert not out.exists()


KEYS = "layers_to_skip, ffn_dims, audio_layers_to_skip, drop_vision, drop_audio, text_only"
SPEC_FILES = [
    ({"name": "my slice"}, "spec {spec} has none of the keys " + KEYS + ": it says nothing to cut"),
    ({}, "spec {spec} has none of the keys " + KEYS + ": it says nothing to cut"),
    ({"layers_to_skip": 5}, "layers_to_skip must be a list of integers, not 5"),
    ({"layers_to_skip": False}, "layers_to_skip must be a list of integers, not False"),
    ({"layers_to_skip": ""}, "layers_to_skip must be a list of integers, not ''"),
    ({"ffn_dims": 32, "ffn_hidden_dims": 32}, "spec {spec}: 'ffn_dims' and 'ffn_hidden_dims' are two spellings of one key; give one"),
    ({"drop_vision": "true"}, "drop_vision must be true or false, not 'true'"),
]


@pytest.mark.parametrize("spec,message", SPEC_FILES, ids=[m[:30] for _, m in SPEC_FILES])
def test_spec_files_say_something_once(cli, e4b, tmp_path, spec, message):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    out = tmp_path / "out"
    assert_refused(cli("slice", e4b, "-o", out, "--spec", path), message.format(spec=path), out)


BAD_FILES = [
    (b'{"ffn_dims": 32, "ffn_dims": 16}', "{what} {path}: key 'ffn_dims' appears twice in one object"),
    (b'{"ffn_dims": \xff32}', "{what} {path} is not UTF-8 text (byte 0xff at offset 13)"),
    (b"[" * 100_000 + b"]" * 100_000, "{what} {path} nests arrays or objects too deeply"),
    (b'{"ffn_dims": ' + b"7" * 5000 + b"}", "{what} {path}: the integer 777777777777... has 5000 digits; gslice reads integers of up to 64 bits"),
    (b'{"ffn_dims": NaN}', "{what} {path}: NaN is not a JSON number"),
    (b'{"ffn_dims": 1e999}', "{what} {path}: the number 1e999 does not fit in a float"),
]


@pytest.mark.parametrize("content,message", BAD_FILES, ids=["duplicate key", "not utf-8", "nesting", "huge int", "NaN", "inf"])
def test_unusable_spec_config_and_manifest_files(cli, e4b, e4b_copy, tmp_path, content, message):
    out = tmp_path / "out"
    spec = tmp_path / "spec.json"
    spec.write_bytes(content)
    assert_refused(cli("slice", e4b, "-o", out, "--spec", spec), message.format(what="spec", path=spec), out)
    config = e4b_copy / "config.json"
    config.write_bytes(content)
    assert_refused(cli("slice", e4b_copy, "-o", out), message.format(what="config", path=config), out)
    assert cli("slice", e4b, "-o", out, "-q").code == 0
    manifest = out / "gslice-manifest.json"
    manifest.write_bytes(content)
    result = cli("verify", out)
    assert (result.code, result.err) == (2, "error: " + message.format(what="manifest", path=manifest) + "\n")


def test_an_unreadable_config_names_the_file(cli, e4b_copy, tmp_path):
    config = e4b_copy / "config.json"
    config.unlink()
    config.mkdir()  # a folder where the file should be (root reads files whatever their mode)
    (config / "x").write_text("{}")
    out = tmp_path / "out"
    assert_refused(cli("slice", e4b_copy, "-o", out), f"cannot read config {config}: Is a directory", out)
    spec = tmp_path / "link.json"
    spec.symlink_to(tmp_path / "gone.json")
    assert_refused(cli("slice", e4b_copy, "-o", out, "--spec", spec), f"cannot read spec {spec}: No such file or directory", out)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_a_manifest_naming_a_path_outside_its_folder_is_not_read(cli, e4b, tmp_path):
    out = tmp_path / "out"
    assert cli("slice", e4b, "-o", out, "-q").code == 0
    # A FIFO outside the folder: opening it for reading would block, so the test would hang.
    fifo = tmp_path / "secret"
    os.mkfifo(fifo)
    manifest = read_json(out / "gslice-manifest.json")
    for name in ("../secret", str(fifo), "sub/../../secret"):
        bad = {**manifest, "files": {**manifest["files"], name: {"size": 0, "sha256": "0" * 64}}}
        (out / "gslice-manifest.json").write_text(json.dumps(bad))
        result = cli("verify", out)
        assert (result.code, result.err) == (
            2, f"error: {out / 'gslice-manifest.json'} is not a gslice-manifest/1 manifest: file name {name!r} is not a plain file "
               "name inside the folder\n")
    # A listed file replaced by a link to the FIFO: reported, not followed.
    (out / "gslice-manifest.json").write_text(json.dumps(manifest))
    (out / "README.md").unlink()
    (out / "README.md").symlink_to(fifo)
    result = cli("verify", out)
    assert (result.code, result.out) == (1, f"{out}: README.md is not a regular file (a symbolic link or a folder); it was not read\n")


def test_a_huge_config_value_is_refused_before_it_is_used(cli, e4b_copy, tmp_path):
    config = read_json(e4b_copy / "config.json")
    config["text_config"]["num_hidden_layers"] = 10**15  # would build a layer list of that length
    (e4b_copy / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    assert_refused(cli("slice", e4b_copy, "-o", out),
                   f"{e4b_copy}/config.json: text config field num_hidden_layers is {10**15}, expected an integer from 1 to 1024", out)
