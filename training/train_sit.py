"""Train SiT (Ma et al. 2024, arXiv 2401.08740) with Accelerate.

    accelerate launch training/train_sit.py --config training/configs/sit_xl2_imagenet256.yaml
    python training/train_sit.py --train_data_dir ./my_images --model SiT-S/2 --global_batch_size 32

The defaults are the paper's recipe (see ``training/config.py``). Read top to bottom:
setup -> data -> models -> resume -> loop (micro-batches, optimiser, EMA, logs, checkpoints, samples) ->
pipeline. Determinism: every per-sample random draw comes from a generator seeded by
``(seed, stream position)`` (``training/data.py``), so a run is a function of ``(config, step)`` only:
resuming reproduces the uninterrupted run bit for bit, and the process count does not change the batches.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as a script: make `training.*` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.config import ConfigError, TrainConfig, parse_config  # noqa: E402
from training.data import (  # noqa: E402
    STREAM_SAMPLE,
    DataError,
    ImageDataset,
    LatentDataset,
    StepBatchSampler,
    StreamingBatches,
    check_image_dataset,
    load_image_dataset,
    moments_to_latents,
    sample_generator,
)

__all__ = ["train", "main", "micro_batch_loss", "save_checkpoint", "resolve_resume", "sample_draws", "update_ema"]

logger = logging.getLogger("train_sit")

CHECKPOINT_PREFIX = "checkpoint-"
TRAIN_STATE_FILE = "train_state.json"


# ===========================================================================
# Setup helpers
# ===========================================================================


def make_accelerator(cfg: TrainConfig) -> Any:
    """An ``Accelerator`` for the run; checks the batch split before anything is written."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    report_to = None if cfg.report_to == "none" else cfg.report_to
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision,
        log_with=report_to,
        project_config=ProjectConfiguration(project_dir=cfg.output_dir, logging_dir=str(Path(cfg.output_dir) / "logs")),
    )
    split = accelerator.num_processes * cfg.gradient_accumulation_steps
    if cfg.global_batch_size % split:
        raise ConfigError(
            f"global_batch_size {cfg.global_batch_size} is not divisible by the number of processes "
            f"({accelerator.num_processes}) x gradient_accumulation_steps ({cfg.gradient_accumulation_steps})"
        )
    return accelerator


def load_vae(name: str, subfolder: str | None, device: torch.device) -> Any:
    """A frozen ``AutoencoderKL`` in float32, eval mode (Hub id or local folder)."""
    from diffusers import AutoencoderKL

    try:
        vae = AutoencoderKL.from_pretrained(name, subfolder=subfolder)
    except Exception as err:
        raise ConfigError(f"could not load the VAE {name!r}: {type(err).__name__}: {err}") from err
    vae.requires_grad_(False)
    return vae.eval().to(device)


def set_vae_scaling(vae: Any, scaling_factor: float) -> None:
    """Make ``vae.config.scaling_factor`` the training one, so the saved pipeline decodes consistently."""
    if getattr(vae.config, "scaling_factor", None) != scaling_factor:
        logger.warning("VAE scaling_factor %s replaced by the configured %s", vae.config.scaling_factor, scaling_factor)
        vae.register_to_config(scaling_factor=scaling_factor)


def vae_downsample(vae_config: Any) -> int:
    """Spatial downsampling factor of an ``AutoencoderKL`` (8 for the SD VAE)."""
    return 2 ** (len(vae_config.block_out_channels) - 1)


@dataclass
class DataSource:
    """What the loop reads: a map-style dataset (or a stream) plus the shape of what the model sees."""

    dataset: Any
    """``ImageDataset`` / ``LatentDataset`` (map-style) or a ``datasets.IterableDataset`` (streaming)."""
    kind: str
    """``"pixels"`` (images in [-1, 1]) or ``"moments"`` (precomputed VAE posterior moments)."""
    model_channels: int
    model_size: int
    num_examples: int | None
    id2label: dict[int, str] | None
    vae_name: str | None


def _id2label_from_features(dataset: Any, label_column: str) -> dict[int, str] | None:
    features = getattr(dataset, "features", None) or {}
    names = getattr(features.get(label_column), "names", None)
    return dict(enumerate(names)) if names else None


