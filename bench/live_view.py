"""The live loss chart on long runs: one tick (the journal reads, then the figure built and serialized
as st.plotly_chart serializes it) on synthetic journals of 10^4 to 10^6 steps.

Each journal is written through the project's own Journal (log_steps + flush), shaped like a real
run: three branches (two restores, each leaving an abandoned path), hyperparameter events, an
evaluation every 1% of the steps, an automatic checkpoint every 5% and one manual one, and eight loss
spikes planted on the viewed lineage. For each size it times `baseline_tick` (stride sampling, with
app/figures.py as of commit b6fd69b) and `live_tick` (app.live.loss_chart_data and the checkpoint strip), reports the figure's size and
which spikes and checkpoints reach the browser, then RSS over --ticks ticks at the largest size.
The last line is the summary; the targets are from the issue.

    python bench/live_view.py [--sizes 1e4,1e5,1e6] [--repeat 20] [--ticks 1000] [--keep-dir DIR]
"""
from __future__ import annotations

import argparse
import base64
import functools
import hashlib
import importlib.util
import itertools
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import plotly.io
import plotly.tools

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from trainer.config import RunConfig
from trainer.journal import CheckpointRow, EvalRow, Journal, Reader, StepRow

SPIKES_AT = (0.0731, 0.1893, 0.2957, 0.3611, 0.4587, 0.6129, 0.7743, 0.9311)  # all three lineage segments
SPIKE, VISIBLE = 25.0, 20.0
STEPS_PER_EPOCH, BATCH = 250, 32
CHUNK = 100_000  # step rows queued per flush: bounded memory while building
TARGET_MS, TARGET_KB, TARGET_MB = 30, 60, 100
VIEW = 2  # the branch the run is on: the one the live chart shows


