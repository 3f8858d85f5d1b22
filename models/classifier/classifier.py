"""A trained classifier with its class names and preprocessing; saved as JSON + weights."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from models.classifier.network import ClassifierSpec, ResNetClassifier
from models.devices import autocast, resolve_device
from models.preprocess import Preprocess, with_channels

FORMAT = "steelsight-classifier/1"


class Classifier:
    def __init__(
        self,
        net: ResNetClassifier,
        spec: ClassifierSpec,
        preprocess: Preprocess,
        class_names: list[str],
        device: torch.device | str = "cpu",
    ) -> None:
        self.device = resolve_device(str(device))
        self.net = net.to(self.device).eval()
        self.spec = spec
        self.preprocess = preprocess
        self.class_names = list(class_names)

    @torch.inference_mode()
    def predict_proba(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Class probabilities (N, K) for uint8 pictures of any one size, grey (N, H, W) or
        RGB (N, H, W, 3): brought to the channels the network was trained on."""
        if images.ndim not in (3, 4) or images.dtype != np.uint8:
            raise ValueError(
                f"expected uint8 pictures (N, H, W) or (N, H, W, 3), got {images.dtype} "
                f"{images.shape}"
            )
        images = with_channels(images, self.spec.channels)
        out = []
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(self.preprocess(images[start : start + batch_size])).to(
                self.device
            )
            with autocast(self.device):
                logits = self.net(x)
            out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.class_names)), np.float32)

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.predict_proba(images).argmax(axis=1)

    def config(self) -> dict:
        return {
            "format": FORMAT,
            "network": asdict(self.spec),
            "preprocess": self.preprocess.to_dict(),
            "class_names": self.class_names,
        }

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "classifier.json").write_text(json.dumps(self.config(), indent=2) + "\n")
        torch.save(
            {k: v.detach().cpu() for k, v in self.net.state_dict().items()}, folder / "weights.pt"
        )
        return folder

    @staticmethod
    def load(folder: Path, device: torch.device | str = "cpu") -> Classifier:
        config = json.loads((folder / "classifier.json").read_text())
        if config.get("format") != FORMAT:
            raise ValueError(f"{folder}: format {config.get('format')!r}, expected {FORMAT!r}")
        spec = ClassifierSpec(**config["network"])
        net = ResNetClassifier(spec)
        net.load_state_dict(
            torch.load(folder / "weights.pt", map_location="cpu", weights_only=True)
        )
        return Classifier(
            net, spec, Preprocess(**config["preprocess"]), config["class_names"], device
        )
