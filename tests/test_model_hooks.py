"""diffusers' model hooks on SiTTransformer2DModel: layerwise casting, the attention dispatcher and its backend
switch, regional and full-graph compilation, PEFT adapters, and the class attributes they read.

Each test names the diffusers convention it checks (``ModelMixin`` / ``AttentionModuleMixin`` /
``PeftAdapterMixin``). Tiny models throughout, except the layerwise-casting errors, which are measured on
the embedded digits model (trained weights; random weights would say little about quantisation error).
"""

from __future__ import annotations

import copy
import re

import pytest
import torch
from conftest import rel_err
from diffusers.models.attention_dispatch import (
    AttentionBackendName,
    _AttentionBackendRegistry,
    attention_backend,
)

import sit_diffusers
from sit_diffusers.modeling_sit import SiTAttention, SiTAttnProcessor, SiTBlock, SiTTransformer2DModel
from sit_diffusers.validation import InputError

TINY = dict(sample_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=4, num_classes=10)


def tiny(seed: int = 0) -> SiTTransformer2DModel:
    """Tiny eval-mode model with its zero-initialised adaLN / output layers redrawn, so every block matters."""
    torch.manual_seed(seed)
    model = SiTTransformer2DModel(**TINY)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "adaLN" in name or "final_layer.linear" in name:
                p.normal_(0, 0.1)
    return model.eval()


def inputs(n: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, 8, 8, generator=g), torch.rand(n, generator=g), torch.randint(0, 11, (n,), generator=g)


@pytest.fixture
def restore_backend(monkeypatch):
    """``ModelMixin.set_attention_backend`` also sets diffusers' process-wide active backend (diffusers >=
    0.37): put it back after the test."""
    monkeypatch.setattr(_AttentionBackendRegistry, "_active_backend", _AttentionBackendRegistry._active_backend)


def spy_backend(monkeypatch, name: AttentionBackendName) -> list[tuple[int, ...]]:
    """Wrap one registered attention backend; returns the list of query shapes it is called with."""
    calls: list[tuple[int, ...]] = []
    real = _AttentionBackendRegistry._backends[name]

    def spy(**kwargs):
        calls.append(tuple(kwargs["query"].shape))
        return real(**kwargs)

    monkeypatch.setitem(_AttentionBackendRegistry._backends, name, spy)
    return calls


# ----------------------------------------------------------------------------- class attributes


def test_hook_attributes_name_real_modules():
    """``_repeated_blocks`` / ``_no_split_modules`` name classes the model has; every skip pattern matches."""
    model = tiny()
    assert SiTTransformer2DModel._repeated_blocks == ["SiTBlock"]
    assert SiTTransformer2DModel._no_split_modules == ["SiTBlock", "FinalLayer"]
    classes = {type(m).__name__ for m in model.modules()}
    assert set(SiTTransformer2DModel._repeated_blocks) <= classes
    assert set(SiTTransformer2DModel._no_split_modules) <= classes
    assert sorted(model._get_no_split_modules("auto")) == ["FinalLayer", "SiTBlock"]
    names = [n for n, _ in model.named_modules()] + [n for n, _ in model.named_buffers()]
    for pattern in SiTTransformer2DModel._skip_layerwise_casting_patterns:
        if pattern != "norm":  # the LayerNorms have no weights (F.layer_norm): nothing named norm
            assert any(re.search(pattern, n) for n in names), pattern
    # what layerwise casting stores low: the attention and MLP Linears, nothing else
    cast = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d | torch.nn.Embedding)
            and not any(re.search(p, n) for p in SiTTransformer2DModel._skip_layerwise_casting_patterns)]
    assert sorted(cast) == sorted(f"transformer_blocks.{i}.{k}" for i in range(2)
                                  for k in ("attn.to_qkv", "attn.to_out", "ff.linear_1", "ff.linear_2"))


