"""Targets from NumPyro models."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from probinfer.checks import check_num
from probinfer.engine.core import LikelihoodEngine
from probinfer.targets.base import LatentSite, Target, check_finite_data

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


class _Static:
    """A non-traced array argument of a model (integer or boolean data: group indices,
    counts), compared by value so that it can sit in a pytree's static part."""

    __slots__ = ("value", "_key")

    def __init__(self, value):
        self.value = value
        a = np.asarray(value)
        self._key = (type(value), a.shape, a.dtype.str, a.tobytes())

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other) -> bool:
        return isinstance(other, _Static) and self._key == other._key


def _is_data(x) -> bool:
    """Whether a model argument is traced data: a floating-point numpy or JAX array."""
    return isinstance(x, np.ndarray | jax.Array) and jnp.issubdtype(x.dtype, jnp.inexact)


def _split_args(args, kwargs):
    """``(data leaves, static part)`` of a model's arguments: floating-point arrays are
    data; everything else (integer arrays by value, Python values) is static."""
    leaves, treedef = jax.tree_util.tree_flatten((args, kwargs))
    data, static = [], []
    for x in leaves:
        if _is_data(x):
            data.append(x)
            static.append(None)
        else:
            static.append(_Static(x) if isinstance(x, np.ndarray | jax.Array) else x)
    return data, (treedef, tuple(static))


def _join_args(data, static_part):
    treedef, static = static_part
    it = iter(data)
    leaves = [next(it) if s is None else (s.value if isinstance(s, _Static) else s) for s in static]
    return jax.tree_util.tree_unflatten(treedef, leaves)


