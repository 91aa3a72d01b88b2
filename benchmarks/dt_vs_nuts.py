"""Distribution Transformer vs NumPyro NUTS vs tempered SMC on task (a) of issue 12.

Workload: 1000 problems of task (a) (a Gaussian-mixture prior with 1-4 components on theta in
R^2, ``y_i = x_i^T theta + N(0, 0.5^2)``, 0..16 observations), drawn from the meta-prior of the
shipped model ``dt-linear-2d`` with a key that training never used.

* **DT**: the posteriors of all 1000 problems in ONE batched call of
  ``load_pretrained("dt-linear-2d").posterior`` (ragged priors as zero-weight padding, ragged
  data with a mask) *and their 2000 draws each* (what NUTS's time includes); the forward
  pass alone is reported beside it.
* **NUTS**: NumPyro NUTS per problem, the same padded model compiled once
  (``jit_model_args``), in two set-ups: one chain of 500 warm-up + 2000 kept draws, and 4
  chains of 500 warm-up + 500 draws run as one vectorised program
  (``chain_method="vectorized"``, NumPyro's way to batch chains; the problems themselves
  cannot share a vectorised run since NumPyro's chains share the model's data). Run on the
  first ``--subset`` problems (default 40), compilation excluded (the first problem is
  reported separately); per-problem time scaled to 1000 problems.
* **SMC**: the repo's adaptive tempered SMC (2000 particles, HMC moves), per problem with
  :func:`probinfer.smc.tempered_smc` on the first ``--smc-subset`` problems (default 10; a
  NumPyro target is a pytree of its data, so the padded model compiles once for all
  problems; time from a second run on the same target), and vmapped over those problems
  (:func:`probinfer.smc.tempered_smc_loop`, one program for the whole batch); time per
  problem scaled to 1000.

Timing is interleaved: every NUTS problem (both set-ups) and every repetition of the vmapped
SMC batch is paired with one DT call (with draws) run in the same round, so each speed-up is a
per-round ratio under the same load, quoted as the median with its min and max over the
rounds (>= 5).
* **DT + importance resampling**: the DT's posteriors as proposals
  (:func:`probinfer.importance.importance_resample`, ``--is-proposals`` per problem, 5,000
  by default), weighted by the exact unnormalised posterior (the GMM prior times the
  Gaussian likelihood) and resampled to 2000 draws: the amortized posterior corrected into a
  consistent one where the likelihood is known. Timed for all 1000 problems (DT call
  included); the weights' ESS is reported.

Accuracy: energy distance (U-statistic) between 2000 draws of the exact posterior
(:func:`amortized.exact.linear_gaussian_posterior`) and 2000 draws of each method, mean and
standard error over problems. The noise floor is the same statistic between two independent
sets of 2000 exact draws: its expectation is 0 (the estimator is unbiased) and its spread over
problems is the Monte-Carlo noise of one estimate. On the NUTS subset the per-problem
differences ``ED(DT) - ED(NUTS)`` (same reference draws) give a paired mean and SE: the DT is
"within noise of NUTS" when that mean is within 2 SE of 0. Writes
``benchmarks/results/dt_vs_nuts.json``.

    python benchmarks/dt_vs_nuts.py [--subset 40] [--smc-subset 10] [--dt-accuracy-problems 1000]
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from _common import paired_ratio, time_call, write_results
from scipy.spatial.distance import cdist, pdist

N_PROBLEMS, N_DRAWS = 1000, 2000
HELD_OUT = 2**31 - 11  # fold-in constant of the benchmark's problems (not a training step)


def energy_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Energy distance ``2 E|X-Y| - E|X-X'| - E|Y-Y'|`` (U-statistics within samples)."""
    return float(2 * cdist(a, b).mean() - pdist(a).mean() - pdist(b).mean())


