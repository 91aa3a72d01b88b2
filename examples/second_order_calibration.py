"""Second-order calibration on the bundled LLM task (Johnson et al., ICML 2024).

The bundled tiny LM answers multi-step arithmetic prompts, and makes mistakes: its answer
distribution ``p(y | x)`` for a prompt ``x`` is spread over several numbers. A pair head on the
LM's features of the prompt (its last-layer hidden state at the last prompt character, and the
mean over the prompt) is trained on pairs of independently sampled answers to the same prompt
with the pair loss ``-log p(y1 | x) - log p(y2 | y1, x)``. The features cannot tell ``p(y | x)``
exactly (the LM computes its answer step by step), so the pair head "cheats": its
``V_cheat = p_hat (p_same - p_hat)`` should match the true squared error of ``p_hat``.

On held-out prompts, each answered 32 times, we compare

* the mean ``V_cheat`` with an unbiased estimate of the mean ``(p_hat(y | x) - p(y | x))^2``
  (the U-statistic over the 32 answers, :func:`calibration.second_order.squared_error_estimate`),
  before and after the robust rescaling (fitted on other held-out prompts, two answers each);
* the hallucination filter on the top answer: the accuracy of the answers it keeps, and how
  often a kept / rejected top answer never appears among the LM's 32 answers.

Measured with the defaults (seed 0; 400 training prompts x 16 answers, 150 calibration
prompts x 2, 150 test prompts x 32): per prompt, summed over the 72 answer classes, the
estimated ``E[(p_hat - p)^2]`` is 0.130 +- 0.005; the mean ``V_cheat`` is only 0.039 (the
prompt features barely predict this LM's answers, and the pair head underfits its own
ignorance), and the rescaled ``V_robust = 1.4e-3 + 1.09 V_cheat`` averages 0.141. The
hallucination filter (beta = 0.2) keeps 62% of the top answers; their accuracy (7.5%, vs 7.3%
for all) and how often they are absent from the 32 answers (48%, vs 46% for the rejected ones)
show that these features carry little answer-level signal: the filter is only as good as the
pair head.

Run ``python examples/second_order_calibration.py`` (10-15 minutes on one CPU core, most of it
sampling answers; ``--cache answers.npz`` keeps the answers for later runs; see ``--help``).
``--plot FILE`` saves a figure of ``V`` against the estimated squared error (binned).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np
import torch

from calibration.second_order import (
    PairClassifier,
    SecondOrderCalibrator,
    cheat_variance,
    fit_pair_classifier,
    squared_error_estimate,
)
from probinfer.llm.default import ASSETS, default_model_kwargs, default_problems
from probinfer.llm.filtering import sample_rollouts
from probinfer.llm.hf import HFCausalLM
from probinfer.llm.protocols import Usage
from probinfer.llm.ssm import LLMStateSpaceModel


def sample_answers(key, model, prompts, m):
    """``m`` independent answers (``str`` or ``None``) of the LM to each prompt."""
    keys = jax.random.split(key, len(prompts))
    out = []
    for k, prompt in zip(keys, prompts):
        store, _ = sample_rollouts(k, model, prompt, m, Usage())
        out.append(model.answers(store))
    return out


@torch.no_grad()
def prompt_features(lm: HFCausalLM, prompts) -> torch.Tensor:
    """Last-layer hidden state at the last prompt character and its mean over the prompt."""
    feats = []
    for prompt in prompts:
        ids = torch.tensor([lm.tokenizer.encode(prompt)], device=lm.device)
        h = lm.model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]
        feats.append(torch.cat([h[-1], h.mean(0)]))
    return torch.stack(feats).cpu()


def answer_classes(answers, lo=-30, hi=40):
    """Class index of each answer: ``0..hi-lo`` for the integers ``lo..hi``, then one class
    for everything else (unfinished answers, out-of-range numbers)."""
    other = hi - lo + 1

    def idx(a):
        if a is None:
            return other
        v = int(a)
        return v - lo if lo <= v <= hi else other

    return np.array([[idx(a) for a in row] for row in answers]), other + 1, idx


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train-prompts", type=int, default=400, help="prompts the pair head sees")
    ap.add_argument("--train-answers", type=int, default=16, help="answers per training prompt")
    ap.add_argument("--calib-prompts", type=int, default=150, help="for the rescaling (2 each)")
    ap.add_argument("--test-prompts", type=int, default=150, help="held-out prompts")
    ap.add_argument("--test-answers", type=int, default=32, help="answers per test prompt")
    ap.add_argument("--epochs", type=int, default=10, help="pair-head training epochs")
    ap.add_argument("--beta", type=float, default=0.2, help="hallucination-filter threshold")
    ap.add_argument("--seed", type=int, default=0, help="root of every key")
    ap.add_argument("--plot", default=None, help="save a figure to this file")
    ap.add_argument("--json", default=None, help="write the numbers to this JSON file")
    ap.add_argument("--cache", default=None, help="npz file of the sampled answers (reused)")
    ap.add_argument("--weight-decay", type=float, default=1e-2)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    start = time.perf_counter()

    lm = HFCausalLM.from_pretrained(ASSETS / "lm", device="cpu")
    model = LLMStateSpaceModel(lm, None, **default_model_kwargs())
    n_tr, n_ca, n_te = args.train_prompts, args.calib_prompts, args.test_prompts
    problems = default_problems(n_tr + n_ca + n_te, seed=1000 + args.seed)
    prompts = [p for p, _ in problems]
    truths = [a for _, a in problems]
    k_tr, k_ca, k_te, k_fit = jax.random.split(jax.random.key(args.seed), 4)
    if args.cache and os.path.exists(args.cache):
        with np.load(args.cache) as z:  # answers as strings, "" for an unfinished answer
            ans_tr, ans_ca, ans_te = ([[a or None for a in row] for row in z[n].tolist()]
                                      for n in ("train", "calib", "test"))  # fmt: skip
    else:
        ans_tr = sample_answers(k_tr, model, prompts[:n_tr], args.train_answers)
        ans_ca = sample_answers(k_ca, model, prompts[n_tr : n_tr + n_ca], 2)
        ans_te = sample_answers(k_te, model, prompts[n_tr + n_ca :], args.test_answers)
        print(f"sampled {n_tr * args.train_answers + 2 * n_ca + n_te * args.test_answers} "
              f"answers in {time.perf_counter() - start:.0f} s")  # fmt: skip
        if args.cache:
            np.savez(args.cache, **{n: np.array([[a or "" for a in row] for row in ans])
                                    for n, ans in (("train", ans_tr), ("calib", ans_ca),
                                                   ("test", ans_te))})  # fmt: skip

    y_tr, k, to_class = answer_classes(ans_tr)
    y_ca, _, _ = answer_classes(ans_ca)
    y_te, _, _ = answer_classes(ans_te)
    feats = prompt_features(lm, prompts)
    f_tr, f_ca, f_te = feats[:n_tr], feats[n_tr : n_tr + n_ca], feats[n_tr + n_ca :]
    mu, sd = f_tr.mean(0), f_tr.std(0) + 1e-6
    f_tr, f_ca, f_te = ((f - mu) / sd for f in (f_tr, f_ca, f_te))

    # triples (x, y1, y2): the training answers of a prompt, taken two by two
    half = args.train_answers // 2
    x_pairs = f_tr.repeat_interleave(half, dim=0)
    y1 = y_tr[:, 0 : 2 * half : 2].reshape(-1)
    y2 = y_tr[:, 1 : 2 * half : 2].reshape(-1)
    encoder = torch.nn.Sequential(
        torch.nn.Linear(f_tr.shape[1], 128), torch.nn.GELU(), torch.nn.Linear(128, 64)
    )
    net = PairClassifier(encoder, k, 64, hidden=64, label_dim=16)
    hist = fit_pair_classifier(
        net, x_pairs, y1, y2, key=k_fit, epochs=args.epochs, batch_size=256, lr=3e-3,
        weight_decay=args.weight_decay,
    )  # fmt: skip
    print(f"pair loss {hist[0]:.3f} -> {hist[-1]:.3f} ({len(y1)} triples, {k} classes)")

    # the robust rescaling, fitted on calibration prompts with two answers each
    so = SecondOrderCalibrator(net, beta=args.beta).fit(f_ca, y_ca)
    p, p_same = net.predict_pair(f_te)
    v_cheat = cheat_variance(p, p_same)
    v_robust = so.predict_variance(f_te)
    u = squared_error_estimate(p, y_te).sum(axis=1)  # per prompt: sum over answers
    se = u.std(ddof=1) / np.sqrt(len(u))
    report = {
        "mean_squared_error_estimate": float(u.mean()),
        "its_standard_error": float(se),
        "mean_v_cheat": float(v_cheat.sum(1).mean()),
        "mean_v_robust": float(v_robust.sum(1).mean()),
        "rescaling": {"intercept": so.rescaling_.intercept, "slope": so.rescaling_.slope},
    }
    print(
        "per prompt, summed over answers: E[(p_hat - p)^2] ~ "
        f"{u.mean():.4f} +- {se:.4f}; mean V_cheat {report['mean_v_cheat']:.4f}, "
        f"mean V_robust {report['mean_v_robust']:.4f} "
        f"(a = {so.rescaling_.intercept:.2e}, b = {so.rescaling_.slope:.2f})"
    )

    # hallucination filter on the top answer
    top = p.argmax(axis=1)
    rows = np.arange(len(top))
    keep = so.predict_keep(f_te)[rows, top]
    correct = np.array([to_class(t) == c for t, c in zip(truths[n_tr + n_ca :], top)])
    unseen = ~(y_te == top[:, None]).any(axis=1)  # never among the 32 answers
    conf = so.predict_confidence(f_te)[rows, top]
    report["filter"] = {
        "beta": args.beta,
        "kept_fraction": float(keep.mean()),
        "accuracy_all": float(correct.mean()),
        "accuracy_kept": float(correct[keep].mean()) if keep.any() else None,
        "unseen_kept": float(unseen[keep].mean()) if keep.any() else None,
        "unseen_rejected": float(unseen[~keep].mean()) if (~keep).any() else None,
        "mean_bound_1_minus_C": float((1 - conf).mean()),
        "unseen_all": float(unseen.mean()),
    }
    print(json.dumps(report["filter"], indent=1))
    print(f"total {time.perf_counter() - start:.0f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        uk = squared_error_estimate(p, y_te).ravel()
        fig, ax = plt.subplots(figsize=(4, 3.6))
        for v, name in ((v_cheat.ravel(), "V_cheat"), (v_robust.ravel(), "V_robust")):
            order = np.argsort(v)
            bins = np.array_split(order[v[order] > 1e-4], 10)
            ax.plot([v[b].mean() for b in bins], [uk[b].mean() for b in bins], "o-", label=name)
        lim = max(ax.get_xlim()[1], ax.get_ylim()[1])
        ax.plot([0, lim], [0, lim], "k--", lw=0.7)
        ax.set(xlabel="predicted variance (bin mean)", ylabel="estimated (p_hat - p)^2",
               title="second-order calibration, bundled LM")  # fmt: skip
        ax.legend()
        fig.savefig(args.plot, dpi=120, bbox_inches="tight")
    return report


if __name__ == "__main__":
    main()
