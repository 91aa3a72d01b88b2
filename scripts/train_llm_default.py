"""Train the bundled offline default models of ``probinfer.llm`` (CPU, minutes).

The models are standard Hugging Face architectures with a standard ``tokenizer.json``, so
that a serving engine (vLLM, its CPU build included) serves them as they are: Llama blocks
with a head size of 32 (vLLM's CPU attention refuses 16), and a character-level fast
tokenizer (``tokenizers`` WordLevel over the character vocabulary of
:class:`~probinfer.llm.task.CharTokenizer`, same ids, a Split pre-tokenizer isolating every
character and a Fuse decoder; no special tokens are added, and a character outside the
vocabulary is an error).

Stages, written to ``--out`` (default ``probinfer/llm/assets/``) as safetensors + JSON:

* ``lm``  — a tiny Llama (transformers ``LlamaForCausalLM``: hidden size 64, 2 heads of
  size 32, 3 layers) trained on the multi-step arithmetic task with solutions in which
  each operation is wrong with probability ``--error-rate`` (errors propagate). The model
  learns that noise, so its single-sample accuracy is well below 100% on purpose:
  inference-time scaling has something to fix.
* ``prm`` (``--prm-kind model``, default) — the bundled "learned" PRM (``prm/``): a
  sequence classifier (``LlamaForSequenceClassification``, one logit, read at the last
  token, which is what vLLM's pooling runner serves as one score per input) built from the
  LM's transformer with ``--prm-extra-layers`` new blocks, fine-tuned on *the LM's own
  samples*, each step labelled by the programmatic verifier (label = every step so far
  correct). It reads the whole partial answer (the paper's "model" aggregation). Training
  reads the classifier's logit at every answer character (``--prm-char-labels``; causal
  attention makes the logit at a character the sequence score of the text up to it), so
  one sample gives a label per step. It stops at ``--prm-steps``, ``--prm-minutes`` or once
  the held-out step accuracy reaches ``--prm-target-accuracy``, so that it stays
  informative but imperfect; ``training.json`` records the command, the seconds and the
  validation curve.
* ``prm --prm-kind likelihood`` — the "likelihood" PRM: a logistic regression of verifier
  labels on the newest step's LM log-probability and length, fitted on the LM's own
  samples (``prm_likelihood/prm.json``). It cannot see earlier steps.

Commands that produced the bundled models (one CPU thread each, on a 2-core machine whose
other core ran benchmarks; trained into a staging folder, then copied into the package)::

    .venv/bin/python scripts/train_llm_default.py --stage lm --lm-minutes 14
        # 4000 steps in 621 s, final loss 0.294 (the earlier GPT-2: 0.377)
    .venv/bin/python scripts/train_llm_default.py --stage prm --prm-problems 8000 \
        --prm-extra-layers 2 --prm-freeze-lm --prm-steps 14000 --prm-minutes 28 \
        --prm-target-accuracy 0.98
        # 370 s sampling + 788 s training (14000 steps): 91.1% held-out step accuracy
        # (the earlier GPT-2 token-head PRM: 97.9%; this one plateaued from step 13000)
    .venv/bin/python scripts/train_llm_default.py --stage prm --prm-kind likelihood  # 7 s

``--stage all`` runs the first two.

Run in the background with ``nohup ... > train_llm.log 2>&1 &``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from probinfer.llm.task import DELIMITER, STOP, ArithmeticTask, CharTokenizer

ASSETS = Path(__file__).resolve().parents[1] / "probinfer" / "llm" / "assets"


HIDDEN, HEADS, LAYERS = 64, 2, 3
"""The LM's size: head size ``HIDDEN // HEADS = 32`` (the smallest vLLM's CPU attention
serves)."""
CONTEXT = 128
"""Position limit of the models (``--max-model-len`` of a vLLM server); answers use < 48."""


def _llama(vocab_size: int, **kw):
    """A small Llama configuration. No BOS/EOS ids (Llama's defaults 1 and 2 would be
    characters here): answers end at the stop string, not at an EOS token."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        max_position_embeddings=CONTEXT,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=None,
        **kw,
    )


