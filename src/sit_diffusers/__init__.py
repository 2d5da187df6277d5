"""sit-diffusers: SiT (Scalable Interpolant Transformers, Ma et al. 2024, arXiv 2401.08740) for diffusers.

Time convention everywhere in this package (as the official code): t in [0, 1], t=0 is Gaussian noise,
t=1 is data, ``x_t = alpha_t * x_data + sigma_t * noise``.
"""

__version__ = "0.1.0"
