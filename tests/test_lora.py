"""LoRA (issue 13, item 7): ``SiTPipeline``'s diffusers LoRA API and ``train_sit.py --lora_rank``.

What must hold: fused == unfused outputs (1e-5) and unfusing / disabling / unloading returns to the base;
``save_lora_weights`` -> ``load_lora_weights`` reproduces the adapter's outputs (from a folder, a file, a state
dict, and in a pipeline loaded by stock diffusers with ``trust_remote_code``), scale included
(``lora_alpha != r``); a LoRA that does not fit is refused before anything is injected and nothing is read or
written as pickle; a LoRA run trains only the adapters (base bit-identical), resumes exactly, refuses another
base, and its output loads with ``load_lora_weights``; a short adapter fine-tune of the embedded digit model on
3s and 7s turns its unconditional samples towards 3s and 7s (the digit classifier says so).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("peft")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sit_diffusers.lora import (  # noqa: E402
    LORA_WEIGHT_NAME,
    check_target_modules,
    lora_config,
    lora_target_names,
    transformer_lora_layers,
)
from sit_diffusers.modeling_sit import SiTTransformer2DModel  # noqa: E402
from sit_diffusers.pipeline_sit import SiTPipeline  # noqa: E402
from sit_diffusers.scheduling_sit import SiTSampler  # noqa: E402
from sit_diffusers.validation import InputError, NonFiniteError  # noqa: E402

TINY = {"hidden_size": 32, "depth": 2, "num_heads": 2}


def tiny_pipeline(seed: int = 0, hidden_size: int = 32) -> SiTPipeline:
    """A pixel-space SiT (1 channel, 8 px, 3 classes) with weights large enough to give non-trivial outputs."""
    torch.manual_seed(seed)
    transformer = SiTTransformer2DModel(sample_size=8, patch_size=2, in_channels=1, hidden_size=hidden_size, depth=2,
                                        num_heads=2, num_classes=3, learn_sigma=False)
    with torch.no_grad():
        for p in transformer.parameters():
            p.normal_(0.0, 0.05)
    pipe = SiTPipeline(transformer.eval(), SiTSampler.from_preset("ode-euler"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def add_trained_adapter(pipe: SiTPipeline, rank: int = 4, alpha: float = 8.0, name: str = "default",
                        seed: int = 1) -> None:
    """An adapter with random (as if trained) B, so that it changes the outputs; ``alpha != rank`` on purpose."""
    pipe.transformer.add_adapter(lora_config(rank, alpha), adapter_name=name)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in pipe.transformer.named_parameters():
            if f"lora_B.{name}" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def sample(pipe: SiTPipeline) -> torch.Tensor:
    return pipe([0, 1, 2], num_inference_steps=3, generator=torch.Generator().manual_seed(0),
                output_type="latent").images  # (3, 1, 8, 8)


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    return float((a - b).abs().max()) <= tol


# ---------------------------------------------------------------------------
# The pipeline API
# ---------------------------------------------------------------------------


def test_fused_equals_unfused_and_unfusing_returns_to_the_base() -> None:
    pipe = tiny_pipeline()
    base = sample(pipe)
    add_trained_adapter(pipe)
    adapted = sample(pipe)
    assert float((adapted - base).abs().max()) > 1e-3  # the adapter acts
    pipe.fuse_lora()
    assert pipe.fused_loras == {"default"} and pipe.num_fused_loras == 1
    assert close(sample(pipe), adapted)  # fused == unfused
    pipe.unfuse_lora()
    assert pipe.num_fused_loras == 0
    assert close(sample(pipe), adapted)
    pipe.disable_lora()
    assert close(sample(pipe), base)
    pipe.enable_lora()
    pipe.set_adapters("default", 0.5)
    half = sample(pipe)
    pipe.set_adapters("default", 1.0)
    pipe.fuse_lora(lora_scale=0.5)  # fusing at a scale == the adapter at that weight
    assert close(sample(pipe), half)
    pipe.unfuse_lora()
    pipe.unload_lora_weights()
    assert pipe.get_list_adapters() == {}
    assert close(sample(pipe), base)  # the base weights are back (to float rounding of W + dW - dW)


def test_save_then_load_reproduces_the_adapter(tmp_path: Path) -> None:
    from safetensors import safe_open

    pipe = tiny_pipeline()
    add_trained_adapter(pipe, rank=4, alpha=8.0)  # scale 2: a loader that assumed alpha = r would differ
    adapted = sample(pipe)
    layers, metadata = transformer_lora_layers(pipe.transformer)
    SiTPipeline.save_lora_weights(tmp_path / "lora", transformer_lora_layers=layers,
                                  transformer_lora_adapter_metadata=metadata)
    assert sorted(p.name for p in (tmp_path / "lora").iterdir()) == [LORA_WEIGHT_NAME]
    with safe_open(str(tmp_path / "lora" / LORA_WEIGHT_NAME), "pt") as f:
        keys, header = list(f.keys()), f.metadata()
    assert keys and all(k.startswith("transformer.transformer_blocks.") and ".lora_" in k for k in keys)
    meta = json.loads(header["lora_adapter_metadata"])
    assert meta["transformer.r"] == 4 and meta["transformer.lora_alpha"] == 8.0

    for ref in (tmp_path / "lora", tmp_path / "lora" / LORA_WEIGHT_NAME, str(tmp_path / "lora")):
        fresh = tiny_pipeline()
        fresh.load_lora_weights(ref, adapter_name="mine")
        assert fresh.get_list_adapters() == {"transformer": ["mine"]}
        assert torch.equal(sample(fresh), adapted)
    state, loaded_meta = SiTPipeline.lora_state_dict(tmp_path / "lora", return_lora_metadata=True)
    assert loaded_meta["transformer.lora_alpha"] == 8.0
    fresh = tiny_pipeline()
    fresh.load_lora_weights(state)  # a state dict carries no metadata: alpha = r, as diffusers
    assert not close(sample(fresh), adapted)
    fresh.unload_lora_weights()
    fresh.load_lora_weights(tmp_path / "lora")
    assert torch.equal(sample(fresh), adapted)


def test_two_adapters_combine_and_switch(tmp_path: Path) -> None:
    pipe = tiny_pipeline()
    base = sample(pipe)
    add_trained_adapter(pipe, name="a", seed=1)
    add_trained_adapter(pipe, name="b", seed=2)
    pipe.set_adapters("a")
    only_a = sample(pipe)
    pipe.set_adapters(["a", "b"], [1.0, 0.0])
    assert close(sample(pipe), only_a)
    pipe.set_adapters(["a", "b"], [0.0, 0.0])
    assert close(sample(pipe), base)
    pipe.delete_adapters("a")
    assert pipe.get_list_adapters() == {"transformer": ["b"]}


def test_stock_diffusers_loading_keeps_the_lora_api(tmp_path: Path) -> None:
    """A saved pipeline carries ``lora.py`` with its code (a relative import of ``pipeline_sit.py``), so
    ``DiffusionPipeline.from_pretrained(..., trust_remote_code=True)`` has ``load_lora_weights`` too."""
    from diffusers import DiffusionPipeline

    pipe = tiny_pipeline()
    pipe.save_pretrained(tmp_path / "pipe")
    assert (tmp_path / "pipe" / "lora.py").is_file()
    add_trained_adapter(pipe)
    adapted = sample(pipe)
    layers, metadata = transformer_lora_layers(pipe.transformer)
    SiTPipeline.save_lora_weights(tmp_path / "lora", layers, transformer_lora_adapter_metadata=metadata)
    stock = DiffusionPipeline.from_pretrained(tmp_path / "pipe", trust_remote_code=True)
    stock.set_progress_bar_config(disable=True)
    stock.load_lora_weights(tmp_path / "lora")
    assert torch.equal(sample(stock), adapted)


def test_a_transformer_holding_adapters_is_not_saved_as_a_pipeline(tmp_path: Path) -> None:
    """``save_pretrained`` refuses unfused adapters (peft-wrapped weights would save names no loader reads)
    and writes nothing; after ``fuse_lora`` + ``unload_lora_weights`` the merged model saves and reloads."""
    from sit_diffusers.lora import check_no_adapters

    pipe = tiny_pipeline()
    check_no_adapters(pipe.transformer)
    add_trained_adapter(pipe)
    with pytest.raises(InputError, match=r"save_pretrained: the transformer holds LoRA adapters \['default'\]"):
        pipe.save_pretrained(tmp_path / "with-adapters")
    assert not (tmp_path / "with-adapters").exists()
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    check_no_adapters(pipe.transformer)
    assert not any(".lora_" in k or "base_layer" in k for k in pipe.transformer.state_dict())
    expected = sample(pipe)
    pipe.save_pretrained(tmp_path / "merged")
    reloaded = SiTPipeline.from_pretrained(tmp_path / "merged")
    reloaded.set_progress_bar_config(disable=True)
    assert torch.equal(sample(reloaded), expected)


def test_target_module_names() -> None:
    model = tiny_pipeline().transformer
    names = lora_target_names(model)
    for name in ("attn.to_qkv", "attn.to_out", "ff.linear_1", "ff.linear_2", "adaLN_modulation",
                 "time_embed.linear_1", "final_layer.linear"):
        assert name in names
    assert check_target_modules(model, ["to_qkv", "transformer_blocks.1.ff.linear_2"]) == [
        "to_qkv", "transformer_blocks.1.ff.linear_2"]
    with pytest.raises(InputError, match=r"'qkv'.*valid names.*attn\.to_qkv"):
        check_target_modules(model, ["to_qkv", "qkv"])
    with pytest.raises(InputError, match=r"not Linear layers: attn \(SiTAttention\)"):
        check_target_modules(model, ["attn"])


def _other_model_lora(tmp_path: Path) -> Path:
    other = tiny_pipeline(hidden_size=64)
    add_trained_adapter(other)
    layers, metadata = transformer_lora_layers(other.transformer)
    SiTPipeline.save_lora_weights(tmp_path / "other", layers, transformer_lora_adapter_metadata=metadata)
    return tmp_path / "other"


def _good_state() -> dict[str, torch.Tensor]:
    pipe = tiny_pipeline()
    add_trained_adapter(pipe)
    return {f"transformer.{k}": v.clone() for k, v in transformer_lora_layers(pipe.transformer)[0].items()}


A_KEY = "transformer.transformer_blocks.0.attn.to_qkv.lora_A.weight"
B_KEY = "transformer.transformer_blocks.0.attn.to_qkv.lora_B.weight"


def _state_with(change: Any) -> dict[str, torch.Tensor]:
    state = _good_state()
    change(state)
    return state


LOAD_CASES = [
    ("other-model", lambda tmp: (_other_model_lora(tmp), {}), ["has shape (4, 64)", "(32 -> 32) needs ('r', 32)"]),
    ("unknown-module", lambda tmp: (_state_with(lambda s: s.update({
        "transformer.blocks.0.proj.lora_A.weight": torch.zeros(4, 32),
        "transformer.blocks.0.proj.lora_B.weight": torch.zeros(32, 4)})), {}),
     ["'blocks.0.proj'", "no module", "attn.to_qkv"]),
    ("not-a-linear", lambda tmp: (_state_with(lambda s: s.update({
        "transformer.transformer_blocks.0.attn.lora_A.weight": torch.zeros(4, 32),
        "transformer.transformer_blocks.0.attn.lora_B.weight": torch.zeros(32, 4)})), {}),
     ["transformer_blocks.0.attn'", "SiTAttention"]),
    ("no-prefix", lambda tmp: ({k[len("transformer."):]: v for k, v in _good_state().items()}, {}),
     ["'transformer_blocks.0.attn.to_qkv.lora_A.weight'", "diffusers' LoRA format"]),
    ("missing-b", lambda tmp: (_state_with(lambda s: s.pop(B_KEY)), {}), ["lora_B.weight is missing"]),
    ("rank-mismatch", lambda tmp: (_state_with(lambda s: s.update({A_KEY: torch.zeros(3, 32)})), {}),
     ["lora_A of rank 3", "lora_B of rank 4"]),
    ("nan-weights", lambda tmp: (_state_with(lambda s: s[A_KEY].fill_(float("nan"))), {}), [A_KEY, "NaN"]),
    ("empty", lambda tmp: ({}, {}), ["holds no LoRA weights"]),
    ("pickle-weight-name", lambda tmp: (tmp, {"weight_name": "pytorch_lora_weights.bin"}), ["weight_name", ".bin",
                                                                                             "never loaded"]),
    ("use-safetensors-false", lambda tmp: (tmp, {"use_safetensors": False}), ["use_safetensors=False", "pickle"]),
    ("folder-without-lora", lambda tmp: (tmp, {}), ["has no pytorch_lora_weights.safetensors"]),
    ("missing-path", lambda tmp: (tmp / "nope" / "x", {}), ["nope", "neither an existing file"]),
    ("unknown-kwarg", lambda tmp: (tmp, {"weights_name": "x.safetensors"}), ["weights_name", "weight_name"]),
    ("not-safetensors", lambda tmp: (_write(tmp / "l.bin", b"x"), {}), ["l.bin", "not a .safetensors"]),
    ("corrupt-file", lambda tmp: (_write(tmp / "l.safetensors", b"garbage"), {}), ["l.safetensors",
                                                                                   "not a readable"]),
    ("hotswap-unknown", lambda tmp: (_good_state(), {"hotswap": True, "adapter_name": "x"}), ["hotswap=True", "'x'"]),
    ("bad-adapter-name", lambda tmp: (_good_state(), {"adapter_name": 3}), ["adapter_name", "3"]),
]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", LOAD_CASES, ids=[c[0] for c in LOAD_CASES])
def test_a_lora_that_does_not_fit_is_refused_and_changes_nothing(case: Any, tmp_path: Path) -> None:
    _, make, expect = case
    ref, kwargs = make(tmp_path)
    pipe = tiny_pipeline()
    before = sample(pipe)
    files = _files(tmp_path)
    with pytest.raises(InputError) as err:
        pipe.load_lora_weights(ref, **kwargs)
    for text in expect:
        assert text in str(err.value), f"{text!r} not in {err.value}"
    assert getattr(pipe.transformer, "peft_config", {}) == {}  # nothing injected
    assert torch.equal(sample(pipe), before)
    assert _files(tmp_path) == files


def test_adapter_api_errors_name_the_argument(tmp_path: Path) -> None:
    pipe = tiny_pipeline()
    with pytest.raises(InputError, match="fuse_lora: no LoRA is loaded"):
        pipe.fuse_lora()
    with pytest.raises(InputError, match="set_adapters: no LoRA is loaded"):
        pipe.set_adapters("x")
    add_trained_adapter(pipe)
    with pytest.raises(InputError, match=r"adapter_names \['nope'\] are not loaded; loaded: \['default'\]"):
        pipe.set_adapters("nope")
    with pytest.raises(InputError, match="adapter_weights must be finite"):
        pipe.set_adapters("default", float("nan"))
    with pytest.raises(InputError, match="got 2 adapter_weights for 1"):
        pipe.set_adapters(["default"], [1.0, 2.0])
    with pytest.raises(InputError, match="lora_scale must be finite"):
        pipe.fuse_lora(lora_scale=float("inf"))
    with pytest.raises(InputError, match="components must name"):
        pipe.fuse_lora(components=["unet"])
    with pytest.raises(InputError, match="'default' is already loaded"):
        pipe.load_lora_weights(_good_state(), adapter_name="default")


SAVE_CASES = [
    ("pickle", {"safe_serialization": False}, InputError, "safe_serialization=False"),
    ("empty", {"transformer_lora_layers": {}}, InputError, "transformer_lora_layers is empty"),
    ("bin-name", {"weight_name": "w.bin"}, InputError, "weight_name 'w.bin'"),
    ("prefixed", {"transformer_lora_layers": "prefixed"}, InputError, "already prefixed"),
    ("nan", {"transformer_lora_layers": "nan"}, NonFiniteError, "NaN/inf"),
]


@pytest.mark.parametrize("case", SAVE_CASES, ids=[c[0] for c in SAVE_CASES])
def test_save_refuses_pickle_empty_and_nan_and_writes_nothing(case: Any, tmp_path: Path) -> None:
    _, kwargs, error, text = case
    layers = {k[len("transformer."):]: v for k, v in _good_state().items()}
    if kwargs.get("transformer_lora_layers") == "prefixed":
        kwargs = {"transformer_lora_layers": {f"transformer.{k}": v for k, v in layers.items()}}
    elif kwargs.get("transformer_lora_layers") == "nan":
        layers[A_KEY[len("transformer."):]] = torch.full_like(layers[A_KEY[len("transformer."):]], float("inf"))
        kwargs = {"transformer_lora_layers": layers}
    with pytest.raises(error, match=text):
        SiTPipeline.save_lora_weights(tmp_path / "out", **{"transformer_lora_layers": layers, **kwargs})
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------
# train_sit.py --lora_rank on a tiny pretrained pipeline
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny pipeline (SiT-S/2 narrowed: hidden 32, depth 2; 1 channel, 8 px, 3 classes)."""
    root = tmp_path_factory.mktemp("pretrained")
    tiny_pipeline().save_pretrained(root / "pipe")
    return root / "pipe"


