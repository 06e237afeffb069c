"""Unlearning's training loops on Lightning's ``Trainer`` (unlearn/training.py) equal plain loops written here.

* the baselines' fit (``finetune``, ``gradient_ascent`` through their ``unlearn``; SGD with momentum and Adam through
  ``fit_epochs``): the weights are bit-identical to a plain loop over epoch e's permutation ``randperm(n, seed + e)``
  in batches of B (the last one smaller), with the run's recipe keys (``max_epochs``, ``limit_train_batches``) ignored;
  the same loop with one epoch less or without the reshuffle is far off, so the comparison sees either departure;
* the relearning attack's steps equal the plain loop it replaced (seeded passes with one generator, model in eval mode);
* the loader's DDP shares: step b of rank 0 and rank 1, interleaved, is the 1-process batch b;
* bad input: ``bad_teacher``'s batch must split over the DDP processes.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import TensorDataset

# the run's trainer node: the recipe keys would change the result if they were used (99 epochs, 1 batch per epoch)
TRAINER = {
    "_target_": "lightning.pytorch.Trainer",
    "accelerator": "cpu",
    "devices": 1,
    "precision": "32-true",
    "max_epochs": 99,
    "limit_train_batches": 1,
    "gradient_clip_val": 1e-6,
}


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 4))


def _data(n: int = 23) -> TensorDataset:
    gen = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(n, 6, generator=gen), torch.randint(0, 4, (n,), generator=gen))


def _ce(m: nn.Module, b: tuple) -> torch.Tensor:
    return F.cross_entropy(m(b[0]), b[1])


def _reference(net, data, loss, opt, epochs: int, batch: int, seed: int, reshuffle: bool = True) -> None:
    """The plain loop: train mode, epoch e in the order randperm(n, seed + e), batches of ``batch``."""
    x, y = data.tensors
    net.train()
    for e in range(epochs):
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed + (e if reshuffle else 0)))
        for i in range(0, len(x), batch):
            idx = perm[i : i + batch]
            opt.zero_grad(set_to_none=True)
            loss(net, (x[idx], y[idx])).backward()
            opt.step()


def _diff(a: nn.Module, b: nn.Module) -> float:
    return max(float((p - q).detach().abs().max()) for p, q in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_fit_epochs_equals_the_plain_loop(kind):
    from unlearn.methods.base import make_optimizer
    from unlearn.training import fit_epochs

    data, epochs, batch, seed, lr = _data(), 3, 5, 7, 0.05
    net = _net().eval()
    torch.manual_seed(123)  # dropout masks (train mode)
    fit_epochs(
        net,
        data,
        _ce,
        lambda p: make_optimizer(kind, p, lr),
        epochs=epochs,
        batch_size=batch,
        seed=seed,
        trainer_cfg=OmegaConf.create(TRAINER),
        device=torch.device("cpu"),
    )
    assert not net.training  # the mode is restored (training ran in train mode: dropout, see the reference)
    rng = torch.get_rng_state()
    refs = {}
    for name, n_epochs, reshuffle in (("same", epochs, True), ("one_less", epochs - 1, True), ("no_shuffle", 3, False)):
        ref = _net()
        torch.manual_seed(123)  # the same dropout masks as inside fit_epochs
        _reference(ref, data, _ce, make_optimizer(kind, list(ref.parameters()), lr), n_epochs, batch, seed, reshuffle)
        refs[name] = _diff(net, ref)
        if name == "same":  # the loader draws nothing from the global RNG (only dropout does, in both loops)
            assert torch.equal(torch.get_rng_state(), rng)
    assert refs["same"] == 0.0 and refs["one_less"] > 1e-3 and refs["no_shuffle"] > 1e-4, refs


def test_training_baselines_unlearn_equals_the_plain_loop(tmp_path):
    from unlearn.methods.base import UnlearnTask
    from unlearn.methods.finetune import Finetune
    from unlearn.methods.gradient_ascent import GradientAscent

    mask = torch.tensor([True, True, True, False])
    ctx = SimpleNamespace(cfg=OmegaConf.create({"trainer": TRAINER}))
    retain, forget = _data(23), _data(9)
    task = UnlearnTask(ctx, None, forget, retain, retain, mask, 4, torch.device("cpu"), 3, tmp_path)  # type: ignore[arg-type]

    def masked_ce(m: nn.Module, b: tuple) -> torch.Tensor:
        return F.cross_entropy(m(b[0]).masked_fill(~mask, torch.finfo(torch.float32).min), b[1])

    for method, data, sign in ((Finetune(epochs=2, lr=0.1), retain, 1), (GradientAscent(epochs=2, lr=0.1), forget, -1)):
        net = _net()
        torch.manual_seed(5)
        method.unlearn(net, task)
        ref = _net()
        torch.manual_seed(5)
        opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
        _reference(ref, data, lambda m, b, s=sign: s * masked_ce(m, b), opt, 2, 4, 3)
        assert _diff(net, ref) == 0.0, method.name


def test_relearn_steps_equal_the_plain_loop():
    from unlearn.relearn import fine_tune_steps

    data, steps, batch, seed, lr = _data(7), [1, 2, 5, 10], 3, 4, 0.1
    got: list[list[torch.Tensor]] = []
    net = _net().eval()  # eval: dropout off (were it on, the unseeded masks would make the weights differ)
    fine_tune_steps(
        net,
        data,
        _ce,
        lr=lr,
        batch_size=batch,
        seed=seed,
        steps=steps,
        on_step=lambda k: got.append([p.detach().clone() for p in net.parameters()]),
        trainer_cfg=OmegaConf.create(TRAINER),
        device=torch.device("cpu"),
    )
    assert not net.training
    ref = _net().eval()  # the loop relearn_attack ran before Lightning: a new seeded pass when one ends
    opt = torch.optim.SGD(ref.parameters(), lr=lr, momentum=0.9)
    gen, done, want, batches = torch.Generator().manual_seed(seed), 0, [], iter(())
    while done < steps[-1]:
        b = next(batches, None)
        if b is None:
            batches = iter(torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True, generator=gen))
            continue
        opt.zero_grad(set_to_none=True)
        _ce(ref, b).backward()
        opt.step()
        done += 1
        if done in steps:
            want.append([p.detach().clone() for p in ref.parameters()])
    assert len(got) == len(want) == len(steps)
    for a, b in zip(got, want, strict=True):
        assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert not torch.equal(got[0][0], got[-1][0])


def test_loader_shares_rebuild_the_one_process_batches(monkeypatch):
    import cl.engine.distributed as cd
    from unlearn.training import epoch_loader

    data = TensorDataset(torch.arange(11))
    one = [b[0].tolist() for b in epoch_loader(data, 4, seed=5, world_size=1)]
    assert [len(b) for b in one] == [4, 4, 3] and sorted(sum(one, [])) == list(range(11))
    assert sum(one, []) == torch.randperm(11, generator=torch.Generator().manual_seed(5)).tolist()
    shares = []
    for rank in range(2):
        monkeypatch.setattr(cd, "rank_and_world", lambda r=rank: (r, 2))
        shares.append([b[0].tolist() for b in epoch_loader(data, 4, seed=5, world_size=2)])
    for step, batch in enumerate(one):
        rows = [i for pair in zip(shares[0][step], shares[1][step], strict=False) for i in pair]
        assert rows[: len(batch)] == batch
        assert rows[len(batch) :] == sum(one, [])[: len(rows) - len(batch)]  # padding: the epoch's first samples


def test_bad_teacher_batch_must_split_over_the_processes(tmp_path):
    from unlearn.context import UnlearnConfigError
    from unlearn.methods.bad_teacher import BadTeacher
    from unlearn.methods.base import UnlearnTask

    (tmp_path / "initial.ckpt").write_bytes(b"")
    ddp = {**TRAINER, "devices": 2, "strategy": {"_target_": "cl.engine.ddp_strategy.DDPStrategy"}}
    for trainer, ok in ((TRAINER, True), (ddp, False)):
        ctx = SimpleNamespace(cfg=OmegaConf.create({"trainer": trainer}), initial_checkpoint=tmp_path / "initial.ckpt")
        task = UnlearnTask(ctx, None, _data(), _data(), _data(), torch.ones(4, dtype=torch.bool), 4, "cpu", 0, tmp_path)  # type: ignore[arg-type]
        if ok:
            BadTeacher(batch_size=255).check(task)
            BadTeacher(batch_size=256).check(task)
        else:
            with pytest.raises(UnlearnConfigError, match=r"unlearn_method.batch_size=255 is the global batch .* \(2 ="):
                BadTeacher(batch_size=255).check(task)
            BadTeacher(batch_size=256).check(task)


def test_ddp_strategy_tolerates_parameters_the_forward_leaves_unused():
    """L2P's / DualPrompt's prompt keys get no gradient from the model's forward (the unlearning loss): the run's DDP
    strategy is built with find_unused_parameters (a 2-process fit would otherwise stop at its second step)."""
    from cl.engine.ddp_strategy import DDPStrategy
    from unlearn.training import unlearn_trainer

    strategy = {"_target_": "cl.engine.ddp_strategy.DDPStrategy", "process_group_backend": "gloo"}
    trainer = unlearn_trainer(OmegaConf.create({**TRAINER, "devices": 2, "strategy": strategy}), max_epochs=1)
    assert isinstance(trainer.strategy, DDPStrategy) and trainer.strategy._ddp_kwargs["find_unused_parameters"]
    assert trainer.max_epochs == 1 and trainer.limit_train_batches == 1.0 and trainer.gradient_clip_val is None
