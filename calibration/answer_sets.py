r"""Calibrated answers from LLM particle runs: conformal answer sets, calibrated confidence and
answer-or-abstain with Learn-then-Test risk control.

A particle run (:func:`probinfer.llm.particle_filter` and the other algorithms of
:mod:`probinfer.llm`) ends with a posterior over final answers, an
:class:`~probinfer.distributions.AnswerDistribution`. Given a labelled *calibration set* of
problems (the run on each problem and its true answer), this module turns those posteriors
into statements with finite-sample guarantees. Every function accepts, per problem, an
:class:`~probinfer.llm.LLMResult`, an :class:`~probinfer.distributions.AnswerDistribution` or a
:class:`RunSummary` (what this module keeps of a run; it can be stored as JSON).

Conformal answer sets (:class:`ConformalAnswerSets`)
    Score of the true answer ``y`` of a problem with answer masses ``p``:

    * ``"lac"``: ``s = 1 - p(y)``;
    * ``"aps"``: ``s = sum_{a before y} p(a) + u p(y)`` over answers ordered by mass (``u = 1``,
      or ``u ~ U(0, 1)`` with ``randomized=True``).

    An answer that no particle produced has mass 0 and score 1 (the largest possible); it is
    represented in the sets by the explicit element :data:`OTHER` ("any answer the particles
    did not produce"), so the guarantee holds even when the true answer is absent from every
    particle. With ``n`` calibration scores and ``k = ceil((n + 1)(1 - alpha))`` the threshold
    ``q`` is the ``k``-th smallest score, and the set of a new problem is ``{a : s(a) <= q}``,
    listed in order of mass, with :data:`OTHER` last. If the problems are exchangeable,

    .. math:: P(y_{n+1} \in C(x_{n+1})) \ge 1 - \alpha,

    marginally over the calibration set and the new problem, whatever the language model and
    the reward model (a bad PRM gives large sets, not lost coverage). When ``k > n``
    (``n < 1/alpha - 1``) no finite threshold has the guarantee and the documented result is
    the *infinite set*: every answer and :data:`OTHER`. LAC sets may be empty (no answer has
    enough mass); this is part of the guarantee, not an error.

Calibrated confidence (:class:`ConfidenceCalibrator`)
    Maps the confidence of the top answer (by default its posterior mass) to
    ``P(top answer correct)`` with isotonic regression or Platt scaling fitted on the
    calibration problems; :func:`confidence_report` gives the ECE and the reliability diagrams
    (:mod:`calibration.metrics`) before and after.

Answer or abstain (:class:`SelectiveAnswerer`)
    Answers when the confidence is at least a threshold ``lambda``, chosen by Learn-then-Test
    (Angelopoulos, Bates, Candes, Jordan, Lei 2021) so that the error rate among answered
    problems is at most ``alpha`` with probability at least ``1 - delta`` over the calibration
    set (see :func:`learn_then_test` for the exact statement).

The top answer of a run is its answer of highest posterior mass that is not ``None``
(unfinished), the ``"mass"`` selection rule of :func:`probinfer.llm.result.select_answer`.

These classes are not scikit-learn estimators, on purpose: their input is one particle run
per problem (not a numeric feature matrix ``X``), the answers of each problem are its own (no
fixed ``classes_``), and there is no model to fit before calibrating (the language model has
already run), so neither a Pipeline nor scikit-learn's estimator checks (numeric ``X``, fixed
classes) would apply; they validate their parameters when constructed. Their conformal
core is shared with :class:`~calibration.SplitConformalClassifier` (the same score functions
and the same order statistic, which warns when ``n`` is too small for ``alpha``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ._validation import as_float_array, as_generator, check_alpha, check_choice
from .classification import class_scores, label_scores, prediction_sets
from .quantile import conformal_quantile

__all__ = [
    "OTHER",
    "AnswerSet",
    "ConfidenceCalibrator",
    "ConformalAnswerSets",
    "RunSummary",
    "SelectiveAnswerer",
    "answer_confidence",
    "as_run_summaries",
    "check_true_answers",
    "confidence_report",
    "learn_then_test",
    "ltt_p_values",
    "read_runs",
    "summarize_sets",
]

_SCORES = ("lac", "aps")
_COMPUTE = ("tokens_generated", "tokens_encoded", "lm_calls", "reward_calls")
_CONFIDENCES = ("mass", "reward", "mass_reward")


class _Other:
    """The element of an answer set that stands for every answer no particle produced."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "OTHER"

    def __reduce__(self):
        return (_Other, ())


