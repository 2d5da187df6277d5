"""Gradio Space for SiT (Scalable Interpolant Transformers, Ma et al. 2024, arXiv 2401.08740).

Run it with ``python spaces/app.py``. Configuration is by environment variable only:

=====================  ===============================================================================
``SIT_MODEL``          a pipeline folder or a Hub id (``org/SiT-XL-2-256``); default: the embedded digit
                       model ``sit_diffusers.DEFAULT_MODEL`` (runs offline).
``SIT_MAX_STEPS``      cap on sampler steps per request (default 250).
``SIT_MAX_IMAGES``     cap on images per request (default 8).
``SIT_CONCURRENCY``    how many generations run at once (default 1).
``SIT_QUEUE_SIZE``     how many requests may wait; more are refused with "queue is full" (default 16).
``SIT_DEVICE``         ``cuda`` / ``cpu``; default: cuda when available (or under ZeroGPU).
``SIT_DTYPE``          ``float32`` (default) / ``float16`` / ``bfloat16`` weights.
``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT``: where to listen (gradio's own variables).
=====================  ===============================================================================

Nothing is fetched at start-up when ``SIT_MODEL`` is a folder: gradio analytics and Hub telemetry are
switched off before gradio is imported. Under ZeroGPU (the ``spaces`` package importable) the generate
function is wrapped in ``@spaces.GPU``.
"""

from __future__ import annotations

import os

# Before gradio / huggingface_hub are imported: no analytics, version checks or telemetry.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import random  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import gradio as gr  # noqa: E402
import torch  # noqa: E402

try:  # ZeroGPU on Hugging Face Spaces
    import spaces  # type: ignore[import-not-found]  # noqa: E402
except ImportError:  # plain CPU / GPU machine
    spaces = None

#################################################################################
#                                   Limits                                      #
#################################################################################

MAX_STEPS = int(os.environ.get("SIT_MAX_STEPS", "250"))
MAX_IMAGES = int(os.environ.get("SIT_MAX_IMAGES", "8"))
CONCURRENCY = int(os.environ.get("SIT_CONCURRENCY", "1"))
QUEUE_SIZE = int(os.environ.get("SIT_QUEUE_SIZE", "16"))
MAX_GUIDANCE = 20.0
MAX_SEED = 2**31 - 1

MODES = ("ODE", "SDE")
SOLVERS: dict[str, tuple[str, ...]] = {"ODE": ("euler", "heun", "dopri5"), "SDE": ("euler", "heun")}
DIFFUSION_FORMS = ("sigma", "constant", "SBDM", "linear", "decreasing", "increasing-decreasing")
ADAPTIVE_SOLVERS = ("dopri5",)

#: Classic DiT / SiT sample classes, used as examples for ImageNet models.
IMAGENET_EXAMPLES = ("207", "360", "387", "974", "88", "979", "417", "279")

#################################################################################
#                              Request validation                               #
#################################################################################


@dataclass(frozen=True)
class GenerationRequest:
    """One validated request: everything the sampler needs, already checked against the caps."""

    class_ids: tuple[int, ...]  # one per image, (num_images,)
    mode: str  # "ode" | "sde"
    solver: str
    num_inference_steps: int
    guidance_scale: float
    guidance_interval: tuple[float, float]
    diffusion_form: str
    diffusion_norm: float
    seed: int


def user_error(message: str) -> gr.Error:
    """An error for the page / API caller: shown as is, no stack trace in the page or the server log."""
    return gr.Error(message, print_exception=False)


def _as_int(name: str, value: Any) -> int:
    try:
        as_float = float(value)
    except (TypeError, ValueError):
        raise user_error(f"{name} must be a whole number, got {value!r}.") from None
    if as_float != int(as_float):
        raise user_error(f"{name} must be a whole number, got {value!r}.")
    return int(as_float)


