"""The REPA proof in miniature (issue 14 item 2): plain SiT vs SiT + REPA on the digits, same model and budget.

    python benchmarks/repa_digits.py --out runs/repa-digits --dry-run            # print the planned runs, train nothing
    python benchmarks/repa_digits.py --out runs/repa-digits                      # the full comparison (long)
    python benchmarks/repa_digits.py --out /tmp/repa-smoke --steps 40 --batch-size 16 --hidden-size 64 --depth 2 \
        --heads 2 --repa-depth 1 --seeds 0 --samples 100 --sampler-steps 4        # minutes on a CPU

For each seed (``--seeds``, default 0 and 1) and arm (``--arms``): ``plain`` (the digit SiT as
``benchmarks/train_digits.py`` trains it), ``repa`` (the same + REPA: the hidden state after block
``--repa-depth`` aligned through a ``--repa-projector-dim`` MLP to the patch tokens of the digit encoder,
weight ``--repa-coeff``) and ``repa-stop`` (REPA switched off after ``--repa-stop-fraction`` of the budget, as
HASTE, arXiv 2505.16792) and ``irepa`` (REPA with iREPA's 3 x 3 conv projector and spatially z-scored targets,
arXiv 2512.10794), every run trains with ``training/train_sit.py``'s ``train()`` on the 4,000 training
digits. The encoder (``--encoder``, default the shipped ``src/sit_diffusers/data/digit-encoder``, made by
``benchmarks/train_digit_encoder.py`` without any MNIST image or label) is independent of the evaluation. Its
features are precomputed once (``precompute_latents.py --vae none --repa_encoder``, into ``OUT/features``,
passed as ``--repa_features_dir``) unless ``--features on-the-fly``.

Each run checkpoints at ``--eval-fractions`` of the budget (default 25/50/100%); each checkpoint's EMA weights
are scored with the shipped digit classifier: Frechet distance of ``--samples`` class-balanced samples to the
1,000 held-out digits (the reference the classifier never trained on), and conditional accuracy (ODE Heun,
``--sampler-steps`` steps, guidance ``--guidance``; the same noise for every run). Written: ``OUT/repa_digits.json``
(every run, every point, wall times) and ``OUT/repa_digits.md`` (the tables: FD / accuracy per arm and point,
mean and per seed; the steps REPA needs to reach plain SiT's final FD; the wall time per step of each arm and
the alignment's cost). Finished runs are kept in the JSON and skipped when the command is run again; a run
stopped part-way (its folder holds checkpoints, the JSON not yet its scores) continues from its newest checkpoint
with ``--resume`` (the trainer's bit-exact resume; refused without it), so a long CPU comparison can span sessions.
A repa-stop run starts from its seed's repa run at the stop step (the same run until then) instead of step 0.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
PROG = "repa_digits.py"
ARMS = ("plain", "repa", "repa-stop", "irepa")
DEFAULT_ENCODER = REPO / "src" / "sit_diffusers" / "data" / "digit-encoder"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--out", required=True, help="run folder (one sub-folder per run, the JSON and the tables)")
    p.add_argument("--dry-run", action="store_true", help="check everything, print the planned runs, train nothing")
    p.add_argument("--resume", action="store_true",
                   help="continue runs stopped before they were scored (killed, a session's end) from their newest "
                        "checkpoint, bit-exactly (default: such a run is refused, nothing is overwritten)")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {', '.join(ARMS)} (default: all)")
    p.add_argument("--seeds", default="0,1", help="comma-separated training seeds (default: 0,1)")
    budget = p.add_argument_group("budget and model (defaults: the embedded digit model, a CPU-sized budget)")
    budget.add_argument("--steps", type=int, default=2000, help="optimiser steps per run (default: 2000)")
    budget.add_argument("--batch-size", type=int, default=128, help="global batch (default: 128)")
    budget.add_argument("--lr", type=float, default=5e-4, help="learning rate (default: 5e-4)")
    budget.add_argument("--warmup", type=int, default=200, help="LR warm-up steps, at most steps/10 (default: 200)")
    budget.add_argument("--ema", type=float, default=0.999, help="EMA decay (default: 0.999)")
    budget.add_argument("--hidden-size", type=int, default=192, help="SiT width (default: 192)")
    budget.add_argument("--depth", type=int, default=6, help="SiT blocks (default: 6)")
    budget.add_argument("--heads", type=int, default=3, help="attention heads (default: 3)")
    budget.add_argument("--patch-size", type=int, default=4,
                        help="SiT patch size, dividing 28 (default: 4, 7x7 tokens; the encoder's patch grid is "
                             "resized to the SiT's token grid when they differ)")
    budget.add_argument("--workers", type=int, default=0, help="data-loader workers (default: 0)")
    budget.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where to train (default: cpu)")
    budget.add_argument("--mixed-precision", choices=("no", "bf16"), default=None,
                        help="autocast (default: bf16 on cuda, no on cpu; a CPU with AMX trains bf16 ~1.5x faster)")
    budget.add_argument("--attention-backend", default=None, metavar="NAME",
                        help="diffusers attention backend while training, e.g. _native_math (on CPU in bf16 "
                             "~1.3-1.6x faster: docs/training.md; default: the model's)")
    budget.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads per run (default: torch's; with --jobs > 1: 1)")
    budget.add_argument("--jobs", type=int, default=1,
                        help="runs trained at once, each in its own process (default: 1). On a CPU, N one-thread "
                             "runs use N cores better than one N-thread run; the wall time per step of each run "
                             "then includes the others' contention, alike for every arm")
    rp = p.add_argument_group("REPA")
    rp.add_argument("--encoder", default=str(DEFAULT_ENCODER), help="transformers encoder folder or id "
                    "(default: the shipped digit encoder)")
    rp.add_argument("--features", choices=("precomputed", "on-the-fly"), default="precomputed",
                    help="encoder features precomputed once, or computed every step (default: precomputed)")
    rp.add_argument("--repa-depth", type=int, default=2, help="aligned block, 1-based (default: 2 of 6, the "
                    "paper's 8 of 28 scaled)")
    rp.add_argument("--repa-coeff", type=float, default=0.5, help="lambda (default: 0.5, the paper's)")
    rp.add_argument("--repa-projector-dim", type=int, default=512, help="projector width (default: 512)")
    rp.add_argument("--repa-stop-fraction", type=float, default=0.4,
                    help="repa-stop arm: REPA off after this fraction of --steps, in (0, 1) (default: 0.4)")
    ev = p.add_argument_group("evaluation")
    ev.add_argument("--eval-fractions", default="0.25,0.5,1.0",
                    help="fractions of --steps where checkpoints are scored, in (0, 1], 1.0 included (default: 0.25,0.5,1.0)")
    ev.add_argument("--samples", type=int, default=1000, help="class-balanced samples per score (default: 1000)")
    ev.add_argument("--sampler-steps", type=int, default=10, help="ODE Heun steps (default: 10)")
    ev.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (default: 1.0: none)")
    ev.add_argument("--sample-seed", type=int, default=0, help="seed of the sampling noise (default: 0)")
    p.add_argument("--debug", action="store_true", help="print the traceback of an error (default: off)")
    return p


def _int_list(flag: str, text: str) -> list[int]:
    from sit_diffusers.validation import InputError, check_seed

    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"{flag} must be comma-separated integers, got {text!r}") from None
    if not values or len(set(values)) != len(values):
        raise InputError(f"{flag} must list distinct integers, got {text!r}")
    return [check_seed(flag, v) for v in values]


def check_args(args: argparse.Namespace) -> dict[str, Any]:
    """Every value before any work; returns the resolved lists (arms, seeds, eval steps, stop step)."""
    from sit_diffusers.validation import InputError, check_choice, check_float, check_int

    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if not arms or len(set(arms)) != len(arms):
        raise InputError(f"--arms must list distinct arms of {', '.join(ARMS)}, got {args.arms!r}")
    for arm in arms:
        check_choice("--arms", arm, ARMS)
    seeds = _int_list("--seeds", args.seeds)
    steps = check_int("--steps", args.steps, minimum=1)
    check_int("--batch-size", args.batch_size, minimum=1)
    check_float("--lr", args.lr, minimum=0.0, min_inclusive=False)
    check_int("--warmup", args.warmup, minimum=0)
    check_float("--ema", args.ema, minimum=0.0, maximum=1.0)
    check_int("--hidden-size", args.hidden_size, minimum=1)
    check_int("--depth", args.depth, minimum=1)
    check_int("--heads", args.heads, minimum=1)
    if args.hidden_size % args.heads:
        raise InputError(f"--heads {args.heads} must divide --hidden-size {args.hidden_size}")
    if 28 % check_int("--patch-size", args.patch_size, minimum=1) or args.patch_size == 28:
        raise InputError(f"--patch-size {args.patch_size} must divide the 28 px side into 2 or more tokens "
                         "(1, 2, 4, 7 or 14)")
    check_int("--workers", args.workers, minimum=0)
    check_choice("--device", args.device, ("cpu", "cuda"))
    if args.threads is not None:
        check_int("--threads", args.threads, minimum=1)
    check_int("--jobs", args.jobs, minimum=1)
    if args.repa_depth is not None and not 1 <= check_int("--repa-depth", args.repa_depth) <= args.depth:
        raise InputError(f"--repa-depth must be in [1, --depth {args.depth}], got {args.repa_depth}")
    check_float("--repa-coeff", args.repa_coeff, minimum=0.0)
    check_int("--repa-projector-dim", args.repa_projector_dim, minimum=1)
    fraction = check_float("--repa-stop-fraction", args.repa_stop_fraction, minimum=0.0, maximum=1.0,
                           min_inclusive=False, max_inclusive=False)
    stop_step = max(1, round(fraction * steps))
    try:
        fractions = sorted({float(v) for v in args.eval_fractions.split(",") if v.strip()})
    except ValueError:
        raise InputError(f"--eval-fractions must be comma-separated numbers, got {args.eval_fractions!r}") from None
    if not fractions or fractions[0] <= 0 or fractions[-1] != 1.0:
        raise InputError(f"--eval-fractions must be in (0, 1] and include 1.0, got {args.eval_fractions!r}")
    eval_steps = sorted({max(1, round(f * steps)) for f in fractions})
    check_int("--samples", args.samples, minimum=10)
    check_int("--sampler-steps", args.sampler_steps, minimum=1)
    check_float("--guidance", args.guidance, minimum=0.0)
    check_int("--sample-seed", args.sample_seed, minimum=0)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {args.out!r} is a file, not a folder")
    if any(a != "plain" for a in arms):
        enc = Path(args.encoder).expanduser()
        if args.encoder.startswith((".", "/", "~")) and not (enc / "config.json").is_file():
            raise InputError(f"--encoder {args.encoder!r} is not a saved transformers model folder (no config.json)"
                             + (": make it with benchmarks/train_digit_encoder.py" if enc == DEFAULT_ENCODER else ""))
    return {"arms": arms, "seeds": seeds, "eval_steps": eval_steps, "stop_step": stop_step}


# ---------------------------------------------------------------------------
# Plan: one TrainConfig per (arm, seed)
# ---------------------------------------------------------------------------


def run_name(arm: str, seed: int) -> str:
    return f"{arm}-seed{seed}"


def checkpoint_every(plan: dict[str, Any]) -> int:
    """Every run checkpoints at each scored step and, when the repa-stop arm is planned, at its stop step
    (where it forks from the repa run of its seed: :func:`fork_stop_run`)."""
    stop = [plan["stop_step"]] if "repa-stop" in plan["arms"] else []
    return math.gcd(*plan["eval_steps"], *stop)


def train_fields(args: argparse.Namespace, plan: dict[str, Any], arm: str, seed: int, out: Path) -> dict[str, Any]:
    """The ``TrainConfig`` fields of one run: ``benchmarks/train_digits.py``'s (the digit model's data and
    objective settings, through its own parser and ``digits_config``) with this budget, checkpoints at the
    scored steps, and the arm's REPA flags."""
    from benchmarks.train_digits import build_parser as digits_parser
    from benchmarks.train_digits import digits_config

    precision = args.mixed_precision or ("bf16" if args.device == "cuda" else "no")
    argv = ["--device", args.device, "--mixed-precision", precision,
            *(["--attention-backend", args.attention_backend] if args.attention_backend else []),
            "--steps", args.steps, "--batch-size", args.batch_size, "--lr", args.lr, "--warmup", args.warmup,
            "--ema", args.ema, "--seed", seed, "--workers", args.workers, "--out", out / run_name(arm, seed),
            "--hidden-size", args.hidden_size, "--depth", args.depth, "--num-heads", args.heads,
            "--patch-size", args.patch_size,
            "--checkpointing-steps", checkpoint_every(plan)]
    fields = digits_config(digits_parser().parse_args([str(a) for a in argv]))
    if arm != "plain":
        fields.update(repa_encoder=args.encoder, repa_depth=args.repa_depth, repa_coeff=args.repa_coeff)
        if arm == "irepa":
            fields.update(repa_projector="conv", repa_spatial_norm="zscore")
        else:
            fields["repa_projector_dim"] = args.repa_projector_dim
        if args.features == "precomputed":
            fields["repa_features_dir"] = str(out / "features")
        if arm == "repa-stop":
            fields["repa_stop_step"] = plan["stop_step"]
    return fields


