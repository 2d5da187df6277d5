"""Training throughput of SiT: on-the-fly VAE encoding vs precomputed latents; peak memory; MFU on GPU; and
the digits model through the whole trainer (per-step vs per-sample draws, the old side loop, REPA).

    python benchmarks/bench_train.py                                    # CPU, SiT-S/2, 256 px
    python benchmarks/bench_train.py --device cuda --model SiT-XL/2 --mixed_precision bf16
    python benchmarks/bench_train.py --suite digits --threads 2 --repeats 3   # the digits model, 7 rows

``--suite digits`` times ``train_sit.train`` itself on the embedded digit model's config
(``benchmarks/train_digits.py``: SiT-S/4 narrowed to 192 x 6, 28 x 28 x 1 pixels, batch 256) between the EMA
updates of steps ``warmup`` and ``warmup + steps`` (setup excluded), best of ``--repeats``, rows: ``after``
(per-step draws, the trainer as it is), ``before`` (the same trainer with the earlier per-sample generators,
:class:`PerSampleDraws`, kept here only as the reference row), ``side loop`` (the deleted
``train_digits.train_vectorised`` loop of commit 9fc8a1f, :func:`side_loop`, the reference the trainer must
reach), ``repa encoder`` (REPA with a random ``transformers`` DINOv2-architecture encoder run on every batch),
``repa features`` (REPA from precomputed features of the same shape: random values, the speed does not
depend on them) and ``irepa features`` (the same with iREPA's conv projector and z-scored targets); ``after math``
is ``after`` with ``--attention_backend _native_math``. ``--compile`` adds ``after compile`` (regional) and, with
``after math``, ``after compile math``.

One step of the default suite is exactly the one of ``training/train_sit.py`` (per-step seeded draws, posterior
sample of the VAE moments, ``SiTObjective`` loss, AdamW, gradient-norm computation, EMA update). Two
modes: ``vae`` encodes the images every step (the official recipe); ``latents`` starts from stored
posterior moments (``training/precompute_latents.py``). The VAE is the ``sd-vae-ft-ema`` architecture with
random weights unless ``--vae`` names a real one (the speed does not depend on the weights; nothing is
downloaded). Model FLOPs are counted with ``torch.utils.flop_counter`` on the SiT forward+backward only
(no VAE, no optimizer); MFU = model FLOPs/s over the card's dense peak (``--peak_tflops`` or a table).
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import training.train_sit as ts  # noqa: E402
from training.config import config_from_dict  # noqa: E402
from training.train_sit import build_model, build_objective, micro_batch_loss, update_ema  # noqa: E402

# Dense (no sparsity) peak TFLOP/s of common cards (vendor datasheets), by precision; "no" = fp32 with TF32.
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "no": 378.0},
    "H100": {"bf16": 989.0, "fp16": 989.0, "no": 495.0},  # SXM ("NVIDIA H100 80GB HBM3")
    "H200": {"bf16": 989.0, "fp16": 989.0, "no": 495.0},
    "A100": {"bf16": 312.0, "fp16": 312.0, "no": 156.0},
}


def sd_vae(name: str | None, device: torch.device) -> Any:
    """The VAE: ``name`` loaded, or the ``stabilityai/sd-vae-ft-ema`` architecture with random weights."""
    from diffusers import AutoencoderKL

    if name:
        vae = AutoencoderKL.from_pretrained(name)
    else:
        torch.manual_seed(0)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=256,
            down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
            block_out_channels=[128, 256, 512, 512], norm_num_groups=32,
        )
    return vae.requires_grad_(False).eval().to(device)


def peak_tflops(device: torch.device, precision: str, override: float | None) -> tuple[float | None, str]:
    """The card's dense peak for ``precision`` and its name."""
    if device.type != "cuda":
        return override, "cpu"
    name = torch.cuda.get_device_name(device)
    if override is not None:
        return override, name
    for key, table in PEAK_TFLOPS.items():  # most specific first
        if all(word in name for word in key.split()):
            return table.get(precision), name
    return None, name


