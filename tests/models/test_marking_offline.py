"""The marking detector trains and predicts with the network blocked: every connection
attempt (DNS lookups included) is recorded and refused, and the test fails on any."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import yaml

from twin.config import TwinConfig
from twin.recorder import simulate

pytestmark = pytest.mark.slow


class NetworkBlocked(OSError):
    pass


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Refuse and record every outgoing connection and name lookup in this process."""
    attempts: list[str] = []

    def refuse(what: str):
        def blocked(*args, **kwargs):
            attempts.append(f"{what}{args[1:] if what == 'connect' else args}"[:200])
            raise NetworkBlocked(f"network blocked in this test: {what}")

        return blocked

    monkeypatch.setattr(socket.socket, "connect", refuse("connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", refuse("connect_ex"))
    monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    monkeypatch.setattr(socket, "gethostbyname", refuse("gethostbyname"))
    return attempts


def test_the_guard_sees_a_connection(no_network: list[str]) -> None:
    with pytest.raises(NetworkBlocked):
        socket.create_connection(("github.com", 443), timeout=1)
    assert no_network == ["create_connection(('github.com', 443),)"]


def test_detector_trains_and_predicts_offline(
    tmp_path: Path, home: Path, no_network: list[str]
) -> None:
    from models.identity.detector import MarkingDetector, fit, recipe_for
    from tasks.identity import find_pairs, write_yolo_dataset

    simulate(TwinConfig(), n_sheets=6, seed=8, out=tmp_path / "twin")
    dataset = write_yolo_dataset(find_pairs(tmp_path / "twin"), tmp_path / "yolo", 40)
    assert dataset.counts["train"] > 0 and dataset.counts["validation"] > 0
    labels = list((tmp_path / "yolo" / "labels" / "train").glob("*.txt"))
    assert any(p.read_text().startswith("0 ") for p in labels)  # markings are class 0

    import torch

    threads = torch.get_num_threads()
    epochs: list[tuple[int, int, dict]] = []
    during: list[int] = []

    def progress(*report) -> None:
        epochs.append(report)
        during.append(torch.get_num_threads())

    recipe = recipe_for("tiny", epochs=2, lr0=0.004)
    trained = fit(dataset.yaml, recipe, "cpu", 0, tmp_path / "runs", progress, dataset.largest)
    # a recipe's own learning rate reaches Ultralytics' optimizer
    args = yaml.safe_load((tmp_path / "runs" / "train" / "args.yaml").read_text())
    assert (args["optimizer"], args["lr0"]) == ("AdamW", 0.004)
    # ultralytics sets torch's threads to cores - 1 for CPU training: the run is given
    # the process's threads, and fit leaves them as they were, or every later torch call
    # in the process runs on fewer threads
    assert during == [threads, threads]
    assert torch.get_num_threads() == threads
    assert trained.history and "val_map50" in trained.history[-1]
    # a validation split this small cannot choose an epoch: the last weights are kept
    from models.identity.detector import MIN_VALIDATION_MARKINGS, validation_markings

    assert validation_markings(dataset.yaml) < MIN_VALIDATION_MARKINGS
    assert (tmp_path / "runs" / "train" / "weights" / "best.pt").exists()
    assert trained.detector.weights.name == "last.pt"
    # nor is it run (or are the weights saved) after every epoch, only after the last:
    # the epochs before have no validation score, rather than Ultralytics' zeros
    assert [(e, n) for e, n, _ in epochs] == [(1, 2), (2, 2)]
    assert all(row["train_loss"] > 0 for *_, row in epochs)
    assert [row["val_map50"] is None for *_, row in epochs] == [True, False]
    assert "val_map50" not in trained.history[0] and "val_map50" in trained.history[-1]
    pictures = dataset.holdout.images or [np.zeros((256, 1600), np.uint8)]
    found = trained.detector.detect(pictures)
    assert len(found) == len(pictures)
    assert all(f.ndim == 2 and f.shape[1] == 5 for f in found)

    reloaded = MarkingDetector.load(trained.detector.save(tmp_path / "bundle"), "cpu")
    again = reloaded.detect(pictures)
    assert all(np.allclose(a, b) for a, b in zip(found, again, strict=True))
    # the largest marking of each picture size in the training labels goes with it
    assert dataset.largest and trained.detector.largest == reloaded.largest
    assert reloaded.largest == {k: [w, h] for k, (w, h) in dataset.largest.items()}
    # (what it drops: test_boxes_far_larger_than_any_marking_..., below; a detector
    # trained this briefly gives no box at all to drop)

    assert no_network == [], f"ultralytics tried the network: {no_network}"
    # its config folder holds the settings and steelsight's local font, nothing fetched
    config = Path(os.environ["YOLO_CONFIG_DIR"]) / "Ultralytics"
    assert {p.name for p in config.iterdir()} <= {"settings.json", "Arial.ttf", "Arial.Unicode.ttf"}
    from ultralytics import settings

    assert not any(settings.get(key) for key in ("sync", "mlflow", "comet", "clearml", "dvc"))


def test_validation_markings_counts_the_boxes_of_the_validation_split(tmp_path: Path) -> None:
    from models.identity.detector import validation_markings

    for part, files in {"train": {"t": 5}, "validation": {"a": 2, "b": 1, "c": 0}}.items():
        folder = tmp_path / "labels" / part
        folder.mkdir(parents=True)
        for name, boxes in files.items():
            (folder / f"{name}.txt").write_text("0 0.5 0.5 0.1 0.1\n" * boxes)
    (tmp_path / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/validation\n")
    assert validation_markings(tmp_path / "data.yaml") == 3


def test_recipe_steps_choose_the_epochs():
    from models.identity.detector import recipe_for

    by_epochs = recipe_for("tiny", epochs=3, batch=16)
    assert by_epochs.epochs_for(1000) == 3
    by_steps = recipe_for("tiny", batch=16, steps=100)
    assert by_steps.epochs_for(160) == 10  # 10 steps an epoch
    assert by_steps.epochs_for(170) == 9  # 11 steps an epoch: 100 / 11 rounds to 9
    assert by_steps.epochs_for(5000) == 1  # never fewer than one epoch


def test_boxes_far_larger_than_any_marking_of_the_picture_size_are_dropped_or_made_unsure():
    from models.identity.detector import SIZE_MARGIN, marking_sized

    largest = {"256x1600": [400.0, 80.0]}
    rows = np.array(
        [
            [0, 0, 400, 80, 0.9],  # as large as the largest marking
            [0, 0, 400 * SIZE_MARGIN, 80 * SIZE_MARGIN, 0.8],  # at the margin
            [0, 0, 400 * SIZE_MARGIN + 2, 80, 0.7],  # wider, and sure of: unsure now
            [0, 0, 400, 80 * SIZE_MARGIN + 2, 0.5],  # taller, and unsure: no marking
            [100, 10, 130, 40, 0.3],  # a part of a marking the frame's edge cut
        ],
        np.float32,
    )
    sized = marking_sized(rows, "256x1600", largest, sure=0.6)
    assert sized[:, 4].tolist() == pytest.approx([0.9, 0.8, 0.6, 0.3])
    assert sized[2, 4] < 0.6  # under the operating score: kept only if it verifies
    assert rows[2, 4] == pytest.approx(0.7)  # the rows given are left as they were
    # a picture size training never showed, or a detector saved before sizes were kept
    assert len(marking_sized(rows, "320x640", largest, 0.6)) == 5
    assert len(marking_sized(rows, "256x1600", None, 0.6)) == 5
    assert marking_sized(np.zeros((0, 5), np.float32), "256x1600", largest, 0.6).shape == (0, 5)


def test_training_draws_from_its_own_random_while_other_threads_draw_too() -> None:
    """Ultralytics draws its augmentations from the ``random`` module; a thread of
    Prefect's drew from it too, at moments that depend on timing, and the demo's
    detector differed from run to run. Inside the guard the calling thread's draws
    follow its seed whatever another thread draws, and the module is as it was after."""
    import random
    import threading

    from models.identity.detector import _random_of_this_thread

    def draws(noise: bool) -> list[float]:
        stop = threading.Event()

        def other() -> None:
            while not stop.is_set():
                random.random()

        thread = threading.Thread(target=other)
        with _random_of_this_thread():
            random.seed(0)
            if noise:
                thread.start()
            out = []
            for _ in range(2000):
                out.append(random.uniform(0, 1))
                random.shuffle([1, 2, 3])
            stop.set()
        if noise:
            thread.join()
        return out

    before = random.random
    assert draws(noise=False) == draws(noise=True)
    assert random.random is before
    random.seed(0)
    first = random.random()
    random.seed(0)
    assert random.random() == first
