"""The probe and the LR range test: side runs from the live state that leave the main run exact.

References: a straight run that never probed (the main run must match it bit for bit), the side
run's own journal rows (adopting its settings must reproduce them), and the uniform distribution
(the sampler's log10 values, by a Kolmogorov-Smirnov statistic).
"""
import json
import math
import random
import time

import pytest

from conftest import assert_same_state, run_to
from trainer import Reader, probe


def probes(t, kind="probe"):
    return [e["data"] for e in t.reader().events(kinds=(kind,))]


def straight(make, steps, **cfg):
    ref = make("straight", **cfg)
    run_to(ref, steps)
    return ref._capture()


@pytest.mark.parametrize("task,opt", [("spirals", "sgd"), ("digits", "adamw")])
def test_a_probe_leaves_the_main_run_bit_identical_to_one_that_never_probed(make, task, opt):
    expected = straight(make, 80, task=task, optimizer=opt, eval_every=20)
    t = make("probed", task=task, optimizer=opt, eval_every=20)
    run_to(t, 40)
    # one side run diverges (lr up to 1e3): the main run must not notice that either
    r = t.probe(samples=4, steps=25, lr_range=[1e-3, 1e3], momentum_range=[0.5, 0.99]).wait()
    assert r.ok, r
    assert t.wait(120) and t.status().state == "done" and t.step == 40
    found = probes(t)[-1]
    assert len(found["results"]) == 4 and not found["cancelled"]
    assert {b["reason"] for b in t.reader().branches()} == {"start", "probe"}
    assert t.branch == 0 and t.reader().lineage(0) == [(0, 0, math.inf)]  # the side runs are not on the main lineage
    assert t.lr_find(steps=30).wait().ok and t.wait(60)
    run_to(t, 80)
    assert_same_state(t._capture(), expected)


def test_adopting_the_winner_continues_on_its_curve(make):
    """Adopt is a normal set_hparams at the step the probe started from: the main run then draws,
    bit for bit, the winner's side-run curve (same start, same batches, same math)."""
    t = make("adopt", eval_every=0, ckpt_every=0)
    run_to(t, 30)
    assert t.probe(samples=3, steps=40, lr_range=[0.01, 1.0], momentum_range=[0.5, 0.95]).wait().ok
    assert t.wait(60)
    best = probes(t)[-1]["results"][0]
    assert best["score"] <= min(r["score"] for r in probes(t)[-1]["results"])
    assert t.set_hparams(lr=best["lr"], momentum=best["momentum"]).wait().ok
    run_to(t, 70)
    r = t.reader()
    side = r.query("SELECT step, loss, grad_norm, lr FROM steps WHERE branch = ? ORDER BY step", (best["branch"],))
    main = r.query("SELECT step, loss, grad_norm, lr FROM steps WHERE branch = 0 AND step > 30 ORDER BY step")
    assert len(side) == 40 and side == main
    assert best["score"] == pytest.approx(sum(x["loss"] for x in side[-8:]) / 8, rel=1e-12)  # last 20 %


def test_every_side_run_starts_from_the_same_state_and_batches(make):
    t = make("same", eval_every=0)
    run_to(t, 20)
    assert t.probe(samples=3, steps=5, lr_range=[0.05, 0.2]).wait().ok and t.wait(60)
    r = t.reader()
    firsts = [r.query("SELECT loss FROM steps WHERE branch = ? ORDER BY step LIMIT 1", (x["branch"],))[0]["loss"]
              for x in probes(t)[-1]["results"]]
    assert len(set(firsts)) == 1  # the first loss is measured before any side run's update: same weights, same batch


def test_cancel_returns_to_the_main_run_at_once_and_exactly(make):
    expected = straight(make, 60, eval_every=0)
    t = make("cancel", eval_every=0)
    run_to(t, 30)
    assert t.set_max_steps(60).wait().ok and t.start().wait().ok  # running when the probe starts
    assert t.probe(samples=6, steps=100_000).wait().ok
    deadline = time.monotonic() + 30
    while not (t.status().probe and t.status().probe["step"] > 10):
        assert time.monotonic() < deadline, t.status()
        time.sleep(0.01)
    s = t.status()
    assert s.state == "probing" and s.accepts == {"cancel"} and s.probe["eta_s"] > 0
    assert not t.set_hparams(lr=0.5).wait().ok  # the main run's settings wait for the probe
    assert t.cancel().wait().ok
    assert t.status().state in ("running", "done") and t.status().probe is None  # it was running: it goes on
    assert probes(t)[-1]["cancelled"]
    assert t.wait(60) and t.step == 60
    assert_same_state(t._capture(), expected)