def _dataset() -> Any:
    import datasets
    from PIL import Image

    rng = np.random.default_rng(0)
    images = [Image.fromarray((rng.random((8, 8)) * 255).astype(np.uint8), mode="L") for _ in range(6)]
    return datasets.Dataset.from_dict({"image": images, "label": [0, 1, 2, 0, 1, 2]},
                                      features=datasets.Features({"image": datasets.Image(),
                                                                  "label": datasets.ClassLabel(num_classes=3)}))


def lora_cfg(pretrained: Path, out: Path, **overrides: Any) -> Any:
    from training.config import config_from_dict

    values: dict[str, Any] = dict(
        model="SiT-S/2", model_overrides=TINY, resolution=8, num_classes=3, learn_sigma=False, vae=None,
        image_channels=1, random_flip=False, dataset_name=None, global_batch_size=2, max_train_steps=4,
        checkpointing_steps=2, log_every=1, report_to="none", sample_every=0, dataloader_num_workers=0,
        learning_rate=1e-2, ema_decay=0.3, output_dir=str(out), pretrained_model_name_or_path=str(pretrained),
        lora_rank=4, lora_alpha=8.0, lora_dropout=0.1, sample_preset="ode-euler",
    )
    values.update(overrides)
    return config_from_dict(values)


def test_lora_run_trains_only_adapters_resumes_exactly_and_loads(pretrained: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import training.train_sit as ts
    from training.train_sit import read_checkpoint, train

    seen: dict[str, torch.Tensor] = {}
    save_lora = ts.save_lora

    def spy(cfg: Any, model: Any, ema: Any, step: int, data_name: str) -> Path:
        seen.update({n.replace(".base_layer", ""): p.detach().clone() for n, p in model.named_parameters()
                     if ".lora_" not in n})
        return save_lora(cfg, model, ema, step, data_name)

    monkeypatch.setattr(ts, "save_lora", spy)
    train(lora_cfg(pretrained, tmp_path / "straight"), dataset=_dataset())
    # the base is frozen: bit for bit the pretrained weights after 4 optimiser steps
    base = SiTTransformer2DModel.from_pretrained(pretrained, subfolder="transformer").state_dict()
    assert seen.keys() == {k for k in base if k != "pos_embed"}
    assert all(torch.equal(seen[k], base[k]) for k in seen)

    straight = read_checkpoint(tmp_path / "straight" / "checkpoints" / "checkpoint-0000004")
    assert straight["model"] and all(".lora_" in k for k in straight["model"])  # only the adapters are saved
    assert straight["ema"].keys() == straight["model"].keys()
    state = json.loads((tmp_path / "straight" / "checkpoints" / "checkpoint-0000004" / "train_state.json").read_text())
    assert len(state["base_model"]) == 64

    # 2 steps, then resume to 4: bitwise the straight run (adapters, EMA, optimiser; LoRA dropout's RNG)
    train(lora_cfg(pretrained, tmp_path / "resumed", max_train_steps=2), dataset=_dataset())
    train(lora_cfg(pretrained, tmp_path / "resumed", resume_from_checkpoint="latest"), dataset=_dataset())
    resumed = read_checkpoint(tmp_path / "resumed" / "checkpoints" / "checkpoint-0000004")
    for part in ("model", "ema"):
        assert all(torch.equal(straight[part][k], resumed[part][k]) for k in straight[part])
    for idx, entry in straight["optimizer"]["state"].items():
        assert all(torch.equal(entry[k], resumed["optimizer"]["state"][idx][k]) for k in ("exp_avg", "exp_avg_sq"))

    # the output: diffusers' LoRA format, the EMA adapters, loadable into the pretrained pipeline
    lora_dir = tmp_path / "straight" / "lora"
    assert sorted(p.name for p in lora_dir.iterdir()) == ["README.md", "config.yaml", LORA_WEIGHT_NAME]
    pipe = SiTPipeline.from_pretrained(pretrained)
    pipe.set_progress_bar_config(disable=True)
    base_out = sample(pipe)
    pipe.load_lora_weights(lora_dir)
    assert pipe.transformer.peft_config["default_0"].lora_alpha == 8.0
    ema = {k.replace(".default", ""): v for k, v in straight["ema"].items()}
    loaded = {k.replace(".default_0", ""): v for k, v in pipe.transformer.state_dict().items() if ".lora_" in k}
    assert loaded.keys() == ema.keys() and all(torch.equal(loaded[k], ema[k]) for k in ema)
    assert not close(sample(pipe), base_out)


def test_lora_resume_refuses_a_changed_base(pretrained: Path, tmp_path: Path) -> None:
    """The same --pretrained_model_name_or_path whose weights changed since the checkpoint (another revision)."""
    from training.config import ConfigError
    from training.train_sit import train

    base = tmp_path / "base"
    shutil.copytree(pretrained, base)
    train(lora_cfg(base, tmp_path / "run", max_train_steps=2), dataset=_dataset())
    weights = SiTTransformer2DModel.from_pretrained(base, subfolder="transformer")
    with torch.no_grad():
        weights.final_layer.linear.bias.add_(1.0)
    weights.save_pretrained(base / "transformer")
    before = _files(tmp_path / "run")
    with pytest.raises(ConfigError, match="its LoRA adapters were trained on base weights"):
        train(lora_cfg(base, tmp_path / "run", resume_from_checkpoint="latest", max_train_steps=3), dataset=_dataset())
    assert _files(tmp_path / "run") == before


def test_full_fine_tune_starts_from_the_pretrained_weights(pretrained: Path, tmp_path: Path) -> None:
    from training.train_sit import read_checkpoint, train

    cfg = lora_cfg(pretrained, tmp_path / "ft", lora_rank=None, lora_alpha=None, lora_dropout=0.0, max_train_steps=1,
                   checkpointing_steps=1, learning_rate=1e-6, save_pipeline=False)
    train(cfg, dataset=_dataset())
    trained = read_checkpoint(tmp_path / "ft" / "checkpoints" / "checkpoint-0000001")["model"]
    base = SiTTransformer2DModel.from_pretrained(pretrained, subfolder="transformer").state_dict()
    assert trained.keys() == base.keys()
    assert max(float((trained[k] - base[k]).abs().max()) for k in base) < 1e-5  # one AdamW step of 1e-6


# ---------------------------------------------------------------------------
# The embedded digit model: an adapter fine-tune on 3s and 7s moves its samples there
# ---------------------------------------------------------------------------

DIGITS = (3, 7)


def test_adapter_fine_tune_on_3s_and_7s_moves_unconditional_samples_there(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """30 LoRA steps (rank 8, batch 8, lr 1e-2) on the 800 training 3s and 7s, label dropout 0.8 so that most
    images teach the null (unconditional) class; then 48 unconditional samples (ODE Heun, 4 steps) from the same
    noise, with the adapter disabled and enabled, classified by the shipped digit classifier. Measured on CPU:
    15 % -> 73 % are 3 or 7 (docs/training.md has the longer run); the bars leave room for other CPUs' rounding."""
    import training.train_sit as ts
    from sit_diffusers import DEFAULT_MODEL
    from sit_diffusers.digit_classifier import load_classifier
    from sit_diffusers.digits import digits_dataset
    from training.config import config_from_dict

    seen: dict[str, torch.Tensor] = {}
    save_lora = ts.save_lora

    def spy(cfg: Any, model: Any, ema: Any, step: int, data_name: str) -> Path:
        seen.update({n.replace(".base_layer", ""): p.detach().clone() for n, p in model.named_parameters()
                     if ".lora_" not in n})
        return save_lora(cfg, model, ema, step, data_name)

    monkeypatch.setattr(ts, "save_lora", spy)
    data = digits_dataset("train").filter(lambda e: e["label"] in DIGITS)
    cfg = config_from_dict(dict(
        model="SiT-S/4", model_overrides={"hidden_size": 192, "depth": 6, "num_heads": 3, "patch_size": 4},
        resolution=28, num_classes=10, class_dropout_prob=0.8, learn_sigma=False, vae=None, image_channels=1,
        random_flip=False, dataset_name=None, dataloader_num_workers=0, global_batch_size=8, max_train_steps=30,
        learning_rate=1e-2, ema_decay=0.0, report_to="none", log_every=10, checkpointing_steps=30, sample_every=0,
        output_dir=str(tmp_path / "run"), pretrained_model_name_or_path=str(DEFAULT_MODEL), lora_rank=8,
        sample_preset="ode-heun"))
    ts.train(cfg, dataset=data)

    pipe = SiTPipeline.from_pretrained(DEFAULT_MODEL, torch_dtype=torch.float32)
    assert all(torch.equal(seen[k], v) for k, v in pipe.transformer.state_dict().items() if k != "pos_embed")
    pipe.load_lora_weights(tmp_path / "run" / "lora")
    classifier = load_classifier()
    n = 48
    noise = torch.randn((n, 1, 28, 28), generator=torch.Generator().manual_seed(0))  # (n, 1, 28, 28)
    model_fn = pipe.guided_model_fn(torch.full((n,), 10), 1.0)  # the null class, no guidance

    def fraction() -> float:
        with torch.no_grad():
            x = pipe.scheduler.sample(model_fn, noise, 4).sample.clamp(-1, 1)  # (n, 1, 28, 28)
            pred = classifier(x).argmax(1)  # (n,)
        return float(torch.isin(pred, torch.tensor(DIGITS)).float().mean())

    pipe.disable_lora()
    before = fraction()
    pipe.enable_lora()
    after = fraction()
    assert before < 0.35, before  # the base spreads over the ten digits (about 2 in 10 are a 3 or a 7)
    assert after >= 0.5 and after - before >= 0.3, (before, after)
