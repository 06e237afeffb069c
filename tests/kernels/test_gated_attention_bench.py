"""experiments/bench/gated_attention.py reads the trained gates of a GCAB checkpoint as GCAB evaluates them (old tokens
binarised, the newest soft) and times inference with them on a small shape."""

from __future__ import annotations

import torch

from cl.engine.checkpoint import save_checkpoint
from experiments.bench import gated_attention
from tests.methods.gcab_helpers import fit, tiny_gcab, tiny_stream


def test_trained_gates_of_a_gcab_checkpoint(tmp_path):
    s = tiny_stream()
    m = tiny_gcab(s)
    for e in s.experiences[:2]:
        fit(m, e, steps=1)
    path = tmp_path / "task_1.ckpt"
    save_checkpoint(path, {"state_dict": m.state_dict()})
    gates = gated_attention.trained_gates(str(path))
    assert gates.shape == (2, m.e0[0].numel())  # the experiences trained so far, not all the allocated ones
    torch.testing.assert_close(gates[0], (m.e0[0].detach() > 0).float())
    torch.testing.assert_close(gates[1], torch.sigmoid(800.0 * m.e0[1].detach()))
    out = gated_attention.main(["--masks", str(path), "--batch", "2", "--tokens", "4", "--heads", "2", "--rounds", "1"])
    assert out["old_mask_density"] == float(gates[0].mean())
    assert out["ratio_infer_gated_over_T_ungated"] > 0
