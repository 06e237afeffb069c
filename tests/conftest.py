"""Shared fixtures: compose the real configs with ``hydra.compose`` and shrink them for CPU tests.

``import avalanche`` writes ``~/.avalanche``: HOME points at a temporary folder for the whole test session.
"""

from __future__ import annotations

import os
import tempfile

os.environ["HOME"] = tempfile.mkdtemp(prefix="cl-test-home-")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Triton reads TRITON_INTERPRET when it is first imported (any test may import it first): on a machine without a GPU
# the fused kernels run through Triton's interpreter on CPU tensors.
if not os.path.exists("/dev/nvidia0") and not os.environ.get("CUDA_VISIBLE_DEVICES"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from tests.helpers import compose_config  # noqa: E402


@pytest.fixture
def make_cfg(tmp_path):
    """``make_cfg(*overrides, run_dir=None)``: the composed, shrunk config with Hydra's run dir set (default tmp)."""

    def _make(*overrides: str, run_dir=None, shrink: bool = True):
        return compose_config(list(overrides), run_dir or tmp_path / "run", shrink=shrink)

    return _make
