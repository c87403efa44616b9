"""The divergence matrix: every task x optimizer x way of blowing a run up, under a sentinel policy.

Each case trains `--steps` steps normally (checkpoints every 100), then does what the case says
(lr 10^2, 10^3, 10^6 or 10^300, weight decay 10^6, or a NaN planted in the loss; "none" changes
nothing: a false alarm there is a failure) and trains on. It checks what the issue asks of every case:
  - no checkpoint on disk holds a non-finite tensor;
  - the run pauses or recovers as its policy says (an anomaly event, a skip, a rollback or a pause);
  - after Recover (the recovery plan: the newest checkpoint before the anomaly, lr x 0.5, the
    batches up to the anomaly skipped), or after the policy's own rollback, the median training loss
    of the next 100 steps is back at its level before the blow-up (within 1.5x + 0.02).
Prints one row per case and a summary line.

    python bench/divergence.py [--policies skip pause] [--tasks ...] [--optimizers ...] [--cases ...]
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from trainer import RunConfig, Trainer, load_task  # noqa: E402
from trainer.sentinel import recovery_plan  # noqa: E402
from trainer.snapshot import load_file  # noqa: E402

TASKS = {"spirals": "spirals", "digits": "digits", "quadratic": "quadratic",
         "spike plugin": f"{ROOT / 'tests' / 'plugins' / 'spike_at.py'}:make"}
CASES = {"none": {}, "lr 1e2": {"lr": 1e2}, "lr 1e3": {"lr": 1e3}, "lr 1e6": {"lr": 1e6}, "lr 1e300": {"lr": 1e300},
         "wd 1e6": {"weight_decay": 1e6}, "NaN": None}
OPTIMIZERS = ("sgd", "adam", "adamw")


def nan_after(task, calls: int):
    """The task with its training loss NaN at the `calls`-th training forward, and only there."""
    loss, n = task.loss, [0]

    def planted(out, y):
        value = loss(out, y)
        if task.model.training:
            n[0] += 1
            if n[0] == calls:
                return value * float("nan")
        return value

    task.loss = planted
    return task


def wait_rest(t, timeout=120.0) -> None:
    assert t.wait(timeout), "training did not come to rest"
    t.journal.flush()


def train_on(t, resume_spikes: bool) -> None:
    """Train to the step limit. With resume_spikes, a pause on a single spike (the weights untouched,
    its batch dropped: the spike plugin's own, each epoch) is resumed, as a user would."""
    (t.resume() if t.state in ("paused", "error") else t.start()).wait()
    wait_rest(t)
    while resume_spikes and t.state == "error" and (t.status().anomaly or {}).get("kind") == "spike" \
            and t.status().anomaly["sound"]:
        assert t.resume().wait().ok
        wait_rest(t)


def losses(t, branch, lo, hi) -> list[float]:
    return [r["loss"] for r in t.journal.metrics(branch, since_step=lo) if r["step"] <= hi and r["loss"] is not None
            and math.isfinite(r["loss"])]


def finite_checkpoints(run_dir: Path) -> bool:
    for f in (run_dir / "checkpoints").glob("*.pt"):
        s = load_file(f)
        tensors = [v for v in s["model"].values() if torch.is_tensor(v) and v.is_floating_point()]
        tensors += [v for st in s["optimizer"]["state"].values() for v in st.values()
                    if torch.is_tensor(v) and v.is_floating_point()]
        if not all(torch.isfinite(v).all() for v in tensors):
            return False
    return True


def run_case(task: str, optimizer: str, case: str, policy: str, root: Path, steps: int = 300,
             after: int = 200) -> dict:
    """One cell of the matrix; returns what happened and whether each promise held."""
    d = Path(tempfile.mkdtemp(dir=root))
    spec = TASKS.get(task, task)
    obj = load_task(spec, seed=0)
    if CASES[case] is None:
        obj = nan_after(obj, steps + 5)
    cfg = RunConfig(task=spec, run_dir=str(d / "run"), optimizer=optimizer, sentinel=policy, ckpt_every=100,
                    eval_every=0, eval_at_epoch_end=False, max_steps=steps, device="cpu")
    t = Trainer.create(cfg, task=obj)
    t0 = time.perf_counter()
    try:
        train_on(t, resume_spikes=True)
        pre = statistics.median(losses(t, t.branch, steps - 50, steps))
        if CASES[case]:
            assert t.set_hparams(**CASES[case]).wait().ok
        t.set_max_steps(steps + after).wait()
        train_on(t, resume_spikes=False)
        kinds = [e["kind"] for e in t.journal.events()]
        st = t.status()
        out = {"task": task, "optimizer": optimizer, "case": case, "policy": policy, "pre": pre,
               "anomalies": sum(k in ("anomaly", "skip_step", "rollback") for k in kinds)
               + (st.anomaly is not None), "skips": kinds.count("skip_step"), "rollbacks": kinds.count("rollback"),
               "state": st.state}
        if st.state == "error":  # paused on it: Recover as the banner offers it
            a = st.anomaly or {}
            plan = recovery_plan(t.journal, t.branch, int(a.get("start", t.step)), cfg.rollback_lr_factor,
                                 most_skip=t.batches.batches_per_epoch(t.hp.batch_size))
            out["outcome"] = "paused"
            if plan is None:
                out["recovered"] = None
            else:
                r = t.restore(plan["checkpoint"], {"lr": plan["lr"]}, plan["skip_batches"]).wait()
                assert r.ok, r
                start = t.step
                t.set_max_steps(start + 100).wait()
                train_on(t, resume_spikes=True)
                out["outcome"] = "paused, Recover"
                out["post"] = statistics.median(losses(t, t.branch, start + 50, start + 100) or [math.inf])
        else:
            out["outcome"] = ("rolled back" if out["rollbacks"] else "skipped" if out["skips"]
                              else "warned" if "anomaly" in kinds else "no anomaly")
            out["post"] = statistics.median(losses(t, t.branch, t.step - 50, t.step) or [math.inf])
        if "post" in out:
            out["recovered"] = out["post"] <= 1.5 * pre + 0.02
        if case == "none":  # a healthy run: only the spike plugin's own planted spikes may be flagged
            out["recovered"] = out["outcome"] == "no anomaly" or task == "spike plugin"
        out["finite_checkpoints"] = finite_checkpoints(d / "run")
        out["seconds"] = time.perf_counter() - t0
        return out
    finally:
        t.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policies", nargs="+", default=["skip", "pause"])
    ap.add_argument("--tasks", nargs="+", default=list(TASKS))
    ap.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS))
    ap.add_argument("--cases", nargs="+", default=list(CASES))
    a = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    print(f"{'policy':8s} {'task':12s} {'opt':5s} {'case':8s} {'outcome':16s} {'pre':>8s} {'post':>8s} ok")
    with tempfile.TemporaryDirectory() as root:
        for policy in a.policies:
            for task in a.tasks:
                for opt in a.optimizers:
                    for case in a.cases:
                        r = run_case(task, opt, case, policy, Path(root))
                        ok = (r["finite_checkpoints"] and r["recovered"] is not False
                              and (case == "none" or r["outcome"] != "no anomaly"))
                        rows.append((r, ok))
                        print(f"{policy:8s} {task:12s} {opt:5s} {case:8s} {r['outcome']:16s} {r['pre']:8.3g} "
                              f"{r.get('post', float('nan')):8.3g} {'yes' if ok else 'NO'}", flush=True)
    bad = [r for r, ok in rows if not ok]
    alarms = [r for r, _ in rows if r["case"] == "none" and r["task"] != "spike plugin" and r["outcome"] != "no anomaly"]
    finite = sum(r["finite_checkpoints"] for r, _ in rows)
    rec = [r for r, _ in rows if r.get("recovered") is not None]
    print(f"summary: {len(rows) - len(bad)}/{len(rows)} cases held; checkpoints finite in {finite}/{len(rows)}; "
          f"back at the pre-blow-up loss in {sum(r['recovered'] for r in rec)}/{len(rec)} "
          f"; {sum(r['outcome'] == 'no anomaly' and r['case'] != 'none' for r, _ in rows)} blow-ups raised no anomaly, "
          f"{len(alarms)} false alarms on healthy built-in runs")


if __name__ == "__main__":
    main()
