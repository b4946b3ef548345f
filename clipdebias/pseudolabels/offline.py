"""Offline pseudo-labels as ``pseudolabel`` and ``zeroshot`` make them: optional kNN refinement, then a
correction (``paper``, ``balance`` or ``none``), plus the teacher's own plain labels and the paper
correction's labels for comparison.

Order (docs/algorithm.md): the teacher's probabilities are refined with their images' neighbours
first (:class:`~clipdebias.pseudolabels.knn.KnnRefinedRows`), then corrected; the class prior or the
balanced offsets are those of the refined probabilities. The ``raw_*`` labels of the result are
always the teacher's own (neither refined nor corrected), so that "raw vs corrected" compares the
teacher with what the pipeline made of it. ``paper_label`` are the labels of the paper's default
correction (``tau`` :data:`~clipdebias.config.defaults.TAU`) of the teacher's own logits: the
baseline every report draws beside the chosen mode.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from clipdebias.config import defaults
from clipdebias.debias import dataset_prior, debias_logits
from clipdebias.pseudolabels.knn import KnnRefinedRows, check_refinement
from clipdebias.pseudolabels.labels import PseudoLabels, debiased_pseudo_labels
from clipdebias.pseudolabels.rows import LogitRows, ReportingRows, as_tensor
from clipdebias.utils.errors import OptionError, UserError
from clipdebias.utils.progress import NoProgress, Progress


@dataclass(frozen=True)
class KnnSettings:
    """``--knn K`` (0 = off), ``--knn-alpha A``, ``--knn-steps T``."""

    k: int = defaults.KNN
    alpha: float = defaults.KNN_ALPHA
    steps: int = defaults.KNN_STEPS

    @property
    def active(self) -> bool:
        return self.k > 0

    def record(self) -> dict:
        """The sidecar's / metrics' ``knn`` entry."""
        return {"k": self.k, "alpha": self.alpha, "steps": self.steps}


NO_KNN = KnnSettings()  # the default: no refinement


def check_knn_settings(knn: KnnSettings) -> None:
    """:class:`OptionError` unless ``k >= 0``, ``alpha`` is in [0, 1] and ``steps >= 1`` (``K < N`` is
    checked where ``N`` is known: :func:`clipdebias.clip.neighbours.check_k`)."""
    if isinstance(knn.k, bool) or not isinstance(knn.k, (int, np.integer)) or knn.k < 0:
        raise OptionError("knn", f"must be 0 (off) or a whole number of neighbours (got {knn.k})")
    check_refinement(knn.alpha, knn.steps)


@dataclass(frozen=True)
class OfflineLabels:
    """``pseudo``: the labels of the chosen mode (``raw_*``: the teacher's own plain labels);
    ``paper_label``: the paper's default correction of the teacher's own logits; ``knn``: the
    refinement used (``k == 0``: none)."""

    pseudo: PseudoLabels
    paper_label: np.ndarray
    knn: KnnSettings
    teacher: PseudoLabels | None = None  # the chosen mode on the unrefined teacher (with_teacher, kNN only)

    def sidecar_keys(self, num_classes: int) -> dict:
        """What the pseudo-label sidecar adds for the refinement and the paper baseline (docs/formats.md)."""
        return {
            "knn": self.knn.record(),
            "paper_tau": defaults.TAU,
            "paper_class_counts": np.bincount(self.paper_label, minlength=num_classes).tolist(),
        }


TEACHER_STAGES = ("teacher's class prior (comparison)", "teacher's plain and paper labels (comparison)")


def teacher_labels(
    logits: LogitRows, prior: np.ndarray | None, chunk_rows: int, progress: Progress | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(raw_label, raw_confidence, paper_label)`` of the teacher's own ``logits``: ``argmax z``,
    ``max softmax z`` and ``argmax(z - TAU log q)``. ``prior``: the teacher's ``q`` when known
    (else one more pass computes it)."""
    rows = ReportingRows(logits, progress or NoProgress(), TEACHER_STAGES if prior is None else TEACHER_STAGES[1:])
    q = dataset_prior(rows, chunk_size=chunk_rows) if prior is None else torch.as_tensor(prior, dtype=torch.float32)
    if not torch.isfinite(q).all():
        raise UserError("the logits contain NaN or infinite values")
    count = int(logits.shape[0])
    raw, confidence, paper = np.empty(count, np.int64), np.empty(count, np.float32), np.empty(count, np.int64)
    for start in range(0, count, chunk_rows):
        chunk = as_tensor(rows[start : start + chunk_rows])
        part = slice(start, start + chunk.shape[0])
        top, label = torch.softmax(chunk, dim=-1).max(dim=-1)
        raw[part], confidence[part] = label.cpu().numpy(), top.cpu().numpy()
        paper[part] = debias_logits(chunk, q, defaults.TAU).argmax(dim=-1).cpu().numpy()
    return raw, confidence, paper


def offline_pseudo_labels(
    logits: LogitRows,
    neighbours: np.ndarray | None = None,
    knn: KnnSettings = NO_KNN,
    *,
    mode: str = defaults.DEBIAS,
    tau: float = defaults.TAU,
    threshold: float = defaults.SELECT_THRESHOLD,
    target_prior: np.ndarray | None = None,
    chunk_rows: int = defaults.CHUNK_ROWS,
    top_k: int = 0,
    progress: Progress | None = None,
    with_teacher: bool = False,
) -> OfflineLabels:
    """Pseudo-labels of ``logits`` (``[N, C]``): refined with ``neighbours`` (``[N, K]`` row positions)
    when ``knn.k > 0``, corrected by ``mode`` (see the module docstring). ``with_teacher`` (``zeroshot``,
    whose evaluation rows have no neighbours): with kNN, also correct the unrefined teacher in ``mode``
    (:attr:`OfflineLabels.teacher`; its prior or offsets are what evaluation rows get)."""
    check_knn_settings(knn)
    progress = progress or NoProgress()
    rows: LogitRows = logits
    if knn.active:
        if neighbours is None or neighbours.shape != (logits.shape[0], knn.k):
            raise ValueError(f"give [N, {knn.k}] neighbours for --knn {knn.k}")
        rows = KnnRefinedRows(logits, neighbours, knn.alpha, knn.steps, chunk_rows=chunk_rows, progress=progress)
    pseudo = debiased_pseudo_labels(
        rows, tau, threshold, chunk_rows, top_k, mode=mode, target_prior=target_prior, progress=progress
    )
    if not knn.active and mode == "paper" and tau == defaults.TAU:
        return OfflineLabels(pseudo, pseudo.label, knn)
    teacher = None
    if knn.active and with_teacher:
        teacher = debiased_pseudo_labels(
            logits, tau, threshold, chunk_rows, mode=mode, target_prior=target_prior, progress=progress
        )
    # the teacher's own prior is the result's unless the rows were refined
    known_prior = teacher.prior if teacher is not None else (None if knn.active else pseudo.prior)
    raw, confidence, paper = teacher_labels(logits, known_prior, chunk_rows, progress)
    return OfflineLabels(replace(pseudo, raw_label=raw, raw_confidence=confidence), paper, knn, teacher)


def corrected_eval_logits(logits: torch.Tensor, pseudo: PseudoLabels) -> torch.Tensor:
    """Evaluation logits corrected as the train rows were, with what was estimated on train only
    (inductive): ``z - tau log q`` (paper, ``q`` the train prior), ``z - b`` (balance, ``b`` the train
    offsets), ``z`` (none). No kNN refinement is applied to evaluation rows."""
    if pseudo.mode == "balance":
        assert pseudo.balance is not None
        return logits - torch.as_tensor(pseudo.balance.offsets, dtype=logits.dtype, device=logits.device)
    if pseudo.mode == "none":
        return logits
    return debias_logits(logits, torch.as_tensor(pseudo.prior, dtype=torch.float32), pseudo.tau)
