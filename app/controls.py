"""The run's remote control: Start, Pause, Resume, Stop, the step limit, and Save checkpoint.

Which buttons are enabled comes from the engine's own table of states and commands
(Status.accepts), so a button is live exactly when the engine would accept its command.
"""
from __future__ import annotations

import streamlit as st

from .common import as_int, report, status, trainer

BUTTONS = ("Start", "Pause", "Resume", "Stop")  # each sends the command of its name, lower-cased


def _send(kind: str) -> None:
    report(trainer().submit(kind.lower()).wait(10), kind)


def _save() -> None:
    label = st.session_state.get("ckpt_label", "").strip() or None
    report(trainer().save_checkpoint(label).wait(30), "Save checkpoint")


def _set_limit() -> None:
    v = st.session_state["max_steps"]
    if v is None:  # an empty field: unchanged
        st.session_state["max_steps"] = float(trainer().status().max_steps)
        return
    report(trainer().set_max_steps(as_int(v)).wait(10), "Step limit")


def control_bar() -> None:
    s = status()
    cols = st.columns([1, 1, 1, 1, 0.2, 1.8, 4], vertical_alignment="bottom")
    for col, name in zip(cols, BUTTONS):
        live = name.lower() in s.accepts
        col.button(name, key=f"btn_{name.lower()}", on_click=_send, args=(name,), disabled=not live,
                   type="primary" if name in ("Start", "Resume") and live else "secondary", width="stretch")
    if "max_steps" not in st.session_state or st.session_state.get("_limit_seen") != s.max_steps:
        st.session_state["max_steps"] = float(s.max_steps)
        st.session_state["_limit_seen"] = s.max_steps
    cols[5].number_input("Stop at step (0 = never)", value=None, min_value=0.0, step=1000.0, format="%g",
                         key="max_steps", on_change=_set_limit)
    with cols[6], st.form("save_form", border=False, enter_to_submit=True):
        a, b = st.columns([1.5, 1], vertical_alignment="bottom")
        a.text_input("Checkpoint label", key="ckpt_label", placeholder="optional, e.g. before lr bump")
        b.form_submit_button("Save checkpoint", on_click=_save, width="stretch", disabled="save" not in s.accepts)
