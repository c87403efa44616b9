"""End to end: the real `streamlit run` on a free localhost port, driven by headless Chromium.

open -> Start -> the loss chart gains points -> Save checkpoint -> set Learning rate (Enter) -> marker
and timeline show it -> the restore picker lists a newer automatic checkpoint unprompted -> Restore the
saved one with an lr override -> a faded branch appears, the sidebar shows the live lr -> Pause.
Apply is in view at 1366x768. A screenshot is kept on failure.
"""
import contextlib
import os
import re
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT, descendants, kill_trainers
from trainer.client import RunClient, is_live, run_state
from trainer.journal import Reader

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (.ci/run installs it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(runs: Path, *args) -> tuple[str, subprocess.Popen]:
    """`streamlit run streamlit_app.py -- *args` on a free port, with PANDA_RUNS=runs; (url, process)."""
    port = free_port()
    env = {**os.environ, "PANDA_RUNS": str(runs)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(port),
         "--server.headless", "true", "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false",
         "--", *map(str, args)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://localhost:{port}"
    deadline = time.time() + 90
    while True:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).status == 200:
                return url, proc
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail("streamlit did not start:\n" + proc.stdout.read().decode(errors="replace")[-3000:])
        time.sleep(0.3)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    url, proc = start_server(runs, "--run-dir", runs / "e2e")
    try:
        yield {"url": url, "proc": proc, "run_dir": runs / "e2e"}
    finally:
        if proc.poll() is None:
            proc.kill()
        kill_trainers(runs)  # trainer processes outlive the server by design


def browser_page(request, viewport):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        pg = browser.new_page(viewport=viewport)
        pg.set_default_timeout(30_000)
        yield pg
        if request.node.rep_call.failed if hasattr(request.node, "rep_call") else True:
            ARTIFACTS.mkdir(exist_ok=True)
            pg.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"))
        browser.close()


@pytest.fixture
def page(server, request):
    yield from browser_page(request, {"width": 1440, "height": 1000})


@pytest.fixture
def laptop(server, request):
    yield from browser_page(request, {"width": 1366, "height": 768})


def plot(page, index=0, tail=3):
    """The index-th plotly chart's traces: name, point count, last x and the last `tail` y values."""
    return page.evaluate("""([i, tail]) => {
        const el = document.querySelectorAll('.js-plotly-plot')[i];
        if (!el || !el.data) return null;
        // _fullData holds the arrays decoded (plotly sends NumPy data as base64)
        return {data: (el._fullData || el.data).map(t => ({name: t.name, n: (t.x || []).length,
                                                         last: (t.x || [])[(t.x || []).length - 1],
                                                         y: Array.from(t.y || []).slice(-tail)})),
                annotations: ((el.layout || {}).annotations || []).map(a => a.text)};
    }""", [index, tail])


def wait_for(fn, what, timeout=45):
    end = time.time() + timeout
    last = None
    while time.time() < end:
        last = fn()
        if last:
            return last
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}; last: {last}")


def open_picker(page, label):
    """Open a Streamlit selectbox. Scroll first: the combobox's popover closes when the page scrolls,
    which a click on an element below the fold would do."""
    box = page.locator("[data-testid='stSelectbox']").filter(has_text=label)
    box.scroll_into_view_if_needed()
    box.get_by_role("button", name="Open").click()  # the combobox's own toggle


def pick(page, label, option):
    """Choose an option in a Streamlit selectbox, retried while the page reruns."""
    for _ in range(5):
        open_picker(page, label)
        opt = page.get_by_role("option", name=option)
        try:
            opt.first.wait_for(timeout=2000)
            opt.first.click(timeout=2000)  # a refreshing fragment may close the popover in between
        except Exception:
            page.keyboard.press("Escape")
            continue
        return
    raise AssertionError(f"could not choose {option!r} in {label!r}")


def listed(page, label) -> list[int]:
    """The checkpoint ids the selectbox offers now (opened and closed again, nothing chosen)."""
    open_picker(page, label)
    try:
        page.get_by_role("option").first.wait_for(timeout=2000)
        texts = page.get_by_role("option").all_inner_texts()
    except Exception:
        texts = []
    finally:
        page.keyboard.press("Escape")
    return [int(t.split(" ", 1)[0].lstrip("#")) for t in texts if t.startswith("#")]


