"""The code a saved SiT repo carries, so that stock diffusers loads it without sit-diffusers installed::

    pipe = DiffusionPipeline.from_pretrained(repo_id_or_folder, trust_remote_code=True)

What diffusers (0.42; ``pipelines/pipeline_loading_utils.py``, ``utils/dynamic_modules_utils.py``) supports for
classes it does not ship, and what follows for the layout:

* ``model_index.json`` names a custom class ``[file, class]``: the pipeline as ``_class_name: [file, class]``,
  read from ``<repo>/<file>.py``; a component as ``<component>: [file, class]``, read from
  ``<repo>/<component>/<file>.py``. Both need ``trust_remote_code=True``. Any other library name (e.g.
  ``["sit_diffusers.modeling_sit", ...]``) is never imported, only looked up in ``sys.modules``: it loads only
  where the caller imported that module first.
* A local file is copied into one flat package, ``diffusers_modules.local``, and run there. The files it
  imports relatively (``from .x import y``; ``from . import x`` is not followed) are copied with it, from its
  own folder, one level deep: not the files *those* import. A file on the Hub is fetched with its relative
  imports, recursively, into the same snapshot.
* Online, a model component's folder yields only the named file, the weights and ``config.json``: files it
  imports relatively would be missing.
* The file named in ``model_index.json`` is run again at every load, so classes defined *in it* are new
  objects each time.
* Offline, once the Hub cache holds the repo's file listing, diffusers still asks the Hub for the commit of
  the pipeline file (``get_cached_module_file`` -> ``model_info``) and fails: load the snapshot folder
  (``snapshot_download(repo_id)``) instead; a cache without the listing (laid out by hand) loads as is.

Hence the layout :func:`save_pretrained_with_code` writes (``SiTPipeline.save_pretrained`` calls it)::

    pipeline.py                       the pipeline's entry: imports each module below directly
    pipeline_sit.py, modeling_sit.py, scheduling_sit.py, interpolants.py, solvers.py, validation.py, ...
                                      the package's modules, byte for byte: every module the pipeline and its
                                      components import, found by reading their relative imports
    transformer/sit_transformer.py    a component's entry: its class, taken from the module pipeline.py loaded
    scheduler/sit_scheduler.py

with ``_class_name: ["pipeline", "SiTPipeline"]``, ``transformer: ["sit_transformer", "SiTTransformer2DModel"]``,
``scheduler: ["sit_scheduler", "SiTSampler"]`` in ``model_index.json`` (a VAE stays ``["diffusers",
"AutoencoderKL"]``) and no ``_name_or_path`` in it or in the components' configs. diffusers resolves the
pipeline class before any component, so the component entries find the modules ``pipeline.py`` imported: the
pipeline and its components share one ``SiTSampler`` class, and ``isinstance`` holds. A stamp, ``EXPORT_ID``
(a hash of the modules' sources), tells the entries whether the modules of these names in
``diffusers_modules.local`` came from this repo; modules of another repo or export are imported afresh.

With sit-diffusers installed, ``SiTPipeline.from_pretrained`` runs none of these files:
:func:`load_with_package_classes` reads their entries as the installed package's classes.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .atomic import write_file_atomically
from .validation import InputError

__all__ = [
    "ENTRY_MODULE",
    "CodeExport",
    "RepoFormatError",
    "check_code_files",
    "component_entry",
    "export_code",
    "load_with_package_classes",
    "read_model_index",
    "save_pretrained_with_code",
    "to_package_index",
]

#: ``<repo>/pipeline.py``: the pipeline's entry (``pipeline.py`` is also the file diffusers always downloads).
ENTRY_MODULE = "pipeline"
INDEX_FILE = "model_index.json"
#: Config files of the components, stripped of ``_name_or_path`` when saved.
COMPONENT_CONFIG_FILES = ("config.json", "scheduler_config.json")
#: Libraries diffusers itself loads components from (``[library, class]`` entries that need no code file).
STOCK_LIBRARIES = ("diffusers", "transformers", "onnxruntime.training")

# diffusers' own test of a relative import (``get_relative_imports``): what it will copy with a file
_DIFFUSERS_RELATIVE_IMPORT = re.compile(r"^\s*(?:from\s+\.(\S+)\s+import|import\s+\.(\S+)\s*$)", re.MULTILINE)


class RepoFormatError(InputError):
    """A saved pipeline folder whose ``model_index.json`` or code files cannot be used; the message names the
    file and the entry, and what it should hold."""


def component_entry(component: str) -> str:
    """The entry module of a component: ``transformer`` -> ``sit_transformer`` (``transformer/sit_transformer.py``).

    Distinct from every module name, since all files share one package in diffusers' module cache."""
    return f"sit_{component}"


