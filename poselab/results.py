"""What an experiment returns: its measurements and the paper's claims checked against them.

A chapter prints its "Paper vs this book" table from :class:`Results.claims`; nothing in
that table is typed by hand.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


STATUSES = ("holds", "fails", "within_noise", "not_testable", "undecided")
"""What a measurement decides about a claim. ``within_noise``: the measured difference is smaller than
the run-to-run spread measured for it; ``not_testable``: a precondition failed (e.g. the base model is
below its competence bar), the note says which; ``undecided``: the measurement cannot decide."""

_STATUS_OF_HOLDS = {True: "holds", False: "fails", None: "undecided"}


@dataclass
class Claim:
    """One claim of a paper, checked on our data.

    Attributes:
        id: short stable identifier (``"gap"``).
        claim: the claim in words.
        paper: the paper's figure or statement (text: papers report in their own units).
        measured: our figure (text, with units).
        holds: ``True``/``False``, the claim's predicate on the measurement; ``None`` when it
            cannot be evaluated.
        note: for a claim that does not hold here (or is not decided), the likely reason (computed
            from the measurements where possible); empty otherwise.
        status: one of :data:`STATUSES`; by default the one ``holds`` gives (``holds``, ``fails``,
            ``undecided``). ``within_noise`` and ``not_testable`` keep the predicate in ``holds``
            and need a ``note``.
    """

    id: str
    claim: str
    paper: str
    measured: str
    holds: bool | None
    note: str = ""
    status: str = ""

    def __post_init__(self) -> None:
        if self.holds is not None and not isinstance(self.holds, bool):
            raise TypeError(f"Claim {self.id!r}: holds must be True, False or None, got {self.holds!r}")
        if not self.status:
            self.status = _STATUS_OF_HOLDS[self.holds]
        if self.status not in STATUSES:
            raise ValueError(f"Claim {self.id!r}: unknown status {self.status!r}; expected one of {STATUSES}")
        if self.status in _STATUS_OF_HOLDS.values() and self.status != _STATUS_OF_HOLDS[self.holds]:
            raise ValueError(f"Claim {self.id!r}: status {self.status!r} contradicts holds={self.holds!r}")
        if self.status in ("within_noise", "not_testable") and not self.note:
            raise ValueError(f"Claim {self.id!r}: status {self.status!r} needs a note saying why")


def _jsonable(value: Any) -> Any:
    """Turn tensors/NumPy scalars into plain JSON values; non-finite floats become None."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


@dataclass
class Results:
    """Measurements of one experiment run.

    ``metrics`` holds plain numbers (JSON-serialisable); ``artifacts`` holds objects the
    chapter plots (histories, trained models, arrays) and is not serialised.
    """

    experiment: str
    profile: str
    device: str
    seed: int
    seconds: float
    metrics: dict[str, Any]
    claims: list[Claim]
    artifacts: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document written by ``python -m poselab reproduce``."""
        return {
            "experiment": self.experiment,
            "profile": self.profile,
            "device": self.device,
            "seed": self.seed,
            "seconds": round(self.seconds, 3),
            "metrics": _jsonable(self.metrics),
            "claims": [asdict(c) for c in self.claims],
        }

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON to ``path`` (parent folders are created), atomically.

        The document goes to a temporary file in the same folder, is flushed to disk and then
        renamed over ``path``: an interrupted or failed save leaves the previous file (or none)
        in place, never a truncated one.
        """
        path = Path(path)
        if path.is_dir():
            raise IsADirectoryError(f"Results.save: {str(path)!r} is a folder; expected a file name such as "
                                    f"{str(path / 'results.json')!r}")
        text = json.dumps(self.to_dict(), indent=2) + "\n"  # fails here, before any file is touched
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # the permissions a plain open() would give, not mkstemp's 0600
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def claims_rows(self) -> list[list[str]]:
        """Rows ``[claim, paper, ours, status, note]`` (status in words: ``holds``, ``within noise``...)."""
        return [[c.claim, c.paper, c.measured, c.status.replace("_", " "), c.note] for c in self.claims]

    def claims_table(self) -> str:
        """The claims as a plain-text table (for terminals and logs)."""
        header = ["claim", "paper", "ours", "status", "likely reason if not"]
        rows = [header] + self.claims_rows()
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        line = lambda r: "  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip()  # noqa: E731
        return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows[1:]])

    def claims_markdown(self) -> str:
        """The claims as a Markdown table (what the chapters display)."""
        esc = lambda s: s.replace("|", "\\|")  # noqa: E731
        out = ["| claim | paper | ours | status | likely reason if not |", "|---|---|---|---|---|"]
        out += ["| " + " | ".join(esc(c) for c in row) + " |" for row in self.claims_rows()]
        return "\n".join(out)

    def outline(self) -> str:
        """What the run checked, without any measured value: experiment, profile, claim ids.

        The same on every machine (no number in it comes out of training), so the chapters
        print it in a cell that nbval compares.
        """
        ids = ", ".join(c.id for c in self.claims)
        return f"{self.experiment} at profile {self.profile}: {len(self.claims)} claims checked ({ids})"

    def summary(self) -> str:
        """A readable report: header, metrics, claims table."""
        head = (f"{self.experiment}  profile={self.profile}  device={self.device}  "
                f"seed={self.seed}  {self.seconds:.1f} s")
        metric_lines = [f"  {k}: {_fmt(v)}" for k, v in self.metrics.items()]
        return "\n".join([head, "metrics:", *metric_lines, "claims:", self.claims_table()])


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) + "}"
    return str(value)