def checkpoints(db, where="1"):
    con = sqlite3.connect(db)
    try:
        return con.execute(f"SELECT id, step, label FROM checkpoints WHERE {where} ORDER BY id").fetchall()
    finally:
        con.close()


def trace(fig, name):
    return next((t for t in (fig or {}).get("data", []) if t["name"] == name), None)


def test_babysitting_session(server, page):
    from playwright.sync_api import expect

    page.goto(server["url"])
    page.wait_for_selector("[data-testid='stApp']")
    page.wait_for_selector(".js-plotly-plot")  # the first script run has drawn the page
    start = page.get_by_role("button", name="Start", exact=True)
    expect(start).to_be_enabled()
    for _ in range(3):  # a click that lands while the first run is still finishing is not delivered
        start.click()
        try:
            expect(page.get_by_text("running", exact=True).first).to_be_visible(timeout=10_000)
            break
        except AssertionError:
            continue

    first = wait_for(lambda: (t := trace(plot(page), "train loss")) and t["n"] > 0 and t, "the first loss points")
    wait_for(lambda: (t := trace(plot(page), "train loss")) and t["last"] > first["last"], "the curve to grow")

    page.get_by_label("Checkpoint label").fill("e2e-save")
    page.get_by_role("button", name="Save checkpoint", exact=True).click()
    db = server["run_dir"] / "journal.sqlite"
    cid, step, _ = wait_for(lambda: checkpoints(db, "label = 'e2e-save'"), "the labelled checkpoint")[0]

    sidebar = page.locator("[data-testid='stSidebar']")
    lr = sidebar.get_by_label("Learning rate", exact=True)
    lr.fill("0.05")
    lr.press("Enter")  # Enter applies
    wait_for(lambda: any("lr 0.1 → 0.05" in a for a in plot(page)["annotations"]), "the lr marker")
    wait_for(lambda: 0.05 in trace(plot(page), "lr")["y"], "the lr timeline")

    # The restore picker refreshes while training: a checkpoint saved after the page was last drawn
    # whole (the Apply above) can be picked without touching anything. Automatic checkpoints are
    # retired within seconds at this speed (the last 5 are kept), so any id newer than those saved
    # by now proves a refresh.
    time.sleep(1.5)
    newest = max(c[0] for c in checkpoints(db))
    wait_for(lambda: any(i > newest for i in listed(page, "Checkpoint")), "the picker to list a newer checkpoint",
             timeout=30)

    pick(page, "Checkpoint", f"#{cid} ")
    form = page.locator("[data-testid='stForm']").filter(has_text="Restoring brings back")
    expect(form).to_contain_text("learning rate 0.1")  # what the checkpoint brings back
    override = form.get_by_label("Learning rate", exact=True)
    override.fill("0.07")
    time.sleep(6)  # a refresh of the restore panel must not wipe a value being typed
    expect(override).to_have_value("0.07")
    page.get_by_role("button", name="Restore", exact=True).click()
    wait_for(lambda: trace(plot(page), "abandoned branch"), "a faded branch")
    expect(lr).to_have_value("0.07")  # the sidebar shows the live value after the restore

    page.get_by_role("button", name="Pause", exact=True).click()
    expect(page.get_by_text("paused", exact=True).first).to_be_visible()
    con = sqlite3.connect(db)
    kinds = [k for (k,) in con.execute("SELECT kind FROM events ORDER BY id")]
    branch = con.execute("SELECT parent, fork_step FROM branches WHERE id = 1").fetchone()
    con.close()
    # (a checkpoint's event is written once its file is on disk, by the journal's thread: an automatic
    # checkpoint taken just before the pause may land after the pause's event)
    assert branch == (0, step) and "restore" in kinds and [k for k in kinds if k != "checkpoint"][-1] == "pause"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "babysitting-session.png"))


def test_apply_is_in_view_on_a_laptop_screen(server, laptop):
    from playwright.sync_api import expect

    laptop.goto(server["url"])
    laptop.wait_for_selector(".js-plotly-plot")
    apply = laptop.locator("[data-testid='stSidebar']").get_by_role("button", name="Apply", exact=True)
    expect(apply).to_be_visible()
    box = apply.bounding_box()
    assert box["y"] >= 0 and box["y"] + box["height"] <= 768, box
    ARTIFACTS.mkdir(exist_ok=True)
    laptop.screenshot(path=str(ARTIFACTS / "laptop-1366x768.png"))


