"""Checks at the door: every entry point validates what it is given before any work starts.

One place for the rules every API and CLI shares, so that a bad value always gets the same kind of
message: the name of the argument (or flag), the value given, and what is allowed.

* :class:`InputError` (a ``ValueError``): the caller gave something unusable. CLIs exit 2 on it, with one
  line and no traceback (:func:`run_cli`).
* :class:`NonFiniteError` (a ``FloatingPointError``): a computation produced NaN/inf; the message names
  where and the likely cause. CLIs exit 1 on it, having written nothing.
* ``check_*``: each returns the value converted to its canonical type, or raises :class:`InputError`.
"""

from __future__ import annotations

import argparse
import difflib
import math
import numbers
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch

__all__ = [
    "InputError",
    "NonFiniteError",
    "check_int",
    "check_float",
    "check_choice",
    "check_seed",
    "check_device",
    "check_finite_tensor",
    "check_writable_dir",
    "run_cli",
]

#: Seeds ``torch.Generator.manual_seed`` takes without wrapping: ``[0, 2**64)``; negatives are refused.
MAX_SEED = 2**64 - 1


class InputError(ValueError):
    """A value given by the user that cannot be used; the message names it and what is allowed."""


class NonFiniteError(FloatingPointError):
    """A tensor that must be finite holds NaN or inf; the message names it and the likely cause."""


def check_int(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an ``int`` in ``[minimum, maximum]``; a bool, a float (even ``3.0``: ``2.7`` must not be
    truncated silently), a string or ``None`` is refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point() \
                and value.dtype != torch.bool:
            value = int(value.item())
        else:
            raise InputError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise InputError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise InputError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_float(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    min_inclusive: bool = True,
    max_inclusive: bool = True,
) -> float:
    """``value`` as a finite ``float`` in the interval given (open or closed at each end).

    Refuses bools, strings, ``None``, NaN and +-inf, and tensors of more than one element."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise InputError(f"{name} must be finite, got {value}")
    if minimum is not None and (value < minimum or (not min_inclusive and value == minimum)):
        op = ">=" if min_inclusive else ">"
        raise InputError(f"{name} must be {op} {minimum}, got {value}")
    if maximum is not None and (value > maximum or (not max_inclusive and value == maximum)):
        op = "<=" if max_inclusive else "<"
        raise InputError(f"{name} must be {op} {maximum}, got {value}")
    return value


def check_choice(name: str, value: Any, choices: Iterable[str], *, key: Callable[[str], str] | None = None) -> str:
    """``value`` if it is one of ``choices`` (compared through ``key``, e.g. ``str.lower``, which then gives
    the canonical form returned), else an error listing them and the closest one, if any."""
    valid = list(choices)
    if isinstance(value, str) and (key(value) if key else value) in valid:
        return key(value) if key else value
    close = difflib.get_close_matches(key(value) if key else value, valid, n=1) if isinstance(value, str) else []
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise InputError(f"unknown {name} {value!r}; valid: {', '.join(valid)}{hint}")


def check_seed(name: str, value: Any) -> int:
    """A seed for ``torch.Generator.manual_seed``: an integer in ``[0, 2**64 - 1]``."""
    return check_int(name, value, minimum=0, maximum=MAX_SEED)


def check_device(name: str, value: Any) -> torch.device:
    """A ``torch.device`` that exists on this machine (``cpu``, ``cuda[:i]``, ``mps``, ...)."""
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError) as err:
        raise InputError(f"{name} {value!r} is not a torch device (e.g. cpu, cuda, cuda:1, mps)") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"{name} {value!r}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(
                f"{name} {value!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif device.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise InputError(f"{name} {value!r}: MPS is not available on this machine")
    elif device.type not in ("cpu", "meta"):
        available = getattr(torch, device.type, None)
        if available is None or not getattr(available, "is_available", lambda: False)():
            raise InputError(f"{name} {value!r}: no {device.type} device on this machine")
    if device.type == "meta":
        raise InputError(f"{name} 'meta' holds no data; use cpu, cuda or mps")
    return device


def check_finite_tensor(
    name: str, tensor: torch.Tensor, cause: str = "", error: type[Exception] = NonFiniteError
) -> torch.Tensor:
    """Raise ``error`` (:class:`NonFiniteError`; :class:`InputError` for a tensor the user gave) when
    ``tensor`` holds NaN or inf (one device sync); return it.

    ``cause`` is appended to the message: what most likely produced the bad values."""
    if tensor.is_floating_point() or tensor.is_complex():
        bad = ~torch.isfinite(tensor)
        if bool(bad.any()):
            count = int(bad.sum())
            rows = bad.reshape(bad.shape[0], -1).any(dim=1).nonzero().flatten().tolist() if tensor.ndim > 1 else []
            where = f" (in sample(s) {rows[:8]}{'...' if len(rows) > 8 else ''})" if rows else ""
            raise error(
                f"{name} holds {count} non-finite value(s) (NaN/inf) of {tensor.numel()}{where}"
                + (f"; {cause}" if cause else "")
            )
    return tensor


def check_writable_dir(name: str, path: str | os.PathLike, given: str | os.PathLike | None = None) -> Path:
    """The folder ``path`` (created later if missing) can be written: its nearest existing ancestor is a
    writable directory and no part of it is an existing file. Nothing is created. Messages name ``given``
    (what the user typed, e.g. an output file inside ``path``), else ``path``."""
    path = Path(path)
    shown = str(path if given is None else given)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise InputError(f"{name} {shown!r}: {str(probe)!r} exists and is not a folder (it is a file, so no "
                         "folder can be made under it)")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"{name} {shown!r}: {str(probe)!r} is not writable (permission denied)")
    return path


class CLIParser(argparse.ArgumentParser):
    """argparse whose errors (unknown flag, missing value, bad type) raise :attr:`error_class` (an
    :class:`InputError`: one line through :func:`run_cli`, exit 2) instead of printing usage and exiting."""

    error_class: type[InputError] = InputError

    def error(self, message: str) -> NoReturn:
        raise self.error_class(message)


def run_cli(
    prog: str,
    main: Callable[[Sequence[str]], int | None],
    argv: Sequence[str] | None = None,
    user_errors: tuple[type[BaseException], ...] = (),
) -> int:
    """Run a CLI body ``main(argv)`` and turn expected failures into one line on stderr and an exit code.

    * :class:`InputError` and ``user_errors`` (bad flags, files, data): ``prog: error: ...``, status 2;
    * :class:`NonFiniteError`: ``prog: error: ...``, status 1 (the body must not have written output);
    * ``KeyboardInterrupt``: ``prog: interrupted``, status 130.
    * ``BrokenPipeError`` (its output piped into a reader that stopped, e.g. ``| head``): quiet, status 141 as a
      shell reports SIGPIPE; the rest of the output goes to the null device.

    Anything else is a bug and keeps its traceback. ``--debug`` in ``argv`` re-raises every error with its
    traceback (the CLI's parser declares the flag so that ``--help`` lists it).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        status = main(argv)
    except SystemExit:
        raise
    except (InputError, *user_errors) as err:
        if debug:
            traceback.print_exc()
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except NonFiniteError as err:
        if debug:
            traceback.print_exc()
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        if debug:
            raise
        try:  # Python flushes stdout again at exit, which would raise once more
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
    return 0 if status is None else int(status)
