"""The journal's multi-resolution summary (trainer/summary.py) against the rows themselves."""
import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

from trainer.journal import Journal, StepRow
from trainer import summary


def write(j, branch, steps, loss, chunk):
    rows = [StepRow(branch, int(s), s / 100, None if np.isnan(v) else float(v), 0.1 * (1 + s // 500), 0.9, 0.0, 32,
                    1.0, 3200.0, 1000.0 + s) for s, v in zip(steps, loss)]
    for a in range(0, len(rows), chunk):  # the writer commits in pieces, each updating its buckets
        j.log_steps(rows[a:a + chunk])
        j.flush()


def check_units(units, ref):
    """Each unit is exactly its rows: count, min and max with their steps, last row's values."""
    ref = {s: v for s, v in ref}
    for u in units:
        f = dict(zip(summary.UNIT, u))
        mine = [(s, ref[s]) for s in range(int(f["first_step"]), int(f["last_step"]) + 1) if s in ref]
        assert f["n"] == len(mine)
        vals = [v for _, v in mine if not np.isnan(v)]
        if vals:
            assert f["min_loss"] == min(vals) and ref[int(f["min_step"])] == f["min_loss"]
            assert f["max_loss"] == max(vals) and ref[int(f["max_step"])] == f["max_loss"]
        assert np.isnan(f["loss"]) and np.isnan(mine[-1][1]) or f["loss"] == mine[-1][1]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 5000), chunk=st.integers(1, 700), seed=st.integers(0, 2 ** 32 - 1),
       budget=st.sampled_from([3, 10, 100, 2000]))
def test_buckets_keep_every_planted_extreme(tmp_path_factory, n, chunk, seed, budget):
    rng = np.random.default_rng(seed)
    loss = 0.1 + 0.01 * rng.random(n)
    planted = rng.choice(n, min(n, 5), replace=False)
    loss[planted] = rng.choice([25.0, 1e-6, np.inf, np.nan], len(planted))
    j = Journal(tmp_path_factory.mktemp("s") / "journal.sqlite")
    j.add_branch(0, None, 0, "start", None)
    steps = np.arange(1, n + 1)
    write(j, 0, steps, loss, chunk)
    units, width = j.curve(0, budget=budget)
    assert units[:, 2].sum() == n and (width == 1) == (n <= budget)
    check_units(units, zip(steps.tolist(), loss.tolist()))
    kept = set(units[:, 5].astype(int)) | set(units[:, 7].astype(int))
    unit_of = np.searchsorted(units[:, 1], steps)  # the unit each step falls in
    for i in planted:  # a spike or dip is kept wherever it falls, unless its unit holds a bigger one
        same = [k for k in planted if unit_of[k] == unit_of[i] and k != i and not np.isnan(loss[k])]
        if not np.isnan(loss[i]) and not same:
            assert i + 1 in kept, (i + 1, loss[i])
        if loss[i] == 25.0 and not np.isinf(loss[[k for k in same]]).any():
            assert units[unit_of[i], 6] == 25.0

def test_a_rewritten_range_and_a_lineage_of_three_branches_read_exactly(tmp_path):
    j = Journal(tmp_path / "journal.sqlite")
    j.add_branch(0, None, 0, "start", None)
    rng = np.random.default_rng(1)
    write(j, 0, np.arange(1, 3001), rng.random(3000), 97)
    write(j, 0, np.arange(2001, 2601), 10 + rng.random(600), 50)  # a resumed run writes these steps again
    j.add_branch(1, 0, 1234, "restore", None)
    write(j, 1, np.arange(1235, 5001), rng.random(3766), 300)
    j.add_branch(2, 1, 4321, "restore", None)
    write(j, 2, np.arange(4322, 9001), rng.random(4679), 1000)
    ref = [(r["step"], r["loss"]) for r in j.metrics(2)]  # the journal's row-by-row read of the lineage
    for budget in (5, 50, 500, 20_000):
        units, _ = j.curve(2, budget=budget)
        assert units[:, 2].sum() == len(ref) == 9000
        check_units(units, ref)
    units, width = j.curve(2, 1000, 1500, budget=1000)  # a zoomed range: every row
    assert width == 1 and units[:, 0].tolist() == list(range(1000, 1501))
    assert units[:, 4].tolist() == [v for s, v in ref if 1000 <= s <= 1500]
    assert j.curve(2, 4000, 4400, budget=20)[0][:, 2].sum() == 401


def test_an_old_journal_is_summarized_when_its_writer_opens_it(tmp_path):
    j = Journal(tmp_path / "journal.sqlite")
    j.add_branch(0, None, 0, "start", None)
    write(j, 0, np.arange(1, 2001), np.linspace(1, 2, 2000), 2000)
    j._wcon.execute("DELETE FROM summary")
    j._wcon.execute("DELETE FROM meta WHERE key = 'summary'")
    j.close()
    again = Journal(tmp_path / "journal.sqlite")
    units, width = again.curve(0, budget=10)
    assert width > 1 and units[:, 2].sum() == 2000 and units[:, 6].max() == 2.0
