"""Which runtimes compute a slice correctly, and for each that does not, the rule and the layer.

A slice is judged as the model it becomes (:func:`gemma3n.sliced`): the layers a runtime sees,
renumbered. transformers reads every fact slicing changes from config.json; the others fix some
of them in code, and a slice that moves one of those facts either fails to load or loads and
computes wrong logits without an error. Every rule below was read in the runtime's own code at
the version named in its :class:`Runtime`; docs/runtimes.md gives the file and line of each and
says which were confirmed by running the runtime.

How a file stores the model (tensor names, metadata keys, which tensors it must hold) is the
format modules' business; the few such needs a runtime has are listed in its ``needs`` so that
the formats and the docs can honour them, but they never decide a verdict here.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import gemma3n
from .errors import SpecError
from .gemma3n import Architecture, Resolved
from .units import fmt_ranges

SLIDING, FULL = "sliding_attention", "full_attention"

# What a problem does in the runtime.
REFUSED = "refused"  # fails to load, with an error
WRONG = "wrong"  # loads and computes wrong logits, without an error
ABORTS = "aborts"  # a failed assertion aborts the whole process when the context is created
EFFECTS = {
    REFUSED: "refuses to load it",
    ABORTS: "aborts the whole process when it creates a context",
    WRONG: "loads it and computes wrong logits without an error",
}


@dataclass(frozen=True)
class Runtime:
    """A runtime and the code its rules were read from."""

    name: str  # the id --runtime takes
    code: str  # the version whose Gemma 3n code the rules come from
    also: tuple[str, ...] = ()  # applications that run this same code
    ran: bool = False  # whether its verdicts were confirmed by running it (docs/runtimes.md), not only read
    needs: tuple[str, ...] = ()  # what it needs of the files, whatever the slice


TRANSFORMERS = Runtime(
    "transformers",
    "transformers 5.23.0 (models/gemma3n)",
    ran=True,
    needs=("a checkpoint with towers builds both towers: a dropped one is freshly initialised (--text-only avoids it)",),
)
VLLM = Runtime(
    "vllm",
    "vLLM 0.33.0, vllm/model_executor/models/gemma3n.py (read from its wheel; vLLM does not run here)",
)
LLAMA_CPP = Runtime(
    "llama.cpp",
    "llama.cpp 0c1e570 as vendored by llama-cpp-python 0.3.36 (src/models/gemma3n.cpp)",
    also=("LM Studio (GGUF models)",),
    ran=True,
    needs=(
        "k/v projections and k_norm for every layer, the KV-sharing ones too (never read; zeros do)",
        "only text tensors in the model file (vision and audio go to a separate mmproj file)",
        "token_embd, per_layer_token_embd and the tokenizer with one vocabulary size",
    ),
)
OLLAMA = Runtime(
    "ollama",
    "Ollama's own engine, model/models/gemma3n/model_text.go at 64f40bd (read; it does not use llama.cpp's Gemma 3n code)",
)
MLX_LM = Runtime(
    "mlx-lm",
    "mlx-lm 0.32.2 (mlx_lm/models/gemma3n.py)",
    ran=True,
    needs=(
        "rope_theta and rope_local_base_freq in the text config (transformers 5 writes only rope_parameters)",
        "k/v projections and k_norm for every layer, the KV-sharing ones too",
        "model_type gemma3n: it has no gemma3n_text model, so a --text-only checkpoint is refused",
        "a KV cache (mlx_lm.generate keeps one): without it the KV-sharing layers compute their own keys/values",
    ),
)
MLX_VLM = Runtime(
    "mlx-vlm",
    "mlx-vlm 0.7.10 (mlx_vlm/models/gemma3n)",
    ran=True,
    needs=(
        "k/v projections and k_norm for every layer, the KV-sharing ones too",
        "model_type gemma3n: it has no gemma3n_text model",
    ),
)
RUNTIMES = (TRANSFORMERS, VLLM, LLAMA_CPP, OLLAMA, MLX_LM, MLX_VLM)
NAMES = tuple(r.name for r in RUNTIMES)

# llama.cpp's fixed values (src/models/gemma3n.cpp, src/models/models.h, src/llama-hparams.h).
LLAMA_KV_START = 20  # hparams.n_layer_kv_from_start
LLAMA_SPARSE_LAYERS = 10  # n_layer_sparsity
LLAMA_SPARSITY = 0.95  # f_sparsity_std_mul = icdf(0.95)
# Source fields llama.cpp never reads: (field, fixed value, what a different value does).
LLAMA_FIXED = (
    ("altup_num_inputs", 4, REFUSED),
    ("altup_active_idx", 0, WRONG),
    ("laurel_rank", 64, REFUSED),
    ("hidden_size_per_layer_input", 256, REFUSED),
    ("final_logit_softcapping", 30.0, WRONG),
    ("altup_correct_scale", True, WRONG),
)


@dataclass(frozen=True)
class Problem:
    """One rule a runtime's code breaks for this slice."""

    rule: str  # kv-sharing-start, kv-producers, sparsity-layers, ffn-width, attention-types, fixed-value
    message: str  # one line naming the offending layer or width
    effect: str  # REFUSED, WRONG or ABORTS
    layers: tuple[int, ...] = ()  # the offending layers of the slice (its own indices)
    source: bool = False  # the unsliced source breaks it too

    def to_dict(self) -> dict:
        return {"rule": self.rule, "message": self.message, "effect": self.effect,
                "layers": list(self.layers), "source": self.source}


