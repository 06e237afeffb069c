"""RegLoRA on a Hugging Face causal LM: a tiny randomly initialised ``LlamaForCausalLM`` built from a ``LlamaConfig``
(no download). All linear layers of the decoder are adapted (q, k, v, o, gate, up, down per layer, as the reference's
224 matrices of LLaMA-7B; not lm_head), LoRA weights stay float32 on a bf16 base, the merged base keeps its dtype, and
two experiences of next-token prediction train with the penalty on the second."""

from __future__ import annotations

import pytest
import torch

from cl.modules.reglora import RegLoRAAdapters

transformers = pytest.importorskip("transformers")

PER_LAYER = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def _llama(dtype: torch.dtype = torch.float32):
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).to(dtype).eval()


def _sequences(seed: int, n: int = 8, length: int = 12) -> torch.Tensor:
    """A task: sequences counting up by a task-specific stride modulo the vocabulary."""
    start = torch.randint(0, 64, (n, 1), generator=torch.Generator().manual_seed(seed))
    return (start + (seed + 1) * torch.arange(length)) % 64


def test_all_decoder_linears_are_adapted_and_merge_keeps_outputs():
    model = _llama()
    adapters = RegLoRAAdapters(model, "all-linear", rank=4, alpha=8.0, slots=1)
    assert len(adapters.targets) == 2 * 7 and {n.rsplit(".", 1)[1] for n in adapters.targets} == PER_LAYER
    assert "lm_head" not in adapters.targets
    ids = _sequences(0)
    adapters.start()
    with torch.no_grad():
        for _A, B in adapters.lora.factors().values():  # noqa: N806
            B.normal_(0, 0.05)
        with_lora = model(ids).logits
    adapters.end(0)
    merged = model(ids).logits
    torch.testing.assert_close(merged, with_lora, rtol=0, atol=1e-5)
    adapters.start()  # the next experience's LoRA starts at zero update
    torch.testing.assert_close(model(ids).logits, merged, rtol=0, atol=0)


CUDA = pytest.param(
    "cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
)


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_two_experiences_on_a_bf16_base_with_fp32_lora_and_the_penalty(device: str):
    """On CUDA the penalty takes the sparse CSR path (``penalty_backend=auto``), on CPU the fused C++ pass."""
    model = _llama(torch.bfloat16).to(device)
    adapters = RegLoRAAdapters(model, "all-linear", rank=4, alpha=8.0, top_percent=2.0, reg_weight=2.5e3, slots=1)
    losses = []
    for t in range(2):
        adapters.start()
        lora_params = [p for p in model.parameters() if p.requires_grad]
        assert lora_params and all(p.dtype == torch.float32 for p in lora_params)
        opt = torch.optim.AdamW(lora_params, lr=5e-3)
        ids = _sequences(t).to(device)
        for _ in range(15):
            opt.zero_grad()
            loss = model(input_ids=ids, labels=ids).loss
            term = adapters.loss_term()
            assert (term is None) == (t == 0)
            total = loss if term is None else loss + term
            total.backward()
            opt.step()
            losses.append(loss.item())
        if t == 1:
            assert adapters.regularizer().item() < 1e-3  # the key positions of experience 0 held near zero
        adapters.end(t)
        assert all(p.dtype == torch.bfloat16 for p in model.parameters())  # the merged base keeps its dtype
        assert not any("lora" in k for k in model.state_dict())
    assert losses[14] < losses[0] and losses[-1] < losses[15]  # both experiences learn
    assert adapters.keys.positions.dtype == torch.int32 and int(adapters.keys.filled) == 1
