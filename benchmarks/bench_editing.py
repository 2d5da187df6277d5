"""Inversion round trips and SDEdit class-to-class edits on held-out real digits, with the embedded model.

    python benchmarks/bench_editing.py --figure docs/editing.png          # the tables and figure of docs/sampling.md
    python benchmarks/bench_editing.py --num-inversions 20 --num-edits 50 --threads 2   # a quick look

* **Inversion** (``pipe.invert`` then ``pipe(latents=...)``, both conditioned on the true label at the saved
  guidance scale): ``--num-inversions`` held-out digits (class-balanced, the first of each class) go to noise by
  the reverse ODE and come back by the forward ODE with the same sampler. Rows: ODE Heun at several step
  counts and dopri5 (atol 1e-6) at several rtol. Errors of the round trip in pixel units (images in [0, 1]):
  RMSE over every pixel, the largest pixel error, and the relative error ``||x' - x|| / ||x||`` of the images in
  the model's [-1, 1]; NFE is the reverse plus the forward solve; "noise std" is the standard deviation of the
  inverted latents (1 for noise the model would draw).
* **SDEdit** (``pipe(target, image=source, strength=s)``, the saved sampler ODE Heun with 10 steps, i.e.
  ``floor(10 s)`` steps from ``t = 1 - s``): ``--num-edits`` held-out digits, each given a random other class
  (seeded). Success: the shipped classifier says the target class; kept: it still says the source class;
  similarity to the source: pixel RMSE and the cosine of the classifier's 128-d features. Reference rows: the
  source itself and another held-out digit of the target class.
* ``--figure``: a PNG with the round-trip error against NFE, an inversion mosaic and an edit mosaic.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sit_diffusers import DEFAULT_MODEL
from sit_diffusers.atomic import write_file_atomically
from sit_diffusers.digit_classifier import load_classifier
from sit_diffusers.digits import digits_tensors
from sit_diffusers.evaluation import EMBEDDED_GUIDANCE_SCALE
from sit_diffusers.pipeline_sit import SiTPipeline
from sit_diffusers.scheduling_sit import SiTSampler
from sit_diffusers.validation import (
    CLIParser,
    InputError,
    check_device,
    check_float,
    check_int,
    check_seed,
    check_writable_dir,
    run_cli,
)

PROG = "benchmarks/bench_editing.py"
HEUN_STEPS = (5, 10, 25, 50)
DOPRI5_RTOLS = (1e-2, 1e-3, 1e-4)
STRENGTHS = (0.3, 0.5, 0.7, 0.9)
EDIT_STEPS = 10  # the embedded model's saved ODE Heun steps



def build_parser() -> argparse.ArgumentParser:
    p = CLIParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                allow_abbrev=False)
    p.add_argument("--num-inversions", type=int, default=100, help="held-out digits to invert, 10 .. 1000 (100)")
    p.add_argument("--num-edits", type=int, default=200, help="held-out digits to edit, 10 .. 1000 (200)")
    p.add_argument("--guidance-scale", type=float, default=EMBEDDED_GUIDANCE_SCALE,
                   help=f"guidance of the inversions, finite >= 0 (default {EMBEDDED_GUIDANCE_SCALE}, the saved one)")
    p.add_argument("--edit-guidance", type=float, nargs="+", default=[EMBEDDED_GUIDANCE_SCALE, 4.0],
                   help="guidance scales of the edits, each finite >= 0 (default 1.5 4.0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the targets and the noise (default 0)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads, >= 1 (default 1)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--figure", type=Path, default=None, help="write the figure to this .png file")
    p.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return p


def _check_out(flag: str, path: Path | None, suffix: str) -> Path | None:
    if path is None:
        return None
    if path.suffix.lower() != suffix:
        raise InputError(f"{flag} {str(path)!r} must end in {suffix}")
    if path.is_dir():
        raise InputError(f"{flag} {str(path)!r} is a folder; give a file name")
    check_writable_dir(flag, path.parent, path)
    return path


def balanced(x: torch.Tensor, y: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``ceil(n / 10)`` held-out digits of each class, then the first ``n`` of them in class order
    interleaved (0, 1, ..., 9, 0, 1, ...)."""
    per = -(-n // 10)
    idx = torch.stack([torch.nonzero(y == c).flatten()[:per] for c in range(10)], dim=1).flatten()[:n]
    return x[idx], y[idx]


# ----------------------------------------------------------------------------------------------------------
# inversion
# ----------------------------------------------------------------------------------------------------------


def round_trip(pipe: SiTPipeline, sampler: SiTSampler, steps: int, x: torch.Tensor, y: torch.Tensor,
               scale: float) -> dict[str, Any]:
    """Invert ``x`` (``(N, 1, 28, 28)`` in [-1, 1]) and sample it back; errors in pixel units ([0, 1])."""
    pipe.scheduler = sampler
    t0 = time.perf_counter()
    inv = pipe.invert(x, y.tolist(), guidance_scale=scale, num_inference_steps=steps, image_type="latent")
    back = pipe(y.tolist(), latents=inv.latents, guidance_scale=scale, num_inference_steps=steps, output_type="latent")
    seconds = time.perf_counter() - t0
    err = (back.images.clamp(-1, 1) - x) / 2  # pixel units
    return {
        "nfe": inv.nfe + back.nfe, "nfe_invert": inv.nfe,
        "rmse": float(err.pow(2).mean().sqrt()), "max_error": float(err.abs().max()),
        "relative": float((back.images - x).norm() / x.norm()), "noise_std": float(inv.latents.std()),
        "seconds_per_image": seconds / len(x), "reconstruction": back.images.clamp(-1, 1), "noise": inv.latents,
    }


# ----------------------------------------------------------------------------------------------------------
# SDEdit
# ----------------------------------------------------------------------------------------------------------


@torch.no_grad()
def scores(classifier, edits: torch.Tensor, source: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> dict:
    """Success / kept rates, pixel RMSE (units of [0, 1]) and feature cosine of ``edits`` vs ``source``."""
    pred = classifier(edits).argmax(1)
    cos = F.cosine_similarity(classifier.features(edits), classifier.features(source), dim=1)
    return {"success": float((pred == target).float().mean()), "kept": float((pred == y).float().mean()),
            "rmse": float(((edits - source) / 2).pow(2).mean().sqrt()), "cosine": float(cos.mean())}


def other_of_class(x_all: torch.Tensor, y_all: torch.Tensor, target: torch.Tensor, exclude: int, seed: int):
    """For each target class, a held-out digit of that class from beyond the first ``exclude`` of it."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in target.tolist():
        pool = torch.nonzero(y_all == t).flatten()[exclude:]
        out.append(x_all[pool[torch.randint(len(pool), (1,), generator=g)]])
    return torch.cat(out)


# ----------------------------------------------------------------------------------------------------------
# figure
# ----------------------------------------------------------------------------------------------------------


def mosaic(rows: list[torch.Tensor]) -> np.ndarray:
    """Rows of ``(k, 1, 28, 28)`` images in [0, 1] -> one ``(rows * 30, k * 30)`` grey array (2 px gaps)."""
    tiles = []
    for row in rows:
        padded = F.pad(row.clamp(0, 1), (1, 1, 1, 1), value=1.0)[:, 0]  # (k, 30, 30)
        tiles.append(torch.cat(list(padded), dim=1))
    return torch.cat(tiles, dim=0).numpy()


def make_figure(path: Path, sweep: list[dict], inv_rows: list[tuple[str, torch.Tensor]],
                edit_rows: list[tuple[str, torch.Tensor]], title: str) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), gridspec_kw={"width_ratios": [1.1, 1, 1]})
    ax = axes[0]
    for solver, marker in (("heun", "o-"), ("dopri5", "s-")):
        pts = [r for r in sweep if r["solver"] == solver]
        ax.loglog([r["nfe"] for r in pts], [r["rmse"] for r in pts], marker, label=f"ODE {solver}")
        for r in pts:
            ax.annotate(r["setting"], (r["nfe"], r["rmse"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xticks(sorted({r["nfe"] for r in sweep}))
    ax.tick_params(axis="x", labelsize=7, labelrotation=45)
    ax.set_xlabel("NFE (invert + regenerate)")
    ax.set_ylabel("round-trip RMSE (pixels in [0, 1])")
    ax.set_title("reconstruction error of data -> noise -> data")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    for ax, rows, name in ((axes[1], inv_rows, "inversion"), (axes[2], edit_rows, "SDEdit to the target class")):
        ax.imshow(mosaic([r for _, r in rows]), cmap="gray", vmin=0, vmax=1)
        ax.set_yticks([15 + 30 * i for i in range(len(rows))], [label for label, _ in rows], fontsize=8)
        ax.set_xticks([])
        ax.set_title(name)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    write_file_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110), suffix=".png")
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------
# command
# ----------------------------------------------------------------------------------------------------------


def run(argv: Sequence[str]) -> None:
    args = build_parser().parse_args(argv)
    n_inv = check_int("--num-inversions", args.num_inversions, minimum=10, maximum=1000)
    n_edit = check_int("--num-edits", args.num_edits, minimum=10, maximum=1000)
    scale = check_float("--guidance-scale", args.guidance_scale, minimum=0.0)
    edit_scales = [check_float("--edit-guidance", v, minimum=0.0) for v in args.edit_guidance]
    seed = check_seed("--seed", args.seed)
    threads = check_int("--threads", args.threads, minimum=1)
    device = str(check_device("--device", args.device))
    figure = _check_out("--figure", args.figure, ".png")
    json_path = _check_out("--json", args.json, ".json")
    if figure is not None:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            raise InputError("--figure needs matplotlib (pip install matplotlib; mlxtend brings it)")

    torch.set_num_threads(threads)
    command = "python " + " ".join([PROG, *map(shlex.quote, argv)])
    classifier = load_classifier()
    pipe = SiTPipeline.from_pretrained(str(DEFAULT_MODEL)).to(device)
    pipe.set_progress_bar_config(disable=True)
    x_all, y_all = digits_tensors("heldout")

    # ---- inversion round trips
    x, y = balanced(x_all, y_all, n_inv)
    sweep = []
    for steps in HEUN_STEPS:
        r = round_trip(pipe, SiTSampler.from_preset("ode-heun"), steps, x, y, scale)
        sweep.append({"solver": "heun", "setting": f"{steps} steps", **r})
        print(f"heun {steps}: nfe {r['nfe']} rmse {r['rmse']:.2e}", file=sys.stderr, flush=True)
    for rtol in DOPRI5_RTOLS:
        r = round_trip(pipe, SiTSampler.from_preset("ode-dopri5", rtol=rtol), 50, x, y, scale)
        sweep.append({"solver": "dopri5", "setting": f"rtol {rtol:g}", **r})
        print(f"dopri5 {rtol}: nfe {r['nfe']} rmse {r['rmse']:.2e}", file=sys.stderr, flush=True)
    recon_acc = {}
    for r in sweep:
        with torch.no_grad():
            recon_acc[id(r)] = float((classifier(r["reconstruction"]).argmax(1) == y).float().mean())

    # ---- SDEdit
    xe, ye = balanced(x_all, y_all, n_edit)
    rng = np.random.default_rng(seed)
    target = (ye + torch.from_numpy(rng.integers(1, 10, size=len(ye)))) % 10  # never the source class
    source01 = (xe + 1) / 2
    edit_rows: list[dict[str, Any]] = []
    with torch.no_grad():
        ref_other = other_of_class(x_all, y_all, target, -(-n_edit // 10), seed)
        edit_rows.append({"name": "the source itself", "scale": None, "strength": None, "nfe": 0,
                          **scores(classifier, xe, xe, ye, target)})
        edit_rows.append({"name": "another held-out digit of the target class", "scale": None, "strength": None,
                          "nfe": 0, **scores(classifier, ref_other, xe, ye, target)})
    edits: dict[tuple[float, float], torch.Tensor] = {}
    pipe.set_sampler("ode-heun")
    for s_cfg in edit_scales:
        for strength in (*STRENGTHS, 1.0):
            gen = torch.Generator().manual_seed(seed)
            out = pipe(target.tolist(), image=source01, strength=strength, num_inference_steps=EDIT_STEPS,
                       guidance_scale=s_cfg, generator=gen, output_type="pt")
            e = out.images * 2 - 1  # (N, 1, 28, 28) in [-1, 1]
            edits[(s_cfg, strength)] = e
            name = "plain sampling of the target class" if strength == 1.0 else f"SDEdit strength {strength}"
            edit_rows.append({"name": name, "scale": s_cfg, "strength": strength, "nfe": out.nfe,
                              **scores(classifier, e, xe, ye, target)})
            print(f"edit cfg {s_cfg} s {strength}: {edit_rows[-1]}", file=sys.stderr, flush=True)

    # ---- tables
    print(f"\n`{command}` (torch {torch.__version__}, {device}, seed {seed})\n")
    print(f"Inversion round trip: {n_inv} held-out digits, guidance {scale}, conditioned on the true label\n")
    print("| sampler | NFE (invert + regenerate) | RMSE (pixels) | max pixel error | relative error "
          "| noise std | classifier on reconstructions | s / image |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    with torch.no_grad():
        src_acc = float((classifier(x).argmax(1) == y).float().mean())
    for r in sweep:
        name = f"ODE Heun, {r['setting']}" if r["solver"] == "heun" else f"ODE dopri5, atol 1e-6, {r['setting']}"
        print(f"| {name} | {r['nfe']} ({r['nfe_invert']} + {r['nfe'] - r['nfe_invert']}) | {r['rmse']:.2e} | "
              f"{r['max_error']:.2e} | {r['relative']:.2e} | {r['noise_std']:.3f} | {recon_acc[id(r)]:.3f} "
              f"(sources {src_acc:.3f}) | {r['seconds_per_image']:.2f} |")
    print(f"\nSDEdit to a random other class: {n_edit} held-out digits, ODE Heun {EDIT_STEPS} steps\n")
    print("| edit | guidance | NFE | success (target class) | kept (source class) | RMSE to source (pixels) "
          "| feature cosine to source |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in edit_rows:
        g = "" if r["scale"] is None else f"{r['scale']:g}"
        print(f"| {r['name']} | {g} | {r['nfe']} | {r['success']:.3f} | {r['kept']:.3f} | {r['rmse']:.3f} "
              f"| {r['cosine']:.3f} |")

    if figure is not None:
        k = min(10, n_inv)
        heun50 = next(r for r in sweep if r["setting"] == "50 steps")
        dop = next(r for r in sweep if r["setting"] == "rtol 0.001")
        inv_rows = [
            ("source", (x[:k] + 1) / 2),
            ("inverted noise", (heun50["noise"][:k].clamp(-3, 3) + 3) / 6),
            ("Heun 50 round trip", (heun50["reconstruction"][:k] + 1) / 2),
            ("|error| x 10 (Heun 50)", (heun50["reconstruction"][:k] - x[:k]).abs() / 2 * 10),
            ("dopri5 1e-3 round trip", (dop["reconstruction"][:k] + 1) / 2),
            ("|error| x 10 (dopri5)", (dop["reconstruction"][:k] - x[:k]).abs() / 2 * 10),
        ]
        k2 = min(10, n_edit)
        s0 = edit_scales[0]
        edit_fig = [("source", source01[:k2])] + [
            (f"strength {s} -> target", (edits[(s0, s)][:k2] + 1) / 2) for s in STRENGTHS]
        title = (f"{command}\ninversion: guidance {scale:g}, errors over {n_inv} held-out digits  |  edits: guidance "
                 f"{s0:g}, ODE Heun {EDIT_STEPS} steps, targets {target[:k2].tolist()}")
        make_figure(figure, sweep, inv_rows, edit_fig, title)
        print(f"\nfigure: {figure}")
    if json_path is not None:
        keep = ("solver", "setting", "nfe", "nfe_invert", "rmse", "max_error", "relative", "noise_std",
                "seconds_per_image")
        payload = {"command": command, "inversion": [{k: r[k] for k in keep} for r in sweep], "edits": edit_rows}
        write_file_atomically(json_path, lambda tmp: tmp.write_text(json.dumps(payload, indent=1)))


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status 0; 2 for a bad flag (one line on stderr, ``--debug`` for the traceback)."""
    return run_cli(PROG, run, argv)


if __name__ == "__main__":
    sys.exit(main())