@dataclass(frozen=True)
class Verdict:
    runtime: Runtime
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        r = self.runtime
        return {"runtime": r.name, "ok": self.ok, "problems": [p.to_dict() for p in self.problems],
                "code": r.code, "also": list(r.also), "ran": r.ran, "needs": list(r.needs)}


@dataclass(frozen=True)
class Compatibility:
    """Every runtime's verdict on one slice, in RUNTIMES order."""

    verdicts: tuple[Verdict, ...]

    def __getitem__(self, name: str) -> Verdict:
        for v in self.verdicts:
            if v.runtime.name == name:
                return v
        raise SpecError(f"runtime {name!r} is not one of {', '.join(NAMES)}")

    @property
    def supported(self) -> tuple[str, ...]:
        """The runtimes that compute the slice correctly."""
        return tuple(v.runtime.name for v in self.verdicts if v.ok)

    def summary(self) -> str:
        """'all', 'all but llama.cpp, mlx-vlm' or 'transformers, mlx-lm' (the shorter)."""
        failing = [v.runtime.name for v in self.verdicts if not v.ok]
        if not failing:
            return "all"
        if len(failing) * 2 <= len(self.verdicts):
            return "all but " + ", ".join(failing)
        return ", ".join(self.supported) or "none"

    def to_dict(self) -> dict:
        return {"summary": self.summary(), "supported": list(self.supported), "verdicts": [v.to_dict() for v in self.verdicts]}


def compatibility(arch: Architecture, res: Resolved | None = None) -> Compatibility:
    """Which runtimes compute ``arch`` sliced by ``res`` correctly (``res`` None: the source
    itself). ``res`` comes from :func:`gemma3n.resolve`, so it already obeys transformers'
    rules; this adds the rules the other runtimes fix in code."""
    s = _Slice(arch, res)
    return Compatibility(tuple(Verdict(r, _in_order(_RULES[r.name](s))) for r in RUNTIMES))


def _in_order(problems: list[Problem]) -> tuple[Problem, ...]:
    """The order a user meets them: refused at load, then an abort at context creation, then
    wrong logits."""
    return tuple(sorted(problems, key=lambda p: (REFUSED, ABORTS, WRONG).index(p.effect)))


# -- the slice as a runtime sees it ---------------------------------------------------------


class _Slice:
    """The output model (``new``) with the way back to the source's layers."""

    def __init__(self, arch: Architecture, res: Resolved | None):
        self.source = arch
        self.kept = res.kept if res is not None else tuple(range(arch.num_layers))
        self.new = gemma3n.sliced(arch, res) if res is not None else arch
        self.skipped = tuple(i for i in range(arch.num_layers) if i not in set(self.kept))

    @property
    def first_shared(self) -> int:
        return self.new.first_shared

    def shared_types(self) -> list[str]:
        """Attention types among the KV-sharing layers, sliding first."""
        kinds = {self.new.layer_types[i] for i in range(self.first_shared, self.new.num_layers)}
        return [k for k in (SLIDING, FULL) if k in kinds]

    def users(self, kind: str, start: int) -> list[int]:
        return [i for i in range(start, self.new.num_layers) if self.new.layer_types[i] == kind]

    def layers(self, new: list[int]) -> str:
        """'layer 12' / 'layers 5-9 (source layers 15-19)' in the slice's indices."""
        old = [self.kept[i] for i in new]
        noun = "layer" if len(new) == 1 else "layers"
        text = f"{noun} {fmt_ranges(new)}"
        return text if old == new else f"{text} (source {noun} {fmt_ranges(old)})"


