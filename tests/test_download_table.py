"""The README's table of what range mode downloads from E4B per preset is what
benches/download_e4b_layout.py computes from the shipped tensor list, and its figures agree
with shape arithmetic."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benches"))

import download_e4b_layout as table  # noqa: E402

from gslice import gemma3n  # noqa: E402
from gslice.ranges import DEFAULT_GAP  # noqa: E402
from gslice.spec import SliceSpec  # noqa: E402


@pytest.fixture(scope="module")
def layout():
    with tempfile.TemporaryDirectory() as tmp:
        yield table.sparse_e4b(Path(tmp))


def test_the_readme_holds_the_computed_table(layout):
    text = (ROOT / "README.md").read_text()
    start, end = text.index(table.README_START) + len(table.README_START), text.index(table.README_END)
    assert text[start:end].strip() == table.table(layout), "run: python benches/download_e4b_layout.py --readme README.md"


def test_what_a_slice_reads_is_its_output_by_shape_arithmetic(layout):
    arch = gemma3n.architecture(gemma3n.e4b_config(), "E4B")
    # docs/design.md: the official E2B config on E4B has exactly 4,456,156,768 text parameters (BF16)
    e2b_text = table.fetch_of(layout, table.find_spec(arch, "google-e2b", text_only=True))
    assert e2b_text.reads == 2 * 4_456_156_768
    # the whole model reads, and downloads, every byte of its tensors
    full = table.fetch_of(layout, SliceSpec())
    assert full.reads == full.fetched == 2 * 7_849_978_192
    # the PLE table: 30 of 35 column blocks read, all of it fetched (row gaps are < 1 MiB)
    assert (e2b_text.ple_reads * 35, e2b_text.ple_fetched) == (30 * 262_144 * 35 * 256 * 2, 262_144 * 35 * 256 * 2)
    # coalescing tensor by tensor, the only slack is the 5 unread column blocks of the PLE table
    # (in the middle of every row) and the unread half of each row of the 30 down_proj
    # [2048, 16384] at FFN 8192 but the last (its unread half lies after the last byte read)
    ple_slack, down_slack = 5 * 262_144 * 256 * 2, 30 * 2047 * 8192 * 2
    assert e2b_text.per_tensor - e2b_text.reads == ple_slack + down_slack
    assert 0 <= e2b_text.fetched - e2b_text.per_tensor < DEFAULT_GAP