def test_the_range_test_grows_the_lr_exponentially_and_stops_early_on_divergence(make):
    t = make("lrfind", eval_every=0)
    before = t._capture()
    assert t.lr_find(lo=1e-5, hi=1e3, steps=200).wait().ok and t.wait(60)
    res = probes(t, "lr_find")[-1]["results"][0]
    rows = t.reader().query("SELECT lr, loss FROM steps WHERE branch = ? ORDER BY step", (res["branch"],))
    assert res["stopped_early"] and 20 < len(rows) < 200
    assert rows[0]["lr"] == pytest.approx(1e-5)
    ratios = [b["lr"] / a["lr"] for a, b in zip(rows, rows[1:])]
    assert ratios == pytest.approx([(1e3 / 1e-5) ** (1 / 199)] * len(ratios))
    smooth = probe.smoothed([r["loss"] for r in rows])
    assert smooth[-1] > probe.DIVERGE_FACTOR * min(smooth) or not math.isfinite(rows[-1]["loss"])
    assert 1e-5 < res["steepest"] < 1e3 and 1e-6 < res["min_div10"] < 1e2
    assert_same_state(t._capture(), before)  # and back at step 0, exactly


def test_samples_are_log_uniform_over_the_stated_range():
    n = 3000
    s = probe.sample(n, (1e-4, 1e-1), (0.8, 0.999), seed=7)
    r_lr = sorted(math.log10(x["lr"]) for x in s)
    r_mom = sorted(math.log10(1 - x["momentum"]) for x in s)
    for r, (a, b) in ((r_lr, (-4, -1)), (r_mom, (-3, math.log10(0.2)))):
        assert a <= r[0] and r[-1] <= b
        ks = max(max(abs((i + 1) / n - (v - a) / (b - a)), abs(i / n - (v - a) / (b - a))) for i, v in enumerate(r))
        assert ks < 1.36 / math.sqrt(n)  # Kolmogorov-Smirnov at the 5 % level
    decades = [sum(-4 + d <= v < -3 + d for v in r_lr) for d in range(3)]
    assert all(abs(c - n / 3) <= 1 for c in decades)  # Latin hypercube: every decade gets its share
    gaps = {round(b - a, 9) for a, b in zip(r_lr, r_lr[1:])}
    assert len(gaps) > n / 2  # not a grid
    assert probe.sample(6, (1e-3, 1e-1), None, seed=1) == probe.sample(6, (1e-3, 1e-1), None, seed=1)
    assert probe.sample(6, (1e-3, 1e-1), None, seed=1) != probe.sample(6, (1e-3, 1e-1), None, seed=2)


def test_refine_narrows_around_the_best():
    lr, mom = probe.refine((1e-3, 1e-1), (0.8, 0.99), {"lr": 0.02, "momentum": 0.95})
    assert lr[0] < 0.02 < lr[1] and math.log10(lr[1] / lr[0]) == pytest.approx(2 / 3)
    assert mom[0] < 0.95 < mom[1] and 0.8 <= mom[0] and mom[1] <= 0.99 + 1e-9


@pytest.mark.parametrize("args,field", [
    ({"samples": 0}, "samples"), ({"steps": -1}, "steps"), ({"samples": True}, "samples"),
    ({"lr_range": [0.1, 0.01]}, "lr_range"), ({"lr_range": [0, 1]}, "lr_range"), ({"lr_range": "x"}, "lr_range"),
    ({"momentum_range": [0.5, 1.0]}, "momentum_range"), ({"seed": 1.5}, "seed")])
def test_a_bad_probe_is_rejected_and_changes_nothing(make, args, field):
    t = make("bad")
    run_to(t, 10)
    before = t._capture()
    r = t.submit("probe", **args).wait()
    assert not r.ok and field in r.message and t.status().state == "done"
    assert not t.lr_find(lo=1.0, hi=0.1).wait().ok
    assert_same_state(t._capture(), before)
    assert not probes(t) and [b["reason"] for b in t.reader().branches()] == ["start"]


def test_score_is_the_mean_of_the_last_fifth():
    assert probe.score([5.0] * 8 + [1.0, 3.0]) == 2.0
    assert probe.score([1.0, float("nan")]) == math.inf and probe.score([]) == math.inf
    ranked = probe.rank([{"score": None, "val_loss": None}, {"score": 2.0, "val_loss": 1.0}, {"score": 1.0, "val_loss": 3.0}])
    assert [r["score"] for r in ranked] == [1.0, 2.0, None]
    rng = random.Random(0)
    assert len(set(probe.log_uniform(10, 1e-3, 1.0, rng))) == 10


