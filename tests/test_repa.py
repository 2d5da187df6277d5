"""REPA pieces (``training/repa.py``): the loss against a hand computation, the token-grid resize, the frozen
encoder's patch tokens (CLS / registers dropped, preprocessing), the block-``d`` hook against running the
blocks by hand with the plain forward unchanged bit for bit, the projector, precomputed features equal to
on-the-fly ones (flips included), and a table of bad inputs. All offline with tiny random models."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import load_script
from PIL import Image
from tiny_hub_repo import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT))  # `training` is a folder of the repo, not of the installed package
from sit_diffusers.modeling_sit import SiTTransformer2DModel  # noqa: E402
from sit_diffusers.validation import InputError  # noqa: E402
from training import repa  # noqa: E402
from training.data import DataError, ImageDataset, LatentDataset, flip_for  # noqa: E402

ENC = dict(image_size=28, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
           intermediate_size=64)


def _save_encoder(path, channels=3, registers=0, processor=True, **overrides):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    if registers:
        from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

        model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**{**ENC, **overrides}, num_channels=channels,
                                                                   num_register_tokens=registers))
    else:
        model = Dinov2Model(Dinov2Config(**{**ENC, **overrides}, num_channels=channels))
    model.save_pretrained(path)
    if processor:
        from transformers import BitImageProcessor

        BitImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28},
                          image_mean=[0.5] * channels, image_std=[0.25] * channels).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    root = tmp_path_factory.mktemp("repa-encoders")
    return {
        "rgb": _save_encoder(root / "rgb"),
        "grey": _save_encoder(root / "grey", channels=1),
        "registers": _save_encoder(root / "registers", registers=3),
        "no-processor": _save_encoder(root / "no-processor", processor=False),
        "dropout": _save_encoder(root / "dropout", hidden_dropout_prob=0.5, processor=False),
    }


# ---------------------------------------------------------------------------
# Loss and grid resize
# ---------------------------------------------------------------------------


def test_loss_matches_hand_computation():
    projected = torch.tensor([[[1.0, 0.0], [0.0, 2.0]], [[3.0, 4.0], [-1.0, 0.0]]])  # (2, 2, 2)
    target = torch.tensor([[[5.0, 0.0], [1.0, 1.0]], [[4.0, 3.0], [1.0, 0.0]]])
    # cosines: sample 0: 1, 1/sqrt(2); sample 1: 24/25, -1
    per_sample = torch.tensor([-(1 + 1 / math.sqrt(2)) / 2, -(24 / 25 - 1) / 2])
    torch.testing.assert_close(repa.repa_loss(projected, target, reduction="none"), per_sample)
    torch.testing.assert_close(repa.repa_loss(projected, target), per_sample.mean())
    assert float(repa.repa_loss(target, target)) == pytest.approx(-1.0)
    assert repa.repa_loss(projected.bfloat16(), target).dtype == torch.float32


def test_loss_gradient_reaches_the_projected_features():
    projected = torch.randn(2, 3, 4, requires_grad=True)
    repa.repa_loss(projected, torch.randn(2, 3, 4)).backward()
    assert projected.grad is not None and projected.grad.abs().sum() > 0


def test_grid_resize_layout_and_hand_values():
    tokens = torch.randn(2, 9, 5)
    assert repa.resize_token_grid(tokens, (3, 3), (3, 3)) is tokens  # equal grids: untouched
    # row-major layout: a feature equal to the row index stays a function of the row after resizing
    rows = torch.arange(2.0).repeat_interleave(2).view(1, 4, 1)  # 2x2 grid, token (i, j) = i
    up = repa.resize_token_grid(rows, (2, 2), (4, 4)).view(4, 4)  # (4, 4)
    assert torch.equal(up, up[:, :1].expand(4, 4)) and up[0, 0] < up[-1, 0]
    torch.testing.assert_close(up[:, 0], torch.tensor([0.0, 0.25, 0.75, 1.0]))  # bilinear, align_corners=False
    # shrinking 2x2 -> 1x1 (antialiased) averages the four tokens
    grid = torch.tensor([[1.0, 2.0], [3.0, 10.0]]).view(1, 4, 1)
    torch.testing.assert_close(repa.resize_token_grid(grid, (2, 2), (1, 1)), torch.tensor([[[4.0]]]))
    # equal to F.interpolate on the (N, D, h, w) layout
    x = torch.randn(2, 16, 3)
    ref = F.interpolate(x.transpose(1, 2).reshape(2, 3, 4, 4), size=(6, 6), mode="bilinear", align_corners=False)
    torch.testing.assert_close(repa.resize_token_grid(x, (4, 4), (6, 6)), ref.reshape(2, 3, 36).transpose(1, 2))


# ---------------------------------------------------------------------------
# Encoder
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "prefix"), [("rgb", 1), ("registers", 4)])
def test_encoder_drops_cls_and_register_tokens(kind, prefix, encoders):
    enc = repa.RepaEncoder.from_pretrained(str(encoders[kind]))
    assert enc.num_prefix_tokens == prefix and enc.grid == (7, 7) and enc.hidden_size == 32
    images = torch.rand(2, 3, 28, 28) * 2 - 1
    full = enc.backbone(pixel_values=enc.preprocess(images)).last_hidden_state  # (2, prefix + 49, 32)
    assert full.shape == (2, prefix + 49, 32)
    assert torch.equal(enc(images), full[:, prefix:])


def test_encoder_preprocessing_from_the_processor_or_imagenet(encoders):
    enc = repa.RepaEncoder.from_pretrained(str(encoders["rgb"]))
    images = torch.rand(1, 3, 28, 28) * 2 - 1
    torch.testing.assert_close(enc.preprocess(images), ((images + 1) / 2 - 0.5) / 0.25)  # processor's mean/std
    plain = repa.RepaEncoder.from_pretrained(str(encoders["no-processor"]))
    mean, std = torch.tensor(repa.IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(repa.IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(plain.preprocess(images), ((images + 1) / 2 - mean) / std)
    # another resolution is resized (bicubic) to the encoder's side; grey is repeated to 3 channels
    big = torch.rand(1, 1, 56, 56) * 2 - 1
    resized = F.interpolate((big.expand(-1, 3, -1, -1) + 1) / 2, size=(28, 28), mode="bicubic", align_corners=False)
    torch.testing.assert_close(enc.preprocess(big), (resized - 0.5) / 0.25)
    assert torch.equal(enc(big), enc(big.expand(-1, 3, -1, -1)))
    # an explicit image size: 14x14 tokens from a 56 px input
    assert repa.RepaEncoder.from_pretrained(str(encoders["rgb"]), image_size=56)(big).shape == (1, 196, 32)


def test_encoder_is_frozen_in_eval_and_bf16_returns_float32(encoders):
    enc = repa.RepaEncoder.from_pretrained(str(encoders["dropout"]))
    enc.train()  # a parent's .train() must not turn its dropout on
    assert not enc.training and not any(m.training for m in enc.modules())
    assert not any(p.requires_grad for p in enc.parameters())
    images = torch.rand(2, 3, 28, 28) * 2 - 1
    out = enc(images)
    assert torch.equal(out, enc(images)) and not out.requires_grad
    half = repa.RepaEncoder.from_pretrained(str(encoders["dropout"]), dtype="bfloat16")
    assert next(half.backbone.parameters()).dtype == torch.bfloat16
    low = half(images)
    assert low.dtype == torch.float32 and (low - out).abs().max() < 0.1 * out.abs().max()


# ---------------------------------------------------------------------------
# Hook on block d, projector
# ---------------------------------------------------------------------------


def _tiny_sit(depth=3):
    torch.manual_seed(0)
    model = SiTTransformer2DModel(sample_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=depth,
                                  num_heads=2, class_dropout_prob=0.1, num_classes=4, learn_sigma=False)
    with torch.no_grad():
        for p in model.parameters():  # adaLN-Zero starts every block as the identity: make them act
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def _blocks_by_hand(model, x, t, y, depth):
    h = model.patch_embed(x) + model.pos_embed  # (N, T, D)
    c_act = F.silu(model.time_embed(t, h.dtype) + model.class_embed(y))  # (N, D)
    for block in model.transformer_blocks[:depth]:
        h = block(h, c_act)
    return h


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_hook_captures_block_d_and_leaves_the_forward_unchanged(depth):
    model = _tiny_sit()
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([0.3, 0.8]), torch.tensor([1, 4])
    with torch.no_grad():
        plain = model(x, t, y).sample
        with repa.capture_hidden_state(model, depth) as hidden:
            hooked = model(x, t, y).sample
            captured = hidden.pop()
        after = model(x, t, y).sample
        expected = _blocks_by_hand(model, x, t, y, depth)
    assert torch.equal(captured, expected) and captured.shape == (2, 16, 32)
    assert torch.equal(plain, hooked) and torch.equal(plain, after)
    assert all(not b._forward_hooks for b in model.transformer_blocks)  # removed on exit
    with pytest.raises(RuntimeError, match="no forward"):
        hidden.pop()


def test_repa_gradient_reaches_the_first_blocks_only_with_and_without_checkpointing():
    for checkpointing in (False, True):
        model = _tiny_sit().train()
        if checkpointing:
            model.enable_gradient_checkpointing()
        projector = repa.RepaProjector(32, 16, 8, generator=torch.Generator().manual_seed(0))
        with repa.capture_hidden_state(model, 1) as hidden:
            model(torch.randn(2, 1, 8, 8), torch.tensor([0.3, 0.8]), torch.tensor([1, 2]))
            loss = repa.repa_loss(projector(hidden.pop()), torch.randn(2, 16, 8))
        loss.backward()
        grads = [p.grad for p in model.transformer_blocks[0].parameters()]
        assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
        assert all(p.grad is None for p in model.transformer_blocks[1].parameters())
        assert all(p.grad is not None for p in projector.parameters())


def test_projector_shape_init_and_token_grid():
    projector = repa.RepaProjector(32, 64, 8, generator=torch.Generator().manual_seed(0))
    same = repa.RepaProjector(32, 64, 8, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(projector.state_dict().values(), same.state_dict().values(),
                                                 strict=True))
    assert list(projector.state_dict()) == [f"linear_{i}.{k}" for i in (1, 2, 3) for k in ("weight", "bias")]
    assert all(not b.any() for k, b in projector.state_dict().items() if k.endswith("bias"))
    h = torch.randn(2, 5, 32)
    expected = projector.linear_3(F.silu(projector.linear_2(F.silu(projector.linear_1(h)))))
    assert torch.equal(projector(h), expected) and expected.shape == (2, 5, 8)
    assert repa.token_grid(_tiny_sit()) == (4, 4)


def test_spatial_zscore_matches_hand_computation():
    # One image, 3 tokens, 2 channels: channel 0 = (1, 2, 6) (mean 3, unbiased std sqrt(7)), channel 1 constant.
    y = torch.tensor([[[1.0, 5.0], [2.0, 5.0], [6.0, 5.0]]])
    out = repa.spatial_zscore(y, alpha=0.5, eps=1e-6)
    root7 = 7.0 ** 0.5
    expected0 = [(v - 0.5 * 3.0) / (root7 + 1e-6) for v in (1.0, 2.0, 6.0)]
    expected1 = [(5.0 - 0.5 * 5.0) / 1e-6] * 3  # a constant channel: std 0, eps keeps it finite
    assert torch.allclose(out[0, :, 0], torch.tensor(expected0), rtol=1e-6)
    assert torch.allclose(out[0, :, 1], torch.tensor(expected1), rtol=1e-5)
    # alpha 1: zero mean and unit std per image and channel; alpha 0: only rescaled; images independent.
    y = torch.randn(3, 7, 5, dtype=torch.float64)
    full = repa.spatial_zscore(y, alpha=1.0, eps=0.0)
    assert full.dtype == torch.float32
    assert torch.allclose(full.mean(1), torch.zeros(3, 5), atol=1e-6)
    assert torch.allclose(full.std(1), torch.ones(3, 5), atol=1e-5)
    assert torch.allclose(repa.spatial_zscore(y, alpha=0.0, eps=0.0), (y / y.std(1, keepdim=True)).float())
    assert torch.equal(repa.spatial_zscore(y[1:2], alpha=0.3), repa.spatial_zscore(y, alpha=0.3)[1:2])


def test_conv_projector_is_a_convolution_on_the_token_grid():
    projector = repa.RepaConvProjector(6, 4, (2, 3), kernel_size=3, generator=torch.Generator().manual_seed(0))
    same = repa.build_projector("conv", 6, 4, kernel_size=3, grid=(2, 3), generator=torch.Generator().manual_seed(0))
    assert list(projector.state_dict()) == ["conv.weight", "conv.bias"]
    assert all(torch.equal(a, b) for a, b in zip(projector.state_dict().values(), same.state_dict().values(),
                                                 strict=True))
    bound = 1.0 / (6 * 9) ** 0.5  # nn.Conv2d's own init: weights and bias within 1/sqrt(fan_in)
    assert projector.conv.weight.abs().max() <= bound and projector.conv.bias.abs().max() <= bound
    # By hand: token (r, c) of the output = bias + sum over the 3 x 3 neighbours (zero outside the grid).
    h = torch.randn(2, 6, 6)  # (N, 2*3 tokens, D=6), row-major grid
    out = projector(h)
    grid = h.reshape(2, 2, 3, 6)  # (N, rows, cols, D)
    w, b = projector.conv.weight, projector.conv.bias  # (4, 6, 3, 3), (4,)
    for r in range(2):
        for c in range(3):
            acc = b.clone().expand(2, 4).clone()
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    if 0 <= r + dr < 2 and 0 <= c + dc < 3:
                        acc = acc + grid[:, r + dr, c + dc] @ w[:, :, dr + 1, dc + 1].T
            assert torch.allclose(out[:, r * 3 + c], acc, atol=1e-5)
    mlp = repa.build_projector("mlp", 6, 4, projector_dim=8)
    assert isinstance(mlp, repa.RepaProjector) and mlp.projector_dim == 8


def test_targets_are_z_scored_on_the_encoder_grid_before_the_resize():
    feats = torch.randn(2, 16, 3)  # a precomputed 4 x 4 grid
    batch = {repa.REPA_FEATURES_KEY: feats}
    got = repa.repa_targets(batch, (2, 2), zscore_alpha=0.6)
    expected = repa.resize_token_grid(repa.spatial_zscore(feats, alpha=0.6), (4, 4), (2, 2))
    assert torch.equal(got, expected)
    assert torch.equal(repa.repa_targets(batch, (4, 4)), feats)  # off: the raw features


# ---------------------------------------------------------------------------
# Precomputed features == on-the-fly features
# ---------------------------------------------------------------------------


def _tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[8, 16], latent_channels=4,
        layers_per_block=1, norm_num_groups=4, sample_size=16,
    )


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """An imagefolder of 6 RGB PNGs (3 classes) and the same images as an in-memory grey dataset."""
    import datasets

    root = tmp_path_factory.mktemp("repa-images")
    rng = np.random.default_rng(0)
    arrays = [(rng.random((20, 24, 3)) * 255).astype(np.uint8) for _ in range(6)]
    for i, arr in enumerate(arrays):
        (root / "images" / f"c{i % 3}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(root / "images" / f"c{i % 3}" / f"{i}.png")
    _tiny_vae().save_pretrained(root / "vae")
    grey = datasets.Dataset.from_dict({"image": [Image.fromarray(a[:, :, 0]) for a in arrays],
                                       "label": [i % 3 for i in range(6)]})
    return root, grey


def _precompute(tmp_path, argv, dataset=None):
    from training.config import parse_config
    from training.precompute_latents import PrecomputeConfig, precompute

    return precompute(parse_config([*argv, "--output_dir", str(tmp_path / "out"), "--dtype", "float32",
                                    "--batch_size", "4", "--dataloader_num_workers", "0"],
                                   cls=PrecomputeConfig), dataset=dataset)


def _assert_matches_on_the_fly(store, pixels_dataset, encoder, n, seed=3):
    seen = set()
    for position in range(12):
        row = position % n
        flip = flip_for(seed, position)
        seen.add(flip)
        pixels = pixels_dataset[(position, row)]["pixels"]  # (C, S, S), mirrored by the same coin
        torch.testing.assert_close(store[(position, row)]["repa_features"], encoder(pixels[None])[0],
                                   atol=1e-5, rtol=1e-5)
    assert seen == {True, False}


def test_precomputed_features_equal_on_the_fly_with_latents(images, encoders, tmp_path):
    root, _ = images
    out = _precompute(tmp_path, ["--train_data_dir", str(root / "images"), "--vae", str(root / "vae"),
                                 "--resolution", "16", "--num_classes", "3", "--repa_encoder", str(encoders["rgb"])])
    meta = repa.RepaFeaturesMeta.read(out)
    assert (meta.grid, meta.dim, meta.num_examples, meta.image_channels) == ((7, 7), 32, 6, 3)
    assert np.load(out / "shard-00000-repa.npy").shape == (6, 2, 49, 32)
    store = repa.RepaFeatureStore(out)
    latents = LatentDataset(out, seed=3, random_flip=True)
    store.check(num_rows=6, resolution=16, encoder=str(encoders["rgb"]), labels=latents.labels)
    wrapped = repa.WithRepaFeatures(latents, store, seed=3, random_flip=True)
    example = wrapped[(0, 0)]
    assert set(example) == {"moments", "label", "position", "repa_features"}
    import datasets

    folder = datasets.load_dataset("imagefolder", data_dir=str(root / "images"), split="train")
    pixels = ImageDataset(folder, "image", "label", 16, 3, seed=3, random_flip=True)
    encoder = repa.RepaEncoder.from_pretrained(str(encoders["rgb"]))
    _assert_matches_on_the_fly(wrapped, pixels, encoder, 6)
    assert not torch.equal(store.get(0, False), store.get(0, True))  # the mirror's features are its own
    batch = torch.utils.data.default_collate([wrapped[(q, q)] for q in range(3)])
    target = repa.repa_targets(batch, (4, 4))
    assert target.shape == (3, 16, 32)
    torch.testing.assert_close(target, repa.resize_token_grid(batch["repa_features"], (7, 7), (4, 4)))


def test_features_only_for_grey_pixel_space_data(images, encoders, tmp_path):
    _, grey = images
    out = _precompute(tmp_path, ["--vae", "none", "--resolution", "28", "--num_classes", "3",
                                 "--repa_encoder", str(encoders["grey"])], dataset=grey)
    assert not (out / "meta.json").exists() and repa.RepaFeaturesMeta.read(out).image_channels == 1
    store = repa.RepaFeatureStore(out, flag="--repa_features_dir")
    store.check(num_rows=6, labels=grey["label"])
    pixels = ImageDataset(grey, "image", "label", 28, 1, seed=3, random_flip=True)
    wrapped = repa.WithRepaFeatures(pixels, store, seed=3, random_flip=True)
    encoder = repa.RepaEncoder.from_pretrained(str(encoders["grey"]))
    _assert_matches_on_the_fly(wrapped, pixels, encoder, 6)
    batch = torch.utils.data.default_collate([pixels[(q, q)] for q in range(3)])
    torch.testing.assert_close(repa.repa_targets(batch, (7, 7), encoder), encoder(batch["pixels"]))


# ---------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------


def _bad_cases(encoders, tmp_path):
    enc = repa.RepaEncoder.from_pretrained(str(encoders["rgb"]))
    (tmp_path / "not-a-model").mkdir()
    (tmp_path / "not-a-model" / "config.json").write_text("{}")
    return [
        ("depth-0", lambda: repa.check_repa_depth(0, 4), ["--repa_depth", "[1, 4]", "0"]),
        ("depth-too-deep", lambda: repa.check_repa_depth(5, 4), ["--repa_depth", "[1, 4]", "5"]),
        ("depth-text", lambda: repa.check_repa_depth("2", 4), ["--repa_depth", "'2'"]),
        ("hook-depth", lambda: repa.attach_hidden_capture(_tiny_sit(), 4), ["depth", "[1, 3]", "4"]),
        ("encoder-missing", lambda: repa.RepaEncoder.from_pretrained(str(tmp_path / "nope")),
         ["--repa_encoder", "nope", "not an existing folder"]),
        ("encoder-not-a-model", lambda: repa.RepaEncoder.from_pretrained(str(tmp_path / "not-a-model")),
         ["--repa_encoder", "not-a-model", "could not be loaded"]),
        ("encoder-offline", lambda: repa.RepaEncoder.from_pretrained("org/no-such-encoder"),
         ["--repa_encoder", "'org/no-such-encoder'", "offline"]),
        ("encoder-empty", lambda: repa.RepaEncoder.from_pretrained(""), ["--repa_encoder", "''"]),
        ("encoder-dtype", lambda: repa.RepaEncoder.from_pretrained(str(encoders["rgb"]), dtype="float64"),
         ["--repa_encoder_dtype", "'float64'"]),
        ("image-size", lambda: repa.RepaEncoder.from_pretrained(str(encoders["rgb"]), image_size=30),
         ["--repa_image_size", "30", "patch size 4"]),
        ("encoder-channels", lambda: repa.RepaEncoder.from_pretrained(str(encoders["grey"]))(torch.zeros(1, 3, 28, 28)),
         ["3 channels", "takes 1"]),
        ("encoder-images-2d", lambda: enc(torch.zeros(28, 28)), ["images", "(28, 28)"]),
        ("projector-dim-0", lambda: repa.RepaProjector(32, 0, 8), ["projector_dim", "0"]),
        ("projector-input", lambda: repa.RepaProjector(32, 4, 8)(torch.zeros(2, 3, 16)), ["hidden", "(2, 3, 16)"]),
        ("loss-shapes", lambda: repa.repa_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, 5)),
         ["projected", "(2, 3, 4)", "(2, 3, 5)"]),
        ("loss-2d", lambda: repa.repa_loss(torch.zeros(2, 4), torch.zeros(2, 4)), ["projected", "(2, 4)"]),
        ("loss-reduction", lambda: repa.repa_loss(torch.zeros(1, 1, 2), torch.zeros(1, 1, 2), reduction="sum"),
         ["reduction", "'sum'"]),
        ("grid-tokens", lambda: repa.resize_token_grid(torch.zeros(1, 10, 2), (3, 3), (2, 2)), ["10", "3x3"]),
        ("targets-none", lambda: repa.repa_targets({"moments": torch.zeros(1)}, (2, 2)), ["repa_features"]),
        ("targets-latents", lambda: repa.repa_targets({"moments": torch.zeros(1)}, (2, 2), enc),
         ["pixels", "precompute"]),
        ("store-missing", lambda: repa.RepaFeatureStore(tmp_path, flag="--latents_dir"),
         ["--latents_dir", str(tmp_path), "repa.json"]),
        ("conv-kernel-even", lambda: repa.RepaConvProjector(32, 8, (2, 2), kernel_size=2), ["kernel_size", "odd", "2"]),
        ("conv-kernel-0", lambda: repa.RepaConvProjector(32, 8, (2, 2), kernel_size=0), ["kernel_size", "0"]),
        ("conv-grid", lambda: repa.RepaConvProjector(32, 8, (2, 0)), ["grid", "(2, 0)"]),
        ("conv-grid-bool", lambda: repa.RepaConvProjector(32, 8, (True, 2)), ["grid", "(True, 2)"]),
        ("conv-input-tokens", lambda: repa.RepaConvProjector(32, 8, (2, 2))(torch.zeros(1, 5, 32)),
         ["hidden", "(N, 4, 32)", "2x2", "(1, 5, 32)"]),
        ("build-kind", lambda: repa.build_projector("attention", 32, 8), ["projector kind", "mlp, conv", "'attention'"]),
        ("build-conv-no-grid", lambda: repa.build_projector("conv", 32, 8), ["conv projector", "grid"]),
        ("zscore-one-token", lambda: repa.spatial_zscore(torch.zeros(2, 1, 4)), ["at least 2 tokens", "1"]),
        ("zscore-alpha", lambda: repa.spatial_zscore(torch.zeros(2, 3, 4), alpha=1.5), ["alpha", "[0, 1]", "1.5"]),
        ("zscore-alpha-nan", lambda: repa.spatial_zscore(torch.zeros(2, 3, 4), alpha=float("nan")), ["alpha", "nan"]),
        ("zscore-2d", lambda: repa.spatial_zscore(torch.zeros(3, 4)), ["features", "(3, 4)"]),
    ]


def test_bad_inputs_raise_input_error_naming_the_argument(encoders, tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    cases = _bad_cases(encoders, tmp_path)
    assert len(cases) == 32
    for name, call, expected in cases:
        with pytest.raises(InputError) as info:
            call()
        for text in expected:
            assert text in str(info.value), (name, str(info.value))


def test_store_check_refuses_other_data(images, encoders, tmp_path):
    _, grey = images
    out = _precompute(tmp_path, ["--vae", "none", "--resolution", "28", "--num_classes", "3",
                                 "--repa_encoder", str(encoders["grey"])], dataset=grey)
    store = repa.RepaFeatureStore(out, flag="--repa_features_dir")
    cases = [
        (dict(num_rows=5), ["6 rows", "5"]),
        (dict(num_rows=6, resolution=32), ["resolution 28", "--resolution 32"]),
        (dict(num_rows=6, encoder="facebook/dinov2-base"), ["--repa_encoder 'facebook/dinov2-base'"]),
        (dict(num_rows=6, labels=[0, 1, 2, 0, 2, 1]), ["labels", "row 4"]),
    ]
    for kwargs, expected in cases:
        with pytest.raises(DataError) as info:
            store.check(**kwargs)
        assert "--repa_features_dir" in str(info.value)
        for text in expected:
            assert text in str(info.value), str(info.value)


# ---------------------------------------------------------------------------
# The digits scripts: the encoder trainer and the experiment runner
# ---------------------------------------------------------------------------


def _load_script(name):
    return load_script(f"benchmarks/{name}.py", f"_repa_{name}")


def _run_cli(module, argv, capsys):
    capsys.readouterr()
    try:
        code = module.main(argv)
    except SystemExit as exit_:  # argparse: a value of the wrong type
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.err, captured.out


def _files(root):
    return sorted((str(p.relative_to(root)), p.stat().st_mtime_ns) for p in root.rglob("*"))


ENCODER_BAD = [
    (["--steps", "0"], ["--steps", "0"]),
    (["--steps", "x"], ["--steps", "'x'"]),
    (["--batch-size", "1"], ["--batch-size", "1"]),
    (["--lr", "nan"], ["--lr", "nan"]),
    (["--lr", "0"], ["--lr", "0"]),
    (["--heads", "3"], ["--heads 3", "--hidden-size 64"]),
    (["--layers", "0"], ["--layers", "0"]),
    (["--mask-ratio", "1"], ["--mask-ratio", "1"]),
    (["--objective", "simclrr"], ["--objective", "'simclrr'", "simclr"]),
    (["--temperature", "0"], ["--temperature", "0"]),
    (["--temperature", "nan"], ["--temperature", "nan"]),
    (["--temperature", "-0.2"], ["--temperature", "-0.2"]),
    (["--seed", "-1"], ["--seed", "-1"]),
    (["--threads", "0"], ["--threads", "0"]),
    (["--out", "{tmp}/full"], ["--out", "full", "--overwrite"]),
    (["--out", "{tmp}/a-file"], ["--out", "a-file", "file"]),
]


@pytest.mark.parametrize(("args", "expected"), ENCODER_BAD, ids=[" ".join(a) for a, _ in ENCODER_BAD])
def test_train_digit_encoder_refuses_bad_flags_and_writes_nothing(args, expected, tmp_path, capsys):
    script = _load_script("train_digit_encoder")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    (tmp_path / "a-file").write_text("keep")
    before = _files(tmp_path)
    argv = ["--out", str(tmp_path / "enc"), *[a.format(tmp=tmp_path) for a in args]]
    code, err, _ = _run_cli(script, argv, capsys)
    assert code == 2 and "Traceback" not in err, err
    for text in expected:
        assert text in err.strip().splitlines()[-1], err
    assert _files(tmp_path) == before


@pytest.mark.parametrize("objective", ["simclr", "simmim", "both"])
def test_train_digit_encoder_smoke_saves_an_automodel_folder(objective, tmp_path, capsys):
    script = _load_script("train_digit_encoder")
    out = tmp_path / "enc"
    argv = ["--out", str(out), "--objective", objective, "--steps", "2", "--batch-size", "8", "--hidden-size", "16",
            "--layers", "1", "--heads", "2", "--skip-probe"]
    assert _run_cli(script, argv, capsys)[0] == 0
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= {p.name for p in out.iterdir()}
    report = json.loads((out / "train_report.json").read_text())
    assert report["objective"] == objective and ("heldout_masked_l1" in report) == (objective != "simclr")
    enc = repa.RepaEncoder.from_pretrained(str(out))
    assert (enc.num_channels, enc.grid, enc.hidden_size, enc.image_size) == (1, (7, 7), 16, 28)
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    assert torch.equal(enc.preprocess(x), x)  # mean 0.5, std 0.5: the [-1, 1] images go in unchanged


def test_nt_xent_matches_hand_computation():
    script = _load_script("train_digit_encoder")
    g = torch.Generator().manual_seed(0)
    z1, z2, tau = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g), 0.3
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=-1).double()
    terms = []
    for i in range(6):
        partner = (i + 3) % 6
        others = [j for j in range(6) if j != i]
        logits = torch.stack([z[i] @ z[j] / tau for j in others])
        terms.append(-(z[i] @ z[partner] / tau - torch.logsumexp(logits, 0)))
    assert float(script.nt_xent(z1, z2, tau)) == pytest.approx(float(torch.stack(terms).mean()), rel=1e-5)
    # identical, well-separated pairs: near-zero loss; a swapped partner: large
    e = torch.eye(5)[:3] * 10
    assert float(script.nt_xent(e, e, 0.1)) < 1e-3 < float(script.nt_xent(e, e.flip(0), 0.1))


def test_strong_views_stay_in_range_and_follow_the_generator():
    script = _load_script("train_digit_encoder")
    x = script.uci_digits()[:8]  # (8, 1, 28, 28)
    v1 = script.augment(x, torch.Generator().manual_seed(1), strong=True)
    v2 = script.augment(x, torch.Generator().manual_seed(1), strong=True)
    v3 = script.augment(x, torch.Generator().manual_seed(2), strong=True)
    assert v1.shape == x.shape and torch.equal(v1, v2) and not torch.equal(v1, v3)
    assert v1.min() >= -1 and v1.max() <= 1 and v1.mean() < -0.5  # still a digit on a black background


@pytest.mark.parametrize("objective", ["simclr", "both"])
def test_contrastive_loss_decreases_on_a_tiny_encoder(objective):
    script = _load_script("train_digit_encoder")
    args = script.build_parser().parse_args(["--objective", objective, "--hidden-size", "16", "--layers", "1",
                                             "--heads", "2"])
    torch.manual_seed(0)
    encoder = script.build_encoder(args).train()
    heads = {"project": script.projection_head(16), "pixels": torch.nn.Linear(16, 16)}
    opt = torch.optim.AdamW([*encoder.parameters(), *(p for h in heads.values() for p in h.parameters())], lr=3e-3)
    x = script.uci_digits()[:16]  # (16, 1, 28, 28)
    losses = []
    for _ in range(15):
        loss = script.objective_loss(encoder, heads, x, args, torch.Generator().manual_seed(0))  # the same views
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.9 * losses[0], losses


def test_shipped_digit_encoder_loads_like_dinov2():
    folder = REPO_ROOT / "src" / "sit_diffusers" / "data" / "digit-encoder"
    if not (folder / "config.json").is_file():
        pytest.skip("the digit encoder is not built yet (benchmarks/train_digit_encoder.py)")
    enc = repa.RepaEncoder.from_pretrained(str(folder))
    assert (enc.num_channels, enc.grid, enc.num_prefix_tokens) == (1, (7, 7), 1)
    assert sum(f.stat().st_size for f in folder.iterdir()) < 2 * 2**20
    from sit_diffusers.digits import digits_tensors

    x, _ = digits_tensors("heldout")
    assert enc(x[:4]).shape == (4, 49, enc.hidden_size)


RUNNER_BAD = [
    (["--arms", "plain,repaa"], ["--arms", "'repaa'", "did you mean 'repa'"]),
    (["--arms", "plain,plain"], ["--arms", "distinct"]),
    (["--seeds", "0,x"], ["--seeds", "'0,x'"]),
    (["--seeds", "-1"], ["--seeds", "-1"]),
    (["--steps", "0"], ["--steps", "0"]),
    (["--batch-size", "0"], ["--batch-size", "0"]),
    (["--lr", "inf"], ["--lr", "inf"]),
    (["--ema", "1.5"], ["--ema", "1.5"]),
    (["--heads", "5"], ["--heads 5", "--hidden-size 192"]),
    (["--repa-depth", "7"], ["--repa-depth", "7", "--depth 6"]),
    (["--patch-size", "5"], ["--patch-size 5", "divide the 28 px side"]),
    (["--patch-size", "28"], ["--patch-size 28", "2 or more tokens"]),
    (["--patch-size", "0"], ["--patch-size", "0"]),
    (["--repa-depth", "0"], ["--repa-depth", "0"]),
    (["--repa-coeff", "-1"], ["--repa-coeff", "-1"]),
    (["--repa-projector-dim", "0"], ["--repa-projector-dim", "0"]),
    (["--repa-stop-fraction", "1"], ["--repa-stop-fraction", "1"]),
    (["--eval-fractions", "0.5"], ["--eval-fractions", "1.0"]),
    (["--eval-fractions", "0,1"], ["--eval-fractions"]),
    (["--eval-fractions", "a"], ["--eval-fractions", "'a'"]),
    (["--samples", "5"], ["--samples", "5"]),
    (["--guidance", "nan"], ["--guidance", "nan"]),
    (["--encoder", "{tmp}/no-encoder"], ["--encoder", "no-encoder", "config.json"]),
    (["--features", "cached"], ["--features", "'cached'"]),
    (["--attention-backend", "natve"], ["--attention-backend 'natve'", "did you mean 'native'"]),
    (["--attention-backend", "_native_cudnn"], ["--attention-backend _native_cudnn", "cannot train on cpu"]),
    (["--mixed-precision", "fp8"], ["--mixed-precision", "'fp8'"]),
    (["--out", "{tmp}/a-file"], ["--out", "a-file"]),
]


@pytest.mark.parametrize(("args", "expected"), RUNNER_BAD, ids=[" ".join(a) for a, _ in RUNNER_BAD])
def test_repa_digits_refuses_bad_flags_and_writes_nothing(args, expected, encoders, tmp_path, capsys):
    runner = _load_script("repa_digits")
    (tmp_path / "a-file").write_text("keep")
    before = _files(tmp_path)
    argv = ["--out", str(tmp_path / "runs"), "--encoder", str(encoders["grey"]), "--dry-run",
            *[a.format(tmp=tmp_path) for a in args]]
    code, err, _ = _run_cli(runner, argv, capsys)
    assert code == 2 and "Traceback" not in err, err
    for text in expected:
        assert text in err.strip().splitlines()[-1], err
    assert _files(tmp_path) == before


def test_repa_digits_dry_run_plans_every_run_and_writes_nothing(encoders, tmp_path, capsys):
    runner = _load_script("repa_digits")
    argv = ["--out", str(tmp_path / "runs"), "--encoder", str(encoders["grey"]), "--dry-run", "--steps", "400"]
    code, err, out = _run_cli(runner, argv, capsys)
    assert code == 0, err
    assert "8 runs of 400 steps" in out and "scored at steps [100, 200, 400]" in out and "patch 4)" in out
    for arm in ("plain", "repa", "repa-stop", "irepa"):
        for seed in (0, 1):
            assert f"{arm}-seed{seed}: output_dir" in out
    assert "'repa_stop_step': 160" in out and "'repa_depth': 2" in out and "repa_features_dir" in out
    irepa = next(line for line in out.splitlines() if line.strip().startswith("irepa-seed0"))
    assert "'repa_projector': 'conv'" in irepa and "'repa_spatial_norm': 'zscore'" in irepa
    assert "repa_projector_dim" not in irepa
    assert not (tmp_path / "runs").exists()


def test_repa_digits_jobs_train_in_parallel_and_equal_one_at_a_time(encoders, tmp_path):
    """--jobs 2 trains the runs in two processes, writes every run to the JSON, and gives the same numbers as
    the runs one after another (both one thread per run)."""
    import subprocess

    common = ["--arms", "plain,repa", "--seeds", "0", "--steps", "4", "--batch-size", "8", "--warmup", "0",
              "--hidden-size", "32", "--depth", "2", "--heads", "2", "--repa-depth", "1", "--repa-projector-dim", "16",
              "--samples", "10", "--sampler-steps", "1", "--eval-fractions", "0.5,1.0", "--features", "on-the-fly",
              "--encoder", str(encoders["grey"]), "--threads", "1"]
    results = {}
    for jobs in (1, 2):
        out = tmp_path / f"jobs{jobs}"
        proc = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "repa_digits.py"), "--out", str(out),
                               "--jobs", str(jobs), *common], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[jobs] = json.loads((out / "repa_digits.json").read_text())["runs"]
    assert sorted(results[2]) == ["plain-seed0", "repa-seed0"]
    for name in results[1]:
        assert [p["step"] for p in results[2][name]["points"]] == [2, 4]
        assert results[2][name]["points"] == results[1][name]["points"], name


TINY_RUN = ["--arms", "plain", "--seeds", "0", "--steps", "4", "--batch-size", "8", "--warmup", "0",
            "--hidden-size", "32", "--depth", "2", "--heads", "2", "--samples", "10", "--sampler-steps", "1",
            "--eval-fractions", "0.5,1.0", "--threads", "1"]


def test_repa_digits_resumes_a_stopped_run_and_scores_it_like_an_unbroken_one(tmp_path, capsys):
    """A run stopped part-way (its newest checkpoint at step 2, no scores yet) is refused without --resume
    (nothing written) and with it continues to the same numbers as the run never stopped; a finished run is
    kept, and one finished with another budget is refused."""
    import shutil

    runner = _load_script("repa_digits")
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    code, err, _ = _run_cli(runner, ["--out", str(whole), *TINY_RUN], capsys)
    assert code == 0, err
    expected = json.loads((whole / "repa_digits.json").read_text())["runs"]["plain-seed0"]
    assert expected["parts"] == 1 and expected["fields"]["max_train_steps"] == 4

    shutil.copytree(whole, broken)  # as if killed after the step-2 checkpoint: no step 4, no scores
    run = broken / "plain-seed0"
    shutil.rmtree(run / "checkpoints" / "checkpoint-0000004")
    shutil.rmtree(run / "pipeline")
    (broken / "repa_digits.json").unlink()
    (run / "runs.jsonl").write_text((run / "runs.jsonl").read_text().replace(str(whole), str(broken)))
    before = _files(broken)
    code, err, _ = _run_cli(runner, ["--out", str(broken), *TINY_RUN], capsys)
    assert code == 2 and "plain-seed0 (step 2) stopped before being scored: pass --resume" in err, err
    assert _files(broken) == before

    code, err, out = _run_cli(runner, ["--out", str(broken), "--resume", *TINY_RUN], capsys)
    assert code == 0, err
    assert "plain-seed0: continues from its checkpoint at step 2" in out
    resumed = json.loads((broken / "repa_digits.json").read_text())["runs"]["plain-seed0"]
    assert resumed["points"] == expected["points"]
    assert resumed["parts"] == 2 and "resume_from_checkpoint" not in resumed["fields"]

    code, err, out = _run_cli(runner, ["--out", str(broken), *TINY_RUN], capsys)
    assert code == 0 and "plain-seed0: done before, kept" in out, err
    before = _files(broken)
    code, err, _ = _run_cli(runner, ["--out", str(broken), *TINY_RUN, "--steps", "8"], capsys)
    assert code == 2 and "finished with other settings" in err and "--steps 4 -> 8" in err, err
    code, err, _ = _run_cli(runner, ["--out", str(broken), *TINY_RUN, "--samples", "20"], capsys)
    assert code == 2 and "scoring" in err and "'samples': 10" in err, err
    assert _files(broken) == before


def test_repa_stop_forks_from_the_repa_run_and_scores_like_one_trained_from_zero(encoders, tmp_path, capsys):
    """The repa-stop run starts from its repa sibling's checkpoint at the stop step (one process, and with
    --jobs 2 after the sibling has finished), and its scores equal those of a repa-stop run trained alone."""
    import subprocess

    runner = _load_script("repa_digits")
    tiny = [*TINY_RUN[2:], "--repa-depth", "1", "--repa-projector-dim", "16", "--repa-stop-fraction", "0.25",
            "--features", "on-the-fly", "--encoder", str(encoders["grey"])]
    alone, forked, pooled = tmp_path / "alone", tmp_path / "forked", tmp_path / "pooled"
    code, err, _ = _run_cli(runner, ["--out", str(alone), "--arms", "repa-stop", *tiny], capsys)
    assert code == 0, err
    code, err, out = _run_cli(runner, ["--out", str(forked), "--arms", "repa-stop,repa", *tiny], capsys)
    assert code == 0, err
    assert "repa-stop-seed0: forked from repa-seed0 at step 1" in out
    assert out.index("repa-seed0: training") < out.index("repa-stop-seed0: training")
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "repa_digits.py"), "--out", str(pooled),
                           "--arms", "repa,repa-stop", "--jobs", "2", *tiny], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = json.loads((alone / "repa_digits.json").read_text())["runs"]["repa-stop-seed0"]
    assert "forked_from" not in expected
    for folder in (forked, pooled):
        runs = json.loads((folder / "repa_digits.json").read_text())["runs"]
        assert runs["repa-stop-seed0"]["forked_from"] == "repa-seed0 at step 1"
        assert runs["repa-stop-seed0"]["points"] == expected["points"], folder.name
        assert runs["repa-stop-seed0"]["fields"] == expected["fields"] | {"output_dir": str(folder / "repa-stop-seed0")}
        assert runs["repa-seed0"]["points"] != expected["points"]  # the stop changed the run after step 1

    # a fork killed before it saved a checkpoint of its own resumes from the copied one with --resume
    import shutil

    run = forked / "repa-stop-seed0"
    for step in (2, 3, 4):
        shutil.rmtree(run / "checkpoints" / f"checkpoint-{step:07d}")
    shutil.rmtree(run / "pipeline")
    results = json.loads((forked / "repa_digits.json").read_text())
    del results["runs"]["repa-stop-seed0"]
    (forked / "repa_digits.json").write_text(json.dumps(results))
    code, err, out = _run_cli(runner, ["--out", str(forked), "--arms", "repa-stop,repa", "--resume", *tiny], capsys)
    assert code == 0, err
    assert "repa-stop-seed0: continues from its checkpoint at step 1" in out and "repa-seed0: done before" in out
    runs = json.loads((forked / "repa_digits.json").read_text())["runs"]
    assert runs["repa-stop-seed0"]["points"] == expected["points"]


@pytest.mark.parametrize("text", ["{not json", "[]", '{"plan": {}}'])
def test_repa_digits_refuses_a_results_file_it_cannot_read(text, tmp_path, capsys):
    runner = _load_script("repa_digits")
    (tmp_path / "repa_digits.json").write_text(text)
    code, err, _ = _run_cli(runner, ["--out", str(tmp_path), "--dry-run", *TINY_RUN], capsys)
    assert code == 2 and "repa_digits.json" in err.strip().splitlines()[-1] and "Traceback" not in err, err
    assert (tmp_path / "repa_digits.json").read_text() == text


def test_step_time_leaves_out_the_pause_of_a_run_trained_in_parts(tmp_path):
    """Checkpoints every 100 steps, 10 s apart, except the run was paused for an hour after step 200: the
    interval that begins at the restart is left out; with no interval left, this part's own time is used."""
    import os

    runner = _load_script("repa_digits")
    stamps = {100: 0.0, 200: 10.0, 300: 3630.0, 400: 3640.0}
    for step, stamp in stamps.items():
        folder = tmp_path / "checkpoints" / f"checkpoint-{step:07d}"
        folder.mkdir(parents=True)
        (folder / "train_state.json").write_text("{}")
        os.utime(folder / "train_state.json", (1e9 + stamp, 1e9 + stamp))
    starts = [{"from_step": 0}, {"from_step": 200}]
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(s) + "\n" for s in starts))
    assert runner.step_time(tmp_path, [100, 200, 400], 999.0, 200) == pytest.approx(0.1)
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(s) + "\n" for s in starts[:1]))
    assert runner.step_time(tmp_path, [100, 200, 400], 999.0, 400) == pytest.approx(3640.0 / 300)
    assert runner.step_time(tmp_path, [200, 300], 50.0, 100) == pytest.approx(36.2)  # one part, no restart
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(s) + "\n" for s in starts))
    assert runner.step_time(tmp_path, [200, 300], 50.0, 100) == pytest.approx(0.5)  # only the restart interval


def test_steps_to_reach_interpolates_the_fd_curve():
    runner = _load_script("repa_digits")
    curve = [(100, 50.0), (200, 30.0), (400, 10.0)]
    assert runner.steps_to_reach(curve, 20.0) == pytest.approx(300.0)
    assert runner.steps_to_reach(curve, 60.0) == 100.0
    assert runner.steps_to_reach(curve, 5.0) is None


def test_feature_store_pickles_without_its_memory_maps(images, encoders, tmp_path):
    import pickle

    _, grey = images
    out = _precompute(tmp_path, ["--vae", "none", "--resolution", "28", "--num_classes", "3",
                                 "--repa_encoder", str(encoders["grey"])], dataset=grey)
    store = repa.RepaFeatureStore(out)
    store.check(num_rows=6)  # opens the maps
    copy = pickle.loads(pickle.dumps(store))
    assert copy._features is None and len(pickle.dumps(store)) < 2000
    assert torch.equal(copy.get(5, True), store.get(5, True))
