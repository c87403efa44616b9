"""Checkpoint files: contents, atomic writes, safe loading, retention, broken files."""
import pickle

import pytest
import torch

from conftest import run_to
from trainer import snapshot as ckpt
from trainer.snapshot import CheckpointError


def test_checkpoint_holds_everything_a_continuation_needs(make, tmp_path):
    t = make(optimizer="sgd", ckpt_every=25, eval_every=0)
    run_to(t, 50)
    t.journal.flush()
    rows = t.journal.checkpoints()
    assert [r["step"] for r in rows] == [25, 50] and rows[1]["parent"] == rows[0]["id"]
    s = ckpt.load_file(tmp_path / "run" / rows[1]["path"])
    assert {"1.running_mean", "1.running_var", "1.num_batches_tracked"} <= set(s["model"])
    assert all("momentum_buffer" in v for v in s["optimizer"]["state"].values())
    assert set(s["rng"]) == {"python", "numpy", "torch", "cuda"}
    assert s["data"]["epoch"] == 1 and s["data"]["offset"] == (50 - 47) * 64  # epoch 0 is 47 batches, the last short
    assert s["counters"]["step"] == 50 and s["hparams"]["lr"] == 0.1
    assert s["lineage"] == {"branch": 0, "parent_checkpoint": rows[0]["id"]}
    assert not list((tmp_path / "run" / "checkpoints").glob("*.tmp"))


def test_files_refuse_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    p = tmp_path / "evil.pt"
    with open(p, "wb") as f:
        pickle.dump({"format": 1, "x": Evil()}, f)
    with pytest.raises(CheckpointError, match="cannot be loaded"):
        ckpt.load_file(p)


@pytest.mark.parametrize("content", [b"", b"garbage bytes", None], ids=["empty", "garbage", "not-panda"])
def test_broken_checkpoint_is_rejected_and_the_trainer_carries_on(make, tmp_path, content):
    t = make(ckpt_every=20, eval_every=0)
    run_to(t, 40)
    t.journal.flush()
    first = t.journal.checkpoints()[0]
    path = tmp_path / "run" / first["path"]
    if content is None:
        torch.save({"weights": torch.zeros(3)}, path)
    else:
        path.write_bytes(content)
    t.store._ring.clear()
    before = t._capture()
    r = t.restore(first["id"]).wait()
    assert not r.ok and str(first["path"]).split("/")[-1] in r.message
    assert t.step == 40 and torch.equal(t._capture()["model"]["0.weight"], before["model"]["0.weight"])
    run_to(t, 60)


def test_unknown_checkpoint_and_bad_arguments_are_rejected(make):
    t = make()
    assert "no such checkpoint" in t.restore(999).wait().message
    assert "integer id" in t.restore("../../etc/passwd").wait().message
    assert "skip_batches" in t.restore(1, skip_batches=-1).wait().message


def test_restore_rejects_bad_override_before_loading(make):
    t = make(ckpt_every=10)
    run_to(t, 20)
    r = t.restore(1, hparams={"lr": -1}).wait()
    assert not r.ok and r.message.startswith("lr:") and t.step == 20


def test_retention_keeps_last_k_manual_and_best(make, tmp_path):
    t = make(ckpt_every=10, eval_every=10, keep_last=2)
    run_to(t, 30)
    t.save_checkpoint("keep me").wait()
    run_to(t, 100)
    t.journal.flush()
    live = t.journal.checkpoints()
    every = t.journal.checkpoints(include_deleted=True)
    autos = [c["id"] for c in every if c["kind"] in ("auto", "final")]
    assert len(autos) == 10  # steps 10, 20, ..., 100
    best = min((c for c in every if c["val_loss"] is not None), key=lambda c: c["val_loss"])["id"]
    manual = [c["id"] for c in every if c["label"] == "keep me"]
    assert {c["id"] for c in live} == set(autos[-2:]) | {best} | set(manual)
    files = {p.name for p in (tmp_path / "run" / "checkpoints").iterdir()}
    assert files == {c["path"].split("/")[-1] for c in live}


def test_ring_restore_does_not_touch_the_disk(make, tmp_path):
    t = make(ckpt_every=0)
    run_to(t, 10)
    cid = t.save_checkpoint().wait().value
    run_to(t, 20)
    t.journal.flush()
    (tmp_path / "run" / t.journal.checkpoints()[-1]["path"]).unlink()
    assert t.restore(cid).wait().ok and t.step == 10


def test_checkpoint_paths_never_leave_the_run_directory(make, tmp_path):
    t = make(ckpt_every=10)
    run_to(t, 20)
    t.journal.flush()
    outside = tmp_path / "elsewhere.pt"
    outside.write_bytes(b"x")
    t.journal._wcon.execute("UPDATE checkpoints SET path = ? WHERE id = 1", ("../elsewhere.pt",))
    t.store._ring.clear()
    r = t.restore(1).wait()
    assert not r.ok and "leaves the run directory" in r.message and t.step == 20
