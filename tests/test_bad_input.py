"""Every bad input a user can give gets one line naming the culprit and the fix, exit code 2, no
traceback, and nothing in ``--out`` written or changed. Each case runs through ``launch.main`` in this
process; the README's table "When something is wrong" lists the same cases."""

from __future__ import annotations

import functools
import http.server
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import launch
from dlhw.trainers.detection.dataset import IMAGES, MASKS, generate_pennfudan

UNREACHABLE = "http://127.0.0.1:9/x.jpg"  # the discard port: nothing listens, nothing leaves the machine


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DLHW_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """The bad inputs on disk, and a tiny valid Penn-Fudan folder for the cases that need data to get that far."""
    root = tmp_path_factory.mktemp("inputs")
    good = generate_pennfudan(root / "good", n=4, size=(40, 50))
    png = (good / IMAGES / "Generated00001.png").read_bytes()
    (root / "truncated.png").write_bytes(png[: len(png) // 2])
    (root / "notes.jpg").write_text("not a picture")
    (root / "a_file").write_text("in the way")
    (root / "empty" / IMAGES).mkdir(parents=True)
    (root / "empty" / MASKS).mkdir()
    nomask = root / "nomask"
    (nomask / IMAGES).mkdir(parents=True)
    (nomask / MASKS).mkdir()
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(nomask / IMAGES / "Lonely.png")
    corrupt = root / "corrupt"
    generate_pennfudan(corrupt, n=3, size=(40, 50))
    (corrupt / IMAGES / "Generated00002.png").write_bytes(png[:60])
    return {p.name: p for p in root.iterdir()}


def _error(capsys, out: Path | None, *argv: str) -> str:
    """Run ``launch.py ARGV``; check exit 2, one error line and an untouched ``out``; return the line."""
    earlier = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        earlier = out / "written-before.txt"
        earlier.write_text("keep me")
        argv = (*argv, "--out", str(out))
    code = launch.main([*argv, "--wandb-mode", "disabled"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("W&B mode:")]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    if earlier is not None:
        assert list(out.iterdir()) == [earlier] and earlier.read_text() == "keep me"
    return lines[0]


DETECT_DATA = ("--holdout", "1", "--skip-photo")


@pytest.mark.parametrize("argv, culprit", [
    (["alexnt"], "did you mean alexnet?"),
    (["alexnet", "--learning-rate", "0.1"], "unrecognized argument --learning-rate (did you mean --lr"),
    (["alexnet", "--learning_rate=0.1"], "unrecognized argument --learning-rate (did you mean --lr"),
    (["filters", "--filtres", "box_blur"], "did you mean --filters"),
    (["filters", "--filters", "sharpen_horizontl"],
     "unknown filter 'sharpen_horizontl' (did you mean sharpen_horizontal"),
    (["alexnet", "--dataset", "cifar11"], "invalid choice 'cifar11' (did you mean cifar10?)"),
    (["alexnet", "--recipe", "cours"], "invalid choice 'cours' (did you mean course?)"),
    (["--wandb-mode", "offlin", "iou"], "invalid choice 'offlin' (did you mean offline"),
    (["detect", "--backbone", "mobilenet_v9"], "unknown backbone 'mobilenet_v9' (did you mean mobilenet_v2"),
    (["detect", "--model", "maskrcnn_resnet50"],
     "unknown model 'maskrcnn_resnet50' (did you mean maskrcnn_resnet50_fpn"),
    (["alexnet", "--lr", "0"], "--lr must be positive, got 0.0"),
    (["alexnet", "--lr", "-1"], "--lr must be positive, got -1.0"),
    (["detect", "--lr", "0"], "--lr must be positive"),
    (["iou", "--lr", "0"], "--lr must be positive"),
    (["alexnet", "--weight-decay", "-1e-4"], "--weight-decay must be at least 0, got -0.0001"),
    (["alexnet", "--epochs", "0"], "--epochs must be positive, got 0"),
    (["detect", "--epochs", "0"], "--epochs must be positive"),
    (["alexnet", "--batch-size", "0"], "--batch-size must be positive, got 0"),
])
def test_unknown_names_and_bad_numbers(capsys, tmp_path, argv, culprit):
    assert culprit in _error(capsys, tmp_path / "out", *argv)


@pytest.mark.parametrize("folder, culprit", [
    ("missing", "{} is not a Penn-Fudan folder (it needs PNGImages/ and PedMasks/); pass the unpacked PennFudanPed "
                "folder to --data, or leave --data out to download it"),
    ("a_file", "is not a Penn-Fudan folder"),
    ("empty", "no PNG images in"),
    ("nomask", f"missing file {{}}/{MASKS}/Lonely_mask.png"),
    ("corrupt", f"cannot read {{}}/{IMAGES}/Generated00002.png"),
])
def test_bad_data_folders(capsys, tmp_path, files, folder, culprit):
    path = files.get(folder, tmp_path / folder)
    line = _error(capsys, tmp_path / "out", "detect", "--data", str(path), *DETECT_DATA)
    assert culprit.format(path) in line


@pytest.mark.parametrize("command", ["filters", "detect"])
@pytest.mark.parametrize("image, culprit", [
    ("nowhere.png", "image not found: {}"),
    ("truncated.png", "cannot read image {} (image file is truncated)"),
    ("notes.jpg", "cannot read image {} (cannot identify image file"),
])
def test_bad_images(capsys, tmp_path, files, command, image, culprit):
    path = files.get(image, tmp_path / image)
    data = ("--data", str(files["good"]), "--holdout", "1") if command == "detect" else ()
    line = _error(capsys, tmp_path / "out", command, "--image", str(path), *data)
    assert culprit.format(path) in line and "--image" in line


def test_an_image_url_that_fails(capsys, tmp_path, files):
    line = _error(capsys, tmp_path / "out", "detect", "--image", UNREACHABLE, "--data", str(files["good"]),
                  "--holdout", "1")
    assert line.startswith(f"error: --image cannot download {UNREACHABLE}") and "pass its path" in line


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # the request log would be a second stderr line
        pass


def test_an_image_url_that_is_not_an_image_is_not_kept(capsys, tmp_path, files):
    served = tmp_path / "site"
    served.mkdir()
    (served / "photo.jpg").write_text("<html>moved</html>")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/photo.jpg"
    try:
        line = _error(capsys, tmp_path / "out", "detect", "--image", url, "--data", str(files["good"]),
                      "--holdout", "1")
    finally:
        server.shutdown()
        server.server_close()
    assert line.startswith(f"error: cannot read image {url} (what it sent is not an image)")
    assert not (tmp_path / "cache" / "photos" / "photo.jpg").exists()


@pytest.mark.parametrize("out, reason", [
    ("/proc/forbidden", "No such file or directory"),  # /proc and /sys refuse new folders, even to root
    ("/sys/dlhw-out", "Operation not permitted"),
    ("{files}/a_file", "{files}/a_file is a file"),
    ("{files}/a_file/sub", "{files}/a_file is a file"),
])
def test_an_out_that_cannot_be_written(capsys, files, out, reason):
    root = str(files["a_file"].parent)
    out, reason = out.format(files=root), reason.format(files=root)
    line = _error(capsys, None, "iou", "--out", out)
    assert line == f"error: cannot write to --out {out} ({reason}); pass --out a folder you can write to"
    assert files["a_file"].read_text() == "in the way"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through a folder's permissions; /proc and /sys cover it")
def test_an_out_without_write_permission(capsys, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "written-before.txt").write_text("keep me")
    locked.chmod(0o555)
    try:
        line = _error(capsys, None, "alexnet", "--out", str(locked / "run"))
    finally:
        locked.chmod(0o755)
    assert f"--out {locked / 'run'} (Permission denied)" in line
    assert [p.name for p in locked.iterdir()] == ["written-before.txt"]


def test_help_creates_no_folder(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        launch.main(["--out", str(tmp_path / "new"), "alexnet", "--help"])
    assert exit_.value.code == 0 and "--lr" in capsys.readouterr().out
    assert not (tmp_path / "new").exists()