def fast_tokenizer(tok: CharTokenizer):
    """``tok`` as a ``transformers`` fast tokenizer (``PreTrainedTokenizerFast``) with the
    same ids: WordLevel over ``<pad>`` (id 0) and the characters, each character its own
    pre-token, decoded by concatenation. Without an unknown token, a character outside the
    vocabulary is an error, as with :class:`CharTokenizer`."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": tok.pad_token_id} | {c: tok.encode(c)[0] for c in tok.chars}
    fast = Tokenizer(models.WordLevel(vocab))
    fast.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    fast.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=fast, pad_token="<pad>")


def save_tokenizer(tok: CharTokenizer, out: Path) -> None:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` for ``tok`` into ``out``
    (the class named as ``PreTrainedTokenizerFast``, which transformers 4 and 5 both load),
    and check that the saved tokenizer round-trips every character with ``tok``'s ids."""
    from transformers import AutoTokenizer

    fast = fast_tokenizer(tok)
    fast.save_pretrained(out)
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2))
    loaded = AutoTokenizer.from_pretrained(out, local_files_only=True)
    text = tok.chars + "12+3=15;15-4=11|"
    ids = loaded(text, add_special_tokens=False)["input_ids"]
    if ids != tok.encode(text) or loaded.decode(ids) != text:
        raise RuntimeError(f"the saved tokenizer in {out} does not match the character ids")


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
    from transformers import LlamaForCausalLM

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    task = ArithmeticTask()
    tok = CharTokenizer()
    model = LlamaForCausalLM(_llama(tok.vocab_size))
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
    out = Path(args.out) / "lm"
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    save_tokenizer(tok, out)
    meta = {
        "command": "python " + " ".join(sys.argv),
        "architecture": "LlamaForCausalLM",
        "torch_threads": torch.get_num_threads(),
        "error_rate": args.error_rate,
        "steps": step,
        "seconds": round(time.time() - start),
        "final_loss": ema,
        "seed": args.seed,
        "batch_size": args.batch_size,
    }
    (out / "training.json").write_text(json.dumps(meta, indent=1))
    print("saved", out, meta, flush=True)


def _lm_samples(args, task, lm):
    """The bundled LM's own answers (``--prm-samples`` per problem), sampled step by step
    with the guards of :func:`probinfer.llm.default.default_model_kwargs`.

    Returns ``(problem index, prompt, steps)`` triples.
    """
    import jax

    from probinfer.llm.default import default_model_kwargs
    from probinfer.llm.filtering import sample_rollouts
    from probinfer.llm.protocols import Usage
    from probinfer.llm.ssm import LLMStateSpaceModel

    model = LLMStateSpaceModel(lm, None, **default_model_kwargs())
    key = jax.random.key(args.seed)
    problems = task.problems(args.prm_problems, seed=args.seed + 1000)
    out = []
    for j, prob in enumerate(problems):
        store, _ = sample_rollouts(
            jax.random.fold_in(key, j), model, prob.prompt, args.prm_samples, Usage()
        )
        out += [(j, prob.prompt, list(st)) for st in store.steps]
    return out