def test_state_dict_keys_unchanged_by_the_processor():
    """The processor is a plain object: no key for it, the official key table still covers every tensor."""
    from sit_diffusers.conversion import _BLOCK_KEYS, _GLOBAL_KEYS

    model = tiny()
    keys = set(model.state_dict())
    expected = set(_GLOBAL_KEYS.values()) | {f"transformer_blocks.{i}.{v}" for i in range(2) for v in _BLOCK_KEYS.values()}
    assert keys == expected
    assert not any("processor" in k for k in keys)


# ----------------------------------------------------------------------------- layerwise casting


@pytest.fixture(scope="module")
def digits_model() -> SiTTransformer2DModel:
    return SiTTransformer2DModel.from_pretrained(sit_diffusers.DEFAULT_MODEL / "transformer").eval()


@pytest.mark.parametrize(
    ("storage", "compute", "bound"),
    [
        # measured 9.3e-4, 1.55e-2, 1.61e-2 (16 samples, seed 0); a plain bfloat16 model measures 6.4e-3
        (torch.bfloat16, torch.float32, 4e-3),
        (torch.float8_e4m3fn, torch.float32, 4e-2),
        (torch.float8_e4m3fn, torch.bfloat16, 4e-2),
    ],
    ids=["bf16-storage-fp32-compute", "fp8-storage-fp32-compute", "fp8-storage-bf16-compute"],
)
def test_layerwise_casting_runs_and_stays_close(digits_model, storage, compute, bound):
    """``enable_layerwise_casting``: attention/MLP weights stored low, everything else at the model dtype."""
    c = digits_model.config
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, c.in_channels, c.sample_size, c.sample_size, generator=g)
    t, y = torch.rand(16, generator=g), torch.randint(0, c.num_classes + 1, (16,), generator=g)
    with torch.no_grad():
        ref = digits_model(x, t, y).sample
    model = copy.deepcopy(digits_model).to(compute)  # diffusers' recipe: load in the compute dtype, then cast
    model.enable_layerwise_casting(storage_dtype=storage, compute_dtype=compute)
    block = model.transformer_blocks[0]
    assert block.attn.to_qkv.weight.dtype == storage and block.ff.linear_2.weight.dtype == storage
    assert block.adaLN_modulation.weight.dtype == compute and model.time_embed.linear_1.weight.dtype == compute
    assert model.dtype == compute  # what the pipeline casts its latents to
    with torch.no_grad():
        out = model(x.to(compute), t, y).sample
    assert out.dtype == compute and torch.isfinite(out).all()
    assert rel_err(out.float(), ref) < bound
    assert block.attn.to_qkv.weight.dtype == storage  # back to storage after the forward


def test_layerwise_casting_in_the_pipeline():
    """The user's path: ``pipe.transformer.enable_layerwise_casting(...)`` and sample."""
    from sit_diffusers.pipeline_sit import SiTPipeline

    pipe = SiTPipeline.from_pretrained(str(sit_diffusers.DEFAULT_MODEL))
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(class_labels=[3, 7], num_inference_steps=4, generator=torch.Generator().manual_seed(0),
               output_type="pt").images
    pipe.transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    out = pipe(class_labels=[3, 7], num_inference_steps=4, generator=torch.Generator().manual_seed(0),
               output_type="pt").images
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert (out - ref).abs().mean() < 0.05  # images in [0, 1]


# ----------------------------------------------------------------------------- attention dispatch


def test_attention_goes_through_the_dispatcher(monkeypatch):
    """Default: every block's attention is one call of diffusers' active backend, on (N, T, H, Dh)."""
    calls = spy_backend(monkeypatch, _AttentionBackendRegistry._active_backend)
    model = tiny()
    x, t, y = inputs()
    with torch.no_grad():
        model(x, t, y)
    assert calls == [(3, 16, 4, 16)] * 2
    assert all(isinstance(p, SiTAttnProcessor) for p in model.attn_processors.values())
    assert sorted(model.attn_processors) == [f"transformer_blocks.{i}.attn.processor" for i in range(2)]


