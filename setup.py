"""Installs the continual-learning and unlearning framework: ``pip install -e .`` (``.[dev]`` for tests and lint)."""

from setuptools import find_packages, setup

setup(
    name="cl-unlearn",
    version="0.1.0",
    description="Continual learning and machine unlearning on task streams: methods, forgetting matrices, unlearning",
    python_requires=">=3.10",
    packages=find_packages(
        include=["cl", "cl.*", "unlearn", "unlearn.*", "kernels", "kernels.*", "experiments", "experiments.*"]
    ),
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "lightning>=2.2",
        "hydra-core>=1.3",
        "timm>=1.0",
        "peft>=0.10",
        "transformers>=4.40",
        "torchmetrics>=1.0",
        "avalanche-lib>=0.6",
        "hydra-submitit-launcher>=1.2",
        "matplotlib>=3.7",
        "scikit-learn>=1.3",
        "rich>=13",
        "pyyaml>=6",
        "pillow>=9",
        "h5py>=3.8",
    ],
    extras_require={
        "dev": ["pytest>=8", "pytest-timeout>=2.2", "ruff>=0.5"],
    },
)
