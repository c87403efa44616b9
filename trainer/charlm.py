"""charlm: a character-level GPT (nanoGPT's model, made small) trained on Python's standard library.

The text is the source of the running interpreter's own top-level stdlib modules, so nothing is
downloaded; it differs slightly between Python versions (3.11 and 3.12 ship different modules), and
so do the loss curves. trainer/tasks.py wraps this into the `charlm` task.
"""
from __future__ import annotations

import functools
import math
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

TEXT_CHARS = 1_000_000  # characters of stdlib source trained on, the last 10 % held out for validation
VAL_FRACTION = 0.1
UNKNOWN = "\ufffd"  # one stand-in for the few non-ASCII characters (about 90 in 4.7 M on 3.11)
VOCAB = "\n" + "".join(map(chr, range(32, 127))) + UNKNOWN  # 97 symbols: the loss starts near ln 97 = 4.57
VAL_WINDOWS = 512
PROMPT = "def "  # what show() continues
SAMPLE_CHARS = 200
SAMPLE_SEED = 1234  # show()'s own generator: the same model always shows the same text

_TABLE = np.full(128, VOCAB.index(UNKNOWN), dtype=np.int64)
_TABLE[[ord(c) for c in VOCAB[:-1]]] = np.arange(len(VOCAB) - 1)


@functools.lru_cache(maxsize=1)
def stdlib_text(chars: int = TEXT_CHARS) -> str:
    """The top-level *.py files of the stdlib, sorted by name, each after a `# ---- name.py` line."""
    parts, n = [], 0
    for f in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"), key=lambda p: p.name):
        part = f"# ---- {f.name}\n" + f.read_text(encoding="utf-8", errors="replace").replace("\t", "    ")
        parts.append(part)
        n += len(part)
        if n >= chars:
            break
    return "".join(parts)[:chars]


def encode(text: str) -> torch.Tensor:
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    ids = _TABLE[np.minimum(codes, 127)]  # 127 (DEL) is outside VOCAB: it maps to UNKNOWN, as all above it
    return torch.from_numpy(ids)


def decode(ids) -> str:
    return "".join(VOCAB[i] for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids))


def chunks(ids: torch.Tensor, block_size: int) -> TensorDataset:
    """Non-overlapping windows of block_size + 1 characters: x is a window's first T, y its last T."""
    n = len(ids) // (block_size + 1)
    w = ids[:n * (block_size + 1)].view(n, block_size + 1)
    return TensorDataset(w[:, :-1].contiguous(), w[:, 1:].contiguous())


def datasets(block_size: int) -> tuple[TensorDataset, TensorDataset]:
    """(train, val): the text's first 90 % and, from the last 10 %, VAL_WINDOWS windows, split by
    position so no window straddles. Every evaluation reads the whole val set: 512 windows measure
    its loss to about 1 % and cost a fraction of a second on a CPU."""
    ids = encode(stdlib_text())
    cut = int(len(ids) * (1 - VAL_FRACTION))
    val = chunks(ids[cut:], block_size)
    return chunks(ids[:cut], block_size), TensorDataset(*(t[:VAL_WINDOWS] for t in val.tensors))


@dataclass(frozen=True)
class GPTConfig:
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int  # context length in characters
    vocab_size: int = len(VOCAB)
    dropout: float = 0.0  # > 0 draws from the global RNG, which checkpoints save, so resume stays exact


class SelfAttention(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.n_head, self.dropout = c.n_head, c.dropout
        self.qkv = nn.Linear(c.n_embd, 3 * c.n_embd)
        self.proj = nn.Linear(c.n_embd, c.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in self.qkv(x).split(C, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        return F.dropout(self.proj(y.transpose(1, 2).reshape(B, T, C)), self.dropout, self.training)


class Block(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(c.n_embd), SelfAttention(c)
        self.ln2 = nn.LayerNorm(c.n_embd)
        self.mlp = nn.Sequential(nn.Linear(c.n_embd, 4 * c.n_embd), nn.GELU(), nn.Linear(4 * c.n_embd, c.n_embd),
                                 nn.Dropout(c.dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Token and learned position embeddings, pre-LayerNorm blocks, and a head tied to the token embedding."""

    def __init__(self, c: GPTConfig):
        super().__init__()
        self.config, self.block_size = c, c.block_size
        self.wte, self.wpe = nn.Embedding(c.vocab_size, c.n_embd), nn.Embedding(c.block_size, c.n_embd)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.n_embd)
        self.head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.wte.weight = self.head.weight
        for m in self.modules():  # nanoGPT's init
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, 0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        for b in self.blocks:  # each residual branch adds to the stream: keep its sum's variance in check
            for p in (b.attn.proj.weight, b.mlp[2].weight):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * c.n_layer))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, T) character ids -> (B, T, vocab) logits of the next character."""
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln_f(x))


def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


def char_acc(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (out.argmax(dim=-1) == y).float().mean()


@torch.no_grad()
def sample(model: GPT, device: torch.device, prompt: str = PROMPT, n: int = SAMPLE_CHARS,
           temperature: float = 0.8, seed: int = SAMPLE_SEED) -> str:
    """The prompt and n characters sampled after it. Draws only from its own CPU generator (the run's
    global RNGs stay untouched), so it is the same text on any device for the same logits."""
    g = torch.Generator().manual_seed(seed)
    ids = encode(prompt).tolist()
    threads = torch.get_num_threads()
    # One sequence's ops are too small to share: with a second thread each op waits at a barrier,
    # and on a busy 2-core machine that turned 0.15 s into 2-8 s.
    torch.set_num_threads(1)
    try:
        for _ in range(n):
            ctx = torch.tensor([ids[-model.block_size:]], device=device)
            logits = model(ctx)[0, -1].float().cpu()
            ids.append(int(torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1, generator=g)))
    finally:
        torch.set_num_threads(threads)
    return decode(ids)
