"""Do open dashboard tabs slow training? A CLI run of spirals pinned to one core, the real dashboard
attached to it and headless Chromium pinned to another, and the run's steps/s over equal windows
with 0, 1, 3 and again 0 tabs open (interleaved, repeated), plus each tab's websocket traffic and the
load time of a new tab while the run trains, against the floor: the smallest Streamlit page with a
plotly chart (bench/floor_app.py), loaded alternately in the same run. Headless pages are all
visible, so each tab draws as a foreground tab does. The last line is the summary.

    python bench/ui_contention.py [--window 20] [--repeats 1] [--settle 3] [--loads 5]
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
PHASES = (0, 1, 3, 0)  # tabs open in each window of one repeat


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def step_at(db: Path, t: float) -> int:
    """The last step taken at or before unix time t. Each row's `wall` is stamped when its step ends,
    though rows reach the file in batches (~0.2 s) and `ctl status` lags the same and adds a process
    start, so the rows' own times are the honest window boundaries. Assumes one branch (no restores)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        # newest first along the primary key: stops at the first row old enough, no full scan
        row = con.execute("SELECT step FROM steps WHERE wall <= ? ORDER BY branch DESC, step DESC LIMIT 1",
                          (t,)).fetchone()
        return row[0] if row else 0
    finally:
        con.close()


def flushed_past(db: Path, t: float, trainer: subprocess.Popen, timeout: float = 30) -> None:
    """Wait until a step after t is in the journal, so the rows up to t are all there."""
    deadline = time.time() + timeout
    while step_at(db, time.time()) <= step_at(db, t):
        if trainer.poll() is not None or time.time() > deadline:
            sys.exit(f"the trainer stopped writing steps (exit code {trainer.poll()})")
        time.sleep(0.2)


def wait_healthy(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.time() + 120
    while True:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).status == 200:
                return
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            sys.exit("streamlit did not start:\n" + log.read_text(errors="replace")[-3000:])
        time.sleep(0.3)


def core_jiffies(core: int) -> tuple[int, int]:
    """(busy, total) jiffies of one core since boot, from /proc/stat: is the UI's core saturated?"""
    with open("/proc/stat") as f:
        v = next([int(x) for x in line.split()[1:]] for line in f if line.startswith(f"cpu{core} "))
    return sum(v) - v[3] - v[4], sum(v)  # less idle and iowait


def pump(pages: list, seconds: float) -> None:
    """Wait; with pages open, inside Playwright, which delivers websocket events only while it runs."""
    if pages:
        pages[0].wait_for_timeout(seconds * 1000)
    else:
        time.sleep(seconds)


def open_tab(ctx, url: str, received: list[int]) -> tuple[object, float]:
    """A new page on the dashboard, counting the bytes its websockets receive; (page, load seconds)."""
    page = ctx.new_page()
    i = len(received)
    received.append(0)

    def count(payload):
        received[i] += len(payload)

    page.on("websocket", lambda ws: ws.on("framereceived", count))
    t0 = time.perf_counter()
    page.goto(url)
    page.wait_for_selector("[data-testid='stApp']", timeout=120_000)
    try:
        page.wait_for_selector(".js-plotly-plot", state="visible", timeout=120_000)
    except PlaywrightTimeout:  # e.g. the run is not attached: say what the page shows instead of a chart
        alerts = page.locator("[data-testid='stAlert'], [data-testid='stException']").all_inner_texts()
        sys.exit(f"the dashboard drew no chart; it shows: {alerts or page.inner_text('body')[:500]!r}")
    return page, time.perf_counter() - t0


