"""The engine on a CUDA machine, checked in one command: tests, exactness, NaN guard, syncs, overhead.

    python bench/gpu_check.py --out DIR                      # on the GPU machine, from the repo root
    python bench/gpu_check.py --device cpu --smoke --out DIR  # the same steps, tiny, on a CPU (no sync count)

Needs torch, numpy, scikit-learn and pytest only: no streamlit, plotly, network or pip install. Each step
runs in its own process under its own time limit, the whole under --budget seconds; a failed step does
not stop the next. Each prints a PASS/FAIL/SKIP line (the sync count also its call sites); the last line
is the summary. DIR gets report.txt (every step's output), report.json, each step's .log, pytest-device.xml,
pytest-engine.xml and overhead-<precision>.json.

Steps: the CUDA and AMP tests (tests/test_cuda.py, test_precision.py); resume and rollback bit-exact
against a straight run; the NaN guard; the syncs in 200 steps and where they come from; the anatomy
of a step (µs per step without checkpoints, without instruments, driven without the thread; kernel
launches per step); trainer/bare overhead (bench/overhead.py --quick) on spirals and bench/tasks.py:wide_mlp at fp32, bf16 and fp16;
then the other engine tests that import nothing missing, with the time the budget leaves.
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from trainer import RunConfig, Trainer  # noqa: E402
from trainer.config import PRECISIONS  # noqa: E402

UI = {"streamlit", "plotly", "playwright", "app"}  # the dashboard's side: not on the GPU machine
DEVICE_TESTS = ("test_cuda.py", "test_precision.py")  # the CUDA path and AMP: run first, in their own step
# Process, serving and locking tests (kill -9, CLI, ctl): the same on any device, and most of the suite's
# time (a Python + torch start per subprocess); --all-tests runs them too.
PROCESS_TESTS = ("test_cli.py", "test_ctl.py", "test_consistency.py", "test_reopen.py", "test_ownership.py",
                 "test_ddp.py")  # (DDP: torchrun jobs of 2 CPU ranks, gloo)
SMOKE_TESTS = ("test_cuda.py", "test_checkpoints.py", "test_journal.py")
TARGETS = {"spirals": 0.90, "wide_mlp": 0.97, "wide_mlp_small": 0.97}  # trainer/bare, CUDA (issue 11)
WIDE = "bench/tasks.py:wide_mlp"



# --- workers: each runs in its own process (python gpu_check.py --worker NAME) and returns a dict --------

def _trainer(root: Path, name: str, **cfg) -> Trainer:
    return Trainer.create(RunConfig(run_dir=str(root / name), **cfg))


def _continued(root: Path, mode: str, cfg: dict, k: int, j: int) -> dict:
    """A run to k, then resumed from disk (closed, reopened from its final checkpoint) or rolled back
    from k + j to a ring snapshot taken at k, continued to 2k: its state."""
    from conftest import run_to

    t = _trainer(root, mode, **cfg)
    try:
        run_to(t, k)
        if mode == "resume":
            t.close()
            t = Trainer.open(root / mode)
        else:
            cid = t.save_checkpoint().wait().value
            run_to(t, k + j)
            assert t.restore(cid).wait().ok, "restore failed"
        run_to(t, 2 * k)
        return t._capture()
    finally:
        t.close()


def exactness(device: str, smoke: bool) -> dict:
    """Resume from disk and rollback to a ring snapshot, compared bit for bit with a straight run."""
    from conftest import assert_same_state, run_to

    k, j = (20, 7) if smoke else (40, 15)
    combos = [("spirals", "sgd"), ("spirals", "adam"), ("digits", "adamw")]
    cases = [(task, opt, p) for p in PRECISIONS for task, opt in combos
             if not smoke or p == "fp32" or (task, opt) == combos[0]]
    results = []
    for task, opt, p in cases:
        cfg = dict(task=task, optimizer=opt, device=device, precision=p, eval_every=20)
        with tempfile.TemporaryDirectory() as d:
            expected = None
            for mode in ("straight", "resume", "rollback"):
                t0, err = time.perf_counter(), None
                try:
                    if mode == "straight":
                        ref = _trainer(Path(d), mode, **cfg)
                        try:
                            run_to(ref, 2 * k)
                            expected = ref._capture()
                        finally:
                            ref.close()
                        continue
                    assert expected is not None, "the straight run failed"
                    got = _continued(Path(d), mode, cfg, k, j)
                    assert_same_state(got, expected)
                    assert got.get("scaler") == expected.get("scaler"), "loss scaler state differs"
                except Exception as e:
                    err = f"{type(e).__name__}: {e}"[:500]
                    if mode == "straight":
                        print(f"FAIL {task}/{opt}/{p} straight run: {err}", flush=True)
                        continue
                name = f"{task}/{opt}/{p}/{mode}"
                results.append({"case": name, "ok": err is None, "error": err, "s": round(time.perf_counter() - t0, 2)})
                print(f"{'ok  ' if err is None else 'FAIL'} {name} {err or ''}", flush=True)
    bad = [r["case"] for r in results if not r["ok"]]
    return {"ok": not bad, "cases": results,
            "detail": f"{len(results) - len(bad)}/{len(results)} bit-exact ({', '.join(PRECISIONS)})"
                      + (f"; not: {', '.join(bad)}" if bad else "")}


def nan_guard(device: str, smoke: bool) -> dict:
    """A NaN planted at step 37 before a BatchNorm (tests/plugins/nan_at.py:make_bn) is skipped and
    recorded at each precision, and the weights and running stats stay finite;
    lr 10^6 on spirals stops the run and leaves no checkpoint with NaN or inf in it."""
    from conftest import PLUGINS, run_to
    from trainer.snapshot import load_file

    results = []
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        for p in PRECISIONS:
            t = _trainer(root, f"nan-{p}", task=f"{PLUGINS / 'nan_at.py'}:make_bn", device=device, precision=p,
                         ckpt_every=0, eval_every=0, eval_at_epoch_end=False)
            try:
                run_to(t, 80)
                t.journal.flush()
                skips = [e["step"] for e in t.journal.events() if e["kind"] == "skip_step"]
                finite = all(bool(torch.isfinite(v).all()) for v in t.model.state_dict().values()
                             if v.is_floating_point())
                ok = t.state == "done" and skips == [37] and t.status().skipped == 1 and finite
                results.append({"case": f"NaN at step 37, {p}", "ok": ok, "state": t.state, "skip_steps": skips,
                                "skipped": t.status().skipped, "weights_finite": finite})
            finally:
                t.close()
        t = _trainer(root, "lr1e6", task="spirals", device=device, sentinel="warn", ckpt_every=5, eval_every=0)
        try:
            run_to(t, 100)
            assert t.set_hparams(lr=1e6).wait().ok and t.set_max_steps(300).wait().ok
            t.start().wait()
            t.wait(120)
            t.journal.flush()
            bad = [c["id"] for c in t.journal.checkpoints()
                   if not all(bool(torch.isfinite(v).all()) for v in load_file(t.journal.checkpoint_file(c["id"]))
                              ["model"].values() if v.is_floating_point())]
            ok = t.state == "error" and t.status().anomaly is not None and not bad
            results.append({"case": "lr 1e6 under warn", "ok": ok, "state": t.state, "step": t.step,
                            "anomaly": dict(t.status().anomaly or {}).get("kind"), "non_finite_checkpoints": bad})
        finally:
            t.close()
    for r in results:
        print(("ok   " if r["ok"] else "FAIL ") + json.dumps(r), flush=True)
    bad = [r["case"] for r in results if not r["ok"]]
    return {"ok": not bad, "cases": results,
            "detail": f"{len(results) - len(bad)}/{len(results)} cases" + (f"; not: {', '.join(bad)}" if bad else "")}


def _repo_frames(stack) -> list[tuple[str, str]]:
    """(file:line, function) of the frames in this repository, innermost first; a recursion's repeats
    and comprehensions dropped."""
    here, out = Path(__file__).resolve(), []
    for f in reversed(stack):
        path = Path(f.filename).resolve()
        if path.is_relative_to(ROOT) and path != here and not f.name.startswith("<") and f.name not in {n for _, n in out}:
            out.append((f"{path.name}:{f.lineno}", f.name))
    return out


def count_syncs(fn) -> tuple[Counter, dict[str, str], Counter]:
    """Synchronizing CUDA calls made while fn() runs, on any thread, counted by the innermost frame in
    this repository: (counts, the op's own file:line and the repo frames above it, counts inside a checkpoint)."""
    sites, where, in_checkpoint = Counter(), {}, Counter()

    def show(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" not in str(message):
            return
        frames = _repo_frames(traceback.extract_stack()[:-1])
        site = f"{frames[0][0]} {frames[0][1]}" if frames else f"{filename}:{lineno}"
        sites[site] += 1
        if any("checkpoint" in fn_name for _, fn_name in frames):
            in_checkpoint[site] += 1
        op = "/".join(Path(filename).parts[-2:])
        where.setdefault(site, f"op at {op}:{lineno}; " + " <- ".join(f"{a} {b}" for a, b in frames[:5]))

    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = show  # called on the thread that synced: its stack is the culprit's
            fn()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return sites, where, in_checkpoint


def syncs(device: str, smoke: bool) -> dict:
    """200 steps with the read-back as the only planned sync: its count against test_cuda's bound."""
    from conftest import run_to
    from test_cuda import CHECKPOINT_SYNCS, sync_bound

    steps, results = 200, []
    runs = [("spirals", "fp32")] + [(WIDE, p) for p in PRECISIONS]
    with tempfile.TemporaryDirectory() as d:
        for task, p in runs:
            name, t = f"{task.rpartition(':')[2]} {p}", None
            try:
                t = _trainer(Path(d), f"sync-{len(results)}", task=task, device=device, precision=p,
                             ckpt_every=0, eval_every=0, eval_at_epoch_end=False)
                run_to(t, 20)  # data on the device, kernels warmed up
                t0 = time.monotonic()
                sites, where, final = count_syncs(lambda: run_to(t, 20 + steps))  # final: the last checkpoint's copy
                elapsed = time.monotonic() - t0
                training = sum(sites.values()) - sum(final.values())
                parts = sync_bound(t, steps, elapsed)
                bound = sum(parts.values())
                ok = training <= bound and sum(final.values()) <= CHECKPOINT_SYNCS
                results.append({"case": name, "ok": ok, "syncs": training, "bound": bound, "parts": parts,
                                "elapsed_s": round(elapsed, 2), "final_checkpoint_syncs": sum(final.values()),
                                "sites": [{"site": s, "n": n, "in_checkpoint": final[s], "where": where[s]}
                                          for s, n in sites.most_common()]})
            except Exception as e:
                results.append({"case": name, "ok": False, "error": f"{type(e).__name__}: {e}"[:500]})
            finally:
                if t is not None:
                    t.close()
    for r in results:
        if "error" in r:
            print(f"FAIL {r['case']}: {r['error']}", flush=True)
            continue
        print(f"{'ok  ' if r['ok'] else 'FAIL'} {r['case']}: {r['syncs']} syncs in {steps} steps (bound {r['bound']}: "
              + " + ".join(f"{n} {k}" for k, n in r["parts"].items())
              + f"); final checkpoint {r['final_checkpoint_syncs']} (bound {CHECKPOINT_SYNCS})", flush=True)
        for s in r["sites"][:8]:
            ck = f" ({s['in_checkpoint']} in the checkpoint)" if s["in_checkpoint"] else ""
            print(f"    {s['n']:4d}{ck}  {s['site']}   [{s['where']}]", flush=True)
    bad = [r["case"] for r in results if not r["ok"]]
    return {"ok": not bad, "cases": results,
            "detail": ", ".join(f"{r['case']} " + (f"{r['syncs']} (bound {r['bound']})" if "syncs" in r else "failed")
                                for r in results)}


def anatomy(device: str, smoke: bool) -> dict:
    """Where a trainer step's time goes on this device, in one warm process: µs per step of the bare
    loop and of the trainer whole, without checkpoints, without instruments, without both, and its
    steps driven from the calling thread (no thread hand-offs); kernel launches per step from the
    profiler. Informational: overhead.py's ratios are the measure."""
    sys.path.insert(0, str(ROOT / "bench"))
    import overhead
    from torch.profiler import ProfilerActivity, profile

    dev = torch.device(device)
    n, warm = (30, 10) if smoke else (400, 100)
    cases = [("spirals", "spirals")] if smoke else [("spirals", "spirals"), ("wide_mlp", WIDE)]
    variants = {"trainer": {}, "no checkpoints": {"ckpt_every": 0}, "no instruments": {"instruments": False,
                "instrument_every": 0}, "neither": {"ckpt_every": 0, "instruments": False, "instrument_every": 0}}
    results = []

    def launches(fn) -> tuple[float, list[str]]:
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
        with profile(activities=acts) as prof:
            fn()
        ka = prof.key_averages()
        k = sum(e.count for e in ka if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC"))
        top = sorted((e for e in ka if e.key.startswith("aten::")), key=lambda e: -e.self_cpu_time_total)[:8]
        return k, [f"{e.key} {e.count} calls {e.self_cpu_time_total / 1e3:.1f} ms" for e in top]

    with tempfile.TemporaryDirectory() as d:
        for name, spec in cases:
            row = {"task": name}
            overhead.bare_loop(spec, warm, dev)
            row["bare"] = 1e6 / overhead.bare_loop(spec, n, dev)
            k, top = launches(lambda: overhead.bare_loop(spec, 50, dev))
            row["bare launches/step"], row["bare top ops"] = k / 50, top
            for v, kw in variants.items():
                t = _trainer(Path(d), f"{name}-{v}".replace(" ", "_"), task=spec, device=device, eval_every=0,
                             eval_at_epoch_end=False, **{"instrument_every": 50, **kw})
                try:
                    row[v] = 1e6 / overhead.timed_steps(t, warm, n)
                    if v == "trainer":  # the same steps, called from here: no thread, same journal
                        t.state = "running"
                        if dev.type == "cuda":
                            torch.cuda.synchronize()
                        t0 = time.perf_counter()
                        for _ in range(n):
                            t._train_step()
                        if dev.type == "cuda":
                            torch.cuda.synchronize()
                        row["trainer, steps called here"] = (time.perf_counter() - t0) / n * 1e6
                        k, top = launches(lambda: [t._train_step() for _ in range(50)])
                        row["trainer launches/step"], row["trainer top ops"] = k / 50, top
                        t.state = "done"
                finally:
                    t.close()
            results.append(row)
            print(f"{name}: µs/step " + ", ".join(f"{k} {v:.0f}" for k, v in row.items()
                                                 if isinstance(v, float) and "launches" not in k)
                  + f"; launches/step bare {row['bare launches/step']:.1f}, trainer {row['trainer launches/step']:.1f}",
                  flush=True)
            for k in ("bare top ops", "trainer top ops"):
                print(f"    {k}: " + "; ".join(row[k]), flush=True)
    return {"ok": True, "cases": results,
            "detail": "; ".join(f"{r['task']} bare {r['bare']:.0f} µs, trainer {r['trainer']:.0f} "
                                f"(no ckpt {r['no checkpoints']:.0f}, no instr {r['no instruments']:.0f}, "
                                f"neither {r['neither']:.0f}, called here {r['trainer, steps called here']:.0f})"
                                for r in results)}


WORKERS = {"exactness": exactness, "nan_guard": nan_guard, "syncs": syncs, "anatomy": anatomy}


# --- the parent: steps, limits, report ----------------------------------------------------------------

def run_process(cmd: list[str], limit: float, log: Path, env: dict | None = None) -> tuple[int | None, str]:
    """Run cmd in its own process group; kill the group at the limit. (returncode or None on timeout, output)."""
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                             env={**os.environ, **(env or {})})
        try:
            rc = p.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)  # pytest's and the benchmark's children too
            p.wait()
            rc = None
    return rc, log.read_text(errors="replace")


def worker_step(name: str, a, limit: float) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--device", a.device] + (["--smoke"] if a.smoke else [])
    rc, out = run_process(cmd, limit, a.out / f"{name}.log")
    lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    if rc is None:
        return {"ok": False, "detail": f"timed out after {limit:.0f} s", "output": out}
    if rc or not lines:
        return {"ok": False, "detail": f"exit {rc}: {out.strip().splitlines()[-1] if out.strip() else ''}"[:300],
                "output": out}
    return {**json.loads(lines[-1][7:]), "output": out}


def test_modules() -> tuple[list[str], dict[str, str]]:
    """tests/test_*.py that import nothing missing here (followed through sibling tests and bench
    scripts they import); the others with the reason."""
    def missing(path: Path, seen: set) -> str | None:
        if path in seen:
            return None
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            for top in (n.partition(".")[0] for n in names):
                if top in UI:
                    return f"imports {top}"
                local = [d / f"{top}.py" for d in (ROOT / "tests", ROOT / "bench") if (d / f"{top}.py").exists()]
                if local:
                    why = missing(local[0], seen)
                    if why:
                        return f"{top}: {why}"
                elif top != "trainer" and importlib.util.find_spec(top) is None:
                    return f"needs {top}, not installed"
        return None

    use, skip = [], {}
    for f in sorted((ROOT / "tests").glob("test_*.py")):
        why = missing(f, set())
        if why:
            skip[f.name] = why
        else:
            use.append(f"tests/{f.name}")
    return use, skip


def tests_step(a, which: str, limit: float) -> dict:
    """pytest on the importable test modules: "device" (the CUDA and AMP tests) or "engine" (the rest)."""
    use, skip = test_modules()
    names = [Path(m).name for m in use]
    if which == "device":
        names = [n for n in names if n in DEVICE_TESTS]
    else:
        names = [n for n in names if n not in DEVICE_TESTS and (a.all_tests or n not in PROCESS_TESTS)]
        skip |= {n: "process test, same on any device (--all-tests runs it)"
                 for n in PROCESS_TESTS if n not in names and n not in skip}
    if a.smoke:  # a few quick modules: the step's plumbing, not the suite
        names = [n for n in names if n in SMOKE_TESTS]
    env, notes = {}, [f"device {a.device}: tests that leave RunConfig.device at auto train there"]
    # -v: one line per test as it ends, so a run cut off at its limit still shows what passed
    cmd = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "--durations=10",
           f"--junitxml={a.out / f'pytest-{which}.xml'}", *(f"tests/{n}" for n in names)]
    rc, out = run_process(cmd, limit, a.out / f"tests-{which}.log", env)
    tail = re.findall(r"^=+ (\d+ (?:passed|failed|skipped|errors?|deselected).*) =+$", out, re.M)
    outcomes = re.findall(r"^(tests/\S+::.+?) (PASSED|FAILED|ERROR|SKIPPED)\b", out, re.M)
    if tail:
        result = tail[-1]
    else:
        so_far = Counter(w.lower() for _, w in outcomes)
        result = (f"timed out after {limit:.0f} s" if rc is None else f"exit {rc}") + ", so far: " + \
            (", ".join(f"{n} {w}" for w, n in so_far.items()) or "none finished")
    failed = [t for t, w in outcomes if w in ("FAILED", "ERROR")]
    return {"ok": rc == 0, "detail": f"{result} ({', '.join(names)})", "modules": names, "excluded": skip,
            "failed": failed[:50], "notes": notes, "output": out}


