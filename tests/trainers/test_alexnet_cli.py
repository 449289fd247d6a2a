"""``launch.py alexnet`` as a user runs it: the recipes on stand-in files in the real on-disk
formats, one-line errors, and a digits run whose offline W&B run is read back, every key it reported
found there (as test_logged_keys.py checks the other commands)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import torch
import yaml

from dlhw.callbacks.wandb_logger import WandbLogger
from dlhw.trainers.classification import AlexNetSettings, resolve_args
from launch import main
from tests.conftest import ROOT, artifacts, logged_table
from tests.test_logged_keys import check_config, check_runs, dataset_references, recorded_logs
from tests.trainers.standins import write_cifar10, write_fashion_mnist
from dlhw.tracking.readback import history, run_summary


def _errors(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def _quick(*extra: str) -> list[str]:
    return ["alexnet", "--epochs", "1", "--limit-batches", "2", "--wandb-mode", "disabled", *extra]


def test_course_recipe_on_a_cifar10_standin(tmp_path, capsys, monkeypatch):
    write_cifar10(tmp_path / "data", monkeypatch, per_batch=8, test=8)
    assert main(_quick("--recipe", "course", "--data", str(tmp_path / "data"), "--batch-size", "8",
                       "--out", str(tmp_path / "out"), "--hessian-every", "0")) == 0
    err = capsys.readouterr().err
    assert "recipe course: course AlexNet on cifar10, adam lr 0.001, batch 8, 1 epochs" in err
    best = torch.load(next((tmp_path / "out" / "checkpoints").glob("alexnet-*/best.pt")), weights_only=False)
    assert best["trainer"]["model"]["features.0.weight"].shape == (64, 3, 3, 3)
    assert best["config"]["optimizer"] == "adam" and best["config"]["augment"] is True


def test_d2l_recipe_on_a_fashion_mnist_standin(tmp_path, capsys):
    write_fashion_mnist(tmp_path / "data", train=12, test=4)
    assert main(_quick("--recipe", "d2l", "--data", str(tmp_path / "data"), "--batch-size", "4",
                       "--out", str(tmp_path / "out"), "--hessian-every", "0")) == 0
    err = capsys.readouterr().err
    assert "recipe d2l: d2l AlexNet on fashion-mnist, sgd lr 0.01, batch 4, 1 epochs" in err
    best = torch.load(next((tmp_path / "out" / "checkpoints").glob("alexnet-*/best.pt")), weights_only=False)
    assert best["trainer"]["model"]["features.0.weight"].shape == (96, 1, 11, 11)
    assert best["config"]["augment"] is False and best["trainer"]["classes"][0] == "T-shirt/top"
    # d2l's data settings: every training image, pixels in [0, 1], the last epoch's weights tested.
    assert best["config"]["val_split"] is False and best["config"]["normalize"] is False
    assert best["config"]["test_weights"] == "last"
    assert best["trainer"]["mean"] == [0.0] and best["trainer"]["std"] == [1.0]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--recipe", "course"], "cifar10 not found under {data}"),
        (["--dataset", "fashion-mnist"], "fashion-mnist not found under {data}"),
        (["--optimizer", "adamw", "--wd-mode", "l2"], "--optimizer adamw decays decoupled by definition"),
        (["--lr", "-1"], "--lr must be positive, got -1.0"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(tmp_path, capsys, argv, message):
    assert main(_quick("--data", str(tmp_path), "--out", str(tmp_path / "out"), *argv)) == 2
    errors = _errors(capsys.readouterr().err)
    assert len(errors) == 1 and message.format(data=tmp_path) in errors[0]
    if "not found" in message:
        assert "--download" in errors[0] and "--dataset digits" in errors[0]


DIGITS = ["alexnet", "--epochs", "2", "--limit-batches", "3", "--batch-size", "16", "--hessian-every", "1",
          "--hessian-iters", "2", "--hessian-batch", "8", "--decay-every", "1", "--log-every", "4"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> tuple[list[str], dict, str]:
    """Two short digits epochs with everything on, logged offline: the argv, every ``Session.log`` call, stderr."""
    out = tmp_path_factory.mktemp("alexnet")
    argv = [*DIGITS, "--out", str(out), "--data", str(out)]
    err = io.StringIO()
    with recorded_logs() as calls, contextlib.redirect_stderr(err):
        code = main(argv)
    assert code == 0, err.getvalue()[-3000:]
    assert "--dataset auto: no CIFAR-10 under" in err.getvalue() and "curvature at step 0" in err.getvalue()
    return argv, calls, err.getvalue()


@pytest.fixture(scope="module")
def digits_run(digits) -> Path:
    (engine,) = digits[1]
    return Path(engine.find_callback(WandbLogger).run_dir)


@pytest.mark.slow
def test_digits_run_logs_every_reported_key_and_its_lineage(digits, digits_run):
    argv, calls, _ = digits
    check_config(calls, AlexNetSettings, argv, lambda args: resolve_args(args)[0])
    check_runs(calls)
    # Lineage: the run holds its data (scikit-learn's digits file, by reference and checksum) and its model.
    (refs,) = dataset_references(digits_run).values()
    assert refs[0][0].startswith("file://") and refs[0][0].endswith("digits.csv.gz") and refs[0][1]
    assert [a["type"] for a in artifacts(digits_run)].count("model") == 1


@pytest.mark.slow
def test_digits_run_read_back(digits_run):
    info = run_summary(digits_run)
    assert info["state"] == "finished" and info["exit_code"] == 0
    assert info["config"]["recipe"] == "digits" and info["config"]["wd_mode"] == "decoupled"
    assert info["config"]["_param_groups"]["no_decay_tensors"] == 8
    s = info["summary"]
    assert isinstance(s["val/acc"], float) and 0 <= s["test/acc"] <= 1  # the best, a plain number for sweeps
    assert s["wd/decay_params"] > 2e7 and s["wd/no_decay_params"] == 9354
    assert s["wd/stability_bound"] == 2 and s["wd/lr_sharpness"] == pytest.approx(1e-3 * (s["wd/hessian_top_eig"] + 5e-4))
    rows = history(digits_run)
    factors = [r["wd/decay_factor"] for r in rows if "wd/decay_factor" in r]
    assert factors and all(f == pytest.approx(1 - 1e-3 * 5e-4, abs=1e-6) for f in factors)
    # Pooled over the groups weighted by their squared norms: one group gives its own value, to rounding.
    assert all(r["wd/decay_factor_theory"] == pytest.approx(1 - 1e-3 * 5e-4, rel=1e-12)
               for r in rows if "wd/decay_factor_theory" in r)
    assert [r["epoch"] for r in rows if "val/acc" in r] == [1, 2]
    # conv1's 64 learned 3x3 filters as one picture.
    assert s["viz/conv1_filters"]["_type"] == "image-file" and s["viz/conv1_filters"]["width"] > 64
    fmaps = logged_table(digits_run, "viz/feature_maps")
    assert fmaps["columns"] == ["epoch", "input", "label", "layer", "feature_maps"]
    assert len(fmaps["data"]) == 4 * 5 and {r[3] for r in fmaps["data"]} == {f"conv{i}" for i in range(1, 6)}
    assert all(Path(r[4]["local_path"]).is_file() and Path(r[1]["local_path"]).is_file() for r in fmaps["data"])
    confusion = logged_table(digits_run, "test/confusion_matrix_table")
    assert confusion["columns"] == ["Actual", "Predicted", "nPredictions"]
    assert sum(r[2] for r in confusion["data"]) == 3 * 16  # every scored test image, once
    models = [a for a in artifacts(digits_run) if a["type"] == "model"]
    assert len(models) == 1 and set(models[0]["aliases"]) == {"best", "latest"} and models[0]["files"] == ["best.pt"]


@pytest.mark.slow
def test_every_sweep_yaml_optimises_a_metric_the_run_logs(digits_run):
    logged = {k for r in history(digits_run) for k in r}
    for path in sorted((ROOT / "sweeps").glob("*.yaml")):
        config = yaml.safe_load(path.read_text())
        if "alexnet" in config["command"]:
            assert config["metric"]["name"] in logged, path.name
