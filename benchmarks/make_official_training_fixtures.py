"""Reference outputs of the official SiT *training* code: ``tests/fixtures/official_sit/training``.

What the official ``train.py`` / ``models.py`` (github willisma/SiT, imported from ``--official-repo``, never
copied here) do before and during training, recorded so that ``tests/test_official_training.py`` can hold our
trainer to it without the official code:

* **initialisation**: ``torch.manual_seed(seed); SiT(**kwargs)`` on three architectures. The small one is
  stored whole (its non-zero tensors), the others as per-tensor statistics (shape, all-zero, min, max, mean,
  std); for each, four ``torch.rand`` draws right after the constructor (how far it moved the global RNG).
* **preprocessing**: the official ``center_crop_arr`` (compiled alone from ``train.py``) on generated PIL
  images of many sizes and modes, after torchvision's ``pil_loader`` (``.convert("RGB")``): the crop (pixels
  for small crops, SHA-256 for all), the PIL ``resize`` calls it made, its crop offsets; the mirrored crop;
  ``ToTensor`` + ``Normalize(0.5, 0.5)`` of every uint8 value; a JPEG with an EXIF orientation tag.
* **training steps**: the body of the official training loop on CPU, one process, pixel space: official
  ``SiT`` from ``torch.manual_seed(0)``, ``AdamW(lr=1e-4, weight_decay=0)`` as ``train.py`` builds it, the EMA
  as ``deepcopy`` + ``update_ema(decay=0)``, then per step ``transport.training_losses(model, x,
  dict(y=y))["loss"].mean()``, ``zero_grad``, ``backward``, ``step``, ``update_ema`` (the official function).
  Recorded: the batch order (``DistributedSampler``'s rule for one process: ``randperm`` seeded by
  ``seed + epoch``), the ``(t, x0)`` the official ``Transport.sample`` drew, the labels ``token_drop`` dropped,
  every step's loss, and the final model and EMA weights.
* **defaults**: the official argparse defaults and the constants of the recipe, read from the sources.

torchvision (``ToTensor``, ``Normalize``, ``RandomHorizontalFlip``, ``pil_loader``) and timm are not installed
here: torchvision's four are re-created below from torchvision 0.2x's source for what ``train.py`` passes, timm's
three classes come from ``benchmarks/make_official_model_fixtures.py`` (its stand-in, checked there against
the real timm). What is not the official code's own (CUDA, DDP, the VAE: pixel space here, the flip coin: no
flip in the training run) is said in the README.

    git --git-dir=/path/to/SiT/.git archive 947f95b | tar -x -C /tmp/official_sit
    python benchmarks/make_official_training_fixtures.py --official-repo /tmp/official_sit --overwrite

Needs torch, numpy, Pillow, torchdiffeq and safetensors. One CPU thread; a few seconds.
"""

from __future__ import annotations

import argparse
import ast
import copy
import hashlib
import io
import json
import platform
import sys
import types
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_official_fixtures import Official, check_export  # noqa: E402
from make_official_model_fixtures import import_official_models  # noqa: E402

from sit_diffusers.atomic import check_output_folder, write_folder_atomically  # noqa: E402
from sit_diffusers.validation import CLIParser, InputError, check_int, run_cli  # noqa: E402

PROG = "make_official_training_fixtures"
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "tests" / "fixtures" / "official_sit" / "training"
OFFICIAL_COMMIT = "947f95bd3a510e9af441d38c1e9f72e0eee873c5"
OFFICIAL_FILES = ("train.py", "train_utils.py", "models.py", "transport/transport.py")
MAX_FOLDER_BYTES = 300_000
IMAGENET_TRAIN_IMAGES = 1_281_167  # ILSVRC-2012 train split; for the official epochs -> steps

# ----------------------------------------------------------------------------------------------------------
# the official pieces
# ----------------------------------------------------------------------------------------------------------


