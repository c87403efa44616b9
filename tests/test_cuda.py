"""The CUDA path on a real GPU (skipped without one): no hidden per-step syncs, exact rollback."""
import time
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch

from conftest import assert_same_state, run_to
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


def test_training_syncs_only_at_read_backs_and_epoch_ends(make):
    """At most one device-to-host sync per read-back (every log_every steps, or READBACK_S seconds),
    plus epoch-boundary work; copying a checkpoint's state to the CPU is the only other sync."""
    t = make("sync", task="spirals", device="cuda", ckpt_every=0, eval_every=0, eval_at_epoch_end=False)
    run_to(t, 20)  # data on the device, kernels warmed up
    steps, t0 = 200, time.monotonic()
    seen = syncs(lambda: run_to(t, 20 + steps))
    elapsed = time.monotonic() - t0
    training = {k: n for k, n in seen.items() if not k.startswith("snapshot.py")}  # the final checkpoint's copy
    epochs = steps // t.status().steps_per_epoch + 1
    most = steps // t.cfg.log_every + int(elapsed / READBACK_S) + epochs + 2
    assert sum(training.values()) <= most, (training, most)


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_rollback_on_cuda_is_bit_exact(make, opt):
    straight = make("straight", task="spirals", optimizer=opt, device="cuda", ckpt_every=0)
    run_to(straight, 40)
    expected = straight._capture()
    t = make("rolled", task="spirals", optimizer=opt, device="cuda", ckpt_every=0)
    run_to(t, 20)
    cid = t.save_checkpoint().wait().value
    run_to(t, 35)
    assert t.restore(cid).wait().ok
    run_to(t, 40)
    assert_same_state(t._capture(), expected)
