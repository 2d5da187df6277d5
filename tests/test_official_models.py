"""Our network and our converter against the official SiT network on seven more architectures
(``tests/fixtures/official_sit/models``, made by ``benchmarks/make_official_model_fixtures.py`` from the official
``models.py`` alone; read its README and manifest.json).

Every case is checked twice: the network (``SiTTransformer2DModel`` built from the official arguments, weights
mapped by the converter's key table), so that a failure there is in ``network.py``; and the converter
(``infer_official_config`` / ``load_official_checkpoint`` from the shapes), so that a failure there is in
``conversion.py``. (The audit that made these found three converter divergences, fixed with them: an
``mlp_ratio`` lost to float rounding, a one-row label table refused, and a table without a null row misread.)
"""

from __future__ import annotations

import functools
import json

import pytest
import torch
from conftest import REPO_ROOT, load_script, rel_err
from fixtures_path import verify_checksums

from sit_diffusers.conversion import (
    infer_official_config,
    load_official_checkpoint,
    official_to_diffusers_key,
)
from sit_diffusers.modeling_sit import SiTTransformer2DModel, get_2d_sincos_pos_embed
from sit_diffusers.validation import InputError

MODELS = REPO_ROOT / "tests" / "fixtures" / "official_sit" / "models"
TOL = 1e-5  # the public bar: relative error of a whole tensor


def _verified_manifest() -> dict:
    """Check every file against ``SHA256SUMS`` once, at import (a truncated or edited reference fails loudly)."""
    verify_checksums(MODELS, MODELS / "SHA256SUMS", made_by="benchmarks/make_official_model_fixtures.py")
    return json.loads((MODELS / "manifest.json").read_text())


MANIFEST = _verified_manifest()
CASES: dict = MANIFEST["cases"]
CHECKPOINTS: dict = MANIFEST["checkpoints"]

# ------------------------------------------------------------------------------------------------------------
# what the converter cannot tell from the shapes
# ------------------------------------------------------------------------------------------------------------

#: a table of num_classes rows has no null class (official class_dropout_prob=0); the shapes alone read it as
#: num_classes - 1 classes + the null row (what official training always makes), so the caller says num_classes
CONFIG_HINTS = {"nonull_classes4": {"num_classes": 4}}


def _cases(where=lambda case: True) -> list:
    """The case names as pytest params."""
    return [pytest.param(name, id=name) for name, case in CASES.items() if where(case)]


def our_config(sit_kwargs: dict) -> dict:
    """``SiTTransformer2DModel`` arguments of an official ``SiT(**sit_kwargs)`` (``input_size`` -> ``sample_size``)."""
    config = dict(sit_kwargs)
    config["sample_size"] = config.pop("input_size")
    return config


@functools.cache
def official_state(checkpoint: str) -> dict[str, torch.Tensor]:
    """The checkpoint's official state dict (official keys, the file's dtype)."""
    from safetensors.torch import load_file

    return load_file(str(MODELS / CHECKPOINTS[checkpoint]["file"]))


@functools.cache
def _all_tensors() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(MODELS / "cases.safetensors"))


def case_tensors(case: str) -> dict[str, torch.Tensor]:
    prefix = f"{case}/"
    return {k[len(prefix):]: v for k, v in _all_tensors().items() if k.startswith(prefix)}


@functools.cache
def network(case: str) -> SiTTransformer2DModel:
    """Our model built from the official arguments (heads included), the official weights mapped by the key
    table with ``strict=True``: no converter inference involved."""
    entry = CASES[case]
    model = SiTTransformer2DModel(**our_config(entry["sit_kwargs"]))
    state = {official_to_diffusers_key(k): v for k, v in official_state(entry["checkpoint"]).items()}
    assert None not in state, "an official key the key table does not know"
    model.load_state_dict(state, strict=True)
    return model.eval()


