"""Fixed-seed hypothesis fuzz of the public numeric entry points (issue 22, acceptance).

For any input (inf, NaN, huge, tiny, empty, negative, the wrong dtype or shape), each entry
point either returns a result that is finite and in range (indices in ``[0, N)``, ESS in
``[1, N]``, probabilities summing to one, intervals with ``lo <= hi``; the documented
degenerate results: ESS 0 and log mean weight ``-inf`` when every weight is zero, infinite
conformal intervals when the calibration set is too small) or raises ``ValueError``/
``TypeError`` whose message names the offending argument. Anything else (a NaN, an
out-of-range index, a raw library error) fails.

Each fuzz body counts its runs and its test asserts the count: together they run
``sum(EXAMPLES.values())`` = 5,500 examples (more than 20,000 calls). The profile is
derandomised (the same examples every run, no database) so CI is deterministic; inputs are
short arrays, which the bucketing of the entry points maps onto a few compiled programs.
"""

from __future__ import annotations

import functools
from collections import Counter

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from calibration import ConformalizedQuantileRegressor, SplitConformalRegressor
from calibration.cqr import cqr_scores
from calibration.split import absolute_residual_scores, normalized_residual_scores
from probinfer import Particles
from probinfer import weights as pw
from probinfer.resampling import SCHEMES, offspring_counts, resample

#: examples per fuzz test (their sum is the count reported for the issue)
EXAMPLES = {"weights": 1500, "resample": 1000, "particles": 1000, "split": 1000, "cqr": 1000}
RUNS: Counter = Counter()
KEY = jax.random.key(0)


def fuzz(name: str, *strategies):
    """``@settings(...) @given(*strategies)`` around ``body``, counting its runs as ``name``."""

    def decorate(body):
        @functools.wraps(body)
        def counted(*args, **kwargs):
            RUNS[name] += 1
            return body(*args, **kwargs)

        return settings(
            max_examples=EXAMPLES[name],
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )(given(*strategies)(counted))

    return decorate


def run_counted(name: str, fuzz_body) -> None:
    RUNS[name] = 0
    fuzz_body()
    assert RUNS[name] >= EXAMPLES[name], (name, RUNS[name])


# ----------------------------------------------------------------------------- strategies

SPECIAL = [0.0, -0.0, 1.0, -1.0, 1e39, -1e39, 3.5e38, -3.5e38, 1.7e308, -1.7e308, 5e-324,
           1e-45, -800.0, -120.0, np.inf, -np.inf, np.nan]  # fmt: skip
reals = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.floats(-50.0, 50.0),
    st.sampled_from(SPECIAL),
)
DTYPES = ["float64", "float32", "float16", "int32", "int64", "bool", "complex128", "str", "list"]


@st.composite
def arrays(draw, min_size=0, max_size=8, shapes=("1d",), dtypes=DTYPES, zeros=True, elements=reals):
    """Short arrays of edge-case reals in many dtypes and containers (numpy, JAX, lists);
    with ``zeros``, often many ``-inf`` (zero weights), sometimes all."""
    n = draw(st.integers(min_size, max_size))
    values = np.array(draw(st.lists(elements, min_size=n, max_size=n)), dtype=np.float64)
    if zeros and n and draw(st.booleans()):
        values[draw(st.lists(st.integers(0, n - 1), max_size=n))] = -np.inf
    shape = draw(st.sampled_from(shapes))
    if shape == "0d":
        values = values[:1].reshape(()) if n else np.float64(0.0)
    elif shape == "2d":
        values = np.stack([values, values[::-1]], axis=1)
    dtype = draw(st.sampled_from(dtypes))
    with np.errstate(over="ignore", invalid="ignore"):
        if dtype == "list":
            return values.tolist()
        if dtype == "str":
            return values.astype(str)
        if dtype in ("int32", "int64", "bool"):
            return np.nan_to_num(np.clip(values, -1e6, 1e6)).astype(dtype)
        out = values.astype(dtype)
        if dtype in ("float32", "float64") and draw(st.booleans()):
            return jax.device_put(out.astype(np.float32))  # a JAX array
    return out


