"""Distribution Transformer: change the prior without retraining, and track a state sequentially.

The shipped model ``dt-linear-2d`` maps ANY Gaussian-mixture prior (1-4 components) on theta in
R^2 and data from ``y_i = x_i^T theta + N(0, 0.5^2)`` to the Gaussian-mixture posterior in one
forward pass. Part 1 gives it the same data under two different priors and compares with the
exact posterior; part 2 uses it as the update step of a filter on a linear-Gaussian
state-space model (the posterior becomes the next prior after an exact predict step) and plots
it against the Kalman filter.

    python examples/distribution_transformer.py [--plot out/dt_tracking.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--plot", default="out/dt_tracking.png")
    p.add_argument("--num-steps", type=int, default=20)
    args = p.parse_args(argv)

    import amortized
    from amortized.dt_evaluate import sequential_ssm
    from probinfer.distributions import GaussianMixture
    from probinfer.lgssm import kalman_filter

    dt = amortized.load_pretrained("dt-linear-2d")
    print(
        f"dt-linear-2d: prior family {dt.prior_family!r}, noise_std={dt.noise_std}, "
        f"n_range={dt.n_range}, x_max={dt.x_max}, components={dt.components}, "
        f"scale_range={dt.scale_range}, mean_max={dt.mean_max}"
    )

    # ------------------------------------------------ 1. same data, two priors, no retraining
    rng = np.random.default_rng(0)
    theta_true = np.array([1.0, -0.5])
    x = rng.uniform(-2, 2, size=(6, 2))
    y = x @ theta_true + dt.noise_std * rng.standard_normal(6)
    priors = {
        "broad unimodal": ([1.0], [[0.0, 0.0]], [np.eye(2) * 1.5**2]),
        "bimodal": (
            [0.5, 0.5],
            [[-1.5, 1.0], [1.5, -1.0]],
            [np.diag([0.4, 0.4]) ** 2 * 4, np.array([[0.5, 0.2], [0.2, 0.5]])],
        ),
    }
    for name, (w, mu, cov) in priors.items():
        w, mu, cov = np.asarray(w), np.asarray(mu), np.asarray(cov)
        post = dt.posterior(amortized.gmm_prior(w, mu, cov), x, y)
        ew, emu, ecov = amortized.linear_gaussian_posterior(w, mu, cov, x, y, dt.noise_std)
        exact = GaussianMixture(emu, ecov, weights=ew)
        draws = exact.sample(jax.random.key(1), (10_000,))
        kl, kl_se = amortized.kl_monte_carlo(exact.log_prob(draws), post.log_prob(draws))
        print(f"\nprior {name!r}: KL(exact || DT) = {kl:.4f} +- {kl_se:.4f} nats")
        for k in range(len(w)):
            print(
                f"  component {k}: weight DT {float(post.weights[k]):.3f} exact {ew[k]:.3f}; "
                f"mean DT {np.round(np.asarray(post.means[k]), 3)} exact {np.round(emu[k], 3)}"
            )

    # ------------------------------------------------ 2. sequential tracking vs the Kalman filter
    ssm = sequential_ssm()
    xs, ys = ssm.simulate(jax.random.key(3), args.num_steps)
    xs, ys = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    kf = kalman_filter(ssm, ys)
    prior = GaussianMixture(np.asarray(ssm.m0)[None], np.asarray(ssm.P0)[None], weights=[1.0])
    filt = amortized.dt_filter(dt, prior, ssm, ys)
    dt_mean = np.stack([np.asarray(f.mean) for f in filt])
    dt_sd = np.stack([np.sqrt(np.asarray(f.variance)) for f in filt])
    kf_mean = np.asarray(kf.means)
    kf_sd = np.sqrt(np.diagonal(np.asarray(kf.covariances), axis1=-2, axis2=-1))
    r = xs[-1] - kf_mean[-1]
    kf_nll = 0.5 * (
        r @ np.linalg.solve(kf.covariances[-1], r)
        + np.linalg.slogdet(2 * np.pi * np.asarray(kf.covariances[-1]))[1]
    )
    dt_nll = -float(filt[-1].log_prob(xs[-1]))
    print(
        f"\nafter {args.num_steps} updates: NLL of the true state, DT {dt_nll:.3f} vs Kalman "
        f"{kf_nll:.3f}; max |mean difference| {np.abs(dt_mean - kf_mean).max():.3f}"
    )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.arange(1, args.num_steps + 1)
    fig, axes = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    for j, ax in enumerate(axes):
        ax.plot(t, xs[:, j], "k.", label="true state")
        ax.plot(t, kf_mean[:, j], "C0-", label="Kalman filter")
        ax.fill_between(
            t,
            kf_mean[:, j] - 2 * kf_sd[:, j],
            kf_mean[:, j] + 2 * kf_sd[:, j],
            color="C0",
            alpha=0.2,
        )
        ax.plot(t, dt_mean[:, j], "C3--", label="DT filter")
        ax.plot(t, dt_mean[:, j] - 2 * dt_sd[:, j], "C3:", lw=1)
        ax.plot(t, dt_mean[:, j] + 2 * dt_sd[:, j], "C3:", lw=1)
        ax.set_ylabel(f"x[{j}]")
    axes[0].legend(loc="upper right", fontsize=8)
    axes[0].set_title("Distribution Transformer updates vs the Kalman filter (mean +- 2 sd)")
    axes[1].set_xlabel("time step")
    Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.plot, dpi=120, bbox_inches="tight")
    print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
