"""Installs the continual-learning and unlearning framework: ``pip install -e .`` (``.[dev]`` for tests and lint,
``.[trackers]`` for logger=wandb / logger=mlflow)."""

import os

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py


class BuildPyWithPackageFiles(build_py):
    """Copies conf/ and assets/ into the built package as cl/_package/ (cl.resolvers.package_dir finds them), so
    that a non-editable install runs the same configs and committed weights from any working directory."""

    def run(self) -> None:
        super().run()
        if not self.dry_run:
            for name in ("conf", "assets"):
                self.copy_tree(name, os.path.join(self.build_lib, "cl", "_package", name))


setup(
    name="cl-unlearn",
    version="0.1.0",
    description="Continual learning and machine unlearning on task streams: methods, forgetting matrices, unlearning",
    python_requires=">=3.10",
    cmdclass={"build_py": BuildPyWithPackageFiles},
    packages=find_packages(
        include=["cl", "cl.*", "unlearn", "unlearn.*", "kernels", "kernels.*", "experiments", "experiments.*"]
    ),
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "lightning>=2.2",
        "hydra-core>=1.3",
        "timm>=1.0",
        "safetensors>=0.4",  # the unlearning importance cache (unlearn/importance.py); timm needs it too
        "peft>=0.10",
        # <5.25: transformers 5.25 requires Hugging Face's `kernels` distribution, whose import name is this
        # project's top-level `kernels` package: transformers then imports ours at start-up and fails (ImportError
        # CUDAProperties). Lift the cap once the names no longer clash.
        "transformers>=4.40,<5.25",
        "torchmetrics>=1.0",
        "avalanche-lib>=0.6",
        "hydra-submitit-launcher>=1.2",
        "matplotlib>=3.7",
        "scikit-learn>=1.3",
        "rich>=13",
        "pyyaml>=6",
        "pillow>=9",
        "h5py>=3.8",
        # builds kernels/csrc (RegLoRA's fused CPU penalty, kernels/key_penalty.py) on first use
        "ninja>=1.11",
    ],
    package_data={"kernels": ["csrc/*.cpp"]},
    extras_require={
        "dev": ["pytest>=8", "pytest-timeout>=2.2", "ruff>=0.5"],
        # logger=wandb / logger=mlflow (cl/loggers.py); CI installs them (Makefile: .[dev,trackers])
        "trackers": ["wandb>=0.16", "mlflow-skinny>=2.10"],
    },
)
