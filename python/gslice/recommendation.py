"""Which preset fits a RAM budget: the largest (by effective parameters) whose estimated
inference RAM is within the budget, and the next larger one that is not, with the excess.
With a runtime, only the presets that runtime computes correctly are considered."""

from __future__ import annotations

import os
from dataclasses import dataclass

from .accounting import DEFAULT_CONTEXT, SCHEMES, SizePlan, plan
from .catalogue import MODALITIES, presets
from .arguments import bool_arg
from .errors import NothingFitsError, SpecError
from .runtimes import NAMES
from .units import fmt_bytes, parse_size


@dataclass(frozen=True)
class Recommendation:
    budget_bytes: int
    context: int
    modalities: str
    quant: str
    ple_on_disk: bool  # whether the PLE table is assumed memory-mapped (not counted)
    best: SizePlan | None  # None when nothing fits
    runner_up: SizePlan | None  # the next larger preset, which does not fit (None if best is the largest)
    candidates: tuple[SizePlan, ...]  # every preset considered, largest effective first
    runtime: str | None = None  # only presets this runtime computes correctly were considered

    def needed_bytes(self, p: SizePlan) -> int:
        f = p.footprint(self.quant)
        return f.ram_ple_on_disk_bytes if self.ple_on_disk else f.ram_bytes

    @property
    def runner_up_excess_bytes(self) -> int | None:
        return None if self.runner_up is None else self.needed_bytes(self.runner_up) - self.budget_bytes

    def to_dict(self) -> dict:
        def entry(p: SizePlan | None):
            if p is None:
                return None
            return {"preset": p.preset, "effective": p.params.effective, "needed_bytes": self.needed_bytes(p), "plan": p.to_dict()}

        return {
            "budget_bytes": self.budget_bytes,
            "context": self.context,
            "modalities": self.modalities,
            "quant": self.quant,
            "ple_on_disk": self.ple_on_disk,
            "runtime": self.runtime,
            "best": entry(self.best),
            "runner_up": entry(self.runner_up),
            "runner_up_excess_bytes": self.runner_up_excess_bytes,
            "candidates": [{"preset": p.preset, "effective": p.params.effective, "needed_bytes": self.needed_bytes(p)} for p in self.candidates],
        }


def recommend(
    ram: int | str,
    *,
    context: int = DEFAULT_CONTEXT,
    modalities: str = "all",
    quant: str = "bf16",
    ple_on_disk: bool = False,
    source: str | os.PathLike | dict | None = None,
    from_hub: bool = False,
    runtime: str | None = None,
) -> Recommendation:
    """The best preset for ``ram`` (bytes, or a size such as '4GB') on ``source`` (E4B when None),
    among those ``runtime`` (one of runtimes.NAMES, or None for any) computes correctly."""
    budget = parse_size(ram, "--ram") if isinstance(ram, str) else ram
    if not isinstance(budget, int) or isinstance(budget, bool) or budget <= 0:
        raise SpecError(f"--ram: {ram!r} must be a positive size")
    bool_arg(ple_on_disk, "ple_on_disk")
    if not isinstance(quant, str) or quant not in SCHEMES:
        raise SpecError(f"--quant: {quant!r} is not one of {', '.join(SCHEMES)}")
    if not isinstance(modalities, str) or modalities not in MODALITIES:
        raise SpecError(f"--modalities: {modalities!r} is not one of {', '.join(MODALITIES)}")
    if runtime is not None and runtime not in NAMES:
        raise SpecError(f"--runtime: {runtime!r} is not one of {', '.join(NAMES)}")
    plans = [plan(source, preset=p, modalities=modalities, context=context) for p in presets(from_hub)]
    plans = [p for p in plans if runtime is None or p.runtimes[runtime].ok]
    if not plans:
        raise NothingFitsError(f"--runtime {runtime}: it computes none of the presets correctly on this source")
    plans.sort(key=lambda p: (-p.params.effective, p.preset))
    rec = Recommendation(budget, context, modalities, quant, ple_on_disk, None, None, tuple(plans), runtime)
    fitting = [p for p in plans if rec.needed_bytes(p) <= budget]
    if not fitting:
        smallest = min(plans, key=lambda p: (rec.needed_bytes(p), p.preset))
        return Recommendation(budget, context, modalities, quant, ple_on_disk, None, smallest, tuple(plans), runtime)
    best = fitting[0]
    larger = [p for p in plans if p.params.effective > best.params.effective]
    runner_up = larger[-1] if larger else None
    return Recommendation(budget, context, modalities, quant, ple_on_disk, best, runner_up, tuple(plans), runtime)


def nothing_fits(rec: Recommendation) -> NothingFitsError:
    p = rec.runner_up
    return NothingFitsError(
        f"no preset fits --ram {fmt_bytes(rec.budget_bytes)} ({rec.modalities}, {rec.quant}, context {rec.context}"
        f"{', PLE on disk' if rec.ple_on_disk else ''}{f', runtime {rec.runtime}' if rec.runtime else ''}): "
        f"the smallest{f' that {rec.runtime} computes correctly' if rec.runtime else ''}, {p.preset}, needs "
        f"{fmt_bytes(rec.needed_bytes(p))} ({fmt_bytes(rec.runner_up_excess_bytes)} more)"
    )