def test_server_stop_leaves_the_run_training(server):
    """The trainer is its own process: stopping the web server (SIGTERM) changes nothing for the run."""
    d = server["run_dir"]
    assert run_state(d) == "live"
    with RunClient(d) as c:
        assert c.resume().wait().ok  # the babysitting session left it paused
        server["proc"].send_signal(signal.SIGTERM)
        server["proc"].wait(60)
        before = c.status().step
        wait_for(lambda: c.status().step > before + 50, "training to go on without the server")
        assert c.status().state == "running"
        assert c.stop().wait().ok  # and ctl/stop still ends it cleanly


def first_page(page, url):
    page.goto(url)
    page.wait_for_selector("[data-testid='stApp']")
    page.wait_for_selector(".js-plotly-plot", timeout=90_000)  # the first script run has drawn the page


def hparam_events(db):
    con = sqlite3.connect(db)
    try:
        return [m for (m,) in con.execute("SELECT message FROM events WHERE kind = 'hparams' ORDER BY id")]
    finally:
        con.close()


@pytest.fixture
def bare_page(request):
    yield from browser_page(request, {"width": 1440, "height": 1000})


def test_attach_to_a_cli_run_survive_kill_9_of_either_side(tmp_path, bare_page):
    """A run started from the CLI: the dashboard attaches (Open run) and changes its lr; kill -9 of the
    server leaves it training and a fresh server re-attaches with its history; kill -9 of the trainer
    shows how it ended, and Resume in the UI continues it in a new trainer process."""
    from playwright.sync_api import expect

    page = bare_page
    runs = tmp_path / "runs"
    cli, db = runs / "cli", runs / "cli" / "journal.sqlite"
    procs = []
    try:
        url, s1 = start_server(runs)
        procs.append(s1)
        first_page(page, url)  # a fresh machine: the default spirals run, ready
        trainer = subprocess.Popen([sys.executable, "-m", "trainer", "run", "--task", "spirals", "--run-dir", cli,
                                    "--max-steps", "0"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        procs.append(trainer)
        wait_for(lambda: is_live(cli) and (cli / "control.sock").exists(), "the CLI run to be served")

        page.get_by_text("Open run").click()
        for _ in range(3):  # a click that lands while the run list's fragment refreshes is lost
            pick(page, "Run", "cli · 🟢 live")
            page.locator(".st-key-btn_open_run button").first.click()
            try:
                expect(page.get_by_role("heading", name=re.compile(r"Panda · cli$"))).to_be_visible(timeout=20_000)
                break
            except AssertionError:
                continue
        expect(page.get_by_text("running", exact=True).first).to_be_visible()
        lr = page.locator("[data-testid='stSidebar']").get_by_label("Learning rate", exact=True)
        lr.fill("0.05")
        lr.press("Enter")
        wait_for(lambda: "lr 0.1 → 0.05" in hparam_events(db), "the CLI process to apply the lr")

        s1.kill()  # kill -9 of the web server
        s1.wait(30)
        with RunClient(cli) as c:
            before = c.status().step
            wait_for(lambda: c.status().step > before + 50, "training to go on without the server")
        url, s2 = start_server(runs)  # no --run-dir: it finds the run that trains
        procs.append(s2)
        first_page(page, url)
        expect(page.get_by_text("running", exact=True).first).to_be_visible()
        wait_for(lambda: any("lr 0.1 → 0.05" in a for a in plot(page)["annotations"]), "the history, lr marker too")

        trainer.kill()  # kill -9 of the trainer process
        trainer.wait(30)
        banner = page.get_by_text("without closing the run")
        expect(banner).to_be_visible(timeout=20_000)
        expect(page.get_by_text(f"(pid {trainer.pid})")).to_be_visible()
        resume = page.get_by_role("button", name="Resume from checkpoint")
        expect(resume).to_be_visible()
        resume.click()
        expect(page.get_by_text("running", exact=True).first).to_be_visible(timeout=60_000)
        con = sqlite3.connect(db)
        kinds = [k for (k,) in con.execute("SELECT kind FROM events ORDER BY id")]
        con.close()
        assert kinds.count("open") == 1 and run_state(cli) == "live"
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "resumed-after-kill.png"))
    finally:
        for p in procs:
            p.kill()
        kill_trainers(runs)


