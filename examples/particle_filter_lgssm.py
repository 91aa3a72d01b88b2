"""Bootstrap and guided particle filters on a linear-Gaussian SSM, against the Kalman filter.

python examples/particle_filter_lgssm.py [--num-particles 5000] [--plot out/pf_lgssm.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import numpy as np

from probinfer.lgssm import LinearGaussianSSM, kalman_filter
from probinfer.smc import particle_filter


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-particles", type=int, default=5000)
    p.add_argument("--num-steps", type=int, default=100)
    p.add_argument("--plot", default="out/pf_lgssm.png")
    args = p.parse_args(argv)

    ssm = LinearGaussianSSM(A=0.9, Q=1.0, C=1.0, R=1.0, m0=0.0, P0=1.0)
    xs, ys = ssm.simulate(jax.random.key(0), args.num_steps)
    exact = kalman_filter(ssm, ys)
    print(f"Kalman log evidence: {exact.log_evidence:.4f}")
    results = {}
    for proposal in ("bootstrap", "guided"):
        res = particle_filter(
            jax.random.key(1),
            ssm,
            ys,
            args.num_particles,
            proposal=proposal,
            quantiles=(0.05, 0.95),
        )
        results[proposal] = res
        err = np.abs(res.filtering_means[:, 0] - exact.means[:, 0]).max()
        print(
            f"{proposal:>9}: log Z = {res.log_evidence:.4f} "
            f"(error {res.log_evidence - exact.log_evidence:+.4f}), "
            f"max |mean - Kalman| = {err:.4f}, resampled {int(res.resampled.sum())} times, "
            f"min ESS {res.ess.min():.0f}, {res.wall_time:.2f} s"
        )

    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        res = results["bootstrap"]
        t = np.arange(args.num_steps)
        sd = np.sqrt(exact.covariances[:, 0, 0])
        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
        ax1.plot(t, np.asarray(xs)[:, 0], "k.", ms=3, label="true state")
        ax1.plot(t, exact.means[:, 0], "C0", label="Kalman mean")
        ax1.fill_between(
            t,
            exact.means[:, 0] - 1.645 * sd,
            exact.means[:, 0] + 1.645 * sd,
            color="C0",
            alpha=0.2,
            label="Kalman 90%",
        )
        ax1.plot(t, res.filtering_means[:, 0], "C1--", label="PF mean")
        q = res.filtering_quantiles
        ax1.plot(t, q[:, 0, 0], "C1:", t, q[:, -1, 0], "C1:", label="PF 5%/95%")
        ax1.legend(fontsize=8)
        ax2.plot(t, results["bootstrap"].ess, label="bootstrap")
        ax2.plot(t, results["guided"].ess, label="guided")
        ax2.set_ylabel("ESS")
        ax2.set_xlabel("t")
        ax2.legend(fontsize=8)
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot, dpi=120, bbox_inches="tight")
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
