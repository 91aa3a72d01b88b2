"""What PMMH and SMC² share: the prior over named parameters on the unconstrained scale, the
particle-filter estimate of the log-likelihood of one parameter value (on the SMC driver),
and the pseudo-marginal random-walk Metropolis-Hastings step.

Prior
    A numpyro distribution, or a dict ``{name: distribution}``, over the parameters
    ``theta`` of a state-space model. Inference works on one flat unconstrained vector
    ``u (D,)``: each site is mapped to its support with ``biject_to(support)`` and its slice
    of ``u`` is given by a :class:`~probinfer.targets.base.LatentSite` (the layout the
    NumPyro targets use). The prior itself is a JAX pytree (numpyro distributions are), so
    it enters compiled code as an argument: a new prior of the same families and shapes
    reuses the compiled run. (A :class:`~probinfer.targets.NumPyroTarget` is not used for
    it: that needs a model with an observed site, evaluates through the likelihood engine,
    and keeps a data-less model as a constant of code compiled per target.)

Log-likelihood estimate
    :class:`FilterModel` is the bootstrap (or guided) particle filter of
    ``ssm_fn(theta)`` as a :class:`~probinfer.smc.FeynmanKac` model whose data are
    ``{"theta": theta, "ys": ys}``: its callables are built once per ``ssm_fn`` (the
    state-space filter's own callables, :mod:`probinfer.smc.state_space`, applied to
    ``ssm_fn(data["theta"])``), so the filter for every parameter value, traced or
    vmapped, is one compiled program of the driver (:func:`~probinfer.smc.smc_scan`).
    The estimate ``log p_hat(y | theta)`` is unbiased for ``p(y | theta)`` on the natural
    scale, which is what makes the pseudo-marginal algorithms exact. A NaN log potential
    gives that filter particle weight 0 (the driver's rule: where the density underflows,
    e.g. ``Normal(0, exp(x))`` at a very negative ``x`` in float32, its value is ~0), so an
    estimate is never NaN; a parameter value whose filter particles all have NaN potentials
    has likelihood 0. Every filter run that met a NaN potential is counted, and PMMH and
    SMC² report the count in one warning.

Pseudo-marginal step
    :func:`pm_step` proposes ``u' = u + L z`` (``z ~ N(0, I)``), estimates the
    likelihood at ``u'`` only (the current estimate is kept, never re-estimated) and
    accepts with probability ``min(1, p(u') p_hat(y | u') / (p(u) p_hat(y | u)))``. It
    leaves ``p(u) p_hat(y | u, U) q(U)`` (the extended target over the parameter and the
    filter's random numbers ``U``) invariant; its ``u``-marginal is the posterior.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from probinfer.smc.base import FeynmanKac, check_num_particles, check_threshold
from probinfer.smc.kernels import _mh_accept
from probinfer.smc.scan import smc_scan
from probinfer.smc.state_space import check_observations
from probinfer.targets.base import LatentSite

Array = jax.Array

__all__ = [
    "FilterModel",
    "PMState",
    "check_particles",
    "check_prior",
    "check_ssm_fn",
    "check_ys",
    "constrain",
    "constrain_rows",
    "float_dtype",
    "log_prior",
    "pm_step",
    "prior_draws",
    "prior_sites",
    "sample_unconstrained",
]

#: Name of the parameter when the prior is a single distribution.
SINGLE_NAME = "theta"

#: Errors JAX raises when Python code needs a concrete value of a traced one.
_TRACER_ERRORS = (
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerArrayConversionError,
    jax.errors.TracerBoolConversionError,
    jax.errors.TracerIntegerConversionError,
)


def float_dtype() -> np.dtype:
    """JAX's default float: float32, or float64 with ``jax_enable_x64`` (parameters,
    observations and filters all use it)."""
    return jax.dtypes.canonicalize_dtype(np.float64)


# ---- the prior ------------------------------------------------------------------------------
def check_prior(prior) -> dict:
    """``prior`` as a dict ``{name: numpyro distribution}`` (a single distribution is named
    ``"theta"``).

    Raises
    ------
    TypeError
        If it is not a numpyro distribution or a dict of them with string keys.
    ValueError
        If it is empty or a distribution is discrete.
    """
    import numpyro.distributions as dist

    if isinstance(prior, dist.Distribution):
        prior = {SINGLE_NAME: prior}
    if not isinstance(prior, Mapping):
        raise TypeError(
            "prior must be a numpyro distribution or a dict {name: distribution}, "
            f"got {type(prior).__name__}"
        )
    if not prior:
        raise ValueError("prior must name at least one parameter")
    for name, d in prior.items():
        if not isinstance(name, str):
            raise TypeError(f"prior keys must be parameter names (str), got {name!r}")
        if not isinstance(d, dist.Distribution):
            raise TypeError(
                f"prior[{name!r}] must be a numpyro distribution, got {type(d).__name__}"
            )
        if d.support.is_discrete:
            raise ValueError(f"prior[{name!r}] is discrete: only continuous parameters")
    return dict(prior)


def prior_sites(prior: Mapping) -> tuple[LatentSite, ...]:
    """The layout of the flat unconstrained vector: one site per parameter, in the dict's
    order (static: shapes only, so it works on a traced prior)."""
    from numpyro.distributions import biject_to

    sites, offset = [], 0
    for name, d in prior.items():
        shape = tuple(d.batch_shape) + tuple(d.event_shape)
        ushape = tuple(biject_to(d.support).inverse_shape(shape))
        site = LatentSite(name, shape, ushape, offset)
        sites.append(site)
        offset += site.size
    return tuple(sites)


def _split(prior: Mapping, u) -> dict:
    """``u (D,)`` cut into the unconstrained value of each site."""
    return {
        s.name: u[s.offset : s.offset + s.size].reshape(s.unconstrained_shape)
        for s in prior_sites(prior)
    }


def constrain(prior: Mapping, u) -> dict:
    """The parameters ``{name: value}`` at one unconstrained point ``u (D,)``."""
    from numpyro.distributions import biject_to

    return {n: biject_to(prior[n].support)(v) for n, v in _split(prior, u).items()}


def log_prior(prior: Mapping, u) -> Array:
    """Log prior density of one unconstrained point ``u (D,)``, with the log-Jacobian of
    the map to the constrained parameters (so it is the density of ``u``)."""
    from numpyro.distributions import biject_to

    total = jnp.zeros((), u.dtype)
    for name, v in _split(prior, u).items():
        d = prior[name]
        t = biject_to(d.support)
        x = t(v)
        total = total + jnp.sum(d.log_prob(x)) + jnp.sum(t.log_abs_det_jacobian(v, x))
    return total


def sample_unconstrained(prior: Mapping, key: Array) -> Array:
    """One prior draw as a flat unconstrained vector ``(D,)``."""
    from numpyro.distributions import biject_to

    parts = []
    for k, d in zip(jax.random.split(key, len(prior)), prior.values(), strict=True):
        x = d.sample(k)
        parts.append(jnp.reshape(biject_to(d.support).inv(x), -1).astype(float_dtype()))
    return jnp.concatenate(parts)


@jax.jit
def prior_draws(keys: Array, prior: Mapping) -> Array:
    """One unconstrained prior draw per key, ``(len(keys), D)`` (compiled once per prior
    family and number of draws)."""
    return jax.vmap(lambda k: sample_unconstrained(prior, k))(keys)


@jax.jit
def constrain_rows(prior: Mapping, u: Array) -> dict:
    """:func:`constrain` of each row of ``u (n, D)``: ``{name: (n, *shape)}``."""
    return jax.vmap(lambda row: constrain(prior, row))(u)


def host_theta(theta: Mapping) -> dict:
    """Concrete parameter values as plain Python numbers and lists (how error messages
    name a parameter value)."""
    out = {}
    for n, v in theta.items():
        a = np.asarray(v)
        out[n] = round(float(a), 6) if a.ndim == 0 else a.round(6).tolist()
    return out


def check_particles(num, name: str) -> int:
    """A particle count ``>= 2`` (:func:`~probinfer.smc.base.check_num_particles`), the
    error naming the argument ``name``."""
    try:
        return check_num_particles(num)
    except ValueError as err:
        raise ValueError(str(err).replace("num_particles", name, 1)) from None


# ---- observations and the model function ----------------------------------------------------
def check_ys(ys) -> np.ndarray:
    """The observations as a finite float array ``(T,)`` or ``(T, p)``; ``ValueError``
    naming ``ys`` otherwise (:func:`~probinfer.smc.state_space.check_observations`)."""
    return check_observations(ys, "ys")


def _as_ssm(ssm):
    """``ssm`` checked to be a :class:`~probinfer.smc.StateSpaceModel` (what ``ssm_fn``
    must return)."""
    from probinfer.lgssm import LinearGaussianSSM
    from probinfer.smc.state_space import StateSpaceModel

    if isinstance(ssm, LinearGaussianSSM):
        raise TypeError(
            "ssm_fn returned a LinearGaussianSSM: its matrices are checked on the host, so it "
            "cannot be built from the traced parameters that PMMH and SMC² pass; write the "
            "model as a StateSpaceModel with numpyro Normal distributions instead"
        )
    if not isinstance(ssm, StateSpaceModel):
        raise TypeError(f"ssm_fn must return a StateSpaceModel, got {type(ssm).__name__}")
    return ssm


def check_ssm_fn(ssm_fn, prior: Mapping, thetas: Mapping, ys: np.ndarray, proposal: str) -> None:
    """Check ``ssm_fn`` before a run.

    It is called on each concrete parameter value in ``thetas`` (``{name: (n, ...)}``, the
    run's starting points): an exception there is a ``ValueError`` naming the value (a
    point of the prior's support at which the model cannot be built); the model built at
    the first value draws two particles and evaluates their potentials on the first two
    observations eagerly, so errors inside its distributions name that value too. Finally
    the filter is traced once with abstract parameters: code that needs concrete values
    (Python ``if`` on a parameter) gives a ``TypeError``, as does a model that is not a
    :class:`~probinfer.smc.StateSpaceModel`.
    """
    if not callable(ssm_fn):
        raise TypeError(f"ssm_fn must be callable (theta dict -> StateSpaceModel), got {ssm_fn!r}")
    from probinfer.smc.state_space import ssm_feynman_kac

    thetas = {k: np.asarray(v) for k, v in thetas.items()}
    n = int(np.shape(next(iter(thetas.values())))[0])
    for i in range(n):
        theta = {k: v[i] for k, v in thetas.items()}
        try:
            ssm = ssm_fn(theta)
        except Exception as err:  # noqa: BLE001 - any failure is reported with its theta
            raise _failed(theta, err) from err
        _as_ssm(ssm)
        if i > 0:
            continue
        if proposal == "guided" and ssm.proposal is None:
            raise ValueError(
                "proposal='guided' needs a StateSpaceModel with proposal and initial_proposal"
            )
        try:  # the model's distributions, eagerly on two particles and two observations
            fk = ssm_feynman_kac(ssm, ys[:2], proposal)
            x = fk.M0(jax.random.key(0), 2, fk.data)
            fk.logG(0, None, x, fk.data)
            if fk.num_steps > 1:
                fk.logG(1, x, fk.M(jax.random.key(1), 1, x, fk.data), fk.data)
        except Exception as err:  # noqa: BLE001
            raise _failed(theta, err) from err
    model = FilterModel(ssm_fn, proposal, 2, 0.5, "systematic")
    u = jax.ShapeDtypeStruct((sum(s.size for s in prior_sites(prior)),), float_dtype())
    try:
        jax.eval_shape(
            lambda p, u, y: model.log_likelihood(jax.random.key(0), constrain(p, u), y),
            prior,
            u,
            jnp.asarray(ys, float_dtype()),
        )
    except _TRACER_ERRORS as err:
        raise TypeError(
            "ssm_fn must build the model with jax.numpy operations on the parameters (they "
            "are traced): it needed a concrete value. Use jnp.where instead of Python if on "
            f"a parameter. ({type(err).__name__}: {str(err).splitlines()[0]})"
        ) from err


def _failed(theta, err) -> ValueError:
    return ValueError(
        f"ssm_fn failed for theta={host_theta(theta)} (a point in the prior's support): "
        f"{type(err).__name__}: {err}"
    )


# ---- the filter of one parameter value ------------------------------------------------------
@lru_cache(maxsize=64)
def _filter_fns(ssm_fn: Callable, guided: bool) -> tuple:
    """``(M0, M, logG)`` of the filter of ``ssm_fn(data["theta"])`` on ``data["ys"]``: the
    state-space filter's callables (one set per ``ssm_fn``, so compiled code is reused)."""
    from probinfer.smc.state_space import _generic_fns

    def fns(data):  # uncached: the model holds (traced) parameters
        return _generic_fns.__wrapped__(_as_ssm(ssm_fn(data["theta"])), guided)

    def M0(key, n, data):
        return fns(data)[0](key, n, data["ys"])

    def M(key, t, x, data):
        return fns(data)[1](key, t, x, data["ys"])

    def logG(t, x_prev, x, data):
        return fns(data)[2](t, x_prev, x, data["ys"])

    return M0, M, logG


class FilterModel(NamedTuple):
    """The particle filter that estimates ``log p(y | theta)`` (static settings: hashable,
    part of the compilation key of the runs that use it).

    Attributes
    ----------
    ssm_fn
        ``ssm_fn(theta dict) -> StateSpaceModel``.
    proposal
        ``"bootstrap"`` or ``"guided"`` (the model's own proposals).
    num_particles
        Particles per filter.
    ess_threshold, scheme
        The filter's resampling rule.
    """

    ssm_fn: Callable
    proposal: str
    num_particles: int
    ess_threshold: float
    scheme: str

    @classmethod
    def checked(cls, ssm_fn, proposal, num_particles, ess_threshold, scheme, name="num_particles"):
        """Validated settings; ``name`` is the argument that gave ``num_particles``."""
        if proposal not in ("bootstrap", "guided"):
            raise ValueError(f"proposal must be 'bootstrap' or 'guided', got {proposal!r}")
        n = check_particles(num_particles, name)
        thr = check_threshold(ess_threshold, scheme)
        return cls(ssm_fn, proposal, n, thr, scheme)

    def fns(self) -> tuple:
        return _filter_fns(self.ssm_fn, self.proposal == "guided")

    def model(self, theta, ys) -> FeynmanKac:
        """The filter of ``theta`` on ``ys`` as a Feynman-Kac model (for ``init``/``step``)."""
        return FeynmanKac(*self.fns(), ys.shape[0], {"theta": theta, "ys": ys})

    def log_likelihood(self, key, theta, ys) -> tuple[Array, Array]:
        """``log p_hat(y_{0:T-1} | theta)`` from one filter run (:func:`smc_scan`; ``-inf``
        for a zero estimate) and whether the run met a NaN log potential."""
        out = smc_scan(
            key,
            self.model(theta, ys),
            self.num_particles,
            self.ess_threshold,
            self.scheme,
            keep_ancestors=False,
        )
        return _estimate(out)

    def run_until(self, key, theta, ys, last):
        """The filter of ``theta`` run on ``y_0..y_last`` (``last`` may be traced): its
        state (``data`` dropped), ``log p_hat(y_{0:last} | theta)`` and whether the run met
        a NaN log potential.

        The driver's stop rule (:func:`probinfer.smc.state_space._stopping_fns`, the
        ``finished`` pattern of the padded filters) runs the first ``last + 1`` steps in
        one ``while_loop``, so a single compiled program serves every ``last``.
        """
        from probinfer.smc.state_space import _stopping_fns

        M0, M, logG, adapt, finished = _stopping_fns(*self.fns())
        data = {
            "model": {"theta": theta, "ys": ys},
            "last": jnp.asarray(last, jnp.int32),
            "t": jnp.zeros((), jnp.int32),
        }
        fk = FeynmanKac(M0, M, logG, ys.shape[0], data, adapt=adapt, finished=finished)
        out = smc_scan(
            key, fk, self.num_particles, self.ess_threshold, self.scheme, keep_ancestors=False
        )
        return (out.state._replace(data=None), *_estimate(out))


def _estimate(out) -> tuple[Array, Array]:
    """The log-likelihood estimate of a filter run (``-inf``, never NaN, for a zero one) and
    whether it met NaN log potentials."""
    ll = out.log_evidence
    return jnp.where(jnp.isnan(ll), -jnp.inf, ll), jnp.sum(out.num_nan) > 0


# ---- the pseudo-marginal random-walk step ---------------------------------------------------
class PMState(NamedTuple):
    """One parameter value of a pseudo-marginal chain (or SMC² particle)."""

    u: Array  # (D,) unconstrained parameters
    log_prior: Array  # log prior density of u (Jacobian included)
    log_lik: Array  # the kept estimate log p_hat(y | u) (-inf: zero likelihood)
    aux: Any = None  # what the estimate carries along (SMC²: the filter's state)


def pm_step(key: Array, state: PMState, chol: Array, prior: Mapping, estimate: Callable):
    """One pseudo-marginal random-walk Metropolis-Hastings step for one parameter value.

    Parameters
    ----------
    key
        ``jax.random`` key.
    state
        The current :class:`PMState`.
    chol
        ``(D, D)`` factor of the proposal covariance: ``u' = u + chol @ z``.
    prior
        The prior dict (:func:`check_prior`).
    estimate
        ``estimate(key, u) -> (log_lik, aux, met_nan)``: a fresh likelihood estimate at
        ``u`` (NaN is treated as zero likelihood: the proposal is rejected), what it
        carries along, and whether the estimate met NaN log potentials.

    Returns
    -------
    (PMState, accepted, met_nan)
        The new state, whether the proposal was accepted, ``met_nan`` of its estimate.
    """
    k_prop, k_est, k_acc = jax.random.split(key, 3)
    u_new = state.u + chol @ jax.random.normal(k_prop, state.u.shape, state.u.dtype)
    lp_new = log_prior(prior, u_new)
    ll_new, aux_new, met_nan = estimate(k_est, u_new)
    ll_new = jnp.where(jnp.isnan(ll_new), -jnp.inf, ll_new)
    ok, _ = _mh_accept(k_acc, lp_new + ll_new - state.log_prior - state.log_lik)
    new = PMState(u_new, lp_new, ll_new, aux_new)
    out = jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, state)
    return out, ok, met_nan