def forward_with_hooks(model: SiTTransformer2DModel, x, t, y) -> dict[str, torch.Tensor]:
    """``out`` and the intermediates the fixtures hold: ``t_emb``, ``y_emb``, ``block<i>_out``, ``out_full``."""
    caps: dict[str, torch.Tensor] = {}
    parts = {"t_emb": model.time_embed, "y_emb": model.class_embed, "final_layer_out": model.final_layer}
    parts.update({f"block{i}_out": b for i, b in enumerate(model.transformer_blocks)})
    hooks = [m.register_forward_hook(lambda _m, _i, o, k=k: caps.__setitem__(k, o)) for k, m in parts.items()]
    try:
        with torch.no_grad():
            caps["out"] = model(x, t, y).sample
    finally:
        for h in hooks:
            h.remove()
    caps["out_full"] = model.unpatchify(caps.pop("final_layer_out"))
    return caps


# ------------------------------------------------------------------------------------------------------------
# the fixtures themselves
# ------------------------------------------------------------------------------------------------------------


def test_fixtures_come_from_the_unmodified_official_code_on_a_checked_stand_in() -> None:
    assert MANIFEST["official_models_py_matches_commit"]
    check = MANIFEST["stand_in_check"]
    assert check["relative_errors"] and max(check["relative_errors"].values()) <= 1e-6
    assert {c["checkpoint"] for c in CASES.values()} == set(CHECKPOINTS)
    assert sum((MODELS / p.name).stat().st_size for p in MODELS.iterdir()) < 1_000_000


# ------------------------------------------------------------------------------------------------------------
# the network
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", _cases())
def test_network_forward_matches_official_with_intermediates(case: str) -> None:
    ref = case_tensors(case)
    got = forward_with_hooks(network(case), ref["x"], ref["t"], ref["y"].long())
    names = ["out", "out_full", "t_emb", "y_emb"] + [k for k in ref if k.startswith("block")]
    assert len(names) == 4 + CASES[case]["sit_kwargs"]["depth"]
    for name in names:
        assert got[name].shape == ref[name].shape, name
        assert rel_err(got[name], ref[name]) <= TOL, (name, rel_err(got[name], ref[name]))


@pytest.mark.parametrize("case", _cases())
def test_torch_only_network_matches_official(case: str) -> None:
    """``SiTNetwork`` (what ``sit-generate`` runs without diffusers): same keys, same numbers."""
    from sit_diffusers.network import SiTConfig, SiTNetwork

    entry = CASES[case]
    model = SiTNetwork(SiTConfig(**our_config(entry["sit_kwargs"])), init_weights=False)
    model.load_state_dict(network(case).state_dict(), strict=True)
    ref = case_tensors(case)
    with torch.no_grad():
        out = model.eval()(ref["x"], ref["t"], ref["y"].long())
    assert rel_err(out, ref["out"]) <= TOL


@pytest.mark.parametrize("case", _cases(where=lambda c: c["cfg"]["status"] == "ok"))
@pytest.mark.parametrize("scale", [1.0, 4.0])
def test_guidance_matches_official_forward_with_cfg(case: str, scale: float) -> None:
    """The official ``forward_with_cfg`` guides ``model_out[:, :3]``: ``guidance_channels = min(3, C)`` in
    ``SiTPipeline`` (``3`` itself is refused for a 1-channel model; ``"all"`` is the same there)."""
    from sit_diffusers.pipeline_sit import SiTPipeline
    from sit_diffusers.scheduling_sit import SiTSampler

    ref, entry = case_tensors(case), CASES[case]
    n, channels = entry["batch"], entry["sit_kwargs"]["in_channels"]
    model = network(case)
    with torch.no_grad():  # the batch forward_with_cfg combines: conditional labels, then the null class
        raw = model(torch.cat([ref["x"], ref["x"]]), torch.cat([ref["t"], ref["t"]]), ref["y_cfg"].long()).sample
    assert rel_err(raw, ref["out_cfg_raw"]) <= TOL
    pipe = SiTPipeline(model, SiTSampler.from_preset("ode-euler"))
    y_cond = torch.tensor(entry["cfg"]["y_cond"])
    for k in {min(3, channels), "all"} if channels <= 3 else {3}:
        guided = pipe.guided_model_fn(y_cond, guidance_scale=scale, guidance_channels=k)(ref["x"], ref["t"])
        assert rel_err(guided, ref[f"out_cfg_{scale:g}"]) <= TOL, k
    if channels > 3:  # the channels after the third keep the conditional prediction
        assert rel_err(guided[:, 3:], ref["out_cfg_raw"][:n, 3:]) <= TOL
    if scale != 1.0:
        assert rel_err(ref[f"out_cfg_{scale:g}"][:, :3], ref["out_cfg_raw"][:n, :3]) > 1e-2  # guidance moved it