#: Sentinel: "any answer that no particle produced" (a set holding it also holds every
#: produced answer, so a set with ``OTHER`` contains every possible answer).
OTHER = _Other()


# ---------------------------------------------------------------------------------- runs
@dataclass(frozen=True, eq=False)
class RunSummary:
    """What the calibration methods keep of one particle run (storable as JSON).

    Parameters
    ----------
    answers
        The final answer of each particle (``None``: unfinished).
    log_weights
        Their final log weights (any normalisation).
    last_scores
        The reward model's last score of each particle (``nan``: none).
    log_evidence
        The run's estimate of ``log Z`` (``None`` when the algorithm has none).
    budget
        The budget the run was granted (``None`` when unknown).
    tokens_generated, tokens_encoded, lm_calls, reward_calls
        The compute the run used (:class:`probinfer.llm.Usage`).
    """

    answers: tuple
    log_weights: np.ndarray
    last_scores: np.ndarray
    log_evidence: float | None = None
    budget: int | None = None
    tokens_generated: int = 0
    tokens_encoded: int = 0
    lm_calls: int = 0
    reward_calls: int = 0

    def __post_init__(self):
        answers = tuple(self.answers)
        n = len(answers)
        if n == 0:
            raise ValueError("answers must be non-empty (one per particle)")
        lw = as_float_array(self.log_weights, "log_weights")
        sc = np.array([np.nan if s is None else float(s) for s in self.last_scores])
        if lw.shape != (n,) or sc.shape != (n,):
            raise ValueError(
                f"log_weights and last_scores must have one entry per answer ({n}), got "
                f"{lw.shape} and {sc.shape}"
            )
        if np.all(lw == -np.inf) or np.any(lw == np.inf):
            raise ValueError("log_weights must be finite or -inf, and not all -inf")
        object.__setattr__(self, "answers", answers)
        object.__setattr__(self, "log_weights", lw - np.logaddexp.reduce(lw))
        object.__setattr__(self, "last_scores", sc)

    @classmethod
    def from_distribution(cls, dist, **kwargs) -> RunSummary:
        """From an :class:`~probinfer.distributions.AnswerDistribution` (no reward scores)."""
        lw = np.asarray(dist.logits, dtype=np.float64)
        return cls(dist.answers, lw, np.full(lw.size, np.nan), **kwargs)

    @classmethod
    def from_result(cls, result) -> RunSummary:
        """From an :class:`~probinfer.llm.LLMResult`."""
        u = result.usage
        return cls(
            result.answers,
            np.asarray(result.particles.log_weights, dtype=np.float64),
            [s[-1] if s else None for s in result.trajectories.scores],
            result.log_evidence,
            result.budget,
            int(u.tokens_generated),
            int(u.tokens_encoded),
            int(u.lm_calls),
            int(u.reward_calls),
        )

    @classmethod
    def from_dict(cls, d: dict) -> RunSummary:
        """From the JSON form (:meth:`to_dict`)."""
        return cls(
            d["answers"],
            d["log_weights"],
            d.get("last_score", [None] * len(d["answers"])),
            d.get("log_evidence"),
            d.get("budget"),
            **{f: int(d.get(f, 0)) for f in _COMPUTE},
        )

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {
            "answers": list(self.answers),
            "log_weights": [float(x) for x in self.log_weights],
            "last_score": [None if np.isnan(x) else float(x) for x in self.last_scores],
            "log_evidence": self.log_evidence,
            "budget": self.budget,
            **self.compute,
        }

    @classmethod
    def pool(cls, runs: Sequence[RunSummary]) -> RunSummary:
        """Independent runs of the same problem as one particle system ("islands").

        Run ``r`` with ``N_r`` particles and evidence estimate ``Z_r`` gets the weight
        ``N_r Z_r`` (``N_r`` alone when a run has no evidence estimate): since ``Z_r`` times
        the run's weighted average is an unbiased estimate of the unnormalised target
        integral, the pooled weighted average is consistent for the same posterior. The
        compute is the sum over the runs.
        """
        runs = [_as_run(r, f"runs[{i}]") for i, r in enumerate(runs)]
        if not runs:
            raise ValueError("runs must be non-empty")
        use_z = all(r.log_evidence is not None for r in runs)
        lw = np.concatenate(
            [
                r.log_weights + math.log(len(r.answers)) + (r.log_evidence if use_z else 0.0)
                for r in runs
            ]
        )
        budgets = [r.budget for r in runs]
        return cls(
            sum((r.answers for r in runs), ()),
            lw,
            np.concatenate([r.last_scores for r in runs]),
            float(np.logaddexp.reduce(lw)) - math.log(len(lw)) if use_z else None,
            None if None in budgets else sum(budgets),
            **{f: sum(getattr(r, f) for r in runs) for f in _COMPUTE},
        )

    @cached_property
    def distribution(self):
        """The posterior over final answers, an
        :class:`~probinfer.distributions.AnswerDistribution`."""
        from probinfer.distributions.answer import AnswerDistribution

        return AnswerDistribution(list(self.answers), log_weights=self.log_weights)

    @cached_property
    def masses(self) -> tuple[tuple, np.ndarray]:
        """The distinct answers by descending mass (ties: first appearance) and their masses,
        as in :attr:`distribution` but computed with NumPy (fast)."""
        mass: dict = {}
        for a, w in zip(self.answers, np.exp(self.log_weights)):
            mass[a] = mass.get(a, 0.0) + w
        names = tuple(sorted(mass, key=lambda a: -mass[a]))  # stable: ties by first appearance
        p = np.array([mass[a] for a in names])
        return names, p / p.sum()

    def index(self, answer) -> int:
        """Position of ``answer`` in :attr:`masses` (``-1``: no particle gave it)."""
        try:
            return self.masses[0].index(answer)
        except ValueError:
            return -1

    @cached_property
    def reward(self) -> dict:
        """``{answer: weighted mean of the last reward score}`` over the particles that gave
        the answer (answers without any score are left out)."""
        w = np.exp(self.log_weights)
        ok = np.isfinite(self.last_scores)
        out = {}
        for a in self.masses[0]:
            m = np.array([b == a for b in self.answers]) & ok
            if m.any() and w[m].sum() > 0:
                out[a] = float(np.sum(w[m] * self.last_scores[m]) / np.sum(w[m]))
        return out

    @cached_property
    def top(self) -> tuple[str | None, float]:
        """The top answer (highest mass, not ``None``) and its mass; ``(None, 0.0)`` when
        no particle finished."""
        for a, p in zip(*self.masses):
            if a is not None and p > 0:
                return a, float(p)
        return None, 0.0

    @property
    def compute(self) -> dict[str, int]:
        """The compute used, as a dict."""
        return {f: getattr(self, f) for f in _COMPUTE}


