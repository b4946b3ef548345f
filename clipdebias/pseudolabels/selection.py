"""The confident set: which pseudo-labelled rows are trained on as labeled (with the pseudo-label
as their target) and which stay unlabeled.

``zeroshot`` splits the train rows by their debiased confidence (``--select-threshold``) or, class
balanced, by rank within each pseudo-label class (``--select-topk-per-class``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clipdebias.pseudolabels.labels import PseudoLabels


@dataclass(frozen=True)
class Selection:
    """Debiased pseudo-labels of the train rows and the split they induce.

    ``confident`` / ``rest``: positions into the train rows (sorted): the confident set trained with
    its pseudo-label (in ``zeroshot``, CLIP's label) as its target, and the unlabeled rest.
    ``paper_label``: the labels of the paper's default correction of the same teacher, when known.
    ``teacher_correction``: with kNN-refined train rows, the same mode on the unrefined teacher
    (:attr:`clipdebias.pseudolabels.offline.OfflineLabels.teacher`), which evaluation rows get.
    """

    pseudo: PseudoLabels
    confident: np.ndarray
    rest: np.ndarray
    paper_label: np.ndarray | None = None  # the paper's default correction, for comparison (reports)
    teacher_correction: PseudoLabels | None = None  # the unrefined teacher's correction (kNN only)

    @property
    def eval_correction(self) -> PseudoLabels:
        """The correction whose prior or offsets evaluation rows (which have no neighbours) get: the
        unrefined teacher's when the train rows were kNN-refined, else ``pseudo``'s own."""
        return self.teacher_correction if self.teacher_correction is not None else self.pseudo


def select_confident(
    labels: np.ndarray, confidence: np.ndarray, threshold: float, topk_per_class: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(confident, rest)`` positions (sorted) of pseudo-labelled rows.

    Without ``topk_per_class``: the rows whose confidence is at least ``threshold``. With it: per
    pseudo-label class, the ``topk_per_class`` most confident rows (all of them for a class that
    has fewer; ties broken by position), a class-balanced pick whatever the confidences are.
    """
    labels, confidence = np.asarray(labels), np.asarray(confidence)
    if topk_per_class is None:
        confident = np.flatnonzero(confidence >= threshold)
    else:
        if topk_per_class < 1:
            raise ValueError("topk_per_class must be at least 1")
        order = np.lexsort((np.arange(len(labels)), -confidence, labels))  # by class, then most confident
        ranked = labels[order]
        starts = np.searchsorted(ranked, ranked, side="left")
        rank_in_class = np.arange(len(order)) - starts
        confident = np.sort(order[rank_in_class < topk_per_class])
    rest = np.setdiff1d(np.arange(len(labels)), confident)
    return confident.astype(np.int64), rest.astype(np.int64)
