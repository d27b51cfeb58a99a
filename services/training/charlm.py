"""``charlm_gpt``: a small decoder-only transformer (nanoGPT-style) trained to predict the next
character, on a corpus built on this machine from text that ships with Python (no download).

The loss is per token: a sample is a window of ``block_size`` characters, and its loss is the
mean cross-entropy of its ``block_size`` next-character predictions, so every sample holds the
same number of tokens and the per-sample mean is the per-token mean. The optimizer is AdamW
(weight decay decoupled), as transformers are trained.
"""

from __future__ import annotations

import math
import sysconfig
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

CORPUS_FILES = (
    "argparse.py",
    "textwrap.py",
    "difflib.py",
    "inspect.py",
    "typing.py",
    "dataclasses.py",
    "pathlib.py",
    "shutil.py",
    "tarfile.py",
    "subprocess.py",
    "threading.py",
    "logging/__init__.py",
    "email/message.py",
    "json/decoder.py",
    "collections/__init__.py",
)
"""Standard-library modules whose source (English docstrings and comments, Python code) makes
the corpus: on every machine with this Python version, the same text."""


def corpus(max_chars: int) -> str:
    """The first ``max_chars`` characters of the concatenated corpus files."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    parts, size = [], 0
    for name in CORPUS_FILES:
        path = stdlib / name
        if path.exists():
            text = path.read_text(encoding="utf-8", errors="replace")
            parts.append(text)
            size += len(text)
        if size >= max_chars:
            break
    text = "\n".join(parts)[:max_chars]
    if len(text) < 10_000:
        raise RuntimeError(f"charlm corpus: only {len(text)} characters of Python's standard library found")
    return text


class _Block(nn.Module):
    """Pre-norm transformer block: causal self-attention, then an MLP of width 4 * n_embd."""

    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.ln1, self.ln2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
        self.qkv, self.proj = nn.Linear(n_embd, 3 * n_embd), nn.Linear(n_embd, n_embd)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(self.ln2(x))


class CharGPT(nn.Module):
    """Token and position embeddings, ``n_layer`` blocks, a final LayerNorm and a head tied to
    the token embedding. Returns logits of shape (batch, block_size, vocab)."""

    def __init__(self, vocab: int, block_size: int, n_layer: int, n_head: int, n_embd: int):
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd: {n_embd} is not a multiple of n_head {n_head}")
        self.tok, self.pos = nn.Embedding(vocab, n_embd), nn.Embedding(block_size, n_embd)
        self.blocks = nn.Sequential(*(_Block(n_embd, n_head) for _ in range(n_layer)))
        self.ln = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab, bias=False)
        self.head.weight = self.tok.weight
        for name, p in self.named_parameters():  # GPT-2's init: N(0, 0.02), residual projections scaled
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith(("proj.weight", "mlp.2.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        return self.head(self.ln(self.blocks(x)))


def token_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """One loss per token: the next-character cross-entropy, shape (batch, block)."""
    return F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")


def windows(text: str, vocab: dict[str, int], block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping windows of ``block_size`` characters and their next characters."""
    ids = torch.tensor([vocab[ch] for ch in text], dtype=torch.long)
    n = (len(ids) - 1) // block_size
    x = ids[: n * block_size].view(n, block_size)
    y = ids[1 : n * block_size + 1].view(n, block_size)
    return x, y
