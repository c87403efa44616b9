"""The page: sidebar controls, the run's remote control, the live view, checkpoints and events."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from .checkpoints_panel import restore_panel
from .common import show_flash, status
from .controls import control_bar
from .hparams_panel import hparams_panel
from .live import chart_options, checkpoint_table, event_log, live_view, run_every
from .runs_panel import runs_panel


# Denser metrics, so eight of them fit one row on a laptop screen.
CSS = """<style>
[data-testid="stMetricValue"] { font-size: 1.55rem; }
[data-testid="stMainBlockContainer"] { padding-top: 2.2rem; }
</style>"""


def main(args: dict) -> None:
    st.session_state.setdefault("_args", args)
    st.session_state["_seen_state"] = status().state
    with st.sidebar:
        hparams_panel()
        st.divider()
        runs_panel()
    s = status()
    st.html(CSS)
    st.markdown(f"### 🐼 Panda &nbsp;·&nbsp; `{Path(s.run.run_dir).name}`")
    st.caption(f"task **{s.run.task_name}** · optimizer **{s.run.optimizer}** · device **{s.run.device}** · "
               f"branch **{s.branch}** · {s.run.run_dir}")
    show_flash()
    control_bar()
    every = run_every()
    st.fragment(run_every=every)(live_view)()
    chart_options()
    tab_ckpt, tab_events = st.tabs(["Checkpoints", "Events"])
    slow = every and every * 5  # the tables change more slowly than the curve
    with tab_ckpt:
        st.fragment(run_every=slow)(checkpoint_table)()
        restore_panel()
    with tab_events:
        st.fragment(run_every=slow)(event_log)()
