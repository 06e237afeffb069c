"""Kernel tests: without CUDA, Triton kernels run on CPU tensors through the interpreter (set before triton is
imported); with CUDA the interpreter stays off and the `gpu` tests exercise the compiled kernels."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
