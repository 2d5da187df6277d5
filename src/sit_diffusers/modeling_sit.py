"""SiTTransformer2DModel: the SiT network (Ma et al. 2024, arXiv 2401.08740) as a diffusers model.

The layers and the forward are :mod:`sit_diffusers.network`'s (the DiT backbone, one copy shared with the
torch-only :class:`~sit_diffusers.network.SiTNetwork` that ``sit-generate`` runs without diffusers, same
state-dict keys, same numbers). This module adds what diffusers gives a model: ``ModelMixin`` / ``ConfigMixin``
(``from_pretrained``, ``save_pretrained``, hooks), PEFT adapters, and attention through diffusers' attention
dispatcher (``SiTAttnProcessor``), so diffusers' backend switch, layerwise casting, regional compilation and
adapters work on it (``tests/test_model_hooks.py``). It predicts; it never guides or samples.

Numerics follow the official ``models.py`` of github willisma/SiT exactly (parity <= 1e-5 relative in
float32 against its outputs, see ``tests/test_modeling_sit.py``); official checkpoints are mapped onto
this module by ``sit_diffusers.conversion``.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.attention import AttentionMixin, AttentionModuleMixin
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin

from .network import (
    SIT_CONFIGS,
    FinalLayer,
    SelfAttention,
    SiTBlock,
    SiTConfig,
    SiTNetworkMixin,
    get_2d_sincos_pos_embed,
    split_qkv,
    timestep_embedding,
)
from .validation import InputError, check_choice

__all__ = [
    "SIT_CONFIGS",
    "FinalLayer",
    "SiTAttnProcessor",
    "SiTBlock",
    "SiTTransformer2DModel",
    "get_2d_sincos_pos_embed",
    "timestep_embedding",
]


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
        query, key, value = split_qkv(attn, hidden_states)  # 3 x (N, T, H, Dh), views
        out = dispatch_attention_fn(query, key, value, backend=self._attention_backend,
                                    parallel_config=self._parallel_config)  # (N, T, H, Dh)
        return attn.to_out(out.reshape(n, t, d).to(query.dtype))  # (N, T, D)


class SiTAttention(SelfAttention, AttentionModuleMixin):
    """:class:`~sit_diffusers.network.SelfAttention` (``to_qkv`` D -> 3D, ``to_out`` D -> D) computed by a processor.

    The processor (``SiTAttnProcessor``) does the computation, so diffusers' ``set_attention_backend``,
    ``enable_xformers_memory_efficient_attention`` and ``attn_processors`` reach it. The projections are
    already fused (the official checkpoints store one ``qkv`` matrix), so ``fuse_qkv_projections`` has
    nothing to do here.
    """

    _default_processor_cls = SiTAttnProcessor
    _available_processors = [SiTAttnProcessor]
    _supports_qkv_fusion = False

    def __init__(self, hidden_size: int, num_heads: int, processor: SiTAttnProcessor | None = None) -> None:
        super().__init__(hidden_size, num_heads)
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


class SiTTransformer2DModel(SiTNetworkMixin, ModelMixin, ConfigMixin, PeftAdapterMixin, AttentionMixin):
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
        config = SiTConfig(sample_size, patch_size, in_channels, hidden_size, depth, num_heads, mlp_ratio,
                           class_dropout_prob, num_classes, learn_sigma)  # checked: InputError names the bad one
        self.gradient_checkpointing = False
        self._build_network(config, SiTAttention)
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

    def _run_block(self, block: SiTBlock, x: torch.Tensor, c_act: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            return self._gradient_checkpointing_func(block, x, c_act)  # (N, T, D)
        return block(x, c_act)  # (N, T, D)

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
        sample = self._predict(hidden_states, timestep, class_labels, force_drop_ids)  # (N, C, H, W)
        if not return_dict:
            return (sample,)
        return Transformer2DModelOutput(sample=sample)
