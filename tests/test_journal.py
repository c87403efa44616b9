"""The journal's read API against hand-built histories."""
from trainer.journal import Journal, StepRow


def rows(branch, steps):
    return [(branch, s, s / 10, float(s), 0.1, 0.9, 0.0, 8, 1.0, 100.0, 1000.0 + s) for s in steps]


def build(tmp_path):
    j = Journal(tmp_path / "j.sqlite")
    j.add_branch(0, None, 0, "start", None)
    j.log_steps(rows(0, range(1, 101)))  # main path to 100
    j.add_branch(1, 0, 40, "restore", 1)
    j.log_steps(rows(1, range(41, 81)))  # forked at 40, went to 80
    j.add_branch(2, 1, 60, "restore", 2)
    j.log_steps(rows(2, range(61, 121)))  # forked from branch 1 at 60, to 120
    j.flush()
    return j


def test_lineage_follows_forks(tmp_path):
    j = build(tmp_path)
    m = j.metrics(2)
    assert [r["step"] for r in m] == list(range(1, 121))
    assert [r["branch"] for r in m] == [0] * 40 + [1] * 20 + [2] * 60
    assert [r["step"] for r in j.metrics(2, since_step=100)] == list(range(101, 121))


def test_other_branches_are_the_abandoned_paths(tmp_path):
    j = build(tmp_path)
    other = {(o["id"], o["fork_step"]): [r["step"] for r in o["steps"]] for o in j.other_branches(2)}
    assert other == {(0, 40): list(range(41, 101)), (1, 60): list(range(61, 81))}


def test_downsampled_series_keeps_the_ends(tmp_path):
    j = build(tmp_path)
    m = j.metrics(2, max_points=30)
    steps = [r["step"] for r in m]
    assert len(steps) <= 31 and steps[-1] == 120 and steps == sorted(steps)
    assert all(b - a == 4 for a, b in zip(steps, steps[1:-1]))


def test_flush_survives_a_reopen(tmp_path):
    j = build(tmp_path)
    j.event(5, 0, "hparams", "lr 0.1 → 0.05")
    j.close()
    again = Journal(tmp_path / "j.sqlite")
    assert again.events()[-1]["message"] == "lr 0.1 → 0.05"
    assert len(again.metrics(2)) == 120


def test_the_writer_adds_the_newer_step_columns_to_an_old_journal(tmp_path):
    """A run from before the instruments and fp16: resuming it adds update_ratio and loss_scale, and
    its old rows read them as NULL."""
    import sqlite3

    from trainer.journal import SCHEMA

    old = SCHEMA.replace(" update_ratio REAL, loss_scale REAL,", "")
    con = sqlite3.connect(tmp_path / "journal.sqlite")
    con.executescript(old)
    con.execute("INSERT INTO steps VALUES (0, 1, 0, 1.0, 0.1, 0.9, 0, 32, 1.0, 100.0, 0)")
    con.commit()
    con.close()
    j = Journal(tmp_path / "journal.sqlite")
    j.start_writer()
    j.log_steps([StepRow(0, 2, 0.0, 0.5, 0.1, 0.9, 0.0, 32, 1.0, 100.0, 0.0, 1e-3, 1024.0)])
    j.flush()
    rows = j.metrics(0)
    assert [(r["step"], r["update_ratio"], r["loss_scale"]) for r in rows] == [(1, None, None), (2, 1e-3, 1024.0)]
    j.close()
