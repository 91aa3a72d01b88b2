"""Targets from NumPyro models."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from probinfer.engine.core import LikelihoodEngine
from probinfer.targets.base import LatentSite, Target, check_finite_data, check_num

Array = jax.Array

__all__ = ["NumPyroTarget", "from_numpyro"]


def _sample_sites(tr):
    latent, observed = [], []
    for name, site in tr.items():
        if site["type"] != "sample":
            continue
        if site["is_observed"]:  # data, and factor() terms (auxiliary observed sites)
            observed.append(name)
        elif not site.get("infer", {}).get("is_auxiliary"):
            latent.append(name)
    return latent, observed


class NumPyroTarget(Target):
    """A NumPyro model ``model(*args, **kwargs)`` as a batched target.

    Latent sites are mapped to the real line with ``biject_to(site support)`` (evaluated
    at run time, so supports that depend on other latents are handled) and flattened in
    trace order; observed sites form the likelihood. Evaluation goes through a
    :class:`~probinfer.engine.LikelihoodEngine` (JAX backend).
    """

    def __init__(self, model, *args, memory_budget: int = 512 * 2**20, **kwargs):
        from numpyro import handlers
        from numpyro.distributions import biject_to

        if not callable(model):
            raise TypeError(f"model must be a callable NumPyro model, got {type(model).__name__}")
        tr = handlers.trace(handlers.seed(model, jax.random.key(0))).get_trace(*args, **kwargs)
        latent, observed = _sample_sites(tr)
        if not observed:
            raise ValueError(
                "model has no observed site: pass data to a sample statement with obs=..."
            )
        if not latent:
            raise ValueError("model has no latent sample site: nothing to infer")
        sites, offset, num_obs = [], 0, 0
        for name in latent:
            fn = tr[name]["fn"]
            if fn.support.is_discrete:
                raise ValueError(
                    f"latent site {name!r} is discrete: only continuous latents are supported"
                )
            shape = tuple(jnp.shape(tr[name]["value"]))
            ushape = tuple(biject_to(fn.support).inverse_shape(shape))
            site = LatentSite(name, shape, ushape, offset)
            sites.append(site)
            offset += site.size
        for name in observed:
            check_finite_data(name, tr[name]["value"])
            num_obs += int(jnp.size(tr[name]["fn"].log_prob(tr[name]["value"])))
        Target.__init__(self, tuple(sites), num_obs, "jax")
        for k, v in dict(
            model=model,
            args=args,
            kwargs=kwargs,
            latent_names=tuple(latent),
            observed_names=tuple(observed),
        ).items():
            object.__setattr__(self, k, v)
        engine = dict(memory_budget=memory_budget)
        object.__setattr__(self, "_prior_engine", LikelihoodEngine(self.log_prior_one, **engine))
        object.__setattr__(self, "_lik_engine", LikelihoodEngine(self.log_likelihood_one, **engine))
        object.__setattr__(
            self, "_pointwise_engine", LikelihoodEngine(self.pointwise_one, **engine)
        )

    # ---- one particle -------------------------------------------------------------------
    def _trace(self, u):
        from numpyro import handlers
        from numpyro.distributions import biject_to

        unc = self.unflatten(u)
        log_det = []

        def substitute_fn(site):
            if site["name"] not in unc:
                return None
            t = biject_to(site["fn"].support)
            x = t(unc[site["name"]])
            log_det.append(jnp.sum(t.log_abs_det_jacobian(unc[site["name"]], x)))
            return x

        model = handlers.substitute(
            handlers.seed(self.model, jax.random.key(0)), substitute_fn=substitute_fn
        )
        tr = handlers.trace(model).get_trace(*self.args, **self.kwargs)
        return tr, sum(log_det)

    @staticmethod
    def _site_log_prob(site):
        lp = site["fn"].log_prob(site["value"])
        if site.get("scale") is not None:
            lp = site["scale"] * lp
        return lp

    def log_prior_one(self, u) -> Array:
        """Log prior (with Jacobian) of one flat unconstrained vector ``u (D,)``."""
        tr, log_det = self._trace(u)
        return log_det + sum(jnp.sum(self._site_log_prob(tr[n])) for n in self.latent_names)

    def pointwise_one(self, u) -> Array:
        """``(M,)`` log likelihood of each observation for one ``u``."""
        tr, _ = self._trace(u)
        return jnp.concatenate(
            [jnp.reshape(self._site_log_prob(tr[n]), -1) for n in self.observed_names]
        )

    def log_likelihood_one(self, u) -> Array:
        """Log likelihood of one ``u``."""
        return jnp.sum(self.pointwise_one(u))

    # ---- batched ------------------------------------------------------------------------
    def log_prior(self, theta) -> Array:
        return self._prior_engine(self._check_theta(theta))

    def log_likelihood(self, theta, pointwise: bool = False) -> Array:
        theta = self._check_theta(theta)
        return self._pointwise_engine(theta) if pointwise else self._lik_engine(theta)

    def sample_prior_one(self, key: Array) -> Array:
        """One prior draw as a flat unconstrained vector ``(D,)``."""
        from numpyro import handlers
        from numpyro.distributions import biject_to

        tr = handlers.trace(handlers.seed(self.model, key)).get_trace(*self.args, **self.kwargs)
        parts = []
        for s in self.sites:
            site = tr[s.name]
            parts.append(jnp.reshape(biject_to(site["fn"].support).inv(site["value"]), -1))
        return jnp.concatenate(parts)

    def sample_prior(self, key: Array, num: int) -> Array:
        num = check_num(num)
        # One jitted sampler per target, built on first use, so repeated calls with the
        # same `num` reuse the compiled model instead of re-tracing it.
        sampler = self.__dict__.get("_prior_sampler")
        if sampler is None:
            sampler = jax.jit(jax.vmap(self.sample_prior_one))
            object.__setattr__(self, "_prior_sampler", sampler)
        return sampler(jax.random.split(key, num))

    def constrain(self, theta) -> dict[str, Array]:
        """Constrained values of the latent and ``numpyro.deterministic`` sites."""
        theta = self._check_theta(theta)

        def one(u):
            tr, _ = self._trace(u)
            return {
                n: site["value"]
                for n, site in tr.items()
                if n in self.latent_names or site["type"] == "deterministic"
            }

        return jax.vmap(one)(theta)

    def observed_data(self) -> dict[str, np.ndarray]:
        """The observed values, ``{site: array}``, in the order of the pointwise terms."""
        from numpyro import handlers

        tr = handlers.trace(handlers.seed(self.model, jax.random.key(0))).get_trace(
            *self.args, **self.kwargs
        )
        return {n: np.asarray(tr[n]["value"]) for n in self.observed_names}


def from_numpyro(model, *args, **kwargs) -> NumPyroTarget:
    """Wrap a NumPyro model (called as ``model(*args, **kwargs)``) as a batched target.

    Observed sites (``obs=...``) form the likelihood, latent sites the prior; the target
    works on flat unconstrained parameters with the log-Jacobian in ``log_prior``.

    Raises
    ------
    ValueError
        If the model has no observed site or no latent site, a latent site is discrete,
        or observed data contain NaN/inf.
    """
    return NumPyroTarget(model, *args, **kwargs)
