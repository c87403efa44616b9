"""The divergence sentinel: robust running statistics over the loss, the gradient norm and the update
ratio, and the decision each run's policy takes when one of them leaves its normal range.

A value is anomalous when its logarithm lies more than `threshold` standard deviations above the mean
of the last `window` accepted values (OLMo-core skips steps at 6 sigma over 128 steps). The log scale
is what makes a z-score robust here: per-batch losses and gradient norms are heavy-tailed, so on
spirals a raw z-score flagged an ordinary hard batch (0.6 against a mean of 0.07) at 9 sigma, where
its log is 2 sigma out; lr 1000 is 12 sigma out either way. Values that are not positive (a task
whose loss can be negative) are not judged on that series. Anomalous values are kept out of the
window, so one spike does not hide the next. A sustained finite explosion, which a z-score cannot
see once the window has filled with it, is a trailing median worse than the loss at initialisation
and 10x the best trailing median so far; a collapse (Adam with weight decay 10^6 drives the weights
to zero and the loss back to chance, finite and smooth) is a trailing median that has undone 75 %
of the progress from the loss at initialisation to the best median.

Pure Python and plain values: the state goes into snapshots (skip decisions change the training
path, so a restored run must decide as the original did).
"""
from __future__ import annotations

import collections
import math
import statistics
from dataclasses import dataclass
from typing import Any

POLICIES = ("warn", "pause", "skip", "rollback")
SERIES = ("loss", "grad_norm", "update_ratio")
MIN_HISTORY = 32  # values a window needs before it judges anything
STD_FLOOR = 0.1  # of the log: on a flat series a value must still be e^(0.1 threshold) times the mean
EXPLODE = 10.0  # a trailing median this many times the best one (and above the initial loss)
UNDONE = 0.75  # or, once the loss fell by a quarter, a trailing median that undid this much of the progress
MAX_STREAK = 10  # consecutive skipped steps after which skipping is not helping: pause
MAX_ROLLBACKS = 3  # automatic rollbacks without a human command in between, then pause


class Window:
    """The last `size` accepted values of one series (logs, as the Sentinel uses it), with a running
    sum and sum of squares.

    The sums are recomputed from the values every `size` additions, so rounding never drifts far.
    """

    def __init__(self, size: int, values: tuple | list = ()):
        self.size = size
        self.min_n = min(MIN_HISTORY, size)
        self.values: collections.deque[float] = collections.deque(values, maxlen=size)
        self._resum()

    def _resum(self) -> None:
        self.s = math.fsum(self.values)
        self.ss = math.fsum(v * v for v in self.values)
        self._adds = 0

    def add(self, x: float) -> None:
        if len(self.values) == self.size:
            old = self.values[0]
            self.s -= old
            self.ss -= old * old
        self.values.append(x)
        self.s += x
        self.ss += x * x
        self._adds += 1
        if self._adds >= self.size:
            self._resum()

    def stats(self) -> tuple[float, float] | None:
        """(mean, std) (population std), or None before MIN_HISTORY values."""
        n = len(self.values)
        if n < self.min_n:
            return None
        mean = self.s / n
        return mean, math.sqrt(max(self.ss / n - mean * mean, 0.0))

    def z(self, x: float) -> float | None:
        st = self.stats()
        if st is None:
            return None
        mean, std = st
        return (x - mean) / max(std, STD_FLOOR)


@dataclass(frozen=True)
class Anomaly:
    """What the sentinel saw. `kind`: spike (a z-score over threshold, before the update), nonfinite
    (a NaN/inf loss or gradient, before the update), update (an update-ratio spike, after it), broken
    (non-finite weights, optimizer state or buffers, after it), explosion (a sustained rise), overflow
    (fp16: the loss scaler skipped step after step down to its smallest scale, no update applied).
    `start` is the first step the anomaly may have touched; `sound` says whether the weights are finite."""
    kind: str
    step: int
    start: int
    series: str
    value: float
    z: float | None
    message: str
    sound: bool = True

    @property
    def before_update(self) -> bool:
        return self.kind in ("spike", "nonfinite", "overflow")

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("kind", "step", "start", "series", "value", "z", "message", "sound")}
        d["value"] = _plain(self.value)
        return d


def _plain(v: float) -> float | str:
    return v if math.isfinite(v) else str(v)  # JSON has no inf/nan