def _as_run(x, where: str) -> RunSummary:
    from probinfer.distributions.answer import AnswerDistribution

    if isinstance(x, RunSummary):
        return x
    if isinstance(x, AnswerDistribution):
        return RunSummary.from_distribution(x)
    if hasattr(x, "answer_distribution") and hasattr(x, "particles"):
        return RunSummary.from_result(x)
    raise TypeError(
        f"{where} must be an LLMResult, AnswerDistribution or RunSummary, got {type(x).__name__}"
    )


def as_run_summaries(results, name: str = "results") -> list[RunSummary]:
    """Validate a non-empty sequence of runs (one per problem) as :class:`RunSummary`."""
    if isinstance(results, str) or not isinstance(results, Sequence):
        raise TypeError(
            f"{name} must be a sequence of LLMResult/AnswerDistribution/RunSummary (one per "
            f"problem), got {type(results).__name__}"
        )
    if len(results) == 0:
        raise ValueError(f"{name} must be non-empty (an empty calibration set has no guarantee)")
    return [_as_run(r, f"{name}[{i}]") for i, r in enumerate(results)]


def check_true_answers(answers, n: int, name: str = "answers") -> list[str]:
    """Validate the true answers: a sequence of ``n`` strings (``None`` = missing: an error)."""
    if isinstance(answers, str) or not isinstance(answers, Sequence):
        raise TypeError(
            f"{name} must be a sequence of true answers (str), one per result, "
            f"got {type(answers).__name__}"
        )
    if len(answers) != n:
        raise ValueError(
            f"{name} must give one true answer per result: got {len(answers)} answers for "
            f"{n} results"
        )
    out = []
    for i, a in enumerate(answers):
        if a is None:
            raise ValueError(
                f"{name}[{i}] is missing (None): every calibration problem needs its true answer"
            )
        if not isinstance(a, str):
            raise TypeError(f"{name}[{i}] must be a str, got {type(a).__name__}")
        out.append(a)
    return out


