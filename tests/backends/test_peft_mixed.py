"""The fast mixed-batch LoRA forward gives exactly PEFT's outputs, on one model instance only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

for _extra in ("torch", "transformers", "peft"):  # the 'peft' extra
    pytest.importorskip(_extra)

import torch  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from tenantlora.backends.peft import mixed  # noqa: E402
from tenantlora.backends.peft.mixed import MixedForward, install  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing`:FutureWarning"),
    pytest.mark.filterwarnings("ignore:Setting `save_embedding_layers`:UserWarning"),
]

ROWS = ["a", "__base__", "b", "a", "b", "__base__"]


def _llama() -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=False)  # fmt: skip
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def _model(tmp: Path) -> PeftModel:
    """A PeftModel with adapters "a" (attention only) and "b" (all linear), both non-zero."""
    for name, seed, targets in (("a", 1, ["q_proj", "v_proj"]), ("b", 2, "all-linear")):
        torch.manual_seed(seed)
        config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=targets)
        get_peft_model(_llama(), config).save_pretrained(str(tmp / name))
    model = PeftModel.from_pretrained(_llama(), str(tmp / "a"), adapter_name="a")
    model.load_adapter(str(tmp / "b"), adapter_name="b")
    model.eval()
    return model


def _logits(model: PeftModel, ids: torch.Tensor, names: list[str]) -> torch.Tensor:
    with torch.inference_mode():
        out: Any = model(input_ids=ids, adapter_names=names)
    return out.logits  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    torch.manual_seed(3)
    return torch.randint(0, 64, (len(ROWS), 7))


def test_fast_path_equals_pefts_own_mixed_forward(tmp_path: Path, ids: torch.Tensor) -> None:
    model = _model(tmp_path)
    expected = _logits(model, ids, ROWS)
    assert install(model) > 0
    got = _logits(model, ids, ROWS)
    assert torch.equal(got, expected)  # the same additions on the same values: bit for bit
    # and each row is its own adapter's answer (the base row is not, say, adapter a's)
    for row, name in enumerate(ROWS):
        alone = _logits(model, ids[row : row + 1], [name])
        torch.testing.assert_close(alone[0], got[row])
    assert not torch.allclose(got[1], _logits(model, ids[1:2], ["a"])[0])


def test_only_this_model_instance_is_changed(tmp_path: Path) -> None:
    model, other = _model(tmp_path / "one"), _model(tmp_path / "two")
    install(model)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    twin = other.base_model.model.model.layers[0].self_attn.q_proj
    assert isinstance(layer._mixed_batch_forward, MixedForward)
    assert not isinstance(twin._mixed_batch_forward, MixedForward)


def test_install_is_idempotent_and_covers_layers_wrapped_later(tmp_path: Path) -> None:
    model = _model(tmp_path)
    first = install(model)
    assert install(model) == 0
    torch.manual_seed(5)
    config = LoraConfig(r=2, init_lora_weights=False, target_modules=["lm_head"])
    get_peft_model(_llama(), config).save_pretrained(str(tmp_path / "c"))
    model.load_adapter(str(tmp_path / "c"), adapter_name="c")  # wraps lm_head: a new layer
    assert install(model) == 1
    assert first > 1


def test_one_plan_per_call_shared_by_every_layer(
    tmp_path: Path, ids: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _model(tmp_path)
    install(model)
    built: list[list[str]] = []

    class CountingPlan(mixed._Plan):
        def __init__(self, names: list[str]) -> None:
            built.append(list(names))
            super().__init__(names)

    monkeypatch.setattr(mixed, "_Plan", CountingPlan)
    plans: list[Any] = []
    layer = model.base_model.model.model.layers[1].mlp.down_proj
    fast = layer._mixed_batch_forward
    real = fast._plan

    def spy(names: list[str]) -> Any:
        plan = real(names)
        plans.append(plan)
        return plan

    fast._plan = spy
    rows = list(ROWS)
    _logits(model, ids, rows)
    _logits(model, ids, list(ROWS))
    rows[0] = "b"  # the same list object, changed: a new plan
    _logits(model, ids, rows)
    assert len(plans) == 3
    assert len(built) == 2  # 3 forward passes x 16 LoRA layers, but 2 distinct row layouts
    assert plans[0] is plans[1]  # equal contents: the plan is reused
    assert plans[2] is not plans[1]
    assert [(name, index.tolist()) for name, index in plans[2].groups] == [
        ("b", [0, 2, 4]),
        ("a", [3]),
    ]
    assert [(name, index.tolist()) for name, index in plans[0].groups] == [
        ("a", [0, 3]),
        ("b", [2, 4]),
    ]


def test_training_mode_uses_pefts_method(tmp_path: Path, ids: torch.Tensor) -> None:
    """Dropout is live in training mode: the fast path steps aside for PEFT's own method."""
    model = _model(tmp_path)
    install(model)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    calls: list[int] = []
    fast = layer._mixed_batch_forward
    original = fast._original

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    fast._original = counting
    expected = _logits(model, ids, ROWS)
    assert calls == []
    layer.train()  # PEFT refuses adapter_names on a model in training mode, so: one layer
    got = _logits(model, ids, ROWS)
    assert calls == [1]
    assert torch.equal(got, expected)  # dropout is 0 in these configs: same outputs
