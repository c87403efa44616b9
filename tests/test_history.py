"""The live view's incremental history (app/history.py) against the journal's own full reads."""
import time

import numpy as np

from conftest import run_to
from app.history import History, history
from trainer import Reader
from trainer.journal import Journal, StepRow


def full(reader, branch):
    """The reference: every row of the lineage, read whole by the journal's Reader."""
    return reader.metrics(branch)


def test_history_across_a_restore_and_incremental_updates_match_full_reads(make, tmp_path):
    t = make("h", ckpt_every=20, eval_every=15)
    run_to(t, 45)
    assert t.set_hparams(lr=0.05).wait().ok
    run_to(t, 70)
    back = next(c["id"] for c in t.reader().checkpoints() if c["step"] == 40)
    assert t.restore(back).wait().ok
    run_to(t, 55)
    r, b = t.reader(), t.status().branch
    early = History(r, b).update(r)  # made now, updated as the run goes on
    assert t.set_hparams(momentum=0.5).wait().ok
    run_to(t, 90)
    early.update(r)
    for h in (early, History(r, b).update(r)):
        ref = full(r, b)
        assert h.column("step").tolist() == [x["step"] for x in ref]
        assert np.array_equal(h.column("loss"), np.array([x["loss"] for x in ref]), equal_nan=True)
        assert h.column("lr").tolist() == [x["lr"] for x in ref]
        assert [e["step"] for e in h.evals] == [e["step"] for e in r.evals(b)]
        lineage = r.lineage(b)
        assert [e["id"] for e in h.events] == [e["id"] for e in r.events(kinds=("hparams", "restore"))
                                               if r.on_lineage(e["branch"], e["step"], lineage)]
        assert {c["id"] for c in h.checkpoints} == {c["id"] for c in r.checkpoints()
                                                     if r.on_lineage(c["branch"], c["step"], lineage)}
        assert [x["id"] for x in h.branches] == [x["id"] for x in r.other_branches(b)]
        assert h.rows(10_000) == [{k: x[k] for k in h.rows(1)[0]} for x in ref]  # below the limit: every row


def test_picks_keep_every_spike_change_and_checkpoint_at_a_million_steps(tmp_path):
    d = tmp_path / "big"
    d.mkdir()
    j = Journal(d / "journal.sqlite")
    n = 1_000_000
    rng = np.random.default_rng(0)
    loss = 0.1 + 0.01 * rng.random(n)
    spikes = rng.choice(n, 8, replace=False)
    loss[spikes] = 25.0
    dips = rng.choice(n, 3, replace=False)
    loss[dips] = 1e-4
    lr = np.where(np.arange(n) < 612_345, 0.1, 0.05)
    j.execute("INSERT INTO branches VALUES (0, NULL, 0, 'start', NULL, 0)")
    j.log_steps([StepRow(0, i + 1, i / 1000, float(loss[i]), float(lr[i]), 0.9, 0.0, 64, 1.0, 1.0, 0.0)
                 for i in range(n)])
    j.execute("INSERT INTO checkpoints (id, step, epoch, branch, path, wall, hparams, kind) "
              "VALUES (7, 333333, 0, 0, 'c.pt', 0, '{}', 'manual')")
    j.flush()
    j.close()
    r = Reader(d)
    t0 = time.perf_counter()
    h = history(r, str(d), 0)
    first = time.perf_counter() - t0
    rows = h.rows(2000)
    steps = {x["step"] for x in rows}
    assert {int(i) + 1 for i in spikes} <= steps and {int(i) + 1 for i in dips} <= steps
    assert {612_345, 612_346} <= steps and 333_333 in steps and {1, n} <= steps
    assert len(rows) <= 2000 + 10
    t0 = time.perf_counter()
    history(r, str(d), 0).rows(2000)  # a later tick: nothing new to read
    tick = time.perf_counter() - t0
    print(f"first read {first:.2f} s, next tick {tick * 1000:.1f} ms")
