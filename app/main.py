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
    ddp = f"data parallel **{s.run.world_size} ranks** ({s.run.backend}) · " if s.run.world_size > 1 else ""
    st.caption(f"task **{s.run.task_name}** · optimizer **{s.run.optimizer}** · device **{s.run.device}** · "
               f"{ddp}branch **{s.branch}** · {s.run.run_dir}")
    show_flash()
    if s.state in DETACHED:
        detached_banner()
    control_bar()
    every = run_every()
    live_view(every)
    chart_options()
    # Only the open tab is drawn: a hidden tab's charts would still be built by plotly in the browser
    # and re-sent on every tick (Diagnostics alone has eight). Picking a tab reruns the page.
    slow = every and every * 5  # the tables change more slowly than the curve
    panels = {"Checkpoints": [(checkpoint_table, slow), (restore_panel, slow)],
              "Probe": [(probe_panel, every)],  # its progress bar follows the probe every second
              "Anomalies": [(anomalies_panel, slow)],
              "Diagnostics": [(diagnostics_view, slow)],
              "Events": [(event_log, slow)]}
    for tab, fragments in zip(st.tabs(list(panels), key="main_tab", on_change="rerun"), panels.values()):
        if tab.open:
            with tab:
                for draw, pace in fragments:
                    st.fragment(run_every=pace)(draw)()
