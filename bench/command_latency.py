"""Command latency through the run's control socket: a CLI `run` of spirals in a child process, a
RunClient in this one, and 200 `set_hparams(lr=...)` commands (two values, alternating, so each one
changes the lr and writes an event).

For each command it measures, from sending it, (a) its Result coming back and (b) its "hparams"
event row being visible to a Reader of the journal (polled from another thread, so (b) does not wait
for (a)). Then it times `python -m trainer ctl --run-dir D status` end to end, process start included.
The last line is the summary; the target is from issue 7 (p99 <= 150 ms).

    python bench/command_latency.py [--commands 200] [--ctl-runs 3]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from trainer.client import NoTrainerError, RunClient

LRS = (0.05, 0.1)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def attach(run_dir: Path, p: subprocess.Popen) -> RunClient:
    deadline = time.monotonic() + 300
    while True:
        if p.poll() is not None:
            sys.exit(f"the trainer exited with code {p.returncode}")
        try:
            return RunClient(run_dir, wait=1)
        except NoTrainerError:
            if time.monotonic() > deadline:
                sys.exit("the run was never served")


def visible(reader, since_id: int, lr: float, deadline: float) -> tuple[float, int]:
    """Poll the journal until an lr event with this value appears after since_id: (when, its id)."""
    while time.monotonic() < deadline:
        for e in reader.events(since_id, kinds=("hparams",)):
            if e["data"]["field"] == "lr" and e["data"]["new"] == lr:
                return time.perf_counter(), e["id"]
        time.sleep(0.0005)
    raise TimeoutError(f"the lr {lr} event never reached the journal")


def measure(c: RunClient, n: int) -> tuple[list[float], list[float]]:
    reader = c.reader()
    last = (reader.events(newest_first=True, limit=1) or [{"id": 0}])[0]["id"]
    to_result, to_row = [], []
    for i in range(n):
        lr = LRS[i % 2]
        got: dict = {}
        t0 = time.perf_counter()
        cmd = c.set_hparams(lr=lr)
        waiter = threading.Thread(target=lambda cmd=cmd, got=got: got.update(r=cmd.wait(30), at=time.perf_counter()))
        waiter.start()
        t_row, last = visible(reader, last, lr, time.monotonic() + 30)  # meanwhile, in this thread
        waiter.join()
        if not got["r"].ok:
            sys.exit(f"command {i} rejected: {got['r'].message}")
        to_result.append((got["at"] - t0) * 1e3)
        to_row.append((t_row - t0) * 1e3)
        time.sleep(0.01)  # commands a user sends are spaced out; this also lets the run take steps
    return to_result, to_row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--commands", type=int, default=200)
    ap.add_argument("--ctl-runs", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "run"
        p = subprocess.Popen([sys.executable, "-m", "trainer", "run", "--task", "spirals", "--run-dir", str(d),
                              "--max-steps", str(10 ** 9)], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        try:
            c = attach(d, p)
            while c.status().step < 300:  # past start-up, the first checkpoint and evaluations
                time.sleep(0.1)
            s0, w0 = c.status().step, time.perf_counter()
            to_result, to_row = measure(c, a.commands)
            steps_per_s = (c.status().step - s0) / (time.perf_counter() - w0)
            for name, xs in (("send -> Result", to_result), ("send -> journal row visible", to_row)):
                print(f"{name:28s} median {statistics.median(xs):6.2f} ms   p99 {pct(xs, 0.99):6.2f} ms   "
                      f"max {max(xs):6.2f} ms   ({len(xs)} commands)")
            print(f"the run trained at {steps_per_s:,.0f} steps/s meanwhile")
            ctl = []
            for _ in range(a.ctl_runs):
                t0 = time.perf_counter()
                r = subprocess.run([sys.executable, "-m", "trainer", "ctl", "--run-dir", str(d), "status"], cwd=ROOT,
                                   capture_output=True, text=True, timeout=120)
                ctl.append(time.perf_counter() - t0)
                if r.returncode != 0:
                    sys.exit(f"ctl status failed: {r.stderr}")
            print("`python -m trainer ctl status`, end to end: " + ", ".join(f"{x:.2f} s" for x in ctl)
                  + f" (median {statistics.median(ctl):.2f} s)")
            c.stop().wait(60)
            c.close()
            p.wait(60)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(30)
    print(f"summary: command latency p50 {statistics.median(to_row):.1f} ms, p99 {pct(to_row, 0.99):.1f} ms "
          "(target p99 <= 150 ms)")


if __name__ == "__main__":
    main()