def _as_float(name: str, value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise user_error(f"{name} must be a number, got {value!r}.") from None
    if out != out or out in (float("inf"), float("-inf")):
        raise user_error(f"{name} must be a finite number, got {value!r}.")
    return out


def resolve_classes(classes: Any, num_classes: int, id2label: dict[int, str] | None) -> list[int]:
    """Picker values (ids as strings, ids, or class names) -> class ids; ``gr.Error`` naming the bad one."""
    from sit_diffusers.labels import LabelResolver, UnknownClassLabelError

    if classes is None or classes == "" or classes == []:
        raise user_error("Pick at least one class.")
    if isinstance(classes, (str, int)):
        classes = [classes]
    try:
        return LabelResolver(num_classes, id2label)(list(classes))
    except UnknownClassLabelError as err:
        text = str(err)
        raise user_error(text[:1].upper() + text[1:]) from None


def validate_request(
    classes: Any,
    num_images: Any,
    mode: Any,
    solver: Any,
    steps: Any,
    guidance_scale: Any,
    interval_start: Any,
    interval_end: Any,
    diffusion_form: Any,
    diffusion_norm: Any,
    seed: Any,
    *,
    num_classes: int,
    id2label: dict[int, str] | None,
    max_steps: int = MAX_STEPS,
    max_images: int = MAX_IMAGES,
) -> GenerationRequest:
    """Check every control against the caps and return a :class:`GenerationRequest`.

    Raises ``gr.Error`` with a message meant for the page (never a stack trace). Images cycle through the
    chosen classes: ``class_ids[i] = chosen[i % len(chosen)]``.
    """
    chosen = resolve_classes(classes, num_classes, id2label)
    n = _as_int("Number of images", num_images)
    if not 1 <= n <= max_images:
        raise user_error(f"Number of images must be between 1 and {max_images}, got {n}.")
    mode_name = str(mode).upper()
    if mode_name not in MODES:
        raise user_error(f"Sampler mode must be one of {', '.join(MODES)}, got {mode!r}.")
    solver_name = str(solver).lower()
    if solver_name not in SOLVERS[mode_name]:
        raise user_error(
            f"Solver {solver!r} is not available for {mode_name}; choose one of {', '.join(SOLVERS[mode_name])}."
        )
    n_steps = _as_int("Steps", steps)
    if not 1 <= n_steps <= max_steps:
        raise user_error(f"Steps must be between 1 and {max_steps}, got {n_steps}.")
    scale = _as_float("Guidance scale", guidance_scale)
    if not 1.0 <= scale <= MAX_GUIDANCE:
        raise user_error(f"Guidance scale must be between 1 and {MAX_GUIDANCE:g}, got {scale:g}.")
    lo = _as_float("Guidance interval start", interval_start)
    hi = _as_float("Guidance interval end", interval_end)
    if not 0.0 <= lo <= hi <= 1.0:
        raise user_error(f"Guidance interval must satisfy 0 <= start <= end <= 1, got [{lo:g}, {hi:g}].")
    form = str(diffusion_form)
    if form not in DIFFUSION_FORMS:
        raise user_error(
            f"Diffusion form must be one of {', '.join(DIFFUSION_FORMS)}, got {diffusion_form!r}."
        )
    norm = _as_float("Diffusion norm", diffusion_norm)
    if not 0.0 <= norm <= 10.0:
        raise user_error(f"Diffusion norm must be between 0 and 10, got {norm:g}.")
    seed_value = _as_int("Seed", seed)
    if not 0 <= seed_value <= MAX_SEED:
        raise user_error(f"Seed must be between 0 and {MAX_SEED}, got {seed_value}.")
    return GenerationRequest(
        class_ids=tuple(chosen[i % len(chosen)] for i in range(n)),
        mode=mode_name.lower(),
        solver=solver_name,
        num_inference_steps=n_steps,
        guidance_scale=scale,
        guidance_interval=(lo, hi),
        diffusion_form=form,
        diffusion_norm=norm,
        seed=seed_value,
    )


#################################################################################
#                                 The model                                     #
#################################################################################


def embedded_model() -> str | None:
    """The model shipped inside the package, ``sit_diffusers.DEFAULT_MODEL`` (``None`` if it has none)."""
    import sit_diffusers

    default = getattr(sit_diffusers, "DEFAULT_MODEL", None)
    return str(default) if default is not None else None


def default_model_ref() -> str | None:
    """``SIT_MODEL`` if set, else the embedded model."""
    return os.environ.get("SIT_MODEL") or embedded_model()


def pick_device() -> str:
    """``SIT_DEVICE`` if set, else cuda when present or under ZeroGPU (it attaches a GPU per call)."""
    if os.environ.get("SIT_DEVICE"):
        return os.environ["SIT_DEVICE"]
    return "cuda" if spaces is not None or torch.cuda.is_available() else "cpu"


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def load_pipeline(ref: str, device: str, dtype: str = "float32"):
    """Load ``SiTPipeline`` from a folder or Hub id, in ``dtype``, on ``device``."""
    from sit_diffusers.pipeline_sit import SiTPipeline

    if dtype not in DTYPES:
        raise SystemExit(f"SIT_DTYPE must be one of {', '.join(DTYPES)}, got {dtype!r}")
    kwargs = {} if dtype == "float32" else {"torch_dtype": DTYPES[dtype]}  # float32 is the saved dtype
    pipe = SiTPipeline.from_pretrained(ref, **kwargs)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def class_choices(num_classes: int, id2label: dict[int, str] | None) -> list[tuple[str, str]]:
    """Dropdown choices ``(display, value)``: display ``"207: golden retriever"``, value the id as text.

    Values are ids so they stay unique (ImageNet has two ``"crane"``); the search box filters on the
    display text, so typing a name or an id both find the class.
    """
    out = []
    for i in range(num_classes):
        name = (id2label or {}).get(i)
        display = f"{i}" if name is None or name == str(i) else f"{i}: {name}"
        out.append((display, str(i)))
    return out


class SiTDemo:
    """The loaded pipeline plus the generate function the UI and the API call."""

    def __init__(self, pipe, model_name: str, device: str) -> None:
        self.pipe = pipe
        self.model_name = model_name
        self.device = device
        self.num_classes = int(pipe.transformer.config.num_classes)
        self.id2label = {int(k): str(v) for k, v in (getattr(pipe, "id2label", None) or {}).items()} or None
        self._base_scheduler = pipe.scheduler
        self._lock = threading.Lock()  # the scheduler is swapped per request: one run at a time

    def make_sampler(self, request: GenerationRequest):
        """A sampler for this request: the pipeline's own config with mode / solver / diffusion overridden."""
        base = self._base_scheduler
        overrides: dict[str, Any] = {"mode": request.mode, "solver": request.solver}
        if request.mode == "sde":
            overrides.update(diffusion_form=request.diffusion_form, diffusion_norm=request.diffusion_norm)
        return type(base).from_config(base.config, **overrides)

    def generate(
        self,
        classes,
        num_images,
        mode,
        solver,
        steps,
        guidance_scale,
        interval_start,
        interval_end,
        diffusion_form,
        diffusion_norm,
        seed,
        randomize_seed,
    ):
        """Run the sampler; returns ``(images, info text, seed used)``."""
        if randomize_seed:
            seed = random.randint(0, MAX_SEED)
        request = validate_request(
            classes,
            num_images,
            mode,
            solver,
            steps,
            guidance_scale,
            interval_start,
            interval_end,
            diffusion_form,
            diffusion_norm,
            seed,
            num_classes=self.num_classes,
            id2label=self.id2label,
        )
        # One generator per image: a seed gives the same image whatever the batch size.
        generators = [
            torch.Generator(device="cpu").manual_seed(request.seed + i) for i in range(len(request.class_ids))
        ]
        with self._lock:
            self.pipe.set_sampler(self.make_sampler(request))
            try:
                start = time.perf_counter()
                out = self.pipe(
                    class_labels=list(request.class_ids),
                    guidance_scale=request.guidance_scale,
                    guidance_interval=request.guidance_interval,
                    num_inference_steps=request.num_inference_steps,
                    generator=generators,
                    output_type="pil",
                )
                wall = time.perf_counter() - start
            except (ValueError, TypeError) as err:
                raise user_error(f"Generation failed: {err}") from None
            finally:
                self.pipe.set_sampler(self._base_scheduler)
        nfe = getattr(out, "nfe", None)
        names = [self.label_name(i) for i in request.class_ids]
        captions = [
            (img, f"{name} · seed {request.seed + i}")
            for i, (img, name) in enumerate(zip(out.images, names, strict=True))
        ]
        steps_text = (
            "adaptive" if request.solver in ADAPTIVE_SOLVERS else f"{request.num_inference_steps} steps"
        )
        info = (
            f"NFE: {nfe if nfe is not None else '?'} · wall time: {wall:.2f} s · "
            f"{request.mode.upper()} {request.solver}, {steps_text} · guidance {request.guidance_scale:g} on "
            f"t in [{request.guidance_interval[0]:g}, {request.guidance_interval[1]:g}] · seed {request.seed} · "
            f"{self.device}"
        )
        return captions, info, request.seed

    def label_name(self, class_id: int) -> str:
        name = (self.id2label or {}).get(class_id)
        return (
            f"{class_id}" if name is None or name == str(class_id) else f"{name.split(',')[0]} ({class_id})"
        )

    def classes(self) -> dict[str, str]:
        """The model's classes, ``{"0": name, ...}`` (id as text, for JSON)."""
        return {str(i): (self.id2label or {}).get(i, str(i)) for i in range(self.num_classes)}

    def defaults(self) -> dict[str, Any]:
        """Initial control values: the model's own sampler (mode, solver, diffusion) and default step count."""
        cfg = self._base_scheduler.config
        mode = str(cfg.get("mode", "ode")).upper()
        mode = mode if mode in MODES else "ODE"
        solver = str(cfg.get("solver", "")).lower()
        solver = solver if solver in SOLVERS[mode] else SOLVERS[mode][min(1, len(SOLVERS[mode]) - 1)]
        form = cfg.get("diffusion_form", "sigma")
        steps = getattr(getattr(self.pipe, "config", None), "default_num_inference_steps", None) or 25
        guidance = getattr(getattr(self.pipe, "config", None), "default_guidance_scale", None) or 4.0
        return {
            "mode": mode,
            "solver": solver,
            "steps": max(1, min(int(steps), MAX_STEPS)),
            "guidance_scale": max(1.0, min(float(guidance), MAX_GUIDANCE)),
            "diffusion_form": form if form in DIFFUSION_FORMS else "sigma",
            "diffusion_norm": float(cfg.get("diffusion_norm", 1.0)),
        }

    def example_rows(self) -> list[list[Any]]:
        ids = (
            IMAGENET_EXAMPLES if self.num_classes == 1000 else tuple(str(i) for i in range(self.num_classes))
        )
        rows = []
        for k, (mode, solver, steps, scale) in enumerate(
            [
                ("ODE", "heun", 25, 4.0),
                ("SDE", "euler", 50, 4.0),
                ("ODE", "dopri5", 25, 1.5),
                ("ODE", "euler", 50, 1.0),
            ]
        ):
            picks = [ids[(2 * k) % len(ids)], ids[(2 * k + 1) % len(ids)]]
            rows.append([picks, 4, mode, solver, min(steps, MAX_STEPS), scale, 0.0, 1.0, "sigma", 1.0, k])
        return rows


#################################################################################
#                                     UI                                        #
#################################################################################

EXPLANATION = """
**How it works.** SiT learns a velocity field that carries Gaussian noise (t = 0) to an image (t = 1)
along an interpolant `x_t = alpha_t * x_image + sigma_t * noise`. Sampling integrates that field.

- **Classes**: type to search; pick one or more. Images cycle through the chosen classes.
- **Sampler mode**: *ODE* follows the probability-flow ODE (deterministic for a seed); *SDE* adds noise
  along the way (Euler-Maruyama or Heun), often a little better at few-step FID, never identical twice
  for different seeds.
- **Solver**: *euler* (1 model call per step), *heun* (2 per step), *dopri5* (adaptive, the step count is
  chosen by the error control; the NFE shows what it used).
- **Steps**: more steps, more model calls (NFE), better images; capped at {max_steps}.
- **Guidance scale**: classifier-free guidance; 1 = none. Higher follows the class more, with less variety.
- **Guidance interval**: guidance is applied only for t in [start, end] (t = 0 noise, t = 1 image).
- **Diffusion form / norm** (SDE only): the diffusion coefficient `w_t` of the SDE and its scale.
- **Seed**: image *i* uses seed + *i*, so a seed gives the same image whatever the number of images.

NFE = number of network evaluations (a guided conditional + unconditional batch counts once); the wall
time is the whole pipeline call (sampling and decoding), measured on the server's {device}, queue excluded.
"""


def build_demo(demo_state: SiTDemo, note: str | None = None) -> gr.Blocks:
    """The page: controls on the left, gallery + NFE/wall time on the right, examples and explanation.

    ``note`` (e.g. why the embedded model is served) is shown under the title.
    """
    choices = class_choices(demo_state.num_classes, demo_state.id2label)
    examples = demo_state.example_rows()
    start = demo_state.defaults()
    with gr.Blocks(title="SiT: Scalable Interpolant Transformers") as demo:
        gr.Markdown(
            "# SiT: Scalable Interpolant Transformers\n"
            f"Class-conditional generation with a flow/diffusion interpolant transformer "
            f"([Ma et al. 2024](https://arxiv.org/abs/2401.08740)). Model: `{demo_state.model_name}` "
            f"({demo_state.num_classes} classes)." + (f"\n\n**Note:** {note}" if note else "")
        )
        with gr.Row():
            with gr.Column(scale=1):
                classes = gr.Dropdown(
                    choices=choices,
                    value=[examples[0][0][0]],
                    multiselect=True,
                    filterable=True,
                    allow_custom_value=True,  # names typed via the API are resolved (with suggestions) by us
                    label="Classes",
                    info="Type to search by name or id.",
                    elem_id="classes",
                )
                num_images = gr.Slider(
                    1, MAX_IMAGES, value=min(4, MAX_IMAGES), step=1, label="Number of images"
                )
                with gr.Row():
                    mode = gr.Radio(list(MODES), value=start["mode"], label="Sampler mode")
                    solver = gr.Dropdown(list(SOLVERS[start["mode"]]), value=start["solver"], label="Solver")
                steps = gr.Slider(1, MAX_STEPS, value=start["steps"], step=1, label="Steps")
                guidance_scale = gr.Slider(
                    1.0, MAX_GUIDANCE, value=start["guidance_scale"], step=0.1, label="Guidance scale"
                )
                with gr.Row():
                    interval_start = gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="Guidance from t =")
                    interval_end = gr.Slider(0.0, 1.0, value=1.0, step=0.01, label="Guidance until t =")
                with gr.Row(visible=start["mode"] == "SDE") as sde_row:
                    diffusion_form = gr.Dropdown(
                        list(DIFFUSION_FORMS), value=start["diffusion_form"], label="Diffusion form"
                    )
                    diffusion_norm = gr.Number(
                        value=start["diffusion_norm"], minimum=0.0, maximum=10.0, label="Diffusion norm"
                    )
                with gr.Row():
                    seed = gr.Number(value=0, minimum=0, maximum=MAX_SEED, precision=0, label="Seed")
                    randomize = gr.Checkbox(value=False, label="Randomize seed")
                run = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=1):
                gallery = gr.Gallery(
                    label="Samples", columns=4, height="auto", elem_id="gallery", format="png"
                )
                info = gr.Markdown(elem_id="run-info")

        inputs = [
            classes,
            num_images,
            mode,
            solver,
            steps,
            guidance_scale,
            interval_start,
            interval_end,
            diffusion_form,
            diffusion_norm,
            seed,
        ]
        gr.Examples(examples=examples, inputs=inputs, label="Examples (click, then Generate)")
        with gr.Accordion("What the controls do", open=False):
            gr.Markdown(EXPLANATION.format(max_steps=MAX_STEPS, device=demo_state.device))

        def on_mode(selected_mode: str):
            names = SOLVERS.get(str(selected_mode).upper(), SOLVERS["ODE"])
            return gr.Dropdown(choices=list(names), value=names[min(1, len(names) - 1)]), gr.Row(
                visible=str(selected_mode).upper() == "SDE"
            )

        mode.change(on_mode, inputs=mode, outputs=[solver, sde_row], api_visibility="private", queue=False)

        generate_fn = demo_state.generate
        if spaces is not None:  # ZeroGPU: a GPU is attached for the duration of each call
            generate_fn = spaces.GPU(duration=120)(generate_fn)

        run.click(
            generate_fn,
            inputs=[*inputs, randomize],
            outputs=[gallery, info, seed],
            show_progress_on=[gallery],
            api_name="generate",
            api_description="Generate images: classes (ids or names), number of images, mode, solver, steps, "
            "guidance scale, guidance interval start/end, diffusion form, diffusion norm, seed, randomize seed. "
            "Returns (gallery, info text with NFE and wall time, seed used).",
            concurrency_limit=CONCURRENCY,
            concurrency_id="generate",
        )
        gr.api(demo_state.classes, api_name="classes", queue=False)
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=CONCURRENCY)
    return demo


