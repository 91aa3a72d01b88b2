"""A trained Distribution Transformer: GMM prior + data -> GMM posterior, save/load.

:meth:`DistributionTransformer.posterior` takes a prior as a
:class:`probinfer.distributions.GaussianMixture` (batch shape ``()`` or ``(B,)``) and data as
numpy or JAX arrays, runs one batched forward pass and returns the posterior as a
``GaussianMixture`` (through DLPack), so everything that consumes the shared distributions
(ArviZ export, TARP/SBC, calibration) applies unchanged. Because the prior is an input, it can
be changed without retraining, and a posterior can be fed back as the next prior (sequential
inference, :func:`amortized.dt_sequential.dt_filter`).

Files of a saved model: ``{name}.safetensors`` (weights) and ``{name}.json``
(``{"format": "probinfer-dt", "version": 1, "model": DTConfig, "task": {...}, "training": {...}}``).
Pickle is never used.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from amortized.checks import finite_array
from amortized.dt_model import DTConfig, DTNetwork
from amortized.dt_tasks import InverseGammaVarianceTask, LinearGaussianTask
from amortized.model_files import SavedModel, load_weights
from amortized.pfn import _to_jax

__all__ = ["FORMAT", "DistributionTransformer", "gmm_prior", "task_from_dict"]

FORMAT = "probinfer-dt"
_TASKS = {c.__name__: c for c in (LinearGaussianTask, InverseGammaVarianceTask)}


def task_from_dict(d: dict):
    """Rebuild a task (:mod:`amortized.dt_tasks`) from its ``to_dict()``."""
    d = dict(d)
    cls = _TASKS.get(d.pop("class", None))
    if cls is None:
        raise ValueError(f"task class must be one of {sorted(_TASKS)}, got {d!r}")
    d.pop("family", None)
    return cls(**d)


def gmm_prior(weights, means, covariances):
    """A validated :class:`GaussianMixture` prior from explicit weights, means and covariances.

    Unlike the ``GaussianMixture`` constructor (which normalises), the weights must already sum
    to one: a prior whose weights do not is almost always a bug in the caller.

    Raises
    ------
    ValueError
        If ``weights`` do not sum to one (to 1e-5) or are negative, if ``covariances`` are not
        symmetric positive definite, or if the shapes disagree.
    """
    from probinfer.distributions import GaussianMixture

    w = np.asarray(weights, dtype=np.float64)
    if w.ndim < 1 or not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("weights must be a finite, non-negative array of shape batch + (K,)")
    if np.any(np.abs(w.sum(-1) - 1.0) > 1e-5):
        raise ValueError(f"weights must sum to one, got sums {w.sum(-1)}")
    return GaussianMixture(means, covariances, weights=weights)


class DistributionTransformer(SavedModel):
    """A trained Distribution Transformer with the task it was trained on.

    Parameters
    ----------
    network : DTNetwork
    task : LinearGaussianTask or InverseGammaVarianceTask or None
        The training task: its ranges (``n_range``, ``x_max``, ``scale_range``...) are exposed
        as attributes of this object and inputs outside them raise a warning naming the range.
    meta : dict, optional
        JSON-serialisable description of the training run, saved with the model.
    """

    FORMAT = FORMAT  # the module constant, read by SavedModel.save/load
    CONFIG = DTConfig

    def __init__(self, network: DTNetwork, task=None, meta: dict | None = None):
        if not isinstance(network, DTNetwork):
            raise TypeError(f"network must be a DTNetwork, got {type(network).__name__}")
        self.network = network
        self.task = task
        self.meta = dict(meta or {})

    def __getattr__(self, name: str):
        # the task's ranges (noise_std, n_range, x_max, scale_range, ...) as attributes
        task = self.__dict__.get("task")
        if task is not None and not name.startswith("_") and hasattr(task, name):
            return getattr(task, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def config(self) -> DTConfig:
        return self.network.config

    @property
    def prior_family(self) -> str | None:
        """The family of priors the model was trained on (from the task)."""
        return getattr(self.task, "family", None)

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    # ------------------------------------------------------------------ inputs
    def _prior_arrays(self, prior):
        from probinfer.distributions import GaussianMixture

        if isinstance(prior, tuple):
            prior = gmm_prior(*prior)
        if not isinstance(prior, GaussianMixture):
            raise TypeError(
                "prior must be a GaussianMixture or a (weights, means, covariances) tuple, got "
                f"{type(prior).__name__}"
            )
        d = self.config.param_dim
        if prior.event_shape != (d,):
            raise ValueError(
                f"prior has dimension {prior.event_shape[0]} but the model's param_dim is {d}"
            )
        if len(prior.batch_shape) > 1:
            raise ValueError(f"prior must have batch shape () or (B,), got {prior.batch_shape}")
        logits = np.array(prior.logits, dtype=np.float32)
        means = np.array(prior.means, dtype=np.float32)
        trils = np.array(prior.scale_trils, dtype=np.float32)
        single = prior.batch_shape == ()
        if single:
            logits, means, trils = logits[None], means[None], trils[None]
        if not (np.all(np.isfinite(means)) and np.all(np.isfinite(trils))):
            raise ValueError("prior means and covariances must be finite")
        # zero-weight components are padding (priors with different K in one batch)
        comp_mask = np.isfinite(logits)
        if not np.all(comp_mask.any(-1)):
            raise ValueError("prior weights must have at least one positive entry per problem")
        top = np.max(np.where(comp_mask, logits, -np.inf), axis=-1, keepdims=True)
        shifted = np.where(comp_mask, logits - top, -np.inf)
        log_norm = np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))
        logits = np.where(comp_mask, shifted - log_norm, 0.0).astype(np.float32)
        return logits, means, trils, comp_mask, single

    def _data(self, x, y, mask, b: int, single: bool):
        d_src = self.config.source_dims[0]
        yy = finite_array(y, "y")
        if single:
            yy = yy[None]
        if yy.ndim != 2:
            raise ValueError(
                f"y must have shape {'(n,)' if single else '(B, n)'}, got {np.shape(y)}"
            )
        if yy.shape[0] != b:
            raise ValueError(f"y has {yy.shape[0]} problems but the prior has batch size {b}")
        n = yy.shape[1]
        if x is None:
            tokens = yy[..., None]
        else:
            xx = finite_array(x, "x")
            if single:
                xx = xx[None]
            if xx.ndim != 3 or xx.shape[:2] != (b, n):
                raise ValueError(
                    f"x must have shape {'(n, p)' if single else '(B, n, p)'} matching y, "
                    f"got {np.shape(x)}"
                )
            tokens = np.concatenate([xx, yy[..., None]], axis=-1)
        if tokens.shape[-1] != d_src:
            raise ValueError(
                f"observation tokens (x, y) have {tokens.shape[-1]} entries but the model expects "
                f"{d_src}: x must have {d_src - 1} columns"
                + (" (or be None)" if d_src == 1 else "")
            )
        if mask is None:
            m = np.ones((b, n), dtype=bool)
        else:
            m = np.asarray(mask)
            if single:
                m = m[None]
            if m.shape != (b, n) or m.dtype != np.bool_:
                raise ValueError(
                    f"mask must be a boolean array shaped like y, got {np.shape(mask)}"
                )
        tokens = np.where(m[..., None], tokens, 0.0).astype(np.float32)
        return tokens, m

    def _warn_out_of_range(self, comp_mask, means, trils, tokens, mask) -> None:
        task = self.task
        if task is None:
            return
        msgs = []
        n = mask.sum(-1)
        lo, hi = task.n_range
        if n.min() < lo or n.max() > hi:
            msgs.append(
                f"number of observations n in [{n.min()}, {n.max()}] is outside the "
                f"training range n_range={task.n_range}"
            )
        if isinstance(task, LinearGaussianTask):
            x = np.abs(tokens[..., :-1])[mask]
            if x.size and x.max() > task.x_max * (1 + 1e-6):
                msgs.append(
                    f"|x| up to {x.max():.3g} is outside the training range x_max={task.x_max}"
                )
            k = comp_mask.sum(-1)
            if k.min() < task.components[0] or k.max() > task.components[1]:
                msgs.append(
                    f"prior has {k.min()}..{k.max()} components, outside the training range "
                    f"components={task.components}"
                )
            cov = trils.astype(np.float64) @ np.swapaxes(trils, -1, -2).astype(np.float64)
            scales = np.sqrt(np.diagonal(cov, axis1=-2, axis2=-1))  # (B, K, D)
            corr = np.abs(cov / (scales[..., :, None] * scales[..., None, :]))
            corr = np.max(np.where(np.eye(cov.shape[-1], dtype=bool), 0.0, corr), axis=(-2, -1))
            if corr[comp_mask].max() > task.max_corr * (1 + 1e-6):
                msgs.append(
                    f"prior component correlations up to |{corr[comp_mask].max():.3g}| are "
                    f"outside the training range max_corr={task.max_corr}"
                )
            scales = scales[comp_mask]
            slo, shi = task.scale_range
            if scales.min() < slo * 0.999 or scales.max() > shi * 1.001:
                msgs.append(
                    f"prior component scales in [{scales.min():.3g}, {scales.max():.3g}] "
                    f"are outside the training range scale_range={task.scale_range}"
                )
            mean_abs = np.abs(means[comp_mask]).max()
            if mean_abs > task.mean_max * (1 + 1e-6):
                msgs.append(
                    f"prior means up to |{mean_abs:.3g}| are outside the "
                    f"training range mean_max={task.mean_max}"
                )
        for msg in msgs:
            warnings.warn(msg, UserWarning, stacklevel=4)

    # ------------------------------------------------------------------ inference
    def posterior_arrays(self, prior, x=None, y=None, mask=None, batch_size: int = 4096):
        """Posterior parameters as torch tensors ``(logits, means, scale_trils)``.

        Same arguments as :meth:`posterior`; the leading batch axis is always present.
        """
        logits, means, trils, comp_mask, single = self._prior_arrays(prior)
        b = logits.shape[0]
        if y is None:
            raise ValueError("y must be given (use an array with n = 0 columns for no data)")
        tokens, m = self._data(x, y, mask, b, single)
        self._warn_out_of_range(comp_mask, means, trils, tokens, m)
        dev = self.device
        self.network.eval()
        outs = []
        for i in range(0, b, batch_size):
            sl = slice(i, i + batch_size)
            t = [torch.from_numpy(a[sl]).to(dev) for a in (logits, means, trils)]
            cm = torch.from_numpy(comp_mask[sl]).to(dev)
            src = [(torch.from_numpy(tokens[sl]).to(dev), torch.from_numpy(m[sl]).to(dev))]
            with torch.no_grad():
                outs.append(self.network(*t, cm, src))
        return tuple(torch.cat(parts, dim=0) for parts in zip(*outs)), single

    def posterior(self, prior, x=None, y=None, mask=None, batch_size: int = 4096):
        """Approximate posterior of the parameter given the prior and the data.

        Parameters
        ----------
        prior : GaussianMixture or (weights, means, covariances)
            Batch shape ``()`` for one problem or ``(B,)`` for ``B`` problems; event shape
            ``(param_dim,)``. For parameters with an output transform (``config.transforms``),
            the mixture is over the unconstrained coordinates (``log`` of a positive one).
            Components of weight zero are padding, so priors with different numbers of
            components can share one batch (their posterior components get weight zero).
        x : array (n, p) or (B, n, p), optional
            Inputs of the observations (``None`` for a task whose tokens are ``y`` alone).
        y : array (n,) or (B, n)
            Observations; ``n = 0`` returns the (learned) prior.
        mask : bool array shaped like ``y``, optional
            True for real observations (ragged ``n`` in one batch).

        Returns
        -------
        GaussianMixture
            Batch shape ``()`` or ``(B,)``, with ``components_per_prior * K`` components.
        """
        from probinfer.distributions import GaussianMixture

        (lg, mu, tril), single = self.posterior_arrays(prior, x, y, mask, batch_size)
        if single:
            lg, mu, tril = lg[0], mu[0], tril[0]
        return GaussianMixture(_to_jax(mu), scale_trils=_to_jax(tril), logits=_to_jax(lg))

    # ------------------------------------------------------------------ transforms
    def _log_dims(self) -> np.ndarray:
        return np.array([t == "log" for t in self.config.transforms], dtype=bool)

    def constrain(self, z):
        """Parameter values from unconstrained ones (``exp`` on "log" coordinates)."""
        z = np.asarray(z, dtype=np.float64)
        logd = self._log_dims()
        return np.where(logd, np.exp(z), z) if logd.size else z

    def constrained_log_prob(self, posterior, theta):
        """Log density of the parameter ``theta`` (constrained), with the log-Jacobian.

        ``log p(theta) = log q(z) - sum_{log dims} log theta`` where ``z = log theta`` on the
        "log" coordinates.
        """
        theta = np.asarray(theta, dtype=np.float64)
        logd = self._log_dims()
        if logd.size and np.any(theta[..., logd] <= 0):
            raise ValueError("theta must be positive on the coordinates with a 'log' transform")
        z = np.where(logd, np.log(np.where(logd, theta, 1.0)), theta) if logd.size else theta
        jac = (
            np.sum(np.where(logd, np.log(np.where(logd, theta, 1.0)), 0.0), -1)
            if logd.size
            else 0.0
        )
        return np.asarray(posterior.log_prob(z)) - jac

    # ------------------------------------------------------------------ persistence
    def _tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.network.state_dict().items()}

    def _header(self) -> dict:
        return {"task": self.task.to_dict() if self.task is not None else None}

    @classmethod
    def _from_files(cls, config, rest, tensors, w_file, device) -> DistributionTransformer:
        network = DTNetwork(config)
        load_weights(network, tensors, w_file, config)
        meta = {k: v for k, v in rest.items() if k != "task"}
        task = task_from_dict(rest["task"]) if rest.get("task") else None
        return cls(network.to(device).eval(), task, meta)
