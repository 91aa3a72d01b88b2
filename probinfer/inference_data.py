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

__all__ = [
    "STEPS_GROUP",
    "combine_chains",
    "import_arviz",
    "sample_stats_group",
    "site_dims",
    "to_inference_data",
    "values_to_dict",
]

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


def site_dims(
    name: str,
    ndim: int,
    plates: Mapping[int, str],
    event_ndim: int | None = None,
    event_dims: Sequence[str] = (),
) -> list[str]:
    """ArviZ dimension names of a site's value (without ``chain``/``draw``), as
    ``az.from_numpyro`` names them: each batch dimension after the plate at its position,
    the event dimensions after ``event_dims`` (a model's ``infer={"event_dims": [...]}``),
    and any other dimension ``{name}_dim_{i}``.

    Parameters
    ----------
    name
        The site (variable) name.
    ndim
        Number of dimensions of one value of the site.
    plates
        The plates the site sits in, ``{dim: name}`` (``dim = -1`` is the rightmost batch
        dimension).
    event_ndim
        Number of event (rightmost, non-batch) dimensions; default: ``len(event_dims)``,
        or, without those, the dimensions right of the plates' batch shape.
    event_dims
        Names of the event dimensions, or none.
    """
    if event_dims:
        event_ndim = len(event_dims)
    elif event_ndim is None:
        event_ndim = ndim - min(ndim, max((-d for d in plates), default=0))
    num_batch = ndim - event_ndim
    names = [plates.get(i - num_batch, f"{name}_dim_{i}") for i in range(num_batch)]
    if event_dims:
        return names + list(event_dims)
    return names + [f"{name}_dim_{i}" for i in range(num_batch, ndim)]


def sample_stats_group(
    log_prior=None, log_likelihood=None, log_density=None
) -> dict[str, np.ndarray]:
    """The ArviZ ``sample_stats`` variables of equally weighted draws: ``lp`` (the log
    posterior density up to a constant: ``log_prior + log_likelihood``, or ``log_density``
    when given) and ``log_likelihood`` (its total over observations, the name
    ``az.from_numpyro`` and ``az.from_pymc`` use), each with the draws' leading axes.

    Raises
    ------
    ValueError
        If nothing is given, or the shapes differ.
    """
    out: dict[str, np.ndarray] = {}
    if log_density is None and log_prior is not None and log_likelihood is not None:
        lp, ll = np.asarray(log_prior), np.asarray(log_likelihood)
        if lp.shape != ll.shape:
            raise ValueError(
                f"log_prior and log_likelihood must have one shape, got {lp.shape}, {ll.shape}"
            )
        log_density = lp + ll
    if log_density is not None:
        out["lp"] = np.asarray(log_density)
    if log_likelihood is not None:
        out["log_likelihood"] = np.asarray(log_likelihood)
    if not out:
        raise ValueError("give log_density, or log_prior and log_likelihood")
    return out


