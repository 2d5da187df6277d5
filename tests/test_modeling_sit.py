"""SiTTransformer2DModel: parity with the official SiT outputs, parameter counts, invariances, dtypes."""

from __future__ import annotations

import pytest
import torch
from conftest import load_official

from sit_diffusers.conversion import load_official_checkpoint
from sit_diffusers.modeling_sit import (
    SIT_CONFIGS,
    SiTTransformer2DModel,
    get_2d_sincos_pos_embed,
    timestep_embedding,
)
from sit_diffusers.validation import InputError

TINY = dict(sample_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=4, num_classes=10)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||`` in float64."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def official_model(official_dir) -> SiTTransformer2DModel:
    return load_official_checkpoint(official_dir / "original_checkpoint.pt", num_heads=4)


@pytest.fixture(scope="module")
def fwd() -> dict[str, torch.Tensor]:
    return load_official("forward")


def random_tiny(seed: int = 0, **overrides) -> SiTTransformer2DModel:
    """Tiny model whose zero-initialised adaLN / output layers are re-drawn so every block matters."""
    torch.manual_seed(seed)
    model = SiTTransformer2DModel(**{**TINY, **overrides})
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "adaLN" in name or "final_layer.linear" in name:
                p.normal_(0, 0.1)
    return model.eval()


# ----------------------------------------------------------------------------- parity with official SiT


def test_forward_matches_official_with_intermediates(official_model, fwd):
    """out, out_full and every hookable intermediate of the official forward, relative error <= 1e-5."""
    m = official_model
    caps: dict[str, torch.Tensor] = {}
    hooks = [
        m.patch_embed.register_forward_hook(lambda _m, _i, o: caps.__setitem__("x_embedder_out", o)),
        m.time_embed.register_forward_hook(lambda _m, _i, o: caps.__setitem__("t_emb", o)),
        m.class_embed.register_forward_hook(lambda _m, _i, o: caps.__setitem__("y_emb", o)),
        m.final_layer.register_forward_hook(lambda _m, _i, o: caps.__setitem__("final_layer_out", o)),
    ]
    for i, block in enumerate(m.transformer_blocks):
        hooks.append(block.register_forward_hook(lambda _m, _i, o, i=i: caps.__setitem__(f"block{i}_out", o)))
    try:
        with torch.no_grad():
            caps["out"] = m(fwd["x"], fwd["t"], fwd["y"].long()).sample
            caps["out_full"] = m.unpatchify(caps["final_layer_out"])
    finally:
        for h in hooks:
            h.remove()
    caps["t_freq"] = timestep_embedding(fwd["t"], 256)
    expected = ["x_embedder_out", "t_emb", "y_emb", "block0_out", "block1_out", "final_layer_out",
                "out", "out_full", "t_freq"]
    for name in expected:
        assert caps[name].shape == fwd[name].shape, name
        assert rel_err(caps[name], fwd[name]) <= 1e-5, (name, rel_err(caps[name], fwd[name]))


def test_unguided_cfg_batch_matches_official(official_model, fwd):
    """The raw batch (conditional + null labels) that the official forward_with_cfg combines."""
    with torch.no_grad():
        out = official_model(fwd["x_cfg"], fwd["t_cfg"], fwd["y_cfg"].long()).sample
    assert rel_err(out, fwd["out_cfg_raw"]) <= 1e-5


def test_time_is_not_flipped_or_scaled(official_model, fwd):
    """Feeding 1 - t or 1000 t (other conventions) must break parity: the model takes raw SiT time."""
    with torch.no_grad():
        for t in (1 - fwd["t"], 1000 * fwd["t"]):
            assert rel_err(official_model(fwd["x"], t, fwd["y"].long()).sample, fwd["out"]) > 1e-2


def test_pos_embed_table_matches_official_checkpoint():
    official = load_official("model")["pos_embed"]  # (1, 16, 64)
    ours = get_2d_sincos_pos_embed(64, 4).float()[None]
    torch.testing.assert_close(ours, official, rtol=0, atol=1e-7)
    assert torch.equal(SiTTransformer2DModel(**TINY).pos_embed, ours)