def build_data(cfg: TrainConfig, dataset: Any | None, vae_config: Any | None) -> DataSource:
    """Load and check the training data: precomputed latents, an in-memory dataset, a folder or the Hub."""
    if cfg.latents_dir is not None:
        latents = LatentDataset(cfg.latents_dir, seed=cfg.seed, random_flip=cfg.random_flip)
        meta = latents.meta
        if meta.num_examples == 0:
            raise DataError(f"the precomputed latents in {cfg.latents_dir} are empty")
        if meta.resolution != cfg.resolution:
            raise DataError(f"latents were computed at {meta.resolution} px, config asks {cfg.resolution} px")
        if int(latents.labels.min()) < 0 or int(latents.labels.max()) >= cfg.num_classes:
            raise DataError(f"latent labels fall outside [0, num_classes={cfg.num_classes})")
        if meta.vae_scaling_factor != cfg.vae_scaling_factor:
            raise DataError(f"latents were made for vae_scaling_factor {meta.vae_scaling_factor}, config says "
                            f"{cfg.vae_scaling_factor}")
        c, h, _ = meta.latent_shape
        return DataSource(latents, "moments", c, h, meta.num_examples, meta.id2label, meta.vae)

    if dataset is None:
        dataset = load_image_dataset(
            cfg.dataset_name, cfg.train_data_dir, dataset_config_name=cfg.dataset_config_name,
            split=cfg.dataset_split, streaming=cfg.streaming, cache_dir=cfg.cache_dir,
        )
    if cfg.max_train_samples is not None:
        dataset = dataset.take(cfg.max_train_samples) if cfg.streaming else dataset.select(
            range(min(cfg.max_train_samples, len(dataset))))
    check_image_dataset(dataset, cfg.image_column, cfg.label_column, cfg.num_classes)
    id2label = _id2label_from_features(dataset, cfg.label_column)
    if vae_config is None:
        channels, size = cfg.image_channels, cfg.resolution
    else:
        factor = vae_downsample(vae_config)
        if cfg.resolution % factor:
            raise ConfigError(f"resolution {cfg.resolution} is not divisible by the VAE factor {factor}")
        channels, size = vae_config.latent_channels, cfg.resolution // factor
    if cfg.streaming:
        return DataSource(dataset, "pixels", channels, size, None, id2label, cfg.vae)
    images = ImageDataset(dataset, cfg.image_column, cfg.label_column, cfg.resolution, cfg.image_channels,
                          seed=cfg.seed, random_flip=cfg.random_flip)
    return DataSource(images, "pixels", channels, size, len(dataset), id2label, cfg.vae)


def make_batches(cfg: TrainConfig, data: DataSource, accelerator: Any, start_step: int) -> Any:
    """Iterator over this process's micro-batches from ``start_step`` to ``max_train_steps``."""
    common = dict(global_batch_size=cfg.global_batch_size, num_processes=accelerator.num_processes,
                  process_index=accelerator.process_index, accumulation_steps=cfg.gradient_accumulation_steps,
                  seed=cfg.seed, start_step=start_step, max_steps=cfg.max_train_steps)
    if data.num_examples is None:  # streaming
        example_fn = ImageDataset(None, cfg.image_column, cfg.label_column, cfg.resolution, cfg.image_channels,
                                  seed=cfg.seed, random_flip=cfg.random_flip).example
        return iter(StreamingBatches(data.dataset, example_fn, buffer_size=cfg.shuffle_buffer_size, **common))
    sampler = StepBatchSampler(data.num_examples, **common)
    loader = torch.utils.data.DataLoader(
        data.dataset, batch_sampler=sampler, num_workers=cfg.dataloader_num_workers,
        pin_memory=accelerator.device.type == "cuda", persistent_workers=False,
    )
    return iter(loader)


