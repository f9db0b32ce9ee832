"""The optimisation report: what was fused (with measured error against its budget), what was
skipped and why, which convolution executor runs at which input shape, and which form (Winograd
tile, oneDNN direct, ferfuse's 1×1 GEMM) the tuned convolutions chose."""
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from .executors import FORM_NAMES, GEMM_ENGINE_NAMES, shape_key
from .patterns import Skip


@dataclass
class FusedEntry:
    pattern: str
    modules: list[str]
    backend: str
    abs_error: float | None = None  # max |fused − reference| on the verification inputs
    rel_error: float | None = None  # ‖fused − reference‖ / ‖reference‖ against a float64 reference
    baseline: float | None = None  # the same for the original path at the working precision (verify.original_error)
    budget: float | None = None  # k × baseline + floor (engine/verify.py)
    form: str | None = None  # the convolution form whose error came closest to its budget


@dataclass
class Report:
    model: str
    backend: str
    precision: str
    device: str
    executors: tuple[str, ...] = ("aten",)  # the convolution executors that may run (engine/executors.py)
    # (input shape, threads) -> executor, filled by first calls (executors.shape_key)
    executor_by_shape: dict = field(default_factory=dict)
    executor_timings: dict = field(default_factory=dict)  # (input shape, threads) -> {executor: ms}
    executor_retimed: dict = field(default_factory=dict)  # (input shape, threads) -> why it was timed again
    fused: list[FusedEntry] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    reverted: list[tuple[FusedEntry, str]] = field(default_factory=list)
    verified: bool = False
    example_shape: tuple | None = None
    example_source: str | None = None  # "random inputs ..." or "the caller's example_inputs"
    verified_forms: tuple[str, ...] = ()
    logits_abs_error: float | None = None
    logits_rel_error: float | None = None  # the worst over verified_forms
    logits_form: str | None = None
    logits_baseline: float | None = None  # the original model's own logits error
    logits_budget: float | None = None
    top1_agreement: float | None = None
    notes: list[str] = field(default_factory=list)
    # () -> the fused units' folded convolutions (executors.ConvRunner), read live for the tally of
    # the forms their first calls chose
    conv_runners: Callable[[], list] | None = field(default=None, repr=False)
    # () -> each fused unit's own tally of how it ran (FusedUnit.tally: MBConv blocks as one C call)
    unit_tallies: Callable[[], list] | None = field(default=None, repr=False)
    # () -> notes on how the units run now (a unit whose modules were replaced after optimize())
    live_notes: Callable[[], list] | None = field(default=None, repr=False)

    def form_tally(self) -> dict[str, Counter]:
        """{"3×3 convolutions": Counter(form name: convs), "1×1 convolutions": ..., "depthwise
        convolutions": ..., "Winograd GEMMs": Counter(engine name: convs)}: the forms tuned
        convolutions run as, and the engine of their Winograd tiles' GEMMs, one count per
        convolution and input shape, so far; and "MBConv blocks": Counter(one C call / four calls),
        one count per block and input shape."""
        tally: dict[str, Counter] = {}
        for runner in self.conv_runners() if self.conv_runners else []:
            kind = "1×1 convolutions" if runner.pointwise_eligible else \
                "depthwise convolutions" if runner.depthwise_eligible else "3×3 convolutions"
            for form in runner.chosen.values():
                tally.setdefault(kind, Counter())[FORM_NAMES[form]] += 1
            for engine in runner.winograd_engines():
                tally.setdefault("Winograd GEMMs", Counter())[GEMM_ENGINE_NAMES[engine]] += 1
        for unit_tally in self.unit_tallies() if self.unit_tallies else []:
            for kind, counts in unit_tally.items():
                tally.setdefault(kind, Counter()).update(counts)
        return tally

    def patterns(self) -> dict[str, list[FusedEntry]]:
        groups: dict[str, list[FusedEntry]] = {}
        for entry in self.fused:
            groups.setdefault(entry.pattern, []).append(entry)
        return groups

    def executor_for(self, shape: tuple) -> str | None:
        """The executor chosen for inputs of `shape` at this thread count (None before the first
        call of that shape)."""
        return self.executor_by_shape.get(shape_key(shape)) or (self.executors[0] if len(self.executors) == 1 else None)

    def __str__(self) -> str:
        lines = [f"ferfuse report: {self.model} on {self.device}, backend {self.backend}, precision {self.precision}, "
                 f"convolutions on {' or '.join(self.executors)}"]
        lines.append(f"fused ({len(self.fused)} units):")
        for pattern, entries in self.patterns().items():
            checked = [e for e in entries if e.rel_error is not None]
            err = ""
            if checked:  # the unit closest to its budget speaks for the pattern
                e = max(checked, key=lambda e: e.rel_error / e.budget)
                err = f"  fused {e.rel_error:.1e}, original {e.baseline:.1e}, budget {e.budget:.1e}"
            if len(entries) == 1:
                lines.append(f"  {pattern:<14} {', '.join(entries[0].modules)}{err}")
            else:
                first, last = entries[0].modules[0], entries[-1].modules[0]
                lines.append(f"  {pattern:<14} {len(entries)} units ({first} ... {last}){err}")
        if self.skipped:
            lines.append(f"skipped ({len(self.skipped)}):")
            lines += [f"  {s.pattern:<14} {s.module}: {s.reason}" for s in self.skipped]
        for entry, why in self.reverted:
            lines.append(f"reverted: {entry.pattern} {', '.join(entry.modules)}: {why}")
        if self.verified:
            lines.append(f"verified on {self.example_source} {self.example_shape} against a float64 reference, "
                         f"convolutions as {', '.join(self.verified_forms)} (original: the worse of its NCHW "
                         "and channels_last runs):")
            lines.append(f"  logits: fused {self.logits_rel_error:.1e} (max abs {self.logits_abs_error:.1e}), "
                         f"original {self.logits_baseline:.1e}, budget {self.logits_budget:.1e}; "
                         f"top-1 agreement {100 * self.top1_agreement:.1f}%")
        else:
            lines.append("not verified (verify=False)")
        if len(self.executors) > 1:
            lines.append("convolution executor per input shape (the batch rounded up to a power of two) and thread count, "
                         "timed on its first call:")
            if not self.executor_by_shape:
                lines.append("  none yet: each new input shape is timed on its first call")
            for key, chosen in list(self.executor_by_shape.items()):
                times = self.executor_timings.get(key, {})
                shape, threads = key
                lines.append(f"  {shape} at {threads} thread{'s' * (threads > 1)}: {chosen}"
                             + (" (" + ", ".join(f"{k} {v:.1f} ms" for k, v in times.items()) + ")" if times else ""))
                if key in self.executor_retimed:
                    lines.append(f"    {self.executor_retimed[key]}")
        for kind, counts in self.form_tally().items():
            per = "block" if kind == "MBConv blocks" else "conv"
            lines.append(f"tuned {kind} (winograd executor), per {per} and input shape: "
                         + ", ".join(f"{name} {n}" for name, n in counts.most_common()))
        lines += [f"note: {n}" for n in self.notes + (self.live_notes() if self.live_notes else [])]
        return "\n".join(lines)
