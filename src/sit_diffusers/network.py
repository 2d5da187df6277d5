"""The SiT network (Ma et al. 2024, arXiv 2401.08740) in plain torch: its layers, its forward and its config.

The network is the DiT backbone (Peebles & Xie 2023, arXiv 2212.09748) unchanged: patch embedding plus a
frozen 2-D sin-cos position table, a sinusoidal embedding of the raw SiT time ``t`` in [0, 1]
(``t = 0`` noise, ``t = 1`` data), a class embedding with a null class for classifier-free guidance,
``depth`` adaLN-Zero transformer blocks and an adaLN final layer. It predicts; it never guides or samples.

This module is the one copy of the network. :class:`SiTNetworkMixin` holds the layers and the forward; two
classes use it with the same state-dict keys and the same numbers:

* :class:`SiTNetwork` (``nn.Module``, torch only, attention by ``F.scaled_dot_product_attention``): what
  ``sit-generate`` runs without importing diffusers (:mod:`sit_diffusers.light`);
* ``SiTTransformer2DModel`` (:mod:`sit_diffusers.modeling_sit`): the diffusers model, whose attention goes
  through diffusers' dispatcher so that its backends, hooks and adapters reach it.

Numerics follow the official ``models.py`` of github willisma/SiT exactly (parity <= 1e-5 relative in
float32, ``tests/test_modeling_sit.py``). Imports only torch, safetensors and this package's torch-only
modules.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .validation import InputError, check_float, check_int

__all__ = [
    "SIT_CONFIGS",
    "SiTBlock",
    "SiTConfig",
    "SiTNetwork",
    "SiTNetworkMixin",
    "check_config",
    "get_2d_sincos_pos_embed",
    "timestep_embedding",
]

#: Weights file of a saved transformer folder (diffusers' ``SAFETENSORS_WEIGHTS_NAME``).
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
CONFIG_NAME = "config.json"


#################################################################################
#                                Named configurations                           #
#################################################################################

SIT_CONFIGS: dict[str, dict[str, int]] = {
    "SiT-XL/2": {"depth": 28, "hidden_size": 1152, "patch_size": 2, "num_heads": 16},
    "SiT-XL/4": {"depth": 28, "hidden_size": 1152, "patch_size": 4, "num_heads": 16},
    "SiT-XL/8": {"depth": 28, "hidden_size": 1152, "patch_size": 8, "num_heads": 16},
    "SiT-L/2": {"depth": 24, "hidden_size": 1024, "patch_size": 2, "num_heads": 16},
    "SiT-L/4": {"depth": 24, "hidden_size": 1024, "patch_size": 4, "num_heads": 16},
    "SiT-L/8": {"depth": 24, "hidden_size": 1024, "patch_size": 8, "num_heads": 16},
    "SiT-B/2": {"depth": 12, "hidden_size": 768, "patch_size": 2, "num_heads": 12},
    "SiT-B/4": {"depth": 12, "hidden_size": 768, "patch_size": 4, "num_heads": 12},
    "SiT-B/8": {"depth": 12, "hidden_size": 768, "patch_size": 8, "num_heads": 12},
    "SiT-S/2": {"depth": 12, "hidden_size": 384, "patch_size": 2, "num_heads": 6},
    "SiT-S/4": {"depth": 12, "hidden_size": 384, "patch_size": 4, "num_heads": 6},
    "SiT-S/8": {"depth": 12, "hidden_size": 384, "patch_size": 8, "num_heads": 6},
}
"""Architectures of the paper (Table 1 of DiT / SiT): depth, width, patch size and heads per name."""


def check_config(
    sample_size: Any, patch_size: Any, in_channels: Any, hidden_size: Any, depth: Any, num_heads: Any,
    mlp_ratio: Any, class_dropout_prob: Any, num_classes: Any, learn_sigma: Any,
) -> None:
    """Refuse an architecture that cannot be built or would build a silently wrong model (``InputError``)."""
    for name, value in (("sample_size", sample_size), ("patch_size", patch_size), ("in_channels", in_channels),
                        ("hidden_size", hidden_size), ("depth", depth), ("num_heads", num_heads),
                        ("num_classes", num_classes)):
        check_int(name, value, minimum=1)
    if sample_size % patch_size:
        raise InputError(f"sample_size {sample_size} is not divisible by patch_size {patch_size}")
    if hidden_size % num_heads:
        raise InputError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
    if hidden_size % 4:
        raise InputError(f"hidden_size must be a multiple of 4 (2-D sin-cos position table), got {hidden_size}")
    check_float("mlp_ratio", mlp_ratio, minimum=0.0, min_inclusive=False)
    if int(hidden_size * mlp_ratio) < 1:
        raise InputError(f"mlp_ratio {mlp_ratio} leaves an MLP of width 0 at hidden_size {hidden_size}")
    check_float("class_dropout_prob", class_dropout_prob, minimum=0.0, maximum=1.0, max_inclusive=False)
    if not isinstance(learn_sigma, bool):
        raise InputError(f"learn_sigma must be True or False, got {learn_sigma!r}")


@dataclass(frozen=True)
class SiTConfig:
    """The architecture, as ``transformer/config.json`` stores it (``SiTTransformer2DModel``'s arguments).

    Args: see ``SiTTransformer2DModel``. Checked on construction (:func:`check_config`).
    """

    sample_size: int = 32
    patch_size: int = 2
    in_channels: int = 4
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    class_dropout_prob: float = 0.1
    num_classes: int = 1000
    learn_sigma: bool = True

    def __post_init__(self) -> None:
        check_config(**asdict(self))

    @classmethod
    def from_dict(cls, config: dict[str, Any], where: str = "config") -> SiTConfig:
        """From a diffusers config dict: ``_``-keys (``_class_name``, ``_diffusers_version``) are skipped, a
        missing key takes its default (as diffusers does) and an unknown key is an ``InputError``."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(k for k in config if not k.startswith("_") and k not in known)
        if unknown:
            raise InputError(f"{where} has unknown SiT transformer key(s) {unknown}; valid: {sorted(known)}")
        return cls(**{k: v for k, v in config.items() if k in known})


#################################################################################
#                        Fixed embeddings (time, position)                       #
#################################################################################


def timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of the SiT time, as GLIDE / DiT / SiT compute it.

    ``emb = [cos(t * f_0), ..., cos(t * f_{h-1}), sin(t * f_0), ..., sin(t * f_{h-1})]`` with
    ``h = dim // 2`` and ``f_i = exp(-ln(max_period) * i / h)`` (exponent divided by ``h``, not ``h - 1``
    as diffusers' ``get_timestep_embedding`` with ``downscale_freq_shift=1``). ``t`` is the raw time in
    [0, 1] (not multiplied by 1000). Always computed in float32; an odd ``dim`` gets a zero column.

    Args:
        t: times, shape ``(N,)``.
        dim: embedding width.
        max_period: controls the lowest frequency.

    Returns:
        float32 tensor of shape ``(N, dim)``.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )  # (h,)
    args = t[:, None].float() * freqs[None]  # (N, h)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (N, 2h)
    if dim % 2:
        emb = F.pad(emb, (0, 1))  # (N, dim)
    return emb


