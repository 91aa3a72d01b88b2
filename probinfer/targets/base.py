"""The target interface seen by inference algorithms."""

from __future__ import annotations

from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

__all__ = ["LatentSite", "Target"]


@dataclass(frozen=True)
class LatentSite:
    """A latent sample site: its constrained shape and its slice of the flat vector."""

    name: str
    shape: tuple[int, ...]  # constrained value shape
    unconstrained_shape: tuple[int, ...]
    offset: int  # start in the flat unconstrained vector

    @property
    def size(self) -> int:
        return int(np.prod(self.unconstrained_shape, dtype=np.int64))


@dataclass(frozen=True, eq=False)
class Target:
    """A model as inference sees it, over flat unconstrained parameters ``theta (N, D)``.

    Subclasses implement the batched densities; all are batched over a leading particle
    axis. ``log_prior`` includes the log-Jacobian of the map to the constrained space, so
    ``log_prior(theta) + log_likelihood(theta)`` is the log posterior density of
    ``theta`` up to the evidence.

    Attributes
    ----------
    sites
        The latent sites in flat-vector order.
    num_observations
        ``M``, the number of pointwise log-likelihood terms.
    backend
        ``"jax"`` (traceable: usable under ``jit`` and with gradients) or ``"torch"``.
    has_gradients
        Whether ``jax.grad`` of ``log_prior`` and ``log_likelihood`` works (also under
        ``jit``), so that gradient kernels (HMC, NUTS) can move the particles. True for
        NumPyro targets (JAX autodiff) and Pyro targets (torch autograd).
    traced_data
        Whether the target is a JAX pytree whose leaves are its data, so that compiled
        inference code takes the data as an argument and is shared by every target of the
        same model and data shapes (NumPyro targets whose model traces with abstract data);
        ``False``: the data are constants of code compiled for this target.
    has_pointwise
        Whether ``log_likelihood(theta, pointwise=True)`` is implemented. Results of a
        target without pointwise terms leave out the ArviZ ``log_likelihood`` group; a
        subclass that does not implement them sets this to ``False``.
    """

    sites: tuple[LatentSite, ...]
    num_observations: int
    backend: str = field(default="jax")
    has_gradients: bool = field(default=True)
    traced_data = False  # class default; see the docstring
    has_pointwise = True  # class default; see the docstring

    @property
    def dim(self) -> int:
        """``D``, the length of the flat unconstrained parameter vector."""
        return int(sum(s.size for s in self.sites))

    def log_prior(self, theta) -> Array:
        """Log prior density of unconstrained ``theta (N, D)`` (Jacobian included), ``(N,)``."""
        raise NotImplementedError

    def log_likelihood(self, theta, pointwise: bool = False) -> Array:
        """Log likelihood, ``(N,)``, or ``(N, M)`` per observation with ``pointwise=True``."""
        raise NotImplementedError

    def sample_prior(self, key: Array, num: int) -> Array:
        """``num`` draws from the prior, unconstrained, ``(num, D)``."""
        raise NotImplementedError

    def constrain(self, theta) -> dict[str, Array]:
        """Constrained site values ``{name: (N, *shape)}`` of unconstrained ``theta``."""
        raise NotImplementedError

    def dims(self) -> dict[str, list[str]]:
        """ArviZ dimension names per site (after the model's plates); ``{}``: ArviZ's
        defaults (``{site}_dim_{i}``)."""
        return {}

    def log_joint(self, theta) -> Array:
        """``log_prior + log_likelihood``, ``(N,)``."""
        return self.log_prior(theta) + self.log_likelihood(theta)

    # ---- helpers --------------------------------------------------------------------------
    def _set(self, **attrs) -> None:
        """Set attributes of the frozen target (construction only)."""
        for k, v in attrs.items():
            object.__setattr__(self, k, v)

    def _check_theta(self, theta) -> Array:
        theta = jnp.asarray(theta)
        if theta.ndim != 2 or theta.shape[1] != self.dim:
            raise ValueError(
                f"theta must have shape (num_particles, {self.dim}), got {theta.shape}"
            )
        return theta

    def unflatten(self, u) -> dict:
        """Split one flat unconstrained vector (or a batch, leading axes kept) into sites."""
        lead = u.shape[:-1]
        return {
            s.name: u[..., s.offset : s.offset + s.size].reshape(lead + s.unconstrained_shape)
            for s in self.sites
        }


def check_finite_data(name: str, value) -> None:
    """``ValueError`` if the observed site ``name`` holds NaN or inf. Data traced by an
    enclosing ``jit``/``vmap`` (a target built per problem inside a vmapped run) has no
    values to check here and is let through."""
    if isinstance(value, jax.core.Tracer):
        return
    arr = np.asarray(value)
    if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
        raise ValueError(f"observed site {name!r} contains NaN or inf values")
