"""diffusers' flow-matching schedulers in SiTPipeline: exact conversion, convergence, contract, refusals."""

from __future__ import annotations

import io
import math

import pytest
import torch
from conftest import tiny_sit
from diffusers import (
    DDPMScheduler,
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    UniPCMultistepScheduler,
)

import sit_diffusers
from sit_diffusers.flow_schedulers import FLOW_SCHEDULERS, plan_flow
from sit_diffusers.pipeline_sit import SiTPipeline
from sit_diffusers.scheduling_sit import SiTSampler
from sit_diffusers.validation import InputError

FLOW = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}
LABELS = [1, 2, 3, 4]


def make(name: str):
    """A fresh scheduler of each supported kind (shift 1, default sigmas)."""
    return {
        "euler": lambda: FlowMatchEulerDiscreteScheduler(),
        "heun": lambda: FlowMatchHeunDiscreteScheduler(),
        "unipc": lambda: UniPCMultistepScheduler(**FLOW),
        "dpm++": lambda: DPMSolverMultistepScheduler(**FLOW),
        "sde-dpm++": lambda: DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", **FLOW),
    }[name]()


@pytest.fixture()
def pipe() -> SiTPipeline:
    """A tiny pixel-space pipeline (3 x 8 x 8, 10 classes, with a null class), Linear velocity sampler."""
    transformer = tiny_sit(0.2, sample_size=8, in_channels=3, hidden_size=32, depth=2, num_classes=10)
    pipe = SiTPipeline(transformer, SiTSampler.from_preset("ode-euler"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def noise(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def gens(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


# ----------------------------------------------------------------------------------------------------------
# exact conversion
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "bound"), [(8, 0.0), (10, 1e-5)])
def test_flow_match_euler_on_a_uniform_grid_is_our_ode_euler(pipe: SiTPipeline, n: int, bound: float) -> None:
    """sigmas = 1 - linspace(0, 1, n + 1)[:-1], shift 1: the same Euler steps through t = 1 - sigma, u = -v.
    With n = 8 every time and step is a dyadic number, so the two runs are bit-identical; with n = 10 the
    step sizes round differently in float32 (measured max abs difference 2.6e-6 on samples of size ~9,
    i.e. 3e-7 relative)."""
    kw = {"latents": noise(), "output_type": "latent", "guidance_scale": 2.0}
    ours = pipe(LABELS, num_inference_steps=n, **kw).images
    pipe.scheduler = FlowMatchEulerDiscreteScheduler()
    sigmas = (1 - torch.linspace(0, 1, n + 1))[:-1].tolist()
    theirs = pipe(LABELS, sigmas=sigmas, **kw)
    assert theirs.nfe == n
    diff = (theirs.images - ours).abs().max().item()
    assert diff <= bound, diff
    assert (ours - kw["latents"]).abs().max() > 1.0  # it moved


def _errors(pipe: SiTPipeline, make_scheduler, exact: torch.Tensor, steps: tuple[int, ...]) -> list[float]:
    kw = {"latents": noise(), "output_type": "latent", "guidance_scale": 2.0}
    errs = []
    for n in steps:
        pipe.scheduler = make_scheduler()
        errs.append((pipe(LABELS, num_inference_steps=n, **kw).images - exact).abs().max().item())
    return errs


@pytest.mark.parametrize(("name", "order"), [("euler", 1.0), ("heun", 2.0), ("unipc", 2.0), ("dpm++", 1.3)])
def test_each_flow_scheduler_converges_to_our_ode_solution(pipe: SiTPipeline, name: str, order: float) -> None:
    """Every scheduler approaches the dopri5 solution (rtol 1e-7) of the same guided ODE from the same noise at
    its order: a flipped time or velocity sign would converge to something else. Measured max errors at
    10 / 20 / 40 steps: Euler 0.38 / 0.19 / 0.092, Heun 0.046 / 0.010 / 0.0025, UniPC 0.039 / 0.0071 / 0.0013,
    DPM-Solver++ 2M 0.12 / 0.046 / 0.017 (it starts at sigma 0.999, t = 0.001, from pure noise)."""
    pipe.set_sampler("ode-dopri5", rtol=1e-7, atol=1e-7)
    exact = pipe(LABELS, num_inference_steps=2, latents=noise(), output_type="latent", guidance_scale=2.0).images
    errs = _errors(pipe, lambda: make(name), exact, (10, 20, 40))
    rates = [math.log2(a / b) for a, b in zip(errs, errs[1:], strict=False)]
    assert errs[-1] < 0.1 and all(r > order - 0.3 for r in rates), (errs, rates)


def test_the_model_sees_sit_time_one_minus_their_sigma_not_the_rounded_timestep(pipe: SiTPipeline) -> None:
    calls: list[float] = []
    pipe.transformer.register_forward_pre_hook(lambda m, args: calls.append(float(args[1][0])))
    pipe.scheduler = make("unipc")
    pipe(LABELS, num_inference_steps=7, latents=noise(), output_type="latent")
    sigmas = pipe.scheduler.sigmas[:-1].double()
    assert pipe.scheduler.timesteps.dtype == torch.int64  # UniPC rounds: int(1000 sigma)
    torch.testing.assert_close(torch.tensor(calls, dtype=torch.float64), 1 - sigmas, rtol=0, atol=1e-7)


# ----------------------------------------------------------------------------------------------------------
# the pipeline contract with every flow scheduler
# ----------------------------------------------------------------------------------------------------------

EXPECTED_NFE = {"euler": 6, "heun": 11, "unipc": 6, "dpm++": 6, "sde-dpm++": 6}  # 6 steps; Heun 2 n - 1


@pytest.mark.parametrize("name", list(EXPECTED_NFE))
def test_every_flow_scheduler_samples_with_guidance_interval_and_output_types(pipe: SiTPipeline, name: str) -> None:
    pipe.set_sampler(make(name))  # set_sampler takes a flow scheduler instance
    bar = io.StringIO()
    pipe.set_progress_bar_config(file=bar, mininterval=0)
    out = pipe(LABELS, num_inference_steps=6, guidance_scale=3.0, guidance_interval=(0.2, 0.9),
               generator=gens([0, 1, 2, 3]), output_type="pt")
    assert out.nfe == EXPECTED_NFE[name] and f"{out.nfe}/{out.nfe}" in bar.getvalue()  # the bar counts NFE
    assert out.images.shape == (4, 3, 8, 8) and torch.isfinite(out.images).all()
    assert 0 <= out.images.min() and out.images.max() <= 1
    pil = pipe(LABELS[:1], num_inference_steps=2, output_type="pil").images
    assert pil[0].size == (8, 8)


@pytest.mark.parametrize("name", ["euler", "unipc", "sde-dpm++"])
def test_per_image_generators_make_the_batch_equal_its_members(pipe: SiTPipeline, name: str) -> None:
    kw = {"num_inference_steps": 4, "guidance_scale": 2.0, "output_type": "latent"}
    pipe.scheduler = make(name)
    batch = pipe([1, 2, 3], generator=gens([10, 11, 12]), **kw).images
    for i, (label, seed) in enumerate([(1, 10), (2, 11), (3, 12)]):
        pipe.scheduler = make(name)
        alone = pipe([label], generator=gens([seed]), **kw).images
        torch.testing.assert_close(batch[i : i + 1], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["euler", "heun", "unipc", "dpm++"])
def test_callback_replacement_continues_exactly_from_the_new_latents(pipe: SiTPipeline, name: str) -> None:
    """Replacing the state after step 1 equals a fresh run that starts from that state at that time (diffusers'
    ``set_begin_index``): a multistep scheduler restarts its history, so UniPC's corrector cannot overwrite the
    replacement and no model output of the old trajectory leaks into the new one."""
    pipe.scheduler = make(name)
    replacement = noise(4, seed=9) * 0.5
    seen: list[tuple[int, float]] = []

    def swap(p, step, t, tensors):
        seen.append((step, t))
        assert p.num_timesteps == 5 and p.guidance_scale == 2.0
        return {"latents": replacement} if step == 1 else None

    kw = {"num_inference_steps": 5, "latents": noise(), "output_type": "latent", "guidance_scale": 2.0}
    edited = pipe(LABELS, callback_on_step_end=swap, **kw).images
    assert [s for s, _ in seen] == [0, 1, 2, 3, 4] and seen[-1][1] == 1.0  # one call per step; ends at the data
    # by hand: the scheduler's own img2img loop from the entry after step 1, from the replacement
    sched = make(name)
    sched.set_timesteps(5)
    begin = 2 * (2 if name == "heun" else 1)
    sched.set_begin_index(begin)
    model_fn = pipe.guided_model_fn(torch.tensor(LABELS), 2.0)
    x = replacement
    for i in range(begin, len(sched.timesteps)):
        t = 1 - sched.sigmas[i]
        x = sched.step(-model_fn(x, t.expand(4)), sched.timesteps[i], x).prev_sample
    assert seen[1][1] == pytest.approx(float(1 - sched.sigmas[begin]))  # the time the replacement lives at
    torch.testing.assert_close(edited, x, rtol=0, atol=0)


def test_callback_guidance_change_and_no_replacement_with_a_flow_scheduler(pipe: SiTPipeline) -> None:
    pipe.scheduler = make("unipc")
    batches: list[int] = []
    pipe.transformer.register_forward_pre_hook(lambda m, args: batches.append(args[0].shape[0]))

    def stop_guidance(p, step, t, tensors):
        if step == 1:
            p._guidance_scale = 1.0

    pipe([1], guidance_scale=3.0, num_inference_steps=4, callback_on_step_end=stop_guidance, output_type="latent")
    assert batches == [2, 2, 1, 1]
    kw = {"num_inference_steps": 4, "latents": noise(1), "output_type": "latent"}
    plain = pipe([1], **kw).images
    same = pipe([1], callback_on_step_end=lambda p, s, t, d: d, **kw).images  # returning the tensors: no restart
    assert torch.equal(plain, same)


def test_scheduler_can_be_given_every_diffusers_way(pipe: SiTPipeline) -> None:
    ref = pipe.transformer
    a = SiTPipeline(ref, scheduler=make("unipc"))
    a.set_progress_bar_config(disable=True)
    b = pipe
    b.scheduler = make("unipc")
    c = SiTPipeline(ref, SiTSampler.from_preset("ode-heun"))
    c.set_progress_bar_config(disable=True)
    c.set_sampler(make("unipc"))
    d = SiTPipeline(ref, SiTSampler.from_preset("ode-heun"))
    d.set_progress_bar_config(disable=True)
    d.scheduler = UniPCMultistepScheduler.from_config(d.scheduler.config, **FLOW)  # diffusers' idiom
    kw = {"num_inference_steps": 4, "latents": noise(1), "output_type": "latent"}
    outs = [p([3], **kw).images for p in (a, b, c, d)]
    assert all(torch.equal(o, outs[0]) for o in outs[1:])


def test_embedded_model_gives_correct_digits_with_every_flow_scheduler() -> None:
    """Small-N version of benchmarks/bench_flow_schedulers.py (N = 1000 there: every scheduler within 2 points
    of our Heun). Here 20 images (2 per class) at 10 NFE and guidance 1.5 from the same noise: every scheduler
    must score >= 0.85 and within 10 points (2 images) of our ODE Heun. Measured: 20 / 20 for each (our Heun,
    FlowMatch Euler, FlowMatch Heun at 9 NFE, UniPC, DPM-Solver++)."""
    pytest.importorskip("mlxtend")
    from sit_diffusers.evaluation import EMBEDDED_GUIDANCE_SCALE, load_classifier

    pipe = SiTPipeline.from_pretrained(str(sit_diffusers.DEFAULT_MODEL))
    pipe.set_progress_bar_config(disable=True)
    classifier = load_classifier()
    labels = [i % 10 for i in range(20)]
    x0 = torch.randn(20, 1, 28, 28, generator=torch.Generator().manual_seed(0))

    def accuracy(scheduler, steps: int) -> float:
        pipe.scheduler = scheduler
        with torch.inference_mode():
            images = pipe(labels, num_inference_steps=steps, latents=x0, guidance_scale=EMBEDDED_GUIDANCE_SCALE,
                          output_type="pt").images
            return float((classifier(images * 2 - 1).argmax(1) == torch.tensor(labels)).float().mean())

    ours = accuracy(SiTSampler.from_preset("ode-heun"), 5)
    assert ours >= 0.85
    for scheduler, steps in [(make("euler"), 10), (make("heun"), 5), (make("unipc"), 10), (make("dpm++"), 10)]:
        acc = accuracy(scheduler, steps)
        assert acc >= 0.85 and acc >= ours - 0.1, (type(scheduler).__name__, acc, ours)


# ----------------------------------------------------------------------------------------------------------
# refusals: a table of bad inputs, each an InputError that names the problem
# ----------------------------------------------------------------------------------------------------------


def _gvp(pipe: SiTPipeline) -> SiTPipeline:
    pipe.scheduler = SiTSampler(path_type="gvp", mode="ode", solver="euler")
    return pipe


BAD = [
    # (id, setup(pipe) -> pipe, scheduler to assign or None, call kwargs, message)
    ("ddpm", None, lambda: DDPMScheduler(), {}, "scheduler must be a SiTSampler or one of the flow-matching"),
    ("euler-discrete", None, lambda: EulerDiscreteScheduler(), {}, "got EulerDiscreteScheduler"),
    ("deis", None, lambda: DEISMultistepScheduler(**FLOW), {}, "got DEISMultistepScheduler"),
    ("unipc-no-flow-sigmas", None, lambda: UniPCMultistepScheduler(), {}, "use_flow_sigmas=True"),
    ("dpm-epsilon", None, lambda: DPMSolverMultistepScheduler(use_flow_sigmas=True), {}, "prediction_type='epsilon'"),
    ("dpm-karras", None, lambda: DPMSolverMultistepScheduler(use_karras_sigmas=True, **FLOW), {},
     "not a flow-matching schedule"),
    ("dpm-sigma-min", None, lambda: DPMSolverMultistepScheduler(final_sigmas_type="sigma_min", **FLOW), {},
     "not at the data"),
    ("dynamic-shift", None, lambda: FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True), {},
     "use_dynamic_shifting=True"),
    ("invert-sigmas", None, lambda: FlowMatchEulerDiscreteScheduler(invert_sigmas=True), {}, "invert_sigmas"),
    ("gvp-model", _gvp, lambda: FlowMatchEulerDiscreteScheduler(), {}, "path_type='gvp'"),
    ("sigmas-with-sitsampler", None, None, {"sigmas": [1.0, 0.5]}, "sigmas is for the diffusers flow schedulers"),
    ("sigmas-with-heun", None, lambda: FlowMatchHeunDiscreteScheduler(), {"sigmas": [1.0, 0.5]},
     "takes no custom sigmas"),
    ("sigmas-increasing", None, lambda: FlowMatchEulerDiscreteScheduler(), {"sigmas": [0.5, 0.9]},
     r"sigmas\[1\]=0.9 >= sigmas\[0\]=0.5"),
    ("sigmas-above-one", None, lambda: FlowMatchEulerDiscreteScheduler(), {"sigmas": [1.5, 0.5]},
     r"sigmas\[0\] must be <= 1.0, got 1.5"),
    ("sigmas-zero", None, lambda: FlowMatchEulerDiscreteScheduler(), {"sigmas": [1.0, 0.0]},
     r"sigmas\[1\] must be > 0.0"),
    ("sigmas-nan", None, lambda: FlowMatchEulerDiscreteScheduler(), {"sigmas": [1.0, float("nan")]}, "finite"),
    ("sigmas-empty", None, lambda: FlowMatchEulerDiscreteScheduler(), {"sigmas": []}, "non-empty sequence"),
    ("sigmas-string", None, lambda: FlowMatchEulerDiscreteScheduler(), {"sigmas": "1,0.5"}, "non-empty sequence"),
    ("sigmas-count", None, lambda: FlowMatchEulerDiscreteScheduler(), {"sigmas": [1.0, 0.5], "num_inference_steps": 3},
     "num_inference_steps=3 but 2 sigmas"),
    ("steps-zero", None, lambda: UniPCMultistepScheduler(**FLOW), {"num_inference_steps": 0},
     "num_inference_steps must be >= 1, got 0"),
    ("steps-float", None, lambda: UniPCMultistepScheduler(**FLOW), {"num_inference_steps": 2.5}, "num_inference_steps"),
]


@pytest.mark.parametrize(("setup", "make_scheduler", "kwargs", "message"), [b[1:] for b in BAD],
                         ids=[b[0] for b in BAD])
def test_bad_flow_schedulers_and_arguments_are_refused_before_any_work(pipe, setup, make_scheduler, kwargs, message):
    if setup is not None:
        pipe = setup(pipe)
    if make_scheduler is not None:
        pipe.scheduler = make_scheduler()
    calls: list[int] = []
    pipe.transformer.register_forward_pre_hook(lambda m, args: calls.append(1))
    with pytest.raises(InputError, match=message):
        pipe([1], **{"num_inference_steps": 2, "output_type": "latent", **kwargs})
    assert calls == []  # refused at the door: the transformer never ran


def test_set_sampler_checks_a_flow_scheduler_and_keeps_what_the_model_was_trained_for(pipe) -> None:
    _gvp(pipe)
    with pytest.raises(InputError, match="path_type='gvp'"):
        pipe.set_sampler(FlowMatchEulerDiscreteScheduler())
    with pytest.raises(InputError, match="one of the flow-matching schedulers FlowMatchEulerDiscreteScheduler"):
        pipe.set_sampler(DDPMScheduler())
    pipe.scheduler = FlowMatchEulerDiscreteScheduler()  # plain assignment: refused when the pipeline runs
    assert pipe.model_sampler_config["path_type"] == "gvp"
    pipe.set_sampler("ode-heun")  # a preset after the flow scheduler keeps the GVP path
    assert (pipe.scheduler.config.path_type, pipe.scheduler.config.solver) == ("gvp", "heun")
    fresh = SiTPipeline(pipe.transformer, scheduler=FlowMatchEulerDiscreteScheduler())
    assert fresh.model_sampler_config["path_type"] == "linear"  # nothing said otherwise: SiTSampler's default
    pipe.set_sampler(SiTSampler(), mode="ode")
    pipe.set_sampler(make("unipc"), flow_shift=3.0)  # overrides go to the scheduler's from_config
    assert pipe.scheduler.config.flow_shift == 3.0


def test_plan_follows_diffusers_img2img_begin_index() -> None:
    for scheduler, order in [(make("euler"), 1), (make("heun"), 2), (make("unipc"), 1)]:
        plan = plan_flow(scheduler, 10, strength=0.35)
        assert plan.begin_index == (10 - 3) * order and plan.nfe == len(scheduler.timesteps) - plan.begin_index
    assert set(FLOW_SCHEDULERS) == {"FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler",
                                    "UniPCMultistepScheduler", "DPMSolverMultistepScheduler"}


# ----------------------------------------------------------------------------------------------------------
# the benchmark's command line: bad flags end with one line naming them, exit 2, nothing written
# ----------------------------------------------------------------------------------------------------------

BAD_FLAGS = [
    (["--nfe", "3"], "--nfe 3 is odd"),
    (["--nfe", "0"], "--nfe must be >= 2, got 0"),
    (["--nfe", "ten"], "argument --nfe: invalid int value: 'ten'"),
    (["--num-samples", "5"], "--num-samples must be >= 10, got 5"),
    (["--num-samples", "5000"], "--num-samples must be <= 4000, got 5000"),
    (["--guidance-scale", "nan"], "--guidance-scale must be finite, got nan"),
    (["--guidance-scale", "-1"], "--guidance-scale must be >= 0.0, got -1.0"),
    (["--seed", "-1"], "--seed must be >= 0, got -1"),
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--threads", "0"], "--threads must be >= 1, got 0"),
    (["--device", "tpu9"], "--device 'tpu9'"),
    (["--json", "{tmp}"], "is a folder"),
    (["--json", "{tmp}/file.txt/rows.json"], "exists and is not a folder"),
    (["--nfee", "4"], "unrecognized arguments: --nfee"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_benchmark_refuses_bad_flags_before_any_work(tmp_path, capsys, argv, message) -> None:
    import sys

    from conftest import REPO_ROOT, assert_refused

    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    import bench_flow_schedulers

    (tmp_path / "file.txt").write_text("x")
    err = assert_refused(bench_flow_schedulers.main, [a.format(tmp=tmp_path) for a in argv], tmp_path, capsys,
                         "benchmarks/bench_flow_schedulers.py")
    assert message in err, err
