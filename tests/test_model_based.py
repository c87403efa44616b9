"""Model-based test of exactness (hypothesis, stateful).

Random sequences of train / save / restore (ring or disk, with overrides and skips) / change
hyperparameters / close and reopen. The model keeps, for the live state and for every checkpoint,
the lineage as a list of operations at steps. After each sequence a reference trainer replays that
lineage straight from step 0 (no checkpoint ever restored), and the two must agree bit for bit:
model and BatchNorm buffers, optimizer state, every RNG, data position, hyperparameters.

PANDA_MODEL_EXAMPLES sets the number of sequences (CI keeps it modest).
"""
import os
import shutil
import tempfile

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as S
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from conftest import PLUGINS, run_to
from trainer import RunConfig, Trainer

EXAMPLES = int(os.environ.get("PANDA_MODEL_EXAMPLES", "25"))
LRS = S.sampled_from([0.01, 0.03, 0.2])
MOMENTA = S.sampled_from([0.0, 0.5, 0.95])


def saved_state(t: Trainer) -> dict:
    """The full state as the training thread captures it (RNGs included), via a checkpoint."""
    cid = t.save_checkpoint().wait().value
    return t.store.load(cid)


def assert_identical(a: dict, b: dict) -> None:
    def same(x, y, where):
        if isinstance(x, torch.Tensor):
            assert isinstance(y, torch.Tensor) and torch.equal(x, y), where
        elif isinstance(x, dict):
            assert x.keys() == y.keys(), where
            for k in x:
                same(x[k], y[k], f"{where}.{k}")
        elif isinstance(x, (list, tuple)):
            assert len(x) == len(y), where
            for i, (u, v) in enumerate(zip(x, y)):
                same(u, v, f"{where}[{i}]")
        else:
            assert x == y, f"{where}: {x!r} != {y!r}"

    for key in ("model", "optimizer", "rng", "data", "hparams", "schedule"):
        same(a[key], b[key], key)
    assert a["counters"]["step"] == b["counters"]["step"]


def make_machine(task: str, optimizer: str):
    class Exactness(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            self.dir = tempfile.mkdtemp(prefix="panda-model-")
            self.cfg = dict(task=task, optimizer=optimizer, ckpt_every=0, eval_every=0, eval_at_epoch_end=False,
                            ring_size=16)  # run_to ends in a final checkpoint: keep saved ones in the ring
            self.t = Trainer.create(RunConfig(run_dir=f"{self.dir}/run", **self.cfg))
            self.ops: list[tuple] = []  # the live lineage: ("set", step, changes) / ("skip", step, k)
            self.ckpts: dict[int, tuple[int, list]] = {}  # id -> (step, lineage ops)

        def step(self) -> int:
            return self.t.status().step

        @rule(k=S.integers(1, 9))
        def train(self, k):
            run_to(self.t, self.step() + k)

        @rule()
        def save(self):
            r = self.t.save_checkpoint().wait()
            assert r.ok, r
            self.ckpts[r.value] = (self.step(), list(self.ops))

        @precondition(lambda self: self.ckpts)
        @rule(data=S.data(), from_disk=S.sampled_from([False, False, True]), lr=S.none() | LRS, momentum=S.none() | MOMENTA,
              skip=S.integers(0, 3))
        def restore(self, data, from_disk, lr, momentum, skip):
            cid = data.draw(S.sampled_from(sorted(self.ckpts)))
            if from_disk:
                self.t.journal.flush()
                self.t.store._ring.clear()
            over = {k: v for k, v in (("lr", lr), ("momentum", momentum)) if v is not None}
            r = self.t.restore(cid, hparams=over, skip_batches=skip).wait()
            assert r.ok, r
            step, ops = self.ckpts[cid]
            self.ops = list(ops) + ([("set", step, over)] if over else []) + ([("skip", step, skip)] if skip else [])

        @rule(lr=LRS, momentum=S.none() | MOMENTA)
        def set_hparams(self, lr, momentum):
            changes = {"lr": lr, **({"momentum": momentum} if momentum is not None else {})}
            assert self.t.set_hparams(**changes).wait().ok
            self.ops.append(("set", self.step(), changes))

        @rule()
        def reopen(self):
            self.t.close()
            self.t = Trainer.open(f"{self.dir}/run")
            self.t.store._ring.clear()

        @invariant()
        def live(self):
            assert self.t.status().state != "error", self.t.status().error

        def teardown(self):
            try:
                got = saved_state(self.t)
                ref = Trainer.create(RunConfig(run_dir=f"{self.dir}/reference", **self.cfg))
                try:
                    for kind, step, arg in self.ops:
                        if step > ref.status().step:
                            run_to(ref, step)
                        r = ref.set_hparams(**arg).wait() if kind == "set" else ref.skip(arg).wait()
                        assert r.ok, r
                    if got["counters"]["step"] > ref.status().step:
                        run_to(ref, got["counters"]["step"])
                    assert_identical(got, saved_state(ref))
                finally:
                    ref.close()
            finally:
                self.t.close()
                shutil.rmtree(self.dir, ignore_errors=True)

    Exactness.TestCase.settings = settings(max_examples=EXAMPLES, stateful_step_count=10, deadline=None,
                                           suppress_health_check=list(HealthCheck))
    return Exactness


@pytest.mark.parametrize("task,optimizer", [("spirals", "sgd"), (f"{PLUGINS / 'noisy.py'}:make", "adam")],
                         ids=["spirals-sgd", "plugin-all-rngs-adam"])
def test_any_sequence_continues_exactly_like_a_straight_replay(task, optimizer):
    make_machine(task, optimizer).TestCase("runTest").runTest()
