"""Built-in tasks against the course's numbers, evaluation mode, and plugin errors."""
import pytest
import torch

from conftest import PLUGINS, ROOT, run_to
from trainer import RunConfig, TaskError, Trainer, load_task


def test_quadratic_reproduces_the_course(make):
    t = make(task="quadratic", optimizer="sgd", ckpt_every=0)
    assert t.hp.lr == 0.01 and t.hp.momentum == 0.0
    assert t.model.w.item() == 0.0
    run_to(t, 1)
    assert t.model.w.item() == pytest.approx(0.1, abs=1e-7)  # w - 0.01 * (2w - 10) at w = 0
    run_to(t, 1000)
    assert abs(t.model.w.item() - 5.0) < 1e-4


def test_quadratic_coefficients_are_data():
    task = load_task("quadratic")
    x, _ = task.train_data[0]
    assert x.tolist() == [1.0, -10.0, 25.0]
    with torch.no_grad():
        task.model.w.fill_(5.0)
        assert task.model(x).item() == 0.0  # (w - 5)^2


def test_quadratic_cost_is_never_negative_near_its_minimum():
    """The expanded x0 w^2 + x1 w + x2 rounds to small negatives near w = 5 in float32."""
    task = load_task("quadratic")
    x, _ = task.train_data[0]
    w = torch.linspace(4.99, 5.01, 2001)
    expanded = x[0] * w ** 2 + x[1] * w + x[2]
    assert (expanded < 0).any()  # the failure the completed square avoids
    costs = torch.empty_like(w)
    with torch.no_grad():
        for i, v in enumerate(w):
            task.model.w.copy_(v)
            costs[i] = task.model(x)[0]
    assert (costs >= 0).all()
    assert torch.allclose(costs, ((w.double() - 5) ** 2).float(), atol=1e-6, rtol=1e-4)  # reference in float64


@pytest.mark.parametrize("coeffs", [(2.0, -3.0, 1.0), (-0.5, 1.0, 4.0), (0.0, 3.0, -2.0), (0.0, 0.0, 7.0)])
def test_quadratic_keeps_the_course_function_and_its_gradient(coeffs):
    """Other coefficients, a linear one (x0 = 0) included: value and dcost/dw as in the expanded form."""
    from trainer.tasks import quadratic

    task = quadratic(coeffs)
    x, _ = task.train_data[0]
    a, b, c = (float(v) for v in coeffs)
    for w in (-3.0, 0.0, 0.7, 5.0):
        with torch.no_grad():
            task.model.w.fill_(w)
        out = task.model(x)[0]
        out.backward()
        assert out.item() == pytest.approx(a * w * w + b * w + c, abs=1e-5)
        assert task.model.w.grad.item() == pytest.approx(2 * a * w + b, abs=1e-5)
        task.model.w.grad = None


def test_quadratic_trains_to_five_without_a_negative_loss_and_shows_w(make):
    t = make(task="quadratic", optimizer="sgd", ckpt_every=0, eval_every=100)
    run_to(t, 1500)
    losses = [r["loss"] for r in t.reader().metrics(0)]
    assert len(losses) == 1500 and min(losses) >= 0
    assert abs(t.model.w.item() - 5.0) < 2e-5  # it stalls where lr * 2(w - 5) is below half of float32's step at 5
    shown = t.status().eval
    assert shown["w"] == t.model.w.item() and shown["cost"] == pytest.approx((shown["w"] - 5) ** 2, abs=1e-9)
    assert shown["cost"] >= 0
    with torch.no_grad():
        t.model.w.fill_(2.0)
        assert t.task.show(t.model, torch.device("cpu")) == {"w": 2.0, "cost": 9.0}


@pytest.mark.parametrize("classes", [3, 4, 5, 6])
def test_spirals_classes_and_grid(classes):
    task = load_task(f"spirals:{classes}")
    assert len(set(task.train_data.tensors[1].tolist())) == classes
    task.model.eval()
    with torch.no_grad():
        g = task.grid(task.model, torch.device("cpu"))
    assert g["probs"].shape == (60, 60, classes)
    assert abs(g["probs"].sum(-1) - 1).max() < 1e-5


