"""Scoring a classifier on labelled pictures: accuracy, per-class precision/recall, confusion."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.metrics import classification_report
from models.classifier.classifier import Classifier
from models.data import ClassificationData


@dataclass
class ClassifierEvaluation:
    report: dict
    probabilities: np.ndarray  # (N, K)
    labels: np.ndarray  # (N,) true class index


def evaluate_classifier(classifier: Classifier, data: ClassificationData) -> ClassifierEvaluation:
    unknown = sorted(set(data.class_names) - set(classifier.class_names))
    if unknown:
        raise ValueError(f"the data has classes the model does not know: {unknown}")
    labels = np.array([classifier.class_names.index(data.class_names[k]) for k in data.labels])
    probabilities = classifier.predict_proba(data.images)
    report = classification_report(labels, probabilities.argmax(axis=1), classifier.class_names)
    return ClassifierEvaluation(report, probabilities, labels)