@pytest.mark.parametrize("case", _cases(where=lambda c: c["cfg"]["status"] == "raised"))
def test_no_null_row_means_no_null_class_and_no_guidance(case: str) -> None:
    """``class_dropout_prob = 0``: the official table has no null row (its forward_with_cfg raises IndexError);
    ours refuses the null label and guidance with an ``InputError`` instead."""
    from sit_diffusers.pipeline_sit import SiTPipeline
    from sit_diffusers.scheduling_sit import SiTSampler

    entry = CASES[case]
    assert entry["cfg"]["error"].startswith("IndexError")
    ref, model = case_tensors(case), network(case)
    null = torch.full_like(ref["y"].long(), entry["sit_kwargs"]["num_classes"])
    with pytest.raises(InputError, match="no null class"):
        model(ref["x"], ref["t"], null)
    pipe = SiTPipeline(model, SiTSampler.from_preset("ode-euler"))
    with pytest.raises(InputError, match="class_dropout_prob=0"):
        pipe.guided_model_fn(ref["y"].long(), guidance_scale=4.0)


def test_label_dropout_in_training_mode_matches_official() -> None:
    """Same seed, same dropped labels: ``torch.rand(N) < p`` on the labels' device, as the official
    ``LabelEmbedder.token_drop``, with no other random draw before it in the forward."""
    (case,) = [name for name, entry in CASES.items() if "train" in entry]
    ref, train = case_tensors(case), CASES[case]["train"]
    model = network(case)
    assert 0 < len(train["dropped"]) < ref["y_train"].numel()
    model.train()
    try:
        torch.manual_seed(train["seed"])
        with torch.no_grad():
            out = model(ref["x_train"], ref["t_train"], ref["y_train"].long()).sample
    finally:
        model.eval()
    assert rel_err(out, ref["out_train"]) <= TOL
    with torch.no_grad():  # the dropped labels matter: the eval-mode output differs there only
        kept = model(ref["x_train"], ref["t_train"], ref["y_train"].long()).sample
    differs = (kept - ref["out_train"]).flatten(1).norm(dim=1) > 1e-4
    assert differs.tolist() == ref["train_dropped"].bool().tolist()


@pytest.mark.parametrize("checkpoint", list(CHECKPOINTS))
def test_fresh_pos_embed_and_parameter_count_match_official(checkpoint: str) -> None:
    """A model built from scratch has the official frozen sin-cos table (the checkpoint's, rounded to its
    dtype) and the official parameter count (``pos_embed`` is an official parameter, our buffer)."""
    entry = next(c for c in CASES.values() if c["checkpoint"] == checkpoint)
    config = our_config(entry["sit_kwargs"])
    ours = SiTTransformer2DModel(**config).pos_embed  # (1, T, D) float32
    official = official_state(checkpoint)["pos_embed"]
    grid = config["sample_size"] // config["patch_size"]
    assert torch.equal(get_2d_sincos_pos_embed(config["hidden_size"], grid).float()[None], ours)
    assert torch.equal(ours.to(official.dtype), official)
    with torch.device("meta"):
        model = SiTTransformer2DModel(**config)
    count = sum(p.numel() for p in model.parameters()) + model.pos_embed.numel()
    assert count == entry["num_parameters"]


def test_heads_change_the_output_and_are_not_in_the_weights() -> None:
    """One checkpoint, three head counts, three official outputs: a converter must be told the heads, and our
    network built with each reproduces each."""
    cases = [name for name, c in CASES.items() if c["checkpoint"] == "w36"]
    assert [CASES[c]["sit_kwargs"]["num_heads"] for c in cases] == [3, 6, 9]
    outs = [case_tensors(c)["out"] for c in cases]
    for a in range(len(outs)):
        for b in range(a + 1, len(outs)):
            assert rel_err(outs[a], outs[b]) > 1e-2
    with pytest.raises(InputError, match="num_heads"):
        infer_official_config(official_state("w36"))  # width 36 matches no named config