def fails_naming(exc: Exception, *names: str) -> None:
    """A documented failure: ``ValueError``/``TypeError`` naming one of ``names``."""
    assert isinstance(exc, ValueError | TypeError), repr(exc)
    assert any(name in str(exc) for name in names), (names, str(exc))


def host(x) -> np.ndarray:
    return np.asarray(x)


def zero_weight(x) -> np.ndarray | None:
    """Particles whose weight is exactly zero in float32 after the shift by the maximum
    (``None`` when the input is not valid real log weights)."""
    try:
        a = np.asarray(x)
    except (TypeError, ValueError):
        return None
    if a.dtype.kind not in "biuf":
        return None
    a = a.astype(np.float64)
    if a.ndim != 1 or a.size == 0 or np.isnan(a).any() or (a == np.inf).any():
        return None
    if np.all(a == -np.inf):
        return np.ones(a.shape, bool)
    with np.errstate(over="ignore"):
        return a - a.max() < -110.0  # exp underflows to 0 in float32 below about -104


# ----------------------------------------------------------------------------- weights

thresholds = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.5, 1.0, "0.5", None])
)


@fuzz("weights", arrays(shapes=("1d", "1d", "1d", "0d", "2d")), thresholds)
def fuzz_weights(lw, threshold):
    names = ("log_weights",)
    for fn in (pw.ess, pw.log_mean_weight, pw.normalize, pw.log_normalize, pw.check_log_weights):
        try:
            out = host(fn(lw))
        except Exception as exc:  # noqa: BLE001 - the property is about which exceptions
            fails_naming(exc, *names)
            continue
        a = np.asarray(lw, dtype=np.float64)
        n = a.shape[0]
        dead = np.all(a == -np.inf, axis=0)
        assert not np.isnan(out).any(), (fn.__name__, lw, out)
        if fn is pw.ess:
            assert np.all(np.where(dead, out == 0, (out >= 1) & (out <= n))), (lw, out)
        elif fn is pw.log_mean_weight:
            assert np.all(np.where(dead, out == -np.inf, np.isfinite(out))), (lw, out)
        elif fn is pw.normalize:
            assert np.all((out >= 0) & (out <= 1)), (lw, out)
            np.testing.assert_allclose(out.sum(axis=0), 1.0, rtol=1e-5)
        elif fn is pw.log_normalize:
            assert not (out == np.inf).any(), (lw, out)
            np.testing.assert_allclose(np.exp(out.astype(np.float64)).sum(axis=0), 1.0, rtol=1e-5)
        else:
            assert out.shape == (n,) and not (out == np.inf).any()
    try:
        out = host(pw.should_resample(lw, threshold))
    except Exception as exc:  # noqa: BLE001
        fails_naming(exc, "log_weights", "threshold")
    else:
        assert out.dtype == bool


def test_fuzz_weights():
    run_counted("weights", fuzz_weights)


# ----------------------------------------------------------------------------- resampling

nums = st.one_of(st.none(), st.integers(-2, 20), st.sampled_from([True, 3.0, "3"]))


@fuzz("resample", arrays(shapes=("1d", "1d", "1d", "0d", "2d")), nums, st.integers(0, 2**31 - 1))
def fuzz_resample(lw, num, seed):
    key = jax.random.fold_in(KEY, seed)
    zero = zero_weight(lw)
    for scheme in SCHEMES:
        try:
            idx = host(resample(key, lw, num=num, scheme=scheme))
        except Exception as exc:  # noqa: BLE001
            fails_naming(exc, "log_weights", "num")
            continue
        n = np.shape(lw)[0]
        assert idx.shape == ((n if num is None else num),) and idx.dtype.kind == "i"
        assert np.all((idx >= 0) & (idx < n)), (lw, idx, scheme)
        assert not zero[idx].any(), ("zero-weight particle drawn", lw, idx, scheme)
    try:
        counts = host(offspring_counts(key, lw, num=num))
    except Exception as exc:  # noqa: BLE001
        fails_naming(exc, "log_weights", "num")
    else:
        assert counts.sum() == (np.shape(lw)[0] if num is None else num) and counts.min() >= 0


