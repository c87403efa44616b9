"""Small helpers the panels share: this session's run, its status and journal reader, and messages
that survive a rerun."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from trainer import Reader, Result, Status
from trainer.client import RunClient

from . import runtime

# One read-only journal view per run directory, shared by every session: each reading thread opens
# its own SQLite connection on first use (Reader keeps them per thread).
_READERS: dict[str, Reader] = {}
DETACHED = ("idle", "finished", "busy")  # states read from the journal: no trainer serves the run


def run_dir() -> Path:
    """The run this session shows; chosen once per session (runtime.pick_run), changed by the runs panel."""
    d = st.session_state.get("_run_dir")
    if d is None:
        d = st.session_state["_run_dir"] = str(runtime.pick_run(st.session_state.get("_args", {})))
    return Path(d)


def show_run(d: Path | str) -> None:
    st.session_state["_run_dir"] = str(Path(d).resolve())


def trainer() -> RunClient | runtime.Detached:
    """The run's controls: its trainer process's client, or a Detached view that can resume it."""
    return runtime.handle(run_dir())


def status() -> Status:
    return runtime.status(run_dir())


def reader() -> Reader:
    key = str(run_dir())
    r = _READERS.get(key)
    if r is None:
        r = _READERS[key] = Reader(key)
    return r


def page_key(s: Status) -> tuple:
    """What the whole page draws from the status, outside the refreshing fragments."""
    return s.state, s.branch, s.hparams, s.max_steps


def follow_live(s: Status) -> None:
    """Called by the fragments: when the state, branch, hyperparameters or step limit changed (a
    command from this tab or another), rerun the whole page so its buttons, header and fields follow."""
    seen = st.session_state.get("_page_seen")
    if seen is not None and seen != page_key(s):
        st.session_state["_page_seen"] = page_key(s)
        st.rerun(scope="app")


def as_int(v):
    """A whole number from a number field as an int; anything else unchanged, for the engine to refuse
    with its own message (a field typed as int would silently truncate 2.5 to 2)."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


def report(result: Result, what: str) -> None:
    """Show a command's result after the rerun: a toast when applied, an error when rejected.

    A Result is given only once what the command did is in the journal, so the page drawn next
    already shows it.
    """
    st.session_state.setdefault("_flash", []).append(
        ("ok" if result.ok else "error", f"{what}: {result}" if result.ok else f"{what} {result}"))


def show_flash() -> None:
    for kind, msg in st.session_state.pop("_flash", []):
        if kind == "ok":
            st.toast(msg, icon="✅")
        else:
            st.error(msg, icon="⚠️")


def fmt(v, spec: str = ".4g", none: str = "—") -> str:
    return none if v is None else format(v, spec)
