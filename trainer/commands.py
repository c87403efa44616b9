"""Commands are data: the UI, the CLI and tests send them from any thread; the training thread applies
them between optimizer steps, in the order received, and answers each with a Result."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

KINDS = ("start", "pause", "resume", "stop", "set_hparams", "save", "restore", "set_max_steps")


@dataclass(frozen=True)
class Result:
    ok: bool
    step: int  # the step the command takes effect at (the next optimizer step), or the current step
    message: str = ""
    value: Any = None  # e.g. the id of a saved checkpoint

    def __str__(self) -> str:
        return f"applied at step {self.step}" if self.ok else f"rejected: {self.message}"


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
