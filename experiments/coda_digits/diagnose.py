"""``python -m experiments.coda_digits.diagnose RUN_DIR``: where a prompt method's class-incremental accuracy goes
(issue 20: CODA-Prompt below SimpleCIL on the digits stream). For a ``cl.run`` run of a prompt method (CODA-Prompt,
L2P, DualPrompt; checkpoints/ kept) it prints, after the last experience:

* ``head``: the method's own A_T (linear head over every seen class; equals metrics.json's ``avg_acc``);
* ``ncm_prompted``: A_T of SimpleCIL's cosine nearest-class-mean rule on the *prompted* features, class means from the
  final model (how separable the prompts leave the features, with a calibrated, training-free classifier);
* ``ncm_prompted_incremental``: the same with each class's mean taken from the checkpoint after its own experience
  (what a prototype head could have stored without keeping data);
* ``ncm_frozen``: the same rule on the frozen, un-prompted features (SimpleCIL's A_T on this stream);
* per experience: the change of the *sum* of its classes' head rows (and biases) since the initial weights, and the
  norm of the learned part (the rows' change minus its mean over the experience's classes). With the loss over the
  current experience's classes only (``mask_past_in_training``), the softmax gradients of those classes sum to zero.
  With 2 classes per experience the two gradients are opposite, and so are Adam's updates (odd in the gradient,
  per coordinate), so the sum stays at its initial value up to float rounding: the experience's head learns one
  direction, w_a - w_b, and nothing about how its classes rank against another experience's. With more classes Adam's
  per-coordinate scaling lets the sum drift (SGD would keep it for any number of classes).

A_T here is the mean over experiences of the test accuracy on each experience's classes (as metrics.json).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F


def _load(run_dir: Path, name: str) -> tuple[Any, Any]:
    from omegaconf import OmegaConf

    from cl.engine.checkpoint import load_checkpoint, load_method_state
    from cl.experiment import build

    payload = load_checkpoint(run_dir / "checkpoints" / name)
    stream, method = build(OmegaConf.create(payload["config"]))
    load_method_state(method, payload["state_dict"], name)
    return stream, method.eval()


@torch.no_grad()
def _features(method: Any, dataset: Any, prompted: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from torch.utils.data import DataLoader

    xs, ys = [], []
    for batch in DataLoader(dataset, batch_size=512):
        x = batch[0]
        xs.append(method.prompted_features(x, train=False)[0] if prompted else method.query(x))
        ys.append(batch[1])
    return torch.cat(xs), torch.cat(ys)


def _means(feats: torch.Tensor, labels: torch.Tensor, classes: list[int], out: torch.Tensor) -> None:
    for c in classes:
        out[c] = feats[labels == c].mean(0)


def _a_t(predict: Any, tests: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    return sum(float((predict(x) == y).float().mean()) for x, y in tests) / len(tests)


def _ncm(protos: torch.Tensor, mask: torch.Tensor) -> Any:
    """SimpleCIL's rule: the seen class of highest cosine between the feature and the class mean."""
    return lambda x: (F.normalize(x, dim=1) @ F.normalize(protos, dim=1).T + mask).argmax(1)


def diagnose(run_dir: str | Path) -> dict[str, Any]:
    """The numbers listed in the module docstring, as a dict (``experiences``: one dict per experience)."""
    from cl.engine.checkpoint import load_checkpoint

    run_dir = Path(run_dir)
    last = max(int(p.stem.split("_")[1]) for p in (run_dir / "checkpoints").glob("task_*.ckpt"))
    stream, model = _load(run_dir, f"task_{last}.ckpt")
    exps = stream.experiences[: last + 1]
    seen = sorted(c for e in exps for c in e.classes)
    mask = torch.full((model.num_classes,), float("-inf"))
    mask[seen] = 0.0
    out: dict[str, Any] = {}
    for prompted in (True, False):
        tests = [_features(model, e.test, prompted) for e in exps]
        protos = torch.zeros(model.num_classes, model.embed_dim)
        for e in exps:
            _means(*_features(model, e.train, prompted), e.classes, protos)
        out["ncm_prompted" if prompted else "ncm_frozen"] = _a_t(_ncm(protos, mask), tests)
        if prompted:
            out["head"] = _a_t(lambda x: (model.head(x) + mask).argmax(1), tests)
            inc = torch.zeros_like(protos)
            for e in exps:  # each class's mean under the prompts of the checkpoint after its own experience
                _, at_t = _load(run_dir, f"task_{e.index}.ckpt")
                _means(*_features(at_t, e.train, True), e.classes, inc)
            out["ncm_prompted_incremental"] = _a_t(_ncm(inc, mask), tests)
    init = load_checkpoint(run_dir / "checkpoints" / "initial.ckpt")["state_dict"]
    w0, b0, w, b = init["head.weight"], init["head.bias"], model.head.weight.detach(), model.head.bias.detach()
    out["experiences"] = []
    for e in exps:
        c = list(e.classes)
        learned = (w[c] - w0[c]) - (w[c] - w0[c]).mean(0)
        out["experiences"].append(
            {
                "classes": c,
                "row_sum_change": float((w[c].sum(0) - w0[c].sum(0)).norm()),
                "bias_sum_change": float((b[c].sum() - b0[c].sum()).abs()),
                "learned_norm": float(learned.norm()),
            }
        )
    return out


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m experiments.coda_digits.diagnose RUN_DIR (a cl.run run of a prompt method)")
    r = diagnose(args[0])
    for key in ("head", "ncm_prompted", "ncm_prompted_incremental", "ncm_frozen"):
        print(f"{key:26s} A_T {100 * r[key]:5.1f} %")
    for t, e in enumerate(r["experiences"]):
        print(
            f"experience {t} classes {e['classes']}: |sum of head rows - initial| {e['row_sum_change']:.1e}, "
            f"|sum of biases - initial| {e['bias_sum_change']:.1e}, |learned part| {e['learned_norm']:.2f}"
        )


if __name__ == "__main__":
    main()