def test_timestep_embedding_formula():
    """[cos(t f_i), sin(t f_i)] with f_i = 10000^(-i/128): first frequency 1, last 10000^(-127/128)."""
    t = torch.tensor([0.0, 0.25, 1.0])
    emb = timestep_embedding(t, 256)  # (3, 256)
    assert emb.shape == (3, 256)
    torch.testing.assert_close(emb[:, 0], torch.cos(t))
    torch.testing.assert_close(emb[:, 128], torch.sin(t))
    f_last = torch.tensor(10000.0 ** (-127 / 128))
    torch.testing.assert_close(emb[:, 127], torch.cos(t * f_last))
    assert timestep_embedding(t, 7).shape == (3, 7) and torch.all(timestep_embedding(t, 7)[:, -1] == 0)


# ----------------------------------------------------------------------------- named configs


def _analytic_param_count(depth: int, d: int, p: int, c: int = 4, classes: int = 1000, size: int = 32) -> int:
    """Count by hand: blocks 18 D^2 + 15 D each, embeddings, pos table, final layer (learn_sigma)."""
    tokens = (size // p) ** 2
    block = 18 * d * d + 15 * d  # qkv, proj, fc1, fc2 (ratio 4), adaLN 6D
    embed = c * p * p * d + d + (256 * d + d) + (d * d + d) + (classes + 1) * d + tokens * d
    final = 2 * d * d + 2 * d + d * p * p * 2 * c + p * p * 2 * c
    return depth * block + embed + final


@pytest.mark.parametrize("name", sorted(SIT_CONFIGS))
def test_named_config_parameter_counts(name):
    """Counted on the meta device (no allocation); pos_embed counted as the official model.parameters() does."""
    with torch.device("meta"):
        model = SiTTransformer2DModel.from_name(name, sample_size=32)
    assert model.pos_embed.is_meta
    count = sum(p.numel() for p in model.parameters()) + model.pos_embed.numel()
    cfg = SIT_CONFIGS[name]
    assert count == _analytic_param_count(cfg["depth"], cfg["hidden_size"], cfg["patch_size"])
    if name == "SiT-XL/2":
        assert count == 675_129_632
    paper_millions = {"S": 33, "B": 130, "L": 458, "XL": 675}[name.split("-")[1].split("/")[0]]
    assert abs(count / 1e6 - paper_millions) < 1.0


def test_from_name_rejects_unknown_and_accepts_overrides():
    with pytest.raises(InputError, match="'SiT-XXL/2'.*valid: .*SiT-XL/2.*did you mean 'SiT-XL/2'"):
        SiTTransformer2DModel.from_name("SiT-XXL/2")
    with pytest.raises(InputError, match=r"unknown SiTTransformer2DModel argument\(s\) \['hiden_size'\]"):
        SiTTransformer2DModel.from_name("SiT-S/2", hiden_size=8)
    with torch.device("meta"):
        m = SiTTransformer2DModel.from_name("SiT-S/8", sample_size=16, learn_sigma=False)
    assert m.config.depth == 12 and m.config.sample_size == 16 and m.out_channels == 4


# ----------------------------------------------------------------------------- behaviour


def test_initialisation_is_adaln_zero():
    """Fresh model: zeroed modulations and output layer, so the prediction is exactly 0."""
    model = SiTTransformer2DModel(**TINY).eval()
    x = torch.randn(2, 4, 8, 8)
    out = model(x, torch.rand(2), torch.tensor([1, 10])).sample
    assert out.shape == (2, 4, 8, 8) and torch.count_nonzero(out) == 0
    assert model.out_channels == 8 and model.final_layer.linear.out_features == 2 * 2 * 8
    assert model.class_embed.embedding_table.num_embeddings == 11
    assert SiTTransformer2DModel(**{**TINY, "class_dropout_prob": 0.0}).class_embed.embedding_table.num_embeddings == 10


def test_batch_invariance():
    model = random_tiny()
    x, t, y = torch.randn(5, 4, 8, 8), torch.rand(5), torch.tensor([0, 3, 10, 7, 2])
    with torch.no_grad():
        full = model(x, t, y).sample
        for i in range(5):
            single = model(x[i : i + 1], t[i : i + 1], y[i : i + 1]).sample
            assert rel_err(single, full[i : i + 1]) <= 1e-5


def test_scalar_and_vector_timestep_agree():
    model = random_tiny()
    x, y = torch.randn(3, 4, 8, 8), torch.tensor([1, 2, 3])
    with torch.no_grad():
        a = model(x, 0.3, y).sample
        b = model(x, torch.tensor(0.3), y).sample
        c = model(x, torch.full((3,), 0.3), y).sample
    torch.testing.assert_close(a, c, rtol=0, atol=0)
    torch.testing.assert_close(b, c, rtol=0, atol=0)
    assert model(x, 0.3, y, return_dict=False)[0].shape == (3, 4, 8, 8)


def test_label_dropout_train_mode_and_force_drop():
    """Training mode drops labels where torch.rand(N) < p (official LabelEmbedder); eval never does."""
    model = random_tiny(class_dropout_prob=0.5)
    x, t, y = torch.randn(16, 4, 8, 8), torch.rand(16), torch.randint(0, 10, (16,))
    torch.manual_seed(123)
    drop = torch.rand(16) < 0.5
    assert 0 < drop.sum() < 16
    with torch.no_grad():
        torch.manual_seed(123)
        model.train()
        trained = model(x, t, y).sample
        model.eval()
        forced = model(x, t, y, force_drop_ids=drop.long()).sample
        nulled = model(x, t, torch.where(drop, 10, y)).sample
        clean = model(x, t, y).sample
    torch.testing.assert_close(trained, forced, rtol=0, atol=0)
    torch.testing.assert_close(forced, nulled, rtol=0, atol=0)
    assert not torch.allclose(clean[drop], nulled[drop])
    torch.testing.assert_close(clean[~drop], nulled[~drop], rtol=0, atol=0)


def test_gradient_checkpointing_gives_same_gradients():
    x, t, y = torch.randn(2, 4, 8, 8), torch.rand(2), torch.tensor([1, 4])
    grads = []
    for ckpt in (False, True):
        model = random_tiny().train()
        model.class_embed.dropout_prob = 0.0
        if ckpt:
            model.enable_gradient_checkpointing()
            assert model.is_gradient_checkpointing
        model(x, t, y).sample.square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_close_to_float32(dtype):
    model = random_tiny()
    x, t, y = torch.randn(2, 4, 8, 8), torch.rand(2), torch.tensor([1, 4])
    with torch.no_grad():
        ref = model(x, t, y).sample
        out = model.to(dtype)(x.to(dtype), t, y).sample
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert rel_err(out.float(), ref) < (3e-2 if dtype == torch.bfloat16 else 5e-3)


def test_wrong_input_shape_raises():
    model = random_tiny()
    with pytest.raises(ValueError, match="expected input"):
        model(torch.randn(1, 4, 16, 16), 0.5, torch.tensor([0]))
    with pytest.raises(ValueError, match="class_labels"):
        model(torch.randn(2, 4, 8, 8), 0.5, torch.tensor([0]))
    with pytest.raises(ValueError, match="timestep"):
        model(torch.randn(2, 4, 8, 8), torch.rand(3), torch.tensor([0, 1]))


def test_demo_runs_and_reports_the_model(capsys):
    """The README's main job: a forward pass of a named model, printing shapes and parameters."""
    from sit_diffusers import demo

    result = demo.run(["--model", "SiT-S/8", "--sample-size", "16", "--batch-size", "2"])
    text = capsys.readouterr().out
    with torch.device("meta"):
        expected = SiTTransformer2DModel.from_name("SiT-S/8", sample_size=16)
    n = sum(p.numel() for p in expected.parameters()) + expected.pos_embed.numel()
    assert result["params"] == n and f"{n:,} parameters" in text
    assert "output       (2, 4, 16, 16)" in text and result["forward_s"] > 0
