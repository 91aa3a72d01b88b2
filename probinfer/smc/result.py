"""What every SMC run returns: :class:`SMCResult`, the base of the algorithms' results, and
:class:`SMCChains`, independent runs of one algorithm (``num_chains=``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from probinfer.checks import check_num
from probinfer.particles import Particles

Array = jax.Array

__all__ = ["SMCChains", "SMCResult", "check_num_chains", "run_chains", "weighted_summary"]


def _final_ess(log_weights) -> float:
    """ESS ``1 / sum w_i^2`` of the final weights (0 when every weight is zero)."""
    from probinfer.weights import ess

    return float(ess(np.asarray(log_weights)))


def _eti_columns(prob: float) -> tuple[str, str]:
    """Names of the equal-tailed interval columns, as ArviZ names its ``hdi_3%``."""
    tail = 100 * (1 - prob) / 2
    return f"eti_{tail:g}%", f"eti_{100 - tail:g}%"


def _check_prob(prob) -> float:
    if isinstance(prob, bool) or not isinstance(prob, int | float | np.floating):
        raise TypeError(f"prob must be a float in (0, 1), got {type(prob).__name__}")
    if not 0.0 < float(prob) < 1.0:
        raise ValueError(f"prob must lie in (0, 1), got {prob}")
    return float(prob)


def _row_names(name: str, shape: tuple[int, ...]) -> list[str]:
    """ArviZ's row labels of a variable's scalar components: ``mu``, ``beta[0]``,
    ``beta[0, 1]`` (C order)."""
    if not shape:
        return [name]
    return [f"{name}[{', '.join(map(str, idx))}]" for idx in np.ndindex(*shape)]


def weighted_summary(runs: Sequence[Particles], prob: float = 0.94):
    """ArviZ-style table of weighted particles, pooled over ``runs`` (each run's weights
    normalised, every run given the same total mass).

    Rows are the scalar components of each variable (``beta[0]``), columns the weighted
    ``mean``, the weighted standard deviation ``sd`` (``sqrt(sum_i w_i (x_i - mean)^2)``,
    no bias correction), the equal-tailed interval of probability ``prob`` as the weighted
    ``(1 - prob) / 2`` and ``(1 + prob) / 2`` quantiles (``eti_3%``, ``eti_97%``; the
    quantile ``q`` is the smallest particle value whose cumulative weight reaches ``q``,
    numpy's ``method="inverted_cdf"`` for equal weights), and ``ess``, the ESS
    ``1 / sum_i w_i^2`` of the pooled weights (the same on every row).

    Returns
    -------
    pandas.DataFrame
    """
    import pandas as pd

    from probinfer.inference_data import values_to_dict
    from probinfer.weights import host_normalize

    prob = _check_prob(prob)
    weights = np.concatenate([host_normalize(p.log_weights) for p in runs]) / len(runs)
    per_run = [values_to_dict(p.values) for p in runs]
    lo_name, hi_name = _eti_columns(prob)
    levels = np.array([(1 - prob) / 2, (1 + prob) / 2])
    ess = 1.0 / float(np.sum(weights * weights))
    rows, index = [], []
    for name in per_run[0]:
        x = np.concatenate([np.asarray(r[name], np.float64) for r in per_run])
        x = x.reshape(x.shape[0], -1)  # (draws, components)
        mean = weights @ x
        sd = np.sqrt(np.maximum(weights @ np.square(x - mean), 0.0))
        order = np.argsort(x, axis=0, kind="stable")
        cum = np.cumsum(weights[order], axis=0)  # (draws, components)
        quant = np.empty((2, x.shape[1]))
        for j in range(x.shape[1]):
            idx = np.searchsorted(cum[:, j], levels * cum[-1, j], side="left")
            quant[:, j] = x[order[np.minimum(idx, x.shape[0] - 1), j], j]
        shape = np.shape(per_run[0][name])[1:]
        index += _row_names(name, shape)
        rows.append(np.column_stack([mean, sd, quant[0], quant[1], np.full(x.shape[1], ess)]))
    return pd.DataFrame(
        np.concatenate(rows), index=index, columns=["mean", "sd", lo_name, hi_name, "ess"]
    )


@dataclass(frozen=True, kw_only=True, repr=False)
class SMCResult:
    """What every SMC run returns (the base of the algorithms' results).

    Attributes
    ----------
    particles
        Final weighted particles (values: whatever the transitions return).
    log_evidence
        ``log Z``, the compensated sum of the increments
        (:func:`~probinfer.smc.base.log_evidence_of`).
    log_evidence_increments
        ``(T,)`` float64 increments ``log sum_i W_{t-1}^i G_t^i``.
    ess
        ``(T,)`` ESS after each reweighting.
    resampled
        ``(T,)`` whether resampling happened before the move at step ``t``.
    ancestors
        ``(T, N)`` ancestor indices (row ``t`` maps particles at ``t`` to ``t - 1``), or
        ``None`` when not kept.
    summaries
        Per-step summaries (leading axis ``T``), or ``None``.
    wall_time
        Seconds for the run (including compilation on the first jitted call).
    """

    particles: Particles
    log_evidence: float
    log_evidence_increments: np.ndarray
    ess: np.ndarray
    resampled: np.ndarray
    ancestors: np.ndarray | None = None
    summaries: Any = None
    wall_time: float = 0.0

    @property
    def num_steps(self) -> int:
        """Number of SMC steps run (``T``)."""
        return int(np.shape(self.log_evidence_increments)[0])

    @property
    def num_particles(self) -> int:
        """Number of final particles (``N``)."""
        return int(np.shape(self.particles.log_weights)[0])

    def __repr__(self) -> str:
        """One line: sizes, log evidence, final ESS and wall time (never array contents)."""
        parts = [f"num_particles={self.num_particles}", f"num_steps={self.num_steps}"]
        if self.log_evidence is not None:
            parts.append(f"log_evidence={float(self.log_evidence):.2f}")
        parts.append(f"final_ess={_final_ess(self.particles.log_weights):.1f}")
        parts.append(f"wall_time={float(self.wall_time):.1f}s")
        return f"{type(self).__name__}({', '.join(parts)})"

    # What the subclasses extend ------------------------------------------------------
    def _arviz_particles(self) -> Particles:
        """The weighted draws exported to the ``posterior`` group."""
        return self.particles

    def _step_stats(self) -> dict[str, np.ndarray]:
        return {
            "ess": np.asarray(self.ess),
            "resampled": np.asarray(self.resampled),
            "log_evidence_increment": np.asarray(self.log_evidence_increments),
        }

    def _attrs(self) -> dict:
        return {"wall_time": float(self.wall_time)}

    def _arviz_groups(self) -> dict:
        """Extra ArviZ groups (``log_likelihood``, ``observed_data``, ...)."""
        return {}

    def _arviz_dims(self) -> dict[str, list[str]]:
        """Default ArviZ dimension names per variable (``{}``: ``{name}_dim_{i}``)."""
        return {}

    def summary(self, prob: float = 0.94):
        """A table like the first columns of ``az.summary``, from the weighted final
        particles (no resampling noise): one row per scalar component (``beta[0]``),
        columns ``mean``, ``sd``, ``eti_3%``, ``eti_97%`` (equal-tailed weighted quantiles
        of probability ``prob``) and ``ess`` (the final weights' ESS). See
        :func:`weighted_summary`.

        Returns
        -------
        pandas.DataFrame
        """
        return weighted_summary([self._arviz_particles()], prob)

    def to_arviz(
        self,
        key: Array | None = None,
        *,
        scheme: str = "systematic",
        attrs: dict | None = None,
        dims: Mapping[str, Sequence[str]] | None = None,
        coords: Mapping[str, Any] | None = None,
        groups: Mapping[str, Mapping[str, Any]] | None = None,
    ):
        """ArviZ ``InferenceData``: the final particles as one chain of equally weighted
        draws (resampled with ``key`` when weighted), per-step history in ``smc_steps``,
        ``log_evidence`` in the attributes, and the result's extra groups.

        Parameters
        ----------
        key
            ``jax.random`` key of the final resample (needed when the particles are weighted).
        scheme
            Resampling scheme of that resample.
        attrs
            Extra attributes.
        dims, coords
            Dimension names ``{variable: [names]}`` (default: the model's plates where the
            result knows them, else ``{variable}_dim_{i}``) and coordinates ``{dim: values}``.
        groups
            Extra groups ``{group: {variable: array (1, draw, ...)}}``.

        Several runs: ``num_chains=`` on the algorithm, or
        :func:`probinfer.inference_data.combine_chains`.
        """
        from probinfer.inference_data import combine_chains

        return combine_chains(
            [self], key, scheme=scheme, attrs=attrs, dims=dims, coords=coords, groups=groups
        )


def check_num_chains(num_chains) -> int | None:
    """``num_chains`` checked: ``None`` or an integer ``>= 1``.

    Raises
    ------
    TypeError
        If it is not ``None`` or an integer.
    ValueError
        If it is below 1.
    """
    if num_chains is None:
        return None
    if isinstance(num_chains, bool) or not isinstance(num_chains, int | np.integer):
        raise TypeError(
            f"num_chains must be None or an integer >= 1, got {type(num_chains).__name__}"
        )
    return check_num(num_chains, "num_chains")


def run_chains(key: Array, num_chains: int, run: Callable[[Array], SMCResult]) -> SMCChains:
    """``SMCChains(run(k) for k in jax.random.split(key, num_chains))``: independent runs,
    one after another."""
    return SMCChains(run(k) for k in jax.random.split(key, num_chains))


class SMCChains(tuple):
    """Independent runs of one SMC algorithm (``num_chains=`` of
    :func:`~probinfer.smc.tempered_smc` and :func:`~probinfer.smc.particle_filter`): a
    tuple of results, chain ``c`` run with ``jax.random.split(key, num_chains)[c]``.

    ``to_arviz`` exports them as ArviZ chains (``r_hat``, the between-chain ESS), and the
    spread of ``log_evidence`` over chains is a direct check of its Monte Carlo error.

    Parameters
    ----------
    results
        At least one :class:`SMCResult`.
    """

    def __new__(cls, results: Iterable[SMCResult]):
        results = tuple(results)
        if not results:
            raise ValueError("results must contain at least one SMC result")
        bad = [type(r).__name__ for r in results if not isinstance(r, SMCResult)]
        if bad:
            raise TypeError(f"results must be SMCResult objects, got {bad}")
        return super().__new__(cls, results)

    @property
    def num_chains(self) -> int:
        """Number of runs."""
        return len(self)

    @property
    def log_evidence(self) -> np.ndarray:
        """``(num_chains,)`` log evidence of each run (NaN where a run has none)."""
        return np.array(
            [np.nan if r.log_evidence is None else r.log_evidence for r in self], np.float64
        )

    @property
    def wall_time(self) -> float:
        """Seconds, all runs together."""
        return float(sum(r.wall_time for r in self))

    def to_arviz(self, key: Array | None = None, **options):
        """ArviZ ``InferenceData`` with one chain per run
        (:func:`probinfer.inference_data.combine_chains`; ``scheme``, ``attrs``, ``dims``,
        ``coords`` and ``groups`` as in :meth:`SMCResult.to_arviz`, ``groups`` arrays
        ``(chain, draw, ...)``)."""
        from probinfer.inference_data import combine_chains

        return combine_chains(self, key, **options)

    def summary(self, key: Array | None = None, prob: float = 0.94):
        """The pooled weighted table of :meth:`SMCResult.summary` over all runs (each run
        weighted equally) plus ``r_hat``, ArviZ's rank-normalised split R-hat of the
        chains' equally weighted draws (``to_arviz(key)``; ``key`` is needed when the
        particles are weighted).

        Returns
        -------
        pandas.DataFrame
        """
        from probinfer.inference_data import import_arviz

        table = weighted_summary([r._arviz_particles() for r in self], prob)
        rhat = import_arviz().rhat(self.to_arviz(key))
        table["r_hat"] = np.concatenate([np.ravel(rhat[name].values) for name in _names(self)])
        return table

    def __repr__(self) -> str:
        le = self.log_evidence
        parts = [
            f"num_chains={len(self)}",
            type(self[0]).__name__,
            f"num_particles={self[0].num_particles}",
        ]
        if np.all(np.isfinite(le)):
            spread = f" (sd {np.std(le, ddof=1):.2f})" if len(le) > 1 else ""
            parts.append(f"log_evidence={np.mean(le):.2f}{spread}")
        parts.append(f"wall_time={self.wall_time:.1f}s")
        return f"SMCChains({', '.join(parts)})"


def _names(chains: SMCChains) -> list[str]:
    from probinfer.inference_data import values_to_dict

    return list(values_to_dict(chains[0]._arviz_particles().values))
