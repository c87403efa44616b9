"""charlm: the stdlib text and its windows, the GPT against a hand-written reference, sampling that
leaves the run's RNGs alone."""
import math

import pytest
import torch
from torch.nn import functional as F

from conftest import run_to
from trainer import TaskError, charlm, load_task
from trainer.config import BUILTIN_TASKS, TASK_HELP, task_config
from trainer.tasks import CHARLM_SIZES

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def task():
    return load_task("charlm")


def test_windows_are_the_text_shifted_by_one(task):
    T = task.model.block_size
    x, y = task.train_data.tensors
    vx, vy = task.val_data.tensors
    assert x.dtype == y.dtype == torch.long and x.shape == y.shape == (len(x), T)
    assert torch.equal(x[:, 1:], y[:, :-1])
    ids = charlm.encode(charlm.stdlib_text())
    assert len(ids) == charlm.TEXT_CHARS
    cut = int(0.9 * len(ids))
    assert torch.equal(x[0], ids[:T]) and torch.equal(y[0], ids[1:T + 1])
    assert torch.equal(x[1], ids[T + 1:2 * T + 1])  # non-overlapping windows of T + 1
    assert len(x) == cut // (T + 1) and len(vx) == min(charlm.VAL_WINDOWS, (len(ids) - cut) // (T + 1)) == 512
    assert torch.equal(vx[0], ids[cut:cut + T]) and torch.equal(vy[0], ids[cut + 1:cut + T + 1])


def test_the_vocabulary_covers_the_text():
    text = charlm.stdlib_text()
    assert text.startswith("# ---- ") and len(text) == charlm.TEXT_CHARS
    ids = charlm.encode(text)
    assert 0 <= ids.min() and ids.max() < len(charlm.VOCAB) == 97
    back = charlm.decode(ids)
    known = set(charlm.VOCAB) - {charlm.UNKNOWN}
    assert back == "".join(c if c in known else charlm.UNKNOWN for c in text)  # reference: per character
    assert back.count(charlm.UNKNOWN) < 100  # the stdlib is nearly all ASCII
    assert charlm.decode(charlm.encode("ab\x7fé\n")) == "ab" + 2 * charlm.UNKNOWN + "\n"


def _reference_forward(m: charlm.GPT, idx: torch.Tensor) -> torch.Tensor:
    """The same GPT written out by hand with an explicit causal mask, from the model's weights."""
    B, T = idx.shape
    x = m.wte.weight[idx] + m.wpe.weight[:T]
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    for b in m.blocks:
        h = F.layer_norm(x, x.shape[-1:], b.ln1.weight, b.ln1.bias)
        q, k, v = (h @ b.attn.qkv.weight.T + b.attn.qkv.bias).chunk(3, dim=-1)
        H = b.attn.n_head
        q, k, v = (t.reshape(B, T, H, -1).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).masked_fill(~mask, float("-inf")).softmax(-1)
        x = x + (att @ v).transpose(1, 2).reshape(B, T, -1) @ b.attn.proj.weight.T + b.attn.proj.bias
        h = F.layer_norm(x, x.shape[-1:], b.ln2.weight, b.ln2.bias)
        h = F.gelu(h @ b.mlp[0].weight.T + b.mlp[0].bias)
        x = x + h @ b.mlp[2].weight.T + b.mlp[2].bias
    return F.layer_norm(x, x.shape[-1:], m.ln_f.weight, m.ln_f.bias) @ m.wte.weight.T


def test_the_model_matches_a_hand_written_gpt():
    task = load_task("charlm")
    x, _ = task.train_data[:4]
    m = task.model
    with torch.no_grad():
        for p in m.parameters():  # off the init, so LayerNorm gains and biases count too
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05)
        out = m(x)
        assert out.shape == (4, m.block_size, len(charlm.VOCAB))
        assert torch.allclose(out, _reference_forward(m, x), atol=1e-5)
        out2 = m(x[:, :10])  # causal: a prefix sees only itself
        assert torch.allclose(out2, out[:, :10], atol=1e-5)
    assert m.head.weight is m.wte.weight


def test_loss_at_init_is_about_ln_vocab():
    t = load_task("charlm", seed=3)
    x, y = t.train_data[:64]
    with torch.no_grad():
        out = t.model(x)
        assert abs(t.loss(out, y).item() - math.log(len(charlm.VOCAB))) < 0.3
        assert t.loss(out, y).item() == pytest.approx(F.cross_entropy(out.transpose(1, 2), y).item(), rel=1e-6)
        ref = sum((out[i, j].argmax() == y[i, j]).item() for i in range(64) for j in range(out.shape[1]))
        assert t.metrics["char_acc"](out, y).item() == pytest.approx(ref / y.numel())
    assert "acc" not in t.metrics  # the engine would take the model for a softmax classifier


def test_a_short_run_lowers_the_loss(make):
    t = make(task="charlm:tiny", optimizer="adamw", eval_every=0, eval_at_epoch_end=False, ckpt_every=0)
    run_to(t, 150)
    losses = [r["loss"] for r in t.reader().metrics(0)]
    ids = t.task.train_data.tensors[1].reshape(-1)
    p = torch.bincount(ids).double() / len(ids)
    unigram = -(p[p > 0] * p[p > 0].log()).sum().item()  # the best loss that ignores the context: ~3.2
    assert losses[0] > unigram + 1 and sum(losses[-20:]) / 20 < unigram - 0.4  # it reads the context (~2.55)


def test_show_is_deterministic_and_leaves_the_rngs_alone(task):
    m = task.model.eval()
    torch.manual_seed(0)
    before, threads = torch.get_rng_state(), torch.get_num_threads()
    with torch.no_grad():
        a = task.show(m, CPU)["sample"]
        b = task.show(m, CPU)["sample"]
    assert torch.equal(torch.get_rng_state(), before) and torch.get_num_threads() == threads
    assert a == b and a.startswith(charlm.PROMPT) and len(a) == len(charlm.PROMPT) + charlm.SAMPLE_CHARS
    assert set(a) <= set(charlm.VOCAB)
    m.train()


def test_show_during_a_run_is_journalled(make):
    t = make(task="charlm:tiny", optimizer="adamw", eval_every=10, ckpt_every=0)
    run_to(t, 10)
    assert t.status().eval["sample"].startswith(charlm.PROMPT)
    assert {"val_loss", "val_char_acc", "train_char_acc"} <= set(t.status().eval)


def test_sizes_and_names():
    assert load_task("charlm").name == "charlm" and load_task("charlm:tiny").name == "charlm-tiny"
    with pytest.raises(TaskError, match="unknown size 'huge'; sizes are tiny, small, medium, large"):
        load_task("charlm:huge")
    assert CHARLM_SIZES["medium"][0].n_layer == 6 and CHARLM_SIZES["large"][0].n_embd == 512
    assert set(TASK_HELP) == set(BUILTIN_TASKS) and task_config("charlm:medium")["optimizer"] == "adamw" and task_config("spirals") == {}


def test_the_default_size_trains_a_step(task):
    x, y = task.train_data[:task.defaults["batch_size"]]
    m = task.model.train()
    loss = task.loss(m(x), y)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
    m.zero_grad(set_to_none=True)
