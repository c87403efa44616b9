"""Input that used to crash, kill or hang the process: batch remainders, huge datasets, plugins that exit."""
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import Dataset, TensorDataset

from conftest import PLUGINS, ROOT
from trainer import data
from trainer.data import MAX_ITEMS, Batches

CPU = torch.device("cpu")


def spirals_like(n: int) -> TensorDataset:
    return TensorDataset(torch.randn(n, 2), torch.arange(n))


def test_a_lone_last_sample_joins_the_batch_before_it():
    b = Batches(spirals_like(65), seed=0, device=CPU)
    (x, y), ended = b.next(64)
    assert len(x) == 65 and ended and b.position() == (1, 0, 0)
    assert sorted(y.tolist()) == list(range(65))  # every sample once
    assert b.batches_per_epoch(64) == 1


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 300), sizes=st.lists(st.integers(1, 80), min_size=1, max_size=30), data=st.data())
def test_skip_lands_where_next_would_and_no_batch_is_a_lone_sample(n, sizes, data):
    """skip must mirror next exactly (restore-and-skip is bit-exact), batch size changing as it goes."""
    ds = spirals_like(n)
    a, b = Batches(ds, seed=3, device=CPU), Batches(ds, seed=3, device=CPU)
    last = None
    for bs in sizes:
        bs = min(bs, n)  # validate keeps the batch size within the training set
        k = data.draw(st.integers(1, 5))
        ended = 0
        for _ in range(k):
            (x, _), e = a.next(bs)
            ended += e
            # only a batch size of 1 can leave a lone sample (n - 1 taken) for the next batch
            assert len(x) > 1 or bs == 1 or n == 1 or last == 1
            last = bs
        assert b.skip(k, bs) == ended
        assert a.position() == b.position()


@given(n=st.integers(1, 300), bs=st.integers(1, 300))
def test_batches_per_epoch_counts_the_batches_of_a_full_epoch(n, bs):
    bs = min(bs, n)
    b = Batches(spirals_like(n), seed=0, device=CPU)
    count, ended, seen = 0, False, []
    while not ended:
        (_, y), ended = b.next(bs)
        count += 1
        seen += y.tolist()
    assert sorted(seen) == list(range(n))
    assert b.batches_per_epoch(bs) == count


class Huge(Dataset):
    def __len__(self):
        return 10**12

    def __getitem__(self, i):
        raise AssertionError("never read")


def test_a_dataset_too_big_to_shuffle_is_refused_before_allocating():
    with pytest.raises(ValueError, match=f"1,000,000,000,000 items.*at most {MAX_ITEMS:,}"):
        Batches(Huge(), seed=0, device=CPU)


def test_a_shuffle_bigger_than_half_the_memory_is_refused(monkeypatch):
    class Big(Huge):
        def __len__(self):
            return 2**27  # a 1 GiB permutation

    monkeypatch.setattr(data, "_memory", lambda: 2 * 2**30 - 1)
    with pytest.raises(ValueError, match=r"134,217,728 items; .*\(1.0 GiB\), more than half of this machine's 2.0 GiB"):
        Batches(Big(), seed=0, device=CPU)
    monkeypatch.setattr(data, "_memory", lambda: 2 * 2**30)
    data.check_size(2**27)  # exactly half fits


def test_a_shuffle_that_cannot_be_allocated_is_a_clear_error(monkeypatch):
    def oom(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(torch, "randperm", oom)
    with pytest.raises(ValueError, match="train_data: cannot shuffle the 65 items of an epoch: .*allocate"):
        Batches(spirals_like(65), seed=0, device=CPU)


# In a child process: before the fix these killed the interpreter, which would take pytest with it.
CHILD = """
import sys
from trainer import TaskError, load_task
for spec in sys.argv[1:]:
    try:
        load_task(spec)
        print(spec, "-> loaded")
    except TaskError as e:
        print(spec, "->", e)
print("still alive")
"""


def test_plugins_that_exit_or_abort_give_a_task_error_and_the_process_lives():
    broken = str(PLUGINS / "broken.py")
    expected = {
        f"{broken}:interrupted": "the function raised KeyboardInterrupt",
        f"{broken}:exits": "the function raised SystemExit: 3",
        "os:abort": "abort is not a Python function returning trainer.Task",
    }
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", CHILD, *expected], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 0 and r.stdout.endswith("still alive\n"), (r.returncode, r.stdout, r.stderr[-2000:])
    lines = r.stdout.splitlines()
    for (spec, words), line in zip(expected.items(), lines):
        assert line.startswith(f"{spec} -> task {spec!r}: ") and words in line, line