def model_flops_per_image(model: torch.nn.Module, shape: tuple[int, ...], device: torch.device, autocast: Any) -> float:
    """Forward + backward FLOPs of the SiT network for one image (flop counter on a batch of 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(2, *shape, device=device)
    t = torch.rand(2, device=device)
    y = torch.zeros(2, dtype=torch.long, device=device)
    with FlopCounterMode(display=False) as counter, autocast():
        model(x, t, y, force_drop_ids=torch.zeros(2, dtype=torch.long, device=device)).sample.float().square().mean().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2


def run_mode(mode: str, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Time ``args.steps`` training steps (after ``args.warmup``) in ``mode`` (``vae`` or ``latents``)."""
    cfg = config_from_dict(dict(model=args.model, resolution=args.resolution, num_classes=1000, seed=0,
                                global_batch_size=args.batch_size))
    vae = sd_vae(args.vae, device) if mode == "vae" else None
    latent = args.resolution // 8
    model = build_model(cfg, 4, latent).to(device).train()
    if args.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    ema = build_model(cfg, 4, latent).to(device).requires_grad_(False)
    params, ema_params = list(model.parameters()), list(ema.parameters())
    opt, _ = ts.make_optimizer(config_from_dict(dict(learning_rate=1e-4)), params, device)
    objective = build_objective(cfg)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.mixed_precision)

    def autocast() -> Any:
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    forward = torch.compile(model) if args.compile else model

    def autocast_model(*model_args: Any, **model_kwargs: Any) -> Any:
        """The network under autocast with float32 outputs, as ``accelerator.prepare`` wraps it."""
        with autocast():
            out = forward(*model_args, **model_kwargs)
        return type(out)(sample=out.sample.float())
    flops = model_flops_per_image(model, (4, latent, latent), device, autocast)

    g = torch.Generator().manual_seed(0)
    n = args.batch_size
    pixels = (torch.rand(n, 3, args.resolution, args.resolution, generator=g) * 2 - 1).to(device)
    stored = torch.randn(n, 8, latent, latent, generator=g).to(device)  # (n, 2C, h, w) moments
    labels = torch.randint(0, 1000, (n,), generator=g).to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step(i: int) -> None:
        positions = torch.arange(i * n, (i + 1) * n)  # (n,) stream positions: fresh draws every step
        data = {"pixels": pixels} if vae is not None else {"moments": stored}
        batch = {**data, "label": labels, "position": positions}
        loss = micro_batch_loss(cfg, objective, autocast_model, batch, vae, (4, latent, latent), device)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, math.inf)
        opt.step()
        opt.zero_grad(set_to_none=True)
        update_ema(ema_params, params, 0.9999)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for i in range(args.warmup):
        step(i)
    sync()
    tic = time.perf_counter()
    for i in range(args.steps):
        step(args.warmup + i)
    sync()
    elapsed = time.perf_counter() - tic
    images_per_s = n * args.steps / elapsed
    if device.type == "cuda":
        peak_gib = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB, process-wide peak
    return {"images_per_s": images_per_s, "step_ms": 1000 * elapsed / args.steps, "peak_gib": peak_gib,
            "model_tflops_per_image": flops / 1e12, "model_tflops_per_s": flops * images_per_s / 1e12}


# ---------------------------------------------------------------------------
# The digits model through the trainer
# ---------------------------------------------------------------------------


class PerSampleDraws(ts.StepDraws):
    """The earlier scheme, for the ``before`` row only: one CPU generator per sample seeded by
    ``sample_seed(seed, position, 2)``, drawing eps, noise, time and coin in turn, moved to the device."""

    def __call__(self, positions: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor,
                                                          torch.Tensor]:
        from training.data import sample_seed

        eps, noise, times, drops = [], [], [], []
        for q in positions.tolist():
            g = torch.Generator().manual_seed(sample_seed(self.seed, q, 2))
            if self.posterior:
                eps.append(torch.randn(self.shape, generator=g))  # (C, h, w)
            noise.append(torch.randn(self.shape, generator=g))  # (C, h, w)
            times.append(self.objective.sample_time(1, generator=g))  # (1,)
            drops.append(torch.rand(1, generator=g) < self.drop_prob)  # (1,)
        dev = self.device
        return (torch.stack(eps).to(dev) if self.posterior else None, torch.stack(noise).to(dev),
                torch.cat(times).float().to(dev), torch.cat(drops).long().to(dev))


