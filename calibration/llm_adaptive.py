r"""Adaptive inference-time budget: grow the budget until the calibrated rule says the answer
is settled.

A problem is run with a growing budget ``b_1 < b_2 < ... < b_K`` (default ``1, 2, 4, 8, 16``;
each stage is a fresh run of the algorithm with budget ``b_k`` and key
``fold_in(key, b_k)``, the keys of ``probinfer scale``). After stage ``k < K`` the rule stops
when the confidence of the stage's top answer (:func:`calibration.answer_sets.answer_confidence`:
its posterior mass, its reward score, or their product) is at least ``lambda``; otherwise it
goes on, and stage ``K`` always stops. With ``pool=True`` (default) the answer and confidence
after stage ``k`` are those of stages ``1..k`` pooled (independent particle islands weighted by
size times evidence). The compute of a problem is the sum over the stages run, so a problem
that runs every stage costs ``b_1 + ... + b_K`` (about twice ``b_K`` for doubling budgets).

``lambda`` is chosen by Learn-then-Test (:func:`calibration.answer_sets.learn_then_test`) on
calibration problems run at *every* stage, from the fixed grid ``thresholds`` scanned from
the largest (never stop early: zero loss) downward, with one of two 0/1 losses relative to the
maximal budget ``b_K``:

* ``"accuracy"``: the answer of the rule is wrong while the answer at ``b_K`` is right (the
  accuracy lost by stopping early; needs the true answers);
* ``"disagreement"``: the answer of the rule differs from the answer at ``b_K`` (needs no
  labels).

The answer "at ``b_K``" is the rule's own last stage, or, with ``reference=``, the top answer of
a separate run per problem (e.g. a fixed-budget run). Against its own last stage the rule that
never stops early has zero loss, so Learn-then-Test (fixed-sequence from the largest
``lambda``) always has a valid start.

Guarantee: for i.i.d. problems, with probability at least ``1 - delta`` over the calibration
problems, the expected loss of the chosen rule on a new problem is at most ``alpha``; with
``"accuracy"`` this means ``accuracy(rule) >= accuracy(b_K) - alpha`` in expectation over
problems (and the rule's own randomness).

A rule that "the conformal answer set is a single answer" is the same family: for a LAC
threshold ``q < 1/2`` the set is a singleton exactly when the top mass is at least ``1 - q``,
i.e. the ``"mass"`` confidence with ``lambda = 1 - q``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ._validation import as_float_array, check_alpha, check_choice
from .answer_sets import (
    _COMPUTE,
    _CONFIDENCES,
    RunSummary,
    _as_run,
    answer_confidence,
    check_true_answers,
    learn_then_test,
)

__all__ = ["AdaptiveBudget", "AdaptiveResult", "COMPUTE_FIELDS"]

COMPUTE_FIELDS = _COMPUTE
_LOSSES = ("accuracy", "disagreement")


@dataclass(frozen=True)
class AdaptiveResult:
    """The outcome of :meth:`AdaptiveBudget.run` on one problem.

    Attributes
    ----------
    answer
        The top answer of the stage where the rule stopped (``None``: no finished particle).
    stage, budget
        That stage (0-based) and its budget.
    confidence
        The confidence of each stage run.
    compute
        Compute summed over the stages run (:data:`COMPUTE_FIELDS`).
    results
        The run of each stage (``LLMResult``).
    """

    answer: str | None
    stage: int
    budget: int
    confidence: tuple[float, ...]
    compute: dict
    results: tuple


@lru_cache(maxsize=8192)
def _pooled_prefixes(row: tuple[RunSummary, ...]) -> tuple[RunSummary, ...]:
    """``pool(row[:1]), pool(row[:2]), ...`` (memoised: summaries hash by identity)."""
    return tuple(RunSummary.pool(row[: k + 1]) for k in range(len(row)))


def _check_budgets(budgets) -> tuple[int, ...]:
    if isinstance(budgets, str) or not isinstance(budgets, Sequence) or len(budgets) == 0:
        raise ValueError(
            f"budgets must be a non-empty increasing sequence of ints, got {budgets!r}"
        )
    out = []
    for b in budgets:
        if isinstance(b, bool) or not isinstance(b, int | np.integer) or b < 1:
            raise ValueError(f"budgets must hold integers >= 1, got {b!r}")
        out.append(int(b))
    if any(b2 <= b1 for b1, b2 in zip(out, out[1:])):
        raise ValueError(f"budgets must be strictly increasing, got {out}")
    return tuple(out)


class AdaptiveBudget:
    """Stop growing the budget once the answer is settled, with the loss controlled by LTT.

    Parameters
    ----------
    budgets
        Increasing budgets of the stages (default ``1, 2, 4, 8, 16``).
    alpha
        Level of the controlled loss, in ``(0, 1)``.
    delta
        Probability that the guarantee fails, in ``(0, 1)``.
    loss
        ``"accuracy"`` or ``"disagreement"`` (module docstring).
    confidence
        Stopping statistic of a stage run: ``"mass"``, ``"reward"``, ``"mass_reward"``
        (default) or a callable ``RunSummary -> float``.
    pool
        ``True`` (default): the answer and confidence after stage ``k`` come from all the runs
        so far pooled as independent islands (:meth:`RunSummary.pool
        <calibration.answer_sets.RunSummary.pool>`: weights ``N_r Z_r``), so no particle is
        wasted; ``False``: from the stage's own run only (then the last stage is exactly the
        fixed-budget run).
    thresholds
        Fixed grid of candidate ``lambda`` (default ``1.00, 0.99, ..., 0.00``).

    Attributes
    ----------
    threshold_
        The chosen ``lambda`` (``inf``: never stop early).
    n_calibration_
        Number of calibration problems.
    """

    def __init__(
        self,
        budgets=(1, 2, 4, 8, 16),
        *,
        alpha: float = 0.1,
        delta: float = 0.1,
        loss: str = "accuracy",
        confidence: str | Callable = "mass_reward",
        pool: bool = True,
        thresholds=None,
    ):
        self.budgets = _check_budgets(budgets)
        self.alpha = check_alpha(alpha)
        self.delta = check_alpha(delta, "delta")
        self.loss = check_choice(loss, _LOSSES, "loss")
        self.confidence = check_choice(confidence, _CONFIDENCES, "confidence", allow_callable=True)
        self.pool = bool(pool)
        grid = np.linspace(1.0, 0.0, 101) if thresholds is None else thresholds
        self.thresholds = np.sort(as_float_array(grid, "thresholds", allow_inf=False))[::-1]

    # ------------------------------------------------------------------ offline (cached runs)
    def _stages(self, runs, name="runs") -> list[list[RunSummary]]:
        if isinstance(runs, str) or not isinstance(runs, Sequence):
            raise TypeError(f"{name} must be a sequence (problems) of sequences (stages) of runs")
        if len(runs) == 0:
            raise ValueError(
                f"{name} must be non-empty (an empty calibration set has no guarantee)"
            )
        k = len(self.budgets)
        out = []
        for i, row in enumerate(runs):
            if isinstance(row, str) or not isinstance(row, Sequence) or len(row) != k:
                raise ValueError(
                    f"{name}[{i}] must hold one run per budget {self.budgets}, "
                    f"got {type(row).__name__}"
                    + (f" of length {len(row)}" if hasattr(row, "__len__") else "")
                )
            out.append([_as_run(r, f"{name}[{i}][{j}]") for j, r in enumerate(row)])
        return out

    def _stage_summaries(self, row: list[RunSummary]) -> list[RunSummary]:
        return list(_pooled_prefixes(tuple(row))) if self.pool else row

    def _arrays(self, stages):
        stages = [self._stage_summaries(row) for row in stages]
        conf = np.array([answer_confidence(row, self.confidence) for row in stages])
        top = [[r.top[0] for r in row] for row in stages]
        comp = np.array(
            [[[getattr(r, f) for f in COMPUTE_FIELDS] for r in row] for row in stages],
            dtype=np.float64,
        )
        return conf, top, comp if self.pool else np.cumsum(comp, axis=1)

    def _stop(self, conf: np.ndarray, lam) -> np.ndarray:
        """Stop stage of each problem for thresholds ``lam`` (shape ``(J,)``): ``(J, n)``."""
        k = conf.shape[1]
        lam = np.asarray(lam, dtype=np.float64)
        if k == 1:  # one budget: its stage is the last, so every problem stops there
            return np.zeros((lam.size, conf.shape[0]), dtype=np.int64)
        early = conf[None, :, : k - 1] >= lam[:, None, None]
        hit = early.any(axis=2)
        return np.where(hit, np.argmax(early, axis=2), k - 1)

    def _losses(self, stop, top, truths, ref):
        """0/1 losses ``(J, n)`` of the answers at the stop stages against the reference."""
        # answers as integer codes per problem: stage tops, then the reference (and truth)
        other = ref if self.loss == "disagreement" else truths
        codes = np.empty((len(top), len(top[0]) + 1), dtype=np.int64)
        ref_ok = np.ones(len(top), dtype=bool)
        for i, row in enumerate(top):
            table: dict = {}
            codes[i] = [table.setdefault(a, len(table)) for a in (*row, other[i])]
            if self.loss == "accuracy":
                ref_ok[i] = ref[i] == truths[i]
        chosen = np.take_along_axis(codes[None, :, :-1], stop[:, :, None], axis=2)[..., 0]
        return ((chosen != codes[None, :, -1]) & ref_ok[None, :]).astype(np.float64)

    def _reference(self, reference, top, n):
        if reference is None:
            return [row[-1] for row in top]
        if isinstance(reference, str) or not isinstance(reference, Sequence):
            raise TypeError("reference must be a sequence of runs, one per problem")
        if len(reference) != n:
            raise ValueError(f"reference must hold one run per problem ({n}), got {len(reference)}")
        return [_as_run(r, f"reference[{i}]").top[0] for i, r in enumerate(reference)]

    def calibrate(self, runs, answers=None, *, reference=None) -> AdaptiveBudget:
        """Choose ``lambda`` from calibration problems run at every stage.

        Parameters
        ----------
        runs
            ``runs[i][k]``: the run (``LLMResult``, ``AnswerDistribution`` or
            :class:`~calibration.answer_sets.RunSummary`) of problem ``i`` at ``budgets[k]``.
        answers
            True answers (required for ``loss="accuracy"``).
        reference
            Optional run per problem whose top answer is the reference of the loss (e.g. a
            separate run at a fixed budget); default: the rule's own last stage.
        """
        stages = self._stages(runs)
        truths = None
        if self.loss == "accuracy" or answers is not None:
            if answers is None:
                raise ValueError("answers (true answers) are required for loss='accuracy'")
            truths = check_true_answers(answers, len(stages))
        conf, top, _ = self._arrays(stages)
        ref = self._reference(reference, top, len(stages))
        stop = self._stop(conf, self.thresholds)
        j = learn_then_test(self._losses(stop, top, truths, ref), self.alpha, self.delta)
        self.threshold_ = float(self.thresholds[j]) if j >= 0 else math.inf
        self.n_calibration_ = len(stages)
        return self

    def _check_fitted(self):
        if not hasattr(self, "threshold_"):
            raise ValueError("call calibrate() first")

    def predict(self, runs) -> tuple[list[str | None], np.ndarray]:
        """The rule's answer and stop stage for problems with cached runs at every stage."""
        self._check_fitted()
        stages = self._stages(runs)
        conf, top, _ = self._arrays(stages)
        stop = self._stop(conf, [self.threshold_])[0]
        return [top[i][s] for i, s in enumerate(stop)], stop

    def evaluate(self, runs, answers, *, reference=None) -> dict:
        """Accuracy, loss and mean compute of the rule next to every fixed budget.

        Returns
        -------
        dict
            ``adaptive``: accuracy, the controlled loss (against ``reference``, as in
            :meth:`calibrate`), mean compute per problem (:data:`COMPUTE_FIELDS`), the
            fraction stopped at each stage; ``fixed``: one row per budget with the accuracy and
            mean compute of a single run at that budget.
        """
        self._check_fitted()
        stages = self._stages(runs)
        truths = check_true_answers(answers, len(stages))
        conf, top, comp = self._arrays(stages)
        ref = self._reference(reference, top, len(stages))
        stop = self._stop(conf, [self.threshold_])
        loss = self._losses(stop, top, truths, ref)[0]
        stop = stop[0]
        n = len(stages)
        ans = [top[i][s] for i, s in enumerate(stop)]
        used = comp[np.arange(n), stop]
        adaptive = {
            "threshold": self.threshold_,
            "accuracy": float(np.mean([a == t for a, t in zip(ans, truths)])),
            "loss": float(loss.mean()),
            "stop_fraction": [float(np.mean(stop == k)) for k in range(len(self.budgets))],
        }
        adaptive.update({f: float(used[:, j].mean()) for j, f in enumerate(COMPUTE_FIELDS)})
        fixed = []
        for k, b in enumerate(self.budgets):
            runs_k = [stages[i][k] for i in range(n)]
            row = {
                "budget": b,
                "accuracy": float(np.mean([r.top[0] == t for r, t in zip(runs_k, truths)])),
            }
            row.update({f: float(np.mean([getattr(r, f) for r in runs_k])) for f in COMPUTE_FIELDS})
            fixed.append(row)
        return {"num_problems": n, "adaptive": adaptive, "fixed": fixed}

    # ------------------------------------------------------------------ live
    def run(self, key, model, prompt: str, algorithm=None) -> AdaptiveResult:
        """Run ``algorithm`` (default :func:`probinfer.llm.particle_filter`) on ``prompt`` with
        the growing budget until the calibrated rule stops.

        Stage ``k`` uses the key ``jax.random.fold_in(key, budgets[k])``.
        """
        self._check_fitted()
        import jax

        if algorithm is None:
            from probinfer.llm.filtering import particle_filter as algorithm
        results, summaries, confs = [], [], []
        for k, b in enumerate(self.budgets):
            res = algorithm(jax.random.fold_in(key, b), model, prompt, b)
            results.append(res)
            summaries.append(RunSummary.from_result(res))
            stage = RunSummary.pool(summaries) if self.pool else summaries[-1]
            c = float(answer_confidence([stage], self.confidence)[0])
            confs.append(c)
            if c >= self.threshold_ or k == len(self.budgets) - 1:
                total = {f: sum(getattr(r, f) for r in summaries) for f in COMPUTE_FIELDS}
                return AdaptiveResult(stage.top[0], k, b, tuple(confs), total, tuple(results))
        raise AssertionError("unreachable")  # pragma: no cover
