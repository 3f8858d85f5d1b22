"""Training the imprint network: Keras 3 on the TensorFlow backend, in its own process.

TensorFlow must not share a process with torch (their LLVM builds clash), so the
retrain flow runs this module as ``python -m models.identity.imprint_train`` with the
observations in an .npz file, and reads back a folder with ``imprint.keras``,
``imprint.json`` and ``history.json``.

The loss is contrastive over sheets (symmetric InfoNCE, as in CLIP): in a batch of
sheets, each inspection crop must be nearer its own sheet's station crop than every
other sheet's, and the other way round. Half the batches are neighbouring sheet IDs
(the same heat, one digit apart), the hardest impostors a line produces. Sheets in
validation are never trained on; the epoch with the best validation rank-1 is kept,
and the matching threshold is chosen on validation (models.identity.matching).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from models.identity.crops import standardise
from models.identity.imprint import (
    CONFIG_FILE,
    KERAS_FILE,
    TRAINING_ENVIRONMENT,
    ImprintRecipe,
    build_network,
    default_config,
)

# before TensorFlow loads (nothing above imports it): TensorFlow, without oneDNN (see
# TRAINING_ENVIRONMENT), whoever starts this module
os.environ.update(TRAINING_ENVIRONMENT)
from models.identity.matching import ReferenceIndex, choose_threshold, pair_scores


def augment(rng: np.random.Generator, crop: np.ndarray, partial: bool) -> np.ndarray:
    """What differs between two looks at one marking: the detector's box, tilt, light,
    blur, noise, paint rubbed off, and (inspection) a marking cut by the frame edge."""
    h, w = crop.shape
    image = crop.astype(np.float32)
    if partial and rng.random() < 0.3:  # only part of the marking inside the frame
        keep = int(h * rng.uniform(0.55, 1.0))
        image = image[:keep] if rng.random() < 0.5 else image[h - keep :]
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    angle = rng.normal(0, 2.0)
    scale = rng.uniform(0.93, 1.07)
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    matrix[:, 2] += (rng.normal(0, 0.03 * w), rng.normal(0, 0.06 * h))
    image = cv2.warpAffine(image, matrix, (w, h), borderMode=cv2.BORDER_REFLECT)
    if rng.random() < 0.5:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.3, 1.5))
    for _ in range(int(rng.integers(0, 3))):  # rubbed-off patches
        ph, pw = int(rng.integers(h // 6, h // 2)), int(rng.integers(w // 12, w // 4))
        y, x = int(rng.integers(0, h - ph)), int(rng.integers(0, w - pw))
        image[y : y + ph, x : x + pw] = 0.5 * image[y : y + ph, x : x + pw] + 0.5 * np.median(image)
    gain, offset = rng.uniform(0.7, 1.3), rng.normal(0, 15)
    image = image * gain + offset + rng.normal(0, rng.uniform(1, 8), image.shape)
    return image.clip(0, 255).astype(np.uint8)


class Pairs:
    """Per sheet with both views: indices of its station and inspection crops."""

    def __init__(self, sheet_ids: list[str], sources: list[str], index: np.ndarray) -> None:
        station: dict[str, list[int]] = {}
        inspection: dict[str, list[int]] = {}
        for i in index:
            (station if sources[i] == "station" else inspection).setdefault(
                sheet_ids[i], []
            ).append(int(i))
        self.sheets = sorted(set(station) & set(inspection))
        self.station = station
        self.inspection = inspection

    def batch(self, rng: np.random.Generator, size: int, hard: bool) -> list[str]:
        size = min(size, len(self.sheets))
        if hard:
            start = int(rng.integers(0, len(self.sheets) - size + 1))
            return self.sheets[start : start + size]
        return [self.sheets[i] for i in rng.choice(len(self.sheets), size, replace=False)]


def _contrastive_loss(logit_scale: float, margin: float, dim: int):
    """Symmetric InfoNCE with an additive margin: a sheet's own similarity must beat every
    other sheet's by ``margin``, which is what leaves room for an open-set threshold."""
    import keras
    from keras import ops

    def loss(y_true, y_pred):
        a, b = y_pred[:, :dim], y_pred[:, dim:]
        n = ops.shape(a)[0]
        logits = (ops.matmul(a, ops.transpose(b)) - margin * ops.eye(n)) * logit_scale
        labels = ops.arange(n)
        ab = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        ba = keras.losses.sparse_categorical_crossentropy(
            labels, ops.transpose(logits), from_logits=True
        )
        return (ab + ba) / 2

    return loss


