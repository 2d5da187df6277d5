"""Reference outputs of the official SiT network on more architectures: ``tests/fixtures/official_sit/models``.

The public fixtures (``tests/fixtures/official_sit/public``) hold one architecture (input 8, patch 2, 4
channels, width 64, depth 2, 4 heads, ``learn_sigma``). This script builds the official ``models.SiT``
(github willisma/SiT, ``models.py`` imported from ``--official-repo``, never copied here) on a set of small
architectures that vary everything the shapes and the forward depend on: patch 4 and 8, 1 / 3 / 4 channels,
``learn_sigma`` off, 1 to 9 heads (head widths 4, 6, 8, 11, 12, 16, 32), depth 1 to 3, ``mlp_ratio`` 0.7 / 2 / 4,
1 / 4 / 5 / 10 / 1000 classes, ``class_dropout_prob`` 0 (no null row in the label table) and 0.1, batches of
1 to 8, t at 0, 1 and inside, the null label. For each it saves the weights in the released-checkpoint
format (a bare state dict with the official keys, as safetensors), the inputs, the official ``forward``
output with its intermediates, ``forward_with_cfg`` at scales 1 and 4, and one training-mode forward
(label dropout) with its seed. Nothing here runs our code: the files are an independent reference.

``models.py`` imports ``PatchEmbed, Attention, Mlp`` from ``timm.models.vision_transformer``. timm needs
torchvision, which this project does not install, so the three classes are re-created below as timm 1.0.x
defines them for the arguments ``models.py`` passes (same attribute names, hence the official state-dict
keys; fused ``scaled_dot_product_attention`` as timm uses by default) and put in ``sys.modules`` as
``timm``, ``timm.models`` and ``timm.models.vision_transformer`` only while ``models.py`` is imported. Before
anything is written, the official SiT built on this stand-in must reproduce the public fixture's ``out``,
``out_cfg`` and intermediates (made with the real timm 1.0.29) to 1e-6 relative; the errors go in the manifest.

    git --git-dir=/path/to/SiT/.git archive 947f95b | tar -x -C /tmp/official_sit
    python benchmarks/make_official_model_fixtures.py --official-repo /tmp/official_sit --overwrite

Needs torch, numpy and safetensors. One CPU thread; a few seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import platform
import sys
import types
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sit_diffusers.atomic import check_output_folder, write_folder_atomically
from sit_diffusers.validation import CLIParser, InputError, check_int, run_cli

PROG = "make_official_model_fixtures"
REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = REPO_ROOT / "tests" / "fixtures" / "official_sit"
DEFAULT_OUT = FIXTURES / "models"
PUBLIC = FIXTURES / "public"

OFFICIAL_COMMIT = "947f95bd3a510e9af441d38c1e9f72e0eee873c5"
#: sha256 of the official ``models.py`` at that commit.
OFFICIAL_MODELS_SHA256 = "677cfa2cf5a7db122abd014d6d92d7ac5f39745f571773a6adcc26c7d2f33d89"
#: The stand-in must reproduce the public fixture (real timm) to this relative error.
STAND_IN_TOL = 1e-6
MAX_FOLDER_BYTES = 1_000_000


# ----------------------------------------------------------------------------------------------------------
# timm stand-in: PatchEmbed, Attention, Mlp as timm 1.0.x defines them, for the arguments models.py passes
# ----------------------------------------------------------------------------------------------------------


class PatchEmbed(nn.Module):
    """timm ``layers/patch_embed.py`` ``PatchEmbed(img_size, patch_size, in_chans, embed_dim, bias=True)``:
    a ``p x p`` stride-``p`` Conv2d ``proj``, ``flatten(2).transpose(1, 2)`` (NCHW -> NLC), ``norm`` Identity.
    ``patch_size`` / ``img_size`` / ``grid_size`` are 2-tuples and ``num_patches`` their product, as timm's
    (``models.py`` reads ``num_patches`` and ``patch_size[0]``). timm's input-size asserts are kept."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768,
                 norm_layer: Any = None, flatten: bool = True, bias: bool = True) -> None:
        super().__init__()
        self.patch_size = (patch_size, patch_size)
        self.img_size = (img_size, img_size)
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.flatten = flatten
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, bias=bias)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        assert h == self.img_size[0], f"Input height ({h}) doesn't match model ({self.img_size[0]})."
        assert w == self.img_size[1], f"Input width ({w}) doesn't match model ({self.img_size[1]})."
        x = self.proj(x)  # (N, D, H/p, W/p)
        if self.flatten:
            x = x.flatten(2).transpose(1, 2)  # (N, T, D)
        return self.norm(x)