def train_prm(args) -> None:
    """The bundled "learned" PRM: the LM's transformer with a one-logit sequence
    classification head, fine-tuned on verifier labels of the LM's own samples
    (whole-prefix scoring)."""
    from transformers import LlamaForSequenceClassification

    from probinfer.llm.hf import HFCausalLM

    torch.manual_seed(args.seed + 1)
    rng = np.random.default_rng(args.seed + 1)
    task = ArithmeticTask()
    lm_dir = Path(args.out) / "lm"
    lm = HFCausalLM.from_pretrained(lm_dir)
    start = time.time()
    samples = _lm_samples(args, task, lm)
    if args.prm_kind == "likelihood":
        _fit_likelihood_prm(args, task, lm, [s[1] for s in samples], [s[2] for s in samples], rng)
        return
    # one example per sample: the text, the index of each step's last character, and the
    # label of each step (every step so far correct, or the step applied correctly)
    label = task.step_locally_correct if args.prm_labels == "local" else task.step_correct
    examples = []
    for j, pr, st in samples:
        ends = np.cumsum([len(x) for x in st]) + len(pr) - 1
        labels = [float(v) for v in label(pr, st)]
        cols, dense = _char_labels(task, pr, st, labels)
        examples.append((j, pr + "".join(st), ends.tolist(), labels, cols, dense))
    final_acc = np.mean([e[3][-1] for e in examples])
    pos = np.mean([v for e in examples for v in e[3]])
    num_labels = sum(len(e[3]) for e in examples)
    max_len = max(len(e[1]) for e in examples)
    sample_seconds = time.time() - start
    print(
        f"prm data: {len(examples)} samples, {num_labels} labelled steps, {pos:.2f} positive, "
        f"final-answer accuracy {final_acc:.3f}, longest {max_len} chars "
        f"({sample_seconds:.0f}s)",
        flush=True,
    )
    # validation on held-out *problems* (a tenth), not only held-out samples
    held = set(rng.permutation(args.prm_problems)[: args.prm_problems // 10].tolist())
    val = [e for e in examples if e[0] in held]
    train = [e for e in examples if e[0] not in held]

    tok = CharTokenizer()
    # The PRM starts from the LM's transformer (it already reads arithmetic) with a new
    # one-logit classification head, as PRMs are usually fine-tuned from a language model.
    # The sequence classifier reads its head at the last token; with causal attention the
    # head at any character is the score of the text up to it (it does not depend on what
    # follows), so training reads it at every step's end and one sample gives a label per
    # step. ``--prm-extra-layers`` new blocks on top of the LM's blocks see the LM's own
    # prediction of every next character and can compare it with the character that follows.
    n_layer = json.loads((lm_dir / "config.json").read_text())["num_hidden_layers"]
    model = LlamaForSequenceClassification.from_pretrained(
        lm_dir,
        num_labels=1,
        num_hidden_layers=n_layer + args.prm_extra_layers,
        local_files_only=True,
    )
    model.config.pad_token_id = tok.pad_token_id
    if args.prm_freeze_lm:  # keep the LM's computation intact; train the new blocks only
        for name, p in model.named_parameters():
            block = name.split(".")[2] if name.startswith("model.layers.") else None
            new_part = name.startswith("score") or (block is not None and int(block) >= n_layer)
            p.requires_grad_(new_part or name.startswith("model.norm"))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.prm_lr, weight_decay=0.01)

    def logits_targets(batch, dense=False):
        """Logits and labels at the steps' last characters (``dense``: at every character
        of the answer, see :func:`_char_labels`)."""
        c, v = (4, 5) if dense else (2, 3)
        x, m, _ = _batch(tok, [e[1] for e in batch], [0] * len(batch))
        # the classifier's logit at every position (its forward pools the last one)
        hidden = model.model(input_ids=x, attention_mask=m).last_hidden_state
        logits = model.score(hidden)[..., 0]
        rows = torch.tensor([i for i, e in enumerate(batch) for _ in e[c]])
        cols = torch.tensor([k for e in batch for k in e[c]])
        target = torch.tensor([y for e in batch for y in e[v]])
        return logits[rows, cols], target

    def validate():
        model.eval()
        right, final_right = [], []
        with torch.no_grad():
            for b in range(0, len(val), 512):
                batch = val[b : b + 512]
                logit, y = logits_targets(batch)
                ok = ((logit > 0) == (y > 0.5)).numpy()
                right.append(ok)
                last = np.cumsum([len(e[3]) for e in batch]) - 1
                final_right.append(ok[last])
        model.train()
        return float(np.concatenate(right).mean()), float(np.concatenate(final_right).mean())

    total = args.prm_steps
    start, step, ema, curve = time.time(), 0, None, []
    while step < total and time.time() - start < 60 * args.prm_minutes:
        idx = rng.integers(0, len(train), size=args.batch_size)
        for g in opt.param_groups:
            g["lr"] = _lr(step, total, args.prm_lr)
        logit, target = logits_targets([train[i] for i in idx], dense=args.prm_char_labels)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, target)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        step += 1
        if step % 1000 == 0:
            acc, acc_final = validate()
            curve.append([step, round(time.time() - start), round(ema, 4), acc, acc_final])
            print(
                f"prm step {step} loss {ema:.4f} validation step accuracy {acc:.3f} "
                f"(final step {acc_final:.3f}) ({time.time() - start:.0f}s)",
                flush=True,
            )
            if args.prm_target_accuracy is not None and acc >= args.prm_target_accuracy:
                break  # informative but imperfect on purpose
    seconds = time.time() - start
    model.eval()
    val_acc, val_acc_final = validate()
    print(f"prm validation step accuracy {val_acc:.3f} (final step {val_acc_final:.3f})")
    out = Path(args.prm_out) if args.prm_out else Path(args.out) / "prm"
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    save_tokenizer(tok, out)
    meta = {
        "command": "python " + " ".join(sys.argv),
        "init": "lm transformer (+ --prm-extra-layers new blocks) and a new one-logit "
        "sequence classification head (LlamaForSequenceClassification)",
        "labels": args.prm_labels,
        "char_labels": args.prm_char_labels,
        "extra_layers": args.prm_extra_layers,
        "freeze_lm": args.prm_freeze_lm,
        "steps": step,
        "batch_size": args.batch_size,
        "lr": args.prm_lr,
        "target_accuracy": args.prm_target_accuracy,
        "seconds": round(seconds),
        "sampling_seconds": round(sample_seconds),
        "torch_threads": torch.get_num_threads(),
        "final_loss": ema,
        "validation_accuracy": val_acc,
        "validation_accuracy_final_step": val_acc_final,
        "validation": "held-out problems (10%), the LM's own samples, label per step",
        "num_train_samples": len(train),
        "num_validation_samples": len(val),
        "num_labelled_steps": num_labels,
        "positive_fraction": float(pos),
        "lm_final_answer_accuracy": float(final_acc),
        "curve": {
            "columns": ["step", "seconds", "loss", "val_acc", "val_acc_final"],
            "rows": curve,
        },
        "seed": args.seed,
    }
    (out / "training.json").write_text(json.dumps(meta, indent=1))
    print("saved", out, {k: v for k, v in meta.items() if k != "curve"}, flush=True)