def model(w, mu, tril, x, y, mask, noise_std):
    mix = dist.MixtureSameFamily(
        dist.Categorical(probs=w), dist.MultivariateNormal(mu, scale_tril=tril)
    )
    theta = numpyro.sample("theta", mix)
    # mask: bool, or float (data, so a target built per problem inside vmap traces it)
    numpyro.sample("y", dist.Normal(x @ theta, noise_std).mask(mask > 0.5).to_event(1), obs=y)


def problems(task, seed: int):
    """The benchmark's problems as float64 arrays (padded priors and data, with masks)."""
    b = task.sample(jax.random.fold_in(jax.random.key(seed), HELD_OUT), N_PROBLEMS)
    w = np.where(b.comp_mask, np.exp(b.logits.astype(np.float64)), 0.0)
    w /= w.sum(-1, keepdims=True)
    tril = b.scale_trils.astype(np.float64)
    return {
        "w": w,
        "mu": b.means.astype(np.float64),
        "tril": tril,
        "cov": tril @ np.swapaxes(tril, -1, -2),
        "x": b.tokens[..., :-1].astype(np.float64),
        "y": b.tokens[..., -1].astype(np.float64),
        "mask": b.data_mask,
    }


def exact_draws(rng, w, mu, cov, n):
    from amortized.dt_tasks import sample_gmm

    k = len(w)
    lw = np.log(np.maximum(w, 1e-300))
    tril = np.linalg.cholesky(cov)
    return sample_gmm(
        rng,
        np.broadcast_to(lw, (n, k)),
        np.broadcast_to(mu, (n,) + mu.shape),
        np.broadcast_to(tril, (n,) + tril.shape),
    )


@jax.jit
def _log_posterior(prior, x, y, mask, noise_std, theta):
    """Unnormalised log posterior of task (a): ``(M, B, 2)`` points -> ``(M, B)``."""
    resid = y - jnp.einsum("bnd,mbd->mbn", x, theta)
    loglik = -0.5 * (resid / noise_std) ** 2 - jnp.log(noise_std * jnp.sqrt(2 * jnp.pi))
    return prior.log_prob(theta) + jnp.sum(jnp.where(mask, loglik, 0.0), -1)


