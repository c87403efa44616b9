"""What the live view draws (app/history.py) against the journal's own row-by-row reads."""
import numpy as np

from conftest import run_to
from app import history
from trainer import Reader
from trainer.journal import Journal, StepRow


def test_a_view_across_a_restore_matches_the_full_reads(make):
    t = make("h", ckpt_every=20, eval_every=15)
    run_to(t, 45)
    assert t.set_hparams(lr=0.05).wait().ok
    run_to(t, 70)
    back = next(c["id"] for c in t.reader().checkpoints() if c["step"] == 40)
    assert t.restore(back).wait().ok
    run_to(t, 55)
    assert t.set_hparams(momentum=0.5).wait().ok
    run_to(t, 90)
    r, b = t.reader(), t.status().branch
    v = history.loss_view(r, b, smoothing=0.0)
    ref = r.metrics(b)  # the reference: every row of the lineage, read whole
    assert v["width"] == 1 and v["step"].tolist() == [x["step"] for x in ref]
    assert np.array_equal(v["loss"], np.array([x["loss"] for x in ref]))
    assert v["smooth"].tolist() == [x["loss"] for x in ref]  # smoothing 0: the rows themselves
    assert [e["step"] for e in v["evals"]] == [e["step"] for e in r.evals(b)]
    lineage = r.lineage(b)
    assert [e["id"] for e in v["events"]] == [e["id"] for e in r.events(kinds=("hparams", "restore"))
                                              if r.on_lineage(e["branch"], e["step"], lineage)]
    assert {c["id"] for c in v["checkpoints"]} == {c["id"] for c in r.checkpoints()
                                                    if r.on_lineage(c["branch"], c["step"], lineage)}
    others = r.other_branches(b)
    assert [(x["id"], x["fork_step"]) for x in v["branches"]] == [(x["id"], x["fork_step"]) for x in others]
    for mine, full in zip(v["branches"], others):
        assert mine["step"].tolist() == [x["step"] for x in full["steps"]]
    zoomed = history.loss_view(r, b, zoom=(30, 50))  # across the fork at 40: rows of both branches
    assert zoomed["step"].tolist() == list(range(30, 51))
    assert zoomed["loss"].tolist() == [x["loss"] for x in ref if 30 <= x["step"] <= 50]


def test_every_spike_dip_change_and_checkpoint_is_drawn_at_a_million_steps(tmp_path):
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
    for a in range(0, n, 100_000):
        j.log_steps([StepRow(0, i + 1, i / 1000, float(loss[i]), float(lr[i]), 0.9, 0.0, 64, 1.0, 1.0, 0.0)
                     for i in range(a, a + 100_000)])
        j.flush()
    j.execute("INSERT INTO checkpoints (id, step, epoch, branch, path, wall, hparams, kind) "
              "VALUES (7, 333333, 0, 0, 'c.pt', 0, '{}', 'manual')")
    j.event(612_344, 0, "hparams", "lr 0.1 → 0.05", {"field": "lr", "old": 0.1, "new": 0.05, "at_step": 612_345})
    j.close()
    v = history.loss_view(Reader(d), 0)
    drawn = dict(zip(v["step"].tolist(), v["loss"].tolist()))
    assert len(drawn) <= history.POINTS + 2 and v["width"] > 1
    assert all(drawn.get(int(i) + 1) == 25.0 for i in spikes)  # each spike at its own step
    assert all(drawn.get(int(i) + 1) == np.float64(1e-4) for i in dips)
    assert {s for s, _ in v["spikes"]} == {int(i) + 1 for i in spikes}
    assert [c["step"] for c in v["checkpoints"]] == [333_333]
    assert [e["data"]["at_step"] for e in v["events"]] == [612_345]
    lr_at = v["units"][:, history.U["lr"]]
    last = v["units"][:, history.U["last_step"]]
    change = last[np.flatnonzero(lr_at[1:] != lr_at[:-1])[0] + 1]
    assert 612_345 <= change < 612_345 + v["width"]  # the timeline changes within the bucket of the change