def answer_confidence(runs: Sequence[RunSummary], kind: str | Callable = "mass") -> np.ndarray:
    """Confidence in the top answer of each run.

    Parameters
    ----------
    runs
        Run summaries.
    kind
        ``"mass"``: the top answer's posterior mass; ``"reward"``: the weighted mean last
        reward score of the particles that gave it; ``"mass_reward"``: their product; or a
        callable ``RunSummary -> float``. A run without a finished particle has confidence 0.
    """
    if callable(kind):
        out = np.array([float(kind(r)) for r in runs], dtype=np.float64)
        if np.isnan(out).any():
            raise ValueError("confidence callable returned NaN")
        return out
    check_choice(kind, _CONFIDENCES, "confidence")
    out = np.empty(len(runs))
    for i, r in enumerate(runs):
        a, p = r.top
        if a is None:
            out[i] = 0.0
            continue
        if kind != "mass" and a not in r.reward:
            raise ValueError(
                f"confidence={kind!r} needs reward scores, but run {i} has none (no reward model)"
            )
        out[i] = p if kind == "mass" else (r.reward[a] if kind == "reward" else p * r.reward[a])
    return out


def _correct(runs: Sequence[RunSummary], truths: Sequence[str]) -> np.ndarray:
    return np.array([r.top[0] == t for r, t in zip(runs, truths)], dtype=np.float64)


# ---------------------------------------------------------------------------------- sets
@dataclass(frozen=True)
class AnswerSet:
    """A conformal answer set.

    Attributes
    ----------
    answers
        The answers in the set, in order of posterior mass (``None``, "unfinished", is never
        listed: it is never a true answer).
    other
        Whether the set holds :data:`OTHER`, i.e. every answer no particle produced (then it
        also holds every produced answer: the set contains every possible answer).
    """

    answers: tuple[str, ...]
    other: bool

    def __contains__(self, answer) -> bool:
        return self.other or answer in self.answers

    def __iter__(self):
        yield from self.answers
        if self.other:
            yield OTHER

    def __len__(self) -> int:
        return len(self.answers) + int(self.other)

    @property
    def is_singleton(self) -> bool:
        """Exactly one answer and not :data:`OTHER`: the answer is settled."""
        return len(self.answers) == 1 and not self.other


def _padded(runs: Sequence[RunSummary], width: int | None = None):
    """Masses as a zero-padded ``(n, K + 1)`` array: column ``K_i`` of row ``i`` (mass 0)
    is :data:`OTHER`."""
    k = max(len(r.masses[0]) for r in runs) + 1
    k = max(k, width or 0, 2)
    p = np.zeros((len(runs), k))
    for i, r in enumerate(runs):
        q = r.masses[1]
        p[i, : q.size] = q
    return p


