"""Speed and memory of SiTTransformer2DModel against a faithful re-implementation of the official network.

The official ``models.py`` (github willisma/SiT) builds its blocks from timm's ``Attention`` / ``Mlp`` /
``PatchEmbed``; timm needs torchvision, which this project never installs, so ``OfficialSiT`` below
re-creates that module structure op for op (qkv Linear -> reshape/permute -> fused SDPA -> proj, as timm's
``Attention`` with ``fused_attn``; ``nn.Sequential(SiLU, Linear)`` adaLN per block; einsum unpatchify;
``chunk`` of the sigma half). Its state dict has the official key names, so our converter loads the very
same weights into ``SiTTransformer2DModel`` and the script checks both give the same output before timing.

Rows: forward (inference mode) per model x dtype x batch, and a training step (forward + backward + AdamW,
label dropout on) per model x dtype. Columns: best-of-``--repeats`` time per call (ours and official timed
alternately; process CPU time by default on CPU, wall time on CUDA), images/s, peak tensor memory.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated``; on CPU torch's ``MemTracker`` (a dispatch-mode
tracker of every live tensor storage: weights, activations, gradients, optimizer state), run in a separate,
untimed pass. ``tracemalloc`` would not see torch's allocations.

Default (quick: SiT-S/2 and SiT-B/2, float32, batch 1 and 8, training step at batch 4; a few minutes on
2 CPU cores)::

    python benchmarks/bench_model.py --threads 1

The issue's matrix (S/2, B/2 x batch 1/8/32 x float32/bfloat16, training step at batch 16), on a GPU::

    python benchmarks/bench_model.py --full --device cuda --repeats 10
    python benchmarks/bench_model.py --device cuda --models SiT-XL/2 --batch-sizes 1 32 128 --dtypes bfloat16
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import diffusers
import torch
import torch.nn.functional as F
from torch import nn

from sit_diffusers.conversion import convert_official_state_dict
from sit_diffusers.modeling_sit import SIT_CONFIGS, SiTTransformer2DModel, get_2d_sincos_pos_embed

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


#################################################################################
#        Official SiT module structure (timm Attention / Mlp / PatchEmbed)      #
#################################################################################


class _TimmPatchEmbed(nn.Module):
    def __init__(self, patch: int, cin: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cin, dim, patch, patch, bias=True)
        self.norm = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))  # (N, T, D)


class _TimmAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.q_norm, self.k_norm = nn.Identity(), nn.Identity()
        self.attn_drop, self.proj_drop = nn.Dropout(0.0), nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0)
        x = x.transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(x))


class _TimmMlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.drop1 = nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Dropout(0.0)
        self.norm, self.fc2, self.drop2 = nn.Identity(), nn.Linear(hidden, dim), nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = _TimmAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = _TimmMlp(dim, int(dim * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        s_msa, sc_msa, g_msa, s_mlp, sc_mlp, g_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + g_msa.unsqueeze(1) * self.attn(_modulate(self.norm1(x), s_msa, sc_msa))
        return x + g_mlp.unsqueeze(1) * self.mlp(_modulate(self.norm2(x), s_mlp, sc_mlp))


class _Final(nn.Module):
    def __init__(self, dim: int, patch: int, cout: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch * patch * cout, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(_modulate(self.norm_final(x), shift, scale))


class OfficialSiT(nn.Module):
    """The official ``SiT`` module tree and forward, timm layers re-created; official state-dict keys."""

    def __init__(self, input_size: int, patch_size: int, hidden_size: int, depth: int, num_heads: int,
                 in_channels: int = 4, mlp_ratio: float = 4.0, class_dropout_prob: float = 0.1,
                 num_classes: int = 1000) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.patch_size = in_channels, 2 * in_channels, patch_size
        self.num_classes, self.dropout_prob = num_classes, class_dropout_prob
        self.x_embedder = _TimmPatchEmbed(patch_size, in_channels, hidden_size)
        self.t_embedder = nn.Module()
        self.t_embedder.mlp = nn.Sequential(nn.Linear(256, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))
        self.y_embedder = nn.Module()
        self.y_embedder.embedding_table = nn.Embedding(num_classes + 1, hidden_size)
        grid = input_size // patch_size
        # official: nn.Parameter(requires_grad=False); a buffer here (same key, same math) so that torch's
        # MemTracker, which hooks every parameter's gradient, can run on it.
        self.register_buffer("pos_embed", get_2d_sincos_pos_embed(hidden_size, grid).float()[None])
        self.blocks = nn.ModuleList([_Block(hidden_size, num_heads, mlp_ratio) for _ in range(depth)])
        self.final_layer = _Final(hidden_size, patch_size, self.out_channels)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = self.x_embedder(x) + self.pos_embed  # (N, T, D)
        half = 128
        freqs = torch.exp(-math.log(10000) * torch.arange(0, half, dtype=torch.float32) / half).to(t.device)
        args = t[:, None].float() * freqs[None]
        t_freq = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        t = self.t_embedder.mlp(t_freq.to(x.dtype))  # (N, D)
        if self.training and self.dropout_prob > 0:
            y = torch.where(torch.rand(y.shape[0], device=y.device) < self.dropout_prob, self.num_classes, y)
        c = t + self.y_embedder.embedding_table(y)  # (N, D)
        for block in self.blocks:
            x = block(x, c)  # (N, T, D)
        x = self.final_layer(x, c)  # (N, T, p*p*2C)
        p, c_out = self.patch_size, self.out_channels
        h = w = int(x.shape[1] ** 0.5)
        x = torch.einsum("nhwpqc->nchpwq", x.reshape(x.shape[0], h, w, p, p, c_out))
        x = x.reshape(x.shape[0], c_out, h * p, h * p)
        return x.chunk(2, dim=1)[0]  # (N, C, H, W)


#################################################################################
#                                   Measurement                                 #
#################################################################################


@dataclass
class Row:
    kind: str
    model: str
    impl: str
    dtype: str
    batch: int
    ms: float
    images_s: float
    peak_mib: float


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "process": time.process_time}


def _time_interleaved(fns: dict[str, Callable[[], object]], device: torch.device, repeats: int,
                      clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Best-of-``repeats`` seconds per callable, alternating their order every round.

    Interleaving puts every implementation under the same background load; the minimum is the usual
    estimate on a shared machine (noise only ever adds time). ``clock`` may be ``time.process_time``
    (CPU seconds of this process, all threads): on a CPU shared with other jobs it counts the work done,
    not the time spent waiting for a core.
    """
    times: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns)
    for r in range(repeats):
        for key in order if r % 2 == 0 else order[::-1]:
            _sync(device)
            t0 = clock()
            fns[key]()
            _sync(device)
            times[key].append(clock() - t0)
    return {k: min(v) for k, v in times.items()}