def windows(ctx, url: str, db: Path, trainer: subprocess.Popen, ui_core: int, a) -> tuple[list[tuple], list[float]]:
    """Rounds of 0, 1, 3, 0 open tabs: (repeat, tabs, steps/s, ws kB/s per tab, UI core busy) per window,
    and the tabs' load times."""
    rows, loads, pages, received = [], [], [], []
    for r in range(a.repeats):
        for tabs in PHASES:
            while len(pages) < tabs:
                page, dt = open_tab(ctx, url, received)
                pages.append(page)
                loads.append(dt)
                print(f"opened tab {len(pages)} in {dt:.2f} s")
            while len(pages) > tabs:
                pages.pop().close()
            pump(pages, a.settle)  # page loads and closed sessions are not what is measured
            received[:] = [0] * len(received)
            t0, j0 = time.time(), core_jiffies(ui_core)
            pump(pages, a.window)
            t1, j1 = time.time(), core_jiffies(ui_core)
            busy = (j1[0] - j0[0]) / max(j1[1] - j0[1], 1)
            ws = sum(received) / max(tabs, 1) / (t1 - t0) / 1e3
            flushed_past(db, t1, trainer)
            rows.append((r, tabs, (step_at(db, t1) - step_at(db, t0)) / (t1 - t0), ws, busy))
            print(f"repeat {r}: {tabs} tabs {rows[-1][2]:8.1f} steps/s, UI core {busy:.0%} busy"
                  + (f", ws {ws:.1f} kB/s per tab" if tabs else ""))
    return rows, loads