class ConformalAnswerSets:
    """Split-conformal answer sets from particle runs (see the module docstring).

    Parameters
    ----------
    alpha
        Miscoverage level in ``(0, 1)``.
    score
        ``"lac"`` (``1 - p(y)``) or ``"aps"`` (mass of the answers ranked before ``y`` plus
        ``u p(y)``).
    randomized
        APS only: ``u ~ U(0, 1)`` (needs ``seed``), for coverage close to exactly
        ``1 - alpha``; otherwise ``u = 1`` (conservative).
    tol
        Scores within ``tol`` above the threshold count as ties (absorbs round-off).

    Attributes
    ----------
    scores_
        Calibration scores of the true answers.
    quantile_
        The threshold ``q`` (``inf``: the infinite set).
    n_calibration_
        Number of calibration problems.

    Notes
    -----
    Guarantee (exchangeable problems): ``P(y in C) >= 1 - alpha``; with ``randomized=True``
    and no ties among scores also ``<= 1 - alpha + 1/(n + 1)``.
    """

    def __init__(
        self, alpha: float = 0.1, *, score: str = "lac", randomized: bool = False, tol=1e-9
    ):
        check_choice(score, _SCORES, "score")
        if randomized and score != "aps":
            raise ValueError("randomized applies to score='aps'")
        if not (isinstance(tol, int | float) and tol >= 0):
            raise ValueError(f"tol must be a number >= 0, got {tol!r}")
        self.alpha = check_alpha(alpha)
        self.score = score
        self.randomized = bool(randomized)
        self.tol = float(tol)

    def _u(self, n: int, seed):
        return as_generator(seed).uniform(size=n) if self.randomized else None

    def scores(self, results, answers, *, seed=None) -> np.ndarray:
        """Conformity scores of the true ``answers`` (1 for an answer no particle produced)."""
        runs = as_run_summaries(results)
        truths = check_true_answers(answers, len(runs))
        p = _padded(runs)
        idx = np.array(
            [r.index(t) if r.index(t) >= 0 else len(r.masses[0]) for r, t in zip(runs, truths)]
        )
        s = label_scores(p, idx, self.score, u=self._u(len(runs), seed))
        return np.clip(s, 0.0, 1.0)

    def calibrate(self, results, answers, *, seed=None) -> ConformalAnswerSets:
        """Compute the threshold from labelled calibration runs.

        Parameters
        ----------
        results
            One run per calibration problem (non-empty).
        answers
            The true answer of each problem (``str``).
        seed
            Source of the uniforms for ``randomized=True`` (int or ``numpy.random.Generator``).
        """
        self.scores_ = self.scores(results, answers, seed=seed)
        self.n_calibration_ = len(self.scores_)
        self.quantile_ = float(conformal_quantile(self.scores_, self.alpha))
        return self

    def predict_set(self, results, *, seed=None) -> list[AnswerSet]:
        """The answer set of each run (answers by mass, :data:`OTHER` last)."""
        if not hasattr(self, "quantile_"):
            raise ValueError("call calibrate() before predict_set()")
        runs = as_run_summaries(results)
        p = _padded(runs)
        s = class_scores(p, self.score, u=self._u(len(runs), seed))
        member = prediction_sets(s, self.quantile_, self.tol)
        out = []
        for i, r in enumerate(runs):
            k = len(r.masses[0])
            names = [a for j, a in enumerate(r.masses[0]) if member[i, j]]
            other = bool(member[i, k]) or math.isinf(self.quantile_)
            out.append(AnswerSet(tuple(a for a in names if a is not None), other))
        return out

    def evaluate(self, results, answers, *, seed=None) -> dict:
        """Coverage and set sizes on labelled test runs."""
        sets = self.predict_set(results, seed=seed)
        truths = check_true_answers(answers, len(sets))
        return summarize_sets(sets, truths)


def summarize_sets(sets: Sequence[AnswerSet], truths: Sequence[str]) -> dict:
    """Coverage, mean size (:data:`OTHER` counts as one element), and the rates of
    singleton, empty and :data:`OTHER`-holding sets."""
    cov = np.array([t in s for s, t in zip(sets, truths)], dtype=np.float64)
    return {
        "coverage": float(cov.mean()),
        "mean_size": float(np.mean([len(s) for s in sets])),
        "singleton_rate": float(np.mean([s.is_singleton for s in sets])),
        "empty_rate": float(np.mean([len(s) == 0 for s in sets])),
        "other_rate": float(np.mean([s.other for s in sets])),
    }


