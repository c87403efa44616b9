"""The CUDA path on a real GPU (skipped without one): no hidden per-step syncs, exact rollback."""
import time
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch

from conftest import PLUGINS, assert_same_state, run_to
from trainer.engine import READBACK_S

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def syncs(fn) -> Counter:
    """Synchronizing CUDA calls made while fn() runs (any thread), by file:line."""
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message))


def sync_bound(t, steps: int, elapsed: float) -> dict:
    """The syncs `steps` training steps may make: one per read-back (every log_every steps, or
    READBACK_S seconds), one per per-layer instrument step (all its statistics in one copy), the
    epoch boundaries' work, and 2 to spare."""
    return {"read-backs": steps // t.cfg.log_every + int(elapsed / READBACK_S),
            "instrument steps": steps // t.cfg.instrument_every if t.cfg.instrument_every else 0,
            "epoch ends": steps // t.status().steps_per_epoch + 1, "spare": 2}


CHECKPOINT_SYNCS = 4  # its read-back, the state check, the state's copy, and the fp16 scaler's scale


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_training_syncs_only_at_read_backs_and_epoch_ends(make, precision):
    """Training syncs only at read-backs, instrument steps and epoch ends; a checkpoint copies the
    whole state to the CPU in one sync, not one per tensor. Under fp16 the GradScaler's step and
    update stay on the device too (fused optimizer)."""
    t = make("sync", task="spirals", device="cuda", ckpt_every=0, eval_every=0, eval_at_epoch_end=False,
             precision=precision)
    run_to(t, 20)  # data on the device, kernels warmed up
    steps, t0 = 200, time.monotonic()
    seen = syncs(lambda: run_to(t, 20 + steps))
    elapsed = time.monotonic() - t0
    bound = sync_bound(t, steps, elapsed)
    checkpoint = sum(n for k, n in seen.items() if k.startswith("snapshot.py"))  # the final checkpoint's copy
    assert sum(seen.values()) - checkpoint <= sum(bound.values()), (seen, bound)
    assert checkpoint <= 1, seen


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_rollback_on_cuda_is_bit_exact(make, opt, precision):
    straight = make("straight", task="spirals", optimizer=opt, device="cuda", ckpt_every=0, precision=precision)
    run_to(straight, 40)
    expected = straight._capture()
    t = make("rolled", task="spirals", optimizer=opt, device="cuda", ckpt_every=0, precision=precision)
    run_to(t, 20)
    cid = t.save_checkpoint().wait().value
    run_to(t, 35)
    assert t.restore(cid).wait().ok
    run_to(t, 40)
    assert_same_state(t._capture(), expected)
    if precision == "fp16":
        assert t._capture()["scaler"] == expected["scaler"]


def test_fp16_overflows_on_cuda_are_skipped_on_the_device_and_counted_at_the_read_back(make):
    t = make("loud", task=f"{PLUGINS / 'loud.py'}:make", device="cuda", precision="fp16", ckpt_every=0,
             eval_every=0, eval_at_epoch_end=False)
    run_to(t, 60)
    rows = t.journal.metrics(0)
    scales = [r["loss_scale"] for r in rows]
    assert scales[0] == 65536.0 and t.status().overflows > 0 and t.skipped == 0
    assert all(torch.isfinite(p).all() for p in t.model.parameters())
