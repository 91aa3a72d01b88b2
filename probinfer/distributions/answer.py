"""Categorical distribution over final-answer strings (the output of an LLM particle run).

JAX arrays cannot hold strings, so the distribution is a categorical over *indices* into the
tuple :attr:`AnswerDistribution.answers`; :meth:`AnswerDistribution.decode` maps indices back
to answers and :meth:`AnswerDistribution.log_prob` also accepts answers directly.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.distributions import Distribution, constraints
from scipy.special import logsumexp as np_logsumexp

Array = jax.Array
Answer = str | None

__all__ = ["AnswerDistribution"]


def _log_weights_float64(n: int, log_weights, weights) -> np.ndarray:
    """Validated float64 log weights of length ``n`` (equal weights if both are None)."""
    if log_weights is not None and weights is not None:
        raise ValueError("give at most one of `log_weights` and `weights`")
    if log_weights is None and weights is None:
        return np.zeros(n)
    name = "log_weights" if log_weights is not None else "weights"
    try:
        arr = np.asarray(log_weights if log_weights is not None else weights, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a 1-D array of numbers") from err
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) to match `answers`, got {arr.shape}")
    if np.any(np.isnan(arr)):
        raise ValueError(f"{name} contain NaN at index {int(np.argmax(np.isnan(arr)))}")
    if log_weights is not None:
        if np.any(arr == np.inf):
            raise ValueError("log_weights contain +inf; they must be finite or -inf")
        if np.all(arr == -np.inf):
            raise ValueError("log_weights are all -inf: every answer has zero weight")
        return arr
    if np.any(arr < 0) or np.any(np.isinf(arr)):
        raise ValueError("weights must be finite and non-negative")
    if not np.any(arr > 0):
        raise ValueError("weights are all zero: every answer has zero weight")
    with np.errstate(divide="ignore"):
        return np.log(arr)


def _check_answer(a, where: str) -> Answer:
    if a is not None and not isinstance(a, str):
        raise TypeError(f"{where} must be a str or None, got {type(a).__name__}")
    return a


class AnswerDistribution(Distribution):
    """Categorical distribution over distinct final answers.

    Parameters
    ----------
    answers
        One answer per particle/sample: a ``str``, or ``None`` for "no answer". Repeats
        are merged: the mass of an answer is the total normalised weight of its copies.
    log_weights, weights
        At most one: unnormalised log weights or non-negative weights, one per entry of
        ``answers``. Neither means equal weights (plain majority voting).
    validate_args
        Passed to :class:`numpyro.distributions.Distribution`.

    Attributes
    ----------
    answers : tuple of (str or None)
        The distinct answers, by descending probability, ties broken by first appearance.
        Answers whose weights are all zero are kept, with probability 0, at the end.
    probs, logits
        Their probabilities and log probabilities, shape ``(K,)``.

    Notes
    -----
    Masses are accumulated in float64 (numpy) before being stored as JAX arrays.
    ``sample`` returns ``int32`` indices into :attr:`answers`. :attr:`mean` and
    :attr:`variance` raise ``NotImplementedError``: answers are unordered labels and the
    index order is by probability, so moments of the index carry no meaning; use
    :meth:`top`, :attr:`mode` or :meth:`entropy`. The distribution is a JAX pytree with
    ``logits`` as data and ``answers`` as static auxiliary data.
    """

    is_discrete = True
    has_enumerate_support = True
    # logits are -inf for zero-mass answers, which constraints.real_vector rejects
    arg_constraints: dict = {}
    pytree_data_fields = ("logits",)
    pytree_aux_fields = ("answers",)

    def __init__(
        self,
        answers: Sequence[Answer],
        log_weights=None,
        *,
        weights=None,
        validate_args: bool | None = None,
    ):
        if isinstance(answers, str) or not isinstance(answers, Sequence):
            raise TypeError(
                "answers must be a sequence (list/tuple) of str or None, "
                f"got {type(answers).__name__}"
            )
        if len(answers) == 0:
            raise ValueError("answers must be non-empty")
        for i, a in enumerate(answers):
            _check_answer(a, f"answers[{i}]")
        lw = _log_weights_float64(len(answers), log_weights, weights)

        groups: dict[Answer, list[float]] = {}
        first: dict[Answer, int] = {}
        for i, (a, w) in enumerate(zip(answers, lw)):
            groups.setdefault(a, []).append(w)
            first.setdefault(a, i)
        log_mass = {a: float(np_logsumexp(v)) for a, v in groups.items()}
        total = float(np_logsumexp(list(log_mass.values())))
        order = sorted(groups, key=lambda a: (-log_mass[a], first[a]))
        self.answers: tuple[Answer, ...] = tuple(order)
        logits = np.array([log_mass[a] - total for a in order])
        self.logits = jnp.asarray(logits, dtype=jnp.result_type(float))
        super().__init__(batch_shape=(), event_shape=(), validate_args=validate_args)

    @classmethod
    def from_dict(cls, masses: dict[Answer, float]) -> AnswerDistribution:
        """Build from a mapping ``answer -> non-negative mass`` (normalised here)."""
        if not isinstance(masses, dict):
            raise TypeError(f"masses must be a dict, got {type(masses).__name__}")
        return cls(list(masses.keys()), weights=list(masses.values()))

    # ------------------------------------------------------------------ basic properties
    @constraints.dependent_property(is_discrete=True, event_dim=0)
    def support(self):
        return constraints.integer_interval(0, len(self.answers) - 1)

    @property
    def num_answers(self) -> int:
        """Number of distinct answers ``K``."""
        return len(self.answers)

    @property
    def probs(self) -> Array:
        """Probabilities of :attr:`answers`, shape ``(K,)``."""
        return jnp.exp(self.logits)

    @property
    def mean(self):
        raise NotImplementedError(
            "AnswerDistribution has no mean: answers are unordered labels (indices are "
            "ordered by probability); use mode, top(k) or entropy()"
        )

    @property
    def variance(self):
        raise NotImplementedError(
            "AnswerDistribution has no variance: answers are unordered labels (indices are "
            "ordered by probability); use entropy() for spread"
        )

    @property
    def mode(self) -> Answer:
        """The most probable answer (first appearance wins ties)."""
        return self.answers[0]

    def top(self, k: int = 1) -> list[tuple[Answer, float]]:
        """The ``k`` most probable answers with their probabilities, most probable first."""
        if not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        p = np.asarray(self.probs, dtype=np.float64)
        return [(a, float(p[i])) for i, a in enumerate(self.answers[:k])]

    def as_dict(self) -> dict[Answer, float]:
        """``{answer: probability}`` in the order of :attr:`answers`."""
        p = np.asarray(self.probs, dtype=np.float64)
        return {a: float(p[i]) for i, a in enumerate(self.answers)}

    def index(self, answer: Answer) -> int:
        """Index of ``answer`` in :attr:`answers`, or ``-1`` when it has no mass."""
        _check_answer(answer, "answer")
        try:
            return self.answers.index(answer)
        except ValueError:
            return -1

    def entropy(self) -> Array:
        """Shannon entropy ``-sum_k p_k log p_k`` in nats (``0 log 0 = 0``)."""
        p = self.probs
        return -jnp.sum(jnp.where(p > 0, p * self.logits, 0.0))

    def total_variation(self, other: AnswerDistribution) -> float:
        """Total variation distance ``(1/2) sum_a |p(a) - q(a)|`` over the union of supports."""
        if not isinstance(other, AnswerDistribution):
            raise TypeError(f"other must be an AnswerDistribution, got {type(other).__name__}")
        p, q = self.as_dict(), other.as_dict()
        keys = list(p) + [a for a in q if a not in p]
        return 0.5 * float(sum(abs(p.get(a, 0.0) - q.get(a, 0.0)) for a in keys))

    # ------------------------------------------------------------------ sampling / mass
    def sample(self, key, sample_shape=()) -> Array:
        """``int32`` indices into :attr:`answers`, shape ``sample_shape``."""
        return jax.random.categorical(key, self.logits, shape=tuple(sample_shape)).astype(jnp.int32)

    def enumerate_support(self, expand: bool = True) -> Array:
        """All indices ``0..K-1``."""
        return jnp.arange(len(self.answers), dtype=jnp.int32)

    def decode(self, indices):
        """Answers for indices: a single answer for a scalar, else a numpy object array of
        the same shape. Raises ``ValueError`` for indices outside ``[0, K)``."""
        idx = np.asarray(indices)
        if not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(f"indices must be integers, got dtype {idx.dtype}")
        if np.any((idx < 0) | (idx >= len(self.answers))):
            raise ValueError(f"indices must lie in [0, {len(self.answers)}), got {indices!r}")
        table = np.empty(len(self.answers), dtype=object)
        table[:] = list(self.answers)
        if idx.ndim == 0:
            return self.answers[int(idx)]
        return table[idx]

    def _is_answer_query(self, value) -> bool:
        if value is None or isinstance(value, str):
            return True
        if isinstance(value, list | tuple) and len(value) > 0:
            kinds = [v is None or isinstance(v, str) for v in value]
            if all(kinds):
                return True
            if any(kinds):
                raise TypeError("value mixes answers (str/None) and other types")
        return False

    def log_prob(self, value) -> Array:
        """Log probability of indices (any integer array) or of answers.

        ``value`` may be an integer array of indices into :attr:`answers` (out-of-range
        indices give ``-inf``), a single answer (``str`` or ``None``) or a list/tuple of
        answers. Unknown answers have log probability ``-inf``.
        """
        if self._is_answer_query(value):
            if value is None or isinstance(value, str):
                return self.log_prob(jnp.asarray(self.index(value), dtype=jnp.int32))
            idx = jnp.asarray([self.index(v) for v in value], dtype=jnp.int32)
            return self.log_prob(idx)
        if (
            isinstance(value, Hashable)
            and not hasattr(value, "shape")
            and not isinstance(value, int | np.integer)
        ):
            raise TypeError(f"value must be indices or answers, got {type(value).__name__}")
        idx = jnp.asarray(value)
        k = len(self.answers)
        valid = (idx >= 0) & (idx < k)
        return jnp.where(valid, self.logits[jnp.clip(idx, 0, k - 1).astype(jnp.int32)], -jnp.inf)
