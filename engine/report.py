"""The optimisation report: what was fused (with measured error), what was skipped and why."""
from dataclasses import dataclass, field

from .patterns import Skip


@dataclass
class FusedEntry:
    pattern: str
    modules: list[str]
    backend: str
    abs_error: float | None = None  # max |fused − reference| on the verification inputs
    rel_error: float | None = None  # ‖fused − reference‖ / ‖reference‖ against a float64 reference


@dataclass
class Report:
    model: str
    backend: str
    precision: str
    device: str
    executor: str = "aten"  # how folded convolutions run (engine/executors.py)
    fused: list[FusedEntry] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    reverted: list[tuple[FusedEntry, str]] = field(default_factory=list)
    verified: bool = False
    example_shape: tuple | None = None
    logits_abs_error: float | None = None
    logits_rel_error: float | None = None
    top1_agreement: float | None = None
    tolerance: tuple[float, float] | None = None  # (per fused op, logits), relative
    notes: list[str] = field(default_factory=list)

    def patterns(self) -> dict[str, list[FusedEntry]]:
        groups: dict[str, list[FusedEntry]] = {}
        for entry in self.fused:
            groups.setdefault(entry.pattern, []).append(entry)
        return groups

    def __str__(self) -> str:
        lines = [f"ferfuse report: {self.model} on {self.device}, backend {self.backend}, "
                 f"precision {self.precision}, convolutions on {self.executor}"]
        lines.append(f"fused ({len(self.fused)} units):")
        for pattern, entries in self.patterns().items():
            worst = max((e.rel_error for e in entries if e.rel_error is not None), default=None)
            err = f"  max rel err {worst:.2e}" if worst is not None else ""
            if len(entries) == 1:
                lines.append(f"  {pattern:<12} {', '.join(entries[0].modules)}{err}")
            else:
                first, last = entries[0].modules[0], entries[-1].modules[0]
                lines.append(f"  {pattern:<12} {len(entries)} units ({first} ... {last}){err}")
        if self.skipped:
            lines.append(f"skipped ({len(self.skipped)}):")
            lines += [f"  {s.pattern:<12} {s.module}: {s.reason}" for s in self.skipped]
        for entry, why in self.reverted:
            lines.append(f"reverted: {entry.pattern} {', '.join(entry.modules)}: {why}")
        if self.verified:
            op_tol, logit_tol = self.tolerance
            lines.append(f"verified on random inputs {self.example_shape} against a float64 reference:")
            lines.append(f"  logits: max abs err {self.logits_abs_error:.2e}, rel err {self.logits_rel_error:.2e} "
                         f"(tolerance {logit_tol:.0e}; per fused op {op_tol:.0e}), "
                         f"top-1 agreement {100 * self.top1_agreement:.1f}%")
        else:
            lines.append("not verified (verify=False)")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)