def official_functions(repo: Path, names: Sequence[str] = ("center_crop_arr", "update_ema")) -> dict[str, Any]:
    """The top-level functions ``names`` of the official ``train.py``, compiled alone (``train.py`` imports
    torchvision, DDP, wandb: not importable here). Globals: ``np``, ``Image``, ``torch``, ``OrderedDict``."""
    path = repo / "train.py"
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names]
    missing = set(names) - {n.name for n in nodes}
    if missing:
        raise InputError(f"--official-repo: train.py defines no {sorted(missing)}")
    namespace: dict[str, Any] = {"np": np, "Image": Image, "torch": torch, "OrderedDict": OrderedDict}
    exec(compile(ast.Module(nodes, type_ignores=[]), str(path), "exec"), namespace)  # noqa: S102
    return {name: namespace[name] for name in names}


def pil_loader(data: bytes) -> Image.Image:
    """torchvision ``datasets.folder.pil_loader`` (``ImageFolder``'s default loader), on bytes instead of a path:
    ``Image.open(f)`` then ``.convert("RGB")``; no EXIF transposition."""
    with io.BytesIO(data) as f:
        img = Image.open(f)
        return img.convert("RGB")


def to_tensor_normalize(pic: Image.Image) -> torch.Tensor:
    """torchvision ``ToTensor()`` then ``Normalize([0.5] * 3, [0.5] * 3, inplace=True)`` on an RGB uint8 PIL
    image: ``from_numpy(np.array(pic, uint8)).view(H, W, 3).permute(2, 0, 1).contiguous()``, ``.to(float32)
    .div(255)``, ``sub_(mean[:, None, None]).div_(std[:, None, None])`` with float32 mean/std tensors."""
    img = torch.from_numpy(np.array(pic, np.uint8, copy=True)).view(pic.size[1], pic.size[0], 3)
    img = img.permute((2, 0, 1)).contiguous().to(dtype=torch.float32).div(255)
    mean = torch.as_tensor([0.5, 0.5, 0.5], dtype=torch.float32)
    std = torch.as_tensor([0.5, 0.5, 0.5], dtype=torch.float32)
    return img.sub_(mean[:, None, None]).div_(std[:, None, None])


def hflip(pic: Image.Image) -> Image.Image:
    """torchvision ``F.hflip`` on a PIL image (what ``RandomHorizontalFlip`` applies when its coin says so)."""
    return pic.transpose(Image.FLIP_LEFT_RIGHT)


class ResizeTrace:
    """Records every ``PIL.Image.Image.resize(size, resample)`` (input size, output size, filter) and
    ``crop(box)`` made while active."""

    def __init__(self) -> None:
        self.calls: list[list[Any]] = []

    def __enter__(self) -> ResizeTrace:
        self._resize, self._crop = Image.Image.resize, Image.Image.crop
        trace, resize, crop = self, Image.Image.resize, Image.Image.crop

        def traced_resize(img: Image.Image, size: Any, resample: Any = None, *args: Any, **kwargs: Any) -> Any:
            trace.calls.append(["resize", list(img.size), [int(s) for s in size], int(resample)])
            return resize(img, size, resample, *args, **kwargs)

        def traced_crop(img: Image.Image, box: Any = None) -> Any:
            trace.calls.append(["crop", list(img.size), [int(b) for b in box]])
            return crop(img, box)

        Image.Image.resize, Image.Image.crop = traced_resize, traced_crop
        return self

    def __exit__(self, *exc: Any) -> None:
        Image.Image.resize, Image.Image.crop = self._resize, self._crop


# ----------------------------------------------------------------------------------------------------------
# generated images (the test regenerates them with these functions)
# ----------------------------------------------------------------------------------------------------------