def spike_steps(n: int) -> list[int]:
    return [int(f * n) // 2 * 2 + 7 for f in SPIKES_AT]  # odd: no stride or cadence lands on one by luck


def plan(n: int) -> list[tuple]:
    """(branch, parent, fork step, last step, its own part of the final lineage ends at, [(from step, lr)]).
    Ids as the engine numbers them: 0 is the start; each restore opens the next one."""
    return [(0, None, 0, n // 2, n * 2 // 5, [(1, 0.1), (n // 4 + 1, 0.05), (n * 9 // 20 + 1, 0.2)]),
            (1, 0, n * 2 // 5, n * 4 // 5, n * 7 // 10, [(n * 2 // 5 + 1, 0.02), (n * 3 // 4 + 1, 0.1)]),
            (2, 1, n * 7 // 10, n, n, [(n * 7 // 10 + 1, 0.01), (n * 17 // 20 + 1, 0.005)])]


def build(d: Path, n: int) -> None:
    d.mkdir(parents=True)
    (d / "checkpoints").mkdir()
    every = n // 20
    cfg = RunConfig(task="spirals", run_dir=str(d), max_steps=n, ckpt_every=every, eval_every=n // 100, keep_last=100)
    j = Journal(d / "journal.sqlite")
    j.set_meta("config", cfg.to_dict())
    j.set_meta("run_info", {"run_dir": str(d), "task": "spirals", "task_name": "spirals3", "optimizer": "sgd",
                            "nesterov": False, "device": "cpu", "n_train": STEPS_PER_EPOCH * BATCH, "ckpt_every": every,
                            "metrics": ["acc"], "has_grid": True, "steps_per_epoch": STEPS_PER_EPOCH})
    j.set_meta("branch", 0)
    j.add_branch(0, None, 0, "start", None)
    j.event(0, 0, "create", "new run: task spirals, optimizer sgd")
    j.event(0, 0, "start", "training started at step 1")
    spikes, cids, cid, branches = np.array(spike_steps(n)), {}, 0, plan(n)
    wall0 = time.time() - 2 * n * 0.005
    clock = lambda b, s: wall0 + (s + n // 2 * b) * 0.005  # 5 ms a step, each branch after its parent
    for b, parent, fork, last, mine, lrs in branches:
        if parent is not None:  # what Trainer._restore writes, then its hparams change
            from_cid = cids[(parent, fork)]
            j.add_branch(b, parent, fork, "restore", from_cid)
            j.set_meta("branch", b)
            j.event(fork, b, "restore", f"restore from checkpoint {from_cid} (step {fork}, branch {parent}) "
                    f"onto new branch {b}", {"checkpoint": from_cid, "old_branch": b - 1, "branch": b, "fork_step": fork})
        old = lrs[0][1] if parent is None else [v for at, v in branches[parent][5] if at <= fork][-1]
        for at, lr in lrs:  # as Trainer._change_hparams writes them: applied after step at - 1
            if lr != old:
                j.event(at - 1, b, "hparams", f"lr {old:g} → {lr:g}", {"field": "lr", "old": old, "new": lr, "at_step": at})
            old = lr
        steps = np.arange(fork + 1, last + 1)
        rng = np.random.default_rng(b)
        loss = 0.1 + 0.9 * np.exp(-steps / (0.1 * n)) + 0.02 * np.abs(rng.standard_normal(len(steps)))
        off = steps > mine
        loss[off] += 0.5 * (steps[off] - mine) / (0.1 * n)  # the abandoned path drifts up: why it was left
        loss[np.isin(steps, spikes) & ~off] = SPIKE
        lr = np.array([v for _, v in lrs])[np.searchsorted([a for a, _ in lrs], steps, side="right") - 1]
        wall = clock(b, steps)
        gnorm = np.where(loss >= SPIKE, 50.0, 1 + rng.standard_normal(len(steps)) ** 2)
        cols = [[b] * len(steps), steps.tolist(), (steps / STEPS_PER_EPOCH).tolist(), loss.tolist(), lr.tolist(),
                [0.9] * len(steps), [0.0] * len(steps), [BATCH] * len(steps), gnorm.tolist(),
                (20000 + 500 * rng.standard_normal(len(steps))).tolist(), wall.tolist()]
        rows = map(StepRow._make, zip(*cols))
        while chunk := list(itertools.islice(rows, CHUNK)):
            j.log_steps(chunk)
            j.flush()
        val = dict(zip(steps.tolist(), (loss + 0.01).tolist()))
        for s in range(fork + 1, last + 1):
            if s % (n // 100) == 0:
                j.log_eval(EvalRow(b, s, s // STEPS_PER_EPOCH, val[s], 0.9, val[s] - 0.01, 0.91, None, clock(b, s)))
        marks = [(s, "auto", None) for s in range(fork + 1, last + 1) if s % every == 0]
        if b == VIEW:
            marks = sorted(marks + [(int(0.9 * n) + 321, "manual", "before lr cut")])
        stmts, parent_cid = [], cids.get((parent, fork))
        for s, kind, tag in marks:
            cid += 1
            cids[(b, s)] = cid
            hp = {"lr": float(lr[s - fork - 1]), "momentum": 0.9, "weight_decay": 0.0, "batch_size": BATCH}
            row = CheckpointRow(cid, s, s // STEPS_PER_EPOCH, b, f"checkpoints/ckpt_{cid:06d}_step{s}.pt",
                                clock(b, s), val[s] - 0.01, val[s], json.dumps(hp), tag, kind, parent_cid)
            stmts += [(f"INSERT INTO checkpoints VALUES ({','.join('?' * 12)}, 0)", tuple(row)),
                      ("INSERT INTO events (wall, step, branch, kind, message, data) VALUES (?, ?, ?, ?, ?, ?)",
                       Journal.event_row(s, b, "checkpoint", f"checkpoint {cid} saved at step {s}",
                                         {"checkpoint": cid, "kind": kind, "label": tag}))]
            parent_cid = cid
        j.submit(lambda jj, stmts=stmts: jj.transaction(stmts))  # as CheckpointStore.save writes its rows
        j.flush()
    j.event(n, VIEW, "done", f"reached the step limit {n}")
    j.close()


def journal_for(root: Path, n: int) -> tuple[str, float | None]:
    """The run directory for size n, built unless a finished one for this writer is there already."""
    key = hashlib.sha1(b"".join(p.read_bytes() for p in (ROOT / "trainer/journal.py", ROOT / "trainer/summary.py",
                                                         Path(__file__)) if p.exists())).hexdigest()[:12]
    d, stamp = root / f"n{n}", root / f"n{n}" / "bench.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("key") == key:
        return str(d), None
    shutil.rmtree(d, ignore_errors=True)  # built by another writer or interrupted
    t0 = time.perf_counter()
    build(d, n)
    took = time.perf_counter() - t0
    stamp.write_text(json.dumps({"key": key, "build_s": took}))
    return str(d), took


BASELINE = "b6fd69bc6a44321cfa6c95da6677ae9838a5c07c"  # app/figures.py of stride sampling, before the rewrite
_READERS: dict[str, Reader] = {}


def reader(run_dir: str) -> Reader:
    """One Reader per run, kept, as the server keeps its own."""
    return _READERS.get(run_dir) or _READERS.setdefault(run_dir, Reader(run_dir))


def old_figures(root: Path) -> ModuleType:
    """The baseline's figure code, as committed then: the working tree's has moved on."""
    path = root / "figures_baseline.py"
    path.write_text(subprocess.run(["git", "-C", str(ROOT), "show", f"{BASELINE}:app/figures.py"],
                                   capture_output=True, text=True, check=True).stdout)
    spec = importlib.util.spec_from_file_location("figures_baseline", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def baseline_tick(run_dir: str, branch: int, figures: ModuleType):
    """Stride sampling: every k-th row of the lineage (Reader.metrics), read anew each tick."""
    r = reader(run_dir)
    lineage = r.lineage(branch)
    on = lambda rows: [x for x in rows if Reader.on_lineage(x["branch"], x["step"], lineage)]
    return figures.loss_figure(r.metrics(branch, max_points=500), figures.thin(r.evals(branch), 125),
                               on(r.events(limit=100_000, kinds=("hparams", "restore"))), on(r.checkpoints()),
                               r.other_branches(branch, max_points=500))


def live_tick(run_dir: str, branch: int):
    """The live view's tick, with the kept Reader the server passes it: the loss chart and, under it,
    the checkpoint strip (both are sent each tick)."""
    from app.figures import checkpoint_strip
    from app.live import loss_chart_data

    view, fig = loss_chart_data(run_dir, branch, j=reader(run_dir))
    return fig, checkpoint_strip(view)


def serialize(fig) -> bytes:
    """What st.plotly_chart sends: the figure as a dict, then plotly's JSON of it."""
    return plotly.io.to_json(plotly.tools.return_figure_from_figure_or_data(fig, True), validate=False).encode()


def timed(tick, run_dir: str) -> tuple[float, bytes, int]:
    """(ms, the loss chart's JSON, bytes sent in all)."""
    t0 = time.perf_counter()
    figs = tick(run_dir, VIEW)
    out = [serialize(f) for f in (figs if isinstance(figs, tuple) else (figs,))]
    return (time.perf_counter() - t0) * 1e3, out[0], sum(map(len, out))


def values(a) -> list:
    """A plotly JSON array: a plain list, or NumPy data as base64 ('bdata') since plotly 6."""
    if isinstance(a, dict) and "bdata" in a:
        v = np.frombuffer(base64.b64decode(a["bdata"]), dtype=a["dtype"])
        return v.reshape([int(d) for d in str(a.get("shape", len(v))).strip("[]()").split(",")]).tolist()
    return a if isinstance(a, list) else []


def seen(spec: bytes, spikes: list[int], checkpoints: list[int]) -> tuple[int, int]:
    """(planted spikes drawn at their step with loss >= VISIBLE, lineage checkpoints marked at their step)."""
    hit, marks, want = set(), set(), set(spikes)
    for tr in json.loads(spec)["data"]:
        name, x = (tr.get("name") or "").lower(), values(tr.get("x"))
        if name.startswith(("checkpoint", "best")):
            marks.update(x)
        if tr.get("yaxis", "y") != "y":
            continue
        y = values(tr.get("y"))
        for i, xv in enumerate(x):
            if xv in want:
                if "spike" in name:  # may be clipped at the axis top: the real value rides along, if given
                    got = [v[i] for k in ("customdata", "text", "hovertext") if i < len(v := values(tr.get(k)))]
                    nums = [float(m) for m in re.findall(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?", json.dumps(got))]
                    ok = not nums or max(nums) >= VISIBLE
                else:
                    ok = i < len(y) and y[i] is not None and y[i] >= VISIBLE
                if ok:
                    hit.add(xv)
    return len(hit), sum(s in marks for s in checkpoints)


def label(n: int) -> str:
    return f"{n:.0e}".replace("e+0", "e").replace("e+", "e")


def rss_mb() -> float:
    return int(re.search(r"VmRSS:\s*(\d+)", Path("/proc/self/status").read_text())[1]) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1e4,1e5,1e6", help="steps per journal, comma-separated (default 1e4,1e5,1e6)")
    ap.add_argument("--repeat", type=int, default=20, help="ticks timed per size and function; the median (default 20)")
    ap.add_argument("--ticks", type=int, default=1000, help="ticks of the RSS loop at the largest size (default 1000)")
    ap.add_argument("--keep-dir", help="build the journals here and reuse them next time (default: a temp dir)")
    a = ap.parse_args()
    sizes = [int(float(s)) for s in a.sizes.split(",")]
    tmp = None if a.keep_dir else tempfile.TemporaryDirectory(prefix="panda-live-view-")
    root = Path(a.keep_dir or tmp.name)
    root.mkdir(parents=True, exist_ok=True)
    ticks = {"baseline": functools.partial(baseline_tick, figures=old_figures(root))}
    try:
        from app.live import loss_chart_data  # noqa: F401
        ticks["live"] = live_tick
    except ImportError:
        print("live_tick: app.live.loss_chart_data not available")
    res: dict[tuple[str, int], dict] = {}
    for n in sizes:
        run_dir, took = journal_for(root, n)
        print(f"{label(n)} = {n:,} steps: " + (f"built in {took:.1f} s" if took is not None else "reused")
              + f" ({(Path(run_dir) / 'journal.sqlite').stat().st_size / 1e6:.0f} MB)")
        r = Reader(run_dir)
        lineage = r.lineage(VIEW)
        cps = [c["step"] for c in r.checkpoints() if Reader.on_lineage(c["branch"], c["step"], lineage)]
        r.close()
        for name, tick in ticks.items():
            cold, spec, size = timed(tick, run_dir)
            ms = statistics.median(timed(tick, run_dir)[0] for _ in range(a.repeat))
            k, c = seen(spec, spike_steps(n), cps)
            res[(name, n)] = {"ms": ms, "kb": size / 1e3, "spikes": k, "ckpts": c, "of": len(cps)}
            print(f"  {name:8s} first tick {cold:7.1f} ms, median {ms:7.1f} ms/tick, {size / 1e3:6.1f} kB, "
                  f"spikes {k}/{len(SPIKES_AT)}, checkpoints {c}/{len(cps)}")
        if "live" in ticks:
            print(f"  live/baseline time per tick: {res[('live', n)]['ms'] / res[('baseline', n)]['ms']:.3f}x")
    n, name = sizes[-1], "live" if "live" in ticks else "baseline"
    run_dir = str(root / f"n{n}")
    before = rss_mb()
    for _ in range(a.ticks):
        timed(ticks[name], run_dir)
    grew = rss_mb() - before
    print(f"RSS over {a.ticks} {name} ticks at {n:,} steps: {before:.0f} MB -> {before + grew:.0f} MB ({grew:+.0f} MB)")
    m, base = res[(name, n)], res[("baseline", n)]
    missed = [f"> {TARGET_MS} ms" if m["ms"] > TARGET_MS else "", f"> {TARGET_KB} kB" if m["kb"] > TARGET_KB else "",
              "not all visible" if m["spikes"] < len(SPIKES_AT) or m["ckpts"] < m["of"] else "",
              f"RSS > {TARGET_MB} MB" if grew > TARGET_MB else ""]
    missed = [x for x in missed if x]
    head = (f"{m['ms']:.1f} ms/tick (baseline {base['ms']:.0f} ms, {m['ms'] / base['ms']:.2f}x)" if name == "live"
            else f"live_tick not available; baseline {m['ms']:.1f} ms/tick")
    print(f"summary: live view @{label(n)}: {head}, {m['kb']:.0f} kB, spikes {m['spikes']}/{len(SPIKES_AT)}, "
          f"checkpoints {m['ckpts']}/{m['of']}, RSS {grew:+.0f} MB over {a.ticks} ticks — targets ≤{TARGET_MS} ms, "
          f"≤{TARGET_KB} kB, all visible, ≤{TARGET_MB} MB at 1e6: "
          + ("MET" if not missed else "NOT MET (" + ", ".join(missed) + ")"))
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
