"""Continual instruction tuning of a LLaVA-style model with sequential LoRA or RegLoRA, the model side of SEFE (Chen et
al., "SEFE: Superficial and Essential Forgetting Eliminator for Multimodal Continual Instruction Tuning", ICML 2025,
arXiv 2505.02486; reference github jinpeng0528/SEFE @2f61efe: ``llava/train/train.py``,
``llava/model/language_model/llava_llama.py``, ``scripts/Train/*.sh``, ``scripts/Eval/*.sh``).

Training (one experience = one instruction task, cl/data/instruction_stream.py): the causal-LM loss on the answer
tokens only (labels -100 elsewhere, the image tokens included), plus, with ``reg_weight > 0``, RegLoRA's penalty::

    L = CE_answer + reg_weight * (1 / divisor) * sum_m mean_{(i,j) in S_{<=t}(m)} |(B_{t+1} A_{t+1})_ij|

The LoRA life cycle and the key positions are cl/modules/reglora.py's, the same as ``method=reglora`` on image streams
(a fresh peft LoRA per experience on every linear layer of the language model, ``target_modules: all-linear`` = the
reference's 224 matrices of LLaMA-7B; merged at the experience's end; top ``top_percent`` % of ``|B A|`` kept).
``reg_weight = 0`` is sequential LoRA. The vision encoder is frozen; the projector trains (``train_projector``, the
reference's ``mm_projector_lr``: ``projector_lr``, null = the optimizer's lr) and is not merged or regularised.

Evaluation after every experience (the engine calls :meth:`InstructionTuning.evaluate_stream`): greedy decoding of at
most ``max_new_tokens`` tokens per test question (the reference: temperature 0), each answer scored in its style
(cl/metrics/answer_styles.py) as correct / wrong-but-well-formed / malformed. The accuracy row is the engine's
accuracy matrix; the outcome counts are a buffer (checkpointed, so a resumed run keeps them) from which
``metrics.json`` gets the format-failure (superficial forgetting), wrong-but-well-formed (essential forgetting) and
well-formed-accuracy matrices beside MFN, MAA and BWT (:func:`cl.metrics.answer_styles.count_report`).

There is no classifier head (``head`` is the identity): answers are generated. A random LM built from a config
(``backbone.lm_config``) gets its vocabulary sized to the stream's tokenizer in :meth:`setup_stream`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from cl.data.stream import Stream
from cl.methods.base import ContinualMethod, OptimizerFactory
from cl.metrics.answer_styles import OUTCOMES, count_report, score_answer
from cl.modules.reglora import RegLoRAAdapters


class InstructionTuning(ContinualMethod):
    """A LLaVA-style model (cl/backbones/llava_style.py) tuned task after task with one LoRA per task."""

    SCENARIOS = ("task",)

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        optimizer: OptimizerFactory,
        scheduler: Callable[..., Any] | None = None,
        rank: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.0,
        target_modules: str | Sequence[str] = "all-linear",
        top_percent: float = 2.0,
        reg_weight: float = 2.5e3,
        divisor: float | None = None,
        deduplicate: bool = False,
        penalty_backend: str = "auto",
        train_projector: bool = True,
        projector_lr: float | None = None,
        max_new_tokens: int = 32,
        gradient_checkpointing: bool = False,
        scorer: dict[str, Any] | None = None,
        scheduler_interval: str = "step",
        name: str = "",
    ) -> None:
        super().__init__(backbone, num_classes, optimizer, scheduler, False, scheduler_interval, name)
        if not hasattr(backbone, "lm") or not hasattr(backbone, "generate"):
            raise ValueError("method=instruction_* needs backbone=llava_* (a LlavaStyleModel: vision, projector, lm)")
        if int(max_new_tokens) < 1:
            raise ValueError(f"method.max_new_tokens={max_new_tokens}; allowed: a positive integer")
        self.head = nn.Identity()  # answers are generated, no classifier
        backbone.requires_grad_(False)
        backbone.projector.requires_grad_(bool(train_projector))
        self.projector_lr = projector_lr
        self.max_new_tokens = int(max_new_tokens)
        self.scorer = dict(scorer or {})
        if "brief_words" in self.scorer:
            self.scorer["brief_words"] = tuple(self.scorer["brief_words"])
        if "detail_words" in self.scorer:
            self.scorer["detail_words"] = tuple(self.scorer["detail_words"])
        if gradient_checkpointing:
            backbone.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.reglora = RegLoRAAdapters(
            backbone.lm, target_modules, rank, alpha, dropout, top_percent, reg_weight, divisor, deduplicate,
            penalty_backend=penalty_backend,
        )  # fmt: skip
        self.register_buffer("outcome_counts", torch.zeros(num_classes, num_classes, len(OUTCOMES)))
        self.tokenizer: Any = None

    # ----------------------------------------------------------------------------------------------- stream hooks
    def setup_stream(self, stream: Stream) -> None:
        super().setup_stream(stream)
        tok = getattr(stream.source, "tokenizer", None)
        if tok is None:
            raise ValueError(
                "method=instruction_* needs an instruction stream (data=instruction_*, scenario=instruction)"
            )
        self.tokenizer = tok
        lm = self.backbone.lm
        vocab = lm.get_input_embeddings().num_embeddings
        if len(tok) != vocab:
            if not getattr(self.backbone, "lm_from_config", False):
                raise ValueError(f"data.tokenizer has {len(tok)} tokens but the language model's vocabulary {vocab}")
            lm.resize_token_embeddings(len(tok), mean_resizing=False)
            lm.requires_grad_(False)
        for key in ("eos_token_id", "bos_token_id", "pad_token_id"):
            if getattr(tok, key) is not None:
                setattr(lm.config, key, getattr(tok, key))
        self.reglora.resize(max(0, len(stream) - 1))

    def on_experience_start(self, experience: Any) -> None:
        super().on_experience_start(experience)
        self.reglora.start()

    def on_experience_end(self, experience: Any, loader_factory: Callable[[Any], Any]) -> None:
        self.reglora.end(experience.index)

    def report_metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.reglora.report())
        t = int(self.experience_index)
        if t >= 0 and float(self.outcome_counts[: t + 1, : t + 1].sum(2).min()) > 0:
            out.update(count_report(self.outcome_counts[: t + 1].cpu().numpy()))
        return out

    # ----------------------------------------------------------------------------------------------- training
    def forward(self, batch: dict[str, Any]) -> Any:
        return self.backbone(batch["input_ids"], batch["attention_mask"], batch["images"], batch["labels"])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Any:
        loss = self(batch).loss
        term = self.reglora.loss_term()
        if term is None:
            return loss
        return {"loss": loss + term, "train/reg_loss": term.detach() / self.reglora.reg_weight}

    def configure_optimizers(self) -> Any:
        if self.projector_lr is None:
            return super().configure_optimizers()
        projector = [p for p in self.backbone.projector.parameters() if p.requires_grad]
        ids = {id(p) for p in projector}
        rest = [p for p in self.trainable_parameters() if id(p) not in ids]
        groups = [{"params": rest}] + ([{"params": projector, "lr": float(self.projector_lr)}] if projector else [])
        optimizer = self.optimizer_factory(params=groups)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval}}

    # ----------------------------------------------------------------------------------------------- evaluation
    def answer(self, questions: Sequence[dict[str, Any]], device: torch.device | str) -> list[str]:
        """Greedy answers (decoded text) to a list of :class:`cl.data.instruction_stream.QuestionSet` items."""
        from cl.data.instruction_stream import pad_token_id

        n = max(len(q["input_ids"]) for q in questions)
        ids = torch.full((len(questions), n), pad_token_id(self.tokenizer), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, q in enumerate(questions):
            ids[r, : len(q["input_ids"])], mask[r, : len(q["input_ids"])] = q["input_ids"], 1
        images = [q["image"] for q in questions]
        if all(im is not None for im in images):
            images = torch.stack(images).to(device)
        else:
            images = [None if im is None else im.to(device) for im in images]
        new = self.backbone.generate(
            ids.to(device), images, self.max_new_tokens, mask.to(device), self.tokenizer.eos_token_id
        )
        return [self.tokenizer.decode(t, skip_special_tokens=True).strip() for t in new]

    @torch.no_grad()
    def evaluate_stream(
        self, stream: Stream, batch_size: int, device: torch.device | str, num_workers: int = 0
    ) -> tuple[list[float], list[float]]:
        """Score every task's test questions (module docstring); returns the accuracy row twice (the engine's
        task-agnostic and task-aware rows coincide: the task is in the prompt). Sharded over DDP ranks as the engine."""
        from torch.utils.data import DataLoader

        from cl.engine.evaluate import _shard

        was_training = self.training
        self.eval()
        self.to(device)
        counts = torch.zeros(len(stream), len(OUTCOMES), dtype=torch.float64, device=device)
        for j, exp in enumerate(stream.experiences):
            loader = DataLoader(
                _shard(exp.test), batch_size=batch_size, num_workers=num_workers, collate_fn=exp.test.collate_fn
            )
            for questions in loader:
                for q, text in zip(questions, self.answer(questions, device), strict=True):
                    counts[j, OUTCOMES.index(score_answer(q["style"], text, q["answer"], **self.scorer))] += 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(counts)
        t = int(self.experience_index)
        if t >= 0:
            self.outcome_counts[t] = counts.to(self.outcome_counts)
        self.train(was_training)
        acc = (counts[:, 0] / counts.sum(1).clamp(min=1)).tolist()
        return acc, acc