# ---------------------------------------------------------------------------- confidence
class ConfidenceCalibrator:
    """Map the confidence of the top answer to ``P(top answer correct)``.

    Parameters
    ----------
    method
        ``"isotonic"`` (monotone step function, :class:`sklearn.isotonic.IsotonicRegression`)
        or ``"platt"`` (logistic regression on ``logit(confidence)``).
    confidence
        Raw confidence (see :func:`answer_confidence`): ``"mass"`` (default), ``"reward"``,
        ``"mass_reward"`` or a callable.

    Attributes
    ----------
    n_calibration_, accuracy_
        Number of calibration problems and their top-answer accuracy.
    """

    _METHODS = ("isotonic", "platt")
    _EPS = 1e-6

    def __init__(self, method: str = "isotonic", *, confidence: str | Callable = "mass"):
        self.method = check_choice(method, self._METHODS, "method")
        self.confidence = check_choice(confidence, _CONFIDENCES, "confidence", allow_callable=True)

    def _logit(self, c):
        c = np.clip(c, self._EPS, 1 - self._EPS)
        return np.log(c) - np.log1p(-c)

    def raw_confidence(self, results) -> np.ndarray:
        """The uncalibrated confidence of each run's top answer."""
        return answer_confidence(as_run_summaries(results), self.confidence)

    def fit(self, results, answers) -> ConfidenceCalibrator:
        """Fit the map on labelled calibration runs (non-empty)."""
        runs = as_run_summaries(results)
        truths = check_true_answers(answers, len(runs))
        c = answer_confidence(runs, self.confidence)
        z = _correct(runs, truths)
        self.n_calibration_ = len(runs)
        self.accuracy_ = float(z.mean())
        if self.method == "isotonic":
            from sklearn.isotonic import IsotonicRegression

            self.model_ = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(c, z)
        else:
            self.model_ = _platt(self._logit(c), z)
        return self

    def predict(self, results) -> np.ndarray:
        """Calibrated ``P(top answer correct)`` of each run."""
        if not hasattr(self, "model_"):
            raise ValueError("call fit() before predict()")
        c = self.raw_confidence(results)
        if self.method == "isotonic":
            return np.clip(self.model_.predict(c), 0.0, 1.0)
        a, b = self.model_
        return 1.0 / (1.0 + np.exp(-(a * self._logit(c) + b)))


def _platt(x: np.ndarray, z: np.ndarray) -> tuple[float, float]:
    """Maximum-likelihood ``(a, b)`` of ``P(z = 1) = sigmoid(a x + b)`` (Platt's smoothed
    targets ``(n_+ + 1)/(n_+ + 2)`` and ``1/(n_- + 2)`` keep it finite on separable data)."""
    from scipy.optimize import minimize

    n_pos, n_neg = z.sum(), (1 - z).sum()
    t = np.where(z > 0.5, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))

    def nll(theta):
        a, b = theta
        f = a * x + b
        # -sum t log s(f) + (1 - t) log(1 - s(f)), stable
        val = np.sum(np.logaddexp(0, f) - t * f)
        s = 1 / (1 + np.exp(-f))
        g = s - t
        return val, np.array([np.sum(g * x), np.sum(g)])

    b0 = math.log((n_pos + 1) / (n_neg + 1))
    res = minimize(nll, np.array([1.0, b0]), jac=True, method="L-BFGS-B")
    return float(res.x[0]), float(res.x[1])


def _binary(conf: np.ndarray) -> np.ndarray:
    return np.column_stack([1.0 - conf, conf])


def confidence_report(calibrator: ConfidenceCalibrator, results, answers, *, n_bins=10) -> dict:
    """ECE, Brier score and reliability diagrams of the top answer's confidence before
    (raw) and after calibration, on labelled (held-out) runs.

    The confidence ``c`` of the statement "the top answer is correct" is scored as the binary
    prediction ``[1 - c, c]`` of correctness with :mod:`calibration.metrics` (top-label ECE
    with ``n_bins`` uniform bins, Brier score).

    Returns
    -------
    dict
        ``ece_before``, ``ece_after``, ``brier_before``, ``brier_after``, ``accuracy`` and
        ``diagram_before``/``diagram_after`` (:class:`calibration.metrics.ReliabilityDiagram`).
    """
    from .metrics import brier_score, expected_calibration_error, reliability_diagram

    runs = as_run_summaries(results)
    truths = check_true_answers(answers, len(runs))
    z = _correct(runs, truths).astype(np.int64)
    before = _binary(calibrator.raw_confidence(runs))
    after = _binary(calibrator.predict(runs))
    return {
        "accuracy": float(z.mean()),
        "ece_before": expected_calibration_error(before, z, n_bins=n_bins),
        "ece_after": expected_calibration_error(after, z, n_bins=n_bins),
        "brier_before": brier_score(before, z) / 2,
        "brier_after": brier_score(after, z) / 2,
        "diagram_before": reliability_diagram(before, z, n_bins=n_bins),
        "diagram_after": reliability_diagram(after, z, n_bins=n_bins),
    }