def _peak_mib(fn: Callable[[], object], device: torch.device, modules: list[nn.Module],
              optimizer: torch.optim.Optimizer | None = None) -> float:
    """Peak live tensor memory (MiB) during ``fn``, weights and optimizer state included."""
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)  # start without last step's gradients, as MemTracker sees it
    if device.type == "cuda":
        # everything already allocated (the other model, inputs) is subtracted; own weights and
        # optimizer state are added back, so the number matches the CPU definition
        own = sum(t.numel() * t.element_size() for m in modules for t in [*m.parameters(), *m.buffers()])
        if optimizer is not None:
            own += sum(v.numel() * v.element_size() for st in optimizer.state.values()
                       for v in st.values() if torch.is_tensor(v) and v.device.type == "cuda")
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before + own) / 2**20
    try:
        from torch.distributed._tools.mem_tracker import MemTracker
    except ImportError:  # private tool moved: report nothing rather than a wrong number
        return float("nan")
    tracker = MemTracker()
    tracker.track_external(*modules, *([optimizer] if optimizer is not None else []))
    with tracker:
        fn()
    return tracker.get_tracker_snapshot("peak")[device]["Total"] / 2**20


def build_pair(name: str, sample_size: int, device: torch.device, seed: int = 0):
    """Official-structure model with random weights and ours converted from its state dict."""
    cfg = SIT_CONFIGS[name]
    torch.manual_seed(seed)
    official = OfficialSiT(sample_size, cfg["patch_size"], cfg["hidden_size"], cfg["depth"], cfg["num_heads"])
    with torch.no_grad():  # non-zero adaLN / output so the parity check means something
        for p in official.parameters():
            if p.requires_grad:
                p.normal_(0.0, 1.0 / math.sqrt(p.shape[-1]) if p.ndim > 1 else 0.02)
    config, converted = convert_official_state_dict(official.state_dict(), num_heads=cfg["num_heads"])
    ours = SiTTransformer2DModel(**config)
    ours.load_state_dict(converted, strict=True)
    return official.to(device), ours.to(device)


