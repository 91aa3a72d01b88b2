"""Split conformal regression / LAC / APS classification vs MAPIE 1.6, and batch PI timing.

Same prefit scikit-learn models and the same arrays for both libraries, in one
process.  Checks identical outputs and reports wall-time ratios (ours / MAPIE,
best of 5 interleaved runs each).  Run: ``python benchmarks/conformal_vs_mapie.py``.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import mapie
import numpy as np
from _common import paired_ratio
from mapie.classification import SplitConformalClassifier as MapieClassifier
from mapie.regression import SplitConformalRegressor as MapieRegressor
from sklearn.linear_model import LinearRegression, LogisticRegression

import calibration
from calibration import (
    SplitConformalClassifier,
    SplitConformalRegressor,
    batch_mean_bound,
    bonferroni_mean_bound,
    split_batches_mean_bound,
)

ALPHA = 0.1


def best_of_interleaved(ours, theirs, repeats=5):
    """Best wall time of each, alternating the two so machine load hits both alike, and the
    spread of the per-round ratio ours / theirs (:func:`_common.paired_ratio`)."""
    t_o, t_t, a, b = [], [], None, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        a = ours()
        t_o.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        b = theirs()
        t_t.append(time.perf_counter() - t0)
    return min(t_o), min(t_t), a, b, paired_ratio(t_o, t_t)


def regression(rng):
    n_train, n_cal, n_test, d = 10_000, 100_000, 1_000_000, 5
    X = rng.normal(size=(n_train + n_cal + n_test, d))
    y = X @ rng.normal(size=d) + rng.standard_t(4, size=len(X))
    model = LinearRegression().fit(X[:n_train], y[:n_train])
    Xc, yc = X[n_train : n_train + n_cal], y[n_train : n_train + n_cal]
    Xt = X[n_train + n_cal :]

    def ours():
        return SplitConformalRegressor(model, alpha=ALPHA).calibrate(Xc, yc).predict_interval(Xt)

    def theirs():
        m = MapieRegressor(model, confidence_level=1 - ALPHA, prefit=True).conformalize(Xc, yc)
        return m.predict_interval(Xt)[1][:, :, 0]

    t_ours, t_mapie, a, b, per_round = best_of_interleaved(ours, theirs)
    return dict(
        task="split regression (absolute)",
        n_cal=n_cal,
        n_test=n_test,
        identical=bool(np.array_equal(a, b)),
        ours_s=t_ours,
        mapie_s=t_mapie,
        ratio=t_ours / t_mapie,
        ratio_per_round=per_round,
    )


def classification(rng, score):
    k, n_train, n_cal, n_test, d = 10, 20_000, 20_000, 200_000, 20
    centers = rng.normal(size=(k, d))
    y = rng.integers(0, k, size=n_train + n_cal + n_test)
    X = centers[y] + 2.0 * rng.normal(size=(len(y), d))
    model = LogisticRegression(max_iter=300).fit(X[:n_train], y[:n_train])
    Xc, yc = X[n_train : n_train + n_cal], y[n_train : n_train + n_cal]
    Xt = X[n_train + n_cal :]
    seed = 0

    def ours():
        if score == "lac":
            clf = SplitConformalClassifier(model, alpha=ALPHA, conformity_score="lac")
            clf = clf.calibrate(Xc, yc)
        else:
            # MAPIE's APS: randomised calibration scores, sets that include the last label
            u = np.random.RandomState(seed).uniform(size=n_cal)
            clf = SplitConformalClassifier(
                model, alpha=ALPHA, conformity_score="aps", randomized=True, include_last_label=True
            ).calibrate(Xc, yc, u=u)
        return clf.predict_set(Xt)

    def theirs():
        m = MapieClassifier(
            model,
            confidence_level=1 - ALPHA,
            conformity_score=score,
            prefit=True,
            random_state=seed,
        ).conformalize(Xc, yc)
        return m.predict_set(Xt)[1][:, :, 0]

    t_ours, t_mapie, a, b, per_round = best_of_interleaved(ours, theirs)
    return dict(
        task=f"classification {score.upper()} (K=10)",
        n_cal=n_cal,
        n_test=n_test,
        identical=bool(np.array_equal(a, b)),
        mismatched_entries=int((a != b).sum()),
        ours_s=t_ours,
        mapie_s=t_mapie,
        ratio=t_ours / t_mapie,
        ratio_per_round=per_round,
    )


def batch(rng):
    n, m = 1000, 50
    s = rng.beta(2, 5, size=n)
    from calibration.batch import _rank_sum_quantile

    _rank_sum_quantile.cache_clear()
    t0 = time.perf_counter()
    bound = batch_mean_bound(s, m, ALPHA, upper_bound=1.0)
    t = time.perf_counter() - t0
    return dict(
        task="batch PI, mean, n=1000, m=50 (incl. exact law)",
        seconds=t,
        bound=bound,
        bonferroni=bonferroni_mean_bound(s, m, ALPHA, upper_bound=1.0),
        split_batches=split_batches_mean_bound(s, m, ALPHA),
    )


def main():
    rng = np.random.default_rng(0)
    rows = [regression(rng), classification(rng, "lac"), classification(rng, "aps")]
    b = batch(rng)
    print(f"{'task':40s} {'identical':>9s} {'ours s':>8s} {'MAPIE s':>8s} {'ratio':>6s}")
    for r in rows:
        print(
            f"{r['task']:40s} {r['identical']!s:>9s} {r['ours_s']:8.3f} {r['mapie_s']:8.3f} "
            f"{r['ratio']:6.2f} (per round {r['ratio_per_round']['min']:.2f}-"
            f"{r['ratio_per_round']['max']:.2f})"
        )
    print(
        f"{b['task']}: {b['seconds']:.3f} s; bound {b['bound']:.4f} "
        f"(Bonferroni {b['bonferroni']:.4f}, batch splitting {b['split_batches']:.4f})"
    )
    out = dict(
        mapie_version=mapie.__version__,
        numpy=np.__version__,
        calibration=getattr(calibration, "__version__", "dev"),
        machine=platform.platform(),
        comparisons=rows,
        batch=b,
    )
    path = Path(__file__).parent / "results" / "conformal_vs_mapie.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