# ----------------------------------------------------------------------- learn then test
def ltt_p_values(losses, alpha: float, selected=None) -> np.ndarray:
    r"""Exact binomial p-values of ``H_j: risk_j > alpha`` for 0/1 losses.

    Parameters
    ----------
    losses
        ``(J, n)`` array of 0/1 losses of ``J`` candidate rules on ``n`` calibration problems.
    alpha
        Risk level.
    selected
        Optional ``(J, n)`` boolean mask: the risk of rule ``j`` is then the *conditional*
        risk ``P(loss = 1 | selected)`` and only its selected problems count.

    Returns
    -------
    ndarray of shape (J,)
        ``P(Binomial(m_j, alpha) <= e_j)`` with ``m_j`` problems (selected) and ``e_j`` losses
        among them; ``1`` where ``m_j = 0``. For i.i.d. problems, given ``m_j`` the ``e_j``
        follow ``Binomial(m_j, risk_j)``, so the p-value is valid (``P(p <= u) <= u`` under
        ``H_j``) conditionally on ``m_j`` and hence marginally.
    """
    from scipy.stats import binom

    alpha = check_alpha(alpha)
    loss = as_float_array(losses, "losses", ndim=2, allow_inf=False)
    if not np.isin(loss, (0.0, 1.0)).all():
        raise ValueError("losses must be 0/1")
    if selected is None:
        sel = np.ones(loss.shape, dtype=bool)
    else:
        sel = np.asarray(selected, dtype=bool)
        if sel.shape != loss.shape:
            raise ValueError(f"selected must have shape {loss.shape}, got {sel.shape}")
    m = sel.sum(axis=1)
    e = (loss * sel).sum(axis=1)
    return np.where(m > 0, binom.cdf(e, m, alpha), 1.0)


def learn_then_test(losses, alpha: float, delta: float, selected=None, *, weights=None) -> int:
    r"""Learn-then-Test: the most aggressive rule whose risk is certified at most ``alpha``.

    The rules ``j = 0, 1, ..., J - 1`` must be ordered *before* seeing the calibration data,
    from the safest to the most aggressive. Each null ``H_j: risk_j > alpha`` has the exact
    binomial p-value ``p_j`` (:func:`ltt_p_values`) and the nulls are tested in order:

    * ``weights=None``: fixed-sequence testing, every ``H_j`` at level ``delta``, stopping at
      the first that is not rejected;
    * ``weights`` (non-negative, summing to at most 1): the fallback procedure (Wiens 2003):
      ``H_j`` is tested at ``delta * (w_j + w_{j-1} + ... )``, the sum running back over the
      run of rejected nulls just before it; a null that is not rejected loses its level and
      the sequence goes on. It tolerates leading rules that cannot be certified (e.g. a
      confidence threshold that no calibration problem reaches).

    Returns
    -------
    int
        The index ``j_hat`` of the last rejected null (``-1``: none, use no rule).

    Notes
    -----
    Guarantee: both procedures control the family-wise error rate at ``delta`` whatever the
    dependence between the p-values, so if the calibration problems and the new problem are
    i.i.d.,

    .. math:: P_{\mathrm{cal}}\big(\mathrm{risk}_{\hat j} \le \alpha\big) \ge 1 - \delta,

    where the probability is over the calibration set and ``risk_j`` is the (conditional,
    with ``selected``) risk of rule ``j`` on a new problem.
    """
    delta = check_alpha(delta, "delta")
    p = ltt_p_values(losses, alpha, selected)
    if weights is None:
        fail = np.flatnonzero(p > delta)
        return (int(fail[0]) if fail.size else len(p)) - 1
    w = as_float_array(weights, "weights", allow_inf=False)
    if w.shape != p.shape or (w < 0).any() or w.sum() > 1 + 1e-12:
        raise ValueError(f"weights must be {p.size} non-negative numbers summing to at most 1")
    last, level = -1, 0.0
    for j in range(p.size):
        level += delta * w[j]
        if p[j] <= level:
            last = j
        else:
            level = 0.0
    return last