def side_loop(cfg: Any, device: torch.device, stamp: Any) -> None:
    """The deleted ``train_digits.train_vectorised`` loop (commit 9fc8a1f) without its final save: the data as
    one tensor on the device, every draw of a step one call on one generator, foreach AdamW, bf16 autocast on
    CUDA; ``stamp()`` after each EMA update."""
    import copy

    from diffusers.optimization import get_scheduler

    from sit_diffusers.digits import digits_tensors

    x_all, y_all = (v.to(device) for v in digits_tensors("train"))  # (4000, 1, 28, 28), (4000,)
    model = build_model(cfg, in_channels=1, sample_size=28).to(device).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    params, ema_params = list(model.parameters()), list(ema.parameters())
    objective = build_objective(cfg)
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                            eps=cfg.adam_epsilon, weight_decay=cfg.weight_decay)
    sched = get_scheduler(cfg.lr_scheduler, opt, num_warmup_steps=cfg.lr_warmup_steps,
                          num_training_steps=cfg.max_train_steps)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    b = cfg.global_batch_size
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    for _ in range(cfg.max_train_steps):
        idx = torch.randint(0, len(x_all), (b,), generator=gen, device=device)
        x1, y = x_all[idx], y_all[idx]  # (B, 1, 28, 28), (B,)
        noise = torch.randn(x1.shape, generator=gen, device=device)  # (B, 1, 28, 28)
        t = objective.sample_time(b, generator=gen)  # (B,)
        drop = (torch.rand((b,), generator=gen, device=device) < cfg.class_dropout_prob).long()  # (B,)
        with amp:
            loss = objective.loss(lambda xt, tt, y=y, drop=drop: model(xt, tt, y, force_drop_ids=drop).sample.float(),
                                  x1, t=t, noise=noise).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        update_ema(ema_params, params, cfg.ema_decay)
        stamp()


def _digit_encoder(folder: Path) -> Path:
    """A random DINOv2-architecture encoder for 28 x 28 x 1 digits (patch 4: the SiT's 7 x 7 grid), the size of
    the shipped ``digit-encoder`` when there is one, else 192 wide x 6 deep."""
    from transformers import Dinov2Config, Dinov2Model

    shipped = Path(__file__).resolve().parents[1] / "src" / "sit_diffusers" / "data" / "digit-encoder" / "config.json"
    if shipped.is_file():
        config = Dinov2Config.from_json_file(str(shipped))
    else:
        config = Dinov2Config(image_size=28, patch_size=4, hidden_size=192, num_hidden_layers=6, num_attention_heads=3,
                              intermediate_size=768, num_channels=1)
    torch.manual_seed(0)
    Dinov2Model(config).save_pretrained(folder)
    return folder


def _random_features(folder: Path, encoder: Path) -> Path:
    """A features folder (``repa.json`` + one shard) for the digits' training split: random float16 values of
    the encoder's shape, the labels of the split in row order."""
    import numpy as np
    from transformers import AutoConfig

    from sit_diffusers.digits import digits_tensors
    from training.repa import RepaFeaturesMeta, repa_shard_file

    config = AutoConfig.from_pretrained(str(encoder))
    side = config.image_size // config.patch_size
    labels = digits_tensors("train")[1].numpy()
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((len(labels), 2, side * side, config.hidden_size), dtype=np.float32)
    np.save(folder / repa_shard_file("shard-00000"), feats.astype(np.float16))
    np.save(folder / "shard-00000-labels.npy", labels)
    RepaFeaturesMeta(str(encoder), config.image_size, (side, side), config.hidden_size, "float16", len(labels),
                     ("shard-00000",), 28, 1).write(folder)
    return folder