class Attention(nn.Module):
    """timm ``layers/attention.py`` ``Attention(dim, num_heads, qkv_bias=True)``: ``qkv`` Linear (D -> 3D),
    reshape ``(B, N, 3, H, Dh)`` -> permute ``(3, B, H, N, Dh)``, ``q_norm`` / ``k_norm`` Identity,
    ``F.scaled_dot_product_attention`` (timm's default ``fused_attn``; scale ``Dh**-0.5``, dropout ``attn_drop.p``
    in training, 0 here), ``transpose(1, 2).reshape(B, N, D)``, ``norm`` Identity, ``proj`` Linear, ``proj_drop``."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, qk_norm: bool = False,
                 proj_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 norm_layer: Any = None) -> None:
        super().__init__()
        assert dim % num_heads == 0, "dim should be divisible by num_heads"
        assert not qk_norm, "the stand-in covers what models.py passes (no qk_norm)"
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attn_dim = num_heads * self.head_dim
        self.scale = self.head_dim**-0.5
        self.fused_attn = True
        self.qkv = nn.Linear(dim, self.attn_dim * 3, bias=qkv_bias)
        self.q_norm = nn.Identity()
        self.k_norm = nn.Identity()
        self.attn_drop = nn.Dropout(attn_drop)
        self.norm = nn.Identity()
        self.proj = nn.Linear(self.attn_dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, H, N, Dh) each
        q, k = self.q_norm(q), self.k_norm(k)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        x = x.transpose(1, 2).reshape(b, n, self.attn_dim)  # (B, N, D)
        x = self.norm(x)
        x = self.proj(x)
        return self.proj_drop(x)


class Mlp(nn.Module):
    """timm ``layers/mlp.py`` ``Mlp(in_features, hidden_features, act_layer, drop=0)``: ``fc1``, ``act``,
    ``drop1``, ``norm`` Identity, ``fc2``, ``drop2``."""

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 act_layer: Any = nn.GELU, norm_layer: Any = None, bias: bool = True, drop: float = 0.0) -> None:
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.norm = norm_layer(hidden_features) if norm_layer is not None else nn.Identity()
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        x = self.act(x)
        x = self.drop1(x)
        x = self.norm(x)
        x = self.fc2(x)
        return self.drop2(x)


@contextlib.contextmanager
def timm_stand_in() -> Iterator[None]:
    """``timm``, ``timm.models`` and ``timm.models.vision_transformer`` in ``sys.modules`` for the duration
    (holding the three classes above); whatever was there before is put back."""
    names = ("timm", "timm.models", "timm.models.vision_transformer")
    saved = {name: sys.modules.get(name) for name in names}
    timm, models, vit = (types.ModuleType(name) for name in names)
    vit.PatchEmbed, vit.Attention, vit.Mlp = PatchEmbed, Attention, Mlp
    timm.models, models.vision_transformer = models, vit
    sys.modules.update(zip(names, (timm, models, vit), strict=True))
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def import_official_models(repo: Path) -> types.ModuleType:
    """The official ``models.py`` as the module ``official_sit_models``, imported on the timm stand-in."""
    spec = importlib.util.spec_from_file_location("official_sit_models", repo / "models.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    with timm_stand_in():
        spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------------------------------------
# the architectures and the runs
# ----------------------------------------------------------------------------------------------------------

#: Checkpoints: the official ``SiT(**sit_kwargs)`` re-randomised from ``seed``, saved in ``dtype``
#: (float16: every weight rounded to float16 before the official runs, so the file is exactly the network).
CHECKPOINTS: dict[str, dict[str, Any]] = {
    "p4_c3_nosigma": {
        "seed": 100, "dtype": "float32",
        "sit_kwargs": dict(input_size=16, patch_size=4, in_channels=3, hidden_size=32, depth=2, num_heads=1,
                           mlp_ratio=2.0, class_dropout_prob=0.1, num_classes=5, learn_sigma=False),
    },
    "p8_c1_depth3": {
        "seed": 200, "dtype": "float16",
        "sit_kwargs": dict(input_size=32, patch_size=8, in_channels=1, hidden_size=24, depth=3, num_heads=2,
                           mlp_ratio=2.0, class_dropout_prob=0.1, num_classes=4, learn_sigma=True),
    },
    "w36": {
        "seed": 300, "dtype": "float16",
        "sit_kwargs": dict(input_size=8, patch_size=2, in_channels=4, hidden_size=36, depth=1, num_heads=3,
                           mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=10, learn_sigma=True),
    },
    "classes1000": {
        "seed": 400, "dtype": "float16",
        "sit_kwargs": dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=1, num_heads=4,
                           mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=1000, learn_sigma=True),
    },
    "nonull_classes4": {
        "seed": 500, "dtype": "float16",
        "sit_kwargs": dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=1, num_heads=2,
                           mlp_ratio=4.0, class_dropout_prob=0.0, num_classes=4, learn_sigma=True),
    },
    "nonull_classes1": {
        "seed": 600, "dtype": "float16",
        "sit_kwargs": dict(input_size=8, patch_size=2, in_channels=3, hidden_size=32, depth=1, num_heads=4,
                           mlp_ratio=2.0, class_dropout_prob=0.0, num_classes=1, learn_sigma=False),
    },
    "w44_mlp0.7": {
        "seed": 700, "dtype": "float16",
        "sit_kwargs": dict(input_size=8, patch_size=2, in_channels=4, hidden_size=44, depth=1, num_heads=4,
                           mlp_ratio=0.7, class_dropout_prob=0.1, num_classes=10, learn_sigma=True),
    },
}

#: Runs of the official network: a checkpoint, the head count it is built with (heads are not in the
#: weights: one checkpoint, several head counts), times and labels (``num_classes`` = the null class).
CASES: dict[str, dict[str, Any]] = {
    "p4_c3_heads1_nosigma": {"checkpoint": "p4_c3_nosigma", "num_heads": 1, "t": [0.0, 1.0], "y": [4, 5],
                             "cfg_y": [0, 4]},
    "p8_c1_heads2_depth3": {"checkpoint": "p8_c1_depth3", "num_heads": 2, "t": [0.61], "y": [3], "cfg_y": [1]},
    "w36_heads3": {"checkpoint": "w36", "num_heads": 3, "t": [0.25, 0.9], "y": [7, 10], "cfg_y": [7, 0],
                   "train": {"batch": 8, "seed": 0}},
    "w36_heads6": {"checkpoint": "w36", "num_heads": 6, "t": [0.25, 0.9], "y": [7, 10], "cfg_y": [7, 0]},
    "w36_heads9": {"checkpoint": "w36", "num_heads": 9, "t": [0.25, 0.9], "y": [7, 10], "cfg_y": [7, 0]},
    "classes1000_heads4": {"checkpoint": "classes1000", "num_heads": 4, "t": [1.0, 0.0, 0.5], "y": [0, 999, 1000],
                           "cfg_y": [207, 999, 0]},
    "nonull_classes4_heads2": {"checkpoint": "nonull_classes4", "num_heads": 2, "t": [0.0, 0.8], "y": [0, 3],
                               "cfg_y": [3, 1]},
    "nonull_classes1_heads4": {"checkpoint": "nonull_classes1", "num_heads": 4, "t": [0.3, 1.0], "y": [0, 0],
                               "cfg_y": [0, 0]},
    "w44_mlp0.7_heads4": {"checkpoint": "w44_mlp0.7", "num_heads": 4, "t": [0.45, 0.0], "y": [10, 2],
                          "cfg_y": [2, 9]},
}
CFG_SCALES = (1.0, 4.0)
INPUT_SEED = 1000  # torch.Generator seed of the inputs of each case (plus its index)


def build_official(official: types.ModuleType, sit_kwargs: dict[str, Any]) -> nn.Module:
    return official.SiT(**sit_kwargs)


def rerandomize(model: nn.Module, seed: int) -> None:
    """As the public fixture: ``torch.manual_seed(seed)``, then for every named parameter but ``pos_embed``, in
    order, ``normal_(0, std)``, ``std = 1/sqrt(p[0].numel())`` for 2+ dims and 0.1 for biases. adaLN-Zero's
    zero initialisation would make every block the identity and the output zero."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "pos_embed":
                continue
            p.normal_(0.0, 1.0 / p[0].numel() ** 0.5 if p.ndim >= 2 else 0.1)


