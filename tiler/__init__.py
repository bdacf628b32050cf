"""tiler: Latent Diffusion Model tasks on rasters of any size, seamlessly."""

from tiler.errors import TilerError

__version__ = "0.1.0"
__all__ = ["TilerError", "__version__"]