def planned_runs(args: argparse.Namespace, plan: dict[str, Any], out: Path) -> list[tuple[str, str, int, dict]]:
    """``(name, arm, seed, fields)`` for every run, each checked by ``config_from_dict`` (the trainer's door)."""
    from training.config import config_from_dict

    runs = []
    for seed in plan["seeds"]:
        for arm in plan["arms"]:
            fields = train_fields(args, plan, arm, seed, out)
            cfg = config_from_dict(fields, where=f"run {run_name(arm, seed)}")
            runs.append((run_name(arm, seed), arm, seed, fields))
    if args.attention_backend is not None:  # the same for every run: checked once, on the device, as train() will
        import torch

        from benchmarks.train_digits import as_typed
        from training.config import ConfigError
        from training.train_sit import check_attention_backend

        try:
            check_attention_backend(cfg, torch.device(args.device), cfg.mixed_precision, None)
        except ConfigError as err:
            raise ConfigError(as_typed(str(err))) from None
    return runs


def describe(runs: list[tuple[str, str, int, dict]], plan: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [f"{len(runs)} runs of {args.steps} steps x batch {args.batch_size} (SiT {args.hidden_size} wide x "
             f"{args.depth} deep, patch {args.patch_size}), scored at steps {plan['eval_steps']} with {args.samples} samples each:"]
    if any(arm != "plain" for _, arm, _, _ in runs) and args.features == "precomputed":
        lines.append(f"  features: precompute_latents.py --vae none --repa_encoder {args.encoder} "
                     f"-> {Path(args.out) / 'features'}")
    for name, _arm, _, fields in runs:
        repa = {k: v for k, v in fields.items() if k.startswith("repa_")}
        lines.append(f"  {name}: output_dir {fields['output_dir']}" + (f", {repa}" if repa else ""))
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Work: features, training, scoring
# ---------------------------------------------------------------------------


def precompute_features(args: argparse.Namespace, out: Path) -> float:
    """The encoder's features of the 4,000 training digits into ``OUT/features`` (once); returns seconds."""
    from sit_diffusers.digits import digits_dataset
    from training.precompute_latents import PrecomputeConfig, precompute

    folder = out / "features"
    if (folder / "repa.json").is_file():
        return 0.0
    start = time.perf_counter()
    precompute(PrecomputeConfig(output_dir=str(folder), vae=None, repa_encoder=args.encoder, resolution=28,
                                num_classes=10, dtype="float32", batch_size=256,
                                dataloader_num_workers=args.workers), dataset=digits_dataset("train"))
    return time.perf_counter() - start


def score_checkpoints(run_dir: Path, eval_steps: list[int], classifier: Any, reference: Any,
                      args: argparse.Namespace) -> list[dict[str, Any]]:
    """FD and conditional accuracy of the EMA weights at each scored step (the same noise for every run)."""
    import torch
    from safetensors.torch import load_file

    from sit_diffusers.evaluation import balanced_labels, evaluate_images, generate_digits
    from sit_diffusers.pipeline_sit import SiTPipeline
    from training.checkpoints import CHECKPOINT_PREFIX, EMA_FILE

    pipe = SiTPipeline.from_pretrained(str(run_dir / "pipeline"))
    labels = balanced_labels(args.samples)
    rows = []
    for step in eval_steps:
        ckpt = run_dir / "checkpoints" / f"{CHECKPOINT_PREFIX}{step:07d}"
        pipe.transformer.load_state_dict(load_file(str(ckpt / EMA_FILE)))
        with torch.no_grad():
            images = generate_digits(pipe, labels, num_inference_steps=args.sampler_steps,
                                     guidance_scale=args.guidance, seed=args.sample_seed)
        row = evaluate_images(f"step {step}", images, labels, classifier, reference)
        rows.append({"step": step, "fd": round(row.frechet, 4), "accuracy": round(row.accuracy, 4)})
        print(f"    step {step}: FD {row.frechet:.3f}, conditional accuracy {row.accuracy:.4f}", flush=True)
    return rows


def same_run_until_stop(saved: dict[str, Any], cfg: Any) -> bool:
    """Whether a checkpoint's ``saved`` config is the repa run that the repa-stop run ``cfg`` equals until its
    stop step: no stop step of its own, every other guarded setting the same."""
    import dataclasses

    from training.config import config_changes

    return (cfg.repa_stop_step is not None and saved.get("repa_stop_step") is None
            and not config_changes(saved, dataclasses.replace(cfg, repa_stop_step=None)))


def fork_stop_run(fields: dict[str, Any], source: Path) -> dict[str, Any] | None:
    """Start a repa-stop run from the repa run of its seed (``source``): until the stop step the two are the
    same run (the same config but ``repa_stop_step``, the same per-step draws), so the source's checkpoints up
    to the stop step are copied into this run's folder and it resumes from the stop step's, bit-exactly
    (tested: the scores equal those of the run trained from step 0). Returns the fields to train with
    (``resume_from_checkpoint`` the copied stop-step checkpoint, ``allow_config_change`` for the one field
    checked here to differ), or None when there is nothing to fork from (no checkpoint at the stop step, other
    settings, or this run already has checkpoints of its own)."""
    import shutil

    from training.checkpoints import CHECKPOINT_PREFIX, TRAIN_STATE_FILE, list_checkpoints
    from training.config import config_from_dict

    cfg = config_from_dict(fields)
    stop = cfg.repa_stop_step
    origin = source / "checkpoints" / f"{CHECKPOINT_PREFIX}{stop:07d}"
    if list_checkpoints(cfg) or not (origin / TRAIN_STATE_FILE).is_file():
        return None
    if not same_run_until_stop(json.loads((origin / TRAIN_STATE_FILE).read_text())["config"], cfg):
        return None
    target = Path(cfg.output_dir) / "checkpoints"
    target.mkdir(parents=True, exist_ok=True)
    for folder in sorted((source / "checkpoints").glob(f"{CHECKPOINT_PREFIX}*")):
        if int(folder.name[len(CHECKPOINT_PREFIX):]) <= stop and (folder / TRAIN_STATE_FILE).is_file():
            shutil.copytree(folder, target / folder.name, copy_function=shutil.copy2)  # times kept: step_time
    return {**fields, "resume_from_checkpoint": str(target / origin.name), "allow_config_change": True}


def run_one(fields: dict[str, Any], eval_steps: list[int], classifier: Any, reference: Any,
            args: argparse.Namespace, fork: str | None = None) -> dict[str, Any]:
    """Train one run (forked from ``fork``'s stop-step checkpoint when given and possible), then score it."""
    from sit_diffusers.digits import digits_dataset
    from training.config import config_from_dict
    from training.train_sit import read_starts, train

    forked = fork_stop_run(fields, Path(fork)) if fork else None
    if forked is not None:
        fields = forked
        print(f"{Path(fields['output_dir']).name}: forked from {Path(fork).name} at step "
              f"{fields['repa_stop_step']} (the same run until then)", flush=True)
    cfg = config_from_dict(fields)
    run_dir = Path(fields["output_dir"])
    start = time.perf_counter()
    train(cfg, dataset=digits_dataset("train"))
    seconds = time.perf_counter() - start
    starts = read_starts(run_dir)
    from_step = int(starts[-1]["from_step"]) if starts else 0
    points = score_checkpoints(run_dir, eval_steps, classifier, reference, args)
    return {"train_seconds": round(seconds, 2), "parts": max(1, len(starts)),
            "seconds_per_step": round(step_time(run_dir, eval_steps, seconds, eval_steps[-1] - from_step), 5),
            "points": points, "repa": {k: v for k, v in fields.items() if k.startswith("repa_")},
            "fields": {k: v for k, v in cfg.to_dict().items() if k not in ("resume_from_checkpoint", "allow_config_change")},
            "scoring": scoring_settings(args),
            **({"forked_from": f"{Path(fork).name} at step {cfg.repa_stop_step}"} if forked is not None else {})}


def _run_in_worker(fields: dict[str, Any], eval_steps: list[int], arguments: dict[str, Any],
                   fork: str | None = None) -> dict[str, Any]:
    """:func:`run_one` in a ``--jobs`` worker process: its own threads, classifier and reference digits."""
    import torch

    from sit_diffusers.digit_classifier import load_classifier
    from sit_diffusers.evaluation import heldout_reference

    args = argparse.Namespace(**arguments)
    torch.set_num_threads(args.threads or 1)
    classifier = load_classifier()
    return run_one(fields, eval_steps, classifier, heldout_reference(classifier), args, fork)


def step_time(run_dir: Path, eval_steps: list[int], seconds: float, steps_this_part: int) -> float:
    """Wall seconds per step between the first and the last scored checkpoint, from the checkpoints'
    ``train_state.json`` times (no start-up, model building or final pipeline export; checkpoint writes
    included). A run trained in parts (``--resume``, or a fork) leaves out each interval that begins where a
    part started (``runs.jsonl``: it holds the pause and the restart; a fork's earlier checkpoints are the
    source run's, with their times). With no interval left, this part's whole ``train()``
    call over the steps it trained."""
    from training.checkpoints import CHECKPOINT_PREFIX, TRAIN_STATE_FILE
    from training.train_sit import read_starts

    restarts = {int(start["from_step"]) for start in read_starts(run_dir)}
    stamps = {}
    for folder in (run_dir / "checkpoints").glob(f"{CHECKPOINT_PREFIX}*"):
        step = int(folder.name[len(CHECKPOINT_PREFIX):])
        if eval_steps[0] <= step <= eval_steps[-1] and (folder / TRAIN_STATE_FILE).is_file():
            stamps[step] = (folder / TRAIN_STATE_FILE).stat().st_mtime
    ordered = sorted(stamps)
    kept = [(a, b) for a, b in zip(ordered, ordered[1:], strict=False) if a not in restarts]
    if not kept:
        return seconds / max(1, steps_this_part)
    return sum(stamps[b] - stamps[a] for a, b in kept) / sum(b - a for a, b in kept)


# ---------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def steps_to_reach(points: list[tuple[int, float]], target: float) -> float | None:
    """First step where the FD curve (linear between scored steps) is <= ``target``; None if never."""
    prev = None
    for step, fd in points:
        if fd <= target:
            if prev is None:
                return float(step)
            (s0, f0) = prev
            return s0 + (step - s0) * (f0 - target) / (f0 - fd)
        prev = (step, fd)
    return None


def summarize(results: dict[str, Any], plan: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    arms: dict[str, Any] = {}
    for arm in plan["arms"]:
        runs = [results["runs"][run_name(arm, s)] for s in plan["seeds"] if run_name(arm, s) in results["runs"]]
        if not runs:
            continue
        curve = []
        for i, step in enumerate(plan["eval_steps"]):
            fds, accs = [r["points"][i]["fd"] for r in runs], [r["points"][i]["accuracy"] for r in runs]
            curve.append({"step": step, "fd_mean": round(_mean(fds), 4), "fd_per_seed": fds,
                          "accuracy_mean": round(_mean(accs), 4), "accuracy_per_seed": accs})
        arms[arm] = {"seeds": len(runs), "curve": curve,
                     "seconds_per_step": round(_mean([r["seconds_per_step"] for r in runs]), 5)}
    if "plain" in arms:
        target = arms["plain"]["curve"][-1]["fd_mean"]
        plain_sps = arms["plain"]["seconds_per_step"]
        for data in arms.values():
            reach = steps_to_reach([(p["step"], p["fd_mean"]) for p in data["curve"]], target)
            data["steps_to_plain_final_fd"] = None if reach is None else round(reach, 1)
            data["speedup_vs_plain"] = None if not reach else round(args.steps / reach, 2)
            data["step_time_vs_plain"] = round(data["seconds_per_step"] / plain_sps, 3)
    return arms


def markdown(summary: dict[str, Any], plan: dict[str, Any], args: argparse.Namespace, command: str,
             features_seconds: float | None) -> str:
    lines = [f"Command: `{command}`", "",
             f"{args.steps} steps x batch {args.batch_size}, SiT {args.hidden_size} wide x {args.depth} deep, patch "
             f"{args.patch_size}, "
             f"seeds {plan['seeds']}; REPA: encoder `{args.encoder}`, block {args.repa_depth}, lambda "
             f"{args.repa_coeff}, projector {args.repa_projector_dim}, features {args.features}; repa-stop: off after "
             f"step {plan['stop_step']}. FD to the 1,000 held-out digits and conditional accuracy of {args.samples} "
             f"samples (ODE Heun {args.sampler_steps} steps, guidance {args.guidance}), EMA weights.", "",
             "| arm | step | FD (mean) | FD per seed | cond. accuracy (mean) | accuracy per seed |",
             "|---|---|---|---|---|---|"]
    for arm, data in summary.items():
        for p in data["curve"]:
            lines.append(f"| {arm} | {p['step']} | {p['fd_mean']:.3f} | {', '.join(f'{v:.3f}' for v in p['fd_per_seed'])} "
                         f"| {p['accuracy_mean']:.4f} | {', '.join(f'{v:.4f}' for v in p['accuracy_per_seed'])} |")
    if "plain" in summary:
        lines += ["", "| arm | steps to plain's final FD | speed-up in steps | wall s / step (between scored checkpoints) "
                  "| step time vs plain |", "|---|---|---|---|---|"]
        for arm, data in summary.items():
            reach, speedup = data["steps_to_plain_final_fd"], data["speedup_vs_plain"]
            reach_text = "not reached" if reach is None else f"{reach:.0f}"
            speedup_text = "-" if speedup is None else f"{speedup:.2f}x"
            lines.append(f"| {arm} | {reach_text} | {speedup_text} | {data['seconds_per_step']:.4f} | "
                         f"{data['step_time_vs_plain']:.3f} |")
    if features_seconds:
        lines += ["", f"Precomputing the encoder features of the 4,000 training digits took {features_seconds:.1f} s."]
    return "\n".join(lines) + "\n"


def read_results(json_path: Path) -> dict[str, Any]:
    """The runs finished before (``OUT/repa_digits.json``), or none; an unreadable file is refused, not replaced."""
    from sit_diffusers.validation import InputError

    if not json_path.exists():
        return {"runs": {}}
    try:
        results = json.loads(json_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{json_path} is not readable JSON ({err}); move it away to start the comparison again") from None
    if not isinstance(results, dict) or not isinstance(results.get("runs"), dict):
        raise InputError(f"{json_path} is not a repa_digits.py result (no 'runs' table); move it away or use "
                         "another --out")
    return results


def scoring_settings(args: argparse.Namespace) -> dict[str, Any]:
    """What a run's scores depend on besides its weights."""
    return {"samples": args.samples, "sampler_steps": args.sampler_steps, "guidance": args.guidance,
            "sample_seed": args.sample_seed}


def kept_run_changes(kept: dict[str, Any], fields: dict[str, Any], eval_steps: list[int],
                     scoring: dict[str, Any]) -> list[str]:
    """How a run finished before differs from the one planned now: the trainer's guarded settings
    (:func:`training.config.config_changes`), the budget, the scored steps and the scoring settings."""
    from training.config import config_changes, config_from_dict

    changes = []
    steps = [p["step"] for p in kept.get("points", [])]
    if steps != eval_steps:
        changes.append(f"scored steps {steps} -> {eval_steps}")
    if "fields" in kept:  # runs from before the fields were kept are checked by their scored steps only
        changes += config_changes(kept["fields"], config_from_dict(fields))
        if kept["fields"].get("max_train_steps") != fields["max_train_steps"]:
            changes.append(f"--steps {kept['fields'].get('max_train_steps')} -> {fields['max_train_steps']}")
    if "scoring" in kept and kept["scoring"] != scoring:
        changes.append(f"scoring {kept['scoring']} -> {scoring}")
    return changes


def _forked_checkpoint_fields(fields: dict[str, Any], checkpoint: Path) -> dict[str, Any] | None:
    """A repa-stop run resumed from a checkpoint copied from its repa sibling (a fork stopped before it saved
    one of its own): ``allow_config_change`` when ``repa_stop_step`` is the one difference, else None."""
    from training.checkpoints import TRAIN_STATE_FILE
    from training.config import config_from_dict

    saved = json.loads((checkpoint / TRAIN_STATE_FILE).read_text())["config"]
    return {**fields, "allow_config_change": True} if same_run_until_stop(saved, config_from_dict(fields)) else None


def resume_pending(runs: list[tuple[str, str, int, dict]], results: dict[str, Any], eval_steps: list[int],
                   scoring: dict[str, Any], resume: bool) -> tuple[list[tuple[str, dict[str, Any], str | None]], list[str]]:
    """The runs still to train, ``(name, fields, fork)``, and a line per run about its state. A run finished
    before with these settings is kept (not trained again); one finished with others is refused (its scores
    would be mixed into the tables). A run stopped part-way (checkpoints in its folder, no scores in the JSON)
    continues from its newest checkpoint with ``resume`` (its fields get ``resume_from_checkpoint="latest"``:
    the trainer then checks that its settings match) and is refused without it. ``fork`` is the folder of the
    repa run a repa-stop run starts from (:func:`fork_stop_run`) when that run is planned. Every refusal comes
    before any work."""
    from sit_diffusers.validation import InputError
    from training.checkpoints import CHECKPOINT_PREFIX, list_checkpoints
    from training.config import config_from_dict

    planned = {name: fields for name, _, _, fields in runs}
    pending, notes, stopped = [], [], []
    for name, arm, seed, fields in runs:
        if name in results["runs"]:
            changes = kept_run_changes(results["runs"][name], fields, eval_steps, scoring)
            if changes:
                raise InputError(f"{name} in {fields['output_dir']} was finished with other settings "
                                 f"({'; '.join(changes)}): use another --out, or the same settings")
            notes.append(f"{name}: done before, kept")
            continue
        found = list_checkpoints(config_from_dict(fields))
        if found:
            step = int(found[-1].name[len(CHECKPOINT_PREFIX):])
            stopped.append(f"{name} (step {step})")
            if resume:
                fields = {**fields, "resume_from_checkpoint": "latest"}
                fields = _forked_checkpoint_fields(fields, found[-1]) or fields
                notes.append(f"{name}: continues from its checkpoint at step {step}")
        sibling = run_name("repa", seed)
        fork = planned[sibling]["output_dir"] if arm == "repa-stop" and sibling in planned and not found else None
        pending.append((name, fields, fork))
    pending.sort(key=lambda item: item[2] is not None)  # forks last: after the runs they fork from
    if stopped and not resume:
        many = len(stopped) > 1
        raise InputError(f"{', '.join(stopped)} stopped before being scored: pass --resume to continue "
                         f"{'them' if many else 'it'} from the newest checkpoint, or remove "
                         f"{'their folders' if many else 'its folder'} to train again")
    return pending, notes


def run_pool(pending: list[tuple[str, dict[str, Any], str | None]], jobs: int, eval_steps: list[int],
             args: argparse.Namespace, finished: Any) -> None:
    """Train ``pending`` at most ``jobs`` at a time, each in its own spawn process; a repa-stop run whose repa
    sibling is also pending starts once that one has finished (it forks from it). ``finished(name, result)``
    is called as each ends."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    waiting = list(pending)
    names = {Path(fields["output_dir"]).as_posix(): name for name, fields, _ in pending}
    running: dict[Any, str] = {}
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        while waiting or running:
            busy = set(running.values()) | {name for name, _, _ in waiting}
            for item in list(waiting):
                name, fields, fork = item
                if len(running) >= jobs:
                    break
                if fork is not None and names.get(Path(fork).as_posix()) in busy:
                    continue  # its repa sibling is still to train
                waiting.remove(item)
                running[pool.submit(_run_in_worker, fields, eval_steps, vars(args), fork)] = name
                print(f"{name}: training", flush=True)
            if not running:
                raise RuntimeError(f"no run can start: {[name for name, _, _ in waiting]} wait for each other")
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in done:
                finished(running.pop(future), future.result())


def _cli(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    plan = check_args(args)
    out = Path(args.out)
    runs = planned_runs(args, plan, out)
    json_path = out / "repa_digits.json"
    results = read_results(json_path)
    pending, notes = resume_pending(runs, results, plan["eval_steps"], scoring_settings(args), args.resume)
    print("\n".join([describe(runs, plan, args), *notes]), flush=True)
    if args.dry_run:
        return 0
    import torch

    from sit_diffusers.atomic import write_file_atomically
    from sit_diffusers.digit_classifier import load_classifier
    from sit_diffusers.evaluation import heldout_reference

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out.mkdir(parents=True, exist_ok=True)
    if any(arm != "plain" for _, arm, _, _ in runs) and args.features == "precomputed":
        seconds = precompute_features(args, out)
        results["features_seconds"] = results.get("features_seconds") or round(seconds, 2)
    command = "python benchmarks/repa_digits.py " + " ".join(argv)

    def save() -> None:
        summary = summarize(results, plan, args)
        results.update(command=command, plan=plan, summary=summary)
        write_file_atomically(json_path, lambda p: p.write_text(json.dumps(results, indent=2) + "\n"))
        table = markdown(summary, plan, args, command, results.get("features_seconds"))
        write_file_atomically(out / "repa_digits.md", lambda p: p.write_text(table))

    def finished(name: str, result: dict[str, Any]) -> None:
        results["runs"][name] = result
        print(f"{name}: done", flush=True)
        save()

    if args.jobs == 1:  # in the planned order: a repa run before the repa-stop run that forks from it
        classifier = load_classifier()
        reference = heldout_reference(classifier)
        for name, fields, fork in pending:
            print(f"{name}: training", flush=True)
            finished(name, run_one(fields, plan["eval_steps"], classifier, reference, args, fork))
    else:  # one process per run, at most --jobs at a time; the JSON is written as each run ends
        run_pool(pending, args.jobs, plan["eval_steps"], args, finished)
    save()
    print((out / "repa_digits.md").read_text())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from sit_diffusers.validation import run_cli
    from training.config import ConfigError
    from training.data import DataError

    return run_cli(PROG, _cli, argv, user_errors=(ConfigError, DataError))


if __name__ == "__main__":
    sys.exit(main())
