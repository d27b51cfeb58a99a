"""What else moves with the batch size besides the LR: Adam's betas and eps, and AdamW's decay.

Each setting is quoted at a *reference batch size* B_ref; at B = k * B_ref:

- ``sqrt``: lr = c * sqrt(B); betas, eps and weight decay stay as quoted.
- ``sqrt_halflife``: the sqrt rule, and beta2 keeps its half-life in *samples* fixed:
  beta2(B) = beta2_ref ** k (Marek et al. 2025, "Small Batch Size Training for Language
  Models"). The second-moment EMA then averages over the same number of samples at any B.
- ``sde``: the square-root SDE rule (Malladi et al. 2022, "On the SDEs and Scaling Rules for
  Adaptive Gradient Algorithms"): lr * sqrt(k), 1 - beta1 and 1 - beta2 times k, eps /
  sqrt(k). Past k = 1 / (1 - beta) the rule would make beta negative; it is held at 0 there
  (the SDE approximation has broken down well before).

Decoupled weight decay (AdamW's ``p *= 1 - lr * lambda``) is an EMA of the weights with a
timescale of 1 / (lr * lambda) steps, i.e. tau = B / (lr * lambda * N) epochs of N samples
(Wang & Aitchison 2024). ``tie: timescale`` keeps tau fixed as B and the tied LR move: with
lr = c * B**e, lambda(B) = lambda_ref * (B / B_ref)**(1 - e) for the same c.

Each rule has per-sample constants that do not depend on B_ref (what an export writes):
the half-life in samples of each beta, eps * sqrt(B) under ``sde``, and the decay timescale
in samples (in epochs once divided by N).

The functions are pure; :func:`search_spaces.scaling.derive` calls them for every trial.
"""

from __future__ import annotations

import math

__all__ = [
    "ADAM_RULES",
    "DECAY_TIES",
    "adam_settings",
    "beta_for_halflife",
    "decay_at",
    "decay_for_timescale",
    "decay_timescale_epochs",
    "halflife_samples",
    "sde_beta",
]

ADAM_RULES: tuple[str, ...] = ("sqrt_halflife", "sde")
"""Rules that move Adam's betas (and eps) with B, beyond the LR: adaptive optimizers only."""
DECAY_TIES: tuple[str, ...] = ("fixed", "timescale")
"""How decoupled weight decay moves with B: not at all, or with its timescale in epochs fixed."""
HALF = math.log(0.5)


def halflife_samples(beta: float, batch_size: float) -> float:
    """Samples after which an EMA with coefficient ``beta`` per step of ``batch_size`` samples
    weighs a gradient half as much: B * ln(0.5) / ln(beta) (0 for beta 0, inf for beta 1)."""
    if not 0 <= beta <= 1:
        raise ValueError(f"beta: must lie in [0, 1], got {beta}")
    if beta == 0:
        return 0.0
    if beta == 1:
        return math.inf
    return batch_size * HALF / math.log(beta)


def beta_for_halflife(halflife: float, batch_size: float) -> float:
    """The EMA coefficient at ``batch_size`` whose half-life is ``halflife`` samples."""
    if halflife == 0:
        return 0.0
    return 0.5 ** (batch_size / halflife)


def sde_beta(beta_ref: float, k: float) -> float:
    """The SDE rule's beta at k times the reference batch size: 1 - k * (1 - beta_ref), held at 0."""
    return max(0.0, 1.0 - k * (1.0 - beta_ref))


def adam_settings(
    rule: str, batch_size: int, reference_batch_size: int, betas: tuple[float, float], eps: float
) -> tuple[float, float, float]:
    """(beta1, beta2, eps for the mean-reduced loss) at ``batch_size`` under ``rule``, from the
    values quoted at ``reference_batch_size``."""
    b1, b2 = betas
    k = batch_size / reference_batch_size
    if rule == "sde":
        return sde_beta(b1, k), sde_beta(b2, k), eps / math.sqrt(k)
    if rule == "sqrt_halflife":
        return b1, b2**k, eps
    return b1, b2, eps


def decay_at(tie: str, weight_decay: float, batch_size: int, reference_batch_size: int, lr_exponent: float) -> float:
    """Decoupled weight decay at ``batch_size`` for the mean-reduced loss, from ``weight_decay``
    quoted at ``reference_batch_size``: fixed, or (``timescale``) lambda_ref * (B / B_ref)**(1 - e)
    for an LR c * B**e, so that B / (lr * lambda) (the timescale in samples) stays fixed."""
    if tie == "timescale":
        return weight_decay * (batch_size / reference_batch_size) ** (1.0 - lr_exponent)
    if tie != "fixed":
        raise ValueError(f"tie: unknown {tie!r}, expected one of {DECAY_TIES}")
    return weight_decay


def decay_timescale_epochs(batch_size: float, lr: float, weight_decay: float, n_train: int) -> float:
    """AdamW's EMA timescale in epochs: tau = B / (lr * lambda * N) (inf without decay)."""
    if lr * weight_decay == 0:
        return math.inf
    return batch_size / (lr * weight_decay * n_train)


def decay_for_timescale(batch_size: float, lr: float, timescale_epochs: float, n_train: int) -> float:
    """The decoupled weight decay whose timescale at ``batch_size`` and ``lr`` is ``timescale_epochs``."""
    return batch_size / (lr * timescale_epochs * n_train)
