"""The sentinel's statistics and decisions against references computed independently in NumPy."""
import math

import numpy as np
import pytest

from trainer import sentinel
from trainer.sentinel import MIN_HISTORY, STD_FLOOR, Anomaly, Sentinel, Window, action


@pytest.mark.parametrize("size", [8, 128])
def test_window_mean_and_std_match_numpy_over_a_long_series(size):
    rng = np.random.default_rng(size)
    xs = np.concatenate([rng.normal(3, 0.5, 5000), rng.normal(-40, 2, 3000)])  # a jump: old values must leave
    w = Window(size)
    for i, x in enumerate(xs):
        w.add(float(x))
        tail = xs[max(0, i + 1 - size):i + 1]
        st = w.stats()
        if len(tail) < min(MIN_HISTORY, size):
            assert st is None
            continue
        assert st[0] == pytest.approx(tail.mean(), rel=1e-9, abs=1e-9)
        assert st[1] == pytest.approx(tail.std(), rel=1e-6, abs=1e-6)


def reference_spikes(losses, grads, window, sigma):
    """Which steps the sentinel must flag, recomputed from scratch each step with NumPy: the log of a
    value against the mean and std of the logs of the last `window` accepted (unflagged) values."""
    acc = {"loss": [], "grad_norm": []}
    flagged = []
    for i, (l, g) in enumerate(zip(losses, grads)):
        hit = None
        for name, v in (("loss", l), ("grad_norm", g)):
            tail = np.array(acc[name][-window:])
            if len(tail) >= min(MIN_HISTORY, window):
                z = (np.log(v) - tail.mean()) / max(tail.std(), STD_FLOOR)
                if z > sigma:
                    hit = name
                    break
        if hit:
            flagged.append((i + 1, hit))
        else:
            acc["loss"].append(np.log(l))
            acc["grad_norm"].append(np.log(g))
    return flagged


def test_spikes_are_the_ones_a_numpy_reference_flags():
    rng = np.random.default_rng(0)
    n = 3000
    losses = np.exp(rng.normal(0, 0.8, n)) * np.linspace(2, 0.1, n)  # heavy-tailed, falling
    grads = np.exp(rng.normal(0, 0.5, n))
    for at in (200, 201, 202, 900, 2500):  # planted spikes, a run of three among them
        losses[at] *= 1e3
    grads[1500] *= 1e4
    s = Sentinel(window=128, threshold=6.0)
    got = []
    for i, (l, g) in enumerate(zip(losses, grads)):
        a = s.check_step(i + 1, float(l), float(g))
        if a is None:
            s.accept_step(float(l), float(g))
        else:
            assert a.kind == "spike" and a.step == i + 1 and a.z > 6
            got.append((i + 1, a.series))
    assert got == reference_spikes(losses, grads, 128, 6.0)
    assert {201, 202, 203, 901, 2501, 1501} <= {step for step, _ in got}


def test_non_finite_is_always_an_anomaly_even_before_any_history():
    s = Sentinel()
    a = s.check_step(1, float("nan"), 1.0)
    assert a.kind == "nonfinite" and a.series == "loss" and a.before_update and a.sound
    assert s.check_step(1, 1.0, float("inf")).series == "grad_norm"
    assert s.check_update(3, float("inf")).kind == "broken"


def test_a_deliberate_lr_raise_is_no_update_anomaly_but_a_blowup_after_it_is_still_caught():
    s = Sentinel(window=64)
    for i in range(100):
        s.accept_step(1.0 + 0.01 * (i % 7), 0.5)
        assert s.check_update(i, 1e-3 * (1 + 0.01 * (i % 5))) is None
    assert s.check_update(100, 1e-1).kind == "update"  # 100x the ratio out of the blue
    assert s.check_step(100, 1.0, 20.0).kind == "spike"  # and 40x the gradient norm
    s.human_acted(hparams_changed=True)  # the user raised the lr 100x
    assert s.check_update(101, 1e-1) is None
    assert s.check_step(101, 1.0, 20.0) is None  # a larger lr may well mean larger gradients
    assert s.check_step(102, 5e3, 20.0).kind == "spike"  # the loss window survived the change


