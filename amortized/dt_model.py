"""The Distribution Transformer network (torch): GMM prior tokens in, GMM posterior parameters out.

Architecture (Distribution Transformers, arXiv 2502.02463):

* one token per prior mixture component, embedding ``(log weight, mean, log-diagonal and
  strictly-lower part of the Cholesky factor)`` through an MLP;
* data tokens from one embedding MLP per observation source (sources may have different
  dimensions); a learned "no data" token is always present so an empty data set is valid, and
  the number of observations of each source is embedded as ``log(1 + n)``;
* transformer blocks in which the component tokens self-attend and cross-attend to the data
  tokens, without positional encoding (the output is invariant to the order of the data and
  equivariant to the order of the components);
* a decoder from each component token to ``components_per_prior`` posterior components,
  parametrised *relative to the prior component*: ``logit' = logit - log m + d_logit``,
  ``mean' = mean + L d_mean`` and ``L' = L M`` with ``M`` lower triangular with a positive
  (exponentiated) diagonal. The last layer of the decoder and every residual branch's output
  projection are zero-initialised, so the untrained network returns the prior exactly;
* with ``DTConfig(decoder="natural")``, before that relative correction, a natural-parameter
  update by one learned Gaussian site per observation (:func:`natural_update`): precision and
  precision-mean increments summed over the data, each component reweighted by its log
  marginal likelihood of the sites (the exact form of a conjugate-Gaussian update; the site
  heads are zero-initialised too).

Shapes: ``B`` problems, ``K`` prior components (padded, with a mask), ``D`` parameter dimension,
``n_s`` observations of source ``s`` (padded, with a mask).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from amortized.attention import AttentionProjections
from amortized.model_files import JSONConfig

__all__ = [
    "DECODERS",
    "DTConfig",
    "DTNetwork",
    "RECENTRES",
    "TRANSFORMS",
    "gmm_log_prob",
    "natural_update",
]

#: Output transforms of constrained parameters: the network's GMM lives on the unconstrained
#: ``z``, the parameter is ``theta = inverse(z)``; "log" is for positive parameters.
TRANSFORMS = ("identity", "log")

#: Posterior parametrisations of :class:`DTConfig` (``decoder``).
DECODERS = ("relative", "natural")

#: Symmetries of the likelihood the network can be made exactly equivariant to
#: (:class:`DTConfig` ``recentre``).
RECENTRES = ("none", "log-scale")


@dataclass(frozen=True)
class DTConfig(JSONConfig):
    """Architecture of a Distribution Transformer (everything needed to rebuild the module).

    Parameters
    ----------
    param_dim : int
        Dimension ``D`` of the parameter.
    source_dims : tuple of int
        Dimension of one observation token of each data source (e.g. ``(3,)`` for ``(x1, x2,
        y)`` pairs of a linear regression).
    d_model, n_heads, n_layers, d_ff : int
        Transformer width, heads, blocks and feed-forward width.
    components_per_prior : int
        Posterior components emitted per prior component (``K_out = m K``).
    transforms : tuple of str
        One of :data:`TRANSFORMS` per parameter coordinate (``()`` means all "identity").
    decoder : str
        One of :data:`DECODERS`. ``"relative"``: each posterior component is its prior
        component moved and rescaled by the component token. ``"natural"``: first a
        natural-parameter (Gaussian-site) update, ``precision' = precision + sum_i S_i`` and
        ``precision-mean' = precision-mean + sum_i h_i`` with one learned site ``(S_i, h_i)``
        per observation (from its linear and quadratic features), each weight reweighted by
        the component's log marginal likelihood of the sites; then the relative correction.
        A conjugate-Gaussian update is exactly of this form.
    site_gain : float
        Fixed factor on the site heads' outputs (``"natural"`` only): sites grow to
        ``O(n x^2 / noise^2)``, and this acts as a larger learning rate for those heads.
    recentre : str
        One of :data:`RECENTRES`. ``"log-scale"`` (``param_dim == 1``): the parameter is
        ``z = log sigma^2`` of a scale family of the data (every observation is ``sigma`` times
        a draw that does not depend on ``sigma``, e.g. ``y ~ N(0, sigma^2)``). Then shifting
        the prior by ``-c`` and dividing the data by ``exp(c / 2)`` shifts the posterior by
        ``-c``, for any ``c``. Each problem is recentred at its prior mean ``c`` and the output
        shifted back: the network is exactly equivariant to the prior's location, which it no
        longer has to learn (nor extrapolate in the absolute scale of the data).
    """

    param_dim: int = 2
    source_dims: tuple[int, ...] = (3,)
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 3
    d_ff: int = 128
    components_per_prior: int = 1
    transforms: tuple[str, ...] = ()
    decoder: str = "relative"
    site_gain: float = 10.0
    recentre: str = "none"

    def __post_init__(self):
        object.__setattr__(self, "source_dims", tuple(self.source_dims))
        object.__setattr__(self, "transforms", tuple(self.transforms))
        for name in ("param_dim", "d_model", "n_heads", "n_layers", "d_ff", "components_per_prior"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not self.source_dims or not all(isinstance(v, int) and v >= 1 for v in self.source_dims):
            raise ValueError(
                f"source_dims must be a non-empty tuple of positive ints, got {self.source_dims!r}"
            )
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        if not (isinstance(self.site_gain, (int, float)) and self.site_gain > 0):
            raise ValueError(f"site_gain must be a positive number, got {self.site_gain!r}")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {self.decoder!r}")
        if self.recentre not in RECENTRES:
            raise ValueError(f"recentre must be one of {RECENTRES}, got {self.recentre!r}")
        if self.recentre == "log-scale" and self.param_dim != 1:
            raise ValueError(f"recentre='log-scale' needs param_dim 1, got {self.param_dim}")
        if self.transforms and (
            len(self.transforms) != self.param_dim
            or any(t not in TRANSFORMS for t in self.transforms)
        ):
            raise ValueError(
                f"transforms must be empty or have param_dim ({self.param_dim}) entries from "
                f"{TRANSFORMS}, got {self.transforms!r}"
            )

    @property
    def n_tril(self) -> int:
        """Number of strictly-lower Cholesky entries, ``D (D - 1) / 2``."""
        return self.param_dim * (self.param_dim - 1) // 2


def _mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.GELU(), nn.Linear(d_hidden, d_out))


def _zero_(layer: nn.Linear) -> None:
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)


class _Attention(AttentionProjections):
    """Multi-head attention with a key mask; the output projection starts at zero."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__(d_model, n_heads)
        _zero_(self.out)

    def forward(self, h: torch.Tensor, ctx: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """``h (B, K, d)`` attends to ``ctx (B, N, d)`` where ``key_mask (B, N)`` is True."""
        key, val = self.keys_values(ctx)
        mask = key_mask[:, None, None, :]
        return self.merge(F.scaled_dot_product_attention(self.queries(h), key, val, attn_mask=mask))


class _Block(nn.Module):
    """Component self-attention, cross-attention to the data, feed-forward (pre-LayerNorm)."""

    def __init__(self, c: DTConfig):
        super().__init__()
        self.self_attn = _Attention(c.d_model, c.n_heads)
        self.cross_attn = _Attention(c.d_model, c.n_heads)
        self.ln_ff = nn.LayerNorm(c.d_model)
        self.ff = _mlp(c.d_model, c.d_ff, c.d_model)
        _zero_(self.ff[-1])

    def forward(self, h, comp_mask, data, data_mask):
        h = h + self.self_attn(h, h, comp_mask)
        h = h + self.cross_attn(h, data, data_mask)
        return h + self.ff(self.ln_ff(h))


def _quadratic_features(tok: torch.Tensor) -> torch.Tensor:
    """``(tok, tok_i tok_j for i <= j)``: the linear and quadratic features of a token."""
    d = tok.shape[-1]
    rows, cols = torch.triu_indices(d, d, device=tok.device)
    return torch.cat([tok, tok[..., rows] * tok[..., cols]], dim=-1)


class _SiteHead(nn.Module):
    """One observation's Gaussian site ``(S_i, h_i)`` from its linear and quadratic features.

    A linear map plus an MLP of the features, both zero-initialised (the untrained network adds
    no site). Output: the ``D (D + 1) / 2`` lower entries of the symmetric ``S_i``, then ``h_i``.
    """

    def __init__(self, d_src: int, d_hidden: int, param_dim: int, gain: float):
        super().__init__()
        self.gain = float(gain)
        d_in = d_src + d_src * (d_src + 1) // 2
        d_out = param_dim * (param_dim + 1) // 2 + param_dim
        self.linear = nn.Linear(d_in, d_out)
        self.mlp = _mlp(d_in, d_hidden, d_out)
        _zero_(self.linear)
        _zero_(self.mlp[-1])

    def forward(self, tok: torch.Tensor) -> torch.Tensor:
        f = _quadratic_features(tok)
        return self.gain * (self.linear(f) + self.mlp(f))


def natural_update(logits, means, scale_trils, d_prec, d_eta):
    """Multiply each Gaussian component by ``exp(d_eta^T theta - theta^T d_prec theta / 2)``.

    Parameters
    ----------
    logits : (..., K)
    means : (..., K, D)
    scale_trils : (..., K, D, D)
        Lower Cholesky factors ``L`` of the component covariances.
    d_prec : (..., K, D, D)
        Symmetric precision increments (broadcastable). A site of a log-concave likelihood
        has ``d_prec >= 0``; where the smallest eigenvalue ``lam`` of ``L^T d_prec L`` is
        negative, ``-lam`` times the prior precision is added (so the update never widens a
        component and the result stays well defined).
    d_eta : (..., K, D)
        Precision-mean increments.

    Returns
    -------
    (logits', means', scale_trils')
        ``precision' = L^-T L^-1 + d_prec``, ``precision' mean' = L^-T L^-1 mean + d_eta`` and
        ``logits' = logits + log int N(theta | mean, L L^T) site(theta) dtheta`` (the log
        marginal likelihood of the site, up to a constant common to all components). Zero
        increments return the inputs exactly.
    """
    d = means.shape[-1]
    eye = torch.eye(d, dtype=means.dtype, device=means.device)
    lt = scale_trils.transpose(-1, -2)
    g = lt @ d_prec @ scale_trils  # L^T dP L
    g = 0.5 * (g + g.transpose(-1, -2))
    lift = F.relu(-torch.linalg.eigvalsh(g)[..., 0])  # 0 for a PSD increment
    g = g + lift[..., None, None] * eye
    # A = I + L^T dP L = R R^T with R upper triangular (Cholesky of the flipped matrix), so
    # that Sigma' = L A^-1 L^T = (L R^-T)(L R^-T)^T with L R^-T lower triangular
    r = torch.linalg.cholesky((eye + g).flip(-1, -2)).flip(-1, -2)
    new_trils = torch.linalg.solve_triangular(
        r.transpose(-1, -2), scale_trils, upper=False, left=False
    )
    # dP mean with the lifted dP = L^-T g L^-1
    w = torch.linalg.solve_triangular(scale_trils, means[..., None], upper=False)
    dp_mean = torch.linalg.solve_triangular(lt, g @ w, upper=True)[..., 0]
    resid = d_eta - dp_mean
    shift = (new_trils @ (new_trils.transpose(-1, -2) @ resid[..., None]))[..., 0]
    new_means = means + shift
    log_ml = (
        -torch.log(torch.diagonal(r, dim1=-2, dim2=-1)).sum(-1)
        + 0.5 * (resid * shift).sum(-1)
        + (d_eta * means).sum(-1)
        - 0.5 * (w[..., 0] * (g @ w)[..., 0]).sum(-1)
    )
    return logits + log_ml, new_means, new_trils


class DTNetwork(nn.Module):
    """Maps a padded GMM prior and padded data sources to the posterior GMM's parameters."""

    def __init__(self, config: DTConfig):
        super().__init__()
        self.config = c = config
        d_comp = 1 + 2 * c.param_dim + c.n_tril
        self.comp_encoder = _mlp(d_comp, c.d_ff, c.d_model)
        self.source_encoders = nn.ModuleList(_mlp(ds, c.d_ff, c.d_model) for ds in c.source_dims)
        self.count_encoder = nn.Linear(len(c.source_dims), c.d_model)
        self.null_token = nn.Parameter(torch.zeros(1, 1, c.d_model))
        self.blocks = nn.ModuleList(_Block(c) for _ in range(c.n_layers))
        self.copy_embedding = nn.Parameter(torch.zeros(c.components_per_prior, c.d_model))
        self.ln_out = nn.LayerNorm(c.d_model)
        self.decoder = _mlp(c.d_model, c.d_ff, d_comp)
        _zero_(self.decoder[-1])
        nn.init.normal_(self.null_token, std=0.02)
        if c.decoder == "natural":
            self.site_heads = nn.ModuleList(
                _SiteHead(ds, c.d_ff, c.param_dim, c.site_gain) for ds in c.source_dims
            )
        if c.components_per_prior > 1:  # breaks the symmetry between copies once trained
            nn.init.normal_(self.copy_embedding, std=1.0)

    def forward(
        self,
        logits: torch.Tensor,
        means: torch.Tensor,
        scale_trils: torch.Tensor,
        comp_mask: torch.Tensor,
        sources: list[tuple[torch.Tensor, torch.Tensor]],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Posterior ``(logits (B, mK), means (B, mK, D), scale_trils (B, mK, D, D))``.

        Parameters
        ----------
        logits : (B, K)
            Normalised prior log weights (padded components: any finite value).
        means : (B, K, D)
        scale_trils : (B, K, D, D)
            Lower Cholesky factors with a positive diagonal (padded components: identity).
        comp_mask : (B, K) bool
            True for real components.
        sources : list of ``(tokens (B, n_s, d_s), mask (B, n_s) bool)``
            One entry per data source, in the order of ``config.source_dims``.

        Output logits of padded components are ``-inf``; they are normalised over the rest.
        """
        c = self.config
        d = c.param_dim
        if len(sources) != len(c.source_dims):
            raise ValueError(f"expected {len(c.source_dims)} data sources, got {len(sources)}")
        b, k = logits.shape
        centre = None
        if c.recentre == "log-scale":  # prior mean of z; the data divided by exp(centre / 2)
            w = torch.softmax(torch.where(comp_mask, logits, float("-inf")), dim=-1)
            centre = (w[..., None] * means).sum(1)  # (B, 1)
            means = means - centre[:, None, :]
            scale = torch.exp(-0.5 * centre)[:, :, None]  # (B, 1, 1)
            sources = [(tok * scale, msk) for tok, msk in sources]
        diag = torch.diagonal(scale_trils, dim1=-2, dim2=-1)
        rows, cols = torch.tril_indices(d, d, offset=-1, device=means.device)
        lower = scale_trils[..., rows, cols]
        safe_logits = torch.where(comp_mask, logits, torch.zeros_like(logits))
        comp = torch.cat([safe_logits[..., None], means, torch.log(diag), lower], dim=-1)
        h = self.comp_encoder(comp)

        tokens = [self.null_token.expand(b, 1, -1)]
        masks = [torch.ones(b, 1, dtype=torch.bool, device=means.device)]
        counts = []
        for enc, (tok, msk) in zip(self.source_encoders, sources):
            tokens.append(enc(tok))
            masks.append(msk)
            counts.append(torch.log1p(msk.sum(-1, dtype=means.dtype)))
        data = torch.cat(tokens, dim=1)
        data_mask = torch.cat(masks, dim=1)
        h = h + self.count_encoder(torch.stack(counts, dim=-1))[:, None, :]

        for block in self.blocks:
            h = block(h, comp_mask, data, data_mask)

        if c.decoder == "natural":
            n_sym = d * (d + 1) // 2
            site = 0.0
            for head, (tok, msk) in zip(self.site_heads, sources):
                site = site + (head(tok) * msk[..., None]).sum(1)  # (B, n_sym + D)
            rows, cols = torch.tril_indices(d, d, device=means.device)
            d_prec = means.new_zeros(b, d, d)
            d_prec[:, rows, cols] = site[:, :n_sym]
            d_prec = (
                d_prec
                + d_prec.transpose(-1, -2)
                - torch.diag_embed(torch.diagonal(d_prec, dim1=-2, dim2=-1))
            )
            logits, means, scale_trils = natural_update(
                logits, means, scale_trils, d_prec[:, None], site[:, None, n_sym:]
            )
            logits = torch.where(comp_mask, logits, torch.zeros_like(logits))

        m = c.components_per_prior
        hc = h[:, :, None, :] + self.copy_embedding  # (B, K, m, d_model)
        delta = self.decoder(self.ln_out(hc))  # zero at initialisation
        d_logit = delta[..., 0]
        d_mean = delta[..., 1 : 1 + d]
        d_logdiag = delta[..., 1 + d : 1 + 2 * d]
        d_lower = delta[..., 1 + 2 * d :]

        out_logits = logits[:, :, None] - math.log(m) + d_logit
        out_logits = torch.where(comp_mask[:, :, None], out_logits, float("-inf"))
        base_tril = scale_trils[:, :, None]  # (B, K, 1, D, D)
        out_means = means[:, :, None] + (base_tril @ d_mean[..., None])[..., 0]
        factor = torch.diag_embed(torch.exp(d_logdiag))
        if d > 1:
            factor = factor + _strict_lower(d_lower, d)
        out_trils = base_tril @ factor
        out_logits = torch.log_softmax(out_logits.reshape(b, k * m), dim=-1)
        if centre is not None:
            out_means = out_means + centre[:, None, None, :]
        return out_logits, out_means.reshape(b, k * m, d), out_trils.reshape(b, k * m, d, d)


def _strict_lower(values: torch.Tensor, d: int) -> torch.Tensor:
    """Strictly-lower-triangular ``(..., D, D)`` matrix from its ``D (D - 1) / 2`` entries."""
    rows, cols = torch.tril_indices(d, d, offset=-1, device=values.device)
    out = values.new_zeros(values.shape[:-1] + (d, d))
    out[..., rows, cols] = values
    return out


def gmm_log_prob(
    logits: torch.Tensor, means: torch.Tensor, scale_trils: torch.Tensor, value: torch.Tensor
) -> torch.Tensor:
    """``log sum_k w_k N(value | mean_k, L_k L_k^T)`` for ``value (B, D)`` or ``(B, S, D)``.

    Returns ``(B,)`` or ``(B, S)`` (``S`` points per mixture). ``-inf`` logits (padded
    components) contribute nothing.
    """
    pts = value if value.dim() == 3 else value[:, None, :]
    diff = (pts[:, :, None, :] - means[:, None])[..., None]  # (B, S, K, D, 1)
    z = torch.linalg.solve_triangular(scale_trils[:, None], diff, upper=False)[..., 0]
    half_logdet = torch.log(torch.diagonal(scale_trils, dim1=-2, dim2=-1)).sum(-1)
    d = means.shape[-1]
    comp = -0.5 * (z**2).sum(-1) - half_logdet[:, None] - 0.5 * d * math.log(2 * math.pi)
    out = torch.logsumexp(logits[:, None] + comp, dim=-1)
    return out if value.dim() == 3 else out[:, 0]