# ------------------------------------------------------------------------------------------------------------
# the converter
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", _cases())
def test_converter_infers_the_official_config(case: str) -> None:
    entry = CASES[case]
    expected = our_config(entry["sit_kwargs"])
    hints = CONFIG_HINTS.get(entry["checkpoint"], {})
    config = infer_official_config(official_state(entry["checkpoint"]), num_heads=expected["num_heads"], **hints)
    width = expected["hidden_size"]  # mlp_ratio: the MLP width it builds is what must match
    assert int(width * config.pop("mlp_ratio")) == int(width * expected.pop("mlp_ratio"))
    assert config == expected


@pytest.mark.parametrize("case", _cases())
def test_converter_forward_matches_official(case: str) -> None:
    entry = CASES[case]
    path = MODELS / CHECKPOINTS[entry["checkpoint"]]["file"]
    model = load_official_checkpoint(path, num_heads=entry["sit_kwargs"]["num_heads"],
                                     **CONFIG_HINTS.get(entry["checkpoint"], {}))
    assert model.dtype == torch.float32 and not model.training  # float16 files load exactly into float32
    ref = case_tensors(case)
    with torch.no_grad():
        out = model(ref["x"], ref["t"], ref["y"].long()).sample
    assert rel_err(out, ref["out"]) <= TOL



# ------------------------------------------------------------------------------------------------------------
# the generator's refusals (benchmarks/make_official_model_fixtures.py): checked before any work
# ------------------------------------------------------------------------------------------------------------


def _generator():
    return load_script("benchmarks/make_official_model_fixtures.py")


GENERATOR_REFUSALS = [
    # (id, argv with {repo} = a folder holding models.py with class SiT, {tmp} = the test folder, words)
    ("no-repo-flag", ["--out", "{tmp}/new"], ["--official-repo", "required"]),
    ("repo-missing", ["--official-repo", "{tmp}/nowhere"], ["--official-repo", "nowhere", "not a folder"]),
    ("repo-without-models", ["--official-repo", "{tmp}/empty"], ["--official-repo", "empty", "missing models.py"]),
    ("models-without-sit", ["--official-repo", "{tmp}/other"], ["--official-repo", "other", "no class SiT"]),
    ("threads-zero", ["--official-repo", "{repo}", "--threads", "0"], ["--threads", "got 0"]),
    ("threads-text", ["--official-repo", "{repo}", "--threads", "two"], ["--threads", "'two'"]),
    ("unknown-flag", ["--official-repo", "{repo}", "--seed", "3"], ["--seed"]),
    ("abbreviated-flag", ["--official-repo", "{repo}", "--over"], ["unrecognized", "--over"]),
    ("out-not-empty", ["--official-repo", "{repo}", "--out", "{tmp}/full"], ["--out", "full", "--overwrite"]),
    ("output-not-empty", ["--official-repo", "{repo}", "--output", "{tmp}/full"], ["--output", "full"]),
    ("out-is-file", ["--official-repo", "{repo}", "--out", "{tmp}/file.txt"], ["--out", "file.txt", "file"]),
    ("out-holds-repo", ["--official-repo", "{repo}", "--out", "{tmp}", "--overwrite"], ["--out", "holds"]),
]


@pytest.mark.parametrize("argv, words", [pytest.param(a, w, id=i) for i, a, w in GENERATOR_REFUSALS])
def test_generator_refuses_bad_inputs_before_any_work(argv, words, tmp_path, capsys) -> None:
    from conftest import assert_refused

    gen = _generator()
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "models.py").write_text("class SiT(nn.Module):\n    pass\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "models.py").write_text("class DiT:\n    pass\n")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    (tmp_path / "file.txt").write_text("x")
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    argv = [a.format(repo=repo, tmp=tmp_path) for a in argv]
    err = assert_refused(gen.main, argv, tmp_path, capsys, gen.PROG)
    for word in words:
        assert word in err, (word, err)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before
