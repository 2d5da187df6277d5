"""Atomic writes: a file or a folder appears complete at its final path, or not at all.

Everything the package's CLIs write (images, ``.npz`` files, weights, converted repos) goes through the two
writers here, so a failure half-way (a full disk, a bug, Ctrl-C) never leaves a truncated file or a
half-filled folder behind, and never damages what was there before; :func:`check_output_folder` says up front whether a folder may be
written (or replaced) at all.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from .validation import InputError, check_writable_dir

__all__ = ["write_file_atomically", "write_folder_atomically", "check_output_folder"]


def _tag() -> str:
    return f"{os.getpid()}-{secrets.token_hex(4)}"


def write_file_atomically(path: str | os.PathLike, write: Callable[[Path], None], suffix: str = "") -> Path:
    """Run ``write(tmp)`` on a temporary file beside ``path`` (named ``.<name>.<tag>.tmp<suffix>``: keep
    ``suffix`` when the writer insists on an extension, e.g. ``np.savez`` and ``".npz"``), then rename it to
    ``path``. On any failure the temporary file is removed and an existing ``path`` is left as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{_tag()}.tmp{suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_folder_atomically(output: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp)`` on a new folder beside ``output``, then put that folder in place of ``output``.

    On any failure (or Ctrl-C) the temporary folder and any parent folder made for it are removed, and an
    existing ``output`` is left as it was; once the new folder is in place the replaced one is deleted.
    """
    output = Path(output)
    made = [p for p in (output.parent, *output.parent.parents) if not p.exists()]  # deepest first
    output.parent.mkdir(parents=True, exist_ok=True)
    tag = _tag()
    tmp = output.parent / f".{output.name}.partial-{tag}"
    old = None
    try:
        tmp.mkdir()
        write(tmp)
        if output.exists() or output.is_symlink():  # an empty folder, or an overwrite the caller allowed
            old = output.parent / f".{output.name}.old-{tag}"
            output.rename(old)
            try:
                tmp.rename(output)
            except BaseException:
                old.rename(output)
                raise
        else:
            tmp.rename(output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in made:
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    if old is not None:  # the new output is in place: drop the replaced one
        if old.is_symlink():
            old.unlink()
        else:
            shutil.rmtree(old)
    return output


def check_output_folder(
    folder: str | os.PathLike,
    overwrite: bool = False,
    keep: Sequence[str | os.PathLike | None] = (),
    name: str = "out_dir",
    overwrite_name: str = "overwrite=True",
) -> Path:
    """The folder :func:`write_folder_atomically` will write, absolute: new, an empty folder, or
    (``overwrite``) a folder holding none of ``keep`` (the inputs) nor the current folder; its nearest
    existing parent writable. Nothing is created. ``name`` / ``overwrite_name`` are how messages call the
    folder and the overwrite switch (a CLI passes its flags, e.g. ``--output`` / ``--overwrite``)."""
    text = os.fspath(folder)
    if text in ("", "."):
        raise InputError(f"{name} {text!r} is the current folder; give a new folder to write")
    out = Path(text).expanduser().absolute()
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise InputError(f"{name} {text!r} is an existing file, not a folder; give another folder")
        entries = len(os.listdir(out))
        if entries and not overwrite:
            raise InputError(
                f"{name} {text!r} is a folder that is not empty ({entries} "
                f"{'entry' if entries == 1 else 'entries'}); pass {overwrite_name} to replace it (once the new "
                "one is complete), or give another folder"
            )
        real = out.resolve()
        inputs = [Path(os.fspath(k)).expanduser().resolve() for k in keep if k is not None and os.fspath(k)]
        for inside in (Path.cwd().resolve(), *inputs):
            if inside == real or real in inside.parents:
                raise InputError(f"{name} {text!r} holds {str(inside)!r} (an input or the current folder); "
                                 "refusing to replace it: give another folder")
    check_writable_dir(name, out.parent, text)
    return out