class SelectiveAnswerer:
    r"""Answer or abstain with the error rate among answered problems controlled.

    Answer a problem (with its top answer) when its confidence is at least ``lambda``, else
    abstain. ``lambda`` is the smallest value of the fixed grid ``thresholds`` (scanned from
    the largest) at which Learn-then-Test rejects ``P(top answer wrong | answered) > alpha``
    (:func:`learn_then_test`: exact binomial p-value on the answered calibration problems,
    fallback procedure with equal weights, so thresholds that too few calibration problems
    reach do not stop the scan).

    Guarantee: for i.i.d. problems, with probability at least ``1 - delta`` over the
    calibration set, a new problem satisfies

    .. math:: P(\text{top answer wrong} \mid \text{confidence} \ge \hat\lambda) \le \alpha

    (the conditional error of the rule chosen; when no threshold passes, ``threshold_`` is
    ``inf`` and every problem is abstained on, which is trivially safe).

    Parameters
    ----------
    alpha
        Error level among answered problems, in ``(0, 1)``.
    delta
        Probability that the guarantee fails, in ``(0, 1)``.
    confidence
        Confidence score (:func:`answer_confidence`); ``"mass"`` by default.
    thresholds
        The fixed grid of candidate thresholds (default ``1.00, 0.95, ..., 0.00``).
    """

    def __init__(
        self, alpha: float = 0.1, *, delta: float = 0.1, confidence="mass", thresholds=None
    ):
        self.alpha = check_alpha(alpha)
        self.delta = check_alpha(delta, "delta")
        self.confidence = check_choice(confidence, _CONFIDENCES, "confidence", allow_callable=True)
        grid = np.linspace(1.0, 0.0, 21) if thresholds is None else thresholds
        grid = as_float_array(grid, "thresholds", allow_inf=False)
        self.thresholds = np.sort(grid)[::-1]

    def calibrate(self, results, answers) -> SelectiveAnswerer:
        """Choose the threshold on labelled calibration runs (non-empty)."""
        runs = as_run_summaries(results)
        truths = check_true_answers(answers, len(runs))
        c = answer_confidence(runs, self.confidence)
        wrong = 1.0 - _correct(runs, truths)
        sel = c[None, :] >= self.thresholds[:, None]
        w = np.full(len(self.thresholds), 1.0 / len(self.thresholds))
        j = learn_then_test(
            np.broadcast_to(wrong, sel.shape), self.alpha, self.delta, sel, weights=w
        )
        self.threshold_ = float(self.thresholds[j]) if j >= 0 else math.inf
        self.n_calibration_ = len(runs)
        return self

    def predict(self, results) -> list[str | None]:
        """The top answer of each run, or ``None`` (abstain)."""
        if not hasattr(self, "threshold_"):
            raise ValueError("call calibrate() before predict()")
        runs = as_run_summaries(results)
        c = answer_confidence(runs, self.confidence)
        return [r.top[0] if ci >= self.threshold_ else None for r, ci in zip(runs, c)]

    def evaluate(self, results, answers) -> dict:
        """Abstention rate, error among answered and overall accuracy on labelled runs."""
        pred = self.predict(results)
        truths = check_true_answers(answers, len(pred))
        answered = np.array([p is not None for p in pred])
        wrong = np.array([p != t for p, t in zip(pred, truths)]) & answered
        n_ans = int(answered.sum())
        return {
            "abstention_rate": float(1 - answered.mean()),
            "answered": n_ans,
            "error_among_answered": float(wrong.sum() / n_ans) if n_ans else 0.0,
            "accuracy": float(np.mean([p == t for p, t in zip(pred, truths)])),
        }


def read_runs(path) -> dict:
    """Read cached particle runs (the JSON written by ``scripts/make_llm_answer_runs.py``).

    Returns
    -------
    dict
        ``prompts`` and ``answers`` (lists, one per problem) and ``runs[name][budget]``: the
        :class:`RunSummary` of every problem for each reward model ``name`` and budget.
    """
    import json
    from pathlib import Path

    data = json.loads(Path(path).read_text())
    problems = data["problems"]
    runs: dict = {}
    for name, budgets in data["budgets"].items():
        runs[name] = {
            int(b): [RunSummary.from_dict(dict(p[name][str(b)], budget=int(b))) for p in problems]
            for b in budgets
        }
    return {
        "prompts": [p["prompt"] for p in problems],
        "answers": [p["answer"] for p in problems],
        "runs": runs,
    }