def long_run(d: Path, steps: int, spike_at: int) -> None:
    """A real quadratic run closed at step 20, its journal then extended to `steps` rows through the
    journal's own writer (a long history in seconds), one loss spike planted."""
    from conftest import run_to
    from trainer import RunConfig, Trainer
    from trainer.journal import Journal, StepRow

    t = Trainer.create(RunConfig(task="quadratic", run_dir=str(d)))
    run_to(t, 20)
    t.set_max_steps(0).wait()
    t.close()
    j = Journal(d / "journal.sqlite")
    rng = __import__("numpy").random.default_rng(0)
    loss = 0.5 + 0.05 * rng.random(steps)
    loss[spike_at - 1] = 25.0
    for a in range(20, steps, 20_000):
        j.log_steps([StepRow(0, s + 1, s / 10, float(loss[s]), 0.1, 0.0, 0.0, 32, 1.0, 3200.0, 1.7e9 + s)
                     for s in range(a, min(steps, a + 20_000))])
        j.flush()
    for cid, step in ((98, 30_000), (99, 50_000)):
        j.execute("INSERT INTO checkpoints (id, step, epoch, branch, path, wall, val_loss, hparams, label, kind) "
                  f"VALUES ({cid}, {step}, 0, 0, 'checkpoints/{cid}.pt', 0, 0.4, '{{}}', 'mid', 'manual')")
    j.close()


def click_checkpoint(page, cid: int) -> None:
    """Click checkpoint `cid` on the strip under the loss chart, where plotly drew it."""
    x, y = page.evaluate("""cid => {
        for (const el of document.querySelectorAll('.js-plotly-plot')) {
            const t = (el._fullData || []).find(t => t.name === 'checkpoint' && t.mode === 'markers+text');
            if (!t) continue;
            const i = Array.from(t.customdata).indexOf(cid), xa = el._fullLayout.xaxis, ya = el._fullLayout.yaxis;
            const r = el.getBoundingClientRect();
            return [r.left + xa._offset + xa.l2p(t.x[i]), r.top + ya._offset + ya.l2p(t.y[i])];
        }
        return [null, null];
    }""", cid)
    page.mouse.move(x, y)  # plotly clicks the point it hovers: hover first
    page.wait_for_timeout(500)
    page.mouse.click(x, y)


def loss_plot(page):
    return page.evaluate("""() => {
        for (const el of document.querySelectorAll('.js-plotly-plot')) {
            const d = el._fullData || [];
            const t = d.find(t => t.name === 'train loss');
            if (t) return {x: Array.from(t.x), y: Array.from(t.y),
                           spikes: (d.find(t => t.name === 'spike') || {x: []}).x.length};
        }
        return null;
    }""")


def test_a_long_run_box_selected_zooms_to_every_step(tmp_path, bare_page):
    """10^5 steps: the whole run shows the planted spike; a box drawn on the chart redraws that range
    step by step; Whole run returns; a click on a checkpoint in the strip picks it in the Restore form."""
    from playwright.sync_api import expect

    page, runs = bare_page, tmp_path / "runs"
    long_run(runs / "long", 100_000, spike_at=61_234)
    url, proc = start_server(runs, "--run-dir", runs / "long")
    try:
        first_page(page, url)
        whole = wait_for(lambda: (p := loss_plot(page)) and p["x"] and p["x"][-1] == 100_000 and p, "the whole run")
        assert 61_234 in whole["x"] and whole["y"][whole["x"].index(61_234)] == 25.0 and whole["spikes"] >= 1
        assert len(whole["x"]) <= 600
        drag = page.locator(".js-plotly-plot .nsewdrag[data-subplot='xy']").first
        drag.scroll_into_view_if_needed()
        box = drag.bounding_box()
        y0, y1 = box["y"] + box["height"] * 0.1, box["y"] + box["height"] * 0.9
        page.mouse.move(box["x"] + box["width"] * 0.40, y0)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.43, y1, steps=8)
        page.mouse.up()
        caption = page.get_by_text(re.compile(r"Zoomed to steps [\d,]+–[\d,]+"))
        expect(caption).to_be_visible(timeout=30_000)
        lo, hi = (int(v.replace(",", "")) for v in re.search(r"steps ([\d,]+)–([\d,]+)", caption.inner_text()).groups())
        assert 30_000 < lo < hi < 50_000 and hi - lo > 1000
        zoomed = wait_for(lambda: (p := loss_plot(page)) and p["x"] and p["x"][0] == lo and p, "the zoomed range")
        assert zoomed["x"] == list(range(lo, hi + 1))  # every step of the range, none sampled away
        page.locator(".st-key-btn_whole_run button").click()
        expect(caption).to_be_hidden(timeout=30_000)
        wait_for(lambda: (p := loss_plot(page)) and p["x"] and p["x"][-1] == 100_000 and p["x"][0] == 1, "the whole run again")
        page.locator(".st-key-checkpoint_strip").scroll_into_view_if_needed()
        click_checkpoint(page, 98)  # the strip under the chart: a click picks the checkpoint for Restore
        expect(page.get_by_text("Checkpoint #98 picked")).to_be_visible(timeout=30_000)
        page.get_by_role("tab", name="Checkpoints").click()
        picker = page.locator("[data-testid='stSelectbox']").filter(has_text="Checkpoint")
        wait_for(lambda: picker.locator("input").first.input_value().startswith("#98 · step 30000"),
                 "#98 in the Restore form, not the default (the newest, #99)")
    finally:
        proc.kill()