def test_set_attention_backend_is_real(monkeypatch, restore_backend):
    """``set_attention_backend(name)`` routes every block to that backend; ``reset_attention_backend`` undoes it."""
    model = tiny()
    x, t, y = inputs()
    with torch.no_grad():
        ref = model(x, t, y).sample
    math_calls = spy_backend(monkeypatch, AttentionBackendName._NATIVE_MATH)
    model.set_attention_backend("_native_math")
    assert all(p._attention_backend == AttentionBackendName._NATIVE_MATH for p in model.attn_processors.values())
    with torch.no_grad():
        out = model(x, t, y).sample
    assert len(math_calls) == 2
    assert rel_err(out, ref) < 1e-6  # another SDPA kernel, same attention
    model.reset_attention_backend()
    assert all(p._attention_backend is None for p in model.attn_processors.values())


def test_attention_backend_context_manager(monkeypatch, restore_backend):
    calls = spy_backend(monkeypatch, AttentionBackendName._NATIVE_MATH)
    model = tiny()
    x, t, y = inputs()
    with attention_backend("_native_math"), torch.no_grad():
        model(x, t, y)
    assert len(calls) == 2


def test_unknown_or_unavailable_backend_raises(restore_backend):
    model = tiny()
    with pytest.raises(ValueError, match="flash_atention.*must be one of"):
        model.set_attention_backend("flash_atention")
    import importlib.util

    if importlib.util.find_spec("flash_attn") is None:
        with pytest.raises(RuntimeError, match="flash-attn"):
            model.set_attention_backend("flash")
    if importlib.util.find_spec("xformers") is None:
        with pytest.raises(RuntimeError, match="xformers"):
            model.set_attention_backend("xformers")
    assert all(p._attention_backend is None for p in model.attn_processors.values())


def test_xformers_switch_is_not_a_silent_no_op():
    """Enabling raises where xFormers cannot run (not installed, or no CUDA); disabling really switches back."""
    import importlib.util

    model = tiny()
    if importlib.util.find_spec("xformers") is None:
        with pytest.raises(ModuleNotFoundError, match="xformers"):
            model.enable_xformers_memory_efficient_attention()
    elif not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda"):
            model.enable_xformers_memory_efficient_attention()
    for proc in model.attn_processors.values():  # as enable_xformers... leaves it where it can run
        proc._attention_backend = AttentionBackendName.XFORMERS
    model.disable_xformers_memory_efficient_attention()
    assert all(p._attention_backend is None for p in model.attn_processors.values())


def test_set_attn_processor_replaces_the_computation():
    """``set_attn_processor`` (diffusers' ``AttentionMixin``) installs a processor that is then used."""

    class Counting(SiTAttnProcessor):
        calls = 0

        def __call__(self, attn: SiTAttention, hidden_states: torch.Tensor) -> torch.Tensor:
            Counting.calls += 1
            return super().__call__(attn, hidden_states)

    model = tiny()
    x, t, y = inputs()
    with torch.no_grad():
        ref = model(x, t, y).sample
        model.set_attn_processor(Counting())
        out = model(x, t, y).sample
    assert Counting.calls == 2
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    model.fuse_qkv_projections()  # already fused: a no-op, not an AttributeError on to_q
    assert not hasattr(model.transformer_blocks[0].attn, "to_q")


# ----------------------------------------------------------------------------- torch.compile


def test_full_graph_has_no_graph_breaks():
    """``torch._dynamo.explain``: one graph, no break, door checks included (data-dependent ones skipped)."""
    torch._dynamo.reset()
    model = tiny()
    x, t, y = inputs()
    explained = torch._dynamo.explain(model)(x, t, y)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


