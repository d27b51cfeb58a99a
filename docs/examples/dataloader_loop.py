"""Your own training loop under samplewise: a plain torch DataLoader, your model, your steps.

samplewise gives the loop the trial's hyperparameters, its optimizer (the LR tied to the batch
size by the rule), the reduction, and the reporting; the loop keeps everything else. Run it with
``make sweep SWEEP=sweeps/user_loop.yaml``; the spec names it as
``workload.train: docs.examples.dataloader_loop:train``.

The contract, in full:

- ``ctx.optimizer(params)``: build the optimizer through the context (the schedule sets its LR).
- ``ctx.reduce(per_sample_losses, count=...)``: the trial's reduction (mean or sum); with
  gradient accumulation, ``count`` is the number of samples (or tokens) of the whole batch.
- ``ctx.report(samples_seen, val_loss=..., state=...)``: per-sample (or per-item) losses, samples
  seen increasing; it returns True when the trial should stop. ``state`` (tensors and plain
  values) comes back as ``ctx.restored`` if the trial restarts from that report.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from samplewise import TrialContext


def _datasets() -> tuple[TensorDataset, TensorDataset]:
    """scikit-learn's 8x8 digits (shipped with it, no download): 80% train, 20% validation."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    n_val = len(y) // 5
    val, train = perm[:n_val], perm[n_val:]
    return TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val])


@torch.no_grad()
def _evaluate(model: nn.Module, loader: DataLoader, device: str) -> tuple[float, float]:
    """(loss per sample, accuracy) on the validation set."""
    model.eval()
    total, correct, n = 0.0, 0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        out = model(x)
        total += F.cross_entropy(out, y, reduction="sum").item()
        correct += int((out.argmax(dim=1) == y).sum())
        n += len(y)
    model.train()
    return total / n, correct / n


def train(ctx: TrialContext) -> None:
    torch.manual_seed(ctx.hp.seed)
    train_set, val_set = _datasets()
    hidden = int(ctx.params.get("hidden", 64))
    model = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10)).to(ctx.device)
    optimizer = ctx.optimizer(model.parameters())
    val_loader = DataLoader(val_set, batch_size=512)

    samples, epoch = 0, 0
    if ctx.restored is not None:  # a retried or resumed trial: continue from the last checkpoint
        model.load_state_dict(ctx.restored["model"])
        optimizer.load_state_dict(ctx.restored["optimizer"])
        samples, epoch = ctx.restored["samples"], ctx.restored["epoch"]
    else:  # the loss before any update: the scale the divergence check judges by
        val_loss, val_acc = _evaluate(model, val_loader, ctx.device)
        ctx.report(0, val_loss=val_loss, val_accuracy=val_acc)

    while True:  # one report per epoch
        order = torch.Generator().manual_seed(ctx.hp.seed * 100_003 + epoch)  # seeded: a restart repeats it
        loader = DataLoader(train_set, batch_size=ctx.batch_size(samples), shuffle=True, generator=order)
        train_sum, train_n = 0.0, 0
        for x, y in loader:
            x, y = x.to(ctx.device), y.to(ctx.device)
            losses = F.cross_entropy(model(x), y, reduction="none")  # one loss per sample
            optimizer.zero_grad(set_to_none=True)
            ctx.reduce(losses).backward()
            optimizer.step()
            samples += len(y)
            train_sum, train_n = train_sum + losses.sum().item(), train_n + len(y)
        epoch += 1
        val_loss, val_acc = _evaluate(model, val_loader, ctx.device)
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "samples": samples, "epoch": epoch}
        if ctx.report(samples, val_loss=val_loss, train_loss=train_sum / train_n, val_accuracy=val_acc, state=state):
            return