def _summary(v) -> dict:
    v = np.asarray(v, dtype=np.float64)
    return {"mean": float(v.mean()), "se": float(v.std(ddof=1) / np.sqrt(v.size)), "n": v.size}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subset", type=int, default=40, help="problems run by NUTS")
    p.add_argument("--smc-subset", type=int, default=10, help="problems run by SMC (<= subset)")
    p.add_argument("--smc-reps", type=int, default=5, help="timed runs of the vmapped SMC batch")
    p.add_argument("--dt-accuracy-problems", type=int, default=1000)
    p.add_argument("--is-proposals", type=int, default=5_000, help="DT + IS proposals")
    p.add_argument("--model-dir", help="a saved DT directory instead of the shipped model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="dt_vs_nuts")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from amortized.dt import DistributionTransformer
    from amortized.exact import linear_gaussian_posterior
    from amortized.pretrained import load_pretrained
    from probinfer.distributions import GaussianMixture
    from probinfer.importance import importance_resample
    from probinfer.smc import tempered_smc, tempered_smc_loop
    from probinfer.targets import from_numpyro

    dt = (
        DistributionTransformer.load(args.model_dir)
        if args.model_dir
        else load_pretrained("dt-linear-2d")
    )
    task = dt.task
    P = problems(task, args.seed)
    ew, emu, ecov = linear_gaussian_posterior(
        P["w"], P["mu"], P["cov"], P["x"], P["y"], task.noise_std, mask=P["mask"]
    )
    rng = np.random.default_rng(args.seed)

    # ---------------------------------------------------------------- DT: one batched call
    prior = GaussianMixture(P["mu"], scale_trils=P["tril"], weights=P["w"])

    def dt_forward():
        post = dt.posterior(prior, P["x"], P["y"], mask=P["mask"])
        return jax.block_until_ready(post.logits)

    def dt_call():  # what a user needs for 2000 draws of every posterior
        post = dt.posterior(prior, P["x"], P["y"], mask=P["mask"])
        return jax.block_until_ready(post.sample(jax.random.key(args.seed), (N_DRAWS,)))

    t0 = time.perf_counter()
    dt_draws = np.asarray(dt_call(), dtype=np.float64)
    dt_first = time.perf_counter() - t0
    dt_forward_time = time_call(dt_forward, repeats=7, warmup=1)
    dt_time = time_call(dt_call, repeats=7, warmup=1)
    print(
        f"DT: 1000 problems in one call with {N_DRAWS} draws each: {dt_time:.4f} s "
        f"(forward pass alone {dt_forward_time:.4f} s; first call {dt_first:.3f} s)"
    )

    def timed(fn):
        t0 = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t0

    # ------------------------------------------------- DT + importance resampling (all problems)
    noise = task.noise_std
    xj, yj = jnp.asarray(P["x"], jnp.float32), jnp.asarray(P["y"], jnp.float32)
    mj = jnp.asarray(P["mask"])

    def dt_is_call(key, post):
        """Importance resampling of every problem's DT posterior, 100 problems at a time."""
        draws, ess = [], []
        for c, s in enumerate(range(0, N_PROBLEMS, 100)):
            sl = slice(s, s + 100)
            prop = GaussianMixture(
                post.means[sl], scale_trils=post.scale_trils[sl], logits=post.logits[sl]
            )
            pri = GaussianMixture(
                jnp.asarray(P["mu"][sl]),
                scale_trils=jnp.asarray(P["tril"][sl]),
                weights=jnp.asarray(P["w"][sl]),
            )

            def log_target(theta, pri=pri, sl=sl):  # (M, B, 2) -> (M, B)
                return _log_posterior(pri, xj[sl], yj[sl], mj[sl], noise, theta)

            r = importance_resample(
                jax.random.fold_in(key, c), prop, log_target, N_DRAWS, args.is_proposals
            )
            draws.append(r.draws)
            ess.append(r.ess)
        return jnp.concatenate(draws, 1), jnp.concatenate(ess)

    def dt_is_full():
        post = dt.posterior(prior, P["x"], P["y"], mask=P["mask"])
        return jax.block_until_ready(dt_is_call(jax.random.key(args.seed + 7), post))

    is_draws, is_ess = dt_is_full()
    is_time = time_call(dt_is_full, repeats=3, warmup=0)
    is_draws = np.asarray(is_draws, dtype=np.float64)
    is_ess = np.asarray(is_ess, dtype=np.float64)
    print(
        f"DT + IS: 1000 problems in {is_time:.2f} s; ESS of {args.is_proposals} proposals: "
        f"median {np.median(is_ess):.0f}, 1% quantile {np.quantile(is_ess, 0.01):.0f}"
    )

    n_acc = min(args.dt_accuracy_problems, N_PROBLEMS)
    ed = {"dt": [], "dt_is": [], "exact_floor": []}
    for i in range(n_acc):
        ref = exact_draws(rng, ew[i], emu[i], ecov[i], N_DRAWS)
        ref2 = exact_draws(rng, ew[i], emu[i], ecov[i], N_DRAWS)
        ed["dt"].append(energy_distance(ref, dt_draws[:, i]))
        ed["dt_is"].append(energy_distance(ref, is_draws[:, i]))
        ed["exact_floor"].append(energy_distance(ref, ref2))

    # ---------------------------------------------------------------- NUTS and SMC per problem
    from numpyro.infer import MCMC, NUTS

    sub = range(args.subset)
    mcmc = MCMC(
        NUTS(model),
        num_warmup=500,
        num_samples=N_DRAWS,
        num_chains=1,
        progress_bar=False,
        jit_model_args=True,
    )
    chains = 4
    mcmc_vec = MCMC(
        NUTS(model),
        num_warmup=500,
        num_samples=N_DRAWS // chains,
        num_chains=chains,
        chain_method="vectorized",
        progress_bar=False,
        jit_model_args=True,
    )
    times = {"nuts": [], "nuts_vec": [], "dt_paired": [], "smc_first": [], "smc": []}
    sub_ed = {"dt": [], "dt_is": [], "nuts": [], "nuts_vec": [], "exact_floor": []}
    smc_ed = {"dt": [], "smc": [], "exact_floor": []}
    smc_steps = []
    # ---------------------------------------------------------------- SMC vmapped over problems
    n_smc = args.smc_subset
    batch = tuple(
        jnp.asarray(P[k][:n_smc], jnp.float32) for k in ("w", "mu", "tril", "x", "y", "mask")
    )

    @jax.jit
    def smc_batch(key):
        def one(k, w, mu, tril, x, y, mask):
            target = from_numpyro(model, w, mu, tril, x, y, mask, task.noise_std)
            return tempered_smc_loop(k, target, N_DRAWS, kernel="hmc").state.values.theta

        return jax.vmap(one)(jax.random.split(key, n_smc), *batch)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, smc_vmap_first = timed(lambda: jax.block_until_ready(smc_batch(jax.random.key(3000))))
        times["smc_vmap"], times["dt_paired_smc"] = [], []
        for r in range(args.smc_reps):
            _, t_dt = timed(dt_call)
            smc_vm, t_smc = timed(
                lambda r=r: jax.block_until_ready(smc_batch(jax.random.key(3001 + r)))
            )
            times["dt_paired_smc"].append(t_dt)
            times["smc_vmap"].append(t_smc)
    smc_vm = np.asarray(smc_vm, dtype=np.float64)
    smc_vmap_ed = []
    for i in range(n_smc):
        ref = exact_draws(rng, ew[i], emu[i], ecov[i], N_DRAWS)
        smc_vmap_ed.append(energy_distance(ref, smc_vm[i].reshape(N_DRAWS, -1)))
    print(
        f"SMC vmapped over {n_smc} problems: {np.median(times['smc_vmap']):.2f} s per batch "
        f"(first call {smc_vmap_first:.1f} s)",
        flush=True,
    )

    for i in sub:
        a = (
            jnp.asarray(P["w"][i]),
            jnp.asarray(P["mu"][i]),
            jnp.asarray(P["tril"][i]),
            jnp.asarray(P["x"][i]),
            jnp.asarray(P["y"][i]),
            jnp.asarray(P["mask"][i]),
            task.noise_std,
        )

        def nuts_run(m, i=i, a=a):
            m.run(jax.random.key(1000 + i), *a)
            return np.asarray(jax.block_until_ready(m.get_samples()["theta"]), dtype=np.float64)

        # one round: DT (all problems, with draws), NUTS one chain, NUTS 4 vectorised chains
        for name, fn in (
            ("dt_paired", dt_call),
            ("nuts", lambda: nuts_run(mcmc)),
            ("nuts_vec", lambda: nuts_run(mcmc_vec)),
        ):
            out, dt_s = timed(fn)
            times[name].append(dt_s)
            if name == "nuts":
                nuts = out
            elif name == "nuts_vec":
                nuts_vec = out

        ref = exact_draws(rng, ew[i], emu[i], ecov[i], N_DRAWS)
        ref2 = exact_draws(rng, ew[i], emu[i], ecov[i], N_DRAWS)
        sub_ed["dt"].append(energy_distance(ref, dt_draws[:, i]))
        sub_ed["dt_is"].append(energy_distance(ref, is_draws[:, i]))
        sub_ed["nuts"].append(energy_distance(ref, nuts))
        sub_ed["nuts_vec"].append(energy_distance(ref, nuts_vec))
        sub_ed["exact_floor"].append(energy_distance(ref, ref2))
        line = (
            f"problem {i:3d}: K={int((P['w'][i] > 0).sum())} n={int(P['mask'][i].sum()):2d} "
            f"NUTS {times['nuts'][-1]:6.2f}s ED {sub_ed['nuts'][-1]:.4f} | "
            f"NUTS x{chains} vec {times['nuts_vec'][-1]:6.2f}s ED {sub_ed['nuts_vec'][-1]:.4f} | "
            f"DT ED {sub_ed['dt'][-1]:.4f} | DT+IS ED {sub_ed['dt_is'][-1]:.4f} | "
            f"floor {sub_ed['exact_floor'][-1]:.4f}"
        )

        if i < args.smc_subset:
            target = from_numpyro(model, *a)
            smc_key = jax.random.key(2000 + i)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t0 = time.perf_counter()
                r = tempered_smc(smc_key, target, N_DRAWS, kernel="hmc", progress=False)
                jax.block_until_ready(r.particles)
                times["smc_first"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                r = tempered_smc(
                    jax.random.fold_in(smc_key, 1), target, N_DRAWS, kernel="hmc", progress=False
                )
                smc = np.asarray(jax.block_until_ready(r.samples["theta"]), dtype=np.float64)
                times["smc"].append(time.perf_counter() - t0)
            smc_steps.append(len(r.temperatures))
            smc_ed["smc"].append(energy_distance(ref, smc))
            smc_ed["dt"].append(sub_ed["dt"][-1])
            smc_ed["exact_floor"].append(sub_ed["exact_floor"][-1])
            line += f" | SMC {times['smc'][-1]:6.2f}s ED {smc_ed['smc'][-1]:.4f}"
        print(line, flush=True)

    rounds = slice(1, None) if args.subset > 1 else slice(None)  # first: NUTS compiles
    speedups = {
        "nuts_one_chain": paired_ratio(times["nuts"][rounds], times["dt_paired"][rounds], 1000),
        f"nuts_{chains}_vectorized_chains": paired_ratio(
            times["nuts_vec"][rounds], times["dt_paired"][rounds], 1000
        ),
        "smc_vmapped_over_problems": paired_ratio(
            times["smc_vmap"], times["dt_paired_smc"], 1000 / n_smc
        ),
    }
    print(f"per-round speed-ups of the DT (with draws): {speedups}", flush=True)
    nuts_per = float(np.median(times["nuts"][1:])) if args.subset > 1 else times["nuts"][0]
    diff = np.subtract(sub_ed["dt"], sub_ed["nuts"])
    diff_is = np.subtract(sub_ed["dt_is"], sub_ed["nuts"])
    smc_per = float(np.median(times["smc"]))
    results = {
        "workload": (
            f"{N_PROBLEMS} task-(a) problems (GMM prior with 1-4 components on theta in R^2, "
            f"y = x^T theta + N(0, {task.noise_std}^2), n in {list(task.n_range)}); "
            f"{N_DRAWS} draws per method and problem"
        ),
        "model": "dt-linear-2d" if not args.model_dir else args.model_dir,
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "timing_note": (
            f"DT: one batched call for all {N_PROBLEMS} problems including {N_DRAWS} draws "
            f"each (median of 7; the forward pass alone in dt_forward_s_per_1000). NUTS on "
            f"{args.subset} problems and SMC on {args.smc_subset}: per-problem time (median, "
            f"compilation excluded) scaled x{N_PROBLEMS}. speedups_per_round: one DT call "
            "timed in every round beside each NUTS problem (both set-ups) and each vmapped "
            "SMC batch; median/min/max over rounds of the paired ratio"
        ),
        "speedups_per_round": speedups,
        "dt_s_per_1000": dt_time,
        "dt_forward_s_per_1000": dt_forward_time,
        "dt_paired_s_median": float(np.median(times["dt_paired"])),
        "nuts_vectorized_chains": chains,
        "nuts_vectorized_s_per_problem": float(np.median(times["nuts_vec"][rounds])),
        "nuts_vectorized_first_problem_s_incl_compile": times["nuts_vec"][0],
        "smc_vmapped_problems": n_smc,
        "smc_vmapped_s_per_batch": float(np.median(times["smc_vmap"])),
        "smc_vmapped_s_per_batch_runs": times["smc_vmap"],
        "smc_vmapped_first_call_s_incl_compile": smc_vmap_first,
        "energy_distance_smc_vmapped": _summary(smc_vmap_ed),
        "dt_first_call_s": dt_first,
        "nuts_s_per_problem": nuts_per,
        "nuts_first_problem_s_incl_compile": times["nuts"][0],
        "nuts_s_per_1000_scaled": 1000 * nuts_per,
        "smc_s_per_problem": smc_per,
        "smc_first_run_s_median_incl_compile": float(np.median(times["smc_first"])),
        "smc_s_per_1000_scaled": 1000 * smc_per,
        "smc_tempering_steps_median": float(np.median(smc_steps)),
        "speedup_dt_vs_nuts": 1000 * nuts_per / dt_time,
        "speedup_dt_vs_smc": 1000 * smc_per / dt_time,
        "energy_distance_subset": {k: _summary(v) for k, v in sub_ed.items()},
        "energy_distance_subset_dt_minus_nuts": _summary(diff),
        "energy_distance_subset_dt_is_minus_nuts": _summary(diff_is),
        "dt_is_within_noise_of_nuts": bool(
            abs(_summary(diff_is)["mean"]) <= 2 * _summary(diff_is)["se"]
        ),
        "dt_is_s_per_1000": is_time,
        "dt_is_proposals_per_problem": args.is_proposals,
        "dt_is_ess": {
            "median": float(np.median(is_ess)),
            "q01": float(np.quantile(is_ess, 0.01)),
            "min": float(is_ess.min()),
        },
        "speedup_dt_is_vs_nuts": 1000 * nuts_per / is_time,
        "energy_distance_floor_sd": float(np.std(ed["exact_floor"], ddof=1)),
        "dt_within_noise_of_nuts": bool(abs(_summary(diff)["mean"]) <= 2 * _summary(diff)["se"]),
        "energy_distance_subset_per_problem": sub_ed,
        "energy_distance_smc_subset": {k: _summary(v) for k, v in smc_ed.items()},
        "energy_distance_dt_all": {k: _summary(v) for k, v in ed.items()},
        "subset": args.subset,
        "smc_subset": args.smc_subset,
        "dt_accuracy_problems": n_acc,
        "seed": args.seed,
    }
    e = results["energy_distance_subset"]
    results["ratio_energy_distance_dt_over_nuts_subset"] = e["dt"]["mean"] / e["nuts"]["mean"]
    path = write_results(args.out, results)
    print(
        f"DT {dt_time:.4f}s/1000 vs NUTS {1000 * nuts_per:.0f}s/1000 (scaled): "
        f"x{results['speedup_dt_vs_nuts']:.0f}; SMC {1000 * smc_per:.0f}s/1000: "
        f"x{results['speedup_dt_vs_smc']:.0f}"
    )
    print(
        "energy distance on the NUTS subset: "
        + ", ".join(f"{k} {v['mean']:.5f}+-{v['se']:.5f}" for k, v in e.items())
    )
    d = results["energy_distance_subset_dt_minus_nuts"]
    print(
        f"paired DT - NUTS: {d['mean']:.5f}+-{d['se']:.5f} (within noise: "
        f"{results['dt_within_noise_of_nuts']}); floor SD per problem "
        f"{results['energy_distance_floor_sd']:.5f}"
    )
    d = results["energy_distance_subset_dt_is_minus_nuts"]
    print(
        f"paired DT+IS - NUTS: {d['mean']:.5f}+-{d['se']:.5f} (within noise: "
        f"{results['dt_is_within_noise_of_nuts']}); DT+IS {is_time:.2f}s/1000: "
        f"x{results['speedup_dt_is_vs_nuts']:.0f} faster than NUTS"
    )
    a = results["energy_distance_dt_all"]
    print(
        f"DT on {n_acc} problems: {a['dt']['mean']:.4f}+-{a['dt']['se']:.4f}, "
        f"DT+IS {a['dt_is']['mean']:.4f}+-{a['dt_is']['se']:.4f} "
        f"(floor {a['exact_floor']['mean']:.4f}+-{a['exact_floor']['se']:.4f}); wrote {path}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