def action(policy: str, anomaly: Anomaly) -> str:
    """What a policy does about an anomaly: "warn" (record it, go on), "skip" (drop the update, go
    on), "pause" or "rollback". A non-finite update is never applied, and non-finite weights are
    never trained on. Under skip, what a skipped step cannot fix (weights already damaged, a
    sustained explosion) is rolled back; an update-ratio spike was applied already, so it is recorded."""
    if policy == "rollback":
        return "rollback"
    if anomaly.kind == "nonfinite":
        return "skip" if policy == "skip" else "pause"
    if anomaly.kind == "overflow":  # the scaler has skipped every one of them already
        return "pause" if policy == "skip" else policy
    if policy == "skip":
        return {"spike": "skip", "update": "warn"}.get(anomaly.kind, "rollback")
    if anomaly.kind == "broken":
        return "pause"
    return policy  # warn | pause


class Sentinel:
    def __init__(self, window: int = 128, threshold: float = 6.0):
        self.window, self.threshold = window, threshold
        self.w = {s: Window(window) for s in SERIES}
        self.recent: collections.deque[float] = collections.deque(maxlen=window)  # every loss, for explosions
        self.init_loss: float | None = None
        self.best_median: float | None = None
        self.streak = 0  # consecutive anomalous steps
        self.start = 0  # the first step of the current run of anomalous steps
        self.rollbacks = 0  # automatic rollbacks since a human last acted

    def configure(self, window: int, threshold: float) -> None:
        if window != self.window:
            self.w = {s: Window(window, list(w.values)[-window:]) for s, w in self.w.items()}
            self.recent = collections.deque(list(self.recent)[-window:], maxlen=window)
        self.window, self.threshold = window, threshold

    def human_acted(self, hparams_changed: bool) -> None:
        """A person changed the run. The update ratio scales with the lr, and the gradient norm moves
        with it (AdamW on charlm: lr x6.6 put the next gradients 9 sigma above the old window, and
        skipping them rolled the adopted lr back), so new hyperparameters start both windows afresh;
        the loss window stays, so a change that blows the run up is still caught at once."""
        if hparams_changed:
            self.w["update_ratio"] = Window(self.window)
            self.w["grad_norm"] = Window(self.window)
        self.rollbacks = 0

    def episode(self, step: int) -> int:
        """Count an anomalous step; returns the first step of the episode it belongs to."""
        if not self.streak:
            self.start = step
        self.streak += 1
        return self.start

    def calm(self) -> None:
        self.streak = 0

    def judge(self, step: int, loss: float, grad_norm: float) -> Anomaly | None:
        """The per-step fast path, before the update: check_step, and when the step is normal,
        accept_step and observe_loss (the caller applies it), in one call of plain arithmetic."""
        if self.init_loss is None or not (0.0 < loss < math.inf and 0.0 < grad_norm < math.inf):
            a = self.check_step(step, loss, grad_norm)
            if a is None:
                self.accept_step(loss, grad_norm)
                self.observe_loss(loss)
                self.streak = 0
            return a
        wl, wg = self.w["loss"], self.w["grad_norm"]
        ll, lg = math.log(loss), math.log(grad_norm)
        for w, x in ((wl, ll), (wg, lg)):
            n = len(w.values)
            if n >= w.min_n:
                mean = w.s / n
                var = w.ss / n - mean * mean
                if x - mean > self.threshold * max(math.sqrt(var) if var > 0 else 0.0, STD_FLOOR):
                    return self.check_step(step, loss, grad_norm)  # the slow path words it
        wl.add(ll)
        wg.add(lg)
        self.recent.append(loss)
        self.streak = 0
        return None

    def judge_update(self, step: int, ratio: float) -> Anomaly | None:
        """check_update's fast path."""
        if not 0.0 < ratio < math.inf:
            return self.check_update(step, ratio)
        w, x = self.w["update_ratio"], math.log(ratio)
        n = len(w.values)
        if n >= w.min_n:
            mean = w.s / n
            var = w.ss / n - mean * mean
            if x - mean > self.threshold * max(math.sqrt(var) if var > 0 else 0.0, STD_FLOOR):
                return self.check_update(step, ratio)
        w.add(x)
        return None

    def check_step(self, step: int, loss: float, grad_norm: float) -> Anomaly | None:
        """Before the update of `step`: a non-finite or anomalously high loss or gradient norm."""
        if self.init_loss is None and math.isfinite(loss):
            self.init_loss = loss
        for name, v in (("loss", loss), ("grad_norm", grad_norm)):
            if not math.isfinite(v):
                return Anomaly("nonfinite", step, step, name, v, None,
                               f"non-finite {name.replace('_', ' ')} at step {step} ({v})", True)
        for name, v in (("loss", loss), ("grad_norm", grad_norm)):
            z = self.w[name].z(math.log(v)) if v > 0 else None
            if z is not None and z > self.threshold:
                return Anomaly("spike", step, step, name, v, z,
                               f"{name.replace('_', ' ')} spike at step {step}: {v:.3g}, {z:.1f} sigma above "
                               f"{self._typical(name)} over the last {len(self.w[name].values)} steps")
        return None

    def _typical(self, name: str) -> str:
        mean, std = self.w[name].stats()
        return f"the typical {math.exp(mean):.3g} (x/÷ {math.exp(std):.2g})"

    def accept_step(self, loss: float, grad_norm: float) -> None:
        """The step's values were normal: they join the windows."""
        if loss > 0:
            self.w["loss"].add(math.log(loss))
        if grad_norm > 0:
            self.w["grad_norm"].add(math.log(grad_norm))

    def check_update(self, step: int, ratio: float) -> Anomaly | None:
        """After the update of `step`: ||dtheta|| / ||theta|| against its window (not a spike: it is applied)."""
        if not math.isfinite(ratio):
            return Anomaly("broken", step, step, "update_ratio", ratio, None,
                           f"the weights are not finite after step {step}", sound=False)
        if ratio <= 0:
            return None
        z = self.w["update_ratio"].z(math.log(ratio))
        if z is not None and z > self.threshold:
            return Anomaly("update", step, step, "update_ratio", ratio, z,
                           f"update ratio spike at step {step}: {ratio:.3g}, {z:.1f} sigma above "
                           f"{self._typical('update_ratio')}; the update was applied", sound=False)
        self.w["update_ratio"].add(math.log(ratio))
        return None

    def observe_loss(self, loss: float) -> None:
        """Every loss of an applied step, normal or not: what the explosion check looks at."""
        if math.isfinite(loss):
            self.recent.append(loss)

    def check_explosion(self, step: int) -> Anomaly | None:
        """A full window whose median is worse than at initialisation and EXPLODE x the best median."""
        if len(self.recent) < self.window or self.init_loss is None:
            return None
        med = statistics.median(self.recent)  # every HEALTH_EVERY steps: a sort of `window` floats
        init = self.init_loss
        best = min(init, self.best_median if self.best_median is not None else med)
        if med > max(init, EXPLODE * best):
            return Anomaly("explosion", step, step - self.window + 1, "loss", med, None,
                           f"the loss exploded: its median over the last {self.window} steps is {med:.3g}, above "
                           f"the loss at initialisation {init:.3g} and {EXPLODE:g}x the best median {best:.3g}",
                           sound=False)
        if best < 0.75 * init and med > best + UNDONE * (init - best):
            return Anomaly("explosion", step, step - self.window + 1, "loss", med, None,
                           f"training came undone: the median loss over the last {self.window} steps is {med:.3g}, "
                           f"{(med - best) / (init - best):.0%} of the way back from the best median {best:.3g} to "
                           f"the loss at initialisation {init:.3g} (a collapse: weights decayed or driven to "
                           "chance)", sound=False)
        self.best_median = med if self.best_median is None else min(self.best_median, med)
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"window": self.window, "threshold": self.threshold,
                "values": {s: list(w.values) for s, w in self.w.items()}, "recent": list(self.recent),
                "init_loss": self.init_loss, "best_median": self.best_median, "streak": self.streak,
                "start": self.start, "rollbacks": self.rollbacks}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.w = {s: Window(self.window, list(d["values"].get(s, ()))[-self.window:]) for s in SERIES}
        self.recent = collections.deque(list(d["recent"])[-self.window:], maxlen=self.window)
        self.init_loss, self.best_median = d["init_loss"], d["best_median"]
        self.streak, self.start, self.rollbacks = int(d["streak"]), int(d["start"]), int(d["rollbacks"])


def recovery_plan(reader, branch: int, start: int, lr_factor: float = 0.5,
                  most_skip: int | None = None) -> dict | None:
    """Where Recover goes for an anomaly that began at step `start`: the newest checkpoint on the
    lineage from before it, its lr x lr_factor, and a skip of the batches from there to the anomaly
    (PaLM's recipe). None when no checkpoint precedes the anomaly. `reader`: a journal Reader."""
    lineage = reader.lineage(branch)
    before = [c for c in reader.checkpoints()
              if c["step"] < start and reader.on_lineage(c["branch"], c["step"], lineage)]
    if not before:
        return None
    c = max(before, key=lambda c: (c["step"], c["id"]))
    skip = max(0, start - c["step"])
    if most_skip is not None:
        skip = min(skip, most_skip)
    lr = c["hparams"].get("lr")
    return {"checkpoint": c["id"], "step": c["step"], "branch": c["branch"], "skip_batches": skip,
            "lr": lr * lr_factor if lr else None, "val_loss": c["val_loss"], "train_loss": c["train_loss"]}
