"""Targets from Pyro models (torch; imported only when used).

Evaluation is batched with an outer ``pyro.plate`` over particles (the vectorised-particles
idiom of Pyro's ELBOs); the supports of latent sites must not depend on other latents.
Called eagerly, the densities run under ``torch.no_grad`` through the engine's torch
backend. Under a JAX trace (``jit``, ``grad``, ``vmap``) ``log_prior`` and
``log_likelihood`` are :func:`jax.custom_vjp` functions around :func:`jax.pure_callback`:
the forward pass is one batched torch evaluation, and when JAX asks for the gradient one
batched torch forward + backward (autograd) pass returns both densities and both
per-particle gradients, so gradient kernels (HMC, NUTS) work on Pyro models.
"""

from __future__ import annotations

import hashlib
import threading
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from probinfer.checks import check_num
from probinfer.engine.core import LikelihoodEngine, chunk_size_for
from probinfer.targets.base import LatentSite, Target, check_finite_data

Array = jax.Array

__all__ = ["PyroTarget", "from_pyro"]

_PARTICLE_PLATE = "_probinfer_particles"
# Rough autograd memory per particle and per log-density term (graph + saved tensors),
# used to size the chunks of the forward + backward pass to the memory budget.
_GRAD_BYTES_PER_TERM = 64


