"""Rule 1 of issue 11: --overwrite replaces only what gslice wrote (a folder holding its
manifest; a file, once a file format recognises its own), never the source or anything in it,
the current directory or a parent of it, a folder with files gslice did not write, a special
file, or a link to any of those. Each refusal is exit 2 with one exact line, and the disk is
left exactly as it was; a previous output is replaced only by a complete new one."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import gslice
from conftest import hidden_leftovers, read_json, tree_digest
from gslice import ownership

SHARD1 = "model-00001-of-00002.safetensors"


def refused(result, message: str) -> None:
    assert (result.code, result.out, result.err) == (2, "", f"error: {message}\n")


SOURCE_PATHS = {
    SHARD1: "is part of",
    "config.json": "is part of",
    "tokenizer_config.json": "is part of",
    "notes/old-run": "lies inside",  # not read by gslice, but inside the source
    ".": "holds",
    "..": "holds",
}


@pytest.mark.parametrize("inside", SOURCE_PATHS)
def test_the_source_and_what_holds_it_are_never_replaced(cli, e4b_copy, inside):
    (e4b_copy / "notes" / "old-run").mkdir(parents=True)
    (e4b_copy / "notes" / "old-run" / "gslice-manifest.json").write_text("{}")
    target = Path(os.path.normpath(e4b_copy / inside))
    parent = e4b_copy.parent
    before = tree_digest(parent)
    result = cli("slice", e4b_copy, "-o", e4b_copy / inside, "--overwrite")
    refused(result, f"output path {target} {SOURCE_PATHS[inside]} the source checkpoint {e4b_copy}; refusing to replace it")
    assert tree_digest(parent) == before


@pytest.mark.parametrize("arg", ["", ".", "..", "./"])
def test_the_current_directory_and_its_parents_are_never_replaced(cli, e4b, tmp_path, monkeypatch, arg):
    cwd = tmp_path / "work" / "here"
    cwd.mkdir(parents=True)
    (cwd / "thesis.tex").write_text("years of work")
    monkeypatch.chdir(cwd)
    before = tree_digest(tmp_path)
    result = cli("slice", e4b, "-o", arg, "--overwrite")
    if arg == "":
        refused(result, "output path '' is empty, which names the current directory; refusing to write there")
    else:
        target = cwd.parent if arg == ".." else cwd
        refused(result, f"output path {target} is the current directory or one of its parents; refusing to replace it")
    assert tree_digest(tmp_path) == before


def special_files(tmp_path: Path) -> dict[str, Path]:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    sock = tmp_path / "sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(sock))
    s.close()
    return {"fifo": fifo, "socket": sock, "device": Path("/dev/null")}


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs and Unix sockets are POSIX")
def test_special_files_are_never_replaced(cli, e4b, tmp_path):
    for kind, path in special_files(tmp_path).items():
        mode = path.lstat().st_mode
        result = cli("slice", e4b, "-o", path, "--overwrite")
        refused(result, f"output path {path} is a special file (a device, FIFO or socket); refusing to replace it")
        assert path.lstat().st_mode == mode, kind
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert hidden_leftovers(tmp_path) == []


def test_a_folder_or_file_gslice_did_not_write_is_never_replaced(cli, e4b, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    file = tmp_path / "model.safetensors"
    shutil.copyfile(e4b / SHARD1, file)  # even a checkpoint: gslice did not write it
    before = tree_digest(tmp_path)
    refused(cli("slice", e4b, "-o", mine, "--overwrite"),
            f"output path {mine} is a folder gslice did not write (it has no gslice-manifest.json); refusing to replace it")
    refused(cli("slice", e4b, "-o", file, "--overwrite"), f"output path {file} is a file gslice did not write; refusing to replace it")
    # A gslice output into which a user put a file of their own.
    out = tmp_path / "out"
    assert cli("slice", e4b, "-o", out, "-q").code == 0
    (out / "eval-results.csv").write_text("mine")
    before = tree_digest(tmp_path)
    refused(cli("slice", e4b, "-o", out, "--overwrite"),
            f"output path {out} holds files gslice did not write (eval-results.csv); refusing to replace it")
    assert tree_digest(tmp_path) == before and hidden_leftovers(tmp_path) == []


def test_links_are_judged_by_what_they_resolve_to(cli, e4b_copy, tmp_path):
    out = tmp_path / "out"
    assert cli("slice", e4b_copy, "-o", out, "-q").code == 0
    links = {name: tmp_path / name for name in ("to-source", "to-shard", "dangling", "to-output")}
    links["to-source"].symlink_to(e4b_copy)
    links["to-shard"].symlink_to(e4b_copy / SHARD1)
    links["dangling"].symlink_to(tmp_path / "nowhere")
    links["to-output"].symlink_to(out)
    before = tree_digest(tmp_path)
    refused(cli("slice", e4b_copy, "-o", links["to-source"], "--overwrite"),
            f"output path {links['to-source']} holds the source checkpoint {e4b_copy}; refusing to replace it")
    refused(cli("slice", e4b_copy, "-o", links["to-shard"], "--overwrite"),
            f"output path {links['to-shard']} is part of the source checkpoint {e4b_copy}; refusing to replace it")
    refused(cli("slice", e4b_copy, "-o", links["dangling"], "--overwrite"),
            f"output path {links['dangling']} is a symbolic link to {tmp_path / 'nowhere'}, which does not exist; refusing to replace it")
    assert tree_digest(tmp_path) == before
    # A link to a previous output: the output it points to is replaced, the link stays.
    result = cli("slice", e4b_copy, "-o", links["to-output"], "--overwrite", "--layers-to-skip", "20-24", "--json")
    assert result.code == 0, result.err
    assert read_json(out / "config.json")["text_config"]["num_hidden_layers"] == 30
    assert links["to-output"].is_symlink() and os.readlink(links["to-output"]) == str(out)


def test_a_previous_output_is_replaced_only_by_a_complete_one(cli, e4b, tmp_path):
    out = tmp_path / "out"
    assert cli("slice", e4b, "-o", out, "-q").code == 0
    inode = out.stat().st_ino
    result = cli("slice", e4b, "-o", out, "--overwrite", "--layers-to-skip", "20-24", "-q")
    assert (result.code, result.err) == (0, "")
    assert out.stat().st_ino != inode  # a new folder took the old one's place in one rename
    assert cli("verify", out, "--against", e4b, "-q").code == 0
    assert hidden_leftovers(tmp_path) == []


def test_bulk_replaces_only_its_own_outputs(cli, e4b, tmp_path):
    out = tmp_path / "presets"
    (out / "google-e2b").mkdir(parents=True)
    (out / "google-e2b" / "weights.bin").write_bytes(b"\0" * 10)
    before = tree_digest(tmp_path)
    result = cli("bulk", e4b, "--presets", "google-main,google-e2b", "-o", out, "--overwrite")
    refused(result, f"output path {out / 'google-e2b'} is a folder gslice did not write (it has no gslice-manifest.json); "
                    "refusing to replace it")
    assert tree_digest(tmp_path) == before and not (out / "google-main").exists()


def test_the_api_applies_the_same_rule(e4b_copy, tmp_path):
    with pytest.raises(gslice.ProtectedPathError) as e:
        gslice.slice_model(e4b_copy, e4b_copy / "config.json", overwrite=True)
    assert str(e.value) == f"output path {e4b_copy / 'config.json'} is part of the source checkpoint {e4b_copy}; refusing to replace it"
    assert (e4b_copy / "config.json").is_file()


def test_no_file_is_gslices_until_a_file_format_recognises_it(tmp_path, monkeypatch):
    file = tmp_path / "model.gguf"
    file.write_bytes(b"GGUF" + b"\0" * 60)
    monkeypatch.setattr(ownership, "_FILE_FORMATS", {})
    with pytest.raises(gslice.ProtectedPathError, match="is a file gslice did not write; refusing to replace it$"):
        ownership.check_output(file, overwrite=True)
    # The hook a single-file format (GGUF) plugs into: it reads the file, and says whether it wrote it.
    ownership.register_file_format("test format", lambda p: p.read_bytes().startswith(b"GGUF"))
    assert ownership.check_output(file, overwrite=True) == file
    assert file.read_bytes().startswith(b"GGUF")


def test_the_plot_replaces_only_a_plot_gslice_drew(tmp_path):
    pytest.importorskip("matplotlib")
    plot = tmp_path / "presets.png"
    mine = tmp_path / "photo.png"
    mine.write_bytes(b"\x89PNG\r\n\x1a\n not gslice's")
    gslice_cli = [sys.executable, "-m", "gslice", "presets", "--plot"]
    for _ in range(2):  # drawing twice replaces the first plot
        result = subprocess.run([*gslice_cli, plot], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    result = subprocess.run([*gslice_cli, mine], capture_output=True, text=True)
    assert (result.returncode, result.stderr) == (2, f"error: --plot {mine} is a file gslice did not write; refusing to replace it\n")
    assert mine.read_bytes() == b"\x89PNG\r\n\x1a\n not gslice's"
    assert hidden_leftovers(tmp_path) == []