#################################################################################
#                        The modules a pipeline needs                           #
#################################################################################


def _package_of(module_name: str) -> str:
    package, _, _ = module_name.rpartition(".")
    if not package:
        raise InputError(f"{module_name!r} is a top-level module; only the modules of a package can be exported")
    return package


def _relative_imports(name: str, source: str, package: str) -> set[str]:
    """The sibling modules ``source`` imports (anywhere, functions included), as diffusers' loader will see them.

    Raises ``InputError`` for an import form the loader does not follow (``from . import x``, ``from ..x``,
    a sub-package) and for an absolute import of the package itself (it is absent where the repo is loaded)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source, filename=f"{name}.py")):
        if isinstance(node, ast.ImportFrom) and node.level:
            where = f"{name}.py line {node.lineno}"
            if node.level > 1 or node.module is None or "." in node.module:
                dots = "." * node.level
                raise InputError(
                    f"{where}: `from {dots}{node.module or ''} import ...` is not followed by diffusers' module "
                    "loader; import a sibling module by name (`from .module import name`)"
                )
            found.add(node.module)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for imported in names:
                if imported == package or imported.startswith(package + "."):
                    raise InputError(
                        f"{name}.py line {node.lineno} imports {imported!r} by its absolute name; a saved repo "
                        f"loads without the package {package!r}: use a relative import"
                    )
    # every name diffusers' line-based test finds must be a real module: it copies each one
    seen = {a or b for a, b in _DIFFUSERS_RELATIVE_IMPORT.findall(source)}
    return found | seen


def module_closure(folder: Path, roots: Iterable[str], package: str) -> dict[str, str]:
    """``{module: source}`` for ``roots`` and every module of ``folder`` they import relatively, transitively."""
    sources: dict[str, str] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in sources:
            continue
        path = folder / f"{name}.py"
        if not path.is_file():
            raise InputError(f"module {package}.{name} (imported relatively) has no file {path}; only modules "
                             "that are single files beside the pipeline's can be exported")
        source = path.read_text(encoding="utf-8")
        sources[name] = source
        todo.extend(sorted(_relative_imports(name, source, package) - set(sources)))
    return dict(sorted(sources.items()))


#################################################################################
#                          The files of an export                               #
#################################################################################


@dataclass(frozen=True)
class CodeExport:
    """The code files of a saved pipeline and the ``model_index.json`` entries that name them.

    Attributes:
        files: ``{relative path: text}``: the modules, ``pipeline.py`` and one entry per component.
        class_name: ``[ENTRY_MODULE, pipeline class]`` for ``_class_name``.
        components: ``{component: [entry module, class]}`` for the components whose class is exported.
        replaces: ``{component: [library, class]}``, the entries diffusers writes for them.
        export_id: hash of the modules' sources (the stamp the entries check).
    """

    files: dict[str, str]
    class_name: list[str]
    components: dict[str, list[str]]
    replaces: dict[str, list[str]]
    export_id: str


def _version(package: str) -> str:
    """The package's version; in a pipeline loaded from exported code, the version that exported it."""
    version = getattr(sys.modules.get(package), "__version__", None)
    version = version or getattr(sys.modules.get(f"{package}.{ENTRY_MODULE}"), "SIT_DIFFUSERS_VERSION", None)
    return str(version or "unknown")


