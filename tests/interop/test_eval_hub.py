"""`gslice eval --against REPO_ID`: a Hub source is downloaded whole (the runtime runs the whole
model; a range download would leave holes where the slice read nothing), from a Hub speaking
the Hub's protocol on 127.0.0.1 (tests/hub_server.py).

The case that matters: the source was sliced from the Hub before, so gslice's range cache holds
it as a sparse file with only the slice's bytes. The evaluation must still read the real model:
its figures equal those of the same evaluation against the local folder the Hub serves, bit for
bit, and the Hub served every byte of the weights.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from gslice.evaluation import EvalSettings, evaluate
from gslice.evaluation.run import RUNS

from range_reference import REPO


def test_eval_of_a_hub_source_reads_the_whole_model(runtime_models, hub_of, cli, tmp_path):
    local = runtime_models.hf["source"]
    shard = local / "model.safetensors"
    hub = hub_of(local)
    sliced = tmp_path / "slice"
    r = cli("slice", REPO, "-o", sliced, "--layers-to-skip", "21,23")
    assert r.code == 0, r.err
    assert 0 < hub.served() < shard.stat().st_size  # a range download: the slice's bytes only
    hub.clear()
    RUNS.clear()
    args = ["--text", runtime_models.texts["a"], "--context", "64", "--max-tokens", "200", "--threads", "1", "--no-cache"]
    r = cli("eval", sliced, "--against", REPO, *args, "--json")
    assert r.code == 0, r.err
    assert hub.served() == shard.stat().st_size  # then the whole file, for the runtime
    report = json.loads(r.out)
    ran = Path(report["source"]["path"])
    assert ran.is_relative_to(Path(os.environ["HF_HOME"])) and [p for _, p in RUNS] == [str(ran), str(sliced)]
    assert hashlib.sha256((ran / "model.safetensors").read_bytes()).digest() == hashlib.sha256(shard.read_bytes()).digest()
    # the same evaluation against the local folder the Hub serves: the same figures, exactly
    here = evaluate([sliced], local, EvalSettings(texts=[runtime_models.texts["a"]], context=64, max_tokens=200, threads=1,
                                                 use_cache=False))
    assert report["source"]["perplexity"] == here.source.summary.perplexity
    got = report["slices"][0]
    assert (got["perplexity"], got["kl_mean"], got["kl_p99"], got["top1_agreement"]) == (
        here.slices[0].summary.perplexity, here.slices[0].summary.kl_mean, here.slices[0].summary.kl_p99,
        here.slices[0].summary.top1_agreement)
    assert got["kl_mean"] > 0