def _named_dims(name: str, arr: np.ndarray, lead: list[str], dims: Mapping | None) -> list[str]:
    """``lead`` + the dimension names of variable ``name`` (from ``dims``, else
    ``{name}_dim_{i}``)."""
    rest = arr.ndim - len(lead)
    names = list((dims or {}).get(name, []))
    if len(names) != rest:
        if names:
            raise ValueError(
                f"dims[{name!r}] names {len(names)} dimensions, but the variable has {rest} "
                f"(shape {arr.shape[len(lead) :]})"
            )
        names = [f"{name}_dim_{i}" for i in range(rest)]
    return lead + names


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
    dims: Mapping[str, Sequence[str]] | None = None,
    coords: Mapping[str, Any] | None = None,
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
        ``posterior_predictive``, ``sample_stats``), others (``observed_data``) get their
        own.
    dims
        ``{variable: [dimension names]}`` for the dimensions after ``(chain, draw)``, as in
        ``az.from_dict``; a variable of another group with the same name (an observed
        site in ``log_likelihood``, ``posterior_predictive`` and ``observed_data``) gets
        the same names. Targets give the plate names (``target.dims()``). Default:
        ``{variable}_dim_{i}``.
    coords
        ``{dimension: values}`` (default: ``0..size-1``).

    Raises
    ------
    ValueError
        On runs of different variables or sizes, or ``dims`` that do not fit a variable.
    """
    import xarray as xr

    az = import_arviz()
    posterior = _posterior(runs, key, scheme, num_draws, var_name)
    num_chains, num_draws = next(iter(posterior.values())).shape[:2]
    steps = _step_stats(step_stats, num_chains)
    all_attrs: dict[str, Any] = {
        "inference_library": "probinfer",
        "inference_library_version": __version__,
    }
    le = None
    if log_evidence is not None:
        le = np.atleast_1d(np.asarray(log_evidence, dtype=np.float64))
        if le.shape != (num_chains,):
            raise ValueError(f"log_evidence must have one value per chain ({num_chains})")
        all_attrs["log_evidence"] = _attr_value(le if num_chains > 1 else le[0])
        all_attrs["log_evidence_pooled"] = float(np.logaddexp.reduce(le) - np.log(len(le)))
    if attrs:
        all_attrs.update(
            {k: _attr_value(v) if not isinstance(v, str) else v for k, v in attrs.items()}
        )

    post_dims = {n: _named_dims(n, v, ["chain", "draw"], dims)[2:] for n, v in posterior.items()}
    if "posterior" in inspect.signature(az.from_dict).parameters:  # ArviZ 0.x
        idata = az.from_dict(
            posterior=posterior, attrs=all_attrs, dims=post_dims, coords=dict(coords or {})
        )
    else:  # ArviZ 1.x (arviz_base): nested dict of groups, returns an xarray.DataTree
        idata = az.from_dict({"posterior": posterior}, dims=post_dims, coords=dict(coords or {}))
    idata["posterior"].attrs.update(all_attrs)

    for group, variables in (groups or {}).items():
        data_vars = {}
        for n, v in variables.items():
            arr = np.asarray(v)
            lead = ["chain", "draw"] if arr.shape[:2] == (num_chains, num_draws) else []
            data_vars[n] = (_named_dims(n, arr, lead, dims), arr)
        used = {d for dd, _ in data_vars.values() for d in dd}
        group_coords = {d: np.asarray(c) for d, c in (coords or {}).items() if d in used}
        _add_group(idata, group, xr.Dataset(data_vars, coords=group_coords, attrs=all_attrs))

    if steps or le is not None:
        data_vars = {
            n: (["chain", "step"] + [f"{n}_dim_{i}" for i in range(arr.ndim - 2)], arr)
            for n, arr in steps.items()
        }
        if le is not None:
            data_vars["log_evidence"] = (["chain"], le)
        ds = xr.Dataset(data_vars, coords={"chain": np.arange(num_chains)}, attrs=all_attrs)
        _add_group(idata, STEPS_GROUP, ds)
    return idata


def _posterior(runs: Sequence, key, scheme: str, num_draws, var_name: str) -> dict:
    """Equally weighted draws of every run, stacked as ``{variable: (chain, draw, ...)}``."""
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
    return {n: np.stack([c[n] for c in per_chain]) for n in names}


def _step_stats(step_stats, num_chains: int) -> dict[str, np.ndarray]:
    """Per-step statistics as ``(chain, step, ...)`` arrays (a 1-chain ``(step,)`` is lifted)."""
    steps: dict[str, np.ndarray] = {}
    for n, v in (step_stats or {}).items():
        arr = np.asarray(v)
        if arr.ndim == 1 and num_chains == 1:
            arr = arr[None]
        if arr.ndim < 2 or arr.shape[0] != num_chains:
            raise ValueError(
                f"step_stats[{n!r}] must have shape (chain, step, ...) with "
                f"{num_chains} chains, got {arr.shape}"
            )
        steps[n] = arr
    return steps


def _add_group(idata, name: str, ds) -> None:
    """Add the ``xarray.Dataset`` ``ds`` as group ``name`` (ArviZ 0.x and 1.x)."""
    if hasattr(idata, "add_groups"):
        idata.add_groups({name: ds})
    else:
        idata[name] = ds


# Groups without (chain, draw) axes: stored once, not per chain.
_SHARED_GROUPS = ("observed_data", "constant_data")


def combine_chains(
    results: Sequence,
    key=None,
    *,
    scheme: str = "systematic",
    attrs=None,
    dims: Mapping[str, Sequence[str]] | None = None,
    coords: Mapping[str, Any] | None = None,
    groups: Mapping[str, Mapping[str, Any]] | None = None,
):
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
    dims, coords
        Dimension names and coordinates, as in :func:`to_inference_data`. ``dims`` adds to
        (and overrides per variable) the results' own: a tempered SMC run names the
        dimensions after its model's plates (``target.dims()``).
    groups
        Extra groups, ``{group: {variable: array (chain, draw, ...)}}``, e.g.
        ``posterior_predictive`` from ``target.posterior_predictive(key, r.samples)`` per
        run, stacked; they replace a result's group of the same name.

    Raises
    ------
    ValueError
        If ``results`` is empty or its runs have different numbers of particles (ArviZ chains
        need the same number of draws).

    Notes
    -----
    Per-step histories of different lengths (adaptive tempering) are padded with NaN to the
    longest. The ``log_likelihood`` group (``az.loo``, ``az.waic``), ``observed_data``,
    ``sample_stats`` and ``posterior_predictive`` come from the results' extra groups, when
    their model provides them. Their per-draw rows are taken as they are (row ``i`` belongs to
    particle ``i``): they match the posterior draws of equally weighted particles (tempered
    SMC), which are exported without a resample.
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
    found: dict[str, dict[str, np.ndarray]] = {}
    extra = [r._arviz_groups() for r in results]
    for group in extra[0]:
        for name in extra[0][group]:
            if group in _SHARED_GROUPS:
                found.setdefault(group, {})[name] = np.asarray(extra[0][group][name])
            else:
                found.setdefault(group, {})[name] = np.stack(
                    [np.asarray(e[group][name]) for e in extra]
                )
    for group, variables in (groups or {}).items():
        found[group] = dict(variables)
    merged = {}
    for r in results:
        merged.update(r._attrs())
    merged.update(attrs or {})
    if len(results) > 1:
        merged = {k: v for k, v in merged.items() if not isinstance(v, int | float)}
    dims = {**results[0]._arviz_dims(), **(dims or {})}
    return to_inference_data(
        runs,
        key=key,
        scheme=scheme,
        log_evidence=[r.log_evidence for r in results]
        if len(results) > 1
        else results[0].log_evidence,
        step_stats=steps,
        attrs=merged,
        groups=found,
        dims=dims,
        coords=coords,
    )