def _pipeline_entry(modules: Mapping[str, str], module: str, class_name: str, export_id: str, version: str) -> str:
    imports = "\n".join(
        f"from .{name} import {class_name}  # noqa: E402" if name == module
        else f"from .{name} import __name__ as _{name}  # noqa: E402"
        for name in modules
    )
    return f'''"""Entry of this repo's code for diffusers: ``DiffusionPipeline.from_pretrained(repo, trust_remote_code=True)``.

Generated by sit-diffusers {version} (sit_diffusers.remote_code) from its modules, which lie beside this file
unchanged; do not edit. diffusers copies into its module cache only the files this file imports relatively,
so it imports each of them.
"""

import sys

SIT_DIFFUSERS_VERSION = "{version}"
EXPORT_ID = "{export_id}"
MODULES = {tuple(modules)!r}

# Modules of these names that another repo (or another export) put in this package earlier in the process are
# imported afresh, so that this repo's classes come from this repo's files.
for _name in MODULES:
    _module = sys.modules.get(f"{{__package__}}.{{_name}}")
    if _module is not None and getattr(_module, "__sit_export_id__", None) != EXPORT_ID:
        del sys.modules[f"{{__package__}}.{{_name}}"]

{imports}

for _name in MODULES:
    sys.modules[f"{{__package__}}.{{_name}}"].__sit_export_id__ = EXPORT_ID
'''


def _component_entry_file(component: str, module: str, class_name: str, export_id: str, version: str) -> str:
    entry = component_entry(component)
    return f'''"""{class_name} for diffusers' custom components: ``model_index.json`` names it ["{entry}", "{class_name}"].

Generated by sit-diffusers {version} (sit_diffusers.remote_code); do not edit. The class is defined in
{module}.py at the repo root, which ../{ENTRY_MODULE}.py imported when diffusers loaded the pipeline class (it
does so before any component): this file takes the class from there, so the pipeline and this component share it.
"""

import sys

EXPORT_ID = "{export_id}"

_module = sys.modules.get(f"{{__package__}}.{module}")
if _module is None or getattr(_module, "__sit_export_id__", None) != EXPORT_ID:
    raise ImportError(
        "{component}/{entry}.py gives the class of the repo's {module}.py, which the repo's {ENTRY_MODULE}.py "
        "loads: load the whole pipeline, DiffusionPipeline.from_pretrained(repo, trust_remote_code=True)"
    )
{class_name} = _module.{class_name}
'''


def export_code(pipeline: Any) -> CodeExport:
    """The code files that let stock diffusers load ``pipeline`` once saved, from the modules that define it.

    The pipeline's module and the modules of its components' classes (those from the same package) are
    exported with every module they import relatively; components of other libraries (a diffusers VAE or
    scheduler) keep diffusers' own entries. Nothing is written.

    Raises:
        InputError: a module imports in a way diffusers' loader cannot follow, or imports the package by its
            absolute name (the saved repo would not load without the package).
    """
    cls = type(pipeline)
    package = _package_of(cls.__module__)
    root = sys.modules[cls.__module__]
    folder = Path(root.__file__).resolve().parent
    roots = [cls.__module__.rpartition(".")[2]]
    components: dict[str, tuple[str, str]] = {}
    replaces: dict[str, list[str]] = {}
    for name, value in pipeline.config.items():
        if name.startswith("_") or not isinstance(value, (list, tuple)) or len(value) != 2:
            continue
        library, class_name = value
        if isinstance(library, str) and library.startswith(package + ".") and library.count(".") == package.count(".") + 1:
            module = library.rpartition(".")[2]
            components[name] = (module, class_name)
            replaces[name] = [library, class_name]
            roots.append(module)
    modules = module_closure(folder, roots, package)
    for entry in (ENTRY_MODULE, *(component_entry(c) for c in components)):
        if entry in modules:
            raise InputError(f"module {package}.{entry} has the name of a generated entry file; rename it")
    digest = hashlib.sha256()
    for name, source in modules.items():
        digest.update(f"{name}\0{len(source)}\0".encode() + source.encode())
    export_id = digest.hexdigest()[:16]
    version = _version(package)
    module = roots[0]
    files = {f"{name}.py": source for name, source in modules.items()}
    files[f"{ENTRY_MODULE}.py"] = _pipeline_entry(modules, module, cls.__name__, export_id, version)
    for component, (comp_module, class_name) in components.items():
        text = _component_entry_file(component, comp_module, class_name, export_id, version)
        files[f"{component}/{component_entry(component)}.py"] = text
    return CodeExport(
        files=files,
        class_name=[ENTRY_MODULE, cls.__name__],
        components={c: [component_entry(c), class_name] for c, (_, class_name) in components.items()},
        replaces=replaces,
        export_id=export_id,
    )


