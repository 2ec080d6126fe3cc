"""Tensor-by-tensor comparison of two checkpoint folders whose shards are cut differently
(gslice's output against the notebook method's). Reads the safetensors headers itself and
compares the bytes of each tensor through memory maps: all of them (``sample=None``) or, at
full size, the first and last 64 KiB of every tensor plus ``sample`` random 4 KiB windows.

    python benches/compare.py A B [--sample 16]
"""

from __future__ import annotations

import argparse
import json
import mmap
import random
import struct
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

EDGE = 64 << 10
WINDOW = 4 << 10
STEP = 64 << 20  # full comparison in slices of this size, so memory stays small


@dataclass(frozen=True)
class Entry:
    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute offset in the file
    end: int


def tensors(folder: Path) -> dict[str, Entry]:
    out: dict[str, Entry] = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        with f.open("rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        header.pop("__metadata__", None)
        for name, t in header.items():
            a, b = t["data_offsets"]
            out[name] = Entry(f, t["dtype"], tuple(t["shape"]), 8 + n + a, 8 + n + b)
    return out


def compare(a: Path, b: Path, sample: int | None = None, seed: int = 0) -> dict:
    """Returns {"tensors", "bytes_compared", "problems": [...]}; empty problems means equal."""
    ta, tb = tensors(a), tensors(b)
    problems = [f"only in {a}: {n}" for n in sorted(ta.keys() - tb.keys())]
    problems += [f"only in {b}: {n}" for n in sorted(tb.keys() - ta.keys())]
    rng = random.Random(seed)
    compared = 0
    with ExitStack() as stack:
        maps: dict[Path, mmap.mmap] = {}

        def view(e: Entry) -> memoryview:
            if e.file not in maps:
                fh = stack.enter_context(e.file.open("rb"))
                maps[e.file] = stack.enter_context(mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ))
            return memoryview(maps[e.file])[e.start : e.end]

        for name in sorted(ta.keys() & tb.keys()):
            ea, eb = ta[name], tb[name]
            if (ea.dtype, ea.shape) != (eb.dtype, eb.shape):
                problems.append(f"{name}: {ea.dtype}{list(ea.shape)} vs {eb.dtype}{list(eb.shape)}")
                continue
            va, vb = view(ea), view(eb)
            for lo, hi in _windows(len(va), sample, rng):
                if va[lo:hi] != vb[lo:hi]:
                    problems.append(f"{name}: bytes differ in [{lo}, {hi})")
                    break
                compared += hi - lo
            va.release()
            vb.release()
    return {"tensors": len(ta.keys() & tb.keys()), "bytes_compared": compared, "problems": problems}


def _windows(n: int, sample: int | None, rng: random.Random):
    if sample is None or n <= 2 * EDGE + sample * WINDOW:
        for lo in range(0, n, STEP):
            yield lo, min(n, lo + STEP)
        return
    yield 0, EDGE
    yield n - EDGE, n
    for _ in range(sample):
        lo = rng.randrange(EDGE, n - EDGE - WINDOW)
        yield lo, lo + WINDOW


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--sample", type=int, default=None, help="random 4 KiB windows per tensor (default: compare all bytes)")
    args = ap.parse_args()
    r = compare(args.a, args.b, args.sample)
    print(json.dumps(r, indent=2))
    raise SystemExit(1 if r["problems"] else 0)


if __name__ == "__main__":
    main()