def test_cli_probe_and_lr_find_on_an_idle_run(make, capsys):
    from trainer import cli

    t = make("idle")
    run_to(t, 30)
    d = t.run_dir
    t.close()
    assert cli.main(["probe", "--run-dir", str(d), "--samples", "2", "--steps", "10", "--lr-range", "0.01:0.5",
                     "--momentum-range", "0.5:0.99", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kind"] == "probe" and out["start_step"] == 30 and len(out["results"]) == 2
    assert all(0.01 <= r["lr"] <= 0.5 and 0.5 <= r["momentum"] <= 0.99 for r in out["results"])
    assert cli.main(["lr-find", "--run-dir", str(d), "--steps", "30"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("LR range test from step 30") and "steepest descent" in text
    assert cli.main(["probe", "--run-dir", str(d), "--lr-range", "0.1"]) == 2
    assert "--lr-range: expected LO:HI" in capsys.readouterr().err
    assert cli.main(["probe", "--run-dir", str(d), "--samples", "0"]) == 1  # the trainer's own check
    assert "samples: must be an integer from 1" in capsys.readouterr().out
    assert cli.main(["probe", "--run-dir", str(d / "nothing")]) == 2


def test_cli_probe_on_a_live_run_goes_through_its_trainer(tmp_path):
    from test_ctl import attach, proc, trainer_process

    d = tmp_path / "live"
    with trainer_process(tmp_path, "run", "--run-dir", d, "--max-steps", 10 ** 8) as p:
        c = attach(d, p)
        r = proc("probe", "--run-dir", d, "--samples", "2", "--steps", "20", "--json")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert len(out["results"]) == 2 and out["start_step"] > 0
        assert c.status().state == "running"  # it was running: it goes on
        assert [e["data"]["start_step"] for e in Reader(d).events(kinds=("probe",))] == [out["start_step"]]
        c.close()


def test_a_side_run_that_crashes_ends_the_probe_and_puts_the_run_back(make):
    from conftest import PLUGINS

    t = make("crash", task=f"{PLUGINS / 'broken.py'}:forward_error")  # the 5th training forward raises
    before = t._capture()
    assert t.probe(samples=2, steps=10).wait().ok and t.wait(60)
    found = probes(t)[-1]
    assert "shapes do not match" in found["error"] and not found["results"]
    assert t.status().state == "ready" and t.step == 0 and t.status().probe is None
    assert_same_state(t._capture(), before)
    run_to(t, 5)  # and it trains on


def test_adopting_a_much_larger_lr_is_not_undone_by_the_sentinel(make):
    """charlm at lr 3e-4, then the probe's winner lr 2e-3 (x6.6): AdamW's next gradient norms are
    9 sigma above the old window. Judged against it, ten skipped steps rolled the adopted lr back
    to 1.5e-4; a hyperparameter change now starts the gradient window afresh."""
    t = make("adopt-big", {"lr": 3e-4}, task="charlm", optimizer="adamw", eval_every=0)
    run_to(t, 400)
    assert t.set_hparams(lr=0.00198).wait().ok
    run_to(t, 440)
    assert not t.reader().events(kinds=("skip_step", "rollback")) and t.branch == 0 and t.hp.lr == 0.00198


def test_a_flat_range_test_suggests_nothing():
    lrs = [probe.range_lr(i, 100, 1e-7, 10) for i in range(100)]
    flat = [2.4 + 0.05 * ((i * 7) % 5) / 5 for i in range(80)] + [2.4 * 1.1 ** k for k in range(20)]
    assert probe.suggestions(lrs, flat) == {"steepest": None, "min_div10": None}
    falls = [2.4 - 1.5 * i / 60 for i in range(60)] + [0.9 * 1.2 ** k for k in range(40)]
    s = probe.suggestions(lrs, falls)
    assert s["steepest"] is not None and s["min_div10"] == pytest.approx(lrs[59] / 10, rel=0.5)


def test_exports_hold_the_side_runs_apart_from_the_main_lineage(make, tmp_path):
    import csv

    from trainer import cli

    t = make("export", eval_every=0)
    run_to(t, 20)
    assert t.probe(samples=2, steps=7).wait().ok and t.wait(60)
    assert t.lr_find(steps=10).wait().ok and t.wait(60)
    out = tmp_path / "m.csv"
    assert cli.main(["export", "--run-dir", str(t.run_dir), "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out)))
    main = [r for r in rows if r["run"] == "main"]
    assert [int(r["step"]) for r in main] == list(range(1, 21)) and {r["branch"] for r in main} == {"0"}
    side = {b: [int(r["step"]) for r in rows if r["branch"] == str(b)] for b in (1, 2)}
    assert side == {1: list(range(21, 28)), 2: list(range(21, 28))}
    assert {r["run"] for r in rows if r["branch"] in ("1", "2")} == {"probe"}
    assert [r["val_loss"] != "" for r in rows if r["branch"] == "1"] == [False] * 6 + [True]  # its end
    assert {r["run"] for r in rows if r["branch"] == "3"} == {"lr_find"}


def test_a_served_process_does_not_end_under_a_probe_begun_as_its_run_came_to_rest():
    """The CLI's progress loop serves a run until it ends. A probe that starts (or ends) just as
    wait() sees the run at rest left the next status read at "probing": not a state to wait in, so
    the process ended under the probe (the engine sets the state a journal flush before it publishes
    the Status). The state read after the wait decides now."""
    import types

    from trainer import cli

    class Racing:
        def __init__(self):
            self.states = ["probing"] * 3 + ["done"] * 3 + ["stopped"]
            self.reads = 0

        def wait(self, timeout):
            return True  # at rest, as wait() saw it

        def status(self):
            self.reads += 1
            state = self.states[min(self.reads // 2, len(self.states) - 1)]  # show() and the loop read
            return types.SimpleNamespace(state=state, step=50, max_steps=50, loss=0.1, error=None,
                                         run=types.SimpleNamespace(run_dir="racing"))

    t = Racing()
    assert cli._progress(t, keep_serving=True) is None
    assert t.reads >= 2 * 6  # it stayed through the probe and the wait at "done", and ended at "stopped"