def build_model(cfg: TrainConfig, in_channels: int, sample_size: int) -> Any:
    """A freshly initialised ``SiTTransformer2DModel`` (same weights on every process: seeded)."""
    from sit_diffusers.modeling_sit import SiTTransformer2DModel

    kwargs = dict(sample_size=sample_size, in_channels=in_channels, num_classes=cfg.num_classes,
                  class_dropout_prob=cfg.class_dropout_prob, learn_sigma=cfg.learn_sigma)
    kwargs.update(cfg.model_overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        try:
            return SiTTransformer2DModel.from_name(cfg.model, **kwargs)
        except KeyError as err:
            raise ConfigError(str(err)) from err


def build_objective(cfg: TrainConfig) -> Any:
    """``SiTObjective`` from the objective fields of the config."""
    from sit_diffusers.losses import SiTObjective

    return SiTObjective(
        path_type=cfg.path_type, prediction=cfg.prediction, loss_weight=cfg.loss_weight,
        train_eps=cfg.train_eps, sample_eps=cfg.sample_eps, time=cfg.time_sampling,
        num_train_timesteps=cfg.num_train_timesteps,
    )


@torch.no_grad()
def update_ema(ema_params: list[torch.Tensor], params: list[torch.Tensor], decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * param`` for every parameter (official ``update_ema``)."""
    torch._foreach_mul_(ema_params, decay)
    torch._foreach_add_(ema_params, params, alpha=1.0 - decay)


# ===========================================================================
# Per-sample randomness
# ===========================================================================


def sample_draws(
    cfg: TrainConfig, objective: Any, positions: torch.Tensor, shape: tuple[int, int, int], posterior: bool,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draws of the samples at ``positions`` (N,), each from its own ``(seed, position)`` generator.

    Returns ``(posterior_eps (N, C, h, w) or None, noise (N, C, h, w), t (N,), drop (N,) int)``, on CPU.
    The order of draws inside one generator is fixed: posterior eps, noise, time, label-dropout coin.
    """
    eps, noise, times, drops = [], [], [], []
    for q in positions.tolist():
        g = sample_generator(cfg.seed, q, STREAM_SAMPLE)
        if posterior:
            eps.append(torch.randn(shape, generator=g))  # (C, h, w)
        noise.append(torch.randn(shape, generator=g))  # (C, h, w)
        times.append(objective.sample_time(1, generator=g))  # (1,)
        drops.append(torch.rand(1, generator=g) < cfg.class_dropout_prob)  # (1,)
    return (
        torch.stack(eps) if posterior else None,  # (N, C, h, w)
        torch.stack(noise),  # (N, C, h, w)
        torch.cat(times).float(),  # (N,)
        torch.cat(drops).long(),  # (N,)
    )


def micro_batch_loss(
    cfg: TrainConfig, objective: Any, model: Any, batch: dict[str, Any], vae: Any | None,
    shape: tuple[int, int, int], device: torch.device,
) -> torch.Tensor:
    """Mean SiT loss of one micro-batch (a scalar), the same whatever the process split.

    ``batch`` holds ``"pixels"`` (n, 3|1, H, W) in [-1, 1] or ``"moments"`` (n, 2C, h, w), plus ``"label"``
    and ``"position"`` (n,). Images are encoded by ``vae`` when given; moments become latents by a seeded
    posterior draw, ``x1 = (mean + std * eps) * scaling``; then ``x_t = alpha_t x1 + sigma_t x0`` at the
    seeded ``(t, x0)`` and the model is called with the seeded label-dropout mask.
    """
    posterior = "moments" in batch or vae is not None
    eps, noise, t, drop = sample_draws(cfg, objective, batch["position"], shape, posterior=posterior)
    with torch.no_grad():
        if "moments" in batch:
            moments = batch["moments"].to(device)  # (n, 2C, h, w)
        elif vae is not None:
            moments = vae.encode(batch["pixels"].to(device)).latent_dist.parameters  # (n, 2C, h, w)
        if posterior:
            x1 = moments_to_latents(moments, eps.to(device), cfg.vae_scaling_factor)  # (n, C, h, w)
        else:
            x1 = batch["pixels"].to(device)  # (n, C, H, W) in [-1, 1]
    labels, drop = batch["label"].to(device), drop.to(device)  # (n,), (n,)

    def model_fn(x_t: torch.Tensor, t_: torch.Tensor) -> torch.Tensor:
        return model(x_t, t_, labels, force_drop_ids=drop).sample  # (n, C, h, w)

    return objective.loss(model_fn, x1, t=t.to(device), noise=noise.to(device)).mean()


# ===========================================================================
# Checkpoints
# ===========================================================================


def checkpoint_dir(cfg: TrainConfig) -> Path:
    return Path(cfg.output_dir) / "checkpoints"


def list_checkpoints(cfg: TrainConfig) -> list[Path]:
    """Complete checkpoints (a ``train_state.json`` inside), oldest first."""
    root = checkpoint_dir(cfg)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(CHECKPOINT_PREFIX) and (p / TRAIN_STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def resolve_resume(cfg: TrainConfig) -> Path | None:
    """The checkpoint to resume from, or ``None``; raises before anything is written when it is wrong."""
    if cfg.resume_from_checkpoint is None:
        if list_checkpoints(cfg):
            raise ConfigError(
                f"{checkpoint_dir(cfg)} already holds checkpoints; pass --resume_from_checkpoint latest "
                "to continue, or choose a new output_dir (nothing was overwritten)"
            )
        return None
    if cfg.resume_from_checkpoint == "latest":
        found = list_checkpoints(cfg)
        if not found:
            raise ConfigError(f"--resume_from_checkpoint latest: no checkpoint in {checkpoint_dir(cfg)}")
        return found[-1]
    path = Path(cfg.resume_from_checkpoint)
    if not path.is_dir():
        path = checkpoint_dir(cfg) / cfg.resume_from_checkpoint
    if not (path / TRAIN_STATE_FILE).is_file():
        raise ConfigError(f"resume checkpoint {cfg.resume_from_checkpoint} does not exist (or is incomplete)")
    return path


def save_checkpoint(cfg: TrainConfig, accelerator: Any, step: int) -> Path:
    """``accelerator.save_state`` into a temporary folder, renamed into place only once complete.

    A crash mid-write leaves a ``.tmp-`` folder that is never picked as a checkpoint (and is cleared by
    the next save); ``output_dir`` must be on a filesystem shared by all nodes. Then the oldest checkpoints beyond ``checkpoints_total_limit`` are deleted.
    """
    root = checkpoint_dir(cfg)
    final = root / f"{CHECKPOINT_PREFIX}{step:07d}"
    tmp = root / f".tmp-{CHECKPOINT_PREFIX}{step:07d}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(f".tmp-{CHECKPOINT_PREFIX}*"):  # left by a crash mid-write
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = {"step": step, "config": cfg.to_dict()}
        (tmp / TRAIN_STATE_FILE).write_text(json.dumps(state, indent=2))
        if final.exists():  # a previous run reached this step: replace it only now that tmp is complete
            shutil.rmtree(final)
        os.replace(tmp, final)
        if cfg.checkpoints_total_limit is not None:
            for old in list_checkpoints(cfg)[: -cfg.checkpoints_total_limit]:
                shutil.rmtree(old)
        logger.info("saved %s", final)
    accelerator.wait_for_everyone()
    return final


# ===========================================================================
# Samples, pipeline, model card
# ===========================================================================


def make_pipeline(cfg: TrainConfig, transformer: Any, vae: Any | None, id2label: dict[int, str] | None) -> Any:
    """``SiTPipeline`` around ``transformer`` with a sampler matching the training objective."""
    from sit_diffusers.pipeline_sit import SiTPipeline
    from sit_diffusers.scheduling_sit import SiTSampler

    scheduler = SiTSampler.from_preset(cfg.sample_preset, path_type=cfg.path_type, prediction=cfg.prediction,
                                       train_eps=cfg.train_eps, sample_eps=cfg.sample_eps)
    return SiTPipeline(transformer=transformer, scheduler=scheduler, vae=vae, id2label=id2label)


@torch.no_grad()
def log_samples(cfg: TrainConfig, accelerator: Any, ema_model: Any, vae: Any | None, step: int) -> None:
    """A grid from the EMA model (fixed labels and seed) written to the trackers; main process only."""
    pipe = make_pipeline(cfg, ema_model, vae, None)
    pipe.set_progress_bar_config(disable=True)
    labels = [i % cfg.num_classes for i in range(cfg.num_sample_images)]
    generator = torch.Generator(device="cpu").manual_seed(cfg.seed)
    guidance = cfg.sample_guidance_scale if cfg.class_dropout_prob > 0 else 1.0
    images = pipe(class_labels=labels, guidance_scale=guidance,
                  num_inference_steps=cfg.sample_num_inference_steps, generator=generator,
                  output_type="np").images  # (N, H, W, C) in [0, 1]
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_images("samples", images, step, dataformats="NHWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({"samples": [wandb.Image(img) for img in images]}, step=step)


MODEL_CARD = """---
library_name: diffusers
tags: [sit, diffusers, class-conditional, image-generation]
---
# {name}

SiT (Scalable Interpolant Transformers, Ma et al. 2024, arXiv 2401.08740) trained with
`training/train_sit.py` of sit-diffusers: {steps} optimiser steps at global batch {batch}
({images} images seen), on {data}. Weights: the EMA (decay {ema}) of the trained model.
Objective: {path} path, {prediction} prediction; {space}.

Reproduce with `accelerate launch training/train_sit.py --config config.yaml` (the file beside this card).

```python
from sit_diffusers.pipeline_sit import SiTPipeline
pipe = SiTPipeline.from_pretrained("<this folder>")
images = pipe(class_labels=[0, 1], guidance_scale={cfg_scale}).images
```
"""


def save_pipeline(cfg: TrainConfig, ema_state: dict[str, torch.Tensor], model_config: dict[str, Any], vae: Any,
                  id2label: dict[int, str] | None, step: int, data_name: str) -> Path:
    """Save ``output_dir/pipeline``: EMA transformer, VAE, scheduler preset, ``id2label``, card, config."""
    import yaml

    from sit_diffusers.modeling_sit import SiTTransformer2DModel

    transformer = SiTTransformer2DModel.from_config(model_config)
    transformer.load_state_dict(ema_state)
    out = Path(cfg.output_dir) / "pipeline"
    tmp = Path(cfg.output_dir) / ".tmp-pipeline"
    shutil.rmtree(tmp, ignore_errors=True)
    make_pipeline(cfg, transformer.eval(), vae, id2label).save_pretrained(str(tmp))
    (tmp / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    space = f"latents of {cfg.vae} scaled by {cfg.vae_scaling_factor}" if vae is not None else "pixel space"
    (tmp / "README.md").write_text(MODEL_CARD.format(
        name=cfg.hub_model_id or f"{cfg.model} ({cfg.resolution}px)", steps=step, batch=cfg.global_batch_size,
        images=step * cfg.global_batch_size, data=data_name, ema=cfg.ema_decay, path=cfg.path_type,
        prediction=cfg.prediction, space=space, cfg_scale=cfg.sample_guidance_scale))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    if cfg.push_to_hub:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(cfg.hub_model_id, exist_ok=True)
        api.upload_folder(repo_id=cfg.hub_model_id, folder_path=str(out), commit_message=f"SiT step {step}")
    return out


# ===========================================================================
# Training
# ===========================================================================


def train(cfg: TrainConfig, dataset: Any | None = None) -> Path:
    """Train SiT as configured; ``dataset`` (a ``datasets.Dataset``) replaces the configured data source.

    Returns ``output_dir``. Raises ``ConfigError`` / ``DataError`` on bad input before writing anything.
    """
    from accelerate.utils import DistributedType

    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", level=logging.WARNING)
    logger.setLevel(logging.INFO)
    torch.backends.cuda.matmul.allow_tf32 = cfg.allow_tf32
    torch.backends.cudnn.allow_tf32 = cfg.allow_tf32

    # ---- setup and checks (nothing is written before they pass)
    accelerator = make_accelerator(cfg)
    device = accelerator.device
    resume = resolve_resume(cfg)
    vae = None
    if cfg.vae is not None and cfg.latents_dir is None:
        vae = load_vae(cfg.vae, cfg.vae_subfolder, device)
        set_vae_scaling(vae, cfg.vae_scaling_factor)
    data = build_data(cfg, dataset, vae.config if vae is not None else None)
    fsdp = accelerator.distributed_type == DistributedType.FSDP

    # ---- models, objective, optimiser
    model = build_model(cfg, data.model_channels, data.model_size)
    model_config = dict(model.config)
    ema_model = copy.deepcopy(model).eval().requires_grad_(False)
    if cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    if cfg.torch_compile:
        model = torch.compile(model)
    model.train()  # the label dropout coin is ours (force_drop_ids); no other train/eval difference
    objective = build_objective(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  eps=cfg.adam_epsilon, weight_decay=cfg.weight_decay)
    from diffusers.optimization import get_scheduler

    lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                                 num_training_steps=cfg.max_train_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    if fsdp:  # the EMA is sharded like the model, so the update below stays shard-local
        ema_model = accelerator.prepare(ema_model)
        accelerator.register_for_checkpointing(lr_scheduler)
    else:
        ema_model.to(device)
        accelerator.register_for_checkpointing(ema_model, lr_scheduler)
    params = list(model.parameters())
    ema_params = list(ema_model.parameters())

    # ---- resume (model, EMA, optimiser, LR schedule, RNG states; the data position is the step)
    start_step = 0
    if resume is not None:
        accelerator.load_state(str(resume))
        start_step = json.loads((resume / TRAIN_STATE_FILE).read_text())["step"]
        logger.info("resumed from %s at step %d", resume, start_step)
    torch.manual_seed(cfg.seed * accelerator.num_processes + accelerator.process_index)  # per-process seed

    if accelerator.is_main_process:
        Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(cfg.output_dir) / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    if cfg.report_to != "none":
        accelerator.init_trackers(cfg.tracker_project_name, config={
            k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in cfg.to_dict().items()})
    n_params = sum(p.numel() for p in accelerator.unwrap_model(model).parameters())
    logger.info("SiT parameters: %s; examples: %s; processes: %d; micro-batch: %d", f"{n_params:,}",
                data.num_examples, accelerator.num_processes,
                cfg.global_batch_size // (accelerator.num_processes * cfg.gradient_accumulation_steps))

    # ---- loop
    decode_vae = vae  # what sample grids and the final pipeline decode with (loaded once, main process)
    if vae is None and accelerator.is_main_process and (cfg.sample_every or cfg.save_pipeline):
        decode_vae = _vae_for_pipeline(cfg, data, device)
    batches = make_batches(cfg, data, accelerator, start_step)
    shape = (data.model_channels, data.model_size, data.model_size)
    accum = cfg.gradient_accumulation_steps
    running_loss = torch.zeros((), device=device)
    log_steps, tic = 0, time.perf_counter()
    from tqdm.auto import tqdm

    progress = tqdm(range(start_step, cfg.max_train_steps), initial=start_step, total=cfg.max_train_steps,
                    disable=not accelerator.is_local_main_process, desc="steps")
    for step in progress:
        for micro in range(accum):  # gradients are all-reduced on the last micro-step only
            batch = next(batches)
            with contextlib.nullcontext() if micro == accum - 1 else accelerator.no_sync(model):
                loss = micro_batch_loss(cfg, objective, model, batch, vae, shape, device)
                accelerator.backward(loss / accum)
            running_loss += loss.detach() / accum
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm is not None else math.inf
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        update_ema(ema_params, params, cfg.ema_decay)
        done = step + 1
        log_steps += 1

        if done % cfg.log_every == 0 or done == cfg.max_train_steps:
            if device.type == "cuda":
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - tic
            avg_loss = accelerator.reduce(running_loss / log_steps, reduction="mean").item()
            logs = {"loss": avg_loss, "grad_norm": float(grad_norm), "lr": lr_scheduler.get_last_lr()[0],
                    "images_per_sec": log_steps * cfg.global_batch_size / elapsed}
            accelerator.log(logs, step=done)
            progress.set_postfix(loss=f"{avg_loss:.4f}", img_s=f"{logs['images_per_sec']:.1f}")
            running_loss.zero_()
            log_steps, tic = 0, time.perf_counter()
        if done % cfg.checkpointing_steps == 0 or done == cfg.max_train_steps:
            save_checkpoint(cfg, accelerator, done)
        if cfg.sample_every and done % cfg.sample_every == 0 and not fsdp:
            if accelerator.is_main_process:
                log_samples(cfg, accelerator, ema_model, decode_vae, done)
            accelerator.wait_for_everyone()

    # ---- final pipeline (EMA weights)
    final_step = max(start_step, cfg.max_train_steps)
    if cfg.save_pipeline:
        ema_state = accelerator.get_state_dict(ema_model) if fsdp else ema_model.state_dict()
        if accelerator.is_main_process:
            source = cfg.latents_dir or cfg.train_data_dir or (cfg.dataset_name if dataset is None else "an in-memory dataset")
            out = save_pipeline(cfg, {k: v.cpu() for k, v in ema_state.items()}, model_config, decode_vae,
                                data.id2label, final_step, str(source))
            logger.info("saved the pipeline to %s", out)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return Path(cfg.output_dir)


def _vae_for_pipeline(cfg: TrainConfig, data: DataSource, device: torch.device) -> Any | None:
    """The VAE the pipeline decodes with: none in pixel space, else the one the latents came from."""
    if data.kind == "moments" and data.vae_name is not None:
        vae = load_vae(data.vae_name, cfg.vae_subfolder, device)
        set_vae_scaling(vae, cfg.vae_scaling_factor)
        return vae
    return None


def main(argv: list[str] | None = None) -> None:
    """CLI entry: parse the config (file + flags) and train; bad input exits with a one-line message."""
    try:
        cfg = parse_config(argv)
        train(cfg)
    except (ConfigError, DataError) as err:
        print(f"train_sit.py: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()