def bench(args: argparse.Namespace) -> list[Row]:
    """All rows for ``args.models``."""
    rows: list[Row] = []
    for name in args.models:
        rows += bench_model(name, args, torch.device(args.device))
    return rows


def bench_model(name: str, args: argparse.Namespace, device: torch.device) -> list[Row]:
    """Forward rows (dtype x batch) and a training-step row per dtype, ours and official interleaved."""
    rows: list[Row] = []
    official, ours = build_pair(name, args.sample_size, device)
    g = torch.Generator().manual_seed(0)
    nmax = max(max(args.batch_sizes), args.train_batch)
    x_all = torch.randn(nmax, 4, args.sample_size, args.sample_size, generator=g).to(device)
    t_all = torch.rand(nmax, generator=g).to(device)
    y_all = torch.randint(0, 1000, (nmax,), generator=g).to(device)

    # Parity in true float32: cuDNN convolutions default to TF32 on Ampere+ GPUs, which alone moves a
    # 28-block output by ~1e-4 whatever the implementation.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # exact float32 check
    with torch.inference_mode():  # same weights -> same output (float32)
        ref = official.eval()(x_all[:2], t_all[:2], y_all[:2])
        got = ours.eval()(x_all[:2], t_all[:2], y_all[:2]).sample
        err = ((got - ref).norm() / ref.norm()).item()
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    print(f"{name}: ours vs official-structure relative error {err:.2e} (float32)", flush=True)
    if err > 1e-5:
        raise RuntimeError(f"{name}: implementations disagree ({err:.2e}); timings would be meaningless")

    modules: dict[str, nn.Module] = {"ours": ours} if args.no_official else {"ours": ours, "official": official}
    predict = {
        "ours": lambda x, t, y: ours(x, t, y).sample,  # (N, C, H, W)
        "official": lambda x, t, y: official(x, t, y),  # (N, C, H, W)
    }
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        for module in modules.values():
            module.to(dtype)
            module.eval()
        for impl in modules:  # warm-up (kernel selection, allocator) on one sample
            with torch.inference_mode():
                predict[impl](x_all[:1].to(dtype), t_all[:1], y_all[:1])
        for batch in args.batch_sizes:
            x, t, y = x_all[:batch].to(dtype), t_all[:batch], y_all[:batch]

            def forward(impl: str, x=x, t=t, y=y) -> None:
                with torch.inference_mode():
                    predict[impl](x, t, y)

            secs = _time_interleaved({k: partial(forward, k) for k in modules}, device, args.repeats,
                                    CLOCKS[args.clock])
            for impl, module in modules.items():
                peak = float("nan") if args.no_memory else _peak_mib(partial(forward, impl), device, [module])
                rows.append(Row("forward", name, impl, dtype_name, batch, secs[impl] * 1e3,
                                batch / secs[impl], peak))
                print(_fmt(rows[-1]), flush=True)

        if args.train_batch > 0:
            b = args.train_batch
            x, t, y = x_all[:b].to(dtype), t_all[:b], y_all[:b]
            target = torch.randn(x.shape, generator=g).to(device=device, dtype=dtype)
            optims = {}
            for impl, module in modules.items():
                module.train()  # label dropout on, as in training
                optims[impl] = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)

            def train_step(impl: str, n: int = b, x=x, t=t, y=y, target=target, optims=optims) -> None:
                loss = (predict[impl](x[:n], t[:n], y[:n]).float() - target[:n].float()).square().mean()
                optims[impl].zero_grad(set_to_none=True)
                loss.backward()
                optims[impl].step()

            for impl in modules:  # warm-up: allocates the AdamW state
                train_step(impl, n=1)
            secs = _time_interleaved({k: partial(train_step, k) for k in modules}, device, args.repeats,
                                    CLOCKS[args.clock])
            for impl, module in modules.items():
                peak = (float("nan") if args.no_memory
                        else _peak_mib(partial(train_step, impl), device, [module], optims[impl]))
                rows.append(Row("train", name, impl, dtype_name, b, secs[impl] * 1e3, b / secs[impl], peak))
                print(_fmt(rows[-1]), flush=True)
            del optims
    return rows