def overhead_step(a, precision: str, limit: float) -> dict:
    tasks = ["spirals", "bench/tasks.py:wide_mlp_small" if a.smoke else WIDE]
    steps, repeats, warm = (40, 1, 10) if a.smoke else (a.steps, a.repeats if precision == "fp32" else max(1, a.repeats - 1), 200)
    js = a.out / f"overhead-{precision}.json"
    cmd = [sys.executable, "bench/overhead.py", "--quick", "--device", a.device, "--precision", precision,
           "--tasks", *tasks, "--steps", str(steps), "--repeats", str(repeats), "--warm", str(warm), "--json", str(js)]
    rc, out = run_process(cmd, limit, a.out / f"overhead-{precision}.log")
    if rc != 0 or not js.exists():
        why = f"timed out after {limit:.0f} s" if rc is None else f"exit {rc}"
        return {"ok": False, "detail": why, "output": out}
    ratios = {name: r["trainer/bare"] for name, r in json.loads(js.read_text())["tasks"].items()}
    judged = a.device.startswith("cuda") and not a.smoke  # CPU smoke counts are far too small to judge
    low = [n for n, r in ratios.items() if judged and r < TARGETS.get(n, 0.97)]
    detail = ", ".join(f"{n} {r:.3f}" for n, r in ratios.items()) + f" ({steps} steps x {repeats})"
    if low:
        detail += "; below target: " + ", ".join(f"{n} < {TARGETS.get(n, 0.97)}" for n in low)
    return {"ok": not low, "ratios": ratios, "detail": detail, "output": out}


