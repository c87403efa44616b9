"""Small helpers the panels share: the trainer for this server, and messages that survive a rerun."""
from __future__ import annotations

import streamlit as st

from trainer import Result, Trainer

from . import runtime


def trainer() -> Trainer:
    args = st.session_state.get("_args", {})
    return runtime.current(task=args.get("task", "spirals"), run_dir=args.get("run_dir"))


def report(result: Result, what: str) -> None:
    """Show a command's result after the rerun: a toast when applied, an error when rejected."""
    trainer().journal.flush()  # so the page drawn next already shows what the command did
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