#: Crop cases: image width, height, mode, crop size, numpy seed. Sizes cover: already the size, one side short
#: (upscale), odd sides, portrait and landscape, 2x exactly (one BOX halving), ImageNet-like 500x375, a large
#: 4000x3000 (three halvings), sides that round at the bicubic step; modes the loader converts to RGB.
CROPS: list[dict[str, Any]] = [
    {"w": 16, "h": 16, "mode": "RGB", "size": 16},
    {"w": 37, "h": 23, "mode": "RGB", "size": 16},
    {"w": 23, "h": 37, "mode": "RGB", "size": 16},
    {"w": 15, "h": 40, "mode": "RGB", "size": 16},
    {"w": 7, "h": 5, "mode": "RGB", "size": 16},
    {"w": 33, "h": 65, "mode": "RGB", "size": 16},
    {"w": 32, "h": 47, "mode": "RGB", "size": 16},
    {"w": 101, "h": 31, "mode": "RGBA", "size": 16},
    {"w": 29, "h": 29, "mode": "L", "size": 16},
    {"w": 45, "h": 30, "mode": "P", "size": 16},
    {"w": 30, "h": 45, "mode": "LA", "size": 16},
    {"w": 41, "h": 19, "mode": "CMYK", "size": 16},
    {"w": 19, "h": 41, "mode": "1", "size": 16},
    {"w": 50, "h": 34, "mode": "I;16", "size": 16},
    {"w": 34, "h": 50, "mode": "I", "size": 16},
    {"w": 27, "h": 60, "mode": "F", "size": 16},
    {"w": 1000, "h": 700, "mode": "RGB", "size": 17},
    {"w": 500, "h": 375, "mode": "RGB", "size": 256},
    {"w": 375, "h": 500, "mode": "RGB", "size": 256},
    {"w": 512, "h": 511, "mode": "RGB", "size": 256},
    {"w": 300, "h": 300, "mode": "RGB", "size": 256},
    {"w": 257, "h": 1000, "mode": "RGB", "size": 128},
    {"w": 4000, "h": 3000, "mode": "RGB", "size": 256},
    {"w": 2100, "h": 1500, "mode": "RGBA", "size": 512},
]
SMALL_CROP = 32  # crops up to this side are stored as pixels; all as SHA-256


def make_image(w: int, h: int, mode: str, seed: int) -> Image.Image:
    """A noise image of ``w x h`` in ``mode`` from ``numpy.random.default_rng(seed)`` (16-bit and 32-bit modes
    from integer / float arrays, the others converted from an RGB noise image by PIL)."""
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (h, w)).astype(np.uint16))
    if mode == "I":
        return Image.fromarray(rng.integers(-1000, 70000, (h, w)).astype(np.int32))
    if mode == "F":
        return Image.fromarray((rng.random((h, w)) * 300).astype(np.float32))
    img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return img if mode == "RGB" else img.convert(mode)


def crop_seed(index: int) -> int:
    return 1000 + index


def exif_jpeg(orientation: int | None, w: int = 20, h: int = 12) -> bytes:
    """A ``w x h`` noise JPEG (quality 95), with an EXIF Orientation tag when ``orientation`` is given."""
    img = make_image(w, h, "RGB", 77)
    buf = io.BytesIO()
    if orientation is None:
        img.save(buf, format="JPEG", quality=95)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        img.save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------------------
# initialisation
# ----------------------------------------------------------------------------------------------------------

INIT: dict[str, dict[str, Any]] = {
    "tiny": {"seed": 0, "store": "values",
             "sit_kwargs": dict(input_size=8, patch_size=2, in_channels=4, hidden_size=16, depth=1, num_heads=2,
                                mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=10, learn_sigma=True)},
    "nonull_p4": {"seed": 7, "store": "stats",
                  "sit_kwargs": dict(input_size=16, patch_size=4, in_channels=3, hidden_size=24, depth=2,
                                     num_heads=3, mlp_ratio=2.0, class_dropout_prob=0.0, num_classes=5,
                                     learn_sigma=False)},
    "wide": {"seed": 1, "store": "stats",
             "sit_kwargs": dict(input_size=32, patch_size=2, in_channels=4, hidden_size=384, depth=2, num_heads=6,
                                mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=1000, learn_sigma=True)},
}
RNG_PROBE = 4  # torch.rand draws after the constructor


def tensor_stats(v: torch.Tensor) -> dict[str, Any]:
    d = v.double()
    return {"shape": list(v.shape), "all_zero": bool((v == 0).all()), "min": float(d.min()), "max": float(d.max()),
            "mean": float(d.mean()), "std": float(d.std()) if v.numel() > 1 else 0.0}


