"""Seeded, per-class labeled/unlabeled splits."""

from __future__ import annotations

import numpy as np

from clipdebias.config.budgets import LabelBudget
from clipdebias.utils.errors import UserError
from clipdebias.utils.formatting import count_of


def split_labeled(
    labels: np.ndarray, budget: LabelBudget, seed: int, class_names: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Split dataset positions into ``(labeled, unlabeled)`` index arrays, both sorted.

    For every class present in ``labels`` (ints, ``-1`` = unknown, never labeled) the budget's
    count of images is drawn without replacement with ``numpy.random.default_rng(seed)``, class by
    class in increasing label order, so the same labels and seed always give the same split.
    A class with fewer images than the budget asks for is an error, not a silent shortfall.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    labeled: list[np.ndarray] = []
    for cls in np.unique(labels[labels >= 0]):
        members = np.flatnonzero(labels == cls)
        count = budget.count_for(len(members))
        if count > len(members):
            name = class_names[cls] if class_names is not None else str(cls)
            raise UserError(
                f"--labels {budget.text}: class {name!r} has only {count_of(len(members), 'image')}, "
                f"fewer than the {count} labeled images asked for"
            )
        labeled.append(rng.permutation(members)[:count])
    labeled_idx = np.sort(np.concatenate(labeled)) if labeled else np.zeros(0, dtype=np.int64)
    unlabeled_idx = np.setdiff1d(np.arange(len(labels)), labeled_idx)
    return labeled_idx.astype(np.int64), unlabeled_idx.astype(np.int64)