def test_a_sustained_explosion_is_caught_after_a_full_window_and_not_before():
    s = Sentinel(window=50)
    for i in range(1, 200):  # training goes well: loss 2 -> 0.2
        s.observe_loss(2.0 * 0.99 ** i + 0.1)
        s.check_step(i, 2.0 * 0.99 ** i + 0.1, 1.0) if i == 1 else None
        assert s.check_explosion(i) is None
    for i in range(200, 260):  # then sits at 1e3: not a spike any more, an explosion
        s.observe_loss(1e3)
        a = s.check_explosion(i)
        if i < 200 + 24:  # fewer than half the window exploded
            assert a is None, i  # the median still sees the good half
        elif a is not None:
            assert a.kind == "explosion" and not a.sound and a.start == i - 49
            break
    else:
        pytest.fail("no explosion")
    calm = Sentinel(window=50)  # a slow rise that stays below the loss at initialisation is no explosion
    calm.check_step(1, 2.0, 1.0)
    for i in range(1, 300):
        calm.observe_loss(0.1 + i / 300)
        assert calm.check_explosion(i) is None


def test_the_policy_table():
    spike = Anomaly("spike", 5, 5, "loss", 9.0, 7.0, "")
    nan = Anomaly("nonfinite", 5, 5, "loss", math.nan, None, "")
    broken = Anomaly("broken", 5, 3, "state", math.inf, None, "", sound=False)
    boom = Anomaly("explosion", 5, 1, "loss", 1e3, None, "", sound=False)
    upd = Anomaly("update", 5, 5, "update_ratio", 1.0, 9.0, "", sound=False)
    table = {p: [action(p, a) for a in (spike, nan, broken, boom, upd)] for p in sentinel.POLICIES}
    assert table == {
        "warn": ["warn", "pause", "pause", "warn", "warn"],  # a NaN is never applied, inf weights never trained on
        "pause": ["pause"] * 5,
        "skip": ["skip", "skip", "rollback", "rollback", "warn"],  # what skipping cannot fix is rolled back
        "rollback": ["rollback"] * 5,
    }


def test_state_round_trips_and_a_resized_window_keeps_the_newest_values():
    s = Sentinel(window=64)
    for i in range(100):
        s.accept_step(1.0 + i, 2.0)
        s.observe_loss(1.0 + i)
    s.check_step(101, 1.0, 1.0)
    t = Sentinel(window=64)
    t.load_state_dict(s.state_dict())
    assert t.state_dict() == s.state_dict()
    t.configure(16, 6.0)
    assert list(t.w["loss"].values) == list(s.w["loss"].values)[-16:]


def test_a_collapse_back_to_chance_is_caught_but_a_worse_stretch_is_not():
    """Adam with weight decay 10^6 drives the weights to zero: the loss goes back to log C, finite and
    smooth, below the loss at init. Caught once 90 % of the progress is undone; a loss that merely
    doubles from its best is not."""
    def run(tail):
        s = Sentinel(window=50)
        s.check_step(1, 1.1, 1.0)  # the loss at initialisation: log 3
        hits = []
        for i, loss in enumerate([1.1 * 0.98 ** i + 0.05 for i in range(300)] + tail, start=1):
            s.observe_loss(loss)
            a = s.check_explosion(i)
            if a is not None:
                hits.append((i, a))
        return hits
    assert run([0.12] * 200) == []  # worse than the best (0.05), but far from undone
    hits = run([1.09] * 200)
    assert hits and hits[0][0] in range(326, 330) and "training came undone" in hits[0][1].message
    assert not hits[0][1].sound and hits[0][1].kind == "explosion"