class PyroTarget(Target):
    """A Pyro model ``model(*args, **kwargs)`` as a batched target (torch backend).

    ``has_gradients`` is True: ``jax.grad`` of ``log_prior``/``log_likelihood`` (also under
    ``jit`` and ``vmap``) runs torch autograd, so tempered SMC can move the particles with
    HMC or NUTS. The model should broadcast over a leading particle dimension; one that
    does not is evaluated particle by particle, after one warning that says how to fix it.
    """

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
        from probinfer.inference_data import site_dims

        dims = {}
        for name in latent + observed:
            site = tr.nodes[name]
            plates = {f.dim: f.name for f in site["cond_indep_stack"] if f.dim is not None}
            dims[name] = site_dims(name, site["value"].dim(), plates, site["fn"].event_dim)
        observed_values = {n: tr.nodes[n]["value"].detach().cpu().numpy() for n in observed}
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
            torch_device=device or ("cuda" if torch.cuda.is_available() else "cpu"),
            memory_budget=int(memory_budget),
            _dims=dims,
            _observed_values=observed_values,
            _mode=["plate"],
            _reasons=[],
            _sample_loop=[False],
            _checked=[False],
            _cache=[None],
            _cache_lock=threading.Lock(),
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
        object.__setattr__(self, "_traced", (self._traced_density(0), self._traced_density(1)))

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

    @property
    def evaluation(self) -> str:
        """How the densities are evaluated over particles: ``"plate"`` (an outer particle
        plate, the model broadcasts), ``"vmap"`` (:func:`torch.func.vmap` of a one-particle
        evaluation) or ``"loop"`` (one model call per particle)."""
        return self._mode[0]

    def _terms(self, u):
        """Torch ``u (n, D)`` -> (log prior with Jacobian ``(n,)``, pointwise ``(n, M)``).

        First vectorised with an outer particle plate. A model whose code does not
        broadcast over an extra leading dimension (e.g. ``X @ beta``) raises there, or
        (checked once on three particles) gives values that differ from a one-particle
        evaluation; it is then evaluated with :func:`torch.func.vmap` over one-particle
        evaluations (still one batched pass), and only where that fails too (data-dependent
        Python control flow, ``.item()``) particle by particle, after one warning.
        """
        import torch

        for mode, terms in (("plate", self._terms_plated), ("vmap", self._terms_vmapped)):
            if self._mode[0] != mode:
                continue
            try:
                out = terms(u)
            except Exception as err:  # noqa: BLE001 - any failure: the next, safer mode
                self._next_mode(f"{mode}: {_first_line(err)}")
            else:
                if not self._checked[0]:
                    self._check_batched(u, out)
                if self._mode[0] == mode:
                    return out
        rows = [self._terms_plated(u[i : i + 1], plate=False) for i in range(u.shape[0])]
        return torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows])

    def _terms_vmapped(self, u):
        """:meth:`_terms` by :func:`torch.func.vmap` of a one-particle evaluation (Pyro's
        argument validation off: its checks are data-dependent control flow)."""
        import pyro
        from torch.func import vmap

        def one(row):
            lp, pointwise = self._terms_plated(row[None], plate=False)
            return lp[0], pointwise[0]

        with pyro.validation_enabled(False), warnings.catch_warnings():
            # torch's slow per-sample fallback for ops without a batching rule: still right
            warnings.filterwarnings("ignore", message=".*performance drop.*", category=UserWarning)
            return vmap(one)(u)

    def _check_batched(self, u, out) -> None:
        """Compare the batched densities of the first, second and last particle with a
        one-particle evaluation (once per target and mode, on the first batch of two or
        more; the engine pads batches at the end, so the second row is a real particle)."""
        import torch

        n = u.shape[0]
        if n < 2:
            return
        self._checked[0] = True
        with torch.no_grad():
            for i in sorted({0, 1, n - 1}):
                one = self._terms_plated(u[i : i + 1].detach(), plate=False)
                for batched, single in zip(out, one):
                    b, s1 = batched[i : i + 1].detach(), single
                    if b.shape != s1.shape or not torch.allclose(
                        b, s1, rtol=1e-4, atol=1e-4, equal_nan=True
                    ):
                        self._next_mode(
                            f"{self._mode[0]}: its log densities differ from a one-particle "
                            "evaluation"
                        )
                        return

    def _next_mode(self, reason: str) -> None:
        """Plate -> vmap (silently: still one batched pass) -> loop (with one warning that
        shows the broadcasting that works inside the particle plate)."""
        self._reasons.append(reason)
        self._checked[0] = False
        if self._mode[0] == "plate":
            self._mode[0] = "vmap"
            return
        self._mode[0] = "loop"
        name = getattr(self.model, "__name__", type(self.model).__name__)
        dim = -(self.max_plate_nesting + 1)
        shapes = ", ".join(
            f"{s.name}: {self._particle_shape(s.name, 'N', s.shape)}".replace("'N'", "N")
            for s in self.sites
        )
        warnings.warn(
            f"the Pyro model {name!r} does not vectorise over particles "
            f"({'; '.join(self._reasons)}). probinfer now calls it once per particle: "
            "correct, but about N times slower. Fix: write the model so that it broadcasts "
            "over extra leading batch dimensions. probinfer evaluates all particles at once "
            f"inside pyro.plate({_PARTICLE_PLATE!r}, N, dim={dim}), where the latents have "
            f"the shapes {shapes} (one axis of size 1 per plate level of the model, so "
            "beta.unsqueeze(-2) or X @ beta do not line up). Give every pyro.plate an "
            "explicit negative dim, index with ellipses (x[..., i]) and contract with "
            "broadcasting: (X * beta).sum(-1) has shape (N, n) for X (n, d) and beta "
            "(N, 1, d). Failing that, avoid data-dependent Python control flow and .item() "
            "so that torch.func.vmap can batch the model.",
            UserWarning,
            stacklevel=2,
        )

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

    # ---- gradients through torch autograd ---------------------------------------------
    def _torch_values(self, x: np.ndarray, with_grad: bool) -> tuple[np.ndarray, ...]:
        """Densities of numpy ``x (..., D)``: ``(log_prior, log_lik)`` each ``(...)``, and with
        ``with_grad`` their gradients ``(..., D)`` (one batched forward + backward pass per
        chunk of particles; particles are independent, so the gradient of the sum over
        particles is the per-particle gradient)."""
        import torch

        lead = x.shape[:-1]
        u_all = torch.from_numpy(np.array(x, copy=True).reshape(-1, self.dim))
        u_all = u_all.to(device=self.torch_device, dtype=self.torch_dtype)
        per = _GRAD_BYTES_PER_TERM * (self.num_observations + self.dim + 1)
        per *= u_all.element_size()
        chunk = chunk_size_for(per if with_grad else per // 8, self.memory_budget)
        parts = []
        for start in range(0, u_all.shape[0], chunk):
            u = u_all[start : start + chunk]
            if with_grad:
                with torch.enable_grad():
                    u = u.detach().requires_grad_(True)
                    lp, pointwise = self._terms(u)
                    ll = pointwise.sum(-1)
                    g_lp = _grad_of_sum(lp, u, retain_graph=True)
                    g_ll = _grad_of_sum(ll, u, retain_graph=False)
                parts.append((lp.detach(), ll.detach(), g_lp, g_ll))
            else:
                with torch.no_grad():
                    lp, pointwise = self._terms(u)
                parts.append((lp, pointwise.sum(-1)))
        out = []
        for k, pieces in enumerate(zip(*parts)):
            shape = lead if k < 2 else lead + (self.dim,)
            arr = torch.cat(pieces).detach().cpu().numpy().astype(x.dtype, copy=False)
            out.append(arr.reshape(shape))
        return tuple(out)

    def _callback(self, x, with_grad: bool) -> tuple[np.ndarray, ...]:
        """:meth:`_torch_values` behind a one-entry cache keyed by the bytes of ``x``.

        ``log_prior`` and ``log_likelihood`` at the same particles (as in a gradient
        kernel's step) then cost one torch pass between them, not two.
        """
        x = np.asarray(x)
        key = (x.shape, x.dtype.str, hashlib.blake2b(x.tobytes(), digest_size=16).digest())
        with self._cache_lock:
            hit = self._cache[0]
            if hit is not None and hit[0] == key and (len(hit[1]) == 4 or not with_grad):
                return hit[1]
            out = self._torch_values(x, with_grad)
            self._cache[0] = (key, out)
            return out

    def _traced_density(self, which: int):
        """``log_prior`` (``which=0``) or ``log_likelihood`` (1) for traced ``theta``: a
        ``jax.custom_vjp`` around ``jax.pure_callback`` (works under ``jit``, ``grad`` and
        ``vmap``; the callback takes any leading axes)."""

        def call(theta, with_grad: bool):
            shapes = [jax.ShapeDtypeStruct(theta.shape[:-1], theta.dtype)]
            if with_grad:
                shapes.append(jax.ShapeDtypeStruct(theta.shape, theta.dtype))

            def host(x):
                out = self._callback(x, with_grad)
                return (out[which], out[2 + which]) if with_grad else (out[which],)

            return jax.pure_callback(host, tuple(shapes), theta, vmap_method="expand_dims")

        @jax.custom_vjp
        def density(theta):
            return call(theta, False)[0]

        def fwd(theta):
            value, grad = call(theta, True)
            return value, grad

        def bwd(grad, cotangent):
            return (cotangent[..., None] * grad,)

        density.defvjp(fwd, bwd)
        return density

    # ---- Target interface ---------------------------------------------------------------
    def log_prior(self, theta) -> Array:
        theta = self._check_theta(theta)
        if isinstance(theta, jax.core.Tracer):
            return self._traced[0](theta)
        return self._prior_engine(theta)

    def log_likelihood(self, theta, pointwise: bool = False) -> Array:
        theta = self._check_theta(theta)
        if pointwise:
            return self._pointwise_engine(theta)
        if isinstance(theta, jax.core.Tracer):
            return self._traced[1](theta)
        return self._lik_engine(theta)

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
            out = None
            if not self._sample_loop[0]:  # one pass with the particle plate ...
                try:
                    out = draw(self._plated(num), num)
                except Exception:  # noqa: BLE001 - ... else one draw per particle
                    self._sample_loop[0] = True
            if out is None:
                torch.manual_seed(seed)  # same key, same draws, whichever pass failed before
                out = torch.cat([draw(self.model, 1) for _ in range(num)])
        return to_jax(out.to(self.torch_dtype))

    def dims(self) -> dict[str, list[str]]:
        """ArviZ dimension names of the latent and observed sites, after the vectorised
        ``pyro.plate`` they sit in (others ``{site}_dim_{i}``)."""
        return {k: list(v) for k, v in self._dims.items()}

    def observed_data(self) -> dict[str, np.ndarray]:
        """The observed values, ``{site: array}``, in the order of the pointwise terms."""
        return {k: v.copy() for k, v in self._observed_values.items()}

    def posterior_predictive(self, key: Array, samples: dict) -> dict[str, np.ndarray]:
        """Draws of the observed sites given posterior draws of the latents (Pyro's
        ``Predictive`` on ``poutine.uncondition(model)``: one vectorised pass where the
        densities were checked to broadcast over the particle plate, else one model call
        per draw),
        ``{observed site: (N, *shape)}``; ``samples`` as in ``result.samples``."""
        import pyro.poutine as poutine
        import torch
        from pyro.infer import Predictive

        missing = [n for n in self.latent_names if n not in samples]
        if missing:
            raise ValueError(f"samples lacks the latent sites {missing}")
        latents = {
            n: torch.as_tensor(np.array(samples[n]), dtype=self.torch_dtype)
            for n in self.latent_names
        }
        num = next(iter(latents.values())).shape[0]
        seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
        out = None
        # one vectorised pass where the densities were checked to broadcast right over the
        # particle plate; else one model call per draw
        vectorised = self._mode[0] == "plate" and self._checked[0]
        for parallel in (True, False) if vectorised else (False,):
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                torch.manual_seed(seed)
                predictive = Predictive(
                    poutine.uncondition(self.model),
                    posterior_samples=latents,
                    return_sites=list(self.observed_names),
                    parallel=parallel,
                )
                try:
                    out = predictive(*self.args, **self.kwargs)
                    shapes_ok = all(
                        out[n].numel() == num * self._observed_values[n].size
                        for n in self.observed_names
                    )
                except Exception:  # noqa: BLE001 - the model does not broadcast: per draw
                    shapes_ok = False
            if shapes_ok:
                break
        return {
            n: out[n].detach().cpu().numpy().reshape((num,) + self._observed_values[n].shape)
            for n in self.observed_names
        }

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


def _first_line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


def _grad_of_sum(y, u, retain_graph: bool):
    """``d sum(y) / d u`` (zeros where ``y`` does not depend on ``u``)."""
    import torch

    if not y.requires_grad:
        return torch.zeros_like(u)
    (g,) = torch.autograd.grad(y.sum(), u, retain_graph=retain_graph, allow_unused=True)
    return torch.zeros_like(u) if g is None else g


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

    Returns
    -------
    PyroTarget
        With ``has_gradients = True``: gradients through torch autograd (``jax.grad``,
        ``jax.jit``, ``jax.vmap``), for HMC and NUTS.

    Raises
    ------
    ValueError
        If the model has no observed or no latent site, a latent is discrete, or the data
        contain NaN/inf.

    Warns
    -----
    UserWarning
        Once, if the model does not vectorise over the particle plate (it raises there, or
        its values differ from a one-particle evaluation); it is then evaluated one
        particle at a time (correct, slower). The warning names the fix.
    """
    return PyroTarget(model, *args, dtype=dtype, device=device, **kwargs)