DIGITS_ROWS = ("after", "before", "side loop", "repa encoder", "repa features", "irepa features")
"""The digits suite's rows; each trainer row (all but ``side loop``) also exists with :data:`MATH_SUFFIX`."""
MATH_SUFFIX = " math"


def digits_rows(text: str, parser: argparse.ArgumentParser) -> list[str]:
    """``--rows`` as a list, every name checked (an unknown one would silently time the plain trainer)."""
    known = [*DIGITS_ROWS, *(r + MATH_SUFFIX for r in DIGITS_ROWS if r != "side loop")]
    rows = [r.strip() for r in text.split(",") if r.strip()]
    for row in rows:
        if row not in known:
            parser.error(f"--rows: unknown row {row!r}; choose from {', '.join(known)}")
    if not rows or len(set(rows)) != len(rows):
        parser.error(f"--rows must list distinct rows, got {text!r}")
    return rows


def digits_row(row: str, args: argparse.Namespace, work: Path) -> float:
    """Images/s of one row of the digits suite (one run; the caller takes the best of the repeats)."""
    import time as _time

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import train_digits

    from sit_diffusers.digits import digits_dataset

    flags = argparse.Namespace(variant="sit", batch_size=args.batch_size, steps=args.warmup + args.steps, lr=8e-4,
                               ema=0.999, warmup=0, seed=0, workers=args.workers, out=work / f"{row}-{_time.time_ns()}",
                               mixed_precision=args.mixed_precision, compile="none", checkpointing_steps=None,
                               resume=False, attention_backend=None, **train_digits.MODEL_OVERRIDES,
                               **{k: None for k in train_digits.REPA_FLAGS})
    base = row.removesuffix(MATH_SUFFIX)
    if base == "after compile":
        flags.compile = args.compile
    if row.endswith(MATH_SUFFIX):  # --attention_backend _native_math (SDPA's fused backward is slow on CPU here)
        flags.attention_backend = "_native_math"
    if "repa" in base:
        flags.repa_encoder, flags.repa_depth = str(work / "encoder"), 2
        if base.startswith("irepa"):  # iREPA: 3 x 3 conv projector, z-scored targets
            flags.repa_projector, flags.repa_spatial_norm = "conv", "zscore"
        else:
            flags.repa_projector_dim = args.repa_projector_dim
        if base.endswith("repa features"):
            flags.repa_features_dir = str(work / "features")
    values = {**train_digits.digits_config(flags), "save_pipeline": False, "checkpointing_steps": 10**9}
    cfg = config_from_dict(values)
    stamps: list[float] = []

    def stamp() -> None:
        stamps.append(_time.perf_counter())

    real_ema, real_draws = ts.update_ema, ts.StepDraws

    def stamped(*a: Any, **k: Any) -> None:
        real_ema(*a, **k)
        stamp()

    try:
        ts.update_ema = stamped
        if base == "before":
            ts.StepDraws = PerSampleDraws
        if row == "side loop":
            side_loop(cfg, torch.device(args.device), stamp)
        else:
            ts.train(cfg, dataset=digits_dataset("train"))
    finally:
        ts.update_ema, ts.StepDraws = real_ema, real_draws
    return args.steps * args.batch_size / (stamps[-1] - stamps[args.warmup - 1])


