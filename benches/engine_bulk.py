"""Many presets in one engine run: what ``gslice bulk`` (issue 7) will be built on, measurable
before that command exists. Each of Google's 16 published configs is planned with gslice's
public planner (``prepare_slice``), then all outputs go to the engine as one plan with
``dedupe=True``: a tensor shared by several outputs is written once and hard-linked.

    python benches/engine_bulk.py SRC OUTDIR --size mid [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import synth  # noqa: E402

from gslice import engine, gemma3n  # noqa: E402
from gslice.modelcard import model_card  # noqa: E402
from gslice.slicing import prepare_slice  # noqa: E402
from gslice.spec import SliceSpec  # noqa: E402


def outputs_for_presets(src: Path, out_dir: Path, presets: dict[str, dict]) -> list[engine.OutputPlan]:
    outputs = []
    for name, spec in presets.items():
        plan = prepare_slice(src, SliceSpec.build(**spec))
        outputs.append(engine.OutputPlan(
            dir=out_dir / synth.slug(name),
            tensors=list(plan.tensors),
            text_files={"config.json": json.dumps(plan.new_config, indent=2) + "\n", "README.md": model_card(plan, name)},
            copied_files=gemma3n.files_to_copy(plan.source.path, plan.spec),
        ))
    return outputs


def bulk(src: Path, out_dir: Path, size: str, threads: int | None = None) -> dict:
    started = time.perf_counter()
    outputs = outputs_for_presets(src, out_dir, synth.official_presets(size))
    planned = time.perf_counter() - started
    report = engine.execute(src, outputs, dedupe=True, threads=threads, max_shard_size=synth.max_shard_size(size))
    return {
        "presets": len(outputs),
        "bytes_written": report.bytes_written,
        "bytes_if_independent": sum(o.file_bytes for o in report.outputs),
        "distinct_tensors": report.distinct_tensors,
        "shard_files_written": report.shard_files_written,
        "seconds_planning": planned,
        "seconds_engine": report.seconds,
        "seconds": time.perf_counter() - started,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--size", choices=sorted(synth.SCALES), default="full",
                    help="divides the presets' FFN widths like the synthetic checkpoint's")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    print(json.dumps(bulk(args.src, args.out_dir, args.size, args.threads), indent=2))


if __name__ == "__main__":
    main()
