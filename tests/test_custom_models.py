"""Any network (``model: package.module:factory``) and the MSE loss: a custom factory trains exactly like the
same module built in, its mistakes are one line, and the loss is the same in the step, the evaluation and the
sharpness."""

import sys

import numpy as np
import pytest
import torch
from conftest import write_synthetic_dataset, zigzag_main
from torch import nn

from zigzag import store
from zigzag.errors import ZigzagError
from zigzag.losses import loss_sum
from zigzag.modelimport import factory_file
from zigzag.sharpness import top_eigenpair
from zigzag.step import accumulate_gradient, evaluate

MODELS_PY = '''
from torch import nn

from zigzag.models import build_model


def cnn(num_classes, in_channels, image_size, width=0.25, batch_norm=False):
    return build_model("cnn", width=width, batch_norm=batch_norm, in_channels=in_channels, image_size=image_size,
                       num_classes=num_classes)


class Output:
    def __init__(self, logits):
        self.logits = logits


class WithLogits(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return Output(self.inner(x))


def cnn_logits(**sizes):
    return WithLogits(cnn(**sizes))


def mlp_bn(num_classes, in_channels, image_size):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size ** 2, 8), nn.BatchNorm1d(8), nn.ReLU(),
                         nn.Linear(8, num_classes))


def not_a_module(**sizes):
    return "a string"


def wrong_shape(num_classes, in_channels, image_size):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size ** 2, num_classes + 1))


def frozen(**sizes):
    return cnn(**sizes).requires_grad_(False)
'''


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """A folder on ``sys.path`` with the module ``mymodels`` and ``brokenmodels`` (whose import fails)."""
    folder = tmp_path_factory.mktemp("models")
    (folder / "mymodels.py").write_text(MODELS_PY)
    (folder / "brokenmodels.py").write_text("import no_such_package_zz\n")
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))
    for name in ("mymodels", "brokenmodels"):
        sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("data") / "d.h5", n_train=64, n_test=16, size=8)


def train(capsys, dataset, out, model, *flags, check=True):
    return zigzag_main(capsys, "train", "--dataset", dataset, "--model", model, "--lr", "0.05", "--steps", "3",
                       "--lags", "2", "--micro-batch", "24", "--device", "cpu", "--quiet", *flags, "--out", out,
                       check=check)


def test_a_factory_trains_exactly_like_the_module_built_in(models_dir, dataset, tmp_path, capsys):
    """The factory's lag statistics, losses and test numbers equal the built-in cnn's bit for bit, with a tensor
    or a ``.logits`` output; model_args reach the factory and are recorded with the loss."""
    train(capsys, dataset, tmp_path / "builtin.h5", "cnn", "--width", "0.5", "--no-batch-norm")
    run = tmp_path / "run.yaml"
    run.write_text("model_args: {width: 0.5}\n")
    train(capsys, dataset, tmp_path / "custom.h5", "mymodels:cnn", "--config", run)
    train(capsys, dataset, tmp_path / "logits.h5", "mymodels:cnn_logits", "--config", run)
    builtin = store.read_trajectory(tmp_path / "builtin.h5")
    for name in ("custom.h5", "logits.h5"):
        custom = store.read_trajectory(tmp_path / name)
        assert set(custom.steps) == set(builtin.steps)
        for series in set(builtin.steps) - {"time"}:
            np.testing.assert_array_equal(custom.steps[series], builtin.steps[series], err_msg=series)
        assert custom.config["model_args"] == {"width": 0.5} and custom.config["loss"] == "cross_entropy"
    assert builtin.config["model_args"] == {}
    assert custom.attrs["batch_norm_semantics"].startswith("no batch normalisation")


def test_batch_norm_is_read_from_the_built_module(models_dir, dataset, tmp_path, capsys):
    train(capsys, dataset, tmp_path / "bn.h5", "mymodels:mlp_bn")
    assert store.read_trajectory(tmp_path / "bn.h5").attrs["batch_norm_semantics"].startswith("ghost batches")
    run = tmp_path / "run.yaml"
    run.write_text("sharpness: {every: every:2, subset: 30}\n")
    result = train(capsys, dataset, tmp_path / "sub.h5", "mymodels:mlp_bn", "--config", run, check=False)
    assert result.returncode == 2 and "with BatchNorm it must be a multiple of micro_batch=24" in result.stderr


