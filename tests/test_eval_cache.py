"""The source cache (gslice/evaluation/cache.py) and the texts (texts.py): a key per source,
texts, tokens, windowing, k and runtime; anything else in a file is never taken for a hit; the
shipped sample is the file its README describes."""

from __future__ import annotations

import hashlib
import json
import re
from importlib import resources

import numpy as np

from gslice.evaluation.cache import SourceCache, fingerprint
from gslice.evaluation.metrics import SourceRows
from gslice.evaluation.texts import SAMPLE_FILE, read_texts, sample_text

FIELDS = {"source": [{"name": "m.gguf", "size": 1, "mtime_ns": 2}], "runtime": "llama.cpp", "texts": ["a" * 64],
          "tokens": "b" * 64, "context": 512, "stride": 511, "max_tokens": None, "top_k": 32}


def rows(n=5, k=3) -> SourceRows:
    rng = np.random.default_rng(0)
    return SourceRows(rng.standard_normal(n), rng.integers(0, 100, (n, k)).astype(np.int32), rng.standard_normal((n, k)), rng.random(n))


def test_saved_rows_come_back_exactly_under_the_same_key_only(tmp_path):
    cache = SourceCache(tmp_path, "source.gguf", FIELDS)
    assert cache.load() is None
    saved = rows()
    cache.save(saved, {"stats": {"x": 1}, "vocab_size": 100})
    got, run = cache.load()
    for f in ("target_lp", "topk_ids", "topk_lp", "tail"):
        assert np.array_equal(getattr(got, f), getattr(saved, f)) and getattr(got, f).dtype == getattr(saved, f).dtype
    assert run == {"stats": {"x": 1}, "vocab_size": 100}
    for change in ({"context": 256}, {"stride": 100}, {"texts": ["c" * 64]}, {"tokens": "d" * 64}, {"top_k": 64},
                   {"runtime": "llama.cpp 2"}, {"max_tokens": 100}, {"source": []}):
        other = SourceCache(tmp_path, "source.gguf", {**FIELDS, **change})
        assert other.path != cache.path and other.load() is None, change
    assert [p.name for p in tmp_path.iterdir()] == [cache.path.name]  # written by rename, no leftovers


def test_a_file_under_the_right_name_but_another_key_or_damaged_is_a_miss(tmp_path):
    cache = SourceCache(tmp_path, "src", FIELDS)
    SourceCache(tmp_path, "src", {**FIELDS, "context": 8}).save(rows(), {})
    (tmp_path / SourceCache(tmp_path, "src", {**FIELDS, "context": 8}).path.name).rename(cache.path)
    assert cache.load() is None
    cache.path.write_bytes(b"not a zip file")
    assert cache.load() is None


def test_the_fingerprint_ignores_the_files_recording_rewrites(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x" * 10)
    (tmp_path / "config.json").write_text("{}")
    before = fingerprint(tmp_path)
    (tmp_path / "README.md").write_text("card")
    (tmp_path / "gslice-manifest.json").write_text("{}")
    assert fingerprint(tmp_path) == before and [f["name"] for f in before] == ["config.json", "model.safetensors"]
    (tmp_path / "model.safetensors").write_bytes(b"y" * 11)
    assert fingerprint(tmp_path) != before


def test_the_shipped_sample_is_the_one_its_readme_describes():
    readme = resources.files("gslice").joinpath("data", "sample-text", "README.md").read_text()
    text = sample_text()
    data = text.text.encode("utf-8")
    recorded = re.search(r"SHA-256\s+`([0-9a-f]{64})`\.", readme).group(1)
    assert hashlib.sha256(data).hexdigest() == text.sha256 == recorded
    assert len(data) == 18_380 and len(text.text.split()) == 3_347
    assert f"{len(data):,} bytes" in readme and f"{len(text.text.split()):,} words" in readme
    assert text.text.startswith("PRIDE AND PREJUDICE\n\nBy Jane Austen\n") and "Chapter 4" not in text.text
    assert SAMPLE_FILE in readme and "public domain" in readme


def test_texts_are_files_or_every_file_of_a_folder_in_name_order(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for name, body in (("b.txt", "second"), ("a.md", "first"), (".hidden", "no")):
        (folder / name).write_text(body)
    (folder / "sub").mkdir()
    single = tmp_path / "one.txt"
    single.write_text("alone")
    got = read_texts([folder, single])
    assert [(t.name, t.text) for t in got] == [("corpus/a.md", "first"), ("corpus/b.txt", "second"), ("one.txt", "alone")]
    assert got[2].sha256 == hashlib.sha256(b"alone").hexdigest()
    assert read_texts([]) == [sample_text()]
    assert json.dumps(got[0].bytes) == "5"
