"""Commands are data: the UI, the CLI and tests send them from any thread; the training thread applies
them between optimizer steps, in the order received, and answers each with a Result.

ACCEPTS is the one table of run states and the commands each accepts: the engine's guards and the
dashboard's buttons both read it.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

STATES = ("ready", "running", "paused", "error", "stopped", "done", "closed")
_ALWAYS = ("set_hparams", "restore", "set_max_steps", "set_sentinel")
ACCEPTS: dict[str, frozenset[str]] = {
    "ready": frozenset({"start", "stop", "save", "skip", *_ALWAYS}),
    "running": frozenset({"pause", "stop", "save", "skip", *_ALWAYS}),
    "paused": frozenset({"resume", "stop", "save", "skip", *_ALWAYS}),
    "error": frozenset({"resume", "stop", *_ALWAYS}),  # no checkpoint is ever taken from a failed state
    "stopped": frozenset({"start", "save", "skip", *_ALWAYS}),
    "done": frozenset({"start", "stop", "save", "skip", *_ALWAYS}),  # stop: its served process exits
    "closed": frozenset(),
}
KINDS = ("start", "pause", "resume", "stop", "set_hparams", "save", "restore", "set_max_steps", "skip", "set_sentinel")
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