#################################################################################
#                                   Saving                                      #
#################################################################################


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"  # diffusers' own format (ConfigMixin.to_json_string)
    write_file_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_code(folder: str | os.PathLike, export: CodeExport) -> None:
    """Write ``export`` into a folder ``save_pretrained`` just wrote: the code files, the code entries of
    ``model_index.json``, and no ``_name_or_path`` in it or in the components' configs. Each file is
    replaced atomically."""
    folder = Path(folder)
    index = read_model_index(folder)
    for rel, text in export.files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        write_file_atomically(path, lambda tmp, text=text: tmp.write_text(text, encoding="utf-8"))
    index["_class_name"] = list(export.class_name)
    for component, entry in export.components.items():
        if list(index.get(component) or []) == export.replaces[component]:  # not when diffusers could not save it
            index[component] = list(entry)
    _write_json(folder / INDEX_FILE, index)
    strip_load_paths(folder)


def strip_load_paths(folder: str | os.PathLike) -> None:
    """Remove ``_name_or_path`` (where the pipeline was loaded from: a path on the saving machine) from a saved
    folder's ``model_index.json`` and its components' configs; files without it are left untouched."""
    folder = Path(folder)
    index = read_model_index(folder)
    if index.pop("_name_or_path", None) is not None:
        _write_json(folder / INDEX_FILE, index)
    for component in index:
        for config_name in COMPONENT_CONFIG_FILES:
            path = folder / component / config_name
            if not component.startswith("_") and path.is_file():
                config = json.loads(path.read_text(encoding="utf-8"))
                if isinstance(config, dict) and config.pop("_name_or_path", None) is not None:
                    _write_json(path, config)


def save_pretrained_with_code(
    pipeline: Any,
    save: Callable[..., None],
    save_directory: str | os.PathLike,
    *args: Any,
    push_to_hub: bool = False,
    **kwargs: Any,
) -> None:
    """``save(save_directory, *args, **kwargs)`` (diffusers' ``save_pretrained``), then :func:`write_code`.

    The export is planned first, so a pipeline whose code cannot be exported writes nothing. With
    ``push_to_hub`` the folder is uploaded once complete, as diffusers does (``repo_id``, ``token``,
    ``private``, ``commit_message``, ``create_pr``)."""
    export = export_code(pipeline)
    hub = {k: kwargs.pop(k) for k in ("commit_message", "private", "create_pr", "token", "repo_id") if k in kwargs}
    save(save_directory, *args, **kwargs)
    write_code(save_directory, export)
    if push_to_hub:
        from diffusers.utils.hub_utils import load_or_create_model_card, populate_model_card
        from huggingface_hub import create_repo

        token = hub.get("token")
        repo_id = hub.get("repo_id", os.fspath(save_directory).split(os.path.sep)[-1])
        repo_id = create_repo(repo_id, exist_ok=True, private=hub.get("private"), token=token).repo_id
        card = populate_model_card(load_or_create_model_card(repo_id, token=token, is_pipeline=True))
        card.save(os.path.join(save_directory, "README.md"))
        pipeline._upload_folder(save_directory, repo_id, token=token, commit_message=hub.get("commit_message"),
                                create_pr=hub.get("create_pr", False))


