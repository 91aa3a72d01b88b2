"""Export of weighted particle sets to :class:`arviz.InferenceData`.

One function, :func:`to_inference_data`, serves every result type: each independent
run becomes a chain of equally weighted draws (after a final resample), per-step
statistics (ESS, resampling flags, evidence increments, temperatures, ...) go to a
custom ``smc_steps`` group with dimensions ``(chain, step)``, and log evidence plus the
library version go to the attributes. Works with ArviZ 0.2x (``InferenceData``) and
ArviZ 1.x (``xarray.DataTree``), whose ``from_dict`` signatures differ.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from probinfer._version import __version__

__all__ = ["STEPS_GROUP", "combine_chains", "import_arviz", "to_inference_data", "values_to_dict"]

STEPS_GROUP = "smc_steps"


def import_arviz():
    """Import ArviZ without its refactor ``FutureWarning`` (noise for our users)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz

    return arviz


def values_to_dict(values: Any, name: str = "x", _nested: bool = False) -> dict[str, np.ndarray]:
    """Name the arrays of a particle-values pytree for ArviZ.

    A dict keeps its keys (nested keys joined with ``.``), a bare array is called
    ``name``, tuples/lists are ``name_0, name_1, ...``. Non-array stores must provide
    ``to_dict()`` returning such a dict.
    """
    if hasattr(values, "to_dict") and callable(values.to_dict):
        values = values.to_dict()
    if isinstance(values, Mapping):
        out: dict[str, np.ndarray] = {}
        for k, v in values.items():
            out.update(values_to_dict(v, f"{name}.{k}" if _nested else str(k), True))
        return out
    if isinstance(values, tuple | list):
        out = {}
        for i, v in enumerate(values):
            out.update(values_to_dict(v, f"{name}_{i}", True))
        return out
    if isinstance(values, jax.Array | np.ndarray) or np.isscalar(values):
        return {name: np.asarray(values)}
    raise TypeError(
        f"values of type {type(values).__name__} cannot be exported to ArviZ: use arrays, "
        "a dict/tuple of arrays, or give the store a to_dict() method"
    )


def _equal_weights(log_weights) -> bool:
    lw = np.asarray(log_weights)
    return bool(np.all(lw == lw[0]) and np.isfinite(lw[0]))


def _final_draws(particles, key, scheme: str, num_draws: int | None):
    if num_draws is None and _equal_weights(particles.log_weights):
        return particles
    if key is None:
        raise ValueError(
            "key is required: the particles are weighted and must be resampled to equally "
            "weighted draws for ArviZ"
        )
    return particles.resample(key, scheme=scheme, num=num_draws)


def _attr_value(v):
    arr = np.asarray(v)
    if arr.ndim == 0:
        return arr.item()
    return arr.tolist()


def to_inference_data(
    runs: Sequence,
    *,
    key=None,
    scheme: str = "systematic",
    num_draws: int | None = None,
    step_stats: Mapping[str, Any] | None = None,
    log_evidence: Any | None = None,
    attrs: Mapping[str, Any] | None = None,
    var_name: str = "x",
    groups: Mapping[str, Mapping[str, Any]] | None = None,
):
    """Build an ArviZ ``InferenceData`` (or ``DataTree`` on ArviZ 1.x) from particle runs.

    Parameters
    ----------
    runs
        One :class:`~probinfer.Particles` per independent run (a chain each). All runs
        must give the same number of draws.
    key
        ``jax.random`` key for the final resample of weighted runs (split per run).
    scheme
        Resampling scheme of the final resample.
    num_draws
        Draws per chain (default: the number of particles).
    step_stats
        Per-step statistics, each of shape ``(chain, step)`` (or ``(step,)`` for a
        single chain), stored in the ``smc_steps`` group.
    log_evidence
        Log evidence per chain (scalar for one chain); stored in the attributes
        (``log_evidence``, and their mean-of-exp combination ``log_evidence_pooled``)
        and as a variable of ``smc_steps``.
    attrs
        Extra attributes.
    var_name
        Name of the variable when particle values are a bare array.
    groups
        Extra groups stored as they are, ``{group: {variable: array}}``; a variable
        whose leading axes are ``(chain, draw)`` gets those dimensions (``log_likelihood``,
        ``posterior_predictive``), others (``observed_data``) get their own.
    """
    import xarray as xr

    az = import_arviz()
    if len(runs) == 0:
        raise ValueError("runs must contain at least one particle set")
    keys = [None] * len(runs) if key is None else list(jax.random.split(key, len(runs)))
    draws = [_final_draws(p, k, scheme, num_draws) for p, k in zip(runs, keys, strict=True)]
    per_chain = [values_to_dict(d.values, var_name) for d in draws]
    names = list(per_chain[0])
    if any(list(c) != names for c in per_chain):
        raise ValueError("all runs must hold the same variables")
    sizes = {c[names[0]].shape[0] for c in per_chain}
    if len(sizes) != 1:
        raise ValueError(f"all runs must give the same number of draws, got {sorted(sizes)}")
    posterior = {n: np.stack([c[n] for c in per_chain]) for n in names}
    sizes_n = next(iter(sizes))

    all_attrs: dict[str, Any] = {
        "inference_library": "probinfer",
        "inference_library_version": __version__,
    }
    steps: dict[str, np.ndarray] = {}
    if step_stats:
        for n, v in step_stats.items():
            arr = np.asarray(v)
            if arr.ndim == 1 and len(runs) == 1:
                arr = arr[None]
            if arr.ndim < 2 or arr.shape[0] != len(runs):
                raise ValueError(
                    f"step_stats[{n!r}] must have shape (chain, step, ...) with "
                    f"{len(runs)} chains, got {arr.shape}"
                )
            steps[n] = arr
    if log_evidence is not None:
        le = np.atleast_1d(np.asarray(log_evidence, dtype=np.float64))
        if le.shape != (len(runs),):
            raise ValueError(f"log_evidence must have one value per chain ({len(runs)})")
        all_attrs["log_evidence"] = _attr_value(le if len(runs) > 1 else le[0])
        pooled = np.logaddexp.reduce(le) - np.log(len(le))
        all_attrs["log_evidence_pooled"] = float(pooled)
    if attrs:
        all_attrs.update(
            {k: _attr_value(v) if not isinstance(v, str) else v for k, v in attrs.items()}
        )

    params = inspect.signature(az.from_dict).parameters
    if "posterior" in params:  # ArviZ 0.x
        idata = az.from_dict(posterior=posterior, attrs=all_attrs)
    else:  # ArviZ 1.x (arviz_base): nested dict of groups, returns an xarray.DataTree
        idata = az.from_dict({"posterior": posterior})
    idata["posterior"].attrs.update(all_attrs)

    for group, variables in (groups or {}).items():
        data_vars = {}
        for n, v in variables.items():
            arr = np.asarray(v)
            lead = ["chain", "draw"] if arr.shape[:2] == (len(runs), sizes_n) else []
            dims = lead + [f"{n}_dim_{i}" for i in range(arr.ndim - len(lead))]
            data_vars[n] = (dims, arr)
        ds = xr.Dataset(data_vars, attrs=all_attrs)
        if hasattr(idata, "add_groups"):
            idata.add_groups({group: ds})
        else:
            idata[group] = ds

    if steps or log_evidence is not None:
        data_vars = {}
        for n, arr in steps.items():
            dims = ["chain", "step"] + [f"{n}_dim_{i}" for i in range(arr.ndim - 2)]
            data_vars[n] = (dims, arr)
        if log_evidence is not None:
            data_vars["log_evidence"] = (["chain"], le)
        ds = xr.Dataset(data_vars, coords={"chain": np.arange(len(runs))}, attrs=all_attrs)
        if hasattr(idata, "add_groups"):
            idata.add_groups({STEPS_GROUP: ds})
        else:
            idata[STEPS_GROUP] = ds
    return idata


