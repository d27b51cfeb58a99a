"""Every optimizer setting at any batch size, from an export: what the sweep's trials were given
(:func:`search_spaces.scaling.derive`, the one place the rules live) with the answered LR.

An export's constant carries ``settings``: the values the spec quoted at its reference batch
size, the rule that moves them, and the per-sample constants a reader can carry to another
setup (each beta's half-life in samples, eps * sqrt(B) under ``sde``, the decay timescale in
epochs), with the warmup in samples. :func:`settings_at` turns them into the optimizer's
settings at any B; ``samplewise lr`` prints them as one line or as JSON.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

from search_spaces import adam
from search_spaces.scaling import ADAPTIVE, RULE_EXPONENT, derive

__all__ = ["settings_at", "settings_doc", "settings_line"]


def _derive(s: Mapping[str, Any], optimizer: str, reduction: str, batch_size: int):
    return derive(
        batch_size=batch_size,
        reduction=reduction,
        optimizer=optimizer,
        lr_per_sample=1.0,  # the LR comes from the answer; everything else does not depend on c
        rule=s["rule"],
        weight_decay=s["weight_decay"],
        decoupled_decay=s["decoupled_decay"],
        momentum=s.get("momentum", 0.9),
        eps=s["eps"],
        betas=tuple(s.get("betas", (0.9, 0.999))),
        reference_batch_size=s["reference_batch_size"],
        decay_tie=s.get("decay_tie", "fixed"),
    )


def settings_doc(
    optimizer: str,
    reduction: str,
    rule: str,
    space: Mapping[str, Any],
    n_train: Optional[int],
    warmup_samples: int,
    lr_at_reference: Optional[float],
) -> dict[str, Any]:
    """The ``settings`` of a constant: ``space`` holds the spec's betas, eps, weight decay (value,
    mode, tie), momentum and reference batch size; ``lr_at_reference`` is the answered optimizer
    LR there (for the decay timescale)."""
    ref = int(space["reference_batch_size"])
    s: dict[str, Any] = {
        "rule": rule,
        "reference_batch_size": ref,
        "betas": list(space["betas"]),
        "eps": float(space["eps"]),
        "weight_decay": float(space["weight_decay"]),
        "decoupled_decay": bool(space["decoupled_decay"]) or optimizer == "adamw",
        "decay_tie": space["decay_tie"],
        "momentum": float(space["momentum"]),
        "warmup_samples": int(warmup_samples),
        "n_train": n_train,
    }
    at_ref = _derive(s, optimizer, "mean", ref)
    per: dict[str, Any] = {}
    if optimizer in ADAPTIVE:
        for name in ("beta1", "beta2"):
            beta = getattr(at_ref, name)
            per[f"{name}_halflife_samples"] = adam.halflife_samples(beta, ref)
            per[f"{name}_halflife_fixed"] = rule == "sde" or (rule == "sqrt_halflife" and name == "beta2")
        per["eps_times_sqrt_batch" if rule == "sde" else "eps"] = at_ref.eps * (math.sqrt(ref) if rule == "sde" else 1)
    if s["weight_decay"] and s["decoupled_decay"] and lr_at_reference and n_train:
        per["decay_timescale_epochs"] = adam.decay_timescale_epochs(ref, lr_at_reference, at_ref.weight_decay, n_train)
        per["decay_timescale_fixed"] = s["decay_tie"] == "timescale" and RULE_EXPONENT[rule] > 0
    s["per_sample"] = per
    s["formulas"] = _formulas(s, optimizer, reduction)
    return s


def _formulas(s: Mapping[str, Any], optimizer: str, reduction: str) -> dict[str, str]:
    ref = s["reference_batch_size"]
    at_ref = _derive(s, optimizer, reduction, ref)
    out = {}
    if optimizer in ADAPTIVE:
        b1, b2 = at_ref.beta1, at_ref.beta2
        if s["rule"] == "sde":
            out["beta1"] = f"beta1 = max(0, 1 - {1 - b1:.6g} * batch_size / {ref})"
            out["beta2"] = f"beta2 = max(0, 1 - {1 - b2:.6g} * batch_size / {ref})"
        else:
            out["beta1"] = f"beta1 = {b1:g}"
            out["beta2"] = (
                f"beta2 = {b2:g} ** (batch_size / {ref})" if s["rule"] == "sqrt_halflife" else f"beta2 = {b2:g}"
            )
        eps = at_ref.eps
        tied_sum = reduction == "sum" and s["rule"] != "none"
        base = eps / ref if tied_sum else eps
        out["eps"] = (
            f"eps = {base * math.sqrt(ref):.6g}" + (" * batch_size" if tied_sum else "") + " / sqrt(batch_size)"
            if s["rule"] == "sde"
            else f"eps = {base:.6g}" + (" * batch_size" if tied_sum else "")
        )
    if s["weight_decay"]:
        wd = at_ref.weight_decay
        power = math.log(_derive(s, optimizer, reduction, 2 * ref).weight_decay / wd, 2) if wd else 0.0
        out["weight_decay"] = f"weight_decay = {wd:.6g}" + (
            f" * (batch_size / {ref}) ** {power:.3g}" if abs(power) > 1e-9 else ""
        )
    return out


def settings_at(const: Mapping[str, Any], batch_size: int, lr: float) -> dict[str, Any]:
    """The optimizer's settings at ``batch_size`` for the constant ``const`` of an export, with
    the answered LR ``lr`` (in the optimizer's own units for the constant's reduction)."""
    optimizer, reduction = const["optimizer"], const["reduction"]
    out: dict[str, Any] = {"batch_size": batch_size, "optimizer": optimizer, "reduction": reduction, "lr": lr}
    s = const.get("settings")
    if not s:  # an export from before settings were written: what it said about eps and decay
        return out
    hp = _derive(s, optimizer, reduction, batch_size)
    if optimizer in ADAPTIVE:
        out.update(beta1=hp.beta1, beta2=hp.beta2, eps=hp.eps)
    if optimizer == "momentum":
        out["momentum"] = hp.momentum
    out["weight_decay"] = hp.weight_decay
    out["decoupled_decay"] = hp.decoupled_decay
    out["warmup_samples"] = s.get("warmup_samples", 0)
    if s.get("n_train") and hp.weight_decay and hp.decoupled_decay:
        # the optimizer LR of a tied sum SGD is the mean one over B: the decay acts on lr * wd alike
        out["decay_timescale_epochs"] = adam.decay_timescale_epochs(batch_size, lr, hp.weight_decay, s["n_train"])
    return out


def settings_line(setting: Mapping[str, Any]) -> str:
    """``lr=0.0123 beta1=0.9 beta2=0.998 eps=1e-08 weight_decay=0.1 warmup_samples=0``."""
    names = ("lr", "momentum", "beta1", "beta2", "eps", "weight_decay", "warmup_samples")
    parts = [f"{n}={setting[n]:.6g}" for n in names if n in setting]
    if "decay_timescale_epochs" in setting:
        parts.append(f"(decay timescale {setting['decay_timescale_epochs']:.3g} epochs)")
    return " ".join(parts)