def load_model(ref: str | None, device: str, dtype: str = "float32") -> tuple[Any, str, str | None]:
    """Load ``ref``; if that fails (Hub unreachable, bad id) fall back to the embedded model.

    Returns ``(pipeline, reference served, note for the page or None)``.
    """
    fallback = embedded_model()
    if ref is None:
        raise SystemExit(
            "No model: set SIT_MODEL to a pipeline folder or Hub id (sit_diffusers has no DEFAULT_MODEL)."
        )
    try:
        return load_pipeline(ref, device, dtype), ref, None
    except Exception as err:  # noqa: BLE001 - any failure to load the requested model falls back
        if fallback is None or fallback == ref:
            raise
        note = f"Could not load `{ref}` ({type(err).__name__}); serving the embedded model instead."
        print(f"{note} Cause: {err}", file=sys.stderr)
        return load_pipeline(fallback, device, dtype), fallback, note


def main() -> None:
    device = pick_device()
    pipe, ref, note = load_model(default_model_ref(), device, os.environ.get("SIT_DTYPE", "float32"))
    name = os.path.basename(str(ref).rstrip("/")) or str(ref)
    demo = build_demo(SiTDemo(pipe, model_name=name, device=device), note=note)
    demo.launch(show_error=False, footer_links=["api"])


if __name__ == "__main__":
    main()