def digits_suite(args: argparse.Namespace) -> None:
    """Print the digits table: best images/s of ``--repeats`` runs per row, rows interleaved per repeat."""
    import os
    import tempfile

    rows = list(args.rows)
    if args.compile != "none":
        rows += ["after compile"] + (["after compile math"] if "after math" in rows else [])
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if any("repa" in r for r in rows):
            _digit_encoder(work / "encoder")
            if any(r.removesuffix(MATH_SUFFIX).endswith("repa features") for r in rows):
                _random_features(work / "features", work / "encoder")
        best: dict[str, float] = {}
        for _ in range(args.repeats):  # interleaved, so a burst of load from other jobs hits every row alike
            for row in rows:
                best[row] = max(best.get(row, 0.0), digits_row(row, args, work))
    print(f"# bench_train --suite digits: SiT-S/4 192 x 6 on 28 x 28 x 1, batch {args.batch_size}, "
          f"{args.mixed_precision}, device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{args.steps} timed steps after {args.warmup}, best of {args.repeats}; REPA: block 2, projector "
          f"{args.repa_projector_dim}; load average now {os.getloadavg()[0]:.1f}")
    print("| row | images/s | ms/step | vs side loop |")
    print("|---|---|---|---|")
    side = best.get("side loop")
    for row in rows:
        ratio = f"{best[row] / side:.2f}x" if side else "n/a"
        print(f"| {row} | {best[row]:.1f} | {1000 * args.batch_size / best[row]:.0f} | {ratio} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--model", default="SiT-S/2")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=None, help="per step; default 4 on CPU, 32 on CUDA")
    parser.add_argument("--steps", type=int, default=None, help="timed steps; default 3 on CPU, 20 on CUDA")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps; default 1 on CPU, 5 on CUDA")
    parser.add_argument("--mixed_precision", default="no", choices=["no", "bf16", "fp16"])
    parser.add_argument("--modes", default="vae,latents", help="comma list of: vae, latents")
    parser.add_argument("--vae", default=None, help="a real AutoencoderKL id/folder (default: random SD-VAE)")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument("--peak_tflops", type=float, default=None, help="the card's dense peak, for MFU")
    parser.add_argument("--suite", default="sit", choices=["sit", "digits"],
                        help="sit: the vae/latents modes of --model; digits: the digits model through the trainer")
    parser.add_argument("--rows", default="after,after math,before,side loop,repa encoder,repa features,"
                                          "irepa features",
                        help="digits suite: comma list of after, before, side loop, repa encoder, repa features, "
                             "irepa features (conv projector, z-scored targets); a trainer row + ' math' runs it with "
                             "--attention_backend _native_math (e.g. 'repa features math')")
    parser.add_argument("--repeats", type=int, default=3, help="digits suite: runs per row (the best is shown)")
    parser.add_argument("--workers", type=int, default=0, help="digits suite: DataLoader workers")
    parser.add_argument("--repa_projector_dim", type=int, default=256,
                        help="digits suite: REPA projector width (the paper's 2048 is for SiT-XL's 1152; default: 256)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    if args.suite == "digits":
        args.rows = digits_rows(args.rows, parser)
        args.batch_size = args.batch_size or 256
        args.steps = args.steps or 8
        args.warmup = max(1, args.warmup if args.warmup is not None else 2)
        args.mixed_precision = "bf16" if cuda and args.mixed_precision == "no" else args.mixed_precision
        args.compile = "regional" if args.compile else "none"
        if args.device == "cpu":
            import os

            os.environ["CUDA_VISIBLE_DEVICES"] = ""  # accelerate picks CUDA whenever it sees one
        digits_suite(args)
        return
    args.batch_size = args.batch_size or (32 if cuda else 4)
    args.steps = args.steps or (20 if cuda else 3)
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    device = torch.device(args.device)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    peak, card = peak_tflops(device, args.mixed_precision, args.peak_tflops)

    print(f"# bench_train: {args.model}, {args.resolution} px, batch {args.batch_size}, {args.mixed_precision}, "
          f"device {card}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"steps {args.steps} (+{args.warmup} warmup)")
    print("| mode | images/s | ms/step | peak memory (GiB) | model TFLOP/image | model TFLOP/s | MFU |")
    print("|---|---|---|---|---|---|---|")
    for mode in args.modes.split(","):
        r = run_mode(mode.strip(), args, device)
        mfu = f"{100 * r['model_tflops_per_s'] / peak:.1f}%" if peak else "n/a"
        print(f"| {mode} | {r['images_per_s']:.2f} | {r['step_ms']:.0f} | {r['peak_gib']:.2f} | "
              f"{r['model_tflops_per_image']:.4f} | {r['model_tflops_per_s']:.2f} | {mfu} |", flush=True)
        if cuda:
            torch.cuda.empty_cache()
    if not cuda:
        print("\nCPU peak memory is the process's max RSS so far (cumulative over the rows above).")


if __name__ == "__main__":
    main()