def _listed(layers: list[int]) -> str:
    """'layer 12' / 'layers 5-14'."""
    return f"layer {layers[0]}" if len(layers) == 1 else f"layers {fmt_ranges(layers)}"


# -- KV sharing ----------------------------------------------------------------------------


def _positional_producers(s: _Slice, name: str) -> list[Problem]:
    """vLLM and Ollama take the producers to sit just before the KV-sharing start (read from
    the config): the last sliding layer 2 before it, the last full-attention layer 1 before."""
    start = s.first_shared
    out = []
    for kind in s.shared_types():
        expected = start - (2 if kind == SLIDING else 1)
        actual = s.new.producers[kind]
        if actual != expected:
            users = s.users(kind, start)
            out.append(Problem(
                "kv-producers",
                f"the {kind} {s.layers(users)} reuse the keys/values of layer {actual}, the last {kind} layer "
                f"before the KV-sharing start {start}, but {name} reads layer {expected} (it takes the sliding "
                "producer to be 2 layers before the start and the full-attention one 1 before)",
                WRONG, tuple(users), _source_breaks(s, _positional_producers, name),
            ))
    return out


def _llama_kv(s: _Slice) -> list[Problem]:
    """llama.cpp shares from layer 20 on, sliding layers reading layer 18, full ones 19,
    whatever the config says (hparams.n_layer_kv_from_start = 20; the reuse callback)."""
    n, start, fixed = s.new.num_layers, s.first_shared, LLAMA_KV_START
    llama_shares = n > fixed
    slice_shares = s.new.num_kv_shared > 0
    if (llama_shares or slice_shares) and not (llama_shares and slice_shares and start == fixed):
        return [Problem("kv-sharing-start", _kv_start_message(s), _llama_kv_effect(s), (), _source_breaks(s, _llama_kv))]
    out = []
    for kind in s.shared_types():
        expected = fixed - (2 if kind == SLIDING else 1)
        actual = s.new.producers[kind]
        if actual != expected:
            users = s.users(kind, fixed)
            out.append(Problem(
                "kv-producers",
                f"the {kind} {s.layers(users)} reuse the keys/values of layer {actual}, but llama.cpp reads "
                f"layer {expected} (it fixes the producers at 18 for sliding and 19 for full attention)",
                _llama_kv_effect(s), tuple(users), _source_breaks(s, _llama_kv),
            ))
    return out


def _kv_start_message(s: _Slice) -> str:
    n, start, fixed = s.new.num_layers, s.first_shared, LLAMA_KV_START
    tail = f"(llama.cpp fixes it at {fixed}, producers {fixed - 2} and {fixed - 1})"
    below = [i for i in s.skipped if i < s.source.first_shared]
    if s.new.num_kv_shared == 0:
        return (f"no layer of the slice reuses keys/values, but llama.cpp makes layers {fixed}-{n - 1} reuse "
                f"those of layers {fixed - 2} and {fixed - 1}")
    if below and s.source.first_shared == fixed:
        verb = "is" if len(below) == 1 else "are"
        return f"{_listed(below)} {verb} skipped, which moves the KV-sharing start off layer {fixed} to layer {start} {tail}"
    moved = f", and with {_listed(below)} skipped it is at layer {start}" if below else ""
    return f"the source's KV sharing starts at layer {s.source.first_shared}{moved} {tail}"


def _llama_kv_effect(s: _Slice) -> str:
    """Layers from 20 on find their cache at layer 18 (sliding) or 19 (full) of llama.cpp's
    split caches; when that layer has the other attention type, an assertion aborts."""
    n, fixed, types = s.new.num_layers, LLAMA_KV_START, s.new.layer_types
    if n <= fixed:
        return WRONG
    for kind, producer in ((SLIDING, fixed - 2), (FULL, fixed - 1)):
        if types[producer] != kind and any(types[i] == kind for i in range(fixed, n)):
            return ABORTS
    return WRONG


# -- per-layer values fixed in code ----------------------------------------------------------


