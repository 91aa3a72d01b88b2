"""Targets from Pyro models (torch; imported only when used).

Evaluation is batched with an outer ``pyro.plate`` over particles (the vectorised-particles
idiom of Pyro's ELBOs), under ``torch.no_grad`` through the engine's torch backend; the
supports of latent sites must not depend on other latents.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from probinfer.engine.core import LikelihoodEngine
from probinfer.targets.base import LatentSite, Target, check_finite_data, check_num

Array = jax.Array

__all__ = ["PyroTarget", "from_pyro"]

_PARTICLE_PLATE = "_probinfer_particles"


class PyroTarget(Target):
    """A Pyro model ``model(*args, **kwargs)`` as a batched target (torch backend)."""

    def __init__(self, model, *args, dtype=None, device=None, memory_budget=512 * 2**20, **kwargs):
        import pyro.poutine as poutine
        import torch
        from pyro.poutine.util import site_is_subsample
        from torch.distributions import biject_to

        if not callable(model):
            raise TypeError(f"model must be a callable Pyro model, got {type(model).__name__}")
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(0)
            tr = poutine.trace(model).get_trace(*args, **kwargs)
        latent, observed, nest = [], [], 0
        for name, site in tr.nodes.items():
            if (
                site["type"] != "sample"
                or site_is_subsample(site)
                or site["infer"].get("is_auxiliary")
            ):
                continue
            (observed if site["is_observed"] else latent).append(name)
            for frame in site["cond_indep_stack"]:
                if frame.dim is not None and frame.vectorized:
                    nest = max(nest, -frame.dim)
        if not observed:
            raise ValueError(
                "model has no observed site: pass data to a sample statement with obs=..."
            )
        if not latent:
            raise ValueError("model has no latent sample site: nothing to infer")
        sites, offset, transforms, batch_dims = [], 0, {}, {}
        for name in latent:
            fn = tr.nodes[name]["fn"]
            if fn.support.is_discrete:
                raise ValueError(
                    f"latent site {name!r} is discrete: only continuous latents are supported"
                )
            shape = tuple(tr.nodes[name]["value"].shape)
            t = biject_to(fn.support)
            ushape = tuple(t.inv(tr.nodes[name]["value"]).shape)
            transforms[name] = t
            batch_dims[name] = len(fn.batch_shape)
            site = LatentSite(name, shape, ushape, offset)
            sites.append(site)
            offset += site.size
        num_obs = 0
        for name in observed:
            check_finite_data(name, tr.nodes[name]["value"].detach().cpu().numpy())
            num_obs += int(tr.nodes[name]["fn"].log_prob(tr.nodes[name]["value"]).numel())
        if dtype is None:
            dtype = tr.nodes[observed[0]]["value"].dtype
            dtype = dtype if dtype.is_floating_point else torch.get_default_dtype()
        Target.__init__(self, tuple(sites), num_obs, "torch")
        attrs = dict(
            model=model,
            args=args,
            kwargs=kwargs,
            latent_names=tuple(latent),
            observed_names=tuple(observed),
            max_plate_nesting=nest,
            _transforms=transforms,
            _batch_dims=batch_dims,
            torch_dtype=dtype,
            _loop=[False],
        )
        for k, v in attrs.items():
            object.__setattr__(self, k, v)
        eng = dict(backend="torch", memory_budget=memory_budget, device=device, dtype=dtype)
        object.__setattr__(
            self, "_prior_engine", LikelihoodEngine(lambda u: self._terms(u)[0], **eng)
        )
        object.__setattr__(
            self, "_lik_engine", LikelihoodEngine(lambda u: self._terms(u)[1].sum(-1), **eng)
        )
        object.__setattr__(
            self, "_pointwise_engine", LikelihoodEngine(lambda u: self._terms(u)[1], **eng)
        )

    # ---- batched torch evaluation -------------------------------------------------------
    def _plated(self, n):
        import pyro

        model, nest = self.model, self.max_plate_nesting

        def wrapped(*args, **kwargs):
            with pyro.plate(_PARTICLE_PLATE, n, dim=-(nest + 1)):
                return model(*args, **kwargs)

        return wrapped

    def _particle_shape(self, name, n, shape):
        pad = self.max_plate_nesting - self._batch_dims[name]
        return (n,) + (1,) * max(pad, 0) + shape

    @staticmethod
    def _log_prob(site, n):
        lp = site["fn"].log_prob(site["value"])
        if site.get("scale") is not None and site["scale"] != 1.0:
            lp = site["scale"] * lp
        if lp.dim() == 0 or lp.shape[0] != n:
            lp = lp.reshape((1,) + tuple(lp.shape)).expand((n,) + tuple(lp.shape))
        return lp.reshape(n, -1)

    def _terms(self, u):
        """Torch ``u (n, D)`` -> (log prior with Jacobian ``(n,)``, pointwise ``(n, M)``).

        Vectorised with an outer particle plate; a model whose code does not broadcast over
        an extra leading dimension (e.g. ``x @ beta``) falls back to a loop over particles.
        """
        import torch

        if not self._loop[0]:
            try:
                return self._terms_plated(u)
            except (RuntimeError, ValueError):
                self._loop[0] = True
        rows = [self._terms_plated(u[i : i + 1], plate=False) for i in range(u.shape[0])]
        return torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows])

    def _terms_plated(self, u, plate: bool = True):
        import pyro.poutine as poutine

        n = u.shape[0]
        values, log_det = {}, u.new_zeros(n)
        for s in self.sites:
            block = u[:, s.offset : s.offset + s.size].reshape((n,) + s.unconstrained_shape)
            t = self._transforms[s.name]
            x = t(block)
            ladj = t.log_abs_det_jacobian(block, x)
            log_det = log_det + ladj.reshape(n, -1).sum(-1)
            shape = self._particle_shape(s.name, n, s.shape) if plate else s.shape
            values[s.name] = x.reshape(shape)
        model = self._plated(n) if plate else self.model
        tr = poutine.trace(poutine.condition(model, data=values)).get_trace(
            *self.args, **self.kwargs
        )
        prior = log_det + sum(self._log_prob(tr.nodes[k], n).sum(-1) for k in self.latent_names)
        pointwise = [self._log_prob(tr.nodes[k], n) for k in self.observed_names]
        import torch

        return prior, torch.cat(pointwise, dim=-1)

    # ---- Target interface ---------------------------------------------------------------
    def log_prior(self, theta) -> Array:
        return self._prior_engine(self._check_theta(theta))

    def log_likelihood(self, theta, pointwise: bool = False) -> Array:
        theta = self._check_theta(theta)
        return self._pointwise_engine(theta) if pointwise else self._lik_engine(theta)

    def sample_prior(self, key: Array, num: int) -> Array:
        import pyro.poutine as poutine
        import torch

        from probinfer.engine.dlpack import to_jax

        num = check_num(num)
        seed = int(jax.random.randint(key, (), 0, 2**31 - 1))

        def draw(model, n):
            tr = poutine.trace(model).get_trace(*self.args, **self.kwargs)
            parts = []
            for s in self.sites:
                v = tr.nodes[s.name]["value"].reshape((n,) + s.shape)
                parts.append(self._transforms[s.name].inv(v).reshape(n, -1))
            return torch.cat(parts, dim=-1)

        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            if not self._loop[0]:
                try:
                    out = draw(self._plated(num), num)
                except (RuntimeError, ValueError):
                    self._loop[0] = True
            if self._loop[0]:
                out = torch.cat([draw(self.model, 1) for _ in range(num)])
        return to_jax(out.to(self.torch_dtype))

    def constrain(self, theta) -> dict[str, Array]:
        import torch

        from probinfer.engine.dlpack import to_jax, to_torch

        u = to_torch(jnp.asarray(self._check_theta(theta)), dtype=self.torch_dtype)
        out = {}
        with torch.no_grad():
            for s in self.sites:
                block = u[:, s.offset : s.offset + s.size].reshape((-1,) + s.unconstrained_shape)
                out[s.name] = to_jax(self._transforms[s.name](block).reshape((-1,) + s.shape))
        return out


def from_pyro(model, *args, dtype=None, device=None, **kwargs) -> PyroTarget:
    """Wrap a Pyro model (called as ``model(*args, **kwargs)``) as a batched target.

    Parameters
    ----------
    model
        A Pyro model; observed sites (``obs=...``) form the likelihood. Plates should give
        an explicit ``dim`` or be vectorised (the particle axis is added as an outer plate).
    dtype, device
        torch dtype of the evaluation (default: that of the observed data) and device
        (default ``"cuda"`` when available).

    Raises
    ------
    ValueError
        If the model has no observed or no latent site, a latent is discrete, or the data
        contain NaN/inf.
    """
    return PyroTarget(model, *args, dtype=dtype, device=device, **kwargs)