def make_checkpoint(official: types.ModuleType, name: str, spec: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The re-randomised official state dict (official keys, rounded to ``spec['dtype']``, stored as float32
    values in the returned dict so that the official runs see exactly the file)."""
    torch.manual_seed(spec["seed"])
    model = build_official(official, spec["sit_kwargs"])
    rerandomize(model, spec["seed"] + 1)
    dtype = getattr(torch, spec["dtype"])
    return {k: v.detach().to(dtype).float().contiguous() for k, v in model.state_dict().items()}


class Recorder:
    """Forward hooks on the official module tree: the output of ``x_embedder`` (before ``pos_embed``),
    ``t_embedder``, ``y_embedder``, every block and ``final_layer``."""

    def __init__(self, model: nn.Module) -> None:
        self.out: dict[str, torch.Tensor] = {}
        parts = {"x_embedder_out": model.x_embedder, "t_emb": model.t_embedder, "y_emb": model.y_embedder,
                 "final_layer_out": model.final_layer}
        parts.update({f"block{i}_out": block for i, block in enumerate(model.blocks)})
        self.handles = [m.register_forward_hook(self._hook(k)) for k, m in parts.items()]

    def _hook(self, key: str):
        def hook(_module, _inputs, output):
            self.out[key] = output.detach().clone()

        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def run_case(official: types.ModuleType, name: str, case: dict[str, Any], index: int,
             state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every official call of one case: tensors ``{name: tensor}`` and the manifest entry."""
    ck = CHECKPOINTS[case["checkpoint"]]
    kwargs = {**ck["sit_kwargs"], "num_heads": case["num_heads"]}
    model = build_official(official, kwargs)
    model.load_state_dict(state, strict=True)
    model.eval()
    c, s, k = kwargs["in_channels"], kwargs["input_size"], kwargs["num_classes"]
    n = len(case["t"])
    gen = torch.Generator().manual_seed(INPUT_SEED + index)
    x = torch.randn(n, c, s, s, generator=gen)
    t = torch.tensor(case["t"], dtype=torch.float32)
    y = torch.tensor(case["y"])
    tensors: dict[str, torch.Tensor] = {"x": x, "t": t, "y": y.float()}
    calls: dict[str, str] = {"x": f"torch.randn({n}, {c}, {s}, {s}, generator=torch.Generator()"
                                  f".manual_seed({INPUT_SEED + index}))"}
    with torch.no_grad():
        rec = Recorder(model)
        try:
            tensors["out"] = model(x, t, y)
        finally:
            rec.close()
        tensors["out_full"] = model.unpatchify(rec.out["final_layer_out"])
    # stored: the embeddings and every block; not x_embedder_out / final_layer_out (folder size: the first
    # block's output depends on x_embedder_out, and out_full is final_layer_out unpatchified)
    tensors.update({key: v for key, v in rec.out.items() if key not in ("x_embedder_out", "final_layer_out")})
    calls["out"] = "model.eval(); model(x, t, y.long())"
    calls["out_full"] = ("model.unpatchify(final_layer_out), final_layer_out hooked during the `out` call: all "
                         "out_channels (the learned-sigma half too)")
    for key in tensors:
        if key.startswith(("t_emb", "y_emb", "block")):
            calls[key] = "forward hook on the official module (t_embedder, y_embedder, blocks[i]) during the `out` call"

    entry: dict[str, Any] = {
        "checkpoint": case["checkpoint"], "sit_kwargs": kwargs, "batch": n, "t": case["t"], "y": case["y"],
        "null_class": k if kwargs["class_dropout_prob"] > 0 else None,
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }

    # classifier-free guidance, as sample.py: forward_with_cfg(cat([z, z]), cat([t, t]), cat([y, null]), s)
    y_cond = torch.tensor(case["cfg_y"])
    x_cfg, t_cfg = torch.cat([x, x]), torch.cat([t, t])
    y_cfg = torch.cat([y_cond, torch.full_like(y_cond, k)])
    cfg: dict[str, Any] = {"y_cond": case["cfg_y"], "scales": list(CFG_SCALES),
                           "guided_channels": min(3, c), "official_slice": "model_out[:, :3]"}
    try:
        with torch.no_grad():
            raw = model(x_cfg, t_cfg, y_cfg)
            guided = {scale: model.forward_with_cfg(x_cfg, t_cfg, y_cfg, scale) for scale in CFG_SCALES}
    except Exception as err:  # noqa: BLE001 - recorded: the official code cannot guide this model
        cfg["status"] = "raised"
        cfg["error"] = f"{type(err).__name__}: {str(err).splitlines()[0]}"
    else:
        cfg["status"] = "ok"
        tensors.update(y_cfg=y_cfg.float(), out_cfg_raw=raw)
        for scale, out in guided.items():
            # the second half repeats the guided channels and keeps the null pass's others: stored once
            assert torch.equal(out[n:], torch.cat([out[:n, :3], raw[n:, 3:]], dim=1))
            tensors[f"out_cfg_{scale:g}"] = out[:n]
        calls["out_cfg_raw"] = "model(x_cfg, t_cfg, y_cfg.long()): the batch forward_with_cfg combines"
        calls["out_cfg_<s>"] = ("model.forward_with_cfg(x_cfg, t_cfg, y_cfg.long(), cfg_scale=s)[:N] (the half "
                                "sample.py keeps; the other half is cat([out_cfg[:, :3], out_cfg_raw[N:, 3:]], 1), "
                                "checked when generating)")
    cfg["call"] = "x_cfg = cat([x, x]); t_cfg = cat([t, t]); y_cfg = cat([y_cond, full(num_classes)])"
    entry["cfg"] = cfg

    if "train" in case:  # label dropout: the official forward in training mode after torch.manual_seed
        spec = case["train"]
        x_tr = torch.randn(spec["batch"], c, s, s, generator=gen)
        t_tr = torch.rand(spec["batch"], generator=gen)
        y_tr = torch.randint(0, k, (spec["batch"],), generator=gen)
        seed = spec["seed"]
        while True:  # the first seed from spec["seed"] that drops some labels and keeps others
            model.train()
            rec = Recorder(model)
            torch.manual_seed(seed)
            try:
                with torch.no_grad():
                    out_tr = model(x_tr, t_tr, y_tr)
            finally:
                rec.close()
                model.eval()
            null_row = model.y_embedder.embedding_table.weight[k]
            dropped = (rec.out["y_emb"] == null_row).all(dim=1)
            if 0 < int(dropped.sum()) < spec["batch"]:
                break
            seed += 1
        tensors.update(x_train=x_tr, t_train=t_tr, y_train=y_tr.float(), out_train=out_tr,
                       train_dropped=dropped.to(torch.uint8))
        entry["train"] = {"seed": seed, "dropped": dropped.nonzero().flatten().tolist(),
                          "inputs": f"after x, from the same generator: x_train = randn({spec['batch']}, {c}, {s}, "
                                    f"{s}), t_train = rand({spec['batch']}), y_train = randint(0, {k}, "
                                    f"({spec['batch']},))",
                          "call": f"model.train(); torch.manual_seed({seed}); model(x_train, t_train, "
                                  "y_train.long()) (LabelEmbedder.token_drop draws torch.rand(N) < p)"}
    entry["calls"] = calls
    return tensors, entry


def check_stand_in(official: types.ModuleType, public: Path) -> dict[str, float]:
    """The official SiT on the stand-in must reproduce the public fixture (made with the real timm)."""
    from safetensors.torch import load_file

    manifest = json.loads((public / "manifest.json").read_text())
    model = build_official(official, manifest["sit_kwargs"])
    model.load_state_dict(load_file(str(public / "model.safetensors")), strict=True)
    model.eval()
    fwd = load_file(str(public / "forward.safetensors"))
    with torch.no_grad():
        rec = Recorder(model)
        try:
            got = {"out": model(fwd["x"], fwd["t"], fwd["y"].long())}
        finally:
            rec.close()
        got.update(rec.out)
        got["out_full"] = model.unpatchify(rec.out["final_layer_out"])
        got["out_cfg_raw"] = model(fwd["x_cfg"], fwd["t_cfg"], fwd["y_cfg"].long())
        got["out_cfg"] = model.forward_with_cfg(fwd["x_cfg"], fwd["t_cfg"], fwd["y_cfg"].long(), 4.0)
    errors = {}
    for key, value in got.items():
        ref = fwd[key].double()
        errors[key] = float((value.double() - ref).norm() / ref.norm())
    bad = {k: v for k, v in errors.items() if not v <= STAND_IN_TOL}
    if bad:
        raise RuntimeError(f"the timm stand-in does not reproduce the public fixture (relative errors {bad}); "
                           "nothing written")
    return errors


# ----------------------------------------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------------------------------------

README = """# Official SiT network outputs on more architectures

Made by `python benchmarks/make_official_model_fixtures.py --official-repo <export of github willisma/SiT>`
(commit {commit}; command, seeds and versions in `manifest.json`). `../public` holds one architecture; these
files hold the official network on seven more, so that `tests/test_official_models.py` can check our
network (`SiTTransformer2DModel`) and our converter (`sit_diffusers.conversion`) on what the shapes and the
forward depend on: patch 4 and 8, 1 / 3 / 4 channels, `learn_sigma` off, 1 to 9 heads (head widths 4, 6, 8,
11, 12, 16, 32), depth 1 to 3, `mlp_ratio` 0.7, 2 and 4, 1 to 1000 classes, `class_dropout_prob` 0 (no null row
in the label table), batches of 1 to 8, t = 0, 1 and inside, the null label. Only official code made them.

How: the official `models.py`, unmodified, imported on a stand-in for the three timm classes it uses
(`PatchEmbed`, `Attention`, `Mlp`, re-created in the script as timm 1.0.x defines them; timm itself needs
torchvision). The stand-in was first checked against `../public` (made with the real timm 1.0.29): the
errors are in the manifest (`stand_in_check`; 0, bit-identical, on the machine that made these files). Every weight except the frozen sin-cos
`pos_embed` was redrawn as in `../public` (std 1/sqrt(fan_in), biases 0.1), so that every block, the
labels and t change the output. One CPU thread, float32, no grad except where said.

| file | what |
|---|---|
| `ckpt_<name>.safetensors` | the official `state_dict()` of a checkpoint: the released format (a bare state dict, official keys, `pos_embed` included) as safetensors. All but `ckpt_p4_c3_nosigma` are float16, to keep the folder under 1 MB (`manifest.json`: `dtype`): every weight was rounded to float16 before the official runs, which computed in float32 on exactly these values |
| `cases.safetensors` | per case `<case>/<tensor>`: inputs `x`, `t`, `y` (labels as float32 holding integers); `out` = official `forward`; intermediates `t_emb`, `y_emb`, `block<i>_out` and `out_full` (the final layer's output unpatchified, with the sigma half); guidance (`x_cfg = cat([x, x])`, `t_cfg = cat([t, t])`, not stored) `y_cfg`, `out_cfg_raw` = `forward(x_cfg, t_cfg, y_cfg)` and `out_cfg_1`, `out_cfg_4` = the first half of `forward_with_cfg(x_cfg, t_cfg, y_cfg, s)` at scales 1 and 4 (the half `sample.py` keeps; the other half is `cat([out_cfg[:, :3], out_cfg_raw[N:, 3:]], 1)`, checked); `x_train`, `t_train`, `y_train`, `out_train`, `train_dropped` for the training-mode run |
| `manifest.json` | per checkpoint the official `SiT(...)` arguments, seed, dtype, label-table rows; per case the arguments (with `num_heads`), the exact official call of every tensor, the parameter count, and where the official code raises |

Cases share a checkpoint when only the head count differs (`w36_heads3/6/9`): heads are not in the
weights, so a converter must be told them. `forward_with_cfg` guides `model_out[:, :3]`, i.e. all channels
of a 1- or 3-channel model; with `class_dropout_prob = 0` there is no null row and the official call raises
(recorded, no tensors). Time: t = 0 noise, t = 1 data, raw t (not x 1000); the null class is `num_classes`.
"""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_manifest(states: dict[str, dict[str, torch.Tensor]], entries: dict[str, Any], stand_in: dict[str, float],
                   models_sha: str) -> dict[str, Any]:
    import numpy
    import safetensors

    return {
        "set": "models",
        "command": "python benchmarks/make_official_model_fixtures.py --official-repo <export> --overwrite",
        "versions": {
            "python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
            "safetensors": safetensors.__version__, "torch_num_threads": torch.get_num_threads(),
            "official_sit_commit": OFFICIAL_COMMIT, "timm": "stand-in (timm 1.0.x PatchEmbed / Attention / Mlp, "
                                                            "fused attention) in benchmarks/make_official_model_fixtures.py",
        },
        "official_models_py_sha256": models_sha,
        "official_models_py_matches_commit": models_sha == OFFICIAL_MODELS_SHA256,
        "stand_in_check": {"reference": "tests/fixtures/official_sit/public/forward.safetensors (real timm 1.0.29)",
                           "relative_errors": stand_in, "tolerance": STAND_IN_TOL},
        "conventions": {
            "time": "t in [0, 1]; t = 0 noise, t = 1 data; the network gets raw t",
            "labels": "float32 holding integers (cast with .long()); null class = num_classes (only when "
                      "class_dropout_prob > 0: the table has num_classes + 1 rows, else num_classes)",
            "tensors": "float32, NCHW; train_dropped uint8",
        },
        "rerandomization": "torch.manual_seed(seed); m = SiT(**sit_kwargs); torch.manual_seed(seed + 1); for every "
                           "named_parameter except pos_embed, in order: p.normal_(0, std), std = 1/sqrt(p[0].numel()) "
                           "for 2+ dims, 0.1 for biases; then every tensor rounded to dtype",
        "checkpoints": {
            name: {"file": f"ckpt_{name}.safetensors", "seed": spec["seed"], "dtype": spec["dtype"],
                   "sit_kwargs_without_heads": {k: v for k, v in spec["sit_kwargs"].items() if k != "num_heads"},
                   "table_rows": int(states[name]["y_embedder.embedding_table.weight"].shape[0]),
                   "num_elements": sum(v.numel() for v in states[name].values()),
                   "num_keys": len(states[name])}
            for name, spec in CHECKPOINTS.items()
        },
        "input_seed": f"torch.Generator().manual_seed({INPUT_SEED} + case index), case index = order below",
        "cases": entries,
    }


def write_fixtures(folder: Path, states: dict[str, dict[str, torch.Tensor]], tensors: dict[str, torch.Tensor],
                   manifest: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    names = []
    for name, state in states.items():
        dtype = getattr(torch, CHECKPOINTS[name]["dtype"])
        file = f"ckpt_{name}.safetensors"
        save_file({k: v.to(dtype).contiguous() for k, v in state.items()}, str(folder / file))
        names.append(file)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "cases.safetensors"))
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    (folder / "README.md").write_text(README.format(commit=OFFICIAL_COMMIT[:7]))
    names += ["cases.safetensors", "manifest.json", "README.md"]
    for name in names:
        (folder / name).chmod(0o644)
    lines = [f"{_sha256(folder / n)}  {n}" for n in sorted(names)]
    (folder / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    total = sum((folder / n).stat().st_size for n in names)
    if total > MAX_FOLDER_BYTES:
        raise RuntimeError(f"the fixtures take {total} bytes, over the {MAX_FOLDER_BYTES} budget; nothing written")


# ----------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = CLIParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                  allow_abbrev=False)
    p.add_argument("--official-repo", type=Path, required=True,
                   help="folder of an export of github willisma/SiT (with models.py)")
    p.add_argument("--out", "--output", dest="out", type=Path, default=DEFAULT_OUT,
                   help="folder to write (default tests/fixtures/official_sit/models); replaced atomically")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists and is not empty")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads, >= 1 (default 1)")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return p