def _char_labels(task, prompt, steps, labels):
    """Dense training targets: the index of every answer character and its label.

    A character inside step ``k`` is labelled 1 when every earlier step is right and the
    step so far is a prefix of the right step text (e.g. ``"1"`` of ``"12;"``); the last
    character of a step gets the step's own label. The PRM is only read at the steps' last
    characters; the extra labels teach it to check every character against the prefix.
    """
    truth = task.parse(prompt).running_values
    cols, out, pos, ok_before = [], [], len(prompt), True
    for k, s in enumerate(steps):
        right = (
            str(truth[k]) + (DELIMITER if k < len(truth) - 1 else STOP) if k < len(truth) else None
        )
        for i in range(len(s)):
            cols.append(pos + i)
            if i == len(s) - 1:
                out.append(labels[k])
            else:
                out.append(float(ok_before and right is not None and right.startswith(s[: i + 1])))
        pos += len(s)
        ok_before = ok_before and labels[k] > 0.5
    return cols, out


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
    out = Path(args.out) / "prm_likelihood"
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
        choices=["model", "likelihood"],
        default="model",
        help="model: the LM's transformer fine-tuned to score the whole partial answer "
        "(the bundled 'learned' PRM, assets/prm); likelihood: logistic regression on the "
        "newest step's LM log-probability (assets/prm_likelihood)",
    )
    ap.add_argument(
        "--prm-labels",
        choices=["local", "prefix"],
        default="prefix",
        help="label of a step: applied correctly to the previous value, or whole prefix right",
    )
    ap.add_argument(
        "--prm-extra-layers",
        type=int,
        default=0,
        help="transformer blocks added on top of the LM's blocks in the model PRM",
    )
    ap.add_argument(
        "--prm-freeze-lm",
        action="store_true",
        help="train only the extra blocks and the head of the model PRM (LM blocks frozen)",
    )
    ap.add_argument(
        "--prm-char-labels",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="train the model PRM on a label at every answer character, not only at step ends",
    )
    ap.add_argument(
        "--prm-target-accuracy",
        type=float,
        default=None,
        help="stop the model PRM once its held-out step accuracy reaches this",
    )
    ap.add_argument(
        "--out",
        default=str(ASSETS),
        help="assets folder: the models go to its lm/, prm/ and prm_likelihood/",
    )
    ap.add_argument(
        "--prm-out", default=None, help="output directory of the model PRM (default OUT/prm)"
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
