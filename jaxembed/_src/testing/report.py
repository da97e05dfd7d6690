"""The report of a port comparison: one row per tensor per stage, as a terminal table, as JSON,
and as an AssertionError for pytest."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from typing import Any

from jaxembed._src.testing.compare import Criterion, Verdict


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces, a rule under the header."""
    rows = [tuple(map(str, header))] + [tuple(map(str, r)) for r in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def json_safe(value: Any) -> Any:
    """NaN and infinities as None (JSON has neither), recursively; tuples as lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _ulp(ulp: int | None) -> str:
    # Elementwise ulp distances are meaningful near bit-exactness; an element near zero can be
    # millions of ulp off while the tensor agrees to its last bits at its own scale.
    if ulp is None:
        return "-"
    return str(ulp) if ulp <= 1024 else ">1k"


def _g(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"


@dataclasses.dataclass(frozen=True)
class Row:
    """One tensor at one stage.

    ``stage``: ``"weights"``, ``"forward"``, ``"gradients"`` or ``"step k"``. ``name``: the torch
    name (a module for its output, ``output...`` for the model's outputs, a ``state_dict`` key
    for a parameter, ``loss``). ``jax_name``: where it lives in the JAX model.
    """

    stage: str
    name: str
    jax_name: str
    shape: tuple
    dtype: str
    verdict: Verdict

    @property
    def passed(self) -> bool:
        return self.verdict.passed

    def cells(self) -> tuple:
        v = self.verdict
        result = v.result + (" (fallback)" if v.method == "fallback" else "")
        result += f" ({v.note})" if v.note and v.passed else f": {v.note}" if v.note else ""
        return (
            self.stage,
            self.name,
            "x".join(map(str, self.shape)) or "()",
            _g(v.max_abs_diff),
            _g(v.jax_error),
            _g(v.torch_error),
            _g(v.jax_own_error),
            _g(v.bound),
            _g(v.f64_gap),
            _ulp(v.ulp),
            result,
        )


HEADER = (
    "stage",
    "tensor",
    "shape",
    "max|jax-torch|",
    "jax err",
    "torch err",
    "jax own",
    "bound",
    "f64 gap",
    "max ulp",
    "result",
)


@dataclasses.dataclass
class Report:
    """What :func:`jaxembed.testing.compare` found.

    ``rows`` are in stage order (weights, forward, gradients, step 1..K); within the forward
    stage in torch's execution order (a module's row when it returns), then the model's
    outputs; parameters in ``state_dict`` order. ``reference``: ``"float64"``, or why the
    fallback bound was used. ``timings``: seconds per run (``"torch float32"``, ``"torch
    float64"``, ``"jax float32"``, ``"jax float64"``).
    """

    title: str
    rows: list[Row]
    criterion: Criterion
    reference: str
    mapping: str
    timings: dict[str, float]
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows) and bool(self.rows)

    @property
    def failures(self) -> list[Row]:
        return [r for r in self.rows if not r.passed]

    @property
    def first_failure(self) -> Row | None:
        """The first failing row: the earliest stage, and in it the first tensor (the first
        module to return a wrong output, the first parameter in ``state_dict`` order)."""
        return next((r for r in self.rows if not r.passed), None)

    @property
    def stages(self) -> list[str]:
        return list(dict.fromkeys(r.stage for r in self.rows))

    def row(self, stage: str, name: str) -> Row:
        for r in self.rows:
            if r.stage == stage and r.name == name:
                return r
        raise KeyError(f"no row {name!r} at stage {stage!r}")

    def verdict_line(self) -> str:
        bit_exact = sum(r.verdict.result == "bit-exact" for r in self.rows)
        if not self.rows:
            return "FAIL: nothing was compared"
        if self.passed:
            return (
                f"PASS: {len(self.rows)} tensors over {len(self.stages)} stages "
                f"({', '.join(self.stages)}), {bit_exact} bit-exact"
            )
        first = self.first_failure
        assert first is not None  # not passed: a row failed
        v = first.verdict
        if v.note and v.jax_error is None and v.method != "fallback":
            why = v.note
        elif v.method == "fallback":
            why = f"max|jax-torch| {_g(v.max_abs_diff)} > bound {_g(v.bound)} (no float64)"
        else:
            why = (
                f"jax err {_g(v.jax_error)} > bound {_g(v.bound)} (torch err "
                f"{_g(v.torch_error)}"
                + (
                    ""
                    if v.jax_own_error is None
                    else f", jax own {_g(v.jax_own_error)}, f64 gap {_g(v.f64_gap)}"
                )
                + ")"
            )
        stages = [s for s in self.stages if any(r.stage == s and not r.passed for r in self.rows)]
        return (
            f"FAIL: first failure at stage {first.stage!r}, tensor {first.name!r} "
            f"(JAX {first.jax_name}): {why}; {len(self.failures)} of {len(self.rows)} "
            f"tensors fail, in stages {', '.join(stages)}"
        )

    def table(self, rows: str = "auto", limit: int = 40) -> str:
        """The table. ``rows``: ``"all"``; ``"failing"``; ``"auto"`` (every row when there are at
        most ``limit``, else per stage the failing rows, the closest-to-failing passing row and
        a count of the rest)."""
        if rows not in ("all", "failing", "auto"):
            raise ValueError(f"rows must be 'all', 'failing' or 'auto', got {rows!r}")
        if rows == "all" or (rows == "auto" and len(self.rows) <= limit):
            return format_table(HEADER, [r.cells() for r in self.rows])
        shown, hidden = [], {}
        for stage in self.stages:
            in_stage = [r for r in self.rows if r.stage == stage]
            keep = [r for r in in_stage if not r.passed]
            passing = [r for r in in_stage if r.passed]
            if rows == "auto" and passing:
                keep.append(max(passing, key=_closeness))
            keep = keep[:limit]
            shown += sorted(keep, key=in_stage.index)
            hidden[stage] = len(in_stage) - len(keep)
        text = format_table(HEADER, [r.cells() for r in shown])
        more = ", ".join(f"{n} at {s}" for s, n in hidden.items() if n)
        if more:
            text += f"\n(not shown: {more}; report.table('all') lists every row)"
        return text

    def __str__(self) -> str:
        lines = [
            self.title,
            f"criterion: {self.criterion.describe()}; reference: {self.reference}",
            f"parameters: {self.mapping}",
        ]
        lines += [f"note: {n}" for n in self.notes]
        lines += [self.table(), self.verdict_line()]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return json_safe(
            {
                "title": self.title,
                "passed": self.passed,
                "verdict": self.verdict_line(),
                "criterion": dataclasses.asdict(self.criterion),
                "reference": self.reference,
                "parameters": self.mapping,
                "notes": self.notes,
                "timings_s": self.timings,
                "first_failure": None
                if self.first_failure is None
                else {"stage": self.first_failure.stage, "tensor": self.first_failure.name},
                "rows": [
                    {
                        "stage": r.stage,
                        "tensor": r.name,
                        "jax": r.jax_name,
                        "shape": list(r.shape),
                        "dtype": r.dtype,
                        **dataclasses.asdict(r.verdict),
                    }
                    for r in self.rows
                ],
            }
        )

    def to_json(self, path=None, indent: int = 2) -> str:
        """The report as JSON (NaN as null); also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            with open(path, "w") as f:
                f.write(text + "\n")
        return text

    def assert_passed(self) -> Report:
        """Raises AssertionError with the verdict and the table when a tensor fails."""
        if not self.passed:
            raise AssertionError(
                "\n".join([self.verdict_line(), self.table("auto"), self.verdict_line()])
            )
        return self


def _closeness(row: Row) -> float:
    v = row.verdict
    got = v.max_abs_diff if v.method == "fallback" else (v.jax_error or 0.0)
    return got / v.bound if v.bound else 0.0
