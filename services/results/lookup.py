"""Reading an export back: the constant for an optimizer x reduction (x schedule), the LR at
any batch size from its answer, and what backs that LR there (``samplewise lr`` prints them)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

import yaml

from search_spaces.scaling import lr_for
from services.errors import ExportError
from services.results.laws import LawFit


def law_from_doc(doc: dict[str, Any]) -> LawFit:
    """The law of an export's ``answer`` (or ``laws`` entry), to evaluate at any batch size."""
    return LawFit(
        doc["name"],
        dict(doc["params"]),
        {k: tuple(v) for k, v in doc.get("intervals", {}).items()},
        float(doc.get("shift", 0.0)),
        tuple(doc.get("batch_sizes", ())),
        float(doc.get("chi2", 0.0)),
        tuple(tuple(d) for d in doc.get("draws", ())),
        tuple((math.log(b), float(r)) for b, r in doc.get("residuals", ())),
    )


def read_export(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ExportError(f"{path}: cannot read export ({err.strerror or err})") from None
    try:  # JSON by its own parser: PyYAML reads JSON's 2e-05 as a string
        doc = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError):
        raise ExportError(f"{path}: not a samplewise export (unparseable)") from None
    if not isinstance(doc, dict) or "constants" not in doc:
        raise ExportError(f"{path}: not a samplewise export (no constants)")
    return doc


def pick_constant(
    doc: dict[str, Any], optimizer: Optional[str], reduction: Optional[str], schedule: Optional[str] = None
) -> dict[str, Any]:
    usable = [c for c in doc["constants"] if c.get("lr_per_sample") is not None]
    if schedule is None and any(c.get("schedule", "constant") != "constant" for c in usable):
        schedule = "constant" if any(c.get("schedule", "constant") == "constant" for c in usable) else None
    matches = [
        c
        for c in usable
        if (optimizer is None or c["optimizer"] == optimizer)
        and (reduction is None or c["reduction"] == reduction)
        and (schedule is None or c.get("schedule", "constant") == schedule)
    ]
    choices = (
        ", ".join(
            f"{c['optimizer']}/{c['reduction']}"
            + (f"/{c['schedule']}" if c.get("schedule", "constant") != "constant" else "")
            for c in usable
        )
        or "none"
    )
    if not matches:
        raise ExportError(
            f"--optimizer/--reduction: no constant for {optimizer or '*'}/{reduction or '*'}; export has {choices}"
        )
    if len(matches) > 1:
        raise ExportError(f"--optimizer/--reduction: ambiguous, export has {choices}; pick one")
    return matches[0]


def lr_lookup(
    doc: dict[str, Any],
    batch_size: int,
    optimizer: Optional[str] = None,
    reduction: Optional[str] = None,
    schedule: Optional[str] = None,
) -> tuple[float, dict[str, Any], list[str]]:
    """(lr, the constant used, warnings) for ``batch_size`` (the starting LR of a schedule).

    The LR comes from the constant's ``answer``: the best-supported law over the batch sizes it
    was fitted on. Exports without one (version 1) give ``c * batch_size**k``.
    """
    if batch_size < 1:
        raise ExportError(f"--batch-size: must be >= 1, got {batch_size}")
    const = pick_constant(doc, optimizer, reduction, schedule)
    answer = const.get("answer")
    warnings = []
    if answer:
        lr = law_from_doc(answer).lr(batch_size)
        warnings += _range_warnings(const, batch_size)
        verdict = str(const.get("verdict", ""))
        if answer["source"] == "best trial":
            warnings.append(f"the rule was not checked ({verdict}); this is the best trial's constant")
    else:
        lr = lr_for(const["lr_per_sample"], const["k"], batch_size)
        swept = const.get("batch_sizes_swept") or []
        if swept and not (min(swept) <= batch_size <= max(swept)):
            warnings.append(
                f"batch size {batch_size} lies outside the swept range {min(swept)}..{max(swept)}; "
                "the rule was not checked there"
            )
    if not math.isfinite(lr):
        raise ExportError(f"{const['optimizer']}/{const['reduction']}: constant is not a finite number")
    return lr, const, warnings


def _octaves(batch_size: int, lo: int, hi: int) -> str:
    far = math.log2(lo / batch_size) if batch_size < lo else math.log2(batch_size / hi)
    return f"{far:.2g} octave{'s' if far > 1 else ''} {'below' if batch_size < lo else 'above'}"


