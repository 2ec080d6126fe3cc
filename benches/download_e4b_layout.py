"""What slicing google/gemma-3n-E4B-it downloads per preset in range mode, from the published
tensor list (python/gslice/data/gemma-3n-E4B.tensors.json: names, shapes, dtypes; no weights).

The tensor list has no shard or offset information. What a slice reads does not depend on it:
each operation reads a known part of each tensor (whole tensor, leading rows, or per-row column
segments). Offsets matter only for coalescing *across* tensors (a small unread tensor between
two read ones). So two fetch figures are computed:

* per tensor: each tensor's ranges coalesced on their own (no layout needed);
* on an assumed layout: the tensors in lexicographic name order (the order the safetensors
  library writes a file in) cut into 4 balanced shards like the published checkpoint, every
  range of a shard coalesced together (what gslice fetches on that layout).

The README table shows the second and states the largest difference from the first. Gaps up to
``gslice.ranges.DEFAULT_GAP`` are closed, as gslice does by default.

    python benches/download_e4b_layout.py                 # print the table
    python benches/download_e4b_layout.py --readme README.md   # replace its block
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from gslice import engine, gemma3n
from gslice.catalogue import presets
from gslice.download import PIECE
from gslice.ranges import DEFAULT_GAP, normalize, plan_ranges, tensor_ranges
from gslice.slicing import prepare_slice
from gslice.spec import SliceSpec
from gslice.units import fmt_bytes

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bulk_e4b_layout import write_sparse_shards  # noqa: E402
from synth import split_shards  # noqa: E402

SHARDS = 4
README_START, README_END = "<!-- download-e4b:start -->", "<!-- download-e4b:end -->"


def sparse_e4b(folder: Path) -> Path:
    """Shards with headers of the published tensors and holes for data, an index and the E4B
    config (see the module docstring for the assumed order)."""
    ref = json.loads(resources.files("gslice").joinpath("data/gemma-3n-E4B.tensors.json").read_text())["tensors"]
    items = sorted(ref.items())
    sizes = [math.prod(t["shape"]) * engine.DTYPE_SIZES[t["dtype"]] for _, t in items]
    starts = split_shards(sizes, SHARDS) + [len(items)]
    groups = [[(name, t, n) for (name, t), n in zip(items[starts[k] : starts[k + 1]], sizes[starts[k] : starts[k + 1]])]
              for k in range(SHARDS)]
    return write_sparse_shards(folder, groups)


@dataclass(frozen=True)
class Fetch:
    reads: int  # bytes the slice reads
    fetched: int  # coalesced on the assumed layout
    per_tensor: int  # coalesced tensor by tensor (layout-free)
    requests: int  # range requests of at most download.PIECE bytes
    ple_reads: int  # of those, the per-layer embedding table
    ple_fetched: int


def fetch_of(folder: Path, spec: SliceSpec, gap: int = DEFAULT_GAP) -> Fetch:
    plan = prepare_slice(folder, spec)
    ck = plan.checkpoint
    shards = [r.coalesce(gap) for r in plan_ranges(ck, plan.tensors).values()]
    exact = sum(r.total for r in plan_ranges(ck, plan.tensors).values())
    per_tensor = ple_reads = ple_fetched = 0
    for t in plan.tensors:
        info = ck.tensors[t.source]
        own = normalize(*tensor_ranges(info.offset, info.shape, info.dtype, t.op))
        per_tensor += own.coalesce(gap).total
        if t.source.endswith("embed_tokens_per_layer.weight"):
            ple_reads, ple_fetched = own.total, own.coalesce(gap).total
    return Fetch(exact, sum(r.total for r in shards), per_tensor, sum(len(r.split(PIECE)) for r in shards), ple_reads, ple_fetched)


def table(folder: Path) -> str:
    total = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    arch = gemma3n.architecture(gemma3n.e4b_config(), "E4B")
    rows, worst = [], 0
    for p in presets():
        base = p.spec_for(arch)
        both = [fetch_of(folder, base), fetch_of(folder, SliceSpec(base.layers_to_skip, base.ffn_dims, drop_vision=True, drop_audio=True))]
        worst = max(worst, *(abs(f.fetched - f.per_tensor) for f in both))
        cells = [f"{_gb(f.reads)} | **{_gb(f.fetched)}** ({100 * f.fetched / total:.0f}%) | {f.requests}" for f in both]
        rows.append(f"| {p.slug} | {len(arch.layer_types) - len(base.layers_to_skip)} | {cells[0]} | {cells[1]} |")
    e2b = fetch_of(folder, find_spec(arch, "google-e2b", text_only=True))
    small = fetch_of(folder, find_spec(arch, "gslice-e0.51b", text_only=True))
    head = (
        f"All of E4B is {_gb(total)} GB in {SHARDS} shards. GB = 10^9 bytes; 'reads' is what the slice reads, "
        f"'download' what range mode fetches (gaps up to {DEFAULT_GAP >> 20} MiB closed), 'req' its range requests "
        f"of at most {PIECE >> 20} MiB; the shards' headers ({_headers(folder) / 1e6:.2f} MB here, fetched to plan) "
        "are not included."
    )
    foot = (
        f"The per-layer embedding table (`embed_tokens_per_layer`, {_gb(_ple_size(folder))} GB) is where the slack "
        "is: a slice keeps some of its column blocks, i.e. a short segment of every one of its 262,144 rows, and one "
        "request per row is out of the question, so the whole table is fetched. Text-only E2B reads "
        f"{_gb(e2b.ple_reads)} GB of it and downloads {_gb(e2b.ple_fetched)} GB; gslice-e0.51b reads "
        f"{_gb(small.ple_reads)} GB and downloads {_gb(small.ple_fetched)} GB. The same holds for `down_proj` at a "
        "narrower FFN (E2B: a 16 KB segment of each 32 KB row). Offsets assumed: tensors in name order in 4 balanced "
        f"shards; coalescing each tensor on its own instead changes no figure by more than {fmt_bytes(worst)}."
    )
    table_lines = [
        "| preset | layers | with towers: reads | download | req | text-only: reads | download | req |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
    ]
    return "\n".join([textwrap.fill(head, 95), "", *table_lines, "", textwrap.fill(foot, 95)])


def find_spec(arch, slug: str, text_only: bool) -> SliceSpec:
    base = next(p for p in presets() if p.slug == slug).spec_for(arch)
    return SliceSpec(base.layers_to_skip, base.ffn_dims, drop_vision=text_only, drop_audio=text_only)


def _ple_size(folder: Path) -> int:
    ck = engine.inspect(folder)
    return next(t.nbytes for n, t in ck.tensors.items() if n.endswith("embed_tokens_per_layer.weight"))


def _headers(folder: Path) -> int:
    total = 0
    for p in folder.glob("*.safetensors"):
        with open(p, "rb") as f:
            total += 8 + int.from_bytes(f.read(8), "little")
    return total


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f}"


def render() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        return table(sparse_e4b(Path(tmp)))


def update_readme(path: Path, block: str) -> None:
    text = path.read_text()
    start, end = text.index(README_START) + len(README_START), text.index(README_END)
    path.write_text(text[:start] + "\n" + block + "\n" + text[end:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--readme", help=f"replace the block between {README_START} and {README_END} in this file")
    args = ap.parse_args()
    block = render()
    print(block)
    if args.readme:
        update_readme(Path(args.readme), block)


if __name__ == "__main__":
    main()