BAD_MODELS = {
    "mymissing:f": "model mymissing:f: cannot import module mymissing: ModuleNotFoundError: No module named "
                   "'mymissing'",
    "brokenmodels:f": "cannot import module brokenmodels: ModuleNotFoundError: No module named 'no_such_package_zz'",
    "mymodels:nothing": "model mymodels:nothing: module mymodels has no attribute nothing",
    "mymodels:not_a_module": "the factory returned a str, not a torch nn.Module",
    "mymodels:wrong_shape": "must have shape (batch, num_classes) = (2, 10), got shape (2, 11)",
    "mymodels:frozen": "no parameter requires a gradient",
    "my-models:f": "invalid model='my-models:f': an import path must be package.module:factory",
}


@pytest.mark.parametrize("model", BAD_MODELS)
def test_a_bad_model_is_one_line_and_exit_2(models_dir, dataset, tmp_path, capsys, model):
    out = tmp_path / "out" / "t.h5"
    out.parent.mkdir()
    result = train(capsys, dataset, out, model, check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("zigzag: error: ") and BAD_MODELS[model] in result.stderr, result.stderr
    assert list(out.parent.iterdir()) == []


def test_the_factory_file_is_found_without_importing(models_dir, tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('imported')\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "nets.py").write_text("")
    assert factory_file("pkg.sub.nets:f", (tmp_path,)) == (package / "sub" / "nets.py").resolve()
    assert factory_file("mymodels:cnn") == (models_dir / "mymodels.py").resolve()
    assert factory_file("pkg.missing:f", (tmp_path,)) is None and "pkg" not in sys.modules


def test_a_config_names_a_module_it_cannot_find_or_a_malformed_path():
    from zigzag.configcheck import _check_run_settings

    for model, expected in (("nomodule_zz:f", "runs.r: model nomodule_zz:f: cannot find module nomodule_zz in the "
                                              "workflow's directory"),
                            ("a:b:c", "runs.r: invalid model='a:b:c'"),
                            ("cnn", None)):
        run = {"dataset": "d", "model": model, "lr": 0.1, "steps": 3, "seed": 0, "schedule": {},
               "model_args": {"width": 2} if model == "cnn" else {}}
        with pytest.raises(ZigzagError) as err:
            _check_run_settings("r", run)
        assert str(err.value).startswith(expected or "runs.r: invalid model_args={'width': 2}"), str(err.value)


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_gradient_and_evaluation_equal_the_formula_in_float64(loss):
    """Micro-batches of 2 over 5 examples: the exact mean of the per-example loss; MSE is 1/2 sum_c (f_c -
    onehot_c)^2 per example (not F.mse_loss's mean over the C outputs too)."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3).double()
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.tensor([0, 2, 1, 2, 0])
    total, correct = accumulate_gradient(model, x, y, micro_batch=2, loss=loss)
    w, b, xs, onehot = model.weight.detach().numpy(), model.bias.detach().numpy(), x.numpy(), np.eye(3)[y.numpy()]
    f = xs @ w.T + b
    if loss == "mse":
        per_example, residual = 0.5 * ((f - onehot) ** 2).sum(1), f - onehot
    else:
        p = np.exp(f - f.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        per_example, residual = -np.log(p[np.arange(5), y.numpy()]), p - onehot
    np.testing.assert_allclose(model.weight.grad.numpy(), residual.T @ xs / 5, rtol=1e-12)
    np.testing.assert_allclose(model.bias.grad.numpy(), residual.mean(0), rtol=1e-12)
    np.testing.assert_allclose(total.item(), per_example.sum(), rtol=1e-6)  # summed in float32
    assert correct.item() == (f.argmax(1) == y.numpy()).sum()
    test_loss, accuracy = evaluate(model, x, y, micro_batch=3, loss_name=loss)
    np.testing.assert_allclose(test_loss, per_example.mean(), rtol=1e-6)
    assert accuracy == (f.argmax(1) == y.numpy()).mean()
    if loss == "mse":
        assert loss_sum(torch.tensor(f), y, "mse").item() / 5 == pytest.approx(
            3 / 2 * torch.nn.functional.mse_loss(torch.tensor(f), torch.tensor(onehot)).item(), rel=1e-12)


def test_mse_sharpness_of_a_linear_model_is_the_top_eigenvalue_of_the_data_covariance():
    """f = W x with MSE: H = I_C (x) (1/n) sum_i x_i x_i^T, so lambda_max = lambda_max(X^T X / n)."""
    torch.manual_seed(1)
    model = nn.Linear(6, 4, bias=False).double()
    x, y = torch.randn(20, 6, dtype=torch.float64), torch.randint(0, 4, (20,))
    expected = torch.linalg.eigvalsh(x.T @ x / 20)[-1].item()
    result = top_eigenpair(model, x, y, micro_batch=7, tol=1e-8, loss="mse")
    assert result.eigenvalue == pytest.approx(expected, rel=1e-6)