def _sincos_1d(embed_dim: int, pos: torch.Tensor) -> torch.Tensor:
    """1-D MAE table: ``[sin(pos * w_j), cos(pos * w_j)]`` with ``w_j = 10000^(-j / (embed_dim / 2))``."""
    omega = torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0)  # (D/2,)
    omega = 1.0 / 10000**omega  # (D/2,)
    out = pos.reshape(-1)[:, None].double() * omega[None]  # (M, D/2)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)  # (M, D)


def get_2d_sincos_pos_embed(embed_dim: int, grid_size: int) -> torch.Tensor:
    """Frozen 2-D sin-cos position table of MAE / DiT / SiT, computed in float64.

    Token ``k = i * grid_size + j`` (row ``i``, column ``j``) gets
    ``[emb_1d(j) (embed_dim/2 values), emb_1d(i) (embed_dim/2 values)]``: the official code meshes
    ``(grid_w, grid_h)`` so the first half encodes the column index.

    Returns:
        float64 tensor of shape ``(grid_size**2, embed_dim)``.
    """
    if embed_dim % 4:
        raise ValueError(f"embed_dim must be a multiple of 4 for the 2-D sin-cos table, got {embed_dim}")
    coords = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")  # (G, G) each
    return torch.cat([_sincos_1d(embed_dim // 2, cols), _sincos_1d(embed_dim // 2, rows)], dim=1)


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation ``x * (1 + scale) + shift``; ``x`` (N, T, D), ``shift``/``scale`` (N, 1, D)."""
    return torch.addcmul(shift, x, 1 + scale)  # (N, T, D)


#################################################################################
#                                    Sub-modules                                #
#################################################################################


class PatchEmbed(nn.Module):
    """Non-overlapping ``p x p`` patches -> tokens: a strided Conv2d then flatten, ``(N, C, H, W) -> (N, T, D)``."""

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (N, T, D), T = (H/p) * (W/p)


class TimestepEmbedder(nn.Module):
    """``t -> Linear(SiLU(Linear(timestep_embedding(t, 256))))``, ``(N,) -> (N, D)``."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256) -> None:
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.linear_1 = nn.Linear(frequency_embedding_size, hidden_size, bias=True)
        self.linear_2 = nn.Linear(hidden_size, hidden_size, bias=True)

    def forward(self, t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Embed ``t`` (N,); the float32 sinusoids are cast to ``dtype``, the dtype the network computes in.

        ``dtype`` is the activations' dtype (the model passes its token dtype), not the stored weights':
        under layerwise casting the weights sit in float8 / bfloat16 and are cast up only inside each Linear.
        ``None`` keeps float32.
        """
        t_freq = timestep_embedding(t, self.frequency_embedding_size)  # (N, 256) float32
        if dtype is not None:
            t_freq = t_freq.to(dtype)  # (N, 256)
        return self.linear_2(F.silu(self.linear_1(t_freq)))  # (N, D)


class LabelEmbedder(nn.Module):
    """Class label -> vector, with label dropout to the null class ``num_classes`` (for CFG training).

    The table has ``num_classes + 1`` rows when ``dropout_prob > 0`` (the last row is the null class),
    else ``num_classes`` rows, as the official ``LabelEmbedder``.
    """

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), hidden_size)

    def forward(self, labels: torch.Tensor, force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Embed ``labels`` (N,); in training mode drop each to the null class with prob ``dropout_prob``.

        ``force_drop_ids`` (N,): where it equals 1 the label is replaced by the null class (train or eval).
        """
        if (self.training and self.dropout_prob > 0) or force_drop_ids is not None:
            if force_drop_ids is None:
                drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob  # (N,)
            else:
                drop = force_drop_ids == 1  # (N,)
            labels = torch.where(drop, self.num_classes, labels)  # (N,)
        return self.embedding_table(labels)  # (N, D)


def split_qkv(attn: SelfAttention, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fused projection ``to_qkv`` split per head: three strided views ``(N, T, H, Dh)``."""
    n, t, _ = hidden_states.shape
    qkv = attn.to_qkv(hidden_states).view(n, t, 3, attn.heads, attn.head_dim)  # (N, T, 3, H, Dh)
    query, key, value = qkv.unbind(2)  # 3 x (N, T, H, Dh), views
    return query, key, value


class SelfAttention(nn.Module):
    """Multi-head self-attention: ``to_qkv`` (D -> 3D), ``softmax(q k^T / sqrt(Dh)) v`` per head, ``to_out``
    (D -> D), as timm's ``Attention`` of the official code.

    The products run in ``F.scaled_dot_product_attention`` on ``(N, H, T, Dh)`` views of the fused
    projection: the call diffusers' ``"native"`` attention backend makes, so the same kernel and the same
    numbers as ``SiTTransformer2DModel`` (whose ``SiTAttention`` subclasses this one and dispatches instead).
    """

    def __init__(self, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.to_qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=True)
        self.to_out = nn.Linear(hidden_size, hidden_size, bias=True)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        n, t, d = hidden_states.shape
        query, key, value = (x.permute(0, 2, 1, 3) for x in split_qkv(self, hidden_states))  # (N, H, T, Dh)
        out = F.scaled_dot_product_attention(query, key, value).permute(0, 2, 1, 3)  # (N, T, H, Dh)
        return self.to_out(out.reshape(n, t, d))  # (N, T, D)


class FeedForward(nn.Module):
    """``Linear -> GELU(tanh approximation) -> Linear``, width ``int(hidden_size * mlp_ratio)``."""

    def __init__(self, hidden_size: int, mlp_ratio: float) -> None:
        super().__init__()
        inner = int(hidden_size * mlp_ratio)
        self.linear_1 = nn.Linear(hidden_size, inner, bias=True)
        self.linear_2 = nn.Linear(inner, hidden_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.gelu(self.linear_1(x), approximate="tanh"))  # (N, T, D)


class SiTBlock(nn.Module):
    """adaLN-Zero transformer block (DiT Fig. 3).

    With ``(shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp) = Linear(SiLU(c))``::

        x = x + gate_msa * Attn(LN(x) * (1 + scale_msa) + shift_msa)
        x = x + gate_mlp * MLP(LN(x) * (1 + scale_mlp) + shift_mlp)

    ``LN`` has no affine parameters and ``eps = 1e-6``. The block receives ``SiLU(c)`` computed once.
    ``attention`` is the attention class (:class:`SelfAttention`, or the diffusers model's ``SiTAttention``).
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float,
                 attention: type[SelfAttention] = SelfAttention) -> None:
        super().__init__()
        self.attn = attention(hidden_size, num_heads)
        self.ff = FeedForward(hidden_size, mlp_ratio)
        self.adaLN_modulation = nn.Linear(hidden_size, 6 * hidden_size, bias=True)

    def forward(self, x: torch.Tensor, c_act: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1]
        mod = self.adaLN_modulation(c_act)[:, None]  # (N, 1, 6D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=-1)  # (N, 1, D)
        h = _modulate(F.layer_norm(x, (d,), eps=1e-6), shift_msa, scale_msa)  # (N, T, D)
        x = torch.addcmul(x, gate_msa, self.attn(h))  # (N, T, D)
        h = _modulate(F.layer_norm(x, (d,), eps=1e-6), shift_mlp, scale_mlp)  # (N, T, D)
        return torch.addcmul(x, gate_mlp, self.ff(h))  # (N, T, D)


class FinalLayer(nn.Module):
    """``Linear(LN(x) * (1 + scale) + shift)`` with ``(shift, scale) = Linear(SiLU(c))``: (N, T, D) -> (N, T, p*p*C_out)."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.adaLN_modulation = nn.Linear(hidden_size, 2 * hidden_size, bias=True)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)

    def forward(self, x: torch.Tensor, c_act: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c_act)[:, None].chunk(2, dim=-1)  # (N, 1, D) each
        x = _modulate(F.layer_norm(x, (x.shape[-1],), eps=1e-6), shift, scale)  # (N, T, D)
        return self.linear(x)  # (N, T, p*p*C_out)


#################################################################################
#                                    The network                                #
#################################################################################


class SiTNetworkMixin:
    """The layers and the forward of the SiT network, for an ``nn.Module`` with a ``config`` that has the
    fields of :class:`SiTConfig` (a :class:`SiTConfig`, or diffusers' config of ``SiTTransformer2DModel``).

    Layers (the state-dict keys): ``patch_embed``, ``pos_embed`` (a persistent buffer, saved with the
    weights as the official checkpoints carry it), ``time_embed``, ``class_embed``, ``transformer_blocks``,
    ``final_layer``.
    """

    config: Any

    def _build_network(self, config: SiTConfig, attention: type[SelfAttention]) -> None:
        grid = config.sample_size // config.patch_size
        hidden = config.hidden_size
        self.patch_embed = PatchEmbed(config.patch_size, config.in_channels, hidden)
        self.register_buffer("pos_embed", torch.zeros(1, grid * grid, hidden), persistent=True)
        self.time_embed = TimestepEmbedder(hidden)
        self.class_embed = LabelEmbedder(config.num_classes, hidden, config.class_dropout_prob)
        self.transformer_blocks = nn.ModuleList(
            [SiTBlock(hidden, config.num_heads, config.mlp_ratio, attention) for _ in range(config.depth)]
        )
        out_channels = 2 * config.in_channels if config.learn_sigma else config.in_channels
        self.final_layer = FinalLayer(hidden, config.patch_size, out_channels)

    @property
    def out_channels(self) -> int:
        """Channels of the final layer: ``2 * in_channels`` with ``learn_sigma``, else ``in_channels``."""
        c = self.config.in_channels
        return 2 * c if self.config.learn_sigma else c

    def initialize_weights(self) -> None:
        """Initialisation of the paper (DiT Sec. 3.2 / official ``initialize_weights``).

        Xavier-uniform Linear weights with zero biases; the patch Conv2d like a Linear; label table and time
        MLP weights ``N(0, 0.02^2)``; adaLN modulations and the output projection zero (adaLN-Zero, so every
        block starts as the identity and the model outputs zeros); ``pos_embed`` the 2-D sin-cos table.
        """
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        cfg = self.config
        table = get_2d_sincos_pos_embed(cfg.hidden_size, cfg.sample_size // cfg.patch_size)  # (T, D)
        self.pos_embed.copy_(table.float()[None])  # (1, T, D)
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)
        nn.init.normal_(self.class_embed.embedding_table.weight, std=0.02)
        nn.init.normal_(self.time_embed.linear_1.weight, std=0.02)
        nn.init.normal_(self.time_embed.linear_2.weight, std=0.02)
        for block in self.transformer_blocks:
            nn.init.zeros_(block.adaLN_modulation.weight)
            nn.init.zeros_(block.adaLN_modulation.bias)
        for layer in (self.final_layer.adaLN_modulation, self.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def unpatchify(self, x: torch.Tensor, channels: int | None = None) -> torch.Tensor:
        """Tokens -> image: ``(N, T, p*p*C_out) -> (N, channels, H, W)``, keeping the first ``channels``.

        Each token holds its ``p x p`` patch in ``(p_row, p_col, channel)`` order (official layout).
        ``channels`` defaults to all ``out_channels``; ``in_channels`` drops the learned-sigma half.
        """
        p = self.config.patch_size
        c_out = self.out_channels
        channels = c_out if channels is None else channels
        n, t, _ = x.shape
        h = w = math.isqrt(t)
        if h * w != t:
            raise ValueError(f"{t} tokens do not form a square grid")
        x = x.view(n, h, w, p, p, c_out)[..., :channels]  # (N, h, w, p, p, c)
        return x.permute(0, 5, 1, 3, 2, 4).reshape(n, channels, h * p, w * p)  # (N, c, H, W)

    def _check_inputs(
        self, hidden_states: Any, timestep: Any, class_labels: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(timestep (N,), class_labels (N,) long)`` after checking the shapes, the label dtype and range."""
        cfg = self.config
        expected = f"(N, {cfg.in_channels}, {cfg.sample_size}, {cfg.sample_size})"
        if not torch.is_tensor(hidden_states) or hidden_states.ndim != 4:
            raise InputError(f"expected input {expected}, got {tuple(getattr(hidden_states, 'shape', ()))}")
        n, c, height, width = hidden_states.shape
        if c != cfg.in_channels or height != cfg.sample_size or width != cfg.sample_size:
            raise InputError(f"expected input {expected}, got {tuple(hidden_states.shape)}")
        device = hidden_states.device
        if not torch.is_tensor(timestep):
            timestep = torch.tensor([float(timestep)], device=device)
        timestep = timestep.to(device).reshape(-1)
        if timestep.numel() not in (1, n):
            raise InputError(f"timestep has {timestep.numel()} entries for a batch of {n}")
        timestep = timestep.expand(n)  # (N,)
        if not torch.is_tensor(class_labels) or class_labels.is_complex() or class_labels.dtype == torch.bool:
            raise InputError(f"class_labels must be an integer tensor (N,), got "
                             f"{getattr(class_labels, 'dtype', type(class_labels).__name__)}")
        if class_labels.is_floating_point():  # the official code's float ids
            if torch.compiler.is_compiling():  # a graph cannot look at the values: refuse, never truncate
                raise InputError(f"class_labels must be an integer tensor under torch.compile, "
                                 f"got {class_labels.dtype}")
            if not bool((class_labels == class_labels.round()).all()):
                raise InputError(f"class_labels must hold integer ids, got {class_labels.reshape(-1)[:8].tolist()}")
        class_labels = class_labels.to(device=device, dtype=torch.long).reshape(-1)  # (N,)
        if class_labels.shape[0] != n:
            raise InputError(f"class_labels has {class_labels.shape[0]} entries for a batch of {n}")
        if not torch.compiler.is_compiling():  # an out-of-range id would index past the label table
            low, high = int(class_labels.min()), int(class_labels.max())
            top = cfg.num_classes if cfg.class_dropout_prob > 0 else cfg.num_classes - 1
            if low < 0 or high > top:
                raise InputError(f"class_labels must be in [0, {top}] ({cfg.num_classes} classes"
                                 + (f", null class {cfg.num_classes}" if top == cfg.num_classes else ", no null class")
                                 + f"), got values in [{low}, {high}]")
        return timestep, class_labels

    def _run_block(self, block: SiTBlock, x: torch.Tensor, c_act: torch.Tensor) -> torch.Tensor:
        """One block; the diffusers model overrides it for gradient checkpointing."""
        return block(x, c_act)  # (N, T, D)

    def _predict(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor | float,
        class_labels: torch.Tensor,
        force_drop_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The forward: ``x_t`` ``(N, C, S, S)``, SiT time ``t`` (float, 0-d or ``(N,)``), labels ``(N,)`` ->
        the prediction ``(N, in_channels, S, S)`` (the learned-sigma half is dropped)."""
        timestep, class_labels = self._check_inputs(hidden_states, timestep, class_labels)
        x = self.patch_embed(hidden_states) + self.pos_embed  # (N, T, D)
        c_emb = self.time_embed(timestep, x.dtype) + self.class_embed(class_labels, force_drop_ids)  # (N, D)
        c_act = F.silu(c_emb)  # (N, D), shared by every adaLN modulation
        for block in self.transformer_blocks:
            x = self._run_block(block, x, c_act)  # (N, T, D)
        x = self.final_layer(x, c_act)  # (N, T, p*p*C_out)
        return self.unpatchify(x, channels=self.config.in_channels)  # (N, C, H, W)


def _float32_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` in float32 (exact from float16 / bfloat16). One conversion of all the weights at once when
    they share a dtype: on a busy 2-core CPU each small multi-threaded op waits for a thread, and 72 of them
    took 0.4 s where one takes 0.01 s."""
    dtypes = {v.dtype for v in state.values()}
    if dtypes <= {torch.float32}:
        return state
    if len(dtypes) > 1 or not all(d.is_floating_point for d in dtypes):
        return {k: v.float() for k, v in state.items()}
    flat = torch.cat([v.reshape(-1) for v in state.values()]).float()  # (P,)
    out, start = {}, 0
    for key, value in state.items():
        out[key] = flat[start : start + value.numel()].view(value.shape)
        start += value.numel()
    return out


class SiTNetwork(SiTNetworkMixin, nn.Module):
    """The SiT network in plain torch: ``(x_t, t, y) -> prediction``, the keys and numbers of
    ``SiTTransformer2DModel`` (bit for bit on the CPU) without diffusers.

    Args:
        config: the architecture (:class:`SiTConfig`).
        init_weights: draw the paper's initialisation (:meth:`initialize_weights`); ``False`` keeps torch's
            default layer initialisation, for weights loaded right after (:meth:`from_folder`). (Building on
            the ``meta`` device instead would import ``torch._dynamo``: 1.4 s.)
    """

    def __init__(self, config: SiTConfig, init_weights: bool = True) -> None:
        super().__init__()
        if not isinstance(config, SiTConfig):
            raise InputError(f"config must be a SiTConfig, got {type(config).__name__}")
        self.config = config
        self._build_network(config, SelfAttention)
        if init_weights:
            self.initialize_weights()

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> SiTNetwork:
        """Load a saved ``transformer/`` folder (``config.json`` + ``diffusion_pytorch_model.safetensors``),
        in eval mode, float32 as ``SiTTransformer2DModel.from_pretrained`` loads it.

        Raises:
            InputError: a config key or value that is not a SiT architecture.
            OSError: a file is missing or unreadable.
            RuntimeError: the weights do not match the config (missing, unexpected or misshapen keys).
        """
        folder = Path(folder)
        with open(folder / CONFIG_NAME, encoding="utf-8") as f:
            config = SiTConfig.from_dict(json.load(f), where=str(folder / CONFIG_NAME))
        from safetensors.torch import load_file

        state = _float32_state(load_file(folder / WEIGHTS_NAME))  # float32, as diffusers loads
        network = cls(config, init_weights=False)
        network.load_state_dict(state, strict=True, assign=True)  # every key and shape checked; no copy
        return network.eval()

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the weights."""
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        """The device of the weights."""
        return next(self.parameters()).device

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor | float,
        class_labels: torch.Tensor,
        force_drop_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict from ``x_t`` ``(N, C, S, S)`` at SiT time ``t`` for ``class_labels`` ``(N,)`` (``num_classes``
        is the null class): ``(N, in_channels, S, S)``."""
        return self._predict(hidden_states, timestep, class_labels, force_drop_ids)
