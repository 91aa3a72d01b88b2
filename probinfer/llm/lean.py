"""A lean forward pass for GPT-2 models on top of cached key/value rows.

The bundled LM and PRM are tiny GPT-2 models, for which transformers' generic forward
(output capturing, configuration look-ups, cache objects, attention-mask construction) costs
about twice the arithmetic of a decoding step. :func:`lean_forward` computes the same
function with the model's own modules (embeddings, layer norms, MLPs, heads) and one
``scaled_dot_product_attention`` per layer, taking and returning plain ``(keys, values)``
tensors per layer, and a boolean mask built once per call.

It is used only for configurations it reproduces exactly (:func:`supports`: GPT-2 causal
LMs and token classifiers, self-attention only, default attention scaling, eval mode);
every other model goes through transformers' forward. The tests compare it with the
model's forward on padded, masked, cached batches.
"""

from __future__ import annotations

__all__ = ["lean_forward", "supports"]

_HEADS = {"GPT2LMHeadModel": "lm_head", "GPT2ForTokenClassification": "classifier"}


def _conv1d(layer, x):
    """transformers' ``Conv1D`` (a linear layer with a transposed weight)."""
    import torch

    out = torch.addmm(layer.bias, x.reshape(-1, x.shape[-1]), layer.weight)
    return out.view(*x.shape[:-1], layer.weight.shape[1])


def _norm(layer, x):
    import torch.nn.functional as F

    return F.layer_norm(x, layer.normalized_shape, layer.weight, layer.bias, layer.eps)


def _act(module, x):
    """GPT-2's ``gelu_new`` inline (the same operations as transformers' ``NewGELU``);
    any other activation through its module."""
    import math

    import torch

    if type(module).__name__ == "NewGELUActivation":
        c = math.sqrt(2.0 / math.pi)
        return 0.5 * x * (1.0 + torch.tanh(c * (x + 0.044715 * torch.pow(x, 3.0))))
    return module(x)


def supports(model) -> bool:
    """Whether :func:`lean_forward` reproduces ``model``'s forward."""
    cfg = getattr(model, "config", None)
    return (
        type(model).__name__ in _HEADS
        and getattr(cfg, "model_type", None) == "gpt2"
        and getattr(cfg, "scale_attn_weights", False)
        and not getattr(cfg, "scale_attn_by_inverse_layer_idx", True)
        and not getattr(cfg, "reorder_and_upcast_attn", True)
        and not getattr(cfg, "add_cross_attention", True)
        and not model.training
    )


def lean_forward(model, ids, mask, position, layers, *, last: bool = False):
    """``model``'s output on ``ids`` after the cached ``layers``.

    Parameters
    ----------
    model
        A model for which :func:`supports` holds.
    ids, position
        ``(b, w)`` token ids and position ids of the new tokens.
    mask
        ``(b, L + w)`` attention mask (1: attend) over the ``L`` cached and ``w`` new
        positions.
    layers
        Per layer ``(keys, values)`` of shape ``(b, heads, L, head_dim)``, or ``()``.
    last
        Return the head's output at the last position only (``(b, out)``).

    Returns
    -------
    out, layers
        The head's output (``(b, w, out)``, or ``(b, out)`` with ``last``) and the new
        ``(keys, values)`` per layer (``L + w`` positions; the inputs are not modified).
    """
    if ids.shape[1] == 1 and layers:
        return _decode(model, ids, mask, position, layers, last)
    return _forward(model, ids, mask, position, layers, last)


def _forward(model, ids, mask, position, layers, last: bool):
    """:func:`lean_forward` for any number of new tokens per row."""
    import torch
    import torch.nn.functional as F

    tr = model.transformer
    cfg = model.config
    b, w = ids.shape
    heads = cfg.n_head
    dim = cfg.n_embd // heads
    past = layers[0][0].shape[2] if layers else 0
    # query q (at absolute column past + q) sees key k when the key is unmasked and k <= it;
    # it always sees itself, so a padding query is never fully masked (its output is unused)
    cols = torch.arange(past + w, device=ids.device)
    rows = torch.arange(w, device=ids.device)[:, None] + past
    allowed = (mask.bool()[:, None, :] & (cols[None, :] <= rows)[None]) | (cols == rows)[None]
    allowed = allowed[:, None]  # broadcast over heads
    x = F.embedding(ids, tr.wte.weight) + F.embedding(position, tr.wpe.weight)
    new = []
    for i, block in enumerate(tr.h):
        h = _norm(block.ln_1, x)
        q, k, v = _conv1d(block.attn.c_attn, h).split(cfg.n_embd, dim=2)
        q = q.view(b, w, heads, dim).transpose(1, 2)
        k = k.view(b, w, heads, dim).transpose(1, 2)
        v = v.view(b, w, heads, dim).transpose(1, 2)
        if layers:
            k = torch.cat([layers[i][0], k], 2)
            v = torch.cat([layers[i][1], v], 2)
        new.append((k, v))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        x = x + _conv1d(block.attn.c_proj, a.transpose(1, 2).reshape(b, w, cfg.n_embd))
        mlp = block.mlp
        x = x + _conv1d(mlp.c_proj, _act(mlp.act, _conv1d(mlp.c_fc, _norm(block.ln_2, x))))
    x = _norm(tr.ln_f, x)
    if last:
        x = x[:, -1]
    return getattr(model, _HEADS[type(model).__name__])(x), tuple(new)


def _decode(model, ids, mask, position, layers, last: bool):
    """:func:`lean_forward` for one new token per row after cached ``layers`` (a decoding
    step, most of a generation's forward passes): the same operations on ``(b, d)``
    activations, without the reshapes and the causal part of the mask that one query
    position does not need (it sees every unmasked cached position and itself)."""
    import torch
    import torch.nn.functional as F

    tr = model.transformer
    cfg = model.config
    b, d = ids.shape[0], cfg.n_embd
    heads = cfg.n_head
    dim = d // heads
    allowed = mask.bool()
    allowed[:, -1] = True  # a padding query attends to itself (its output is unused)
    allowed = allowed[:, None, None, :]
    x = F.embedding(ids[:, 0], tr.wte.weight) + F.embedding(position[:, 0], tr.wpe.weight)
    new = []
    for i, block in enumerate(tr.h):
        attn = block.attn
        h = _norm(block.ln_1, x)
        qkv = torch.addmm(attn.c_attn.bias, h, attn.c_attn.weight)
        q, k, v = qkv.split(d, dim=1)
        k = torch.cat([layers[i][0], k.view(b, heads, 1, dim)], 2)
        v = torch.cat([layers[i][1], v.view(b, heads, 1, dim)], 2)
        new.append((k, v))
        a = F.scaled_dot_product_attention(q.view(b, heads, 1, dim), k, v, attn_mask=allowed)
        x = x + torch.addmm(attn.c_proj.bias, a.view(b, d), attn.c_proj.weight)
        mlp = block.mlp
        hid = _act(mlp.act, torch.addmm(mlp.c_fc.bias, _norm(block.ln_2, x), mlp.c_fc.weight))
        x = x + torch.addmm(mlp.c_proj.bias, hid, mlp.c_proj.weight)
    x = _norm(tr.ln_f, x)
    out = getattr(model, _HEADS[type(model).__name__])(x)
    return (out if last else out[:, None]), tuple(new)
