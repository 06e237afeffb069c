"""RegLoRA's key positions and gathered penalty against a hand-computed 4x4 case and the reference algorithm
(jinpeng0528/SEFE: ``key_elements_identification.py``: topk of |B A| in float32, int64 (row, col) pairs, the new
experience's pairs concatenated before the old ones; ``modeling_llama.py``: ``(B @ A)[rows, cols].abs().mean()``)."""

from __future__ import annotations

import pytest
import torch

from cl.modules.lora_keys import KeyPositions, top_count, top_positions

# B A = [[1, 2, 0, -1], [0, 1, 3, 1], [1, 3, 3, 0], [2, 4, 0, -2]]; |B A| by flat index:
# 0:1 1:2 2:0 3:1 | 4:0 5:1 6:3 7:1 | 8:1 9:3 10:3 11:0 | 12:2 13:4 14:0 15:2
B_HAND = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0]], dtype=torch.float64)
A_HAND = torch.tensor([[1.0, 2.0, 0.0, -1.0], [0.0, 1.0, 3.0, 1.0]], dtype=torch.float64)


def reference_pairs(A: torch.Tensor, B: torch.Tensor, fraction: float) -> torch.Tensor:  # noqa: N803
    """The reference's key_elements_identification for one matrix: int64 (row, col) pairs of topk |B A| (float32)."""
    importance = (B @ A).to(torch.float32).abs()
    k = int(fraction * importance.shape[0] * importance.shape[1])
    _, flat = torch.topk(importance.view(-1), k)
    return torch.stack([torch.div(flat, importance.size(1), rounding_mode="floor"), flat % importance.size(1)]).T


