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

A setting that is not a number / device / dtype stops start-up with one line naming it. Every request
(page, ``gradio_client``, or a direct call of ``SiTDemo.generate``) is validated before any work: a bad
value is a ``RequestError`` (a ``gr.Error``) naming the control, the value and what is allowed.

Nothing is fetched at start-up when ``SIT_MODEL`` is a folder: gradio analytics and Hub telemetry are
switched off before gradio is imported. Under ZeroGPU (the ``spaces`` package importable) the sampling
(``SiTDemo.sample``, after validation) is wrapped in ``@spaces.GPU``.
"""

from __future__ import annotations

import os

# Before gradio / huggingface_hub are imported: no analytics, version checks or telemetry.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import difflib  # noqa: E402
import math  # noqa: E402
import numbers  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import gradio as gr  # noqa: E402
import torch  # noqa: E402

from sit_diffusers.interpolants import DIFFUSION_FORMS as _LIB_DIFFUSION_FORMS  # noqa: E402
from sit_diffusers.validation import InputError, NonFiniteError, check_device  # noqa: E402

try:  # ZeroGPU on Hugging Face Spaces
    import spaces  # type: ignore[import-not-found]  # noqa: E402
except ImportError:  # plain CPU / GPU machine
    spaces = None
if not callable(getattr(spaces, "GPU", None)):  # e.g. this repository's spaces/ folder, run from its root
    spaces = None

#################################################################################
#                                   Limits                                      #
#################################################################################


def env_int(name: str, default: int, minimum: int = 1) -> int:
    """A whole-number setting from the environment; a bad one stops start-up with a one-line message."""
    text = os.environ.get(name, "").strip() or str(default)
    try:
        value = int(text)
    except ValueError:
        raise SystemExit(f"{name} must be a whole number >= {minimum}, got {text!r}") from None
    if value < minimum:
        raise SystemExit(f"{name} must be a whole number >= {minimum}, got {value}")
    return value


MAX_STEPS = env_int("SIT_MAX_STEPS", 250)
MAX_IMAGES = env_int("SIT_MAX_IMAGES", 8)
CONCURRENCY = env_int("SIT_CONCURRENCY", 1)
QUEUE_SIZE = env_int("SIT_QUEUE_SIZE", 16)
MAX_GUIDANCE = 20.0
MAX_DIFFUSION_NORM = 10.0
MAX_SEED = 2**31 - 1
#: Longest class name accepted (the longest ImageNet label is ~120 characters); longer text is refused
#: before any name matching, whose cost grows with the length.
MAX_LABEL_CHARS = 200

MODES = ("ODE", "SDE")
SOLVERS: dict[str, tuple[str, ...]] = {"ODE": ("euler", "heun", "dopri5", "ab3", "abm4"), "SDE": ("euler", "heun")}
#: The sampler's diffusion forms (``interpolants.DIFFUSION_FORMS``), the official default "sigma" first.
DIFFUSION_FORMS = ("sigma", *(form for form in _LIB_DIFFUSION_FORMS if form != "sigma"))
ADAPTIVE_SOLVERS = ("dopri5",)

#: Classic DiT / SiT sample classes, used as examples for ImageNet models.
IMAGENET_EXAMPLES = ("207", "360", "387", "974", "88", "979", "417", "279")

#################################################################################
#                              Request validation                               #
#################################################################################
# The page's widgets bound their values, but the API (gradio_client, /call) and direct calls of
# SiTDemo.generate pass anything: every control is checked here, before any work starts, and each
# failure is one RequestError naming the control, the value given and what is allowed.


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


class RequestError(gr.Error):
    """A value the Space cannot use. Shown as is on the page / to the API caller; no stack trace in the
    page or the server log. Anything else raised by a request is a bug and keeps its traceback."""

    def __init__(self, message: str) -> None:
        super().__init__(message, title="Invalid input", print_exception=False)


def _show(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters (a request may carry megabytes of text)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f" ({len(value)} characters)" if isinstance(value, str) else ""
    return f"{text[:limit]}...{size}"


def _whole(label: str, value: Any, lo: int, hi: int) -> int:
    """``value`` as an int in ``[lo, hi]``: ints and integral floats (JSON ``4.0``); never text, bools,
    NaN/inf or a fraction (``2.7`` steps is refused, not truncated)."""
    problem = f"{label} must be a whole number between {lo} and {hi}, got {_show(value)}."
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise RequestError(problem)
    if not isinstance(value, numbers.Integral):
        as_float = float(value)
        if not math.isfinite(as_float) or as_float != math.floor(as_float):
            raise RequestError(problem)
    out = int(value)
    if not lo <= out <= hi:
        raise RequestError(problem)
    return out


def _real(label: str, value: Any, lo: float, hi: float) -> float:
    """``value`` as a finite float in ``[lo, hi]``; text, bools, NaN and inf are refused."""
    problem = f"{label} must be a number between {lo:g} and {hi:g}, got {_show(value)}."
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise RequestError(problem)
    out = float(value)
    if not (math.isfinite(out) and lo <= out <= hi):
        raise RequestError(problem)
    return out


def _flag(label: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise RequestError(f"{label} must be true or false, got {_show(value)}.")
    return value


def _closest(value: Any, choices: tuple[str, ...]) -> str:
    """`` Did you mean 'x'?`` for the choice nearest to a misspelt one, else ``""``."""
    if not isinstance(value, str):
        return ""
    by_lower = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(
        value.strip().lower()[:MAX_LABEL_CHARS], list(by_lower), n=1, cutoff=0.6
    )
    return f" Did you mean {by_lower[close[0]]!r}?" if close else ""


def _pick(value: Any, choices: tuple[str, ...]) -> str | None:
    """The choice ``value`` names (case-insensitive, spaces trimmed), else ``None``."""
    if isinstance(value, str):
        key = value.strip().lower()
        for choice in choices:
            if choice.lower() == key:
                return choice
    return None


def resolve_classes(
    classes: Any, num_classes: int, id2label: dict[int, str] | None, max_classes: int | None = None
) -> list[int]:
    """Picker values (ids as strings, ids, or class names) -> class ids; :class:`RequestError` naming the bad
    one, with the nearest class names for a misspelt name (``LabelResolver``).

    ``max_classes`` (default ``num_classes``) bounds the list before any name is matched.
    """
    from sit_diffusers.labels import LabelResolver, UnknownClassLabelError

    if classes is None or (isinstance(classes, (str, list, tuple)) and len(classes) == 0):
        raise RequestError("Pick at least one class.")
    if isinstance(classes, (str, int)) and not isinstance(classes, bool):
        classes = [classes]
    if not isinstance(classes, (list, tuple)):
        raise RequestError(f"Classes must be a list of class ids or names, got {_show(classes)}.")
    limit = num_classes if max_classes is None else max_classes
    if len(classes) > limit:
        raise RequestError(f"Pick at most {limit} classes, got {len(classes)}.")
    for label in classes:
        if isinstance(label, str) and len(label) > MAX_LABEL_CHARS:
            raise RequestError(f"Class name {_show(label)} is longer than {MAX_LABEL_CHARS} characters.")
    try:
        return LabelResolver(num_classes, id2label)(list(classes))
    except UnknownClassLabelError as err:
        text = str(err)
        raise RequestError(text[:1].upper() + text[1:]) from None


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
    max_guidance: float = MAX_GUIDANCE,
) -> GenerationRequest:
    """Check every control against the caps and return a :class:`GenerationRequest`.

    Raises :class:`RequestError` (a ``gr.Error``) with a sentence for the page: the control, the value
    given and what is allowed; never a stack trace. Images cycle through the chosen classes:
    ``class_ids[i] = chosen[i % len(chosen)]`` (picks beyond the number of images are not drawn).
    ``max_guidance`` is 1 for a model without a null class (no classifier-free guidance).
    """
    n = _whole("Number of images", num_images, 1, max_images)
    chosen = resolve_classes(classes, num_classes, id2label, max_classes=max(num_classes, max_images))
    mode_name = _pick(mode, MODES)
    if mode_name is None:
        raise RequestError(
            f"Sampler mode must be one of {', '.join(MODES)}, got {_show(mode)}.{_closest(mode, MODES)}"
        )
    solver_name = _pick(solver, SOLVERS[mode_name])
    if solver_name is None:
        valid = SOLVERS[mode_name]
        raise RequestError(
            f"Solver {_show(solver)} is not available for {mode_name}; choose one of {', '.join(valid)}."
            + _closest(solver, valid)
        )
    n_steps = _whole("Steps", steps, 1, max_steps)
    scale = _real("Guidance scale", guidance_scale, 1.0, MAX_GUIDANCE)
    if scale > max_guidance:
        why = " (this model has no null class, so no classifier-free guidance)" if max_guidance == 1.0 else ""
        raise RequestError(f"Guidance scale must be between 1 and {max_guidance:g}{why}, got {scale:g}.")
    lo = _real("Guidance interval start", interval_start, 0.0, 1.0)
    hi = _real("Guidance interval end", interval_end, 0.0, 1.0)
    if lo > hi:
        raise RequestError(f"Guidance interval must satisfy 0 <= start <= end <= 1, got [{lo:g}, {hi:g}].")
    form = _pick(diffusion_form, DIFFUSION_FORMS)
    if form is None:
        raise RequestError(
            f"Diffusion form must be one of {', '.join(DIFFUSION_FORMS)}, got {_show(diffusion_form)}."
            + _closest(diffusion_form, DIFFUSION_FORMS)
        )
    norm = _real("Diffusion norm", diffusion_norm, 0.0, MAX_DIFFUSION_NORM)
    seed_value = _whole("Seed", seed, 0, MAX_SEED)
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
    """``SIT_DEVICE`` if set, else cuda when present or under ZeroGPU (it attaches a GPU per call).

    A ``SIT_DEVICE`` this machine does not have stops start-up with one line (under ZeroGPU only its
    spelling is checked: the GPU is attached per call).
    """
    value = os.environ.get("SIT_DEVICE", "").strip()
    if not value:
        return "cuda" if spaces is not None or torch.cuda.is_available() else "cpu"
    if spaces is None:
        try:
            check_device("SIT_DEVICE", value)
        except InputError as err:
            raise SystemExit(str(err)) from None
        return value
    try:
        torch.device(value)
    except RuntimeError:
        raise SystemExit(f"SIT_DEVICE {value!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from None
    return value


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def load_pipeline(ref: str, device: str, dtype: str = "float32"):
    """Load ``SiTPipeline`` from a folder or Hub id, in ``dtype``, on ``device``.

    The Space installs sit-diffusers, so the pipeline is built from the package's classes and no code file of
    the model repo runs (no ``trust_remote_code``): the repo's code (``sit_diffusers.remote_code``) is for
    users of stock ``DiffusionPipeline.from_pretrained`` without the package."""
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
    """The loaded pipeline plus the generate function the UI and the API call.

    ``generate`` validates the request (:func:`validate_request`) and only then calls ``sample``, the
    part that needs the accelerator: under ZeroGPU only ``sample`` runs in ``@spaces.GPU``, so a bad
    request is refused without a GPU being attached.
    """

    def __init__(self, pipe, model_name: str, device: str) -> None:
        self.pipe = pipe
        self.model_name = model_name
        self.device = device
        config = pipe.transformer.config
        self.num_classes = int(config.num_classes)
        # without a null-class embedding (class_dropout_prob = 0) the pipeline cannot guide
        self.max_guidance = MAX_GUIDANCE if getattr(config, "class_dropout_prob", 0.1) > 0 else 1.0
        self.id2label = {int(k): str(v) for k, v in (getattr(pipe, "id2label", None) or {}).items()} or None
        self._base_scheduler = pipe.scheduler
        self._lock = threading.Lock()  # the scheduler is swapped per request: one run at a time
        # ZeroGPU: a GPU is attached for the duration of each sampling call
        self.sample = spaces.GPU(duration=120)(self._sample) if spaces is not None else self._sample

    def make_sampler(self, request: GenerationRequest):
        """A sampler for this request: the pipeline's own config with mode / solver / diffusion overridden."""
        base = self._base_scheduler
        overrides: dict[str, Any] = {"mode": request.mode, "solver": request.solver}
        if request.mode == "sde":
            overrides.update(diffusion_form=request.diffusion_form, diffusion_norm=request.diffusion_norm)
        if request.mode != str(base.config.get("mode", "ode")).lower() or request.solver in ADAPTIVE_SOLVERS:
            # the saved time grid (e.g. the digits model's fitted one) is for its own mode's interval and for a
            # fixed-step solver: another mode, or the adaptive solver, runs on the plain uniform grid
            overrides.update(time_grid="uniform", fitted_grid=None, time_shift=1.0)
        return type(base).from_config(base.config, **overrides)

    def validate(self, *controls: Any) -> GenerationRequest:
        """:func:`validate_request` for this model (its classes, names and whether it can guide)."""
        return validate_request(
            *controls, num_classes=self.num_classes, id2label=self.id2label, max_guidance=self.max_guidance
        )

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
        """Validate every control, then sample; returns ``(images, info text, seed used)``.

        A bad value raises :class:`RequestError` before any work. With ``randomize_seed`` the ``seed``
        given is not used (nor checked): a fresh one in ``[0, MAX_SEED]`` is drawn.
        """
        if _flag("Randomize seed", randomize_seed):
            seed = random.randint(0, MAX_SEED)
        request = self.validate(
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
        )
        return self.sample(request)

    def _sample(self, request: GenerationRequest):
        """Run the pipeline on a validated request; returns ``(images, info text, seed used)``.

        NaN/inf in the result (the pipeline's ``NonFiniteError``) becomes a ``gr.Error`` with its message;
        any other exception is a bug and propagates with its traceback (the page shows a bare "Error").
        """
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
            except NonFiniteError as err:
                raise gr.Error(
                    f"The sampler produced NaN/inf values, so there is no image to show: {err}",
                    title="Generation failed",
                    print_exception=False,
                ) from None
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
            "guidance_scale": max(1.0, min(float(guidance), self.max_guidance)),
            "diffusion_form": form if form in DIFFUSION_FORMS else "sigma",
            "diffusion_norm": max(0.0, min(float(cfg.get("diffusion_norm", 1.0)), MAX_DIFFUSION_NORM)),
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
            rows.append(
                [picks, min(4, MAX_IMAGES), mode, solver, min(steps, MAX_STEPS), min(scale, self.max_guidance),
                 0.0, 1.0, "sigma", 1.0, k]
            )  # fmt: skip
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
  chosen by the error control; the NFE shows what it used), *ab3* (Adams-Bashforth 3: 1 call per step,
  reusing the last two), *abm4* (ab3 plus an Adams-Moulton correction from the same call; the digits model's
  default, on its fitted time grid: 7 steps = 8 calls).
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
                    1.0,
                    MAX_GUIDANCE,
                    value=start["guidance_scale"],
                    step=0.1,
                    label="Guidance scale",
                    interactive=demo_state.max_guidance > 1.0,  # a model without a null class cannot guide
                )
                with gr.Row():
                    interval_start = gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="Guidance from t =")
                    interval_end = gr.Slider(0.0, 1.0, value=1.0, step=0.01, label="Guidance until t =")
                with gr.Row(visible=start["mode"] == "SDE") as sde_row:
                    diffusion_form = gr.Dropdown(
                        list(DIFFUSION_FORMS), value=start["diffusion_form"], label="Diffusion form"
                    )
                    diffusion_norm = gr.Number(
                        value=start["diffusion_norm"],
                        minimum=0.0,
                        maximum=MAX_DIFFUSION_NORM,
                        label="Diffusion norm",
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

        # preprocess=False: the raw values reach generate, which checks them all (gradio's own checks would
        # answer the API's text, NaN or 2.7 with a bare "Error", round a seed silently, and refuse an SDE
        # solver when the page starts in ODE); generate runs the sampler under ZeroGPU's GPU only once valid.
        run.click(
            demo_state.generate,
            inputs=[*inputs, randomize],
            preprocess=False,
            outputs=[gallery, info, seed],
            show_progress_on=[gallery],
            api_name="generate",
            api_description="Generate images: classes (ids or names), number of images, mode, solver, steps, "
            "guidance scale, guidance interval start/end, diffusion form, diffusion norm, seed, randomize seed. "
            "Returns (gallery, info text with NFE and wall time, seed used). A bad value is refused before any "
            "work with an error naming the control, the value and what is allowed.",
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