def serve(script: str, log, *script_args: str) -> tuple[str, subprocess.Popen]:
    """`streamlit run script -- *script_args` on a free port, headless; (url, process) once it answers."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", script, "--server.headless", "true",
                             "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false",
                             "--server.port", str(port), "--", *script_args], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://localhost:{port}"
    wait_healthy(url, proc, Path(log.name))
    return url, proc


def loads_vs_floor(ctx, url: str, floor_url: str, n: int) -> tuple[list[float], list[float]]:
    """A new tab with no other tab open, n times, alternating Panda's page and the one-chart floor
    page (bench/floor_app.py) so both see the same machine: (Panda's load times, the floor's)."""
    ours, floor = [], []
    for _ in range(n):
        for u, out in ((url, ours), (floor_url, floor)):
            page, dt = open_tab(ctx, u, [])
            page.close()
            out.append(dt)
    return ours, floor


def stop(streamlit: subprocess.Popen | None, trainer: subprocess.Popen, run_dir: Path) -> None:
    if streamlit is not None and streamlit.poll() is None:
        streamlit.terminate()
        try:
            streamlit.wait(15)
        except subprocess.TimeoutExpired:
            streamlit.kill()
    if trainer.poll() is None:  # ctl stop (final checkpoint); SIGTERM if it is not served yet; then kill
        ctl = subprocess.run([sys.executable, "-m", "trainer", "ctl", "--run-dir", str(run_dir), "stop"], cwd=ROOT,
                             capture_output=True, timeout=60, check=False)
        if ctl.returncode != 0:
            trainer.terminate()
        try:
            trainer.wait(60)
        except subprocess.TimeoutExpired:
            trainer.kill()
            trainer.wait()


def report(rows: list[tuple], loads: list[float], first_load: float, repeats: int,
           alone: list[float], floor: list[float]) -> None:
    # Each tab window against the no-tab rate interpolated, at its position, between the two no-tab
    # windows of its repeat: this cancels a linear drift of the machine's speed.
    ratios = {1: [], 3: []}
    for r in range(repeats):
        run = [x for x in rows if x[0] == r]
        z0, z1 = run[0][2], run[-1][2]
        for i, (_, tabs, rate, *_) in enumerate(run[1:-1], 1):
            ratios[tabs].append(rate / (z0 + (z1 - z0) * i / (len(run) - 1)))
    print(f"{'tabs':>4} {'steps/s (median)':>17} {'vs no tabs':>11} {'ws kB/s per tab':>16} {'UI core busy':>13}")
    for tabs in (0, 1, 3):
        sel = [x for x in rows if x[1] == tabs]
        ratio = f"{statistics.median(ratios[tabs]):.3f}x" if tabs else "-"
        ws = f"{statistics.median(x[3] for x in sel):.1f}" if tabs else "-"
        print(f"{tabs:>4} {statistics.median(x[2] for x in sel):>17.1f} {ratio:>11} {ws:>16} "
              f"{statistics.median(x[4] for x in sel):>13.0%}")
    ws_all = statistics.mean(x[3] for x in rows if x[1])
    print(f"new-tab load while training, other tabs open: median {statistics.median(loads):.2f} s, "
          f"max {max(loads):.2f} s ({len(loads)} tabs); first load on a fresh server {first_load:.2f} s")
    load, low = statistics.median(alone), statistics.median(floor)
    print(f"new-tab load while training, no other tab: median {load:.2f} s; the one-chart floor page "
          f"{low:.2f} s ({len(alone)} each, alternated): {load / low:.2f}x the floor")
    print(f"ui_contention: 1 tab {statistics.median(ratios[1]):.2f}x, 3 tabs {statistics.median(ratios[3]):.2f}x "
          f"of no tabs (target 3 tabs >= 0.95); ws {ws_all:.1f} kB/s per tab (target <= 25); "
          f"page load {load:.1f} s (target < 2; floor {low:.1f} s, {load / low:.2f}x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--window", type=float, default=20, help="seconds per measured window (default: 20)")
    ap.add_argument("--repeats", type=int, default=1, help="rounds of 0, 1, 3, 0 tabs (default: 1)")
    ap.add_argument("--loads", type=int, default=5, help="new-tab loads of each page against the floor (default: 5)")
    ap.add_argument("--settle", type=float, default=3, help="seconds after opening or closing tabs (default: 3)")
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the cleanup below runs
    print(f"load average {os.getloadavg()[0]:.1f} before starting (anything else running skews the result)")
    cores = sorted(os.sched_getaffinity(0))
    pin = ["taskset", "-c", str(cores[0])] if len(cores) >= 2 else []
    with tempfile.TemporaryDirectory() as tmp, open(f"{tmp}/trainer.log", "wb") as tlog, \
            open(f"{tmp}/streamlit.log", "wb") as slog, \
            open(f"{tmp}/floor.log", "wb") as flog:
        d = Path(tmp) / "run"
        db = d / "journal.sqlite"
        trainer = subprocess.Popen([*pin, sys.executable, "-m", "trainer", "run", "--task", "spirals", "--run-dir",
                                    str(d), "--max-steps", "0", "--ckpt-every", "1000"], cwd=ROOT, stdout=tlog,
                                   stderr=subprocess.STDOUT)
        if pin:  # Streamlit and Chromium inherit this core
            os.sched_setaffinity(0, {cores[1]})
            print(f"trainer on core {cores[0]}; dashboard, Chromium and this bench on core {cores[1]}")
        else:
            print("only one core available: nothing pinned, the trainer and the UI share it")
        streamlit = floor_server = None
        try:
            while not (db.exists() and step_at(db, time.time()) >= 300):  # past start-up and the first evals
                if trainer.poll() is not None:
                    sys.exit(f"the trainer exited with code {trainer.returncode}:\n" + Path(tlog.name).read_text())
                time.sleep(0.2)
            url, streamlit = serve("streamlit_app.py", slog, "--run-dir", str(d))
            floor_url, floor_server = serve(str(ROOT / "bench" / "floor_app.py"), flog)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM,
                                            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
                ctx = browser.new_context(viewport={"width": 1440, "height": 1000})  # tabs of one window
                page, first_load = open_tab(ctx, url, [])  # the first script run imports the app: not a tab's cost
                page.close()
                open_tab(ctx, floor_url, [])[0].close()  # the same for the floor
                rows, loads = windows(ctx, url, db, trainer, cores[1] if pin else cores[0], a)
                alone, floor = loads_vs_floor(ctx, url, floor_url, a.loads)
                browser.close()
        finally:
            if floor_server is not None:
                floor_server.kill()
            stop(streamlit, trainer, d)
    report(rows, loads, first_load, a.repeats, alone, floor)


if __name__ == "__main__":
    main()
