"""The metrics of ``clip-zoo eval``, on numpy arrays, with LAION clip_benchmark 1.6.2's definitions.

* top-k accuracy: a sample counts when its class is among the ``k`` highest logits; the count over
  ``n`` (clip_benchmark's ``accuracy``).
* mean per-class recall: the recall of every class that has samples, averaged (scikit-learn's
  ``balanced_accuracy_score``, which clip_benchmark calls).
* retrieval recall@k: a query is a hit when *any* of its positives is among its ``k`` best-scoring
  candidates; the fraction of hits (clip_benchmark's ``recall_at_k(...) > 0`` averaged).
  ``image_retrieval`` = text queries retrieving images, ``text_retrieval`` = image queries
  retrieving texts, as clip_benchmark names them.

``tests/test_eval.py`` compares each against clip_benchmark's own function on the same embeddings.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["topk_indices", "topk_accuracy", "mean_per_class_recall", "per_class_recall", "confusion_pairs",
           "retrieval_recall", "retrieval_metrics", "classification_metrics"]


def topk_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """``(N, k)`` column indices of each row's ``k`` largest scores, best first (ties: lower index first)."""
    scores = np.asarray(scores)
    k = min(int(k), scores.shape[1])
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def topk_accuracy(logits: np.ndarray, targets: np.ndarray, k: int) -> float:
    """Fraction of rows whose target is among the ``k`` largest logits."""
    targets = np.asarray(targets)
    hits = (topk_indices(logits, k) == targets[:, None]).any(axis=1)  # (N,)
    return float(hits.sum()) / len(targets)


def per_class_recall(targets: np.ndarray, preds: np.ndarray, n_classes: int) -> np.ndarray:
    """``(C,)`` recall of every class (NaN for a class without samples)."""
    targets, preds = np.asarray(targets), np.asarray(preds)
    support = np.bincount(targets, minlength=n_classes).astype(np.float64)
    correct = np.bincount(targets[targets == preds], minlength=n_classes).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return correct / support


def mean_per_class_recall(targets: np.ndarray, preds: np.ndarray) -> float:
    """The mean recall over the classes that have samples (scikit-learn's balanced accuracy)."""
    n = int(max(np.max(targets), np.max(preds))) + 1
    recall = per_class_recall(targets, preds, n)
    return float(np.mean(recall[~np.isnan(recall)]))


def classification_metrics(logits: np.ndarray, targets: np.ndarray) -> dict:
    """``acc1``, ``acc5`` (``None`` with fewer than 5 classes, as clip_benchmark's NaN) and
    ``mean_per_class_recall``."""
    preds = np.argmax(logits, axis=1)  # (N,)
    acc5 = topk_accuracy(logits, targets, 5) if logits.shape[1] >= 5 else None
    return {"acc1": topk_accuracy(logits, targets, 1), "acc5": acc5,
            "mean_per_class_recall": mean_per_class_recall(targets, preds)}


def confusion_pairs(targets: np.ndarray, preds: np.ndarray, top: int = 10) -> list[tuple[int, int, int]]:
    """The ``top`` most frequent ``(true class, predicted class, count)`` mistakes, most frequent first."""
    wrong = np.asarray(targets) != np.asarray(preds)
    pairs, counts = np.unique(np.stack([targets[wrong], preds[wrong]], axis=1), axis=0, return_counts=True)
    order = np.argsort(-counts, kind="stable")[:top]
    return [(int(pairs[i, 0]), int(pairs[i, 1]), int(counts[i])) for i in order]


def retrieval_recall(scores: np.ndarray, positives: np.ndarray, k: int) -> float:
    """Fraction of queries (rows of ``scores``, ``(Q, N)``) with a positive among their top ``k``."""
    top = topk_indices(scores, k)  # (Q, k)
    hits = np.take_along_axis(np.asarray(positives, bool), top, axis=1).any(axis=1)  # (Q,)
    return float(np.float32(hits.sum()) / np.float32(len(hits)))  # float32, as clip_benchmark's torch mean


def retrieval_metrics(image_embeds: np.ndarray, text_embeds: np.ndarray, text_image: Sequence[int],
                      ks: Sequence[int] = (1, 5, 10)) -> dict:
    """clip_benchmark's retrieval metrics for L2-normalized ``(I, D)`` images and ``(T, D)`` texts;
    ``text_image[t]`` is the image caption ``t`` belongs to."""
    scores = np.asarray(text_embeds, np.float32) @ np.asarray(image_embeds, np.float32).T  # (T, I)
    positives = np.zeros(scores.shape, bool)
    positives[np.arange(len(scores)), np.asarray(text_image)] = True
    out = {}
    for k in ks:
        out[f"image_retrieval_recall@{k}"] = retrieval_recall(scores, positives, k)
        out[f"text_retrieval_recall@{k}"] = retrieval_recall(scores.T, positives.T, k)
    return out