# Groups without (chain, draw) axes: stored once, not per chain.
_SHARED_GROUPS = ("observed_data", "constant_data")


def combine_chains(results: Sequence, key=None, *, scheme: str = "systematic", attrs=None):
    """ArviZ ``InferenceData`` with one chain per independent SMC run.

    Parameters
    ----------
    results
        :class:`~probinfer.smc.SMCResult` objects (any subclass) from independent runs of the
        same model (different keys), e.g. ``[tempered_smc(k, target, n) for k in keys]``.
        With several chains ArviZ's ``r_hat`` and ``ess`` are defined.
    key
        ``jax.random`` key for the final resample of weighted runs.
    scheme
        Resampling scheme of that resample.
    attrs
        Extra attributes.

    Raises
    ------
    ValueError
        If ``results`` is empty or its runs have different numbers of particles (ArviZ chains
        need the same number of draws).

    Notes
    -----
    Per-step histories of different lengths (adaptive tempering) are padded with NaN to the
    longest. The ``log_likelihood`` group (``az.loo``, ``az.waic``) and ``observed_data``
    come from the results' extra groups, when their model provides them.
    """
    results = list(results)
    if not results:
        raise ValueError("results must contain at least one SMC result")
    runs = [r._arviz_particles() for r in results]
    sizes = [int(np.shape(p.log_weights)[0]) for p in runs]
    if len(set(sizes)) > 1:
        raise ValueError(
            "results: ArviZ chains need the same number of draws, so every run must have the "
            f"same number of particles, got {sizes}; run them with one num_particles"
        )
    stats = [r._step_stats() for r in results]
    steps = {}
    for name in stats[0]:
        rows = [np.asarray(s[name], np.float64) for s in stats]
        length = max(r.shape[0] for r in rows)
        steps[name] = np.stack(
            [
                np.pad(
                    r, [(0, length - r.shape[0])] + [(0, 0)] * (r.ndim - 1), constant_values=np.nan
                )
                for r in rows
            ]
        )
    groups: dict[str, dict[str, np.ndarray]] = {}
    extra = [r._arviz_groups() for r in results]
    for group in extra[0]:
        for name in extra[0][group]:
            if group in _SHARED_GROUPS:
                groups.setdefault(group, {})[name] = np.asarray(extra[0][group][name])
            else:
                groups.setdefault(group, {})[name] = np.stack(
                    [np.asarray(e[group][name]) for e in extra]
                )
    merged = {}
    for r in results:
        merged.update(r._attrs())
    merged.update(attrs or {})
    if len(results) > 1:
        merged = {k: v for k, v in merged.items() if not isinstance(v, int | float)}
    return to_inference_data(
        runs,
        key=key,
        scheme=scheme,
        log_evidence=[r.log_evidence for r in results]
        if len(results) > 1
        else results[0].log_evidence,
        step_stats=steps,
        attrs=merged,
        groups=groups,
    )
