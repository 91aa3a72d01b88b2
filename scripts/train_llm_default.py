"""Train the bundled offline default models of ``probinfer.llm`` (CPU, minutes).

Stages, written to ``probinfer/llm/assets/`` as safetensors + JSON:

* ``lm``  — a tiny GPT-2 (transformers ``GPT2LMHeadModel``, character tokenizer) trained on
  the multi-step arithmetic task with solutions in which each operation is wrong with
  probability ``--error-rate`` (errors propagate). The model learns that noise, so its
  single-sample accuracy is well below 100% on purpose: inference-time scaling has
  something to fix.
* ``prm --prm-kind likelihood`` (default) — the bundled "learned" PRM: a logistic
  regression of verifier labels on the newest step's LM log-probability and length,
  fitted on the LM's own samples (``assets/prm_likelihood/prm.json``).
* ``prm --prm-kind token`` — the LM's transformer with a one-logit token head
  (``GPT2ForTokenClassification``) fine-tuned on *the LM's own samples*, each step
  labelled by the programmatic verifier (label = every step so far correct) at its last
  character. Small and briefly trained, so
  it is imperfect.

Commands that produced the bundled assets (one CPU thread; a shared 2-core machine)::

    .venv/bin/python scripts/train_llm_default.py --stage lm                # ~7 min, 4000 steps
    .venv/bin/python scripts/train_llm_default.py --stage prm               # ~30 s ("learned")
    .venv/bin/python scripts/train_llm_default.py --stage prm --prm-kind token \
        --prm-problems 1500                                                  # ~4 min ("token")

``--stage all`` runs the first two. The token PRM stops at ``--prm-minutes`` (4), so its
number of steps depends on the machine's speed.

Run in the background with ``nohup ... > train_llm.log 2>&1 &``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from probinfer.llm.task import ArithmeticTask, CharTokenizer

ASSETS = Path(__file__).resolve().parents[1] / "probinfer" / "llm" / "assets"


def _gpt2(vocab_size: int, n_embd: int, n_layer: int, n_head: int, n_positions: int, **kw):
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=vocab_size,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        n_positions=n_positions,
        n_inner=2 * n_embd,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=None,
        **kw,
    )


def _batch(tok, texts, prompt_lens, device="cpu"):
    """Right-padded ids, attention mask and labels masking prompt and padding."""
    ids = [tok.encode(t) for t in texts]
    L = max(map(len, ids))
    x = torch.zeros(len(ids), L, dtype=torch.long)
    m = torch.zeros(len(ids), L, dtype=torch.long)
    y = torch.full((len(ids), L), -100, dtype=torch.long)
    for i, (row, p) in enumerate(zip(ids, prompt_lens)):
        x[i, : len(row)] = torch.tensor(row)
        m[i, : len(row)] = 1
        y[i, p : len(row)] = x[i, p : len(row)]
    return x, m, y


def _lr(step, total, base, warmup=200):
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(total - warmup, 1))))


def train_lm(args) -> None:
    from transformers import GPT2LMHeadModel

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    task = ArithmeticTask()
    tok = CharTokenizer()
    cfg = _gpt2(tok.vocab_size, 64, 3, 4, 48)
    model = GPT2LMHeadModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    start, step, ema = time.time(), 0, None
    while step < args.lm_steps and time.time() - start < 60 * args.lm_minutes:
        probs = [task.sample(rng) for _ in range(args.batch_size)]
        texts = [p.prompt + task.noisy_solution(p, rng, args.error_rate) for p in probs]
        x, m, y = _batch(tok, texts, [len(p.prompt) for p in probs])
        for g in opt.param_groups:
            g["lr"] = _lr(step, args.lm_steps, args.lr)
        loss = model(input_ids=x, attention_mask=m, labels=y).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        step += 1
        if step % 200 == 0:
            print(f"lm step {step} loss {ema:.4f} ({time.time() - start:.0f}s)", flush=True)
    out = ASSETS / "lm"
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    (out / "char_tokenizer.json").write_text(json.dumps(tok.to_dict()))
    meta = {
        "error_rate": args.error_rate,
        "steps": step,
        "seconds": round(time.time() - start),
        "final_loss": ema,
        "seed": args.seed,
        "batch_size": args.batch_size,
    }
    (out / "training.json").write_text(json.dumps(meta, indent=1))
    print("saved", out, meta, flush=True)


def train_prm(args) -> None:
    import jax
    from transformers import GPT2ForTokenClassification

    from probinfer.llm.hf import HFCausalLM
    from probinfer.llm.protocols import StepFormat
    from probinfer.llm.task import STOP

    torch.manual_seed(args.seed + 1)
    rng = np.random.default_rng(args.seed + 1)
    task = ArithmeticTask()
    lm = HFCausalLM.from_pretrained(ASSETS / "lm")
    # the LM's own samples, step by step, labelled by the verifier
    examples: list[tuple[str, float]] = []
    start = time.time()
    key = jax.random.key(args.seed)
    problems = task.problems(args.prm_problems, seed=args.seed + 1000)
    all_prompts, all_steps = [], []
    for b in range(0, len(problems), 128):
        chunk = problems[b : b + 128]
        prompts = [p.prompt for p in chunk for _ in range(args.prm_samples)]
        texts = [""] * len(prompts)
        steps = [[] for _ in prompts]
        for _ in range(9):
            live = [i for i, t in enumerate(texts) if not t.endswith(STOP) and len(steps[i]) < 9]
            if not live:
                break
            key, sub = jax.random.split(key)
            out = lm.propose(
                sub,
                [prompts[i] for i in live],
                [texts[i] for i in live],
                StepFormat().step_end,
                max_new_tokens=5,
            )
            for i, s in zip(live, out.steps):
                texts[i] += s
                steps[i].append(s)
        all_prompts += prompts
        all_steps += steps
        if args.prm_kind == "likelihood":
            continue
        for pr, st in zip(prompts, steps):
            if args.prm_labels == "local":
                labels = task.step_locally_correct(pr, st)
            else:
                labels = task.step_correct(pr, st)
            ends = np.cumsum([len(x) for x in st]) + len(pr) - 1  # last char of each step
            examples.append((pr + "".join(st), ends.tolist(), [float(v) for v in labels]))
    if args.prm_kind == "likelihood":
        _fit_likelihood_prm(args, task, lm, all_prompts, all_steps, rng)
        return
    acc_final = np.mean([task.step_correct(p, s)[-1] for p, s in zip(prompts, steps)])
    pos = np.mean([v for e in examples for v in e[2]])
    num_labels = sum(len(e[2]) for e in examples)
    print(
        f"prm data: {len(examples)} samples, {num_labels} labelled steps, {pos:.2f} positive, "
        f"last-chunk sample accuracy {acc_final:.3f} ({time.time() - start:.0f}s)",
        flush=True,
    )

    tok = CharTokenizer()
    # The PRM starts from the LM's transformer (it already reads arithmetic) with a new
    # one-logit token head, as PRMs are usually fine-tuned from a language model; every
    # step is scored at its last character (causal attention: the score of a prefix does not
    # depend on what follows), so one sample gives a label per step.
    model = GPT2ForTokenClassification.from_pretrained(
        ASSETS / "lm", num_labels=1, local_files_only=True
    )
    model.config.pad_token_id = tok.pad_token_id
    opt = torch.optim.AdamW(model.parameters(), lr=args.prm_lr, weight_decay=0.01)
    n_val = len(examples) // 10
    perm = rng.permutation(len(examples))
    val = [examples[i] for i in perm[:n_val]]
    train = [examples[i] for i in perm[n_val:]]

    def logits_targets(batch):
        x, m, _ = _batch(tok, [e[0] for e in batch], [0] * len(batch))
        logits = model(input_ids=x, attention_mask=m).logits[..., 0]
        rows = torch.tensor([i for i, e in enumerate(batch) for _ in e[1]])
        cols = torch.tensor([c for e in batch for c in e[1]])
        target = torch.tensor([v for e in batch for v in e[2]])
        return logits[rows, cols], target

    start, step, ema = time.time(), 0, None
    while step < args.prm_steps and time.time() - start < 60 * args.prm_minutes:
        idx = rng.integers(0, len(train), size=args.batch_size)
        for g in opt.param_groups:
            g["lr"] = _lr(step, args.prm_steps, args.prm_lr)
        logit, target = logits_targets([train[i] for i in idx])
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        step += 1
        if step % 200 == 0:
            print(f"prm step {step} loss {ema:.4f} ({time.time() - start:.0f}s)", flush=True)
    model.eval()
    with torch.no_grad():
        logit, yv = logits_targets(val)
    p = torch.sigmoid(logit).numpy()
    yv = yv.numpy()
    val_acc = float(np.mean((p > 0.5) == (yv > 0.5)))
    print(f"prm validation step accuracy {val_acc:.3f} on {len(yv)} steps", flush=True)
    out = ASSETS / "prm"
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    (out / "char_tokenizer.json").write_text(json.dumps(tok.to_dict()))
    meta = {
        "steps": step,
        "seconds": round(time.time() - start),
        "final_loss": ema,
        "validation_accuracy": val_acc,
        "num_samples": len(examples),
        "num_labelled_steps": num_labels,
        "positive_fraction": float(pos),
        "labels": args.prm_labels,
        "seed": args.seed,
    }
    (out / "training.json").write_text(json.dumps(meta, indent=1))
    print("saved", out, meta, flush=True)


def _fit_likelihood_prm(args, task, lm, prompts, steps, rng) -> None:
    """Logistic regression of verifier labels on the newest step's LM likelihood."""
    from sklearn.linear_model import LogisticRegression

    from probinfer.llm.reward import FEATURES, LikelihoodPRM

    start = time.time()
    feat = LikelihoodPRM(lm, np.zeros(len(FEATURES)), 0.0)
    xs, ys = [], []
    for b in range(0, len(prompts), 256):
        qp, qs, lab = [], [], []
        for pr, st in zip(prompts[b : b + 256], steps[b : b + 256]):
            labels = task.step_correct(pr, st)
            for j in range(len(st)):
                qp.append(pr)
                qs.append(tuple(st[: j + 1]))
                lab.append(float(labels[j]))
        xs.append(feat.features(qp, qs))
        ys.append(np.array(lab))
    x, y = np.concatenate(xs), np.concatenate(ys)
    perm = rng.permutation(len(y))
    n_val = len(y) // 5
    val, train = perm[:n_val], perm[n_val:]
    clf = LogisticRegression().fit(x[train], y[train])
    val_acc = float(clf.score(x[val], y[val]))
    print(
        f"likelihood PRM: validation accuracy {val_acc:.3f} on {n_val} steps "
        f"(positive fraction {y.mean():.2f}) ({time.time() - start:.0f}s)",
        flush=True,
    )
    out = ASSETS / "prm_likelihood"
    out.mkdir(parents=True, exist_ok=True)
    cfg = {
        "type": "lm_likelihood",
        "lm": "../lm",
        "features": list(FEATURES),
        "coef": clf.coef_[0].tolist(),
        "intercept": float(clf.intercept_[0]),
        "validation_accuracy": val_acc,
        "num_labelled_steps": int(len(y)),
        "positive_fraction": float(y.mean()),
        "labels": "prefix (every step so far correct)",
        "seed": args.seed,
    }
    (out / "prm.json").write_text(json.dumps(cfg, indent=1))
    print("saved", out, cfg, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", choices=["lm", "prm", "all"], default="all")
    ap.add_argument("--error-rate", type=float, default=0.2)
    ap.add_argument("--lm-steps", type=int, default=4000)
    ap.add_argument("--lm-minutes", type=float, default=9.0)
    ap.add_argument("--prm-problems", type=int, default=500)
    ap.add_argument("--prm-samples", type=int, default=4)
    ap.add_argument("--prm-steps", type=int, default=3000)
    ap.add_argument("--prm-minutes", type=float, default=4.0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--prm-lr", type=float, default=1e-3)
    ap.add_argument(
        "--prm-kind",
        choices=["likelihood", "token"],
        default="likelihood",
        help="likelihood: logistic regression on the newest step's LM log-probability "
        "(the bundled 'learned' PRM); token: fine-tuned token-classification PRM",
    )
    ap.add_argument(
        "--prm-labels",
        choices=["local", "prefix"],
        default="prefix",
        help="label of a step: applied correctly to the previous value, or whole prefix right",
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.stage in ("lm", "all"):
        train_lm(args)
    if args.stage in ("prm", "all"):
        train_prm(args)


if __name__ == "__main__":
    main()
