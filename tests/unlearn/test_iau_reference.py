"""IAU against a transcription of the reference code's unlearning step (github Lolo1222/IAU ``IAU_unlearn.py``) on
the reference's own model (``train_model.py``'s LeNet-5 ``CNN``), same weights, same data: the default IAU (one fresh
Adam step, lr 1e-3, gradients accumulated over mini-batches) must give the reference's full-batch result."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from unlearn.methods.iau import GRIDS, IAU


class LeNet5(nn.Module):
    """The reference's CNN: conv 3->6 k5, pool, conv 6->16 k5, pool, FC 400->120->84->10, ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 6, 5), nn.Conv2d(6, 16, 5)
        self.pool, self.relu = nn.MaxPool2d(2, 2), nn.ReLU()
        self.fc1, self.fc2, self.fc3 = nn.Linear(400, 120), nn.Linear(120, 84), nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.conv1(x)))
        x = self.pool(self.relu(self.conv2(x)))
        x = self.relu(self.fc1(x.view(-1, 400)))
        return self.fc3(self.relu(self.fc2(x)))


def reference_unlearn(model: nn.Module, remain: TensorDataset, unlearn: TensorDataset, lr: float) -> None:
    """``IAU_unlearn.py`` lines 'unlearn_loader = ...' to 'optimizer.step()', transcribed (train mode, full batches)."""
    unlearn_loader = DataLoader(unlearn, batch_size=len(unlearn))
    remain_loader = DataLoader(remain, batch_size=len(remain))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    criterion = nn.CrossEntropyLoss()
    for t_data, t_target in remain_loader:
        loss1 = criterion(model(t_data), t_target)
        loss1.backward()
    for t_data, t_target in unlearn_loader:
        loss2 = -criterion(model(t_data), t_target)
        loss2.backward()
    optimizer.step()


def _task(remain: TensorDataset, forget: TensorDataset) -> SimpleNamespace:
    return SimpleNamespace(
        retain=remain,
        forget=forget,
        device=torch.device("cpu"),
        logits=lambda model, x: model(x),
        loader=lambda ds, shuffle=False, batch_size=None: DataLoader(ds, batch_size=batch_size),
        work_dir=Path("."),
    )


def test_default_iau_equals_the_reference_step_on_lenet5():
    torch.manual_seed(0)
    model = LeNet5().double()
    x = torch.randn(50, 3, 32, 32, dtype=torch.float64)
    y = torch.randint(0, 10, (50,))
    remain, forget = TensorDataset(x[:40], y[:40]), TensorDataset(x[40:], y[40:])  # 20 % forgotten, random samples
    orig, ref = copy.deepcopy(model), copy.deepcopy(model)
    reference_unlearn(ref, remain, forget, lr=1e-3)
    method = IAU(batch_size=7)  # defaults: adam, lr 1e-3; 40 = 5x7 + 5 and 10 = 7 + 3 samples in uneven batches
    assert (method.optimizer, method.lr) == ("adam", 1e-3)
    method.unlearn(model, _task(remain, forget))
    for (name, p), q, o in zip(model.named_parameters(), ref.parameters(), orig.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12, msg=name)
        # the reference's step is sign-like: each tensor's largest move is the learning rate
        assert abs(float((q - o).detach().abs().max()) - 1e-3) < 1e-6, name


def test_sign_step_size_does_not_depend_on_the_gradient_scale():
    """Scaling the loss's gradient (e.g. by a batch-norm layer) changes the sgd step but not the default Adam step."""
    torch.manual_seed(1)
    x, y = torch.randn(30, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (30,))
    task = _task(TensorDataset(x[:20], y[:20]), TensorDataset(x[20:], y[20:]))
    steps = {}
    for scale in (1.0, 100.0):
        for opt in ("adam", "sgd"):
            model = LeNet5().double()
            torch.manual_seed(2)
            model.load_state_dict(LeNet5().double().state_dict())
            with torch.no_grad():
                model.fc3.weight.mul_(scale)
                model.fc3.bias.mul_(scale)
            before = model.conv1.weight.detach().clone()
            IAU(optimizer=opt, lr=1e-3).unlearn(model, task)
            steps[opt, scale] = float((model.conv1.weight - before).detach().abs().max())
    assert abs(steps["adam", 1.0] - 1e-3) < 1e-6 and abs(steps["adam", 100.0] - 1e-3) < 1e-6
    assert steps["sgd", 100.0] > 10 * steps["sgd", 1.0]


def test_lr_auto_grid_follows_the_optimizer():
    assert IAU(lr="auto").auto.grid == GRIDS["adam"]
    assert IAU(lr="auto", optimizer="sgd").auto.grid == GRIDS["sgd"]
    assert IAU(lr="auto", auto={"grid": [0.5, 0.1]}).auto.grid == [0.5, 0.1]