def environment(a) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(), "precisions": PRECISIONS,
            "modules": {m: importlib.util.find_spec(m) is not None
                        for m in ("numpy", "sklearn", "pytest", "hypothesis", "tqdm", "streamlit", "plotly")}}
    if torch.cuda.is_available():
        info |= {"device": torch.cuda.get_device_name(), "capability": ".".join(map(str, torch.cuda.get_device_capability())),
                 "bf16_supported": torch.cuda.is_bf16_supported()}
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    out = Path(tempfile.gettempdir()) / "panda_gpu_check"
    ap.add_argument("--out", type=Path, default=out, help=f"report folder (default: {out})")
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default: cuda)")
    ap.add_argument("--smoke", action="store_true", help="tiny step counts, a few test modules, no sync count")
    ap.add_argument("--all-tests", action="store_true", help="also the process tests (CLI, ctl, kill -9), "
                                                             "device-independent and slow")
    ap.add_argument("--budget", type=float, default=420, help="seconds for all steps together (default: 420)")
    # sized on an H200, where each process's start (import, CUDA context, data) costs more than its steps
    ap.add_argument("--steps", type=int, default=500, help="timed steps per overhead measurement (default: 500)")
    ap.add_argument("--repeats", type=int, default=2, help="overhead processes per kind, fp32 (bf16, fp16: one "
                                                           "fewer) (default: 2)")
    ap.add_argument("--skip", nargs="*", default=[], help="steps to leave out, e.g. exactness 'engine tests'")
    ap.add_argument("--worker", choices=WORKERS, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        res = WORKERS[a.worker](a.device, a.smoke)
        print("RESULT " + json.dumps(res), flush=True)
        return
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(f"gpu_check: no CUDA device (torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
                 "run with --device cpu --smoke for the CPU smoke test")
    a.out.mkdir(parents=True, exist_ok=True)
    a.out = a.out.resolve()
    if a.smoke:  # children inherit it: on a small shared CPU, OpenMP teams that fight slow training 50x
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    start = time.monotonic()
    deadline = start + a.budget
    env = environment(a)
    print(f"environment: {env.get('device', 'no CUDA device')}"
          + (f" (capability {env['capability']})" if "capability" in env else "")
          + f", torch {env['torch']} (CUDA {env['cuda']}), Python {env['python']}, precisions {', '.join(env['precisions'])}; "
          + "missing: " + (", ".join(m for m, ok in env["modules"].items() if not ok) or "none"), flush=True)
    # (name, own limit, least time worth starting it with), sized for an H200. The engine tests come
    # last and get what the budget leaves: a cut-off run still reports what passed.
    plan = [("device tests", 150, 40), ("exactness", 90, 30), ("nan_guard", 60, 20)]
    plan += [] if a.smoke or not a.device.startswith("cuda") else [("syncs", 60, 20)]
    plan += [("anatomy", 90, 30)]
    plan += [(f"overhead {p}", 130, 40) for p in PRECISIONS]
    plan += [("engine tests", 600 if a.all_tests else 240, 30)]
    plan = [step for step in plan if step[0] not in a.skip]
    report, lines = {"environment": env, "args": {k: str(v) for k, v in vars(a).items()}, "steps": {}}, []
    for i, (name, own, least) in enumerate(plan):
        later = sum(least for _, _, least in plan[i + 1:])
        limit = min(own, deadline - time.monotonic() - later)
        t0 = time.monotonic()
        if limit < least:
            res = {"ok": None, "detail": f"skipped: {deadline - time.monotonic():.0f} s of the budget left"}
        elif name.endswith("tests"):
            res = tests_step(a, name.split()[0], limit)
        elif name.startswith("overhead"):
            res = overhead_step(a, name.split()[1], limit)
        else:
            res = worker_step(name, a, limit)
        res["s"] = round(time.monotonic() - t0, 1)
        word = {True: "PASS", False: "FAIL", None: "SKIP"}[res["ok"]]
        line = f"{word} {name:14s} {res['s']:6.1f} s  {res['detail']}"
        print(line, flush=True)
        lines.append(line)
        output = res.pop("output", "")
        if name == "syncs":  # where they come from, on the console too
            print("\n".join(ln for ln in output.splitlines() if not ln.startswith("RESULT ")), flush=True)
        report["steps"][name] = res
        with open(a.out / "report.txt", "a" if i else "w") as f:
            f.write(f"{'=' * 100}\n{line}\n{'=' * 100}\n{output}\n")
    steps = report["steps"].values()
    passed, failed = sum(r["ok"] is True for r in steps), [n for n, r in report["steps"].items() if r["ok"] is False]
    ratios = "; ".join(f"{n.split()[1]} " + ", ".join(f"{k} {v:.3f}" for k, v in r["ratios"].items())
                       for n, r in report["steps"].items() if "ratios" in r)
    total = time.monotonic() - start
    summary = (f"gpu_check summary: {passed}/{len(plan)} steps passed" + (f", failed: {', '.join(failed)}" if failed else "")
               + f"; trainer/bare {ratios or 'n/a'}; {env.get('device', a.device)}, torch {torch.__version__}, "
               f"{total:.0f} s")
    report["summary"], report["total_s"] = summary, round(total, 1)
    (a.out / "report.json").write_text(json.dumps(report, indent=1))
    with open(a.out / "report.txt", "a") as f:
        f.write("\n".join(["", "environment: " + json.dumps(env), *lines, summary, ""]))
    print(f"report: {a.out / 'report.txt'}, {a.out / 'report.json'}")
    print(summary)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
