"""Commands are data: the UI, the CLI and tests send them from any thread; the training thread applies
them between optimizer steps, in the order received, and answers each with a Result.

ACCEPTS is the one table of run states and the commands each accepts: the engine's guards and the
dashboard's buttons both read it.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

STATES = ("ready", "running", "paused", "error", "stopped", "done", "closed", "probing")
_ALWAYS = ("set_hparams", "restore", "set_max_steps", "set_sentinel")
_PROBES = ("probe", "lr_find")  # side runs from a sound state; the run is "probing" until they end or cancel
ACCEPTS: dict[str, frozenset[str]] = {
    "ready": frozenset({"start", "stop", "save", "skip", *_ALWAYS, *_PROBES}),
    "running": frozenset({"pause", "stop", "save", "skip", *_ALWAYS, *_PROBES}),
    "paused": frozenset({"resume", "stop", "save", "skip", *_ALWAYS, *_PROBES}),
    "error": frozenset({"resume", "stop", *_ALWAYS}),  # no checkpoint is ever taken from a failed state
    "stopped": frozenset({"start", "save", "skip", *_ALWAYS, *_PROBES}),
    "done": frozenset({"start", "stop", "save", "skip", *_ALWAYS, *_PROBES}),  # stop: its served process exits
    "closed": frozenset(),
    "probing": frozenset({"cancel"}),  # the main run waits, exactly as it was
}
KINDS = ("start", "pause", "resume", "stop", "set_hparams", "save", "restore", "set_max_steps", "skip", "set_sentinel",
         "probe", "lr_find", "cancel")
MAX_TEXT = 200  # labels and other free text stored in the journal


@dataclass(frozen=True)
class Result:
    ok: bool
    step: int  # the step the command takes effect at (the next optimizer step), or the current step
    message: str = ""
    value: Any = None  # e.g. the id of a saved checkpoint

    def __str__(self) -> str:
        return f"applied at step {self.step}" if self.ok else f"rejected: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "step": self.step, "message": self.message, "value": self.value}


@dataclass
class Command:
    kind: str
    args: dict[str, Any] = field(default_factory=dict)
    result: Result | None = None
    _done: threading.Event = field(default_factory=threading.Event, repr=False)

    def finish(self, result: Result) -> Result:
        self.result = result
        self._done.set()
        return result

    def wait(self, timeout: float | None = 30.0) -> Result:
        if not self._done.wait(timeout):
            raise TimeoutError(f"command {self.kind} was not applied within {timeout} s")
        return self.result


class Controls:
    """The named commands, for anything with submit(kind, **args): the Trainer and the RunClient."""

    def start(self):
        return self.submit("start")

    def pause(self):
        return self.submit("pause")

    def resume(self):
        return self.submit("resume")

    def stop(self):
        return self.submit("stop")

    def set_hparams(self, **changes):
        return self.submit("set_hparams", changes=changes)

    def save_checkpoint(self, label: str | None = None):
        return self.submit("save", label=label)

    def restore(self, checkpoint: int, hparams: dict | None = None, skip_batches: int = 0):
        return self.submit("restore", checkpoint=checkpoint, hparams=hparams or {}, skip_batches=skip_batches)

    def skip(self, batches: int):
        return self.submit("skip", batches=batches)

    def set_max_steps(self, max_steps: int):
        return self.submit("set_max_steps", max_steps=max_steps)

    def set_sentinel(self, policy: str | None = None, window: int | None = None, sigma: float | None = None):
        """The divergence sentinel's policy (warn | pause | skip | rollback) and statistics, live."""
        return self.submit("set_sentinel", policy=policy, window=window, sigma=sigma)

    def probe(self, samples: int = 6, steps: int = 200, lr_range=None, momentum_range=None, seed: int | None = None):
        """Side runs from this state (trainer/probe.py); the result is the journal's "probe" event."""
        return self.submit("probe", samples=samples, steps=steps, lr_range=lr_range, momentum_range=momentum_range,
                           seed=seed)

    def lr_find(self, lo: float = 1e-7, hi: float = 10.0, steps: int = 100):
        """The LR range test from this state; the result is the journal's "lr_find" event."""
        return self.submit("lr_find", lo=lo, hi=hi, steps=steps)

    def cancel(self):
        """End the probe under way: the main run is put back at once."""
        return self.submit("cancel")
