"""The letters pretraining of the offline default's ViT (cl.modules.prompt_pretrain.pretrain) runs through
Lightning's Trainer and gives the weights of the plain recipe it replaced: per epoch a new seeded permutation, AdamW
with a one-cycle schedule stepped every batch, label-smoothed cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cl.backbones import Backbone
from cl.modules.prompt_pretrain import LETTERS, pretrain, render_letters

KWARGS = dict(name="vit_tiny_patch16_224", in_chans=1, img_size=8, patch_size=4, embed_dim=24, depth=1, num_heads=2)


def _plain_recipe(samples: int, epochs: int, batch: int, lr: float, seed: int) -> dict[str, torch.Tensor]:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        x, y = render_letters(samples, 8, seed)
        net = Backbone(**KWARGS)
        head = torch.nn.Linear(net.num_features, len(LETTERS))
        opt = torch.optim.AdamW(list(net.parameters()) + list(head.parameters()), lr=lr, weight_decay=0.05)
        steps = epochs * ((len(y) + batch - 1) // batch)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            order = torch.randperm(len(y), generator=gen)
            for i in range(0, len(y), batch):
                b = order[i : i + batch]
                loss = F.cross_entropy(head(net(x[b])), y[b], label_smoothing=0.1)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        return {k: v.detach().clone() for k, v in net.model.state_dict().items()}


def test_pretrain_on_lightning_equals_the_plain_recipe_and_leaves_the_callers_rng(tmp_path):
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    out = tmp_path / "letters.pt"
    stats = pretrain(KWARGS, out, samples_per_class=3, epochs=3, batch_size=16, lr=3e-3, seed=1)
    assert torch.equal(torch.random.get_rng_state(), before)
    got = torch.load(out)
    want = _plain_recipe(samples=3, epochs=3, batch=16, lr=3e-3, seed=1)
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k
    # a departure (one epoch fewer, or the same order every epoch) would change the weights
    fewer = _plain_recipe(samples=3, epochs=2, batch=16, lr=3e-3, seed=1)
    assert not all(torch.equal(got[k], fewer[k]) for k in want)
    assert 0.0 <= stats["train_acc_last_epoch"] <= 1.0 and stats["seconds"] > 0
    # the file loads as the backbone's weights
    Backbone(weights=str(out), **KWARGS)


def test_pretrain_inside_a_slurm_task_leaves_its_signal_handlers(tmp_path, monkeypatch):
    """A rank of a SLURM DDP job may pretrain when the weights file is missing: that one-process fit must not take
    over SLURM's requeue signal (Lightning's SLURM environment installs a SIGUSR1 handler) or check the job's tasks."""
    import signal

    job = {"NTASKS": "2", "NTASKS_PER_NODE": "2", "JOB_ID": "5", "JOB_NAME": "job", "NODELIST": "localhost"}
    for k, v in {**job, "PROCID": "1", "LOCALID": "1", "NODEID": "0"}.items():
        monkeypatch.setenv(f"SLURM_{k}", v)
    before, installed = signal.getsignal(signal.SIGUSR1), []
    real = signal.signal
    monkeypatch.setattr(signal, "signal", lambda num, handler: installed.append((num, handler)) or real(num, handler))
    pretrain(KWARGS, tmp_path / "w.pt", samples_per_class=1, epochs=1, batch_size=16, seed=0)
    assert all(h == before for n, h in installed if n == signal.SIGUSR1)
