"""SiTTransformer2DModel: the SiT network (Ma et al. 2024, arXiv 2401.08740) as a diffusers model.

The network is the DiT backbone (Peebles & Xie 2023, arXiv 2212.09748) unchanged: patch embedding plus a
frozen 2-D sin-cos position table, a sinusoidal embedding of the raw SiT time ``t`` in [0, 1]
(``t = 0`` noise, ``t = 1`` data), a class embedding with a null class for classifier-free guidance,
``depth`` adaLN-Zero transformer blocks and an adaLN final layer. It predicts; it never guides or samples.

Numerics follow the official ``models.py`` of github willisma/SiT exactly (parity <= 1e-5 relative in
float32 against its outputs, see ``tests/test_modeling_sit.py``); official checkpoints are mapped onto
this module by ``sit_diffusers.conversion``. Attention goes through diffusers' attention dispatcher
(``SiTAttnProcessor``), so diffusers' backend switch, layerwise casting, regional compilation and PEFT
adapters work on it (``tests/test_model_hooks.py``).
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.attention import AttentionMixin, AttentionModuleMixin
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .validation import InputError, check_choice, check_float, check_int

__all__ = [
    "SIT_CONFIGS",
    "SiTAttnProcessor",
    "SiTTransformer2DModel",
    "get_2d_sincos_pos_embed",
    "timestep_embedding",
]


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


class SiTAttnProcessor:
    """Self-attention with one fused qkv projection, computed by diffusers' attention dispatcher.

    ``softmax(q k^T / sqrt(d_head)) v`` per head, then the output projection (as timm's ``Attention`` of the
    official code). ``dispatch_attention_fn`` takes ``(N, T, H, Dh)`` tensors and runs the backend chosen by
    ``model.set_attention_backend(name)`` (stored in ``_attention_backend``), or else the active one (the
    ``diffusers.attention_backend(...)`` context, the ``DIFFUSERS_ATTN_BACKEND`` variable, default
    ``"native"``: ``F.scaled_dot_product_attention`` on the same strided views as before, so the same kernel
    and the same numbers).
    """

    _attention_backend = None
    _parallel_config = None

    def __call__(self, attn: SiTAttention, hidden_states: torch.Tensor) -> torch.Tensor:
        n, t, d = hidden_states.shape
        qkv = attn.to_qkv(hidden_states).view(n, t, 3, attn.heads, attn.head_dim)  # (N, T, 3, H, Dh)
        query, key, value = qkv.unbind(2)  # 3 x (N, T, H, Dh), views
        out = dispatch_attention_fn(query, key, value, backend=self._attention_backend,
                                    parallel_config=self._parallel_config)  # (N, T, H, Dh)
        return attn.to_out(out.reshape(n, t, d).to(query.dtype))  # (N, T, D)


class SiTAttention(nn.Module, AttentionModuleMixin):
    """Multi-head self-attention module: ``to_qkv`` (D -> 3D) and ``to_out`` (D -> D) Linears + a processor.

    The processor (``SiTAttnProcessor``) does the computation, so diffusers' ``set_attention_backend``,
    ``enable_xformers_memory_efficient_attention`` and ``attn_processors`` reach it. The projections are
    already fused (the official checkpoints store one ``qkv`` matrix), so ``fuse_qkv_projections`` has
    nothing to do here.
    """

    _default_processor_cls = SiTAttnProcessor
    _available_processors = [SiTAttnProcessor]
    _supports_qkv_fusion = False

    def __init__(self, hidden_size: int, num_heads: int, processor: SiTAttnProcessor | None = None) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.to_qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=True)
        self.to_out = nn.Linear(hidden_size, hidden_size, bias=True)
        self.set_processor(processor if processor is not None else self._default_processor_cls())

    def set_use_memory_efficient_attention_xformers(
        self, use_memory_efficient_attention_xformers: bool, attention_op: Any = None
    ) -> None:
        """xFormers on (diffusers' checks: raises without xformers or CUDA) or off (back to the default).

        diffusers' ``AttentionModuleMixin`` leaves the backend as it was when asked to turn xFormers off,
        which would make ``disable_xformers_memory_efficient_attention()`` a silent no-op.
        """
        if use_memory_efficient_attention_xformers:
            super().set_use_memory_efficient_attention_xformers(True, attention_op)
        elif getattr(self.processor, "_attention_backend", None) == "xformers":
            self.processor._attention_backend = None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.processor(self, hidden_states)  # (N, T, D)


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
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.attn = SiTAttention(hidden_size, num_heads)
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
#                                    The model                                  #
#################################################################################


def _check_config(
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


class SiTTransformer2DModel(ModelMixin, ConfigMixin, PeftAdapterMixin, AttentionMixin):
    r"""SiT / DiT class-conditional transformer on latents: ``(x_t, t, y) -> prediction``.

    ``prediction`` is whatever the model was trained to output (the official SiT checkpoints predict the
    velocity ``d alpha_t * x1 + d sigma_t * x0``). The input grid is ``sample_size x sample_size`` latents
    with ``in_channels`` channels; ``T = (sample_size / patch_size)^2`` tokens.

    Args:
        sample_size: latent height = width (32 for 256 px images with the SD VAE).
        patch_size: patch side ``p``.
        in_channels: latent channels ``C``.
        hidden_size: token width ``D``.
        depth: number of adaLN-Zero blocks.
        num_heads: attention heads (``D`` must be divisible by it).
        mlp_ratio: MLP width over ``D``.
        class_dropout_prob: training label dropout to the null class; ``> 0`` adds the null row.
        num_classes: number of classes; the null class has index ``num_classes``.
        learn_sigma: the final layer has ``2 C`` output channels (DiT's learned variance; SiT keeps it for
            checkpoint compatibility). ``forward`` returns only the first ``C``.

    diffusers' model hooks apply (``docs/model.md``): ``enable_gradient_checkpointing``,
    ``enable_layerwise_casting``, ``compile_repeated_blocks`` / ``torch.compile(fullgraph=True)``,
    ``set_attention_backend`` / ``enable_xformers_memory_efficient_attention`` (attention runs through
    ``diffusers``' dispatcher), ``add_adapter`` and the rest of ``PeftAdapterMixin``.
    """

    _supports_gradient_checkpointing = True
    # device_map="auto" keeps each of these on one device (each mixes its input with a child's output).
    _no_split_modules = ["SiTBlock", "FinalLayer"]
    # torch.compile one block and reuse it for all `depth` blocks (model.compile_repeated_blocks()).
    _repeated_blocks = ["SiTBlock"]
    # enable_layerwise_casting keeps these in the model's dtype, as diffusers' DiT / PixArt keep their
    # patch and position embeddings, adaLN modulations (their "norm*.linear"), timestep / class embedders
    # and output layer ("norm_out", "proj_out"); only the attention and MLP Linears are stored low.
    _skip_layerwise_casting_patterns = [
        "pos_embed", "patch_embed", "norm", "adaLN_modulation", "time_embed", "class_embed", "final_layer",
    ]

    @register_to_config
    def __init__(
        self,
        sample_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.1,
        num_classes: int = 1000,
        learn_sigma: bool = True,
    ) -> None:
        super().__init__()
        _check_config(sample_size, patch_size, in_channels, hidden_size, depth, num_heads, mlp_ratio,
                      class_dropout_prob, num_classes, learn_sigma)
        self.gradient_checkpointing = False
        grid = sample_size // patch_size

        self.patch_embed = PatchEmbed(patch_size, in_channels, hidden_size)
        # Frozen sin-cos table, saved with the weights (official checkpoints carry it too).
        self.register_buffer("pos_embed", torch.zeros(1, grid * grid, hidden_size), persistent=True)
        self.time_embed = TimestepEmbedder(hidden_size)
        self.class_embed = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        self.transformer_blocks = nn.ModuleList(
            [SiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)]
        )
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    # ------------------------------------------------------------------ helpers
    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> SiTTransformer2DModel:
        """Build a named architecture (``SIT_CONFIGS``), e.g. ``from_name("SiT-XL/2", sample_size=32)``.

        ``overrides`` are any other constructor arguments; weights are freshly initialised.
        """
        check_choice("SiT config", name, SIT_CONFIGS)
        known = set(inspect.signature(cls.__init__).parameters) - {"self"}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise InputError(f"unknown SiTTransformer2DModel argument(s) {unknown}; valid: {sorted(known)}")
        return cls(**{**SIT_CONFIGS[name], **overrides})

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

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor | float,
        class_labels: torch.Tensor,
        force_drop_ids: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        """Predict from the noisy latents.

        Args:
            hidden_states: ``x_t``, shape ``(N, in_channels, sample_size, sample_size)``.
            timestep: SiT time ``t`` in [0, 1] (t=0 noise, t=1 data): a float, a 0-d tensor or shape ``(N,)``.
            class_labels: LongTensor ``(N,)``; ``num_classes`` is the null (unconditional) class.
            force_drop_ids: optional ``(N,)``; entries equal to 1 replace the label by the null class.
            return_dict: return a ``Transformer2DModelOutput`` instead of a tuple.

        Returns:
            ``sample`` of shape ``(N, in_channels, H, W)`` (the learned-sigma half is not returned).
        """
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

        x = self.patch_embed(hidden_states) + self.pos_embed  # (N, T, D)
        c_emb = self.time_embed(timestep, x.dtype) + self.class_embed(class_labels, force_drop_ids)  # (N, D)
        c_act = F.silu(c_emb)  # (N, D), shared by every adaLN modulation
        for block in self.transformer_blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x = self._gradient_checkpointing_func(block, x, c_act)  # (N, T, D)
            else:
                x = block(x, c_act)  # (N, T, D)
        x = self.final_layer(x, c_act)  # (N, T, p*p*C_out)
        sample = self.unpatchify(x, channels=cfg.in_channels)  # (N, C, H, W)
        if not return_dict:
            return (sample,)
        return Transformer2DModelOutput(sample=sample)
