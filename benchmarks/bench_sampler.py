"""SiTSampler benchmark: sampler overhead per step beside a network call, and quality per NFE.

1. Overhead: wall time per step of ``SiTSampler.sample`` with a model function that returns a cached
   prediction (so only the sampler's own math is timed), on SiT-XL/2-sized latents ``(N, 4, 32, 32)``,
   beside one forward of a ``SiTTransformer2DModel`` (``--model``, default SiT-S/2 to stay CPU-friendly).
2. Quality per NFE on a 2-D Gaussian mixture (8 modes on a circle) whose exact velocity / score are
   closed-form (``sit_diffusers.interpolants.GaussianMixture``): sliced W2 between 10000 samples and 10000
   fresh data samples (the "data vs data" row is the Monte-Carlo floor), and for ODE solvers the RMS
   distance to the exact flow of the same noise (dopri5 at rtol 1e-9, float64), an upper bound on the W2
   to the data distribution itself. NFE buckets 5/10/25/50: steps = NFE / (calls per step), rounded down.

Default run (about a minute on 2 CPU cores)::

    python benchmarks/bench_sampler.py
    python benchmarks/bench_sampler.py --path gvp --prediction noise --skip-overhead
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from sit_diffusers.interpolants import GaussianMixture, get_interpolant
from sit_diffusers.scheduling_sit import SiTSampler

NFE_BUCKETS = (5, 10, 25, 50)


def ring_mixture(path: str, k: int = 8, radius: float = 2.0, std: float = 0.25) -> GaussianMixture:
    ang = torch.arange(k, dtype=torch.float64) * 2 * math.pi / k
    means = torch.stack([radius * torch.cos(ang), radius * torch.sin(ang)], 1)  # (K, 2)
    return GaussianMixture(torch.full((k,), 1.0 / k, dtype=torch.float64), means,
                           torch.full((k,), std, dtype=torch.float64), get_interpolant(path))


def sliced_w2(a: torch.Tensor, b: torch.Tensor, n_proj: int = 256, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between equal-size point clouds ``(N, D)``."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(a.shape[1], n_proj, generator=g, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    pa, _ = torch.sort(a.double() @ dirs, dim=0)
    pb, _ = torch.sort(b.double() @ dirs, dim=0)
    return ((pa - pb) ** 2).mean().sqrt().item()


def solver_rows(mode_filter: str) -> list[tuple[str, dict, object]]:
    """(label, SiTSampler kwargs, nfe -> steps or None for adaptive)."""
    rows: list[tuple[str, dict, object]] = [
        ("ode euler", {"mode": "ode", "solver": "euler"}, lambda n: n),
        ("ode heun", {"mode": "ode", "solver": "heun"}, lambda n: n // 2),
        ("ode midpoint", {"mode": "ode", "solver": "midpoint"}, lambda n: n // 2),
        ("ode rk4", {"mode": "ode", "solver": "rk4"}, lambda n: n // 4),
        ("sde euler (sigma, mean)", {"mode": "sde", "solver": "euler"}, lambda n: n),
        ("sde heun (sigma, mean)", {"mode": "sde", "solver": "heun"}, lambda n: (n - 1) // 2 + 1),
    ]
    return [r for r in rows if mode_filter in ("all", r[1]["mode"])]


def quality(args: argparse.Namespace) -> None:
    gm = ring_mixture(args.path)
    fn = lambda x, t: gm.predict(args.prediction, x, t)  # noqa: E731
    n = args.samples
    z = torch.randn(n, 2, 1, 1, generator=torch.Generator().manual_seed(0))
    data = gm.sample(n, (2,), generator=torch.Generator().manual_seed(1)).float()
    floor = sliced_w2(gm.sample(n, (2,), generator=torch.Generator().manual_seed(2)), data)
    print(f"\n## Quality per NFE: 2-D ring of 8 Gaussians, path={args.path}, prediction={args.prediction}, "
          f"{n} samples")
    print(f"sliced W2 to data (Monte-Carlo floor, data vs data: {floor:.4f}); ODE rows also: RMS to the exact flow")
    exact = SiTSampler(path_type=args.path, prediction=args.prediction, mode="ode", solver="dopri5",
                       atol=1e-9, rtol=1e-9)
    ref = exact.sample(fn, z.double(), 1).sample.flatten(1)  # exact flow of the same noise
    print(f"floor of the ODE rows (the exact flow of this noise vs data): {sliced_w2(ref, data):.4f}\n")
    head = "| solver | " + " | ".join(f"NFE~{b}" for b in NFE_BUCKETS) + " |"
    print(head)
    print("|" + "---|" * (len(NFE_BUCKETS) + 1))
    for label, kw, steps_for in solver_rows(args.mode):
        sampler = SiTSampler(path_type=args.path, prediction=args.prediction, **kw)
        cells = []
        for b in NFE_BUCKETS:
            steps = steps_for(b)
            if steps < 1 or (kw["mode"] == "sde" and steps < 2):
                cells.append("-")
                continue
            out = sampler.sample(fn, z, steps, generator=torch.Generator().manual_seed(3))
            x = out.sample.flatten(1)
            cell = f"{sliced_w2(x, data):.4f}"
            if kw["mode"] == "ode":
                cell += f" / {((x.double() - ref) ** 2).sum(1).mean().sqrt().item():.4f}"
            cells.append(f"{cell} ({out.nfe})")
        print(f"| {label} | " + " | ".join(cells) + " |")
    if args.mode in ("all", "ode"):
        cells = []
        for tol in (1e-1, 1e-2, 1e-3, 1e-4):
            s = SiTSampler(path_type=args.path, prediction=args.prediction, mode="ode", solver="dopri5", atol=tol, rtol=tol)
            out = s.sample(fn, z, 1)
            x = out.sample.flatten(1)
            rms = ((x.double() - ref) ** 2).sum(1).mean().sqrt().item()
            cells.append(f"tol {tol:g}: {sliced_w2(x, data):.4f} / {rms:.4f} ({out.nfe})")
        print("| ode dopri5 (adaptive) | " + " | ".join(cells) + " |")
    print("\ncells: sliced W2 [/ RMS to exact flow] (NFE)")


def overhead(args: argparse.Namespace) -> None:
    shape = (args.batch, 4, 32, 32)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(shape, generator=g)
    cached = torch.randn(shape, generator=g)
    fn = lambda x, t: cached  # noqa: E731
    print(f"\n## Sampler overhead per step, latents {tuple(shape)}, {torch.get_num_threads()} threads")
    model_ms = float("nan")
    try:
        from sit_diffusers.modeling_sit import SiTTransformer2DModel

        model = SiTTransformer2DModel.from_name(args.model, sample_size=32).eval()
        y = torch.zeros(args.batch, dtype=torch.long)
        with torch.inference_mode():
            model(noise, torch.rand(args.batch), y)
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                model(noise, torch.rand(args.batch), y)
                times.append(time.perf_counter() - t0)
        model_ms = 1e3 * min(times)
        print(f"{args.model} forward: {model_ms:.1f} ms per call")
    except Exception as err:  # the model module may be absent in a partial checkout
        print(f"(model timing skipped: {err})")
    print("\n| sampler | steps | ms per step | ms per network call | overhead vs one model call |")
    print("|---|---|---|---|---|")
    configs = [
        ("ode euler (velocity)", {"mode": "ode", "solver": "euler"}, 50),
        ("ode heun (velocity)", {"mode": "ode", "solver": "heun"}, 25),
        ("sde euler (velocity, sigma, mean)", {"mode": "sde", "solver": "euler"}, 50),
        ("sde euler (noise model, VP, SBDM)", {"mode": "sde", "solver": "euler", "path_type": "vp",
                                              "prediction": "noise", "diffusion_form": "SBDM"}, 50),
        ("ode dopri5 (velocity)", {"mode": "ode", "solver": "dopri5"}, 10),
    ]
    for label, kw, steps in configs:
        sampler = SiTSampler(**kw)
        with torch.inference_mode():
            sampler.sample(fn, noise, 4, generator=torch.Generator().manual_seed(0))
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                out = sampler.sample(fn, noise, steps, generator=torch.Generator().manual_seed(0))
                best = min(best, time.perf_counter() - t0)
        per_step = 1e3 * best / steps
        per_call = 1e3 * best / max(out.nfe, 1)
        ratio = f"{per_call / model_ms:.2%}" if math.isfinite(model_ms) else "-"
        print(f"| {label} | {steps} | {per_step:.2f} | {per_call:.2f} | {ratio} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", default="linear", choices=["linear", "gvp", "vp"])
    parser.add_argument("--prediction", default="velocity", choices=["velocity", "score", "noise"])
    parser.add_argument("--mode", default="all", choices=["all", "ode", "sde"])
    parser.add_argument("--samples", type=int, default=10000)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--model", default="SiT-S/2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--skip-quality", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.skip_overhead:
        overhead(args)
    if not args.skip_quality:
        quality(args)


if __name__ == "__main__":
    main()