def test_compile_fullgraph_matches_eager():
    """``torch.compile(model, fullgraph=True)`` with the aot_eager backend (AOTAutograd without inductor's
    minutes-long C++ build on CPU): same outputs, and a training step traces as one graph as well."""
    torch._dynamo.reset()
    model = tiny()
    x, t, y = inputs()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, t, y).sample, model(x, t, y).sample, rtol=1e-6, atol=1e-6)
    model.train()
    compiled(x, t, y).sample.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_door_checks_under_compile():
    """Door checks under compile. ``fullgraph=False``: a failing check breaks the graph and the frame runs
    eagerly, so the ``InputError`` itself comes out. ``fullgraph=True``: dynamo's error quoting it; float
    labels are refused there (a graph cannot look at their values) rather than truncated unseen."""
    torch._dynamo.reset()
    model = tiny()
    x, t, y = inputs()
    compiled = torch.compile(model, backend="aot_eager")
    with pytest.raises(InputError, match=r"expected input \(N, 4, 8, 8\), got \(3, 4, 16, 16\)"):
        compiled(torch.randn(3, 4, 16, 16), t, y)
    with pytest.raises(InputError, match=r"integer ids, got \[1.5, 7.5, 3.5\]"):  # the frame falls back to eager
        compiled(x, t, y.float() + 0.5)
    torch._dynamo.reset()  # dynamo caches per code object: forget the eager fallbacks above
    strict = torch.compile(model, fullgraph=True, backend="aot_eager")
    with pytest.raises(Exception, match=r"expected input \(N, 4, 8, 8\), got \(3, 4, 16, 16\)"):
        strict(torch.randn(3, 4, 16, 16), t, y)
    with pytest.raises(Exception, match="class_labels must be an integer tensor under torch.compile"):
        strict(x, t, y.float())
    with pytest.raises(InputError, match=r"class_labels must be in \[0, 10\]"):  # eager still checks values
        model(x, t, torch.tensor([0, 1, 11]))


def test_compile_repeated_blocks():
    """``compile_repeated_blocks`` compiles each ``SiTBlock`` (regional compilation); outputs unchanged."""
    torch._dynamo.reset()
    model = tiny()
    x, t, y = inputs()
    with torch.no_grad():
        ref = model(x, t, y).sample
    model.compile_repeated_blocks(fullgraph=True, backend="aot_eager")
    assert all(b._compiled_call_impl is not None for b in model.modules() if isinstance(b, SiTBlock))
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y).sample, ref, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- PEFT


LORA_TARGETS = ["to_qkv", "to_out", "ff.linear_1", "ff.linear_2"]


def test_add_lora_adapter_on_attention_and_mlp():
    """``PeftAdapterMixin.add_adapter``: LoRA on the attention and MLP Linears only; zero-initialised B
    leaves the output unchanged; a trained-looking adapter changes it; disabling restores the base."""
    peft = pytest.importorskip("peft")
    from peft.tuners.lora import LoraLayer

    model = tiny()
    x, t, y = inputs()
    with torch.no_grad():
        ref = model(x, t, y).sample
    model.requires_grad_(False)
    model.add_adapter(peft.LoraConfig(r=4, lora_alpha=4, target_modules=LORA_TARGETS))
    wrapped = sorted(n for n, m in model.named_modules() if isinstance(m, LoraLayer))
    assert wrapped == sorted(f"transformer_blocks.{i}.{k}" for i in range(2)
                             for k in ("attn.to_qkv", "attn.to_out", "ff.linear_1", "ff.linear_2"))
    assert model.active_adapters() == ["default"]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y).sample, ref, rtol=0, atol=0)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
        adapted = model(x, t, y).sample
        assert rel_err(adapted, ref) > 1e-3
        model.disable_adapters()
        torch.testing.assert_close(model(x, t, y).sample, ref, rtol=0, atol=0)
        model.enable_adapters()
        torch.testing.assert_close(model(x, t, y).sample, adapted, rtol=0, atol=0)
    model.train()
    model(x, t, y).sample.square().mean().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_" in n)
    assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n)