def _range_warnings(const: dict[str, Any], batch_size: int) -> list[str]:
    """Outside the swept range: how far the answer extrapolates, and whether a transfer check
    covered it (inside that range the check's regret is the evidence, :func:`lr_notes`)."""
    answer = const["answer"]
    lo, hi = answer["batch_range"]
    if lo <= batch_size <= hi:
        return []
    transfer = const.get("transfer") or {}
    t_range = transfer.get("batch_range") or []
    where = f"batch size {batch_size} lies {_octaves(batch_size, lo, hi)} the swept {lo}..{hi}"
    if t_range and min(t_range[0], lo) <= batch_size <= max(t_range[1], hi):
        if str(transfer.get("verdict", "")).startswith("transfers"):
            return []  # covered by a check that passed: lr_notes quotes it
        return [f"{where}; the transfer check there says: {transfer['verdict']}"]
    covered = f", and beyond the {t_range[0]}..{t_range[1]} the transfer check covered" if t_range else ""
    return [f"{where}{covered}: this extrapolates the {answer['source']} formula, unchecked"]


def lr_notes(const: dict[str, Any], batch_size: int) -> list[str]:
    """What backs the LR at ``batch_size``: the transfer check nearest it and the formula's
    leave-one-batch-size-out error."""
    notes = []
    transfer = const.get("transfer") or {}
    checks = transfer.get("checks") or []
    if checks:
        c = min(checks, key=lambda c: (abs(math.log(c["batch_size"] / batch_size)), c["batch_size"]))
        regret = "diverged" if c["regret"] is None else f"{c['regret']:.1%}"
        lo, hi = ("-" if v is None else f"{v:.1%}" for v in c["regret_interval"])
        notes.append(
            f"transfer check at B = {c['batch_size']} (nearest): regret {regret} [{lo}, {hi}] against the best "
            f"LR of the bracket, {c['verdict']}; all checks: {transfer['verdict']}"
        )
    else:
        notes.append("no transfer check for this answer yet: make transfer SWEEP=<spec>")
    answer = const.get("answer") or {}
    if answer.get("loo_regret") is not None:
        notes.append(
            f"leave-one-batch-size-out: the formula fitted without a swept batch size costs {answer['loo_regret']:.1%} "
            f"val loss there on average (lr* off by {answer['loo_error']:.0%})"
        )
    return notes


class ExtrapolationWarning(UserWarning):
    """An LR asked for where the export's evidence does not reach (outside the swept batch sizes
    and the transfer check, or from a best trial rather than a checked law)."""


class Export:
    """An export read back, for a training script: ``Export(path).lr(batch_size=512, optimizer="sgd",
    reduction="mean")``. Each lookup warns (:class:`ExtrapolationWarning`) where ``samplewise lr``
    prints a warning, with the same text."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.doc = read_export(self.path)

    @property
    def sweep(self) -> str:
        return str(self.doc.get("sweep", self.path.stem))

    def constant(
        self, optimizer: Optional[str] = None, reduction: Optional[str] = None, schedule: Optional[str] = None
    ) -> dict[str, Any]:
        """The export's entry for one optimizer x reduction (x schedule): formula, verdicts, evidence."""
        return pick_constant(self.doc, optimizer, reduction, schedule)

    def lr(
        self,
        batch_size: int,
        optimizer: Optional[str] = None,
        reduction: Optional[str] = None,
        schedule: Optional[str] = None,
    ) -> float:
        """The learning rate at ``batch_size`` (the starting LR of a schedule), in the optimizer's own
        units for ``reduction`` (under ``sum``, SGD's LR is the mean-reduced one over B)."""
        import warnings

        value, _, notes = lr_lookup(self.doc, batch_size, optimizer, reduction, schedule)
        for note in notes:
            warnings.warn(note, ExtrapolationWarning, stacklevel=2)
        return value

    def settings(
        self,
        batch_size: int,
        optimizer: Optional[str] = None,
        reduction: Optional[str] = None,
        schedule: Optional[str] = None,
    ) -> dict[str, Any]:
        """Every optimizer setting at ``batch_size``: lr (as :meth:`lr`, warning alike), betas and
        eps (Adam), momentum, weight decay, warmup in samples, the decay timescale in epochs."""
        from services.results.settings import settings_at

        lr = self.lr(batch_size, optimizer, reduction, schedule)
        return settings_at(self.constant(optimizer, reduction, schedule), batch_size, lr)

    def evidence(
        self,
        batch_size: int,
        optimizer: Optional[str] = None,
        reduction: Optional[str] = None,
        schedule: Optional[str] = None,
    ) -> list[str]:
        """What backs the LR at ``batch_size``: the nearest transfer check, the leave-one-out regret."""
        return lr_notes(self.constant(optimizer, reduction, schedule), batch_size)

    def __repr__(self) -> str:
        return f"Export({str(self.path)!r}, sweep={self.sweep!r}, constants={len(self.doc['constants'])})"


def load_export(path: str | Path) -> Export:
    """Read ``exports/<sweep>.json`` (or ``.yaml``); a file that is not an export raises ExportError."""
    return Export(path)
