"""The full-size benchmark, in one run: E4B -> E2B with gslice (bf16, and int4 when the CLI
has ``--quant``), bulk of Google's 16 presets, the ``cp`` floor, the published notebook's
method, gslice and the notebook inside hard memory caps, and gslice on its portable I/O path
(what macOS and Windows run: ``GSLICE_PORTABLE_IO=1``), free and capped, checked to write the
same bytes as the Linux fast path; and E4B -> E2B text-only as a GGUF Q8_0 file for llama.cpp,
next to the path a user has today: the notebook's method, then llama.cpp's own
``convert_hf_to_gguf.py`` to Q8_0 (``--llama-cpp-source``, the folder ``.ci/llama-cpp-source``
prints; run with ``--torch-python``); as a GGUF Q4_K_M file, gslice in one pass against
gslice's bf16 GGUF then llama.cpp's quantizer (``llama_model_quantize`` of llama-cpp-python,
run with ``--llama-python``), 2 threads each, with the K-quant kernels' throughput side by side
(benches/kquant_speed.py); and E4B -> E2B as an MLX 4-bit folder for mlx-lm, against
``cp`` of that folder and inside gslice's memory cap, next to the two-pass path (gslice's BF16
MLX folder, then ``mlx_lm.convert -q``, run with ``--mlx-python``), whose tensors must be gslice's;
and the cost of ``gslice eval`` on a laptop: the source written as a GGUF Q8_0 file by gslice
(no spec), E2B as GGUF Q8_0, then ``gslice eval`` of E2B against the source on
``--eval-threads`` threads (2) for ``--eval-tokens`` tokens (1024, windows of 512): tokens/s and
peak RSS of each model's run, and how busy other processes kept the machine meanwhile
(llama.cpp's threads spin-wait for each other, so a busy machine lowers tokens/s a lot). Below
full size llama.cpp cannot run the scaled checkpoint (its per-layer input width is fixed at
256), so that step writes one that keeps it (``synth.write_checkpoint(..., llama_cpp=True)``:
~1.9 GB at mid size). The Python running this needs llama-cpp-python.

    python benches/full.py --scratch /work/bench-scratch --out bench-results.json \
        [--size full|mid|small] [--torch-python ~/.cache/gslice/interop-venv/bin/python] \
        [--llama-cpp-source "$(.ci/llama-cpp-source)"] [--llama-python PYTHON-WITH-LLAMA-CPP] \
        [--mlx-python PYTHON-WITH-MLX-LM] [--markdown bench.md] [--readme README.md]

Everything is measured as a child process (wall, user and sys CPU, peak RSS from wait4) on
a synthetic checkpoint with the published E4B layout (benches/synth.py), written into
``--scratch`` and deleted at the end. Before each run the files it reads are dropped from the
page cache (``--cache cold``, the default; only those files, so other processes' cache is
untouched), or read once (``--cache warm``). ``--size mid`` runs the same on a ~1 GB
checkpoint with narrower dimensions and smaller memory caps, in a few minutes.

On a VM whose balloon reports free pages to the host, memory that stayed free for a few
seconds costs a host page fault on its next touch (measured here: ~2-4 s of system CPU per GB
written into fresh page cache, ~0.3 s into recycled pages), and that cost lands on whichever
run happens to get fresh pages. full.py detects this, measures it, and says so in the table;
``--recycle 1024`` runs gslice, cp and bulk in 1 GiB memory cgroups so that their page cache
recycles pages and the two are compared on equal terms.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import compare  # noqa: E402
import measure  # noqa: E402
import synth  # noqa: E402
from measure import MemoryCgroup, Run  # noqa: E402

import gslice  # noqa: E402
from gslice import engine  # noqa: E402

MiB, GiB = 1 << 20, 1 << 30
# Per size: the memory caps for gslice and the notebook, the notebook's output shard size,
# and how much of each tensor the notebook-vs-gslice comparison reads (None: every byte).
# At full size the caps are the (512 MiB; 4 GiB against the notebook's ~11.5 GB peak).
# mid: gslice's cap is below the 294 MB per-layer embedding table, the notebook's below its
# ~560 MB of anonymous memory. small is a smoke test: there the notebook fits its cap.
PROFILES = {
    "full": {"cap_gslice": 512 * MiB, "cap_notebook": 4 * GiB, "notebook_shard": 4_000_000_000, "sample": 16},
    "mid": {"cap_gslice": 128 * MiB, "cap_notebook": 512 * MiB, "notebook_shard": 250_000_000, "sample": None},
    "small": {"cap_gslice": 96 * MiB, "cap_notebook": 448 * MiB, "notebook_shard": 16_000_000, "sample": None},
}
TARGETS = {
    "bf16_vs_cp": 1.3,  # gslice bf16 wall <= 1.3 x cp (with fsync)
    "notebook_vs_bf16": 3.0,  # notebook wall >= 3 x gslice bf16
    "bf16_rss": 300e6,
    "int4_vs_bf16": 1.5,
    "int4_rss": 400e6,
    "bulk_bytes_vs_source": 1.5,
    "bulk_time_vs_bf16": 2.5,
    "gguf_vs_cp": 1.3,  # gslice GGUF Q8_0 wall <= 1.3 x cp (with sync) of the file
    "gguf_rss": 300e6,
    "kquant_vs_two_steps": 1.0,  # gslice Q4_K_M in one pass < bf16 GGUF + llama.cpp's quantizer
    "kquant_rss": 300e6,
    "mlx4_vs_cp": 1.3,  # gslice MLX 4-bit wall <= 1.3 x cp (with sync) of its output
    "mlx4_rss": 300e6,
    "mlx4_vs_bf16": 1.5,  # quantizing in the pass costs at most half again the bf16 MLX slice
}
# Runs that --recycle puts in a page-cache-recycling cgroup. Not llama.cpp's quantizer: it
# converts up to 8 GiB of a tensor's rows to f32 at once (LLAMA_QUANT_MAX_BUF_SIZE; the
# per-layer embedding table is 4.7 GB of bf16), and a 1 GiB cgroup would kill it.
RECYCLED = {"bf16", "cp", "cp_sync", "int4", "bulk", "bf16_portable", "gguf", "gguf_cp_sync", "mlx4", "mlx4_cp_sync", "mlx_bf16",
            "kquant", "kquant_bf16"}
# The llama.cpp quantizer step: llama-quantize's work through llama-cpp-python (the helper the
# interop tier checks gslice's files against).
LLAMA_QUANTIZE = ("import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
                  "from tests.interop.llama_quantize import quantize; "
                  "quantize(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4], threads=int(sys.argv[5]))")
KQUANT_THREADS = 2
EVAL_CONTEXT = 512  # gslice eval's default window
README_START, README_END = "<!-- bench-full:start -->", "<!-- bench-full:end -->"


def main() -> None:
    args = parse_args()
    if not Path(measure.TIME).exists():
        raise SystemExit(f"error: {measure.TIME} (GNU time) is missing; it measures each child's own peak RSS "
                         "(Debian: apt-get install time)")
    profile = {**PROFILES[args.size]}
    for key in ("cap_gslice", "cap_notebook"):
        if getattr(args, key) is not None:
            profile[key] = getattr(args, key) * MiB
    scratch = Path(args.scratch).resolve()
    scratch.mkdir(parents=True, exist_ok=True)
    work = scratch / f"full-{args.size}-{os.getpid()}"
    bench = Bench(args, profile, work)
    try:
        bench.run_all()
    finally:
        if not args.keep:
            measure.remove(work)
    results = bench.results()
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    md = markdown(results)
    print(md)
    if args.markdown:
        Path(args.markdown).write_text(md + "\n")
    if args.readme:
        update_readme(Path(args.readme), md)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scratch", required=True, help="folder for the synthetic source and the outputs (emptied after)")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--markdown", help="write the results table (markdown) here")
    ap.add_argument("--readme", help=f"replace the block between {README_START} and {README_END} in this file")
    ap.add_argument("--size", choices=sorted(synth.SCALES), default="full")
    ap.add_argument("--source", help="an existing synthetic checkpoint of --size to use instead of writing one")
    ap.add_argument("--torch-python", default=str(Path.home() / ".cache/gslice/interop-venv/bin/python"),
                    help="a Python with torch and safetensors, for the notebook method")
    ap.add_argument("--cache", choices=("cold", "warm"), default="cold")
    ap.add_argument("--threads", type=int, default=None, help="gslice --threads (default: all cores)")
    ap.add_argument("--cap-gslice", type=int, default=None, help="MiB (default: 512 at full size)")
    ap.add_argument("--cap-notebook", type=int, default=None, help="MiB (default: 4096 at full size)")
    ap.add_argument("--verify", choices=("full", "sampled"), default=None,
                    help="compare the notebook's output with gslice's on every byte or on samples (default: full below full size)")
    ap.add_argument("--skip", default="", help="comma-separated steps to leave out: notebook,cgroup,portable,int4,bulk,cp,gguf,kquant,mlx,eval")
    ap.add_argument("--eval-threads", type=int, default=2, help="llama.cpp threads of the gslice eval step (default 2)")
    ap.add_argument("--eval-tokens", type=int, default=1024, help="tokens the gslice eval step scores (--max-tokens; default 1024)")
    ap.add_argument("--llama-cpp-source", default=os.environ.get("GSLICE_LLAMA_CPP_SOURCE"),
                    help="the folder holding llama.cpp's convert_hf_to_gguf.py (.ci/llama-cpp-source prints it), "
                         "for the user's path to a GGUF: the notebook's method, then the converter")
    ap.add_argument("--llama-python", default=None,
                    help="a Python with llama-cpp-python, for llama.cpp's quantizer (default: --torch-python)")
    ap.add_argument("--mlx-python", default=None,
                    help="a Python with mlx and mlx-lm, for mlx_lm.convert -q (default: --torch-python)")
    ap.add_argument("--repeat", type=int, default=None,
                    help="runs of each measurement; the table shows the median by wall time (default: 1 at full size, 3 below)")
    ap.add_argument("--profile", metavar="DIR",
                    help="also profile one extra bf16 slice (perf record -e cpu-clock -g, and strace -c -f) into DIR")
    ap.add_argument("--recycle", type=int, metavar="MiB", default=None,
                    help="run gslice, cp and bulk (not the notebook) each inside a memory cgroup of this size, so "
                         "that their page cache recycles pages: on a VM with free page reporting, fresh pages "
                         "cost host page faults that otherwise land on whichever run gets them (e.g. 1024)")
    ap.add_argument("--keep", action="store_true", help="leave the scratch files (for debugging)")
    return ap.parse_args()


class Bench:
    def __init__(self, args, profile: dict, work: Path):
        self.args, self.profile, self.work = args, profile, work
        self.skip = set(filter(None, args.skip.split(",")))
        self.runs: dict[str, Run] = {}
        self.notes: dict[str, str] = {}
        self.checks: dict[str, dict] = {}
        self.synth: dict | None = None
        self.kernels: dict | None = None
        self.machine = measure.machine_info(Path(args.scratch))
        self.first_touch: dict = {}
        self.python = sys.executable
        self.src: Path | None = None
        self.source_bytes = 0
        self._imports: dict[tuple[str, str], bool] = {}

    # -- steps ------------------------------------------------------------------------------

    def run_all(self) -> None:
        self.work.mkdir()
        self.check_disk()
        if self.machine["free_page_reporting"]:
            self.first_touch = measure.first_touch_cost(self.work)
            log(f"this VM reports free pages to its host: writing into fresh page cache costs "
                f"{self.first_touch['sys_s_per_gb_fresh']:.2f} s of system CPU per GB"
                + (f", {self.first_touch['sys_s_per_gb_recycled']:.2f} s when pages are recycled"
                   if "sys_s_per_gb_recycled" in self.first_touch else ""))
        self.src = Path(self.args.source).resolve() if self.args.source else self.synthesize()
        self.source_bytes = measure.tree_bytes_of_shards(self.src)
        out_g = self.work / "e2b-gslice"
        self.slice_bf16(out_g)
        if "cp" not in self.skip:
            self.cp_floor(out_g)
        if "notebook" not in self.skip:
            self.notebook(out_g)
        if "gguf" not in self.skip:
            self.gguf()
        if "mlx" not in self.skip:
            self.mlx()
        if "cgroup" not in self.skip:
            self.capped(out_g)
        if "portable" not in self.skip:
            self.portable(out_g)
        if self.args.profile:
            self.profile_bf16(Path(self.args.profile))
        measure.remove(out_g)
        if "kquant" not in self.skip:  # after the bf16 output is gone: it holds three files at once
            self.kquant()
        if "int4" not in self.skip:
            self.slice_int4()
        if "bulk" not in self.skip:
            self.bulk()
        if "eval" not in self.skip:
            self.eval_gguf()

    def check_disk(self) -> None:
        # Peak use: the source plus either two E2B outputs (0.7x the source each: gslice's and
        # the copy or the notebook's), the bulk outputs (~1.57x the source) or the eval step's
        # two GGUF files (0.77x) and, below full size, its own checkpoint (1.9x), plus a margin.
        size = 15.7e9 / synth.SCALES[self.args.size] ** 2
        need = (0 if self.args.source else size) + 1.6 * size + 1e9 / synth.SCALES[self.args.size] ** 2
        if "eval" not in self.skip and self.args.size != "full":
            need = max(need, (0 if self.args.source else size) + 2.7 * size)
        free = shutil.disk_usage(self.work).free
        if free < need:
            raise SystemExit(f"error: {self.work} has {free / 1e9:.1f} GB free; this run needs about {need / 1e9:.0f} GB")

    def synthesize(self) -> Path:
        log(f"writing the synthetic {self.args.size} checkpoint")
        r = synth.write_checkpoint(self.work / "e4b", self.args.size)
        self.synth = {**r.__dict__, "mb_per_s": r.mb_per_s}
        log(f"  {r.file_bytes / 1e9:.2f} GB in {r.seconds_total:.1f} s ({r.mb_per_s:.0f} MB/s)")
        return Path(r.path)

    def gslice_cmd(self, out: Path, *extra: str, threads: int | None = None) -> list[str]:
        spec = synth.e2b_spec(self.args.size)
        cmd = [self.python, "-m", "gslice", "slice", str(self.src), "-o", str(out),
               "--layers-to-skip", "20-24", "--ffn-dims", str(spec["ffn_dims"]), "--json", "-q",
               "--max-shard-size", str(synth.max_shard_size(self.args.size)), *extra]
        if threads or self.args.threads:
            cmd += ["--threads", str(threads or self.args.threads)]
        return cmd

    def slice_bf16(self, out: Path) -> None:
        r = self.measure("bf16", "gslice slice E4B->E2B bf16", self.gslice_cmd(out), out, prepare=(self.src,))
        if not r.ok:  # everything after compares against this output
            raise SystemExit(f"error: the bf16 slice failed ({measure.signal_name(r.exit_code)}): {r.stderr.strip()[-500:]}")
        report = json.loads(r.stdout)
        r.extra.update(engine_seconds=report["seconds"], report_bytes_written=report["bytes_written"],
                       bytes_kernel_copied=report["bytes_kernel_copied"], shards=report["shards"], io=report.get("io"))

    def cp_floor(self, out_g: Path) -> None:
        copy = self.work / "e2b-cp"
        r = self.measure("cp", "cp -r of the E2B output", ["cp", "-r", str(out_g), str(copy)], copy, prepare=(out_g,))
        r.extra["fsync_after"] = measure.fsync_tree(copy)
        measure.remove(copy)
        self.measure("cp_sync", "cp -r + sync of the copied files", ["sh", "-c", 'cp -r "$1" "$2" && sync "$2"/*', "sh",
                                                                        str(out_g), str(copy)], copy, prepare=(out_g,))
        measure.remove(copy)

    def notebook_cmd(self, out: Path) -> list[str]:
        return [self.args.torch_python, str(HERE / "notebook_method.py"), str(self.src), str(out),
                "--layers-to-skip", "20-24", "--ffn-dim", str(synth.e2b_spec(self.args.size)["ffn_dims"]),
                "--shard-bytes", str(self.profile["notebook_shard"])]

    def notebook(self, out_g: Path) -> None:
        if not self.torch_available():
            self.notes["notebook"] = f"not run: {self.args.torch_python} cannot import torch and safetensors"
            return
        out = self.work / "e2b-notebook"
        r = self.measure("notebook", "notebook method (torch, whole shards in RAM)", self.notebook_cmd(out), out,
                         prepare=(self.src,))
        if r.ok:
            r.extra["fsync_after"] = measure.fsync_tree(out)
            self.compare("notebook_equals_gslice", out_g, out)
            if "gguf" not in self.skip:
                self.convert_to_gguf(out)
        measure.remove(out)

    def gguf_cmd(self, out: Path, gguf_type: str = "q8_0", threads: int | None = None) -> list[str]:
        cmd = self.gslice_cmd(out, "--text-only", "--format", "gguf", "--gguf-type", gguf_type, threads=threads)
        if self.args.size == "full":
            return cmd
        # Below full size the dimensions are scaled (per-layer input 64, not the 256 llama.cpp
        # fixes), so the guard would refuse the file that is only written here to be timed.
        self.notes["gguf"] = (f"at {self.args.size} size the dimensions are scaled: llama.cpp could not run this "
                              "file, so the guard is bypassed for this timing")
        bypass = "import sys; import gslice.formats.gguf as g; g.guard = lambda plan: None; from gslice.cli import main; main()"
        return [self.python, "-c", bypass, *cmd[3:]]

    def gguf(self) -> None:
        """E4B -> E2B text-only as one GGUF Q8_0 file; cp of that file as the floor; the same
        inside the gslice memory cap; its tensors against the converter's file (when made)."""
        out = self.work / "e2b-q8_0.gguf"
        r = self.measure("gguf", "gslice slice E4B->E2B text-only GGUF Q8_0", self.gguf_cmd(out), out, prepare=(self.src,))
        if not r.ok:
            return
        copy = self.work / "e2b-q8_0-cp.gguf"
        self.measure("gguf_cp_sync", "cp + sync of the GGUF file", ["sh", "-c", 'cp "$1" "$2" && sync "$2"', "sh", str(out), str(copy)],
                     copy, prepare=(out,))
        measure.remove(copy)
        converted = self.work / "e2b-converted-q8_0.gguf"
        if converted.exists():
            self.checks["gguf_tensors_equal_converter"] = gguf_compare(out, converted, self.profile["sample"])
            measure.remove(converted)
        if "cgroup" not in self.skip and not measure.cgroup_v1_available():
            capped = self.work / "e2b-q8_0-capped.gguf"
            with MemoryCgroup(f"gslice-bench-{os.getpid()}-gg", self.profile["cap_gslice"]) as cg:
                rc = self.measure("gguf_capped", f"gslice GGUF Q8_0 under a {self.profile['cap_gslice'] // MiB} MiB cap",
                                  self.gguf_cmd(capped), capped, cgroup=cg, prepare=(self.src,))
            if rc.ok:
                self.checks["gguf_capped_equals_uncapped"] = gguf_compare(out, capped, self.profile["sample"])
            measure.remove(capped)
        measure.remove(out)

    def kquant(self) -> None:
        """E4B -> E2B text-only as one GGUF Q4_K_M file, two ways on 2 threads each: gslice in
        one pass, and gslice's bf16 GGUF then llama.cpp's quantizer (the path without gslice's
        quantization); the two files compared tensor by tensor; the kernels side by side."""
        out = self.work / "e2b-q4_k_m.gguf"
        label = f"gslice slice E4B->E2B text-only GGUF Q4_K_M, {KQUANT_THREADS} threads"
        r = self.measure("kquant", label, self.gguf_cmd(out, "q4_k_m", KQUANT_THREADS), out, prepare=(self.src,))
        bf16 = self.work / "e2b-bf16.gguf"
        rb = self.measure("kquant_bf16", f"gslice slice E4B->E2B text-only GGUF bf16, {KQUANT_THREADS} threads",
                          self.gguf_cmd(bf16, "bf16", KQUANT_THREADS), bf16, prepare=(self.src,))
        python = self.args.llama_python or self.args.torch_python
        if not self.python_has(python, "llama_cpp"):
            self.notes["kquant_llama"] = f"not run: {python} cannot import llama_cpp (give --llama-python)"
        elif rb.ok:
            ref = self.work / "e2b-q4_k_m-llama.gguf"
            cmd = [python, "-c", LLAMA_QUANTIZE, str(HERE.parent), str(bf16), str(ref), "q4_k_m", str(KQUANT_THREADS)]
            rl = self.measure("kquant_llama", f"then llama.cpp's quantizer to Q4_K_M (llama_model_quantize, {KQUANT_THREADS} threads)",
                              cmd, ref, prepare=(bf16,))
            rl.extra["bf16_input_bytes"] = bf16.stat().st_size
            if r.ok and rl.ok:
                self.checks["kquant_equals_llama_cpp"] = gguf_compare(out, ref, self.profile["sample"])
            measure.remove(ref)
        measure.remove(bf16)
        measure.remove(out)
        p = subprocess.run([self.python, str(HERE / "kquant_speed.py"), "--threads", str(KQUANT_THREADS)], capture_output=True, text=True)
        if p.returncode:
            self.notes["kquant_kernels"] = f"failed: {p.stderr.strip().splitlines()[-1:]}"
        else:
            self.kernels = json.loads(p.stdout)
            log("  kernels, GB/s of bf16: " + ", ".join(f"{n} gslice {f['gslice_gb_s']:.3f}"
                                                         + (f" llama.cpp {f['llama_cpp_gb_s']:.3f}" if "llama_cpp_gb_s" in f else "")
                                                         for n, f in self.kernels["types"].items()))

    def mlx(self) -> None:
        """E4B -> E2B as an MLX 4-bit folder in one pass; cp + sync of it as the floor; the same
        inside gslice's memory cap; and the two-pass path: gslice's BF16 MLX folder, then
        mlx_lm.convert -q (4 bits, groups of 64: its defaults and gslice's), whose tensors are
        compared with gslice's."""
        out = self.work / "e2b-mlx-q4"
        r = self.measure("mlx4", "gslice slice E4B->E2B MLX 4-bit", self.gslice_cmd(out, "--format", "mlx", "--mlx-bits", "4"),
                         out, prepare=(self.src,))
        if not r.ok:
            return
        copy = self.work / "e2b-mlx-q4-cp"
        self.measure("mlx4_cp_sync", "cp -r + sync of the MLX 4-bit folder",
                     ["sh", "-c", 'cp -r "$1" "$2" && sync "$2"/*', "sh", str(out), str(copy)], copy, prepare=(out,))
        measure.remove(copy)
        if "cgroup" not in self.skip and not measure.cgroup_v1_available():
            capped = self.work / "e2b-mlx-q4-capped"
            with MemoryCgroup(f"gslice-bench-{os.getpid()}-mx", self.profile["cap_gslice"]) as cg:
                rc = self.measure("mlx4_capped", f"gslice MLX 4-bit under a {self.profile['cap_gslice'] // MiB} MiB cap",
                                  self.gslice_cmd(capped, "--format", "mlx", "--mlx-bits", "4"), capped, cgroup=cg,
                                  prepare=(self.src,))
            if rc.ok:
                self.compare("mlx4_capped_equals_uncapped", out, capped)
            measure.remove(capped)
        bf16 = self.work / "e2b-mlx-bf16"
        rb = self.measure("mlx_bf16", "gslice slice E4B->E2B MLX bf16", self.gslice_cmd(bf16, "--format", "mlx"), bf16,
                          prepare=(self.src,))
        python = self.args.mlx_python or self.args.torch_python
        if rb.ok and self.python_has(python, "mlx_lm"):
            # synth's tokenizer.json has the published one's size, not a loadable vocabulary;
            # without it transformers builds the tokenizer from tokenizer.model (a real one)
            (bf16 / "tokenizer.json").unlink()
            converted = self.work / "e2b-mlx-convert-q4"
            rc = self.measure("mlx_convert", "then mlx_lm.convert -q of that folder",
                              [python, "-m", "mlx_lm", "convert", "--hf-path", str(bf16), "--mlx-path", str(converted), "-q"],
                              converted, prepare=(bf16,))
            if rc.ok:
                self.compare("mlx4_equals_convert", out, converted)
            measure.remove(converted)
        elif rb.ok:
            self.notes["mlx_convert"] = f"not run: {python} cannot import mlx_lm (give --mlx-python)"
        measure.remove(bf16)
        measure.remove(out)

    def convert_to_gguf(self, notebook_out: Path) -> None:
        """The second step of the user's path: llama.cpp's converter on the notebook's output."""
        source = self.args.llama_cpp_source
        if not source or not (Path(source) / "convert_hf_to_gguf.py").is_file():
            self.notes["convert"] = "not run: give --llama-cpp-source (the folder .ci/llama-cpp-source prints)"
            return
        out = self.work / "e2b-converted-q8_0.gguf"
        cmd = [self.args.torch_python, str(Path(source) / "convert_hf_to_gguf.py"), str(notebook_out),
               "--outfile", str(out), "--outtype", "q8_0"]
        r = self.measure("convert", "then llama.cpp's convert_hf_to_gguf.py to Q8_0", cmd, out, prepare=(notebook_out,))
        if not r.ok:
            measure.remove(out)

    def capped(self, out_g: Path) -> None:
        why = measure.cgroup_v1_available()
        if why:
            self.notes["cgroup"] = f"not run: {why}"
            return
        out = self.work / "e2b-capped"
        with MemoryCgroup(f"gslice-bench-{os.getpid()}-g", self.profile["cap_gslice"]) as cg:
            r = self.measure("bf16_capped", f"gslice bf16 under a {self.profile['cap_gslice'] // MiB} MiB cap",
                             self.gslice_cmd(out), out, cgroup=cg, prepare=(self.src,))
        if r.ok:
            self.compare("capped_equals_uncapped", out_g, out)
        measure.remove(out)
        if "notebook" in self.skip or not self.torch_available():
            return
        out = self.work / "e2b-notebook-capped"
        with MemoryCgroup(f"gslice-bench-{os.getpid()}-n", self.profile["cap_notebook"]) as cg:
            self.measure("notebook_capped", f"notebook method under a {self.profile['cap_notebook'] // MiB} MiB cap",
                         self.notebook_cmd(out), out, cgroup=cg, prepare=(self.src,))
        measure.remove(out)

    def portable(self, out_g: Path) -> None:
        """The same slice on the engine's portable I/O path (std positional writes from the map,
        no page-cache hints), free and under gslice's cap: it must write the fast path's bytes
        and keep memory flat."""
        env = {**os.environ, engine.PORTABLE_IO_ENV: "1"}
        out = self.work / "e2b-portable"
        r = self.measure("bf16_portable", "gslice slice E4B->E2B bf16, portable I/O path", self.gslice_cmd(out), out,
                         prepare=(self.src,), env=env)
        if r.ok:
            report = json.loads(r.stdout)
            r.extra.update(io=report["io"], bytes_kernel_copied=report["bytes_kernel_copied"])
            self.compare("portable_equals_fast", out_g, out)
        measure.remove(out)
        why = measure.cgroup_v1_available()
        if "cgroup" in self.skip or why:
            self.notes["bf16_portable_capped"] = f"not run: {why or '--skip cgroup'}"
            return
        with MemoryCgroup(f"gslice-bench-{os.getpid()}-p", self.profile["cap_gslice"]) as cg:
            r = self.measure("bf16_portable_capped",
                             f"gslice bf16, portable I/O path, under a {self.profile['cap_gslice'] // MiB} MiB cap",
                             self.gslice_cmd(out), out, cgroup=cg, prepare=(self.src,), env=env)
        if r.ok:
            self.compare("portable_capped_equals_fast", out_g, out)
        measure.remove(out)

    def profile_bf16(self, into: Path) -> None:
        """Where the time of a bf16 slice goes: on-CPU samples of every thread (kernel and
        user, by DSO and symbol) and the system calls. Separate runs: the profilers slow it."""
        into.mkdir(parents=True, exist_ok=True)
        out = self.work / "e2b-profiled"
        data = into / "bf16.perf.data"
        for name, cmd, report in (
            ("perf", ["perf", "record", "-q", "-e", "cpu-clock", "-F", "1000", "-g", "-o", str(data), "--"],
             [["perf", "report", "-i", str(data), "--no-children", "--sort", "dso,sym", "--stdio", "-g", "none"],
              ["perf", "report", "-i", str(data), "--no-children", "--sort", "comm,dso", "--stdio", "-g", "none"]]),
            ("strace", ["strace", "-f", "-c", "-o", str(into / "bf16.strace.txt")], []),
        ):
            if not shutil.which(cmd[0]):
                self.notes[f"profile_{name}"] = f"not run: {cmd[0]} is not installed"
                continue
            measure.remove(out)
            self.prepare(self.src)
            p = subprocess.run(cmd + self.gslice_cmd(out), capture_output=True, text=True)
            if p.returncode:
                self.notes[f"profile_{name}"] = f"failed: {p.stderr.strip().splitlines()[-1:]}"
                continue
            text = "".join(subprocess.run(r, capture_output=True, text=True).stdout for r in report)
            if text:
                (into / "bf16.perf.txt").write_text(text)
        measure.remove(out)
        log(f"profiles written to {into}")

    def slice_int4(self) -> None:
        if "--quant" not in self.cli_help("slice"):
            self.notes["int4"] = "not available: `gslice slice` has no --quant option in this build (issue 6)"
            return
        out = self.work / "e2b-int4"
        self.measure("int4", "gslice slice E4B->E2B int4", self.gslice_cmd(out, "--quant", "int4"), out, prepare=(self.src,))
        measure.remove(out)

    def bulk(self) -> None:
        if "bulk" not in self.cli_commands():
            self.notes["bulk"] = "not available: no `gslice bulk` command in this build (issue 7)"
            return
        out = self.work / "bulk"
        cmd = [self.python, "-m", "gslice", "bulk", str(self.src), "--presets", "official", "-o", str(out), "--json", "-q",
               "--max-shard-size", str(synth.max_shard_size(self.args.size))]
        if self.args.threads:
            cmd += ["--jobs", str(self.args.threads)]
        r = self.measure("bulk", "gslice bulk, the 16 official presets", cmd, out, prepare=(self.src,))
        if r.ok:
            report = json.loads(r.stdout)
            r.extra.update({k: report[k] for k in ("bytes_written", "bytes_if_independent", "distinct_tensors", "seconds")})
            r.extra["outputs"] = len(report["rows"])
        measure.remove(out)

    def eval_gguf(self) -> None:
        """The laptop path of `gslice eval`: the source as a GGUF Q8_0 file (no spec) and E2B
        as GGUF Q8_0, both written by gslice, then E2B evaluated against the source."""
        if subprocess.run([self.python, "-c", "import llama_cpp"], capture_output=True).returncode:
            self.notes["eval"] = f"not run: {self.python} cannot import llama_cpp (pip install 'gslice[llama-cpp]')"
            return
        src = self.src
        if self.args.size != "full":
            log(f"writing a {self.args.size} checkpoint that llama.cpp runs (per-layer input width 256)")
            src = Path(synth.write_checkpoint(self.work / "e4b-llama-cpp", self.args.size, llama_cpp=True).path)
        source, e2b = self.work / "source-q8_0.gguf", self.work / "e2b-q8_0-eval.gguf"
        spec = synth.e2b_spec(self.args.size)
        gguf = [self.python, "-m", "gslice", "slice", str(src), "--format", "gguf", "--gguf-type", "q8_0", "--json", "-q"]
        written = [
            self.measure("eval_source_gguf", "gslice slice E4B, unsliced, to GGUF Q8_0 (eval's source)",
                         [*gguf, "-o", str(source)], source, prepare=(src,)),
            self.measure("eval_slice_gguf", "gslice slice E4B->E2B to GGUF Q8_0 (eval's slice)",
                         [*gguf, "-o", str(e2b), "--layers-to-skip", "20-24", "--ffn-dims", str(spec["ffn_dims"])], e2b,
                         prepare=(src,)),
        ]
        if src != self.src:
            measure.remove(src)
        if all(r.ok for r in written):
            threads, tokens = self.args.eval_threads, self.args.eval_tokens
            cmd = [self.python, "-m", "gslice", "eval", str(e2b), "--against", str(source), "--threads", str(threads),
                   "--max-tokens", str(tokens), "--context", str(EVAL_CONTEXT), "--no-cache", "--json", "-q"]
            r = self.measure("eval", f"gslice eval E2B Q8_0 against E4B Q8_0 ({threads} threads, {tokens} tokens)", cmd,
                             self.work / "eval-writes-nothing", prepare=(source, e2b))
            if r.ok:
                r.extra.update(eval_figures(json.loads(r.stdout), threads))
        measure.remove(source)
        measure.remove(e2b)

    # -- helpers ----------------------------------------------------------------------------

    def prepare(self, *paths: Path) -> None:
        if self.args.cache == "cold":
            measure.evict(*paths)
        else:
            measure.warm(*paths)

    def measure(self, key: str, label: str, cmd: list[str], out: Path, cgroup: MemoryCgroup | None = None,
                prepare: tuple[Path, ...] = (), env: dict | None = None) -> Run:
        """Runs ``cmd`` ``--repeat`` times (``prepare``-ing those paths before each, removing
        ``out`` between runs) and keeps the run with the median wall time, plus every run's
        wall time. The last run's output is left for the caller."""
        log(f"{label} ...")
        repeat = self.args.repeat or (1 if self.args.size == "full" else 3)
        runs = []
        for i in range(repeat):
            if i:
                measure.remove(out)
            self.prepare(*prepare)
            if cgroup is None and self.args.recycle and key in RECYCLED:
                with MemoryCgroup(f"gslice-bench-{os.getpid()}-recycle", self.args.recycle * MiB) as cg:
                    r = measure.run(label, cmd, cgroup=cg, env=env)
            else:
                r = measure.run(label, cmd, cgroup=cgroup, env=env)
            if Path(out).exists():
                r.bytes_written = measure.tree_bytes(out)
            runs.append(r)
            if not r.ok:
                break
        r = sorted(runs, key=lambda x: x.wall)[len(runs) // 2]
        r.extra["walls"] = [round(x.wall, 3) for x in runs]
        r.extra["peak_rss_max"] = max(x.peak_rss for x in runs)
        status = "ok" if r.ok else f"exit {measure.signal_name(r.exit_code)}"
        log(f"  {status}: {r.wall:.2f} s wall, {r.user:.2f} s user, {r.sys:.2f} s sys, peak RSS {r.peak_rss / 1e6:.0f} MB"
            + (f", cgroup max usage {r.cgroup['max_usage_in_bytes'] / MiB:.0f} MiB, failcnt {r.cgroup['failcnt']}, "
               f"oom_kill {r.cgroup['oom_kill']}" if r.cgroup else ""))
        if not r.ok and r.stderr:
            log("  " + r.stderr.strip().splitlines()[-1])
        self.runs[key] = r
        return r

    def compare(self, key: str, a: Path, b: Path) -> None:
        mode = self.args.verify or ("sampled" if self.args.size == "full" else "full")
        sample = self.profile["sample"] or 16 if mode == "sampled" else None
        started = time.perf_counter()
        r = compare.compare(a, b, sample)
        r.update(mode=mode if sample else "every byte", seconds=time.perf_counter() - started)
        r["problems"] = r["problems"][:20]
        self.checks[key] = r
        log(f"  {key}: {r['tensors']} tensors, {r['bytes_compared'] / 1e9:.2f} GB compared ({r['mode']}): "
            + ("equal" if not r["problems"] else f"{len(r['problems'])} differences, first: {r['problems'][0]}"))

    def torch_available(self) -> bool:
        return self.python_has(self.args.torch_python, "torch, safetensors.torch")

    def python_has(self, python: str, modules: str) -> bool:
        key = (python, modules)
        if key not in self._imports:
            try:
                self._imports[key] = subprocess.run([python, "-c", f"import {modules}"], capture_output=True).returncode == 0
            except OSError:  # no such interpreter
                self._imports[key] = False
        return self._imports[key]

    def cli_help(self, command: str) -> str:
        return subprocess.run([self.python, "-m", "gslice", command, "--help"], capture_output=True, text=True).stdout

    def cli_commands(self) -> list[str]:
        p = subprocess.run([self.python, "-c", "from gslice.cli import main; print(' '.join(main.commands))"],
                           capture_output=True, text=True)
        return p.stdout.split()

    def results(self) -> dict:
        return {
            "size": self.args.size,
            "cache": self.args.cache,
            "recycle_mib": self.args.recycle,
            "vm_first_touch": self.first_touch,
            "machine": self.machine,
            "gslice": gslice.__version__,
            "git_commit": git_commit(),
            "source": {"path": str(self.src), "shard_bytes": self.source_bytes, "synthesized": self.synth},
            "profile": self.profile,
            "runs": {k: r.to_dict() for k, r in self.runs.items()},
            "checks": self.checks,
            "kquant_kernels": self.kernels,
            "notes": self.notes,
            "targets": evaluate({k: r.to_dict() for k, r in self.runs.items()}, self.checks, self.source_bytes),
        }


def eval_figures(report: dict, threads: int) -> dict:
    """Per model of a ``gslice eval --json`` report: the runtime's tokens/s, the peak RSS of the
    process that ran it, the load time."""
    models = {"source": report["source"], "slice": report["slices"][0]}
    return {
        "threads": threads,
        "tokens_scored": report["tokens_scored"],
        "windows": report["windows"],
        "context": report["context"],
        **{f"{role}_{k}": m["run"][v] for role, m in models.items() for k, v in (
            ("tokens_per_second", "tokens_per_second"), ("peak_rss", "peak_rss_bytes"), ("load_s", "load_seconds"),
            ("tokens_processed", "tokens_processed"))},
    }


def gguf_compare(a: Path, b: Path, sample: int | None) -> dict:
    """Tensor names, types, shapes and data of two GGUF files (``sample``: only the first and
    last ``sample`` MiB of each tensor). Metadata is not compared: the notebook's config keeps
    the source's per-layer lists, so the converter's file describes 35 layers for 30."""
    import gguf

    ra, rb = gguf.GGUFReader(a), gguf.GGUFReader(b)
    ta, tb = {t.name: t for t in ra.tensors}, {t.name: t for t in rb.tensors}
    problems = [f"only in {a.name}: {n}" for n in sorted(set(ta) - set(tb))] + [f"only in {b.name}: {n}" for n in sorted(set(tb) - set(ta))]
    compared = 0
    for name in sorted(set(ta) & set(tb)):
        x, y = ta[name], tb[name]
        if (x.tensor_type, list(x.shape)) != (y.tensor_type, list(y.shape)):
            problems.append(f"{name}: {x.tensor_type.name} {list(x.shape)} vs {y.tensor_type.name} {list(y.shape)}")
            continue
        dx, dy = x.data.reshape(-1).view("u1"), y.data.reshape(-1).view("u1")
        if sample and dx.size > 2 * sample * MiB:
            n = sample * MiB
            same = (dx[:n] == dy[:n]).all() and (dx[-n:] == dy[-n:]).all()
            compared += 2 * n
        else:
            same = (dx == dy).all()
            compared += dx.size
        if not same:
            problems.append(f"{name}: data differs")
    return {"tensors": len(ta), "bytes_compared": compared, "mode": "sampled" if sample else "every byte", "problems": problems[:20]}


def git_commit() -> str | None:
    p = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return p.stdout.strip() or None


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- targets and the table ----------------------------------------------------------------


def evaluate(runs: dict, checks: dict, source_bytes: int) -> list[dict]:
    """Each target with its measured figure; ``met`` is None when the run is missing."""
    def wall(k):
        r = runs.get(k)
        return r["wall"] if r and r["exit_code"] == 0 else None

    def ratio(a, b):
        return a / b if a is not None and b else None

    out = []

    def target(name, figure, limit, met, unit=""):
        out.append({"target": name, "measured": figure, "limit": limit, "unit": unit,
                    "met": None if figure is None else bool(met(figure))})

    def peak(k):
        r = runs.get(k)
        return r["peak_rss"] if r else None

    def equal(run, check):
        """1 when ``run`` succeeded and ``check`` found no difference, 0 otherwise, None unrun."""
        r = runs.get(run)
        return None if r is None else int(r["exit_code"] == 0 and not checks.get(check, {}).get("problems", ["missing"]))

    def at_most(name, figure, key, unit=""):
        target(name, figure, TARGETS[key], lambda x: x <= TARGETS[key], unit)

    def holds(name, run, check):
        target(name, equal(run, check), 1, lambda x: x == 1)

    at_most("bf16 wall / cp+sync wall", ratio(wall("bf16"), wall("cp_sync")), "bf16_vs_cp", "x")
    target("notebook wall / bf16 wall", ratio(wall("notebook"), wall("bf16")), TARGETS["notebook_vs_bf16"], lambda x: x >= TARGETS["notebook_vs_bf16"], "x")
    at_most("bf16 peak RSS", peak("bf16"), "bf16_rss", "B")
    holds("bf16 completes under the cap (and equals the uncapped output)", "bf16_capped", "capped_equals_uncapped")
    holds("portable I/O path: output equals the fast path's", "bf16_portable", "portable_equals_fast")
    at_most("portable I/O path: bf16 peak RSS", peak("bf16_portable"), "bf16_rss", "B")
    holds("portable I/O path: completes under the cap (and equals the fast path's output)",
          "bf16_portable_capped", "portable_capped_equals_fast")
    at_most("int4 wall / bf16 wall", ratio(wall("int4"), wall("bf16")), "int4_vs_bf16", "x")
    at_most("int4 peak RSS", peak("int4"), "int4_rss", "B")
    b = runs.get("bulk")
    written = b["bytes_written"] if b and b["exit_code"] == 0 else None  # every file, each inode once
    at_most("bulk bytes written / source bytes", ratio(written, source_bytes), "bulk_bytes_vs_source", "x")
    at_most("bulk wall / bf16 wall", ratio(wall("bulk"), wall("bf16")), "bulk_time_vs_bf16", "x")
    at_most("GGUF Q8_0 wall / cp+sync of the file", ratio(wall("gguf"), wall("gguf_cp_sync")), "gguf_vs_cp", "x")
    at_most("GGUF Q8_0 peak RSS", peak("gguf"), "gguf_rss", "B")
    holds("GGUF Q8_0 completes under the cap (and equals the uncapped file)", "gguf_capped", "gguf_capped_equals_uncapped")
    at_most("MLX 4-bit wall / cp+sync of its output", ratio(wall("mlx4"), wall("mlx4_cp_sync")), "mlx4_vs_cp", "x")
    at_most("MLX 4-bit wall / MLX bf16 wall", ratio(wall("mlx4"), wall("mlx_bf16")), "mlx4_vs_bf16", "x")
    at_most("MLX 4-bit peak RSS", peak("mlx4"), "mlx4_rss", "B")
    holds("MLX 4-bit completes under the cap (and equals the uncapped output)", "mlx4_capped", "mlx4_capped_equals_uncapped")
    holds("MLX 4-bit tensors equal mlx_lm.convert -q of the bf16 output", "mlx_convert", "mlx4_equals_convert")
    two_steps = wall("kquant_bf16") + wall("kquant_llama") if wall("kquant_bf16") and wall("kquant_llama") else None
    target("GGUF Q4_K_M: gslice one pass / (bf16 GGUF + llama.cpp's quantizer)", ratio(wall("kquant"), two_steps),
           TARGETS["kquant_vs_two_steps"], lambda x: x < TARGETS["kquant_vs_two_steps"], "x")
    at_most("GGUF Q4_K_M peak RSS", peak("kquant"), "kquant_rss", "B")
    holds("GGUF Q4_K_M: every tensor equals llama.cpp's quantizer's", "kquant_llama", "kquant_equals_llama_cpp")
    return out


ROW_ORDER = ["bf16", "int4", "bulk", "cp", "cp_sync", "notebook", "bf16_capped", "notebook_capped", "bf16_portable",
             "bf16_portable_capped", "gguf", "gguf_cp_sync", "gguf_capped", "convert", "kquant", "kquant_bf16", "kquant_llama",
             "mlx4", "mlx4_cp_sync", "mlx4_capped", "mlx_bf16", "mlx_convert", "eval_source_gguf", "eval_slice_gguf", "eval"]


def markdown(res: dict) -> str:
    m = res["machine"]
    src = res["source"]
    lines = [
        f"Measured {m['date']} on {m['cpu']} ({m['cores']} cores, {m['memory_bytes'] / 2**30:.0f} GiB RAM, "
        f"{m['filesystem']}, Linux {m['kernel']}), gslice {res['gslice']} ({res['git_commit']}), "
        f"`benches/full.py --size {res['size']}`, {res['cache']} page cache. Source: synthetic E4B layout "
        f"({res['size']} size), {src['shard_bytes'] / 1e9:.2f} GB of shards"
        + (f", written at {src['synthesized']['mb_per_s']:.0f} MB/s." if src.get("synthesized") else "."),
        "",
    ]
    if m.get("free_page_reporting"):
        ft = res.get("vm_first_touch", {})
        lines += [
            "This VM hands free memory back to its host (virtio-balloon free page reporting): a write into "
            f"page-cache pages that were free for a few seconds cost {ft.get('sys_s_per_gb_fresh', float('nan')):.2f} s "
            f"of system CPU per GB here, against {ft.get('sys_s_per_gb_recycled', float('nan')):.2f} s for recycled pages, "
            "and that cost falls on whichever run gets fresh pages."
            + (f" gslice, cp and bulk ran in {res['recycle_mib']} MiB memory cgroups so that their page cache recycles pages."
               if res.get("recycle_mib") else " Consider `--recycle 1024`."),
            "",
        ]
    walls = {k: r["extra"].get("walls", []) for k, r in res["runs"].items()}
    if any(len(w) > 1 for w in walls.values()):
        lines += [
            "Each row is the run with the median wall time of those made (the outcome column lists every "
            "run's wall time).",
            "",
        ]
    lines += [
        "| run | wall s | user s | sys s | peak RSS MB | written GB | GB/s | outcome |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for key in ROW_ORDER:
        r = res["runs"].get(key)
        if r is None:
            continue
        written = r["bytes_written"] or 0
        outcome = "ok" if r["exit_code"] == 0 else f"killed ({measure.signal_name(r['exit_code'])})" if r["exit_code"] < 0 else f"exit {r['exit_code']}"
        if r.get("cgroup"):
            c = r["cgroup"]
            outcome += (f"; cap {c['limit_in_bytes'] / MiB:.0f} MiB, max usage {c['max_usage_in_bytes'] / MiB:.0f} MiB "
                        f"(incl. page cache), failcnt {c['failcnt']}, oom_kill {c['oom_kill']}")
        if "fsync_after" in r["extra"]:
            outcome += f"; its output then took {r['extra']['fsync_after']:.2f} s to fsync"
        if len(r["extra"].get("walls", [])) > 1:
            outcome += "; runs: " + ", ".join(f"{w:.1f}" for w in r["extra"]["walls"]) + " s"
        lines.append(f"| {r['label']} | {r['wall']:.2f} | {r['user']:.2f} | {r['sys']:.2f} | {r['peak_rss'] / 1e6:.0f} "
                     f"| {written / 1e9:.3f} | {written / 1e9 / r['wall'] if r['wall'] else 0:.2f} | {outcome} |")
    for key, why in res["notes"].items():
        lines.append(f"| {key} | | | | | | | {why} |")
    lines += ["", "| target | limit | measured | met |", "|---|---:|---:|---|"]
    for t in res["targets"]:
        fmt = {"B": lambda x: f"{x / 1e6:.0f} MB", "": lambda x: "yes" if x else "no"}.get(t["unit"], lambda x: f"{x:.2f}{t['unit']}")
        measured = "not measured" if t["measured"] is None else fmt(t["measured"])
        limit = fmt(t["limit"]) if t["unit"] else "yes"
        met = {None: "-", True: "yes", False: "**no**"}[t["met"]]
        lines.append(f"| {t['target']} | {limit} | {measured} | {met} |")
    runs = res["runs"]
    if all(k in runs and runs[k]["exit_code"] == 0 for k in ("gguf", "notebook", "convert")):
        nb, cv, gg = runs["notebook"], runs["convert"], runs["gguf"]
        lines += ["", f"E4B -> E2B as a GGUF Q8_0 file: the user's path today (the notebook's method, then llama.cpp's "
                      f"convert_hf_to_gguf.py) takes {nb['wall']:.1f} s (peak RSS {nb['peak_rss'] / 1e6:.0f} MB) + "
                      f"{cv['wall']:.1f} s (peak RSS {cv['peak_rss'] / 1e6:.0f} MB) = {nb['wall'] + cv['wall']:.1f} s and writes "
                      f"the full checkpoint in between; gslice writes the file in one pass in {gg['wall']:.1f} s "
                      f"(peak RSS {gg['peak_rss'] / 1e6:.0f} MB)."]
    lines += kquant_lines(res)
    if all(k in runs and runs[k]["exit_code"] == 0 for k in ("mlx4", "mlx_bf16", "mlx_convert")):
        m4, mb, mc = runs["mlx4"], runs["mlx_bf16"], runs["mlx_convert"]
        lines += ["", f"E4B -> E2B as an MLX 4-bit folder: gslice's bf16 MLX folder then mlx_lm.convert -q takes "
                      f"{mb['wall']:.1f} s (peak RSS {mb['peak_rss'] / 1e6:.0f} MB) + {mc['wall']:.1f} s (peak RSS "
                      f"{mc['peak_rss'] / 1e6:.0f} MB) = {mb['wall'] + mc['wall']:.1f} s; gslice quantizes in the slicing "
                      f"pass in {m4['wall']:.1f} s (peak RSS {m4['peak_rss'] / 1e6:.0f} MB)."]
    if runs.get("eval", {}).get("exit_code") == 0:
        lines += ["", eval_sentence(runs["eval"], res["size"])]
    for key, c in res["checks"].items():
        lines.append("")
        lines.append(f"Check {key}: {c['tensors']} tensors, {c['bytes_compared'] / 1e9:.2f} GB compared ({c['mode']}): "
                     + ("identical." if not c["problems"] else f"{len(c['problems'])} differences."))
    return "\n".join(lines)


def eval_sentence(r: dict, size: str) -> str:
    """The gslice eval figures in words: per model, with the threads and how quiet the machine was."""
    e = r["extra"]
    others = r.get("other_cores")
    quiet = ("the machine was otherwise quiet" if others is not None and others < 0.1 else
             f"other processes kept {others:.2f} cores busy on average meanwhile, which lowers llama.cpp's tokens/s"
             if others is not None else "how busy the machine was is unknown")
    return (f"`gslice eval` of E2B Q8_0 against E4B Q8_0 (both GGUF files written by gslice from the {size}-size synthetic "
            f"checkpoint; random weights: the figures measure cost, not quality), llama.cpp on {e['threads']} threads, "
            f"{e['tokens_scored']:,} tokens scored in {e['windows']} windows of {e['context']}: E2B "
            f"{e['slice_tokens_per_second']:.1f} tokens/s, peak RSS {e['slice_peak_rss'] / 1e6:.0f} MB; the source "
            f"{e['source_tokens_per_second']:.1f} tokens/s, peak RSS {e['source_peak_rss'] / 1e6:.0f} MB (each model in a "
            f"process of its own; of its peak, at most {r['peak_anon'] / 1e6:.0f} MB is anonymous memory, the rest pages "
            f"of the memory-mapped file, which llama.cpp reads in whole when it loads it and the kernel can drop); "
            f"{r['wall']:.1f} s for the whole command; {quiet}.")


def kquant_lines(res: dict) -> list[str]:
    """The Q4_K_M paragraph: one pass against two steps, and the kernels side by side."""
    runs, lines = res["runs"], []
    if all(k in runs and runs[k]["exit_code"] == 0 for k in ("kquant", "kquant_bf16", "kquant_llama")):
        g, b, q = runs["kquant"], runs["kquant_bf16"], runs["kquant_llama"]
        quantizer = q["extra"]["bf16_input_bytes"] / 1e9 / q["wall"]
        lines += ["", f"E4B -> E2B text-only as a GGUF Q4_K_M file, {KQUANT_THREADS} threads each: gslice in one pass "
                      f"{g['wall']:.1f} s (peak RSS {g['peak_rss'] / 1e6:.0f} MB); gslice's bf16 GGUF {b['wall']:.1f} s "
                      f"(peak RSS {b['peak_rss'] / 1e6:.0f} MB) then llama.cpp's quantizer {q['wall']:.1f} s "
                      f"(peak RSS {q['peak_rss'] / 1e6:.0f} MB, {quantizer:.3f} GB/s of its bf16 input) = "
                      f"{b['wall'] + q['wall']:.1f} s, and a bf16 file on disk in between."]
    kernels = res.get("kquant_kernels")
    if kernels:
        parts = []
        for name, f in kernels["types"].items():
            part = f"{name} gslice {f['gslice_gb_s']:.3f}"
            if "llama_cpp_gb_s" in f:
                part += f", llama.cpp {f['llama_cpp_gb_s']:.3f} ({'same bytes' if f['bytes_equal'] else '**bytes differ**'})"
            parts.append(part)
        lines += ["", f"K-quant kernels, GB/s of bf16 input on {kernels['threads']} threads ([{kernels['rows']}, "
                      f"{kernels['cols']}] bf16 in memory, benches/kquant_speed.py): " + "; ".join(parts) + "."]
    return lines


def update_readme(path: Path, md: str) -> None:
    text = path.read_text()
    a, b = text.find(README_START), text.find(README_END)
    if a < 0 or b < a:
        raise SystemExit(f"error: {path} has no {README_START} ... {README_END} block")
    path.write_text(text[: a + len(README_START)] + "\n" + md + "\n" + text[b:])


if __name__ == "__main__":
    main()
