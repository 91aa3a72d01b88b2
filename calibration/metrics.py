r"""First-order calibration metrics: ECE (binned and debiased), reliability diagrams, Brier, NLL.

One place for every module that reports calibration. Each metric takes either

* class probabilities ``proba`` of shape ``(n, K)`` (rows summing to one) and integer labels
  ``y`` of shape ``(n,)``, or
* a sequence of :class:`probinfer.distributions.AnswerDistribution` (the posterior over final
  answers of an LLM particle run) and the sequence of true answers (``str`` or ``None``).

Top-label calibration compares the confidence ``c_i = max_k p_ik`` with the correctness
``z_i = 1{argmax_k p_ik = y_i}`` (for answers: the mode's probability, and whether the mode is
the true answer). With bins ``B_b`` of the confidences:

* binned ECE: ``sum_b (n_b / n) |mean_{B_b} z - mean_{B_b} c|``;
* squared calibration error ``sum_b (n_b / n) (mean_{B_b} (z - c))^2``, and its *debiased*
  estimator, which replaces the square of the bin mean of ``e_i = z_i - c_i`` by the
  U-statistic ``(S_b^2 - sum_{i in B_b} e_i^2) / (n_b (n_b - 1))``, ``S_b = sum e_i``: its
  expectation is ``sum_{i != j} d_i d_j / (n_b (n_b - 1))`` with ``d_i = P(z_i = 1) - c_i``,
  exactly 0 for a calibrated classifier (the plug-in square has the positive bias
  ``Var(mean e)``; Kumar, Liang and Ma 2019 debias the same way). The debiased ECE is the
  square root of its positive part (an L2 calibration error);
* Brier score ``mean_i sum_k (p_ik - 1{y_i = k})^2`` and NLL ``-mean_i log p_{i y_i}``
  (``inf`` when a true label has probability 0: the honest value of the log loss).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ._validation import (
    as_float_array,
    check_choice,
    check_class_codes,
    check_positive_int,
    check_same_length,
)

__all__ = [
    "ReliabilityDiagram",
    "brier_score",
    "expected_calibration_error",
    "negative_log_likelihood",
    "reliability_diagram",
    "squared_calibration_error",
    "top_label",
]

_BINNINGS = ("uniform", "quantile")


@dataclass(frozen=True)
class _Predictions:
    confidence: np.ndarray  # top-label probability
    correct: np.ndarray  # 1.0 when the top label is the truth
    p_true: np.ndarray  # probability of the true label
    sum_sq: np.ndarray  # sum_k p_k^2


def _is_answer_sequence(obj) -> bool:
    if isinstance(obj, np.ndarray) or not isinstance(obj, Sequence) or len(obj) == 0:
        return False
    from probinfer.distributions.answer import AnswerDistribution

    return isinstance(obj[0], AnswerDistribution)


def _from_answers(dists, truths) -> _Predictions:
    from probinfer.distributions.answer import AnswerDistribution

    if isinstance(truths, str) or not isinstance(truths, Sequence):
        raise TypeError("y must be a sequence of true answers (str or None), one per distribution")
    check_same_length(proba=dists, y=truths)
    conf, corr, p_true, sum_sq = [], [], [], []
    for i, (d, t) in enumerate(zip(dists, truths)):
        if not isinstance(d, AnswerDistribution):
            raise TypeError(f"proba[{i}] must be an AnswerDistribution, got {type(d).__name__}")
        if t is not None and not isinstance(t, str):
            raise TypeError(f"y[{i}] must be a str or None, got {type(t).__name__}")
        p = np.asarray(d.probs, dtype=np.float64)
        conf.append(p[0])  # answers are sorted by probability: index 0 is the mode
        corr.append(float(d.mode == t))
        j = d.index(t)
        p_true.append(p[j] if j >= 0 else 0.0)
        sum_sq.append(float(np.sum(p**2)))
    return _Predictions(*(np.asarray(a, dtype=np.float64) for a in (conf, corr, p_true, sum_sq)))


def check_proba(proba, name: str = "proba", atol: float = 1e-4) -> np.ndarray:
    """``proba`` as a float64 ``(n, K)`` array of probability rows (non-negative, sum 1)."""
    p = as_float_array(proba, name, ndim=2, allow_inf=False)
    if p.shape[1] < 2:
        raise ValueError(f"{name} must have at least 2 classes (columns), got {p.shape[1]}")
    if (p < 0).any():
        raise ValueError(f"{name} must be non-negative probabilities")
    bad = np.abs(p.sum(axis=1) - 1.0) > atol
    if bad.any():
        raise ValueError(
            f"{name} rows must sum to 1 (row {int(np.argmax(bad))} sums to "
            f"{p[np.argmax(bad)].sum():.6g})"
        )
    return p


def _predictions(proba, y) -> _Predictions:
    if _is_answer_sequence(proba):
        return _from_answers(proba, y)
    p = check_proba(proba)
    y = check_class_codes(y, p.shape[1])
    check_same_length(proba=p, y=y)
    top = p.argmax(axis=1)
    idx = np.arange(len(y))
    return _Predictions(p[idx, top], (top == y).astype(np.float64), p[idx, y], (p**2).sum(axis=1))


def top_label(proba, y) -> tuple[np.ndarray, np.ndarray]:
    """Top-label confidence and correctness (1.0/0.0), each of shape ``(n,)``."""
    pred = _predictions(proba, y)
    return pred.confidence, pred.correct


def _bin_index(confidence: np.ndarray, n_bins: int, binning: str):
    check_choice(binning, _BINNINGS, "binning")
    n_bins = check_positive_int(n_bins, "n_bins")
    if binning == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    else:
        edges = np.quantile(confidence, np.linspace(0.0, 1.0, n_bins + 1))
        edges[0], edges[-1] = 0.0, 1.0
    # bins (e_b, e_{b+1}], the first one closed at 0
    idx = np.clip(np.searchsorted(edges[1:-1], confidence, side="left"), 0, n_bins - 1)
    return idx, edges


def _binned(proba, y, n_bins, binning):
    pred = _predictions(proba, y)
    idx, edges = _bin_index(pred.confidence, n_bins, binning)
    nb = len(edges) - 1
    counts = np.bincount(idx, minlength=nb).astype(np.float64)
    err = pred.correct - pred.confidence
    s = np.bincount(idx, weights=err, minlength=nb)
    s2 = np.bincount(idx, weights=err**2, minlength=nb)
    return pred, idx, edges, counts, s, s2


def expected_calibration_error(
    proba, y, *, n_bins: int = 15, binning: str = "uniform", debiased: bool = False
) -> float:
    """Top-label expected calibration error.

    Parameters
    ----------
    proba, y
        Class probabilities ``(n, K)`` and labels ``(n,)``, or AnswerDistributions and true
        answers (see the module docstring).
    n_bins
        Number of confidence bins.
    binning
        ``"uniform"`` (equal-width bins on [0, 1]) or ``"quantile"`` (equal-count bins).
    debiased
        ``False``: the binned L1 ECE. ``True``: the square root of the positive part of the
        debiased squared calibration error (see :func:`squared_calibration_error`).
    """
    if debiased:
        return float(
            np.sqrt(
                max(
                    0.0,
                    squared_calibration_error(
                        proba, y, n_bins=n_bins, binning=binning, debiased=True
                    ),
                )
            )
        )
    _, _, _, counts, s, _ = _binned(proba, y, n_bins, binning)
    return float(np.abs(s).sum() / counts.sum())


def squared_calibration_error(
    proba, y, *, n_bins: int = 15, binning: str = "uniform", debiased: bool = True
) -> float:
    """Binned squared top-label calibration error ``sum_b (n_b/n) (acc_b - conf_b)^2``.

    With ``debiased=True`` (default) each bin's squared mean is replaced by its unbiased
    U-statistic (module docstring): the estimate has expectation exactly 0 for a calibrated
    classifier, so it can be negative; bins with a single point contribute 0.
    """
    _, _, _, counts, s, s2 = _binned(proba, y, n_bins, binning)
    n = counts.sum()
    if not debiased:
        nz = counts > 0
        return float(np.sum(s[nz] ** 2 / counts[nz]) / n)
    ok = counts > 1
    u = (s[ok] ** 2 - s2[ok]) / (counts[ok] * (counts[ok] - 1))
    return float(np.sum(counts[ok] * u) / n)


def brier_score(proba, y) -> float:
    """Multi-class Brier score ``mean_i sum_k (p_ik - 1{y_i = k})^2`` (0 best, 2 worst)."""
    pred = _predictions(proba, y)
    return float(np.mean(pred.sum_sq - 2.0 * pred.p_true + 1.0))


def negative_log_likelihood(proba, y) -> float:
    """Mean negative log probability of the true labels (``inf`` if one has probability 0)."""
    pred = _predictions(proba, y)
    with np.errstate(divide="ignore"):
        return float(-np.mean(np.log(pred.p_true)))


@dataclass(frozen=True)
class ReliabilityDiagram:
    """Per-bin confidence and accuracy of top-label predictions.

    Attributes
    ----------
    edges : ndarray of shape (n_bins + 1,)
    counts : ndarray of shape (n_bins,)
    confidence, accuracy : ndarray of shape (n_bins,)
        Bin means; NaN marks an empty bin (``counts == 0``), which plots skip.
    ece : float
        Binned ECE of the same bins.
    """

    edges: np.ndarray
    counts: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    ece: float

    def plot(self, ax=None):
        """Accuracy per bin against confidence, with the diagonal; returns the figure."""
        import matplotlib.pyplot as plt

        if ax is None:
            fig, ax = plt.subplots(figsize=(3.6, 3.4))
        else:
            fig = ax.figure
        ok = self.counts > 0
        centers = 0.5 * (self.edges[:-1] + self.edges[1:])
        widths = np.diff(self.edges)
        ax.bar(
            centers[ok],
            self.accuracy[ok],
            width=widths[ok],
            color="C0",
            alpha=0.7,
            edgecolor="k",
            lw=0.4,
            label="accuracy",
        )
        ax.plot(
            self.confidence[ok],
            self.accuracy[ok],
            "o",
            color="C3",
            ms=3,
            label="(confidence, accuracy)",
        )
        ax.plot([0, 1], [0, 1], "k--", lw=0.7)
        ax.set(
            xlabel="confidence",
            ylabel="accuracy",
            xlim=(0, 1),
            ylim=(0, 1),
            title=f"ECE {self.ece:.3f}",
        )
        ax.legend(loc="upper left", fontsize=7)
        return fig


def reliability_diagram(
    proba, y, *, n_bins: int = 15, binning: str = "uniform"
) -> ReliabilityDiagram:
    """Reliability-diagram data (and :meth:`ReliabilityDiagram.plot`) of top-label predictions."""
    pred, idx, edges, counts, s, _ = _binned(proba, y, n_bins, binning)
    nb = len(counts)
    conf_sum = np.bincount(idx, weights=pred.confidence, minlength=nb)
    acc_sum = np.bincount(idx, weights=pred.correct, minlength=nb)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.where(counts > 0, conf_sum / counts, np.nan)
        acc = np.where(counts > 0, acc_sum / counts, np.nan)
    return ReliabilityDiagram(edges, counts, conf, acc, float(np.abs(s).sum() / counts.sum()))