def check_official_repo(repo: Path) -> Path:
    """The export must hold ``models.py`` with ``class SiT``."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from make_official_fixtures import check_export

    check_export(repo, ["models.py"])
    models = repo / "models.py"
    if "class SiT(" not in models.read_text(errors="replace"):
        raise InputError(f"--official-repo {str(repo)!r}: models.py defines no class SiT")
    return repo.resolve()


def run(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    repo = check_official_repo(args.official_repo)
    check_int("--threads", args.threads, minimum=1)
    out_flag = "--output" if any(a == "--output" or a.startswith("--output=") for a in argv) else "--out"
    out = check_output_folder(args.out, overwrite=args.overwrite, keep=[repo, PUBLIC], name=out_flag,
                              overwrite_name="--overwrite")
    torch.set_num_threads(args.threads)

    models_sha = _sha256(repo / "models.py")
    if models_sha != OFFICIAL_MODELS_SHA256:
        print(f"{PROG}: warning: models.py differs from commit {OFFICIAL_COMMIT[:7]} (sha256 in the manifest)",
              file=sys.stderr)
    official = import_official_models(repo)
    stand_in = check_stand_in(official, PUBLIC)
    states = {name: make_checkpoint(official, name, spec) for name, spec in CHECKPOINTS.items()}
    tensors: dict[str, torch.Tensor] = {}
    entries: dict[str, Any] = {}
    for index, (name, case) in enumerate(CASES.items()):
        case_tensors, entries[name] = run_case(official, name, case, index, states[case["checkpoint"]])
        tensors.update({f"{name}/{k}": v for k, v in case_tensors.items()})
    manifest = build_manifest(states, entries, stand_in, models_sha)
    write_folder_atomically(out, lambda tmp: write_fixtures(tmp, states, tensors, manifest))
    total = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote {out} ({total / 1e3:.0f} kB): {len(CHECKPOINTS)} checkpoints, {len(CASES)} cases; stand-in "
          f"vs public: max relative error {max(stand_in.values()):.1e}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status 0; 2 for a bad flag or input (one line on stderr, ``--debug`` for the traceback)."""
    return run_cli(PROG, run, argv)


if __name__ == "__main__":
    sys.exit(main())
