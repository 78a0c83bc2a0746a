"""Claim records and the report writers (table, Markdown, JSON) of ``manifoldmp reproduce``."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from manifoldmp.errors import ParameterError

__all__ = ["Claim", "Report"]

Relation = Literal["max", "min", "near"]


@dataclass(frozen=True)
class Claim:
    """One numerical claim of the derivation and what was measured.

    Attributes
    ----------
    section : int
        Claim group of the issue / THEORY.md (1 energy, 2 Euler schemes, 3 Casimir and frame
        bundle, 4 product manifold, 5 analytic truths, 6 equivariance).
    key : str
        Stable identifier, e.g. ``"energy.gradient"``.
    domain : str
        Mesh (or analytic domain) it was measured on.
    claim : str
        What is claimed, in words.
    formula : str
        The quantity measured, as a formula.
    measured : float
        The measured value.
    tolerance : float
        Bound on ``measured`` (``relation="max"``: ``measured <= tolerance``; ``"min"``:
        ``measured >= tolerance``; ``"near"``: ``|measured - target| <= tolerance``).
    relation : {"max", "min", "near"}
    target : float, optional
        Expected value for ``relation="near"``.
    details : dict
        Further measured numbers (JSON-serializable).
    """

    section: int
    key: str
    domain: str
    claim: str
    formula: str
    measured: float
    tolerance: float
    relation: Relation = "max"
    target: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.relation not in ("max", "min", "near"):
            raise ParameterError(f"relation must be 'max', 'min' or 'near', got {self.relation!r}")
        if self.relation == "near" and self.target is None:
            raise ParameterError("relation 'near' needs a target value")
        if not (isinstance(self.tolerance, (int, float)) and math.isfinite(self.tolerance)
                and self.tolerance >= 0):
            raise ParameterError(f"tolerance must be a finite number >= 0, got {self.tolerance!r}")

    @property
    def passed(self) -> bool:
        """Whether the measured value satisfies the tolerance (NaN never passes)."""
        m = self.measured
        if not math.isfinite(m):
            return False
        if self.relation == "max":
            return m <= self.tolerance
        if self.relation == "min":
            return m >= self.tolerance
        return self.target is not None and abs(m - self.target) <= self.tolerance

    @property
    def bound(self) -> str:
        """The tolerance as text (``<= 1e-12``, ``>= 1e3``, ``2 +- 0.3``)."""
        if self.relation == "max":
            return f"<= {self.tolerance:.3g}"
        if self.relation == "min":
            return f">= {self.tolerance:.3g}"
        return f"{self.target:.4g} +- {self.tolerance:.3g}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary with ``passed`` added."""
        d = asdict(self)
        d["passed"] = bool(self.passed)
        d["measured"] = _json_float(self.measured)
        return d


def _jsonable(x: Any) -> Any:
    """JSON form of numpy scalars and arrays inside ``details``."""
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"not JSON-serializable: {type(x).__name__}")


def _json_float(x: float) -> float | str:
    return x if math.isfinite(x) else str(x)


@dataclass
class Report:
    """All claims of one run, with the figures written and the run's settings."""

    claims: list[Claim]
    meshes: list[str]
    quick: bool
    figures: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    version: str = ""

    @property
    def passed(self) -> bool:
        """Whether every claim passed."""
        return all(c.passed for c in self.claims)

    def failures(self) -> list[Claim]:
        """The claims that did not pass."""
        return [c for c in self.claims if not c.passed]

    def get(self, key: str, domain: str | None = None) -> Claim:
        """The claim ``key`` (on ``domain`` when several meshes measured it).

        Raises
        ------
        KeyError
            When no such claim was measured.
        """
        for c in self.claims:
            if c.key == key and (domain is None or c.domain == domain):
                return c
        raise KeyError(f"no claim {key!r}" + (f" on {domain!r}" if domain else ""))

    def table(self) -> str:
        """Fixed-width text table: claim, domain, formula, measured, tolerance, pass/fail."""
        rows = [("#", "claim", "domain", "formula", "measured", "tolerance", "result")]
        for c in self.claims:
            rows.append((str(c.section), c.key, c.domain, c.formula, f"{c.measured:.3g}",
                         c.bound, "pass" if c.passed else "FAIL"))
        widths = [min(max(len(r[i]) for r in rows), 60) for i in range(len(rows[0]))]
        lines = []
        for k, r in enumerate(rows):
            cells = [(v if len(v) <= widths[i] else v[: widths[i] - 1] + "~").ljust(widths[i])
                     for i, v in enumerate(r)]
            lines.append("  ".join(cells).rstrip())
            if k == 0:
                lines.append("  ".join("-" * w for w in widths))
        n_ok = sum(c.passed for c in self.claims)
        lines.append(f"{n_ok}/{len(self.claims)} claims pass ({self.seconds:.0f} s, "
                     f"{'quick' if self.quick else 'full'} mode)")
        return "\n".join(lines)

    def markdown(self) -> str:
        """The report as Markdown: summary, the claims table, and the figures."""
        out = [f"# manifoldmp {self.version} reproduction report", "",
               f"Meshes: {', '.join(self.meshes)}; mode: {'quick' if self.quick else 'full'}; "
               f"{sum(c.passed for c in self.claims)}/{len(self.claims)} claims pass "
               f"in {self.seconds:.0f} s.", "",
               "| # | claim | domain | formula | measured | tolerance | result |",
               "|---|---|---|---|---|---|---|"]
        for c in self.claims:
            out.append(f"| {c.section} | {c.key}: {c.claim} | {c.domain} | `{c.formula}` | "
                       f"{c.measured:.3g} | {c.bound} | {'pass' if c.passed else '**FAIL**'} |")
        if self.figures:
            out += ["", "## Figures", ""]
            for name, path in self.figures.items():
                out += [f"### {name}", "", f"![{name}]({path})", ""]
        return "\n".join(out) + "\n"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary: settings, ``passed`` and one entry per claim."""
        return {"version": self.version, "meshes": self.meshes, "quick": self.quick,
                "seconds": self.seconds, "passed": self.passed, "figures": self.figures,
                "claims": [c.to_dict() for c in self.claims]}

    def write(self, out: Path) -> None:
        """Write ``report.md`` and ``report.json`` into ``out`` (figures are written earlier)."""
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.md").write_text(self.markdown())
        (out / "report.json").write_text(json.dumps(self.to_dict(), indent=1, default=_jsonable))