#################################################################################
#                       Reading and checking a saved repo                       #
#################################################################################


def read_model_index(folder: str | os.PathLike) -> dict[str, Any]:
    """``<folder>/model_index.json`` as a dict, its shape checked: an object with ``_class_name`` (a class
    name or ``[file, class]``) whose component entries are ``[library or file or null, class or null]``.

    Raises:
        RepoFormatError: no such file, not JSON, or an entry of the wrong shape (naming it).
    """
    path = Path(folder) / INDEX_FILE
    if not path.is_file():
        raise RepoFormatError(f"{path} does not exist, so {Path(folder)} is not a saved diffusers pipeline")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RepoFormatError(f"{path} is not valid JSON ({err}); save the pipeline again or download the repo "
                              "again (force_download=True)") from None
    if not isinstance(index, dict):
        raise RepoFormatError(f"{path} holds a JSON {type(index).__name__}, not an object")
    name = index.get("_class_name")
    is_pair = isinstance(name, list) and len(name) == 2 and all(isinstance(p, str) and p for p in name)
    if not (isinstance(name, str) and name) and not is_pair:
        raise RepoFormatError(f"{path}: _class_name must be the pipeline class name or [file, class], got {name!r}")
    for key, value in index.items():
        if key.startswith("_") or not isinstance(value, list):
            continue
        if len(value) != 2 or not all(p is None or (isinstance(p, str) and p) for p in value) \
                or (value[0] is None) != (value[1] is None):
            raise RepoFormatError(f"{path}: component {key!r} must be [library or code file, class] or "
                                  f"[null, null], got {value!r}")
    return index


def _package_classes(pipeline_cls: type) -> dict[str, type]:
    """Classes defined in the (imported) modules of ``pipeline_cls``'s package, by name."""
    package = _package_of(pipeline_cls.__module__)
    classes: dict[str, type] = {}
    for name, module in list(sys.modules.items()):
        if module is None or name.rpartition(".")[0] != package:
            continue
        for attr, obj in vars(module).items():
            if isinstance(obj, type) and obj.__module__ == name and not attr.startswith("_"):
                classes.setdefault(attr, obj)
    return classes


def to_package_index(index: Mapping[str, Any], pipeline_cls: type, where: str = INDEX_FILE) -> dict[str, Any]:
    """``index`` with its code entries read as the installed package's classes: ``_class_name`` becomes the
    class name and ``["sit_transformer", "SiTTransformer2DModel"]`` becomes ``["sit_diffusers.modeling_sit",
    "SiTTransformer2DModel"]``, which diffusers takes from ``sys.modules`` (no repo code runs). Other entries
    (diffusers' own, ``[null, null]``, the package's module names of older saves) are kept.

    Raises:
        RepoFormatError: the repo holds another pipeline class, or a code entry names a class the installed
            package does not define.
    """
    out = dict(index)
    name = index.get("_class_name")
    class_name = name[1] if isinstance(name, (list, tuple)) and len(name) == 2 else name
    if class_name != pipeline_cls.__name__:
        raise RepoFormatError(f"{where}: the repo holds a {class_name!r} pipeline, not a {pipeline_cls.__name__}")
    out["_class_name"] = pipeline_cls.__name__
    classes = None
    for key, value in index.items():
        if key.startswith("_") or not isinstance(value, (list, tuple)) or len(value) != 2:
            continue
        if value[0] == component_entry(key):
            classes = _package_classes(pipeline_cls) if classes is None else classes
            cls = classes.get(value[1])
            if cls is None:
                raise RepoFormatError(
                    f"{where}: component {key!r} is {value[1]!r} from {key}/{value[0]}.py, a class the installed "
                    f"{_package_of(pipeline_cls.__module__)} does not define; load it with "
                    "DiffusionPipeline.from_pretrained(..., trust_remote_code=True) or upgrade the package"
                )
            out[key] = [cls.__module__, cls.__name__]
    return out


