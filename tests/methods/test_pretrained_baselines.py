"""SimpleCIL and the linear probe: the training-free and head-only baselines of pre-trained backbones (issue 20)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cl.data.stream import Experience
from cl.engine.loop import StreamRunner
from cl.experiment import build
from cl.methods.simplecil import SimpleCIL


class _Features(nn.Module):
    """A fixed 'backbone': phi(x) = x W (no parameter trained)."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.num_features = w.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w


def _reference_simplecil(phi: nn.Module, xs: torch.Tensor, ys: torch.Tensor, x_test: torch.Tensor, n_classes: int):
    """The reference algorithm written out (RevisitingCIL models/simplecil.py replace_fc + inc_net CosineLinear):
    weight[c] = mean of embeddings of class c; logits = sigma * linear(normalize(x), normalize(weight)), sigma 1."""
    weight = torch.zeros(n_classes, phi.num_features, dtype=torch.float64)
    with torch.no_grad():
        emb = phi(xs).double()
        for c in torch.unique(ys).tolist():
            weight[c] = emb[ys == c].mean(0)
        return F.linear(F.normalize(phi(x_test).double(), p=2, dim=1), F.normalize(weight, p=2, dim=1))


def test_simplecil_equals_the_reference_algorithm_on_the_same_weights() -> None:
    gen = torch.Generator().manual_seed(0)
    phi = _Features(torch.randn(5, 4, generator=gen))
    method = SimpleCIL(phi, num_classes=6, optimizer=None)
    x = torch.randn(40, 5, generator=gen)
    y = torch.randint(0, 6, (40,), generator=gen)
    y[:6] = torch.arange(6)  # every class present
    experiences = [(0, [0, 1, 2]), (1, [3, 4, 5])]
    seen_x, seen_y = [], []
    for t, classes in experiences:
        keep = torch.isin(y, torch.tensor(classes))
        train = TensorDataset(x[keep], y[keep])
        exp = Experience(index=t, classes=classes, task_label=t, train=train, test=train)
        method.on_experience_start(exp)
        method.on_experience_end(exp, lambda ds: DataLoader(ds, batch_size=7, shuffle=False))
        seen_x.append(x[keep])
        seen_y.append(y[keep])
        x_test = torch.randn(9, 5, generator=gen)
        ref = _reference_simplecil(phi, torch.cat(seen_x), torch.cat(seen_y), x_test, 6)
        ours = method.eval_logits(x_test).double()
        seen = method.seen_classes
        assert torch.allclose(ours[:, seen], ref[:, seen], atol=1e-6)
        assert torch.equal(ours.argmax(1) if bool(seen.all()) else ours[:, seen].argmax(1), ref[:, seen].argmax(1))
    # a hand-computed prototype: class 0's row is the mean of its embeddings
    assert torch.allclose(method.head.weight[0], phi(x[y == 0]).mean(0).detach(), atol=1e-6)
    assert method.extra_train_flops() == 2 * 40 * 5 * 4  # one (B,5)x(5,4) matmul per sample, both experiences
    assert method.trainable_parameters() == []


def test_simplecil_runs_a_stream_without_fit_and_keeps_old_prototypes(make_cfg, tmp_path) -> None:
    cfg = make_cfg("method=simplecil", "backbone=vit_tiny", "scenario.n_experiences=5")
    stream, model = build(cfg)
    runner = StreamRunner(cfg, model, stream, tmp_path / "run")
    model.setup_stream(stream)
    backbone = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    runner.run_experience(0)
    rows = model.head.weight[torch.tensor(stream.experiences[0].classes)].clone()
    assert bool((rows.norm(dim=1) > 0).all())
    metrics = runner.run_experience(1)
    assert torch.equal(model.head.weight[torch.tensor(stream.experiences[0].classes)], rows)  # never updated again
    assert all(torch.equal(v, backbone[k]) for k, v in model.backbone.state_dict().items())
    assert runner.last_trainer.optimizers == []  # no fit ran
    assert metrics["flops"] > 0 and metrics["params_updated"] == 0
    assert 0.0 < runner.R[1, 1] <= 1.0 and np.all(runner.R[1, 2:] == 0.0)


def test_linear_probe_trains_the_head_only_and_masks_past_classes(make_cfg, tmp_path) -> None:
    cfg = make_cfg("method=linear_probe", "backbone=vit_tiny", "scenario.n_experiences=5")
    stream, model = build(cfg)
    runner = StreamRunner(cfg, model, stream, tmp_path / "run")
    model.setup_stream(stream)
    backbone = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    runner.run_experience(0)
    past = torch.tensor(stream.experiences[0].classes)
    rows, bias = model.head.weight[past].clone(), model.head.bias[past].clone()
    runner.run_experience(1)
    # CE over the current experience's classes only: the past classes' rows get no gradient (fresh Adam, no decay)
    assert torch.equal(model.head.weight[past], rows) and torch.equal(model.head.bias[past], bias)
    new = torch.tensor(stream.experiences[1].classes)
    assert bool((model.head.weight[new] != 0).any())
    assert all(torch.equal(v, backbone[k]) for k, v in model.backbone.state_dict().items())
    assert [id(p) for p in model.trainable_parameters()] == [id(model.head.weight), id(model.head.bias)]
    assert 0.0 < runner.R[1, 1] <= 1.0
