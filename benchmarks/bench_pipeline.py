"""Wall time per image of SiTPipeline (ODE vs SDE at equal steps) and its overhead over bare model calls.

The reference is the cheapest possible sampler: ``steps`` calls of the transformer in an Euler loop
(``x = x + dt * model(x, t, y)``), no labels, progress bar, guidance bookkeeping or solver objects. The
pipeline rows run the same number of transformer evaluations (NFE) on the same shapes, so
``overhead = pipeline / bare - 1`` is what the pipeline adds (target: < 5% at SiT-S/2 on CPU).

Run (CPU, SiT-S/2 on 32 x 32 x 4 latents = 256 px images, random weights, no VAE)::

    python benchmarks/bench_pipeline.py --model SiT-S/2 --steps 10 --batch-size 1 --repeats 5

On CPU the clock is this process's CPU time (``time.process_time``; with ``--threads 1`` it is the compute
itself, immune to other processes on a shared machine), on CUDA wall time. Times are the minimum over
``--repeats`` runs with the median beside it; rows are interleaved and one untimed warm-up precedes them.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from sit_diffusers.modeling_sit import SIT_CONFIGS, SiTTransformer2DModel
from sit_diffusers.pipeline_sit import SiTPipeline
from sit_diffusers.scheduling_sit import SiTSampler


class ModelClock:
    """Forward hooks that add up the seconds spent inside the transformer (synchronised on CUDA)."""

    def __init__(self, model: torch.nn.Module, device: torch.device, clock: Callable[[], float]) -> None:
        self.seconds = 0.0
        self.device = device
        self.clock = clock
        self._start = 0.0
        model.register_forward_pre_hook(self._pre)
        model.register_forward_hook(self._post)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def _pre(self, *_: object) -> None:
        self._sync()
        self._start = self.clock()

    def _post(self, *_: object) -> None:
        self._sync()
        self.seconds += self.clock() - self._start


def run_rows(
    rows: dict[str, Callable[[], object]], repeats: int, device: torch.device, clock: ModelClock
) -> dict[str, list[tuple[float, float]]]:
    """``(total, inside-model)`` seconds per row and repeat; rows interleaved so load drifts hit all alike."""
    for fn in rows.values():  # warm-up
        fn()
    out: dict[str, list[tuple[float, float]]] = {name: [] for name in rows}
    for _ in range(repeats):
        for name, fn in rows.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            clock.seconds = 0.0
            start = clock.clock()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            out[name].append((clock.clock() - start, clock.seconds))
    return out


def bare_euler(
    model: SiTTransformer2DModel, x: torch.Tensor, y: torch.Tensor, steps: int, cfg: float
) -> torch.Tensor:
    """Minimal sampler: ``steps`` Euler steps of the network output, CFG by a doubled batch when ``cfg != 1``."""
    dt = 1.0 / steps
    null = torch.full_like(y, model.config.num_classes)
    for i in range(steps):
        t = torch.full((x.shape[0],), i * dt, device=x.device)
        if cfg == 1.0:
            v = model(x, t, y).sample
        else:
            cond, uncond = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null])).sample.chunk(2)
            v = uncond + cfg * (cond - uncond)
        x = x + dt * v
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="SiT-S/2", choices=sorted(SIT_CONFIGS))
    parser.add_argument("--sample-size", type=int, default=32, help="latent side (32 = 256 px images)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--cfg", type=float, default=4.0, help="scale of the guided rows")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--clock",
        choices=("process", "wall"),
        default=None,
        help="process CPU time (default on CPU: immune to other processes on a shared machine; use with "
        "--threads 1) or wall time (default on CUDA)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    torch.manual_seed(0)
    model = SiTTransformer2DModel.from_name(args.model, sample_size=args.sample_size).to(device).eval()
    pipe = SiTPipeline(model, SiTSampler.from_preset("ode-euler"), id2label={})
    pipe.set_progress_bar_config(disable=True)
    n, steps = args.batch_size, args.steps
    labels = list(range(n))
    y = torch.tensor(labels, device=device)
    x0 = torch.randn(n, model.config.in_channels, args.sample_size, args.sample_size, device=device)

    clock_name = args.clock or ("wall" if device.type == "cuda" else "process")
    clock = ModelClock(model, device, time.process_time if clock_name == "process" else time.perf_counter)

    def pipeline_run(preset: str, cfg: float) -> Callable[[], object]:
        sampler = SiTSampler.from_preset(preset)

        def run() -> object:
            pipe.scheduler = sampler
            gen = torch.Generator(device).manual_seed(0)
            return pipe(labels, cfg, steps, generator=gen, latents=x0, output_type="latent")

        return run

    rows: dict[str, Callable[[], object]] = {}
    nfes: dict[str, int] = {}
    bare_of: dict[str, str] = {}
    for cfg in (1.0, args.cfg):
        bare = f"bare Euler loop, cfg {cfg:g}"
        rows[bare] = lambda cfg=cfg: bare_euler(model, x0, y, steps, cfg)
        nfes[bare] = steps
        for preset in ("ode-euler", "sde-euler"):
            name = f"SiTPipeline {preset}, cfg {cfg:g}"
            rows[name] = pipeline_run(preset, cfg)
            nfes[name] = SiTSampler.from_preset(preset).num_model_evaluations(steps)
            bare_of[name] = bare
    with torch.no_grad():
        results = run_rows(rows, args.repeats, device, clock)

    print(
        f"{args.model}, latents {n}x{model.config.in_channels}x{args.sample_size}x{args.sample_size}, "
        f"{steps} steps, device {device}, torch threads {torch.get_num_threads()}, {clock_name} clock, "
        f"repeats {args.repeats}, torch {torch.__version__}"
    )
    print(
        "| run | NFE | s/image (min) | s/image (median) | vs bare loop (min/min) | outside the transformer (median) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, runs in results.items():
        walls = [w for w, _ in runs]
        best, med = min(walls) / n, statistics.median(walls) / n
        ratio = (
            ""
            if name not in bare_of
            else f"{(min(walls) / min(w for w, _ in results[bare_of[name]]) - 1) * 100:+.1f}%"
        )
        outside = statistics.median((w - m) / w for w, m in runs) * 100
        print(f"| {name} | {nfes[name]} | {best:.4f} | {med:.4f} | {ratio} | {outside:.2f}% |")
    print(
        f"Equal NFE in each group: ode-euler and sde-euler ({steps - 1} Euler-Maruyama steps + the 'mean' last "
        f"step at steps={steps}) both call the transformer {steps} times. 'outside' = (total - time inside the "
        "transformer forward) / total, median over repeats: the bare loop's is the floor (Euler arithmetic)."
    )


if __name__ == "__main__":
    main()
