"""Each advice rule on a constructed run: it fires on the run it describes, cites that run's numbers,
and stays silent on a healthy one."""
import math

import numpy as np
import pytest

from trainer.advice import advise, summary
from trainer.instruments import LayerRow
from trainer.journal import EvalRow, Journal, StepRow


def journal(d, loss, ratio, evals=(), layers=()):
    d.mkdir(parents=True, exist_ok=True)
    j = Journal(d / "journal.sqlite")
    j.add_branch(0, None, 0, "start", None)
    j.log_steps([StepRow(0, i + 1, 0.0, float(l), 0.1, 0.9, 0.0, 32, 1.0, 100.0, 0.0, float(r))
                 for i, (l, r) in enumerate(zip(loss, ratio))])
    for step, val, train in evals:
        j.log_eval(EvalRow(0, step, 0, val, None, train, None, None, 0.0))
    j.log_layers(list(layers))
    j.flush()
    return j


def rules(j, classes=None):
    return {a.rule: a.text for a in advise(j, 0, classes)}


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def healthy(rng, n=400):
    return np.exp(-np.arange(n) / 150) + 0.05 * rng.random(n), 1e-3 * np.exp(rng.normal(0, 0.2, n))


def test_a_healthy_run_gets_no_advice(tmp_path, rng):
    loss, ratio = healthy(rng)
    j = journal(tmp_path, loss, ratio, evals=[(100, 0.9, 0.8), (200, 0.6, 0.5), (300, 0.4, 0.35), (400, 0.3, 0.25)])
    assert rules(j, classes=3) == {}  # its loss at init (1.0) is near log 3


def test_rising_loss_with_big_updates_says_the_lr_is_too_high(tmp_path, rng):
    n = 400
    loss = np.r_[np.exp(-np.arange(200) / 80) + 0.1, np.linspace(0.2, 2.0, 200)] + 0.02 * rng.random(n)
    ratio = np.r_[np.full(200, 1e-3), np.full(200, 3e-2)]
    text = rules(journal(tmp_path, loss, ratio))["lr-too-high"]
    assert "loss rising for 200 steps" in text and "3.0e-02 ≫ 1e-3" in text and "lr is likely too high" in text


def test_a_flat_loss_with_tiny_updates_says_the_lr_is_too_low(tmp_path, rng):
    loss = 0.9 + 0.001 * rng.random(300)
    ratio = np.full(300, 2e-5)
    text = rules(journal(tmp_path, loss, ratio))["lr-too-low"]
    assert "2.0e-05 ≪ 1e-3" in text and "lr is likely too low" in text
    assert "lr-too-low" not in rules(journal(tmp_path / "x",
                                             np.linspace(0.9, 0.5, 300), ratio))  # it is still learning


def test_val_rising_while_train_falls_for_three_evaluations_is_overfitting(tmp_path, rng):
    loss, ratio = healthy(rng)
    ev = [(100, 0.50, 0.45), (200, 0.40, 0.30), (300, 0.42, 0.20), (400, 0.45, 0.15), (500, 0.49, 0.10)]
    text = rules(journal(tmp_path, loss, ratio, evals=ev))["overfitting"]
    assert "val loss rising (0.4 → 0.49) while train falls (0.3 → 0.1) for 3 evaluations" in text
    two = ev[:4] + [(500, 0.44, 0.10)]  # the last val went down again: not three in a row
    assert "overfitting" not in rules(journal(tmp_path / "y",
                                              loss, ratio, evals=two))


def test_the_loss_at_init_is_checked_against_log_c(tmp_path, rng):
    loss, ratio = healthy(rng)
    loss[0] = 4.2
    text = rules(journal(tmp_path, loss, ratio), classes=3)["init-loss"]
    assert "loss at step 1 is 4.2" in text and f"log 3 = {math.log(3):.3g}" in text and "too confident" in text


def test_dead_and_saturated_units_at_the_latest_instrument_step(tmp_path, rng):
    loss, ratio = healthy(rng, 100)
    rows = [LayerRow(0, 50, 2, "2 ReLU", None, None, None, 0.1, 0.5, 0.1, None, None),
            LayerRow(0, 100, 2, "2 ReLU", None, None, None, 0.0, 0.1, 0.75, None, None),
            LayerRow(0, 100, 4, "4 Tanh", None, None, None, 0.0, 0.9, None, 0.6, None)]
    got = rules(journal(tmp_path, loss, ratio, layers=rows))
    assert got["dead-units"].startswith("75% of the units of 2 ReLU never fire (step 100)")
    assert got["saturated"].startswith("60% of 4 Tanh's outputs are saturated")


def test_summary_reads_the_latest_values(tmp_path, rng):
    loss, ratio = healthy(rng, 120)
    rows = [LayerRow(0, 100, -1, "(model)", 1.0, 1e-3, 10.0, None, None, None, None, 1e8),
            LayerRow(0, 100, 1, "0 Linear", 0.5, 2e-3, 3.0, None, None, None, None, None)]
    s = summary(journal(tmp_path, loss, ratio, evals=[(100, 0.7, 0.6)], layers=rows), 0)
    assert s["step"] == 120 and s["loss"] == pytest.approx(loss[-1]) and s["update_ratio"] == pytest.approx(ratio[-1])
    assert s["layers_step"] == 100 and [r["layer"] for r in s["layers"]] == ["(model)", "0 Linear"]
    assert s["val_loss"] == 0.7 and s["first_loss"] == pytest.approx(loss[0])


def test_a_journal_from_before_the_instruments_reads_without_them(tmp_path):
    """An archived run opened read-only: no update_ratio column, no layers table; its writer would
    add them, a Reader must not need them (the Diagnostics tab and `diagnose` read such runs)."""
    import sqlite3

    from trainer import Reader
    from trainer.journal import SCHEMA

    old = SCHEMA.replace(" update_ratio REAL, loss_scale REAL,", "")
    old = old[:old.index("CREATE TABLE IF NOT EXISTS layers")] + old[old.index("CREATE TABLE IF NOT EXISTS checkpoints"):]
    con = sqlite3.connect(tmp_path / "journal.sqlite")
    con.executescript(old)
    con.execute("INSERT INTO branches VALUES (0, NULL, 0, 'start', NULL, 0)")
    con.executemany("INSERT INTO steps VALUES (0, ?, 0, ?, 0.1, 0.9, 0, 32, 1.0, 100.0, 0)",
                    [(i, 1.0 / i) for i in range(1, 301)])
    con.commit()
    con.close()
    r = Reader(tmp_path)
    s = r.series(0, budget=100)
    assert len(s["step"]) <= 101 and np.isnan(s["update_ratio"]).all() and s["grad_norm"][0] == 1.0
    assert np.isnan(s["loss_scale"]).all()
    assert r.layer_rows(0) == [] and [a.rule for a in advise(r, 0, classes=10)] == ["init-loss"]
    assert summary(r, 0)["step"] == 300