def test_fuzz_resample():
    run_counted("resample", fuzz_resample)


# ----------------------------------------------------------------------------- particles


@fuzz(
    "particles",
    arrays(min_size=1, shapes=("1d", "1d", "0d"), dtypes=["float64", "float32", "list", "int64"]),
    arrays(min_size=1, dtypes=["float64", "float32", "int64", "bool", "complex128", "str"]),
    nums,
    st.lists(st.integers(-10, 10), max_size=4),
    st.sampled_from(SCHEMES),
)
def fuzz_particles(lw, values, num, indices, scheme):
    names = ("log_weights", "values", "indices", "num", "particles")
    try:
        p = Particles(values, lw)
    except Exception as exc:  # noqa: BLE001
        fails_naming(exc, *names)
        return
    n = p.num_particles
    a = np.asarray(p.log_weights, dtype=np.float64)
    zero = zero_weight(a)
    real = np.asarray(values).dtype.kind in "biuf"
    calls = {
        "ess": lambda: p.ess,
        "log_mean_weight": lambda: p.log_mean_weight,
        "normalized_weights": lambda: p.normalized_weights,
        "expectation": lambda: p.expectation(),
        "expectation_f": lambda: p.expectation(lambda v: np.abs(np.asarray(v)) if real else v),
        "resample": lambda: p.resample(KEY, scheme=scheme, num=num),
        "take": lambda: p.take(np.asarray(indices, dtype=np.int64)),
    }
    for what, call in calls.items():
        try:
            out = call()
        except Exception as exc:  # noqa: BLE001
            fails_naming(exc, *names, "f(values)")
            continue
        if what == "resample":
            assert out.num_particles == (n if num is None else num)
            assert not np.any(host(out.log_weights))
            picked, live = np.asarray(out.values), np.asarray(values)[~zero]
            assert np.all(np.isin(picked, live) | (picked != picked)), (values, picked)
        elif what == "take":
            assert out.num_particles == len(indices)
        elif what.startswith("expectation"):
            out, v = host(out), np.asarray(values, dtype=np.float64)
            assert not np.isnan(out).any(), (lw, values, out)
            live = v[np.exp(a - a.max()) > 0]  # the particles of positive weight
            if what == "expectation" and np.isfinite(live).all():
                with np.errstate(over="ignore"):  # up to the output's rounding
                    assert live.min().astype(out.dtype) <= out <= live.max().astype(out.dtype)
        else:
            out = host(out)
            assert not np.isnan(out).any(), (what, lw, out)
            if what == "ess":
                assert out == 0 if zero.all() else 1 <= out <= n


def test_fuzz_particles():
    run_counted("particles", fuzz_particles)


# ----------------------------------------------------------------------------- calibration

alphas = st.one_of(
    st.sampled_from([0.1, 0.2, 0.5, 0.9, 0.1, 0.2, 0.5, 0.9, np.nan, 0.0, 1.0, -1.0, "a"]),
    st.floats(0.0, 1.0),
)
CAL_DTYPES = ["float64", "float64", "float64", "float32", "int64", "list", "str"]
VALID_DTYPES = ["float64", "float64", "int64", "list"]  # float32 would overflow 1e300
#: valid but extreme: finite values of any magnitude, and moderate ones
valid_reals = st.one_of(
    st.floats(-1e3, 1e3),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(SPECIAL[:12]),
)


@st.composite
def cal_inputs(draw, num_cal: int, num_test: int) -> list:
    """``num_cal`` calibration arrays of one length, then ``num_test`` test arrays of another.

    Half the examples are valid (real dtypes, equal lengths, finite values of any magnitude),
    so that they reach ``predict_interval``; the other half mix in edge cases: NaN, inf,
    strings, empty arrays, lengths one too long.
    """
    valid = draw(st.booleans())
    lengths = [draw(st.integers(1 if valid else 0, 8))] * num_cal
    lengths += [draw(st.integers(1 if valid else 0, 4))] * num_test
    out = []
    for k in lengths:
        if valid:
            out.append(draw(arrays(k, k, dtypes=VALID_DTYPES, zeros=False, elements=valid_reals)))
        else:
            k += draw(st.integers(0, 9)) == 0
            out.append(draw(arrays(k, k, dtypes=CAL_DTYPES, zeros=False)))
    return out


