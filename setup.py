"""ferfuse: one import namespace over the top-level folders of the repository.

The design card keeps `kernels/`, `engine/` and `models/` at the top level; installed they are
`ferfuse.kernels`, `ferfuse.engine` and `ferfuse.models`. Nothing installs a bare `engine`,
`kernels` or `models` package.
"""
from setuptools import setup

PACKAGES = {
    "ferfuse": "ferfuse",
    "ferfuse.kernels": "kernels",
    "ferfuse.engine": "engine",
    "ferfuse.engine.patterns": "engine/patterns",
    "ferfuse.models": "models",
    "ferfuse.bench": "bench",
    "ferfuse.pipeline": "pipeline",
}

setup(
    name="ferfuse",
    version="0.1.0",
    description="Fused inference for multi-head-attention facial-expression-recognition networks",
    python_requires=">=3.10",
    packages=list(PACKAGES),
    package_dir=PACKAGES,
    package_data={"ferfuse.engine": ["winograd.c", "depthwise.c", "pointwise.c", "sigmoid.h"]},  # C kernels, compiled on first use (engine/native.py)
    # Lower bounds only: GPU machines run torch 2.11 / triton 3.6, development machines 2.14.1.
    # OpenCV 4.x: the 5.x wheels dropped the Haar cascades the face detector uses
    install_requires=["torch>=2.4", "torchvision>=0.19", "numpy", "opencv-python-headless>=4.8,<5", "pillow",
                      "tqdm", "matplotlib"],
    extras_require={
        "dev": [
            "pytest",
            "pytest-benchmark",
            "hypothesis",
            "fvcore",
            "onnx",
            "onnxruntime",
            "onnxscript",
            "scikit-image",  # its bundled photographs test the face pipeline
            "ray[data]>=2.50",  # the Ray engine's tests run on a local cluster
        ],
        "ray": ["ray[data]>=2.50"],  # ferfuse predict --engine ray
    },
    entry_points={"console_scripts": ["ferfuse=ferfuse.cli:main"]},
)
