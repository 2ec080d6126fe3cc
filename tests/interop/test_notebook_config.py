"""The published slicing notebook's config defect, shown against transformers.

The notebook writes ``num_hidden_layers``, ``intermediate_size`` and the tensors for the kept
layers, but leaves ``text_config.layer_types`` at the source's length. Current transformers
validates the config and refuses to load it. The releases that introduced Gemma 3n checked
only the values of ``layer_types`` (``layer_type_validation(layer_types)``), not their number,
so they loaded it, and each attention module took ``config.layer_types[layer_idx]``: new layer
i got the type of *source* layer i, the first L' entries of the source's list. That is right
only when whole 5-layer blocks (4 sliding + 1 full) are skipped, and wrong for every layer
after any other skip. No old version is installed here; ``test_the_old_reading_*`` loads
gslice's weights with exactly that type assignment to show what it computed.
"""

from __future__ import annotations

import json
import shutil

import pytest
from huggingface_hub.errors import StrictDataclassClassValidationError

import gslice

from .conftest import CONTROL_MIN, TOLERANCE
from .tiny_gemma3n import load, logits, max_abs_diff, module_slice

pytestmark = pytest.mark.interop

NONALIGNED = (3,)  # layer 4 (full attention) becomes layer 3
ALIGNED = tuple(range(10, 15))  # a whole 5-block: the first 15 source types are the kept ones' types


def _text_config(path):
    return json.loads((path / "config.json").read_text())["text_config"]


def _rewrite_layer_types(folder, layer_types):
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["layer_types"] = list(layer_types)
    (folder / "config.json").write_text(json.dumps(config, indent=2))


@pytest.fixture(scope="module")
def nonaligned(e4b_like, tmp_path_factory):
    out = tmp_path_factory.mktemp("notebook") / "gslice"
    gslice.slice_model(e4b_like.path, out, layers_to_skip=NONALIGNED)
    return out


def test_transformers_refuses_the_notebook_config(e4b_like, nonaligned, tmp_path):
    notebook = shutil.copytree(nonaligned, tmp_path / "notebook")
    _rewrite_layer_types(notebook, _text_config(e4b_like.path)["layer_types"])  # 20 entries, 19 layers
    with pytest.raises(StrictDataclassClassValidationError) as err:
        load(notebook)
    assert "`num_hidden_layers` (19) must be equal to the number of `layer_types` (20)" in str(err.value)


def test_gslice_output_loads_and_matches_the_module_slice(e4b_like, nonaligned, record):
    source_types = _text_config(e4b_like.path)["layer_types"]
    written = _text_config(nonaligned)["layer_types"]
    assert written == source_types[:3] + source_types[4:]  # the kept layers' own types
    diff = max_abs_diff(logits(load(nonaligned)), logits(module_slice(e4b_like.model, NONALIGNED)))
    assert record("notebook_case_gslice", diff) <= TOLERANCE


@pytest.mark.parametrize(
    "skip,wrong",
    [(NONALIGNED, True), (ALIGNED, False)],
    ids=["nonaligned_skip_gets_wrong_types", "block_skip_happens_to_be_right"],
)
def test_the_old_reading_of_the_notebook_config(e4b_like, tmp_path, skip, wrong, control):
    """Old transformers took new layer i's attention type from the source list: load gslice's
    weights with exactly those types and compare with the true slice."""
    out = tmp_path / "old-reading"
    gslice.slice_model(e4b_like.path, out, layers_to_skip=skip)
    kept = 20 - len(skip)
    source_types = _text_config(e4b_like.path)["layer_types"]
    _rewrite_layer_types(out, source_types[:kept])
    diff = max_abs_diff(logits(load(out)), logits(module_slice(e4b_like.model, skip)))
    if wrong:
        assert control("old_reading_of_notebook_config_nonaligned", diff) > CONTROL_MIN
    else:
        assert diff <= TOLERANCE