def _llama_sparsity(s: _Slice) -> list[Problem]:
    """llama.cpp makes exactly layers 0-9 sparse, at 0.95 (n_layer_sparsity, f_sparsity_std_mul)."""
    wrong: dict[float, list[int]] = {}
    for i, value in enumerate(s.new.activation_sparsity):
        if value != (LLAMA_SPARSITY if i < LLAMA_SPARSE_LAYERS else 0.0):
            wrong.setdefault(value, []).append(i)
    if not wrong:
        return []
    parts = [f"{s.layers(ls)} {'has' if len(ls) == 1 else 'have'} activation sparsity {v}" for v, ls in wrong.items()]
    return [Problem(
        "sparsity-layers",
        "; ".join(parts) + f", but llama.cpp makes exactly layers 0-{LLAMA_SPARSE_LAYERS - 1} sparse "
        f"({LLAMA_SPARSITY:g}) whatever the config says",
        WRONG, tuple(sorted(i for ls in wrong.values() for i in ls)), _source_breaks(s, _llama_sparsity),
    )]


def _one_width(s: _Slice, builds: str, fails: str) -> list[Problem]:
    """``builds``: how the runtime sizes every FFN ('llama.cpp builds every layer's FFN at layer
    0's width'); ``fails``: what a differing layer i then does."""
    widths = s.new.ffn_widths
    differ = [i for i, w in enumerate(widths) if w != widths[0]]
    if not differ:
        return []
    i = differ[0]
    count = f"; {len(differ)} layers differ: {fmt_ranges(differ)}" if len(differ) > 1 else ""
    return [Problem(
        "ffn-width",
        f"{s.layers([i])} has FFN width {widths[i]}, but {builds} {widths[0]}, so {fails.format(i=i)}{count}",
        REFUSED, tuple(differ), len(set(s.source.ffn_widths)) > 1,
    )]


def _llama_width(s: _Slice) -> list[Problem]:
    return _one_width(s, "llama.cpp builds every layer's FFN at layer 0's width",
                      "loading fails (tensor 'blk.{i}.ffn_gate.weight' has wrong shape)")


def _mlx_vlm_width(s: _Slice) -> list[Problem]:
    return _one_width(s, "mlx-vlm builds every MLP at intermediate_size[0] =",
                      "loading fails (wrong shape for layer {i}'s mlp.gate_proj.weight)")


def _llama_fixed(s: _Slice) -> list[Problem]:
    a = s.source
    values = {
        "altup_num_inputs": a.altup_num_inputs,
        "altup_active_idx": a.altup_active_idx,
        "laurel_rank": a.laurel_rank,
        "hidden_size_per_layer_input": a.ple_dim,
        "final_logit_softcapping": a.final_logit_softcapping,
        "altup_correct_scale": a.altup_correct_scale,
    }
    what = {REFUSED: "so loading fails (wrong tensor shapes)", WRONG: "so its logits are wrong"}
    return [
        Problem("fixed-value", f"the source's {field} is {values[field]!r}; llama.cpp fixes it at {fixed!r}, {what[effect]}",
                effect, (), True)
        for field, fixed, effect in LLAMA_FIXED
        if values[field] != fixed
    ]


def _vllm_correct_scale(s: _Slice) -> list[Problem]:
    if s.source.altup_correct_scale:
        return []
    return [Problem("fixed-value", "the source's altup_correct_scale is False; vLLM asserts it is True, so loading fails",
                    REFUSED, (), True)]


def _attention_types(name: str):
    def rule(s: _Slice) -> list[Problem]:
        missing = [k for k in (SLIDING, FULL) if k not in s.new.layer_types]
        return [Problem(
            "attention-types",
            f"the slice has no {kind} layer, but {name} looks up its first and last {kind} layer to place "
            f"the KV caches, so loading fails (ValueError: '{kind}' is not in list)",
            REFUSED, (), len(set(s.source.layer_types)) < 2,
        ) for kind in missing]
    return rule


def _source_breaks(s: _Slice, rule, *args) -> bool:
    """Whether the unsliced source breaks the same rule (every slice of it then does too)."""
    if s.new is s.source:
        return True
    return bool(rule(_Slice(s.source, None), *args))


_RULES = {
    "transformers": lambda s: [],
    "vllm": lambda s: _vllm_correct_scale(s) + _positional_producers(s, "vLLM"),
    "llama.cpp": lambda s: _llama_fixed(s) + _llama_kv(s) + _llama_sparsity(s) + _llama_width(s),
    "ollama": lambda s: _positional_producers(s, "Ollama"),
    "mlx-lm": _attention_types("mlx-lm"),
    "mlx-vlm": lambda s: _attention_types("mlx-vlm")(s) + _mlx_vlm_width(s),
}
