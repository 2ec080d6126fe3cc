"""What `gslice bulk --presets official` costs on the real E4B layout, without the weights.

Builds a sparse E4B checkpoint (the published tensor names, shapes and dtypes from
python/gslice/data/gemma-3n-E4B.tensors.json, data left as holes, so it takes no disk space), plans the
16 official presets, and asks the engine for a dry run. Prints:

* bytes of all 16 outputs, bytes a de-duplicated run writes, and bytes independent runs write;
* the cost of name-keyed sharing: tensors with identical bytes (same source tensor and
  operation) that cannot share a file because they carry different names in different outputs
  (a layer renumbered after skipped layers), so they are written once per name.

Run: python benches/bulk_e4b_layout.py
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from collections import defaultdict
from importlib import resources
from pathlib import Path

from gslice import engine, gemma3n
from gslice.bulk import official_presets, prepare_bulk, write_bulk
from gslice.units import fmt_bytes

SHARD_BYTES = 4_000_000_000


def sparse_e4b(folder: Path) -> Path:
    """Shards with the real headers and holes for data; an index; an E4B-shaped config."""
    ref = json.loads(resources.files("gslice").joinpath("data/gemma-3n-E4B.tensors.json").read_text())["tensors"]
    groups, size = [[]], 0
    for name, t in sorted(ref.items()):
        n = math.prod(t["shape"]) * engine.DTYPE_SIZES[t["dtype"]]
        if size + n > SHARD_BYTES and groups[-1]:
            groups.append([])
            size = 0
        groups[-1].append((name, t, n))
        size += n
    return write_sparse_shards(folder, groups)


def write_sparse_shards(folder: Path, groups: list[list[tuple[str, dict, int]]]) -> Path:
    """One shard per group of (name, header entry, bytes): the real header, holes for data;
    an index and the E4B config."""
    weight_map = {}
    for k, group in enumerate(groups):
        fname = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        header, off = {"__metadata__": {"format": "pt"}}, 0
        for name, t, n in group:
            header[name] = {"dtype": t["dtype"], "shape": t["shape"], "data_offsets": [off, off + n]}
            off += n
            weight_map[name] = fname
        text = json.dumps(header).encode()
        text += b" " * (-(8 + len(text)) % 8)
        with open(folder / fname, "wb") as f:
            f.write(len(text).to_bytes(8, "little") + text)
            f.truncate(8 + len(text) + off)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(gemma3n.e4b_config()))
    return folder


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="gslice-e4b-") as tmp:
        src = sparse_e4b(Path(tmp))
        presets = official_presets()
        plan = prepare_bulk(src, presets, Path(tmp) / "out")
        dedupe = write_bulk(plan, dry_run=True)
        solo = write_bulk(plan, dry_run=True, dedupe=False)

        src_tensors = plan.items[0].plan.checkpoint.tensors
        by_name, by_content = {}, {}
        names_of = defaultdict(set)
        for it in plan.items:
            shapes = it.plan.output_shapes()
            for t in it.plan.tensors:
                op = json.dumps(t.op, sort_keys=True)
                n = math.prod(shapes[t.name]) * engine.DTYPE_SIZES[src_tensors[t.source].dtype]
                by_name[(t.name, t.source, op)] = n
                by_content[(t.source, op)] = n
                names_of[(t.source, op)].add(t.name)
        named, content = sum(by_name.values()), sum(by_content.values())
        renamed = {k: v for k, v in names_of.items() if len(v) > 1}

    total = sum(r.bytes for r in dedupe.rows)
    print(f"16 official presets on the E4B layout ({len(src_tensors)} source tensors, {fmt_bytes(sum(t.nbytes for t in src_tensors.values()))})")
    print(f"  files of all outputs:             {fmt_bytes(total)} ({total:,} B)")
    print(f"  shards written, independent runs: {fmt_bytes(solo.bytes_written)} ({solo.bytes_written:,} B)")
    print(f"  shards written, de-duplicated:    {fmt_bytes(dedupe.bytes_written)} ({dedupe.bytes_written:,} B), "
          f"{dedupe.distinct_tensors:,} distinct tensors")
    print(f"  distinct tensor bytes by (name, source, op): {named:,} B")
    print(f"  distinct tensor bytes by (source, op):       {content:,} B")
    print(f"  cost of names in headers: {fmt_bytes(named - content)} ({named - content:,} B, "
          f"{100 * (named - content) / named:.1f}% of what dedupe writes), "
          f"{len(renamed)} tensors written under 2+ names")
    for r in dedupe.rows:
        print(f"    {r.slug:<20} {r.layers:>3} layers  {fmt_bytes(r.bytes):>10}  first-written {fmt_bytes(r.written):>10}")


if __name__ == "__main__":
    sys.exit(main())