def _fmt(r: Row) -> str:
    return (f"| {r.kind:7s} | {r.model:8s} | {r.impl:8s} | {r.dtype:8s} | {r.batch:5d} | {r.ms:10.1f} | "
            f"{r.images_s:8.1f} | {r.peak_mib:9.1f} |")


def print_table(rows: list[Row]) -> None:
    print("\n| step    | model    | impl     | dtype    | batch |    time ms | images/s | peak MiB |")
    print("|---------|----------|----------|----------|------:|-----------:|---------:|---------:|")
    for r in rows:
        print(_fmt(r))
    ours = {(r.kind, r.model, r.dtype, r.batch): r.ms for r in rows if r.impl == "ours"}
    base = {(r.kind, r.model, r.dtype, r.batch): r.ms for r in rows if r.impl == "official"}
    common = sorted(set(ours) & set(base))
    if common:
        print("\nspeed-up of ours over the official structure (official time / our time):")
        for key in common:
            print(f"  {key[0]:7s} {key[1]:8s} {key[2]:8s} batch {key[3]:3d}: {base[key] / ours[key]:.2f}x")


FULL = {"models": ["SiT-S/2", "SiT-B/2"], "batch_sizes": [1, 8, 32], "dtypes": ["float32", "bfloat16"],
        "train_batch": 16}
"""The matrix of the issue (``--full``): hours on a shared 2-core CPU without bf16 units, seconds on a GPU."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--full", action="store_true",
                        help=f"the full matrix {FULL} (explicit flags below still override it)")
    parser.add_argument("--models", nargs="+", default=None, choices=sorted(SIT_CONFIGS),
                        help="default SiT-S/2 SiT-B/2")
    parser.add_argument("--sample-size", type=int, default=32)
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=None, help="default 1 8")
    parser.add_argument("--dtypes", nargs="+", default=None, choices=sorted(DTYPES), help="default float32")
    parser.add_argument("--train-batch", type=int, default=None, help="default 4; 0 skips the training step")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed calls per row and implementation, best of (default 1 on CPU, 10 on CUDA)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads; on a loaded shared CPU 1 is often much faster than 2")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default=None,
                        help="wall time, or process CPU time (default: process on CPU, wall on CUDA)")
    parser.add_argument("--no-official", action="store_true", help="time only our implementation")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    args = parser.parse_args(argv)
    quick = {"models": ["SiT-S/2", "SiT-B/2"], "batch_sizes": [1, 8], "dtypes": ["float32"], "train_batch": 4}
    for key, value in (FULL if args.full else quick).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.clock is None:
        args.clock = "wall" if args.device.startswith("cuda") else "process"
    if args.repeats is None:
        args.repeats = 10 if args.device.startswith("cuda") else 1
    return args


def main(argv: list[str] | None = None) -> list[Row]:
    args = parse_args(argv)
    diffusers.utils.logging.set_verbosity_error()  # ModelMixin.to(dtype) warns about fp32 modules it has none of
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    device_name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
    print(f"torch {torch.__version__}, device {device_name}, {torch.get_num_threads()} threads, "
          f"{args.clock} clock, best of {args.repeats}")
    rows = bench(args)
    print_table(rows)
    return rows


if __name__ == "__main__":
    main()