def reference_penalty(A: torch.Tensor, B: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:  # noqa: N803
    return (B @ A)[pairs[:, 0], pairs[:, 1]].abs().mean()


def test_hand_case_top_positions_truncation_and_tie_order():
    delta = B_HAND @ A_HAND
    assert top_count(0.3, (4, 4)) == 4  # int(4.8): truncates as the reference
    assert top_positions(delta, 4).tolist() == [13, 6, 9, 10]  # 4, then the three 3s by increasing index
    # k = 5: the fifth is one of the three 2s (flat 1, 12, 15): the lowest index wins, deterministically
    assert top_positions(delta, 5).tolist() == [13, 6, 9, 10, 1]
    assert top_positions(delta, 0).numel() == 0
    with pytest.raises(FloatingPointError):
        top_positions(torch.tensor([[float("nan"), 1.0]]), 1)


def test_tie_order_is_the_stable_descending_order_and_sets_match_topk():
    g = torch.Generator().manual_seed(0)
    # bf16 products tie often: the chosen set is the first k of a stable descending sort, on every call
    delta = (torch.randn(64, 4, generator=g) @ torch.randn(4, 96, generator=g)).to(torch.bfloat16)
    mag = delta.float().abs().flatten()
    assert mag.unique().numel() < mag.numel()  # ties are present
    k = top_count(0.02, tuple(delta.shape))
    expected = torch.sort(mag, descending=True, stable=True).indices[:k]
    assert top_positions(delta, k).tolist() == expected.tolist()
    # without ties the set is torch.topk's (the reference)
    A, B = torch.randn(3, 50, generator=g), torch.randn(40, 3, generator=g)  # noqa: N806
    ours = top_positions(B @ A, top_count(0.02, (40, 50)))
    ref = reference_pairs(A, B, 0.02)
    assert sorted(ours.tolist()) == sorted((ref[:, 0] * 50 + ref[:, 1]).tolist())


def _two_experiences(fraction: float) -> tuple[KeyPositions, list[tuple[torch.Tensor, torch.Tensor]]]:
    g = torch.Generator().manual_seed(1)
    keys = KeyPositions({"m": (4, 4)}, slots=2, fraction=fraction).double()
    factors = [(A_HAND, B_HAND), (torch.randn(2, 4, generator=g, dtype=torch.float64), B_HAND.flip(0))]
    for t, (A, B) in enumerate(factors):  # noqa: N806
        keys.identify(t, {"m": (A, B)})
    return keys, factors


def test_cumulative_positions_are_newest_first_with_duplicates_in_int32():
    keys, factors = _two_experiences(0.25)
    assert keys.positions.dtype == torch.int32 and keys.nbytes() == 2 * 4 * 4  # 2 slots x 4 positions x 4 bytes
    ref = torch.cat([reference_pairs(A, B, 0.25) for A, B in reversed(factors)])  # noqa: N806
    pairs = keys.pairs("m")
    assert pairs.dtype == torch.long and pairs.shape == (8, 2)
    assert sorted(map(tuple, pairs[:4].tolist())) == sorted(map(tuple, ref[:4].tolist()))  # newest first
    assert pairs[4:].tolist() == [[3, 1], [1, 2], [2, 1], [2, 2]]  # experience 0: flat 13, 6, 9, 10
    assert len(set(map(tuple, pairs.tolist()))) < 8  # this case has a duplicate: kept


@pytest.mark.parametrize("deduplicate", [False, True])
def test_gathered_penalty_and_gradient_equal_the_full_form_in_float64(deduplicate):
    keys, _ = _two_experiences(0.25)
    g = torch.Generator().manual_seed(2)
    A = torch.randn(2, 4, generator=g, dtype=torch.float64, requires_grad=True)  # noqa: N806
    B = torch.randn(4, 2, generator=g, dtype=torch.float64, requires_grad=True)  # noqa: N806
    ours = keys.penalty({"m": (A, B)}, deduplicate=deduplicate)
    grads = torch.autograd.grad(ours, (A, B))
    pairs = keys.pairs("m")
    if deduplicate:
        pairs = torch.unique(pairs, dim=0)
    ref = reference_penalty(A, B, pairs)
    ref_grads = torch.autograd.grad(ref, (A, B))
    assert abs(ours.item() - ref.item()) < 1e-12
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    # by hand for the full list: mean over the 8 listed positions of |B A| (a duplicate counted twice)
    delta = (B @ A).detach()
    hand = sum(abs(delta[i, j].item()) for i, j in keys.pairs("m").tolist()) / 8
    if not deduplicate:
        assert abs(ours.item() - hand) < 1e-12


def test_penalty_on_realistic_shapes_matches_the_reference_and_grows_with_experiences():
    g = torch.Generator().manual_seed(3)
    shapes = {"q": (48, 32), "fc": (64, 48)}
    keys = KeyPositions(shapes, slots=3, fraction=0.02)
    for t in range(3):
        f = {n: (torch.randn(4, s[1], generator=g), torch.randn(s[0], 4, generator=g)) for n, s in shapes.items()}
        keys.identify(t, f)
        assert keys.cumulative("fc").numel() == (t + 1) * int(0.02 * 64 * 48)
    A = {n: torch.randn(4, s[1], generator=g, requires_grad=True) for n, s in shapes.items()}  # noqa: N806
    B = {n: torch.randn(s[0], 4, generator=g, requires_grad=True) for n, s in shapes.items()}  # noqa: N806
    ours = keys.penalty({n: (A[n], B[n]) for n in shapes})
    ref = sum(reference_penalty(A[n], B[n], keys.pairs(n)) for n in shapes)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    ga = torch.autograd.grad(ours, [A["fc"], B["q"]])
    gr = torch.autograd.grad(ref, [A["fc"], B["q"]])
    for a, b in zip(ga, gr, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    with pytest.raises(RuntimeError, match="cannot add experience 1"):
        keys.identify(1, {})


def test_penalty_is_computed_in_float32_under_bf16_autocast():
    keys, _ = _two_experiences(0.25)
    keys = keys.float()
    g = torch.Generator().manual_seed(4)
    A, B = torch.randn(2, 4, generator=g), torch.randn(4, 2, generator=g)  # noqa: N806
    plain = keys.penalty({"m": (A, B)})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = keys.penalty({"m": (A, B)})
    assert mixed.dtype == torch.float32 and torch.equal(mixed, plain)
