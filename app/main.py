"""The page: sidebar controls, the run's remote control, the live view, and tabs for checkpoints,
probes (side runs and the LR range test), anomalies (Recover, the sentinel's policy), diagnostics and events."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from .checkpoints_panel import restore_panel
from .common import DETACHED, page_key, show_flash, status
from .controls import control_bar, detached_banner
from .diagnostics import diagnostics_view
from .hparams_panel import hparams_panel
from .live import chart_options, checkpoint_table, event_log, live_view, run_every
from .probe_panel import probe_panel
from .recover import anomalies_panel
from .runs_panel import runs_panel


# Denser metrics, so eight of them fit one row on a laptop screen; a tighter sidebar, so Apply and
# the form above the fold fit 768 pixels.
CSS = """<style>
[data-testid="stMetricValue"] { font-size: 1.55rem; }
[data-testid="stMainBlockContainer"] { padding-top: 2.2rem; }
[data-testid="stSidebarHeader"] { height: 2rem; margin-bottom: 0; }
[data-testid="stSidebarUserContent"] { padding-top: 0; }
</style>"""


def main(args: dict) -> None:
    st.session_state.setdefault("_args", args)
    st.html(CSS)
    try:
        s = status()
    except Exception as e:  # the run given on the command line is locked by another process, or broken
        st.error(f"Cannot open the run: {type(e).__name__}: {e}", icon="⚠️")
        st.caption("Open another run or start a new one in the sidebar.")
        with st.sidebar:
            runs_panel()
        return
    st.session_state["_page_seen"] = page_key(s)
    with st.sidebar:
        hparams_panel()
        st.divider()
        runs_panel()
    st.markdown(f"### 🐼 Panda &nbsp;·&nbsp; `{Path(s.run.run_dir).name}`")
    st.caption(f"task **{s.run.task_name}** · optimizer **{s.run.optimizer}** · device **{s.run.device}** · "
               f"branch **{s.branch}** · {s.run.run_dir}")
    show_flash()
    if s.state in DETACHED:
        detached_banner()
    control_bar()
    every = run_every()
    live_view(every)
    chart_options()
    tab_ckpt, tab_probe, tab_anom, tab_diag, tab_events = st.tabs(["Checkpoints", "Probe", "Anomalies",
                                                                   "Diagnostics", "Events"])
    slow = every and every * 5  # the tables change more slowly than the curve
    with tab_ckpt:
        st.fragment(run_every=slow)(checkpoint_table)()
        st.fragment(run_every=slow)(restore_panel)()  # lists checkpoints saved after the page was drawn
    with tab_probe:  # its progress bar follows the probe every second
        st.fragment(run_every=every)(probe_panel)()
    with tab_anom:
        st.fragment(run_every=slow)(anomalies_panel)()
    with tab_diag:
        st.fragment(run_every=slow)(diagnostics_view)()
    with tab_events:
        st.fragment(run_every=slow)(event_log)()
