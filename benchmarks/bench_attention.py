"""Which attention backend to train and sample with: SDPA's default kernel vs ``_native_math``, per shape.

    python benchmarks/bench_attention.py --threads 2                 # CPU: the digits model and SiT-S/2-like shapes
    python benchmarks/bench_attention.py --device cuda --repeats 10

For each model shape x precision (float32, bf16 autocast) x backend (``native`` = ``F.scaled_dot_product_attention``
choosing its kernel, ``_native_math`` = its math kernel: explicit softmax(QK^T)V) the script times, best of
``--repeats``, a forward in inference mode (what sampling runs) and a training step (forward, loss, backward;
no optimiser, which does not depend on the backend) of ``SiTTransformer2DModel`` with random weights.
``ratio`` is native time / math time: above 1 the math kernel is the faster. It is how the trainer's
``--attention_backend`` advice in docs/training.md was measured: on a CPU with bf16, SDPA's fused (flash)
backward is slow on short token grids (the digits model's 49 tokens), not on 256.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

import torch
import torch._dynamo

from sit_diffusers.modeling_sit import SiTTransformer2DModel

SHAPES = {
    # name: (sample_size, in_channels, patch_size, hidden_size, depth, num_heads, batch)
    "digits 192x6, 49 tokens": (28, 1, 4, 192, 6, 3, 128),
    "S/2 width 384x4, 256 tokens": (32, 4, 2, 384, 4, 6, 16),
}
BACKENDS = ("native", "_native_math")


def one_pass(model: SiTTransformer2DModel, inputs: tuple[torch.Tensor, ...], bf16: bool, train: bool) -> None:
    """A forward in inference mode, or a training step without the optimiser (forward, loss, backward)."""
    device_type = inputs[0].device.type
    if not train:
        with torch.inference_mode(), torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            model(*inputs)
        return
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
        out = model(*inputs).sample  # (N, C, H, W)
    out.float().square().mean().backward()
    model.zero_grad(set_to_none=True)


def best_time(fn: Callable[[], None], repeats: int, sync: Callable[[], None]) -> float:
    fn()  # warm-up
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per cell (the best is shown)")
    parser.add_argument("--compile", action="store_true",
                        help="regional torch.compile of the blocks (compile_repeated_blocks), as train_sit --compile "
                             "regional; each backend and pass warms up once, untimed")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible to torch here")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.compile:  # one graph per shape x precision x pass x backend: more than dynamo's default 8 per block
        torch._dynamo.config.recompile_limit = 64
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print(f"# bench_attention: device {device.type}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"best of {args.repeats}, compile {'regional' if args.compile else 'none'}")
    print("| shape | batch | precision | pass | native ms | _native_math ms | ratio |")
    print("|---|---|---|---|---|---|---|")
    for name, (size, channels, patch, hidden, depth, heads, batch) in SHAPES.items():
        torch.manual_seed(0)
        model = SiTTransformer2DModel(sample_size=size, in_channels=channels, patch_size=patch, hidden_size=hidden,
                                      depth=depth, num_heads=heads, num_classes=10, learn_sigma=False).to(device)
        if args.compile:
            model.compile_repeated_blocks()
        x = torch.randn(batch, channels, size, size, device=device)  # (N, C, H, W)
        t = torch.rand(batch, device=device)
        y = torch.randint(0, 10, (batch,), device=device)
        for precision in ("float32", "bf16"):
            for label, train in (("forward", False), ("train step", True)):
                fn = partial(one_pass, model, (x, t, y), precision == "bf16", train)
                times = {}
                for backend in BACKENDS:
                    model.set_attention_backend(backend)
                    times[backend] = best_time(fn, args.repeats, sync)
                model.reset_attention_backend()
                native, math = times["native"], times["_native_math"]
                print(f"| {name} | {batch} | {precision} | {label} | {1000 * native:.1f} | {1000 * math:.1f} | "
                      f"{native / math:.2f} |", flush=True)


if __name__ == "__main__":
    main()