def _rank1(
    tower, crops, sheet_ids, sources, index
) -> tuple[float, np.ndarray, list, np.ndarray, list]:
    """Validation rank-1: inspection crops against the station crops of the same sheets."""
    station = [i for i in index if sources[i] == "station"]
    queries = [i for i in index if sources[i] == "inspection"]
    emb = np.asarray(
        tower.predict(standardise(crops[station + queries]), verbose=0, batch_size=256)
    )
    refs, q = emb[: len(station)], emb[len(station) :]
    ref_ids = [sheet_ids[i] for i in station]
    q_ids = [sheet_ids[i] for i in queries]
    best, _ = ReferenceIndex(ref_ids, refs).search(q)
    rank1 = float(np.mean([ref_ids[b] == t for b, t in zip(best, q_ids, strict=True)]))
    return rank1, q, q_ids, refs, ref_ids


def train(data: Path, out: Path, recipe: ImprintRecipe, seed: int) -> dict:
    import keras

    keras.utils.set_random_seed(seed)
    npz = np.load(data, allow_pickle=False)
    crops = npz["crops"]
    sheet_ids = [str(s) for s in npz["sheet_ids"]]
    sources = [str(s) for s in npz["sources"]]
    pairs = Pairs(sheet_ids, sources, npz["train"])
    if len(pairs.sheets) < 2:
        raise SystemExit("training needs at least two sheets seen by both cameras")
    validation = [int(i) for i in npz["validation"]]
    rng = np.random.default_rng(seed)
    size = crops.shape[1:]

    tower = build_network(size, recipe.width, recipe.dim)
    a, b = keras.Input((*size, 1)), keras.Input((*size, 1))
    joined = keras.layers.Concatenate()([tower(a), tower(b)])
    model = keras.Model([a, b], joined)
    total = recipe.epochs * recipe.steps_per_epoch
    schedule = keras.optimizers.schedules.CosineDecay(
        recipe.learning_rate * 0.1,
        decay_steps=total,
        warmup_target=recipe.learning_rate,
        warmup_steps=max(1, total // 20),
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=1e-4),
        loss=_contrastive_loss(recipe.logit_scale, recipe.margin, recipe.dim),
    )

    def batch():
        chosen = pairs.batch(rng, recipe.batch, hard=rng.random() < recipe.hard_share)
        s = [augment(rng, crops[rng.choice(pairs.station[k])], False) for k in chosen]
        q = [augment(rng, crops[rng.choice(pairs.inspection[k])], True) for k in chosen]
        return (standardise(np.stack(s)), standardise(np.stack(q))), np.zeros(len(chosen))

    history, best, best_weights = [], -1.0, None
    started = time.perf_counter()
    for epoch in range(1, recipe.epochs + 1):
        losses = [float(model.train_on_batch(*batch())) for _ in range(recipe.steps_per_epoch)]
        row = {"epoch": epoch, "train_loss": float(np.mean(losses))}
        if validation:
            row["val_rank1"] = _rank1(tower, crops, sheet_ids, sources, validation)[0]
            if row["val_rank1"] >= best:
                best, best_weights = row["val_rank1"], tower.get_weights()
        history.append(row)
        print(json.dumps(row), flush=True)
    seconds = time.perf_counter() - started
    if best_weights is not None:
        tower.set_weights(best_weights)

    config = default_config(recipe.dim, tuple(size))
    if validation:
        _, q, q_ids, refs, ref_ids = _rank1(tower, crops, sheet_ids, sources, validation)
        genuine, impostor = pair_scores(q, q_ids, refs, ref_ids)
        config["threshold"] = choose_threshold(
            genuine, impostor, recipe.target_far, recipe.registered
        )
    else:
        config["threshold"] = {"threshold": 0.5, "note": "no validation sheets: default"}
    config["recipe"] = recipe.to_params()
    out.mkdir(parents=True, exist_ok=True)
    tower.save(out / KERAS_FILE)
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    result = {"history": history, "seconds": seconds, "best_val_rank1": best, "config": config}
    (out / "history.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help=".npz of crops and splits")
    parser.add_argument("--out", type=Path, required=True, help="folder for the model")
    parser.add_argument("--recipe", required=True, help="ImprintRecipe as JSON")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    recipe = ImprintRecipe(**json.loads(args.recipe))
    train(args.data, args.out, recipe, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