def load_with_package_classes(pipeline_cls: type, folder: str | os.PathLike, **kwargs: Any) -> Any:
    """``DiffusionPipeline.from_pretrained(folder, **kwargs)`` with the classes of the installed package.

    diffusers reads ``model_index.json`` through ``cls.load_config``; a private subclass of ``pipeline_cls``
    answers it with :func:`to_package_index`, so every diffusers option (``torch_dtype``, components to
    replace, ``device_map``, ...) works as usual and no code file of the repo runs. The returned pipeline is
    a ``pipeline_cls``.
    """
    folder = os.fspath(folder)
    read_model_index(folder)  # a clear error for a corrupted index, before diffusers reads it

    class _PackageIndex(pipeline_cls):  # type: ignore[misc, valid-type]
        @classmethod
        def load_config(cls, *args: Any, **kw: Any) -> Any:
            out = super().load_config(*args, **kw)
            if isinstance(out, tuple):
                return (to_package_index(out[0], pipeline_cls), *out[1:])
            return to_package_index(out, pipeline_cls)

    _PackageIndex.__name__ = _PackageIndex.__qualname__ = pipeline_cls.__name__  # as diffusers' messages name it
    pipe = super(pipeline_cls, _PackageIndex).from_pretrained(folder, **kwargs)
    pipe.__class__ = pipeline_cls  # the subclass only answered load_config; it adds no state
    return pipe


def check_code_files(folder: str | os.PathLike, pipeline: Any | None = None) -> list[str]:
    """Check that stock diffusers can load ``folder`` (``trust_remote_code=True``); the code files, sorted.

    Every code entry of ``model_index.json`` has its file, ``pipeline.py`` has every module it imports, and no
    config names the machine it was saved on (``_name_or_path``). With ``pipeline``, the files must also be
    exactly :func:`export_code` of it (the installed package's code, not a stale or edited copy).

    Raises:
        RepoFormatError: naming the first file that is missing, stale or wrong.
    """
    folder = Path(folder)
    index = read_model_index(folder)
    where = folder / INDEX_FILE
    name = index["_class_name"]
    if not isinstance(name, list):
        raise RepoFormatError(f"{where}: _class_name is {name!r}, which stock diffusers looks up in the diffusers "
                              f"package; save the pipeline again to write [\"{ENTRY_MODULE}\", {name!r}] and its code")
    needed = [f"{name[0]}.py"]
    for key, value in index.items():
        if key.startswith("_") or not isinstance(value, list) or value[0] is None:
            continue
        if value[0] not in STOCK_LIBRARIES:
            needed.append(f"{key}/{value[0]}.py")
    entry = folder / needed[0]
    if entry.is_file():
        needed += sorted(f"{a or b}.py" for a, b in _DIFFUSERS_RELATIVE_IMPORT.findall(entry.read_text("utf-8")))
    missing = [rel for rel in needed if not (folder / rel).is_file()]
    if missing:
        raise RepoFormatError(f"{folder} lacks the code file{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                              "that stock diffusers loads it with; save the pipeline again with SiTPipeline."
                              "save_pretrained")
    for rel in [INDEX_FILE, *(f"{k}/{c}" for k in index if not k.startswith("_") for c in COMPONENT_CONFIG_FILES)]:
        path = folder / rel
        if path.is_file() and "_name_or_path" in json.loads(path.read_text(encoding="utf-8")):
            raise RepoFormatError(f"{path} holds _name_or_path (where it was loaded from on the saving machine)")
    if pipeline is not None:
        export = export_code(pipeline)
        for rel, text in export.files.items():
            path = folder / rel
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                raise RepoFormatError(f"{folder / rel} is not the code of the installed package "
                                      f"({_package_of(type(pipeline).__module__)}); save the pipeline again")
        needed = sorted(set(needed) | set(export.files))
    return sorted(set(needed))