def test_spirals_rejects_bad_class_count():
    with pytest.raises(TaskError, match="from 3 to 6"):
        load_task("spirals:9")


def test_evaluation_uses_running_averages_and_restores_train_mode(make):
    t = make(eval_every=10, ckpt_every=0)
    run_to(t, 30)
    assert t.model.training
    # reference: the validation loss computed by hand in eval mode
    x, y = t.task.val_data.tensors
    t.model.eval()
    with torch.no_grad():
        ref = torch.nn.functional.cross_entropy(t.model(x), y).item()
        acc = (t.model(x).argmax(1) == y).float().mean().item()
    t.model.train()
    assert t.status().eval["val_loss"] == pytest.approx(ref, rel=1e-5)
    assert t.status().eval["val_acc"] == pytest.approx(acc)
    assert t.status().grid is not None


def test_digits_reports_accuracy(make):
    t = make(task="digits", eval_every=100, ckpt_every=0)
    run_to(t, 200)
    assert t.status().eval["val_acc"] > 0.85


def test_plugin_by_module_path(make, monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGINS))
    task = load_task("noisy:make")
    assert len(task.train_data) == 200


@pytest.mark.parametrize("spec,words", [
    ("import_error.py:make", "import failed: ModuleNotFoundError"),
    ("broken.py:wrong_type", "must return trainer.Task, got dict"),
    ("broken.py:raises", "the function raised RuntimeError: no GPU quota left"),
    ("broken.py:iterable", "train_data must be a map-style Dataset"),
    ("broken.py:missing", "has no function 'missing'"),
    ("nowhere.py:make", "no such file"),
    ("no_such_module:make", "import failed"),
    ("justaname", "expected a built-in"),
    ("broken.py:needs_args", "needs_args takes arguments (n_samples); a plugin is called with none"),
    ("broken.py:says_module", "says_module is not a Python function returning trainer.Task"),
    ("os:getcwd", "getcwd is not a Python function returning trainer.Task"),
    ("broken.py:bad_lr", "defaults: lr: must be > 0, got -1.0"),
    ("broken.py:typo", "defaults: learnig_rate: unknown hyperparameter"),
    ("broken.py:too_big_a_batch", "defaults: batch_size: must be an integer from 1 to 64, got 65"),
    ("broken.py:no_parameters", "model has no trainable parameters"),
    ("broken.py:frozen", "model has no trainable parameters"),
    ("broken.py:huge", "train_data has 1,000,000,000,000 items"),
    ("broken.py:bad_len", "len(train_data) raised ValueError"),
])
def test_broken_plugins_get_a_clear_error_naming_the_plugin(spec, words, tmp_path):
    spec = str(PLUGINS / spec) if ".py:" in spec else spec
    with pytest.raises(TaskError) as e:
        Trainer.create(RunConfig(task=spec, run_dir=str(tmp_path / "r")))
    assert words in str(e.value) and spec in str(e.value)
    assert not (tmp_path / "r").exists()  # nothing was created


def test_a_one_sample_remainder_joins_the_last_batch_so_batchnorm_trains_on(make):
    """65 items in batches of 32: without the rule the third batch is one sample and BatchNorm fails."""
    t = make(task=str(PLUGINS / "remainder.py") + ":make", eval_every=0, ckpt_every=0)
    run_to(t, 5, timeout=30)  # two and a half epochs of 32 + 33
    assert t.error is None and (t.batches.epoch, t.batches.offset) == (2, 32)


def test_diverging_spirals_keeps_batchnorm_stats_finite(make):
    t = make(hparams={"lr": 1e30}, ckpt_every=0, eval_every=0, eval_at_epoch_end=False)
    assert t.set_max_steps(100).wait().ok
    t.start().wait()
    assert t.wait(30) and t.state == "error"
    assert all(torch.isfinite(b.float()).all() for b in t.model.buffers())


def test_the_readme_plugin_example_trains(make):
    t = make(task=str(ROOT / "examples" / "regression_task.py") + ":make_task", eval_every=50, ckpt_every=0)
    run_to(t, 300)
    variance = t.task.val_data.tensors[1].var().item()  # the loss of always predicting the mean
    assert t.status().eval["val_loss"] < 0.2 * variance and "val_mae" in t.status().eval
