"""``bad_teacher``: "Can Bad Teaching Induce Forgetting?" (Chundawat et al., AAAI 2023), as in the SSD reference
("blindspot"/"teacher"): the student (the trained model) is distilled, with KL divergence at temperature ``T``, from
the competent teacher (a frozen copy of the trained model) on retain samples and from an incompetent teacher on forget
samples. The incompetent teacher is the run's own randomly initialised model (``initial.ckpt``). Data: D_f plus a
random ``retain_fraction`` (0.3) of D_r; reference: 1 epoch, Adam lr 1e-4, batch 256 (128 for ViT), T = 1. Trained with
Lightning's ``Trainer`` on the run's devices (:meth:`UnlearnTask.train`); under DDP ``batch_size`` is the global batch
(checked to be a multiple of the number of processes)."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import ConcatDataset, Subset

from unlearn.context import UnlearnConfigError
from unlearn.methods._datasets import Flagged
from unlearn.methods.base import UnlearningMethod, UnlearnTask, check_positive, make_optimizer


class BadTeacher(UnlearningMethod):
    """KL distillation from a competent (retain) and an incompetent (forget) teacher."""

    needs_initial_weights = True

    def __init__(
        self,
        name: str = "bad_teacher",
        epochs: int = 1,
        lr: float = 1e-4,
        batch_size: int = 256,
        temperature: float = 1.0,
        retain_fraction: float = 0.3,
    ) -> None:
        super().__init__(name)
        for key, value, integer in (("epochs", epochs, True), ("lr", lr, False), ("batch_size", batch_size, True)):
            check_positive(f"unlearn_method.{key}", value, integer)
        check_positive("unlearn_method.temperature", temperature)
        check_positive("unlearn_method.retain_fraction", retain_fraction)
        self.epochs, self.lr, self.batch_size = int(epochs), float(lr), int(batch_size)
        self.temperature, self.retain_fraction = float(temperature), min(float(retain_fraction), 1.0)

    def check(self, task: UnlearnTask) -> None:
        super().check(task)
        from unlearn.distributed import requested_world_size

        world = requested_world_size(task.ctx.cfg.trainer)
        if self.batch_size % world:  # each DDP rank loads batch_size / world samples per step (unlearn/training.py)
            raise UnlearnConfigError(
                f"unlearn_method.batch_size={self.batch_size} is the global batch and must be a multiple of the number "
                f"of processes ({world} = trainer.devices x trainer.num_nodes)"
            )

    def unlearn(self, model: nn.Module, task: UnlearnTask) -> nn.Module:
        from unlearn.context import load_initial_weights

        good = copy.deepcopy(model).to(task.device).eval()
        bad = load_initial_weights(task.ctx).to(task.device).eval()
        gen = torch.Generator().manual_seed(task.seed)
        n = max(1, int(round(self.retain_fraction * len(task.retain))))
        keep = torch.randperm(len(task.retain), generator=gen)[:n].tolist()
        data = ConcatDataset([Flagged(Subset(task.retain, keep), 0), Flagged(task.forget, 1)])
        T = self.temperature

        def loss(m: nn.Module, b: tuple) -> torch.Tensor:
            x, flag = b[0], b[2].bool()
            seen = task.mask.to(x.device)  # KL over the seen classes only (masked logits would give 0 * inf)
            with torch.no_grad():
                t_logits = torch.where(flag[:, None], bad(x)[:, seen], good(x)[:, seen])
            s = F.log_softmax(m(x)[:, seen] / T, dim=1)
            return F.kl_div(s, F.softmax(t_logits / T, dim=1), reduction="batchmean")

        def optimizer(params: list[nn.Parameter]) -> torch.optim.Optimizer:
            return make_optimizer("adam", params, self.lr)

        task.train(model, data, loss, optimizer, self.epochs, batch_size=self.batch_size)
        return model