def magnitude(*xs) -> float:
    return max(float(np.max(np.abs(np.asarray(x, dtype=np.float64)), initial=0.0)) for x in xs)


def check_interval(band, extent: float) -> None:
    """No NaN, ``lo <= hi``, and finite bounds unless ``extent`` (``|mu| + q sigma`` or
    ``|quantile| + q``, ``inf`` when ``q`` is) overflows float64."""
    RUNS["intervals"] += 1  # examples that got this far (the tests check there are many)
    band = host(band)
    assert band.ndim == 2 and band.shape[1] == 2
    assert not np.isnan(band).any(), band
    assert np.all(band[:, 0] <= band[:, 1]), band
    if extent < 1e300:
        assert np.isfinite(band).all(), (band, extent)


@fuzz("split", cal_inputs(3, 2), alphas, st.booleans())
def fuzz_split(inputs, alpha, normalized):
    y, y_pred, scale, y_pred_test, scale_test = inputs
    names = ("y", "y_pred", "scale", "alpha")
    for fn, args in ((absolute_residual_scores, (y, y_pred)),
                     (normalized_residual_scores, (y, y_pred, scale))):  # fmt: skip
        try:
            s = host(fn(*args))
        except Exception as exc:  # noqa: BLE001
            fails_naming(exc, *names)
        else:
            assert not np.isnan(s).any() and np.all(s >= 0), (args, s)
    score = "normalized" if normalized else "absolute"
    est = SplitConformalRegressor(alpha=alpha, conformity_score=score)
    kw = {"scale": scale} if normalized else {}
    kw_test = {"scale": scale_test} if normalized else {}
    try:
        est.calibrate(y=y, y_pred=y_pred, **kw)
        band = est.predict_interval(y_pred=y_pred_test, **kw_test)
    except Exception as exc:  # noqa: BLE001
        fails_naming(exc, *names)
        return
    q_sigma = abs(est.quantile_) * (magnitude(scale_test) if normalized else 1.0)
    check_interval(band, magnitude(y_pred_test) + q_sigma)


def test_fuzz_split_conformal():
    RUNS["intervals"] = 0
    run_counted("split", fuzz_split)
    assert RUNS["intervals"] >= EXAMPLES["split"] // 5  # most valid examples reach the end


@fuzz("cqr", cal_inputs(3, 2), alphas)
def fuzz_cqr(inputs, alpha):
    y, lower, upper, lower_test, upper_test = inputs
    names = ("y", "lower", "upper", "alpha")
    try:
        s = host(cqr_scores(y, lower, upper))
    except Exception as exc:  # noqa: BLE001
        fails_naming(exc, *names)
    else:
        assert not np.isnan(s).any(), s
    est = ConformalizedQuantileRegressor(alpha=alpha)
    try:
        est.calibrate(y=y, lower=lower, upper=upper)
        band = est.predict_interval(lower=lower_test, upper=upper_test)
    except Exception as exc:  # noqa: BLE001
        fails_naming(exc, *names)
        return
    check_interval(band, magnitude(lower_test, upper_test) + abs(est.quantile_))


def test_fuzz_cqr():
    RUNS["intervals"] = 0
    run_counted("cqr", fuzz_cqr)
    assert RUNS["intervals"] >= EXAMPLES["cqr"] // 5


@pytest.mark.parametrize("scheme", SCHEMES)
def test_listed_reproductions(scheme):
    """The issue's reproductions, as the fuzz would meet them."""
    np.testing.assert_array_equal(resample(KEY, np.array([1e39, 0.0]), scheme=scheme), [0, 0])
