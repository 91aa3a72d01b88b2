"""The batched likelihood engine: chunking, bucketing, backends, DLPack."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from probinfer.engine import (
    LikelihoodEngine,
    bucket_size,
    chunk_size_for,
    map_in_chunks,
    to_jax,
    to_torch,
)

DATA = jnp.linspace(-2.0, 2.0, 50)


def pointwise(theta):  # one particle (mu, log sigma) -> (M,) Gaussian log densities
    mu, log_s = theta[0], theta[1]
    return -0.5 * ((DATA - mu) / jnp.exp(log_s)) ** 2 - log_s - 0.5 * jnp.log(2 * jnp.pi)


def test_bucket_and_chunk_sizes():
    assert bucket_size(1) == 64 and bucket_size(65) == 128 and bucket_size(1000) == 1024
    assert bucket_size(1000, chunk=256) == 1024 and bucket_size(1100, chunk=256) == 1280
    assert chunk_size_for(1000, 10_000) == 8 and chunk_size_for(10**9, 1) == 1
    with pytest.raises(ValueError, match="n must be a positive integer"):
        bucket_size(0)


def test_chunked_padded_evaluation_matches_direct_and_reuses_shapes():
    theta = jax.random.normal(jax.random.key(0), (300, 2))
    direct = jax.vmap(pointwise)(theta)
    eng = LikelihoodEngine(pointwise, memory_budget=64 * 1024, bytes_per_particle=1024)
    np.testing.assert_allclose(eng(theta), direct, rtol=1e-5, atol=1e-6)
    assert eng.chunk_size(theta) == 64
    eng(theta[:77])
    eng(theta[:5])
    assert eng.num_compiled_shapes == {64}  # one compiled batch shape for every N
    big = LikelihoodEngine(pointwise)
    np.testing.assert_allclose(big(theta[:77]), direct[:77], rtol=1e-5, atol=1e-6)
    assert big.num_compiled_shapes == {128}


def test_traced_path_uses_lax_map_and_is_differentiable():
    theta = jax.random.normal(jax.random.key(1), (200, 2))
    eng = LikelihoodEngine(
        lambda t: jnp.sum(pointwise(t)), memory_budget=32 * 1024, bytes_per_particle=1024
    )
    out = jax.jit(eng)(theta)
    np.testing.assert_allclose(out, jax.vmap(pointwise)(theta).sum(1), rtol=1e-5)
    g = jax.grad(lambda th: jnp.sum(eng(th)))(theta)
    g_ref = jax.grad(lambda th: jnp.sum(jax.vmap(pointwise)(th)))(theta)
    np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-4)


def test_torch_backend_and_dlpack():
    torch = pytest.importorskip("torch")
    data = torch.linspace(-2.0, 2.0, 50)

    def torch_fn(t):  # batched (n, 2) -> (n, 50)
        mu, log_s = t[:, :1], t[:, 1:]
        return -0.5 * ((data - mu) / log_s.exp()) ** 2 - log_s - 0.5 * np.log(2 * np.pi)

    theta = jax.random.normal(jax.random.key(2), (130, 2))
    eng = LikelihoodEngine(
        torch_fn, backend="torch", memory_budget=16 * 1024, bytes_per_particle=1024
    )
    np.testing.assert_allclose(eng(theta), jax.vmap(pointwise)(theta), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jax.jit(eng)(theta), eng(theta), rtol=1e-5, atol=1e-6)
    x = jnp.arange(6.0).reshape(2, 3)
    t = to_torch(x)
    assert t.shape == (2, 3) and torch.equal(t, torch.arange(6.0).reshape(2, 3))
    back = to_jax(torch.arange(4.0))
    np.testing.assert_array_equal(back, np.arange(4.0))


def test_bucket_sizes_four_per_octave_bound_padding():
    sizes = {bucket_size(n, 16, per_octave=4) for n in range(2, 100_001)}
    assert len(sizes) <= 4 * 17
    for n in range(2, 5000):
        b = bucket_size(n, 16, per_octave=4)
        assert n <= b <= max(16, 1.25 * n + 1)
    with pytest.raises(ValueError, match="per_octave"):
        bucket_size(10, per_octave=3)


def test_map_in_chunks_matches_one_call_and_is_traceable():
    x = {"a": jnp.arange(10.0), "b": jnp.ones((10, 2))}

    def f(v):
        return v["a"] * 2 + v["b"].sum(1)

    np.testing.assert_allclose(map_in_chunks(f, x, 3), f(x))
    np.testing.assert_allclose(jax.jit(lambda v: map_in_chunks(f, v, 4))(x), f(x))


def test_bad_input():
    with pytest.raises(TypeError, match="fn"):
        LikelihoodEngine(3)
    with pytest.raises(ValueError, match="backend"):
        LikelihoodEngine(pointwise, backend="tf")
    with pytest.raises(ValueError, match="memory_budget"):
        LikelihoodEngine(pointwise, memory_budget=0)
    with pytest.raises(ValueError, match="leading particle axis"):
        LikelihoodEngine(pointwise)(jnp.float32(1.0))


def _gauss_loglik(data, theta_i):
    """log N(data | theta_i, 1) summed, for one particle (a module-level fn: shared jit)."""
    return -0.5 * jnp.sum((data - theta_i) ** 2) - 0.5 * data.size * jnp.log(2 * jnp.pi)


def test_engines_with_args_share_one_compiled_function():
    """``args`` are arguments of the compiled function: two engines of the same ``fn`` on
    data of the same shape compile once, and each evaluates its own data exactly."""
    from scipy.stats import norm

    rng = np.random.default_rng(0)
    theta = rng.normal(size=(5, 1)).astype(np.float32)
    before = None
    for seed in (1, 2):
        data = np.random.default_rng(seed).normal(size=7).astype(np.float32)
        engine = LikelihoodEngine(_gauss_loglik, args=(data,), min_bucket=8)
        got = np.asarray(engine(theta))
        want = norm.logpdf(data[None, :], loc=theta).sum(1)
        np.testing.assert_allclose(got, want, rtol=1e-5)
        size = engine._jitted.func._cache_size()
        before = size if before is None else before
    assert size == before == 1
    with pytest.raises(ValueError, match="args"):
        LikelihoodEngine(lambda t: t, backend="torch", args=(1,))
