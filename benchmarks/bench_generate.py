"""Wall time of ``sit-generate --out samples.png`` (the embedded digits model), before and after the light path.

Each run is a fresh process (imports included), exactly as a user types it, in an empty temporary folder;
"before" adds ``--full-pipeline`` (the diffusers ``SiTPipeline``, the only path before issue 15), "after" is
the default (``sit_diffusers.light``: torch only for a saved pixel-space folder). Then one
``python -X importtime`` run of each prints where the import time goes (the top-level modules by cumulative
time). Both paths write the same PNG bytes; the script checks it.

    python benchmarks/bench_generate.py --repeats 5

Times on a shared machine are noisy: report the minimum (the least disturbed run) and the median, and the
load average printed with them.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from sit_diffusers.validation import InputError, run_cli

PROG = "bench_generate.py"
MODES = {"before (--full-pipeline)": ["--full-pipeline"], "after (light path)": []}


def _command() -> list[str]:
    """``sit-generate`` as installed (the console script), else ``python -m sit_diffusers.cli``."""
    script = shutil.which("sit-generate", path=os.path.dirname(sys.executable)) or shutil.which("sit-generate")
    return [script] if script else [sys.executable, "-m", "sit_diffusers.cli"]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_runs(extra: list[str], repeats: int, folder: Path, env: dict[str, str]) -> tuple[list[float], list[float], bytes]:
    """Wall and CPU (user + system) seconds of ``repeats`` runs of ``sit-generate --out samples.png`` + ``extra``
    in ``folder``, and the PNG of the last run. CPU time is what a quiet machine would not add to: on a busy
    one the wall time also counts the waits for a core."""
    walls, cpus = [], []
    out = folder / "samples.png"
    for _ in range(repeats):
        out.unlink(missing_ok=True)
        cpu, start = _children_cpu(), time.perf_counter()
        done = subprocess.run(_command() + ["--out", "samples.png", *extra], cwd=folder, capture_output=True,
                              text=True, env=env)
        walls.append(time.perf_counter() - start)
        cpus.append(_children_cpu() - cpu)
        if done.returncode != 0:
            raise RuntimeError(f"sit-generate {' '.join(extra)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return walls, cpus, out.read_bytes()


def import_breakdown(extra: list[str], folder: Path, top: int, env: dict[str, str]) -> tuple[float, list[tuple[str, float]]]:
    """``python -X importtime`` of one in-process run: total import seconds and the ``top`` packages by the
    import time of their own modules (the ``self`` column summed per top-level package: torch, diffusers,
    transformers, PIL, ...; the rows add up to the total)."""
    code = ("from sit_diffusers.cli import main\n"
            f"raise SystemExit(main(['--out', 'samples.png', '--overwrite', '--quiet', *{extra!r}]))\n")
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", code], cwd=folder, capture_output=True,
                          text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"importtime run failed: {done.stderr[-2000:]}")
    per_package: dict[str, float] = {}
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or line.count("|") != 2:
            continue
        own, _, name = line.removeprefix("import time:").split("|")
        if not own.strip().isdigit():  # the header
            continue
        package = name.strip().split(".")[0]
        per_package[package] = per_package.get(package, 0.0) + int(own) / 1e6
    rows = sorted(per_package.items(), key=lambda r: -r[1])
    return sum(per_package.values()), rows[:top]


def _positive(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be in [1, 100], got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--repeats", type=_positive, default=5, help="runs per mode (default 5)")
    parser.add_argument("--top", type=_positive, default=8, help="top-level imports listed per mode (default 8)")
    parser.add_argument("--threads", type=_positive, default=None,
                        help="OMP_NUM_THREADS of the runs (default: unset, torch's choice: one per core)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return parser


def _bench(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    env = dict(os.environ)
    if args.threads is not None:
        env["OMP_NUM_THREADS"] = str(args.threads)
    load = os.getloadavg()
    threads = "unset" if args.threads is None else args.threads
    print(f"# sit-generate --out samples.png, embedded model; {args.repeats} runs per mode; {os.cpu_count()} CPUs, "
          f"OMP_NUM_THREADS {threads}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start "
          "(shared machine: noisy, read the min)\n")
    print("| mode | wall min s | wall median s | CPU min s | wall s of each run |")
    print("|---|---:|---:|---:|---|")
    pngs, imports = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode, extra in MODES.items():
            folder = Path(tmp) / str(len(pngs))
            folder.mkdir()
            walls, cpus, pngs[mode] = time_runs(extra, args.repeats, folder, env)
            imports[mode] = import_breakdown(extra, folder, args.top, env)
            runs = ", ".join(f"{t:.2f}" for t in walls)
            print(f"| {mode} | {min(walls):.2f} | {statistics.median(walls):.2f} | {min(cpus):.2f} | {runs} |")
    if len(set(pngs.values())) != 1:
        raise InputError("the two paths wrote different PNGs: the light path is broken")
    print("\nsame PNG bytes from both paths: yes")
    for mode, (total, rows) in imports.items():
        print(f"\n## imports, {mode}: {total:.2f} s in all (python -X importtime, one run)\n")
        print("| package | import s (its own modules) |")
        print("|---|---:|")
        for name, seconds in rows:
            print(f"| {name} | {seconds:.3f} |")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(PROG, _bench, argv)


if __name__ == "__main__":
    raise SystemExit(main())
