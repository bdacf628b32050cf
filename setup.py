from setuptools import find_packages, setup

setup(
    name="ldm-tiler",
    version="0.1.0",
    description=(
        "Latent Diffusion Model tasks (super-resolution, inpainting, synthesis) "
        "on rasters of any size"
    ),
    packages=find_packages(include=["tiler", "tiler.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.1,<3",
        "numpy>=1.24",
        "rasterio>=1.3",
        "zarr>=3.0",
        "click>=8.1",
        "pydantic>=2.12",  # Field(exclude_if=...)
        "tqdm>=4.60",
        "affine>=2.4",
        "threadpoolctl>=3.1",
        "diffusers>=0.30",
        "transformers>=4.56",  # CLIP text encoders of text-conditioned models
        "huggingface_hub>=0.25",
        "safetensors>=0.4",
        "scipy>=1.10",  # diffusers' LMS sampler
        "dask[distributed]>=2024.1",
        "pyyaml>=6",
        "pyproj>=3.3",  # CF grid-mapping attributes of Zarr outputs
    ],
    extras_require={
        "test": [
            "pytest>=7",
            "ruff>=0.6",
            "hypothesis>=6",
            "xarray>=2024.1",
            "rioxarray>=0.15",
            "moto[server]>=5",
        ],
        "dashboard": ["bokeh>=3.1"],
        "slurm": ["dask-jobqueue>=0.8"],
        "pbs": ["dask-jobqueue>=0.8"],
        "kubernetes": ["dask-kubernetes>=2024.1"],
    },
    entry_points={"console_scripts": ["tiler=tiler.cli:main"]},
)