def test_diverge_then_recover_in_one_click(tmp_path, bare_page):
    """lr 1000 under the pause policy: the sentinel pauses before the blow-up is applied, the banner
    offers Recover with the plan filled in, one click restores the checkpoint before it (lr x 0.5),
    and after Resume the curve is back at its old level, the blown-up path faded beside it."""
    from playwright.sync_api import expect

    page = bare_page
    runs = tmp_path / "runs"
    d = runs / "boom"
    procs = []
    try:
        procs.append(subprocess.Popen([sys.executable, "-m", "trainer", "run", "--task", "spirals", "--run-dir", d,
                                       "--max-steps", "300", "--ckpt-every", "100", "--sentinel", "pause",
                                       "--keep-serving"], cwd=ROOT, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.STDOUT))
        wait_for(lambda: is_live(d) and (d / "control.sock").exists(), "the run to be served")
        with RunClient(d) as c:
            wait_for(lambda: c.status().state == "done", "the first 300 steps", timeout=90)
            url, server = start_server(runs, "--run-dir", d)
            procs.append(server)
            first_page(page, url)
            assert c.set_hparams(lr=1000.0).wait().ok and c.set_max_steps(0).wait().ok
            assert c.start().wait().ok
            wait_for(lambda: c.status().state == "error", "the sentinel to pause the run")
            start = c.status().anomaly["start"]
            expect(page.get_by_text("The sentinel paused training")).to_be_visible(timeout=20_000)
            page.get_by_role("button", name="Recover", exact=True).first.click()
            wait_for(lambda: c.status().state == "paused" and c.status().anomaly is None, "the recovery")
            s = c.status()
            assert s.step == 300 and s.hparams.lr == 0.05
            page.get_by_role("button", name="Resume", exact=True).click()
            wait_for(lambda: c.status().step > 500, "training to go on from the checkpoint", timeout=60)
            fig = wait_for(lambda: (f := plot(page, tail=100)) and (t := trace(f, "train loss")) and t["last"] > 450 and f,
                           "the curve to come back")
            # the level, not one minibatch: this lineage has a deterministic 0.77 spike at step 528
            assert statistics.median(trace(fig, "train loss")["y"]) < 0.3, trace(fig, "train loss")
            assert trace(fig, "abandoned branch")  # the blown-up path, kept and faded
            con = sqlite3.connect(d / "journal.sqlite")
            restore = con.execute("SELECT data FROM events WHERE kind = 'restore'").fetchone()
            con.close()
            assert restore and '"fork_step": 300' in restore[0] and start > 300
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "recovered.png"))
    finally:
        for p in procs:
            p.kill()
        kill_trainers(runs)