@jax.tree_util.register_pytree_node_class
class NumPyroTarget(Target):
    """A NumPyro model ``model(*args, **kwargs)`` as a batched target.

    Latent sites are mapped to the real line with ``biject_to(site support)`` (evaluated
    at run time, so supports that depend on other latents are handled) and flattened in
    trace order; observed sites form the likelihood. Evaluation goes through a
    :class:`~probinfer.engine.LikelihoodEngine` (JAX backend).

    The target is a JAX pytree whose leaves are the model's floating-point array arguments
    (the data) when the model can be traced with them as abstract values (checked once,
    here): compiled inference code then takes the data as an argument, and a new target of
    the same model with data of the same shapes reuses it instead of compiling again.
    Models that need concrete data (numpy calls on it) keep it as a constant of the
    compiled code (:attr:`traced_data` is ``False``).
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
        self._set(
            model=model,
            args=args,
            kwargs=kwargs,
            latent_names=tuple(latent),
            observed_names=tuple(observed),
            memory_budget=int(memory_budget),
        )
        object.__setattr__(self, "traced_data", False)
        object.__setattr__(self, "traced_data", self._check_traced_data())
        self._make_engines()

    def _make_engines(self) -> None:
        budget = self.memory_budget
        if self.traced_data:
            # the target itself is the engines' argument (its data traced), so the compiled
            # densities are shared by every target of the same model and data shapes
            fns = (_log_prior_of, _log_likelihood_of, _pointwise_of)
            engine = dict(memory_budget=budget, args=(self,))
        else:  # data as constants: compiled per target (freed with it)
            fns = (self.log_prior_one, self.log_likelihood_one, self.pointwise_one)
            engine = dict(memory_budget=budget)
        for name, fn in zip(("_prior_engine", "_lik_engine", "_pointwise_engine"), fns):
            object.__setattr__(self, name, LikelihoodEngine(fn, **engine))

    def _check_traced_data(self) -> bool:
        """Whether the densities trace with the data as abstract values (one abstract
        evaluation; ``False`` for a model that needs concrete data)."""
        data, static_part = _split_args(self.args, self.kwargs)
        if not data:
            return False
        try:  # the static part keys compiled code: it must be hashable
            hash(static_part)
        except TypeError:
            return False

        def densities(data, u):
            args, kwargs = _join_args(data, static_part)
            t = self._with_args(args, kwargs)
            return t.log_prior_one(u), t.pointwise_one(u)

        u = jax.ShapeDtypeStruct((self.dim,), jnp.float32)
        try:
            jax.eval_shape(densities, data, u)
        except Exception:  # noqa: BLE001 - any failure means: keep the data concrete
            return False
        return True

    def _static(self) -> tuple:
        """Everything but the model's arguments (the pytree's static part)."""
        return (
            self.model,
            self.sites,
            self.num_observations,
            self.latent_names,
            self.observed_names,
            self.memory_budget,
            self.traced_data,
        )

    @classmethod
    def _build(cls, static: tuple, args, kwargs) -> NumPyroTarget:
        """A target from its static part and model arguments, without re-tracing."""
        model, sites, num_obs, latent, observed, budget, traced = static
        new = object.__new__(cls)
        Target.__init__(new, sites, num_obs, "jax")
        new._set(
            model=model,
            args=args,
            kwargs=kwargs,
            latent_names=latent,
            observed_names=observed,
            memory_budget=budget,
            traced_data=traced,
        )
        new._make_engines()
        return new

    def _with_args(self, args, kwargs) -> NumPyroTarget:
        """This target on other model arguments of the same structure (no re-tracing)."""
        return self._build(self._static(), args, kwargs)

    # ---- pytree ---------------------------------------------------------------------------
    def tree_flatten(self):
        """Leaves: the data (with :attr:`traced_data`); static: the model and the rest."""
        if not self.traced_data:  # the target itself is static (compared by identity)
            return (), (self._static(), _Identity(self))
        data, static_part = _split_args(self.args, self.kwargs)
        return tuple(data), (self._static(), static_part)

    @classmethod
    def tree_unflatten(cls, aux, data):
        static, part = aux
        if isinstance(part, _Identity):
            return part.target
        return cls._build(static, *_join_args(list(data), part))

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
        keys = jax.random.split(key, num)
        if self.traced_data:  # one compiled sampler per model and data shapes
            return _sample_prior_of(self, keys)
        # one jitted sampler per target, built on first use (freed with the target)
        sampler = self.__dict__.get("_prior_sampler")
        if sampler is None:
            sampler = jax.jit(jax.vmap(self.sample_prior_one))
            object.__setattr__(self, "_prior_sampler", sampler)
        return sampler(keys)

    def constrain_one(self, u: Array) -> dict[str, Array]:
        """Constrained values of the latent and ``numpyro.deterministic`` sites at one
        unconstrained point ``u`` ``(D,)``."""
        tr, _ = self._trace(u)
        return {
            n: site["value"]
            for n, site in tr.items()
            if n in self.latent_names or site["type"] == "deterministic"
        }

    def constrain(self, theta) -> dict[str, Array]:
        """Constrained values of the latent and ``numpyro.deterministic`` sites, batched
        over the rows of ``theta`` ``(N, D)``, in one compiled call."""
        theta = self._check_theta(theta)
        if self.traced_data:  # one compiled program per model and data shapes
            return _constrain_of(self, theta)
        constrainer = self.__dict__.get("_constrainer")  # per target, built on first use
        if constrainer is None:
            constrainer = jax.jit(jax.vmap(self.constrain_one))
            object.__setattr__(self, "_constrainer", constrainer)
        return constrainer(theta)

    def dims(self) -> dict[str, list[str]]:
        """ArviZ dimension names of the latent, deterministic and observed sites, after the
        plates they sit in (as ``az.from_numpyro`` names them; others ``{site}_dim_{i}``)."""
        from numpyro import handlers

        from probinfer.inference_data import site_dims

        tr = handlers.trace(handlers.seed(self.model, jax.random.key(0))).get_trace(
            *self.args, **self.kwargs
        )
        out = {}
        for name, site in tr.items():
            if site["type"] not in ("sample", "deterministic"):
                continue
            if site["type"] == "sample" and name not in self.latent_names + self.observed_names:
                continue  # auxiliary sites
            plates = {f.dim: f.name for f in site.get("cond_indep_stack", ()) if f.dim is not None}
            event_ndim = site["fn"].event_dim if site["type"] == "sample" else None
            event_dims = site.get("infer", {}).get("event_dims", ())
            out[name] = site_dims(name, jnp.ndim(site["value"]), plates, event_ndim, event_dims)
        return out

    def posterior_predictive(self, key: Array, samples: dict) -> dict[str, np.ndarray]:
        """Draws of the observed sites given posterior draws of the latents (NumPyro's
        ``Predictive``, the observations left out), ``{observed site: (N, *shape)}``.

        Parameters
        ----------
        key
            ``jax.random`` key.
        samples
            Constrained latent draws ``{site: (N, *shape)}`` (e.g. ``result.samples``;
            deterministic sites in it are ignored).
        """
        from numpyro.infer import Predictive

        missing = [n for n in self.latent_names if n not in samples]
        if missing:
            raise ValueError(f"samples lacks the latent sites {missing}")
        latents = {n: jnp.asarray(samples[n]) for n in self.latent_names}
        predictive = Predictive(
            _unobserved(self.model, self.observed_names),
            posterior_samples=latents,
            return_sites=list(self.observed_names),
        )
        out = predictive(key, *self.args, **self.kwargs)
        return {n: np.asarray(out[n]) for n in self.observed_names}

    def observed_data(self) -> dict[str, np.ndarray]:
        """The observed values, ``{site: array}``, in the order of the pointwise terms."""
        from numpyro import handlers

        tr = handlers.trace(handlers.seed(self.model, jax.random.key(0))).get_trace(
            *self.args, **self.kwargs
        )
        return {n: np.asarray(tr[n]["value"]) for n in self.observed_names}


def _log_prior_of(target: NumPyroTarget, u) -> Array:
    return target.log_prior_one(u)


def _log_likelihood_of(target: NumPyroTarget, u) -> Array:
    return target.log_likelihood_one(u)


def _pointwise_of(target: NumPyroTarget, u) -> Array:
    return target.pointwise_one(u)


@jax.jit
def _sample_prior_of(target: NumPyroTarget, keys) -> Array:
    return jax.vmap(target.sample_prior_one)(keys)


@jax.jit
def _constrain_of(target: NumPyroTarget, theta) -> dict[str, Array]:
    return jax.vmap(target.constrain_one)(theta)


def _unobserved(model, names):
    """``model`` with the observed sites ``names`` sampled instead of observed (for
    posterior predictive draws)."""
    from numpyro.primitives import Messenger

    class Unobserve(Messenger):
        def process_message(self, msg):
            if msg["type"] == "sample" and msg["name"] in names and msg["is_observed"]:
                msg["value"], msg["is_observed"] = None, False

    return Unobserve(model)


class _Identity:
    """A target kept whole in a pytree's static part, compared by identity."""

    __slots__ = ("target",)

    def __init__(self, target):
        self.target = target

    def __hash__(self) -> int:
        return id(self.target)

    def __eq__(self, other) -> bool:
        return isinstance(other, _Identity) and other.target is self.target


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
