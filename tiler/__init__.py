"""tiler: Latent Diffusion Model tasks on rasters of any size, seamlessly.

The Python API (tiler/api.py) is here: ``tiler.upscale``, ``tiler.inpaint``, ``tiler.synthesize``,
``tiler.export``, ``tiler.plan``, ``tiler.qa``, ``tiler.run_workflow``, loaded on first use so that
``import tiler`` stays light.
"""

from tiler.errors import TilerError

__version__ = "0.1.0"
API = ("Result", "upscale", "inpaint", "synthesize", "export", "plan", "qa", "run_workflow")
__all__ = ["TilerError", "__version__", *API]


def __getattr__(name: str):
    if name in API:
        from tiler import api

        return getattr(api, name)
    raise AttributeError(f"module 'tiler' has no attribute {name!r}")