def test_run_a_probe_and_adopt_the_winner(tmp_path, bare_page):
    """From the Probe tab: run a probe on a paused run, watch its fan appear on the loss chart and
    its ranked table fill, Adopt the winner (a recorded lr change), then the LR range test's chart."""
    from playwright.sync_api import expect

    page = bare_page
    runs = tmp_path / "runs"
    d = runs / "probe"
    procs = []
    try:
        procs.append(subprocess.Popen([sys.executable, "-m", "trainer", "run", "--task", "spirals", "--run-dir", d,
                                       "--max-steps", "300", "--keep-serving"], cwd=ROOT, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.STDOUT))
        wait_for(lambda: is_live(d) and (d / "control.sock").exists(), "the run to be served")
        with RunClient(d) as c:
            wait_for(lambda: c.status().state == "done", "the first 300 steps", timeout=90)
            url, server = start_server(runs, "--run-dir", d)
            procs.append(server)
            first_page(page, url)
            page.get_by_role("tab", name="Probe").click()
            page.get_by_role("button", name="Run probe").click()
            wait_for(lambda: c.status().state == "done" and Reader(d).events(kinds=("probe",)), "the probe", 90)
            best = Reader(d).events(kinds=("probe",))[-1]["data"]["results"][0]
            fig = wait_for(lambda: (f := plot(page)) and trace(f, "best side run") and f, "the fan on the chart")
            assert trace(fig, "best side run")["last"] == 500  # 200 steps from step 300
            assert sum(t["name"] in ("probe side run", "best side run") for t in fig["data"]) == 6
            expect(page.get_by_text("probe of 6 settings x 200 steps from step 300")).to_be_visible(timeout=20_000)
            page.get_by_role("button", name="Adopt", exact=True).click()
            wait_for(lambda: c.status().hparams.lr == float(f"{best['lr']:.4g}"), "the adopted lr")
            assert Reader(d).events(kinds=("hparams",))[-1]["data"]["new"] == float(f"{best['lr']:.4g}")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "probe.png"), full_page=True)
            page.get_by_role("button", name="Run LR range test").click()
            wait_for(lambda: c.status().state == "done" and Reader(d).events(kinds=("lr_find",)), "the range test", 60)
            # its result, not the progress bar's "...from step 300: step 0 of 100" a stale element may still show
            expect(page.get_by_text(re.compile(r"^LR range test from step 300: (?!step \d)"))).to_be_visible(timeout=20_000)
            assert c.status().step == 300 and Reader(d).lineage(0) == [(0, 0, float("inf"))]
            page.screenshot(path=str(ARTIFACTS / "lr_find.png"), full_page=True)
    finally:
        for p in procs:
            p.kill()
        kill_trainers(runs)


def test_attach_to_a_two_rank_torchrun_job_and_change_lr(tmp_path, bare_page):
    """The dashboard attaches to a data-parallel job exactly as to any run: rank 0 serves it. It shows
    the ranks, and an lr typed in the sidebar reaches both ranks at the same step (rank 0 checks the
    replicas' step and weights at the sync the pause makes)."""
    from playwright.sync_api import expect

    page = bare_page
    runs = tmp_path / "runs"
    d = runs / "ddp"
    job = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                            "-m", "trainer", "run", "--task", "spirals", "--run-dir", d, "--max-steps", "1000000",
                            "--keep-serving"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                           start_new_session=True)
    server = None
    try:
        wait_for(lambda: is_live(d) and (d / "control.sock").exists(), "the job to be served", timeout=90)
        url, server = start_server(runs, "--run-dir", d)
        first_page(page, url)
        expect(page.get_by_text(re.compile(r"rank 1: [\d,]+ samples/s")).first).to_be_visible(timeout=30_000)
        expect(page.get_by_text("2 ranks").first).to_be_visible()
        lr = page.locator("[data-testid='stSidebar']").get_by_label("Learning rate", exact=True)
        lr.fill("0.05")
        lr.press("Enter")
        wait_for(lambda: any("lr 0.1 → 0.05" in m for m in hparam_events(d / "journal.sqlite")), "the lr change")
        with RunClient(d) as c:
            assert c.pause().wait().ok  # a sync round: rank 0 compares rank 1's step and weights with its own
            s = c.status()
            assert s.hparams.lr == 0.05 and s.state == "paused" and s.run.world_size == 2
        kinds = {e["kind"] for e in Reader(d).events()}
        assert "ddp" in kinds and "replicas" not in kinds and "error" not in kinds
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "ddp.png"))
    finally:
        if server is not None:
            server.kill()
        ranks = descendants(job.pid)
        os.killpg(job.pid, signal.SIGKILL)
        for pid in ranks:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        job.wait(30)
        kill_trainers(runs)