def run_init(official: types.ModuleType) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    entries: dict[str, Any] = {}
    for name, spec in INIT.items():
        torch.manual_seed(spec["seed"])
        model = official.SiT(**spec["sit_kwargs"])
        probe = torch.rand(RNG_PROBE)
        state = model.state_dict()
        entries[name] = {
            "seed": spec["seed"], "sit_kwargs": spec["sit_kwargs"], "store": spec["store"],
            "call": f"torch.manual_seed({spec['seed']}); SiT(**sit_kwargs); rng_probe = torch.rand({RNG_PROBE})",
            "rng_probe": probe.tolist(),
            "tensors": {k: tensor_stats(v) for k, v in state.items()},
        }
        if spec["store"] == "values":
            tensors.update({f"init/{name}/{k}": v.contiguous() for k, v in state.items() if not bool((v == 0).all())})
    return tensors, entries


# ----------------------------------------------------------------------------------------------------------
# preprocessing
# ----------------------------------------------------------------------------------------------------------


def run_crops(fns: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    center_crop_arr = fns["center_crop_arr"]
    tensors: dict[str, torch.Tensor] = {}
    entries: dict[str, Any] = {}
    for index, case in enumerate(CROPS):
        key = f"{case['w']}x{case['h']}_{case['mode'].replace(';', '')}_s{case['size']}"
        image = make_image(case["w"], case["h"], case["mode"], crop_seed(index))
        rgb = image.convert("RGB")  # pil_loader's convert, on the decoded image
        with ResizeTrace() as trace:
            crop = center_crop_arr(rgb, case["size"])
        arr = np.asarray(crop)
        mirrored = np.asarray(hflip(crop))
        before_crop = trace.calls[-1][2] if trace.calls else list(rgb.size)
        entry = {**case, "numpy_seed": crop_seed(index), "resize_calls": trace.calls,
                 "crop_offsets_yx": [(before_crop[1] - case["size"]) // 2, (before_crop[0] - case["size"]) // 2],
                 "shape": list(arr.shape), "sha256": hashlib.sha256(arr.tobytes()).hexdigest(),
                 "sha256_mirrored": hashlib.sha256(mirrored.tobytes()).hexdigest(),
                 "pixels_stored": case["size"] <= SMALL_CROP}
        if entry["pixels_stored"]:
            tensors[f"crop/{key}"] = torch.from_numpy(arr.copy())
            tensors[f"crop/{key}/mirrored"] = torch.from_numpy(mirrored.copy())
        entries[key] = entry
    # ToTensor + Normalize of every uint8 value (one 256 x 1 RGB image with value v in every channel)
    ramp = Image.fromarray(np.repeat(np.arange(256, dtype=np.uint8)[:, None, None], 3, axis=2))
    tensors["normalize/table"] = to_tensor_normalize(ramp)[0, :, 0].contiguous()  # (256,)
    # EXIF orientation: the official loader ignores it
    exif: dict[str, Any] = {}
    for name, orientation in (("orientation6", 6), ("no_tag", None)):
        data = exif_jpeg(orientation)
        loaded = pil_loader(data)
        crop = center_crop_arr(loaded, 8)
        tensors[f"exif/{name}/jpeg"] = torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()
        tensors[f"exif/{name}/x"] = to_tensor_normalize(crop)
        exif[name] = {"orientation": orientation, "loaded_size": list(loaded.size), "jpeg_bytes": len(data),
                      "call": "to_tensor_normalize(center_crop_arr(pil_loader(jpeg), 8)) (no flip)"}
    return tensors, {"cases": entries, "exif": exif}


# ----------------------------------------------------------------------------------------------------------
# the training steps
# ----------------------------------------------------------------------------------------------------------

TRAIN: dict[str, Any] = {
    "seed": 0, "steps": 4, "num_images": 8, "global_batch_size": 8, "resolution": 8, "ema_decay": 0.9,
    "sit_kwargs": dict(input_size=8, patch_size=2, in_channels=3, hidden_size=16, depth=2, num_heads=2,
                       mlp_ratio=4.0, class_dropout_prob=0.2, num_classes=10, learn_sigma=True),
    "transport": ["Linear", "velocity", None, None, None],
    # (w, h) of the training images; labels 0..9
    "image_sizes": [[8, 8], [13, 9], [9, 13], [20, 33], [40, 17], [11, 11], [16, 24], [31, 8]],
    "labels": [3, 0, 7, 3, 9, 1, 5, 0],
    "draw_seed": 1234,
}


def train_image(index: int) -> Image.Image:
    w, h = TRAIN["image_sizes"][index]
    return make_image(w, h, "RGB", 500 + index)


def run_training(official: types.ModuleType, transport_pkg: Official, fns: dict[str, Any]
                 ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    center_crop_arr, update_ema = fns["center_crop_arr"], fns["update_ema"]
    spec = TRAIN
    images = [train_image(i) for i in range(spec["num_images"])]
    x_rows = torch.stack([to_tensor_normalize(center_crop_arr(img.convert("RGB"), spec["resolution"]))
                          for img in images])  # (N, 3, S, S): the official transform without the flip
    labels = torch.tensor(spec["labels"])

    torch.manual_seed(spec["seed"])  # train.py: torch.manual_seed(global_seed * world_size + rank)
    model = official.SiT(**spec["sit_kwargs"])
    ema = copy.deepcopy(model)
    for p in ema.parameters():  # requires_grad(ema, False)
        p.requires_grad = False
    transport = transport_pkg.create_transport(*spec["transport"])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0)
    update_ema(ema, model, decay=0)
    model.train()
    ema.eval()

    drawn: dict[str, torch.Tensor] = {}
    original_sample = transport.sample

    def recording_sample(x1: torch.Tensor) -> Any:
        t, x0, x1 = original_sample(x1)
        drawn["t"], drawn["x0"] = t.detach().clone(), x0.detach().clone()
        return t, x0, x1

    transport.sample = recording_sample
    original_drop = model.y_embedder.token_drop

    def recording_drop(labels: torch.Tensor, force_drop_ids: Any = None) -> torch.Tensor:
        out = original_drop(labels, force_drop_ids)
        drawn["drop"] = (out == model.y_embedder.num_classes).to(torch.uint8)
        return out

    model.y_embedder.token_drop = recording_drop
    torch.manual_seed(spec["draw_seed"])  # the draws below come from the global RNG, as in train.py
    tensors: dict[str, torch.Tensor] = {"train/x_rows": x_rows}
    losses, orders = [], []
    for step in range(spec["steps"]):
        # DistributedSampler(shuffle=True, seed=0), one replica, set_epoch(epoch): one epoch per step here
        g = torch.Generator()
        g.manual_seed(spec["seed"] + step)
        order = torch.randperm(spec["num_images"], generator=g)
        x, y = x_rows[order], labels[order]
        drawn.clear()
        loss_dict = transport.training_losses(model, x, dict(y=y))
        loss = loss_dict["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        update_ema(ema, model, decay=spec["ema_decay"])
        orders.append(order.tolist())
        losses.append(float(loss.detach()))
        tensors[f"train/step{step}/t"] = drawn["t"]
        tensors[f"train/step{step}/x0"] = drawn["x0"]
        tensors[f"train/step{step}/drop"] = drawn["drop"]
        tensors[f"train/step{step}/per_sample_loss"] = loss_dict["loss"].detach().clone()
    # the official update_ema at its default decay, on two small modules (the run above uses decay 0.9)
    torch.manual_seed(spec["draw_seed"] + 1)
    shadow, live = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)
    tensors["ema_default/ema0"] = torch.cat([p.detach().flatten() for p in shadow.parameters()]).clone()
    tensors["ema_default/param"] = torch.cat([p.detach().flatten() for p in live.parameters()]).clone()
    update_ema(shadow, live)  # decay: the function's default
    tensors["ema_default/ema1"] = torch.cat([p.detach().flatten() for p in shadow.parameters()]).clone()
    for k, v in model.state_dict().items():
        tensors[f"train/model/{k}"] = v.detach().contiguous()
    for k, v in ema.state_dict().items():
        tensors[f"train/ema/{k}"] = v.detach().contiguous()
    entry = {
        **spec, "orders": orders, "losses": losses,
        "dropped_per_step": [int(tensors[f"train/step{s}/drop"].sum()) for s in range(spec["steps"])],
        "loop": ["torch.manual_seed(seed); model = SiT(**sit_kwargs); ema = deepcopy(model); requires_grad(ema, False)",
                 "transport = create_transport(*transport); opt = AdamW(model.parameters(), lr=1e-4, weight_decay=0)",
                 "update_ema(ema, model, decay=0); model.train(); ema.eval(); torch.manual_seed(draw_seed)",
                 "per step s: order = randperm(N, generator seeded seed + s); x, y = x_rows[order], labels[order]",
                 "loss = transport.training_losses(model, x, dict(y=y))['loss'].mean(); opt.zero_grad(); "
                 "loss.backward(); opt.step(); update_ema(ema, model, decay=ema_decay)"],
        "x_rows": "to_tensor_normalize(center_crop_arr(image.convert('RGB'), resolution)) per image (no flip)",
    }
    return tensors, entry


# ----------------------------------------------------------------------------------------------------------
# the defaults of the official recipe, read from the sources
# ----------------------------------------------------------------------------------------------------------


def _literal(node: ast.AST) -> Any:
    try:
        return ast.literal_eval(node)
    except ValueError:
        return ast.unparse(node)


def argparse_defaults(path: Path, function: str | None = None) -> dict[str, Any]:
    """``{"--flag": default}`` of every ``add_argument`` call in ``path`` (only inside ``function`` when given;
    ``None`` when it has no default)."""
    out: dict[str, Any] = {}
    tree: ast.AST = ast.parse(path.read_text())
    if function is not None:
        tree = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == function)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument" and node.args:
            flag = _literal(node.args[0])
            kw = {k.arg: k.value for k in node.keywords}
            out[flag] = _literal(kw["default"]) if "default" in kw else None
    return out


def call_keywords(path: Path, func: str) -> dict[str, Any]:
    """Keyword arguments of the first call to ``...func(...)`` in ``path``."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and (getattr(node.func, "attr", None) == func
                                           or getattr(node.func, "id", None) == func):
            return {k.arg: _literal(k.value) for k in node.keywords}
    raise InputError(f"--official-repo: {path.name} has no call to {func}")


def function_defaults(path: Path, name: str, cls: str | None = None) -> dict[str, Any]:
    tree = ast.parse(path.read_text())
    scope = tree.body
    if cls is not None:
        scope = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls).body
    fn = next(n for n in scope if isinstance(n, ast.FunctionDef) and n.name == name)
    args = fn.args.args[len(fn.args.args) - len(fn.args.defaults):]
    return {a.arg: _literal(d) for a, d in zip(args, fn.args.defaults, strict=True)}


def official_defaults(repo: Path) -> dict[str, Any]:
    train_src = (repo / "train.py").read_text()
    # train.py adds its own flags and parse_transport_args' (train_utils.py); the ODE / SDE groups are sample.py's
    args = {**argparse_defaults(repo / "train.py"),
            **argparse_defaults(repo / "train_utils.py", function="parse_transport_args")}
    adamw = call_keywords(repo / "train.py", "AdamW")
    epochs, batch = args["--epochs"], args["--global-batch-size"]
    return {
        "argparse": {k: v for k, v in args.items() if k.startswith("--")},
        "adamw": adamw,
        "adamw_torch_defaults": {"betas": [0.9, 0.999], "eps": 1e-8, "amsgrad": False},
        "update_ema": function_defaults(repo / "train.py", "update_ema"),
        "sit_init": function_defaults(repo / "models.py", "__init__", cls="SiT"),
        "vae_scaling": {"encode_mul": 0.18215 if ".mul_(0.18215)" in train_src else None,
                        "decode_div": 0.18215 if "/ 0.18215" in train_src else None},
        "normalize": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
        if "Normalize(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5]" in train_src else None,
        "random_horizontal_flip": "RandomHorizontalFlip()" in train_src,
        "lr_schedule": "constant (no scheduler in train.py)",
        "grad_clipping": "none (no clip_grad_norm_ in train.py)" if "clip_grad" not in train_src else "present",
        "allow_tf32": "torch.backends.cuda.matmul.allow_tf32 = True" in train_src,
        "imagenet_train_images": IMAGENET_TRAIN_IMAGES,
        "steps_per_epoch_imagenet": IMAGENET_TRAIN_IMAGES // batch,
        "total_steps_imagenet": epochs * (IMAGENET_TRAIN_IMAGES // batch),
    }


# ----------------------------------------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------------------------------------

README = """# Official SiT training-side reference

Made by `python benchmarks/make_official_training_fixtures.py --official-repo <export of github willisma/SiT>`
(commit {commit}; versions and every call in `manifest.json`). Only official code computed the numbers; the
script re-creates what the official code imports but this project does not install (torchvision's
`pil_loader`, `ToTensor`, `Normalize`, `hflip`; timm's three classes, from `make_official_model_fixtures.py`).
`tests/test_official_training.py` holds our trainer to them.

| key in `reference.safetensors` | what |
|---|---|
| `init/tiny/<official key>` | `torch.manual_seed(0); SiT(...)` (width 16, depth 1): every tensor that is not all zero; the zero ones and the statistics of every tensor of all three architectures are in `manifest.json` (`init`), with `rng_probe`, four `torch.rand` draws right after the constructor |
| `crop/<case>`, `crop/<case>/mirrored` | `center_crop_arr(image.convert("RGB"), size)` as uint8 (H, W, 3), and its mirror; crops up to 32 px. Every case (up to 4000 x 3000, modes RGB / RGBA / L / P / LA / CMYK / 1 / I;16 / I / F) has in the manifest the SHA-256 of both, the PIL `resize` calls made (sizes, filter) and the crop offsets. Images: `make_image(w, h, mode, 1000 + index)` of the script |
| `normalize/table` | `ToTensor` + `Normalize(0.5, 0.5)` of the uint8 values 0..255 (float32) |
| `exif/<name>/jpeg`, `exif/<name>/x` | a 20 x 12 JPEG with EXIF Orientation 6 (and one without the tag) and the official tensor of its 8 px crop: the official loader does not rotate |
| `train/x_rows` | the 8 training images after the official transform (no flip), 8 px |
| `train/step<s>/t`, `x0`, `drop`, `per_sample_loss` | what step `s` drew (`Transport.sample`'s `t`, `x0`; the labels `token_drop` sent to the null class) and its per-sample loss, in batch order (`manifest.json`: `train.orders`) |
| `train/model/<key>`, `train/ema/<key>` | the weights and the EMA after the 4 steps |
| `ema_default/ema0`, `param`, `ema1` | the flattened weights of two `nn.Linear(8, 8)` and the first after the official `update_ema(ema, model)` at its default decay (0.9999) |

The training run is the body of `train.py`'s loop on one CPU process in pixel space (an 8 px, 3-channel
SiT: width 16, depth 2, label dropout 0.2), with `AdamW(lr=1e-4, weight_decay=0)` as there, the EMA made as
there (`deepcopy`, `update_ema(decay=0)`) and updated by the official `update_ema` after every step, at decay
0.9 (the official 0.9999 would move the EMA by less than float32 resolves in 4 steps; the default itself is in
`defaults`). Not the official code's: DDP and CUDA (one CPU process instead), the VAE (pixel space: the
VAE's `latent_dist.sample().mul_(0.18215)` is tested on its own), and the flip (its coin is drawn
differently by design, see docs/training.md; the run has none). Batch order: the official
`DistributedSampler` rule for one replica, one epoch per step (`randperm` with a generator seeded by
`seed + epoch`).

`manifest.json` also holds `defaults`: the official argparse defaults, the AdamW arguments, `update_ema`'s
default decay, `SiT.__init__`'s defaults and the recipe's constants, read from the sources.
"""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_fixtures(folder: Path, tensors: dict[str, torch.Tensor], manifest: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "reference.safetensors"))
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    (folder / "README.md").write_text(README.format(commit=OFFICIAL_COMMIT[:7]))
    names = ["README.md", "manifest.json", "reference.safetensors"]
    for name in names:
        (folder / name).chmod(0o644)
    (folder / "SHA256SUMS").write_text("".join(f"{_sha256(folder / n)}  {n}\n" for n in names))
    total = sum((folder / n).stat().st_size for n in names)
    if total > MAX_FOLDER_BYTES:
        raise RuntimeError(f"the fixtures take {total} bytes, over the {MAX_FOLDER_BYTES} budget; nothing written")


def build_parser() -> argparse.ArgumentParser:
    p = CLIParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                  allow_abbrev=False)
    p.add_argument("--official-repo", type=Path, required=True,
                   help="folder of an export of github willisma/SiT (train.py, models.py, transport/)")
    p.add_argument("--out", "--output", dest="out", type=Path, default=DEFAULT_OUT,
                   help="folder to write (default tests/fixtures/official_sit/training); replaced atomically")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists and is not empty")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads, >= 1 (default 1)")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return p


def check_official_repo(repo: Path) -> Path:
    """The export must hold ``train.py``, ``train_utils.py``, ``models.py`` and ``transport/``."""
    check_export(repo, OFFICIAL_FILES)
    return repo.resolve()


def run(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    repo = check_official_repo(args.official_repo)
    fns = official_functions(repo)  # train.py must define them: checked before any work
    check_int("--threads", args.threads, minimum=1)
    out_flag = "--output" if any(a == "--output" or a.startswith("--output=") for a in argv) else "--out"
    out = check_output_folder(args.out, overwrite=args.overwrite, keep=[repo], name=out_flag,
                              overwrite_name="--overwrite")
    torch.set_num_threads(args.threads)

    official = import_official_models(repo)
    transport_pkg = Official(repo)
    tensors: dict[str, torch.Tensor] = {}
    init_tensors, init_entries = run_init(official)
    crop_tensors, crop_entries = run_crops(fns)
    train_tensors, train_entry = run_training(official, transport_pkg, fns)
    for part in (init_tensors, crop_tensors, train_tensors):
        tensors.update(part)

    import PIL
    import safetensors

    manifest = {
        "set": "training",
        "command": "python benchmarks/make_official_training_fixtures.py --official-repo <export> --overwrite",
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                     "pillow": PIL.__version__, "safetensors": safetensors.__version__,
                     "torch_num_threads": torch.get_num_threads(), "official_sit_commit": OFFICIAL_COMMIT,
                     "torchvision": "stand-in (pil_loader, ToTensor, Normalize, hflip) in this script",
                     "timm": "stand-in in benchmarks/make_official_model_fixtures.py"},
        "official_files_sha256": {name: _sha256(repo / name) for name in OFFICIAL_FILES},
        "init": init_entries,
        "crops": crop_entries,
        "train": train_entry,
        "defaults": official_defaults(repo),
    }
    write_folder_atomically(out, lambda tmp: write_fixtures(tmp, tensors, manifest))
    total = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote {out} ({total / 1e3:.0f} kB): {len(INIT)} initialisations, {len(CROPS)} crops, "
          f"{TRAIN['steps']} training steps (losses {', '.join(f'{v:.4f}' for v in train_entry['losses'])})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status 0; 2 for a bad flag or input (one line on stderr, ``--debug`` for the traceback)."""
    return run_cli(PROG, run, argv)


if __name__ == "__main__":
    sys.exit(main())


__all__: list[str] = ["CROPS", "INIT", "TRAIN", "crop_seed", "exif_jpeg", "main", "make_image", "train_image"]
