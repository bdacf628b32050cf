"""``tiler train``: the paper's two stages, trained on random windows of rasters of any size.

1. the first stage, a VQ autoencoder (diffusers ``VQModel``, f = 4), trained once and frozen;
2. the latent UNet (diffusers ``UNet2DModel``) with concat conditioning: the low-resolution image
   (super-resolution) or the masked image's latent ++ the mask (inpainting).

Modules: ``data`` (rasters -> random normalised windows, never whole rasters in memory; held-out
areas never read), ``degrade`` (4x4 area averaging as a sensor integrates, blur, noise; cloud-like
masks), ``architectures`` (model configs), ``objectives`` (the loss of each stage), ``loop`` (AdamW,
EMA, budget in steps or minutes, checkpoints a re-run resumes from), ``export`` (the model folder
``tiler upscale/inpaint --model`` loads, with its card). ``train`` below runs them in order.
"""

from tiler.train.options import TrainOptions
from tiler.train.run import train

__all__ = ["TrainOptions", "train"]
