"""Adapter files that would touch the shared base model are refused, naming the tensor or field.

Three sources: hand-written hostile files (a valid adapter plus one base tensor), adapters saved
by real PEFT with configs that restructure the base (modules_to_save, biases, DoRA, layer
replication, saved embedding layers), and hypothesis-generated configs and tensor names.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_adapters import HIDDEN, VOCAB, lora_tensors, make_adapter, write_config, write_safetensors

from tenantlora._adapter_rules import MAX_NAME_CHARS, MAX_PATTERN_KEYS, MAX_TENSORS
from tenantlora.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, inspect, validate
from tenantlora.errors import AdapterValidationError

LAYER = "base_model.model.model.layers.0"
ALLOWED = re.compile(
    r"base_model\.model\.[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*\.(lora_A\.weight|lora_B\.weight|"
    r"lora_embedding_A|lora_embedding_B)"
)

# -- hand-written hostile files ---------------------------------------------------------------

HOSTILE_TENSORS = {
    "final norm": ("base_model.model.model.norm.weight", ("F32", (HIDDEN,))),
    "base_layer": (f"{LAYER}.self_attn.q_proj.base_layer.weight", ("F32", (HIDDEN, HIDDEN))),
    "lm_head": ("base_model.model.lm_head.weight", ("F32", (VOCAB, HIDDEN))),
    "embed_tokens": ("base_model.model.model.embed_tokens.weight", ("F32", (VOCAB, HIDDEN))),
    "a bias": (f"{LAYER}.self_attn.q_proj.bias", ("F32", (HIDDEN,))),
    "lora bias": (f"{LAYER}.self_attn.q_proj.lora_B.bias", ("F32", (HIDDEN,))),
    "DoRA magnitude": (f"{LAYER}.self_attn.q_proj.lora_magnitude_vector", ("F32", (HIDDEN,))),
    "modules_to_save copy": (
        "base_model.model.lm_head.modules_to_save.default.weight",
        ("F32", (VOCAB, HIDDEN)),
    ),
    "no PEFT prefix": ("model.layers.0.self_attn.q_proj.lora_A.weight", ("F32", (8, HIDDEN))),
    "LoRA of a wrapper": (
        f"{LAYER}.self_attn.q_proj.base_layer.lora_A.weight",
        ("F32", (8, HIDDEN)),
    ),
    "traversal-like module": ("base_model.model...lora_A.weight", ("F32", (8, HIDDEN))),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_TENSORS))
def test_one_extra_tensor_is_refused_by_name(tmp_path: Path, case: str) -> None:
    """A valid adapter plus any one non-LoRA tensor is refused, the tensor named."""
    name, spec = HOSTILE_TENSORS[case]
    directory = make_adapter(tmp_path / "a", {**lora_tensors(), name: spec})
    with pytest.raises(AdapterValidationError) as caught:
        inspect(directory)
    assert repr(name)[:60] in str(caught.value) or name[:40] in str(caught.value)
    assert caught.value.path == str(directory / ADAPTER_WEIGHTS)


@pytest.mark.parametrize("dtype", ["F64", "I8", "U8", "I64", "BOOL", "F8_E4M3"])
def test_lora_tensors_must_be_floating_16_or_32_bit(tmp_path: Path, dtype: str) -> None:
    tensors = lora_tensors()
    name = next(iter(tensors))
    tensors[name] = (dtype, tensors[name][1])
    with pytest.raises(AdapterValidationError, match=f"has dtype {dtype}; allowed: BF16, F16, F32"):
        inspect(make_adapter(tmp_path / "a", tensors))


@pytest.mark.parametrize("dtype", ["F16", "BF16", "F32"])
def test_floating_dtypes_pass(tmp_path: Path, dtype: str) -> None:
    tensors = {name: (dtype, shape) for name, (_, shape) in lora_tensors().items()}
    assert inspect(make_adapter(tmp_path / "a", tensors)).rank == 8


def test_lora_tensors_must_be_2d(tmp_path: Path) -> None:
    tensors = lora_tensors()
    name = next(iter(tensors))
    tensors[name] = ("F32", (8, HIDDEN, 1))
    with pytest.raises(AdapterValidationError, match=r"has shape \[8, 128, 1\]; LoRA tensors are"):
        inspect(make_adapter(tmp_path / "a", tensors))


REFUSED_CONFIG = {
    "modules_to_save": (["lm_head"], "'modules_to_save' is set"),
    "layer_replication": ([[0, 1], [0, 1]], "'layer_replication' is set"),
    "trainable_token_indices": ([1, 2], "'trainable_token_indices' is set"),
    "target_parameters": (["model.layers.0.mlp.experts"], "'target_parameters' is set"),
    "alora_invocation_tokens": ([5], "'alora_invocation_tokens' is set"),
    "megatron_config": ({"tp": 2}, "'megatron_config' is set"),
    "use_dora": (True, "'use_dora' is set"),
    "lora_bias": (True, "'lora_bias' is set"),
    "bias": ("all", "'bias' is 'all'; only 'none'"),
    "fan_in_fan_out": ("yes", "'fan_in_fan_out' must be true or false"),
    "use_rslora": (1, "'use_rslora' must be true or false"),
    "lora_dropout": (1.5, "'lora_dropout' must be a number in [0, 1)"),
}


@pytest.mark.parametrize("field", sorted(REFUSED_CONFIG))
def test_config_fields_that_touch_the_base_are_refused(tmp_path: Path, field: str) -> None:
    value, message = REFUSED_CONFIG[field]
    directory = make_adapter(tmp_path / "a", **{field: value})
    with pytest.raises(AdapterValidationError, match=re.escape(message)) as caught:
        inspect(directory)
    assert caught.value.path == str(directory / ADAPTER_CONFIG)


@pytest.mark.parametrize("field", ["modules_to_save", "layer_replication", "use_dora", "bias"])
def test_empty_values_of_those_fields_are_fine(tmp_path: Path, field: str) -> None:
    empty = {"modules_to_save": None, "layer_replication": None, "use_dora": False, "bias": "none"}
    assert inspect(make_adapter(tmp_path / "a", **{field: empty[field]})).rank == 8


# -- no file-supplied regex ever runs ---------------------------------------------------------


def test_catastrophic_rank_pattern_is_refused_not_run(tmp_path: Path) -> None:
    """`(a|a)*c` against a module of 25+ 'a's froze the process for seconds: now refused."""
    module = "a" * 40
    tensors = {
        f"base_model.model.{module}.lora_A.weight": ("F32", (8, HIDDEN)),
        f"base_model.model.{module}.lora_B.weight": ("F32", (HIDDEN, 8)),
    }
    directory = make_adapter(tmp_path / "a", tensors, rank_pattern={"(a|a)*c": 8})
    with pytest.raises(AdapterValidationError, match="regular expressions from files are not run"):
        inspect(directory)


def test_rank_pattern_first_matching_key_wins_like_peft(tmp_path: Path) -> None:
    """Plain keys keep PEFT's meaning: the first key (file order) matching a dotted suffix."""
    tensors = lora_tensors(targets=("q_proj",), rank={"q_proj": 4})
    pattern = {"q_proj": 4, "model.layers.0.self_attn.q_proj": 16}
    assert inspect(make_adapter(tmp_path / "a", tensors, rank_pattern=pattern)).rank == 16
    wrong = {"model.layers.0.self_attn.q_proj": 16, "q_proj": 4}  # layer 0 would need rank 16
    with pytest.raises(AdapterValidationError, match="has rank 4, config says 16"):
        inspect(make_adapter(tmp_path / "b", tensors, rank_pattern=wrong))


def test_limits_on_names_and_counts(tmp_path: Path) -> None:
    long = "m" * (MAX_NAME_CHARS + 1)
    tensors = {
        f"base_model.model.{long}.lora_A.weight": ("F32", (8, 4)),
        f"base_model.model.{long}.lora_B.weight": ("F32", (4, 8)),
    }
    with pytest.raises(AdapterValidationError, match="over 512 characters"):
        inspect(make_adapter(tmp_path / "a", tensors))
    deep = ".".join(["m"] * 33)
    tensors = {
        f"base_model.model.{deep}.lora_A.weight": ("F32", (8, 4)),
        f"base_model.model.{deep}.lora_B.weight": ("F32", (4, 8)),
    }
    with pytest.raises(AdapterValidationError, match="over 32 dotted parts"):
        inspect(make_adapter(tmp_path / "b", tensors))
    keys = {f"k{i}": 8 for i in range(MAX_PATTERN_KEYS + 1)}
    with pytest.raises(AdapterValidationError, match="over 4096 keys"):
        inspect(make_adapter(tmp_path / "c", rank_pattern=keys))


def test_tensor_count_is_bounded(tmp_path: Path) -> None:
    tensors = {
        f"base_model.model.m{i}.lora_{half}.weight": ("F32", (1, 1))
        for i in range(MAX_TENSORS // 2 + 1)
        for half in "AB"
    }
    with pytest.raises(AdapterValidationError, match=f"over {MAX_TENSORS} tensors"):
        inspect(make_adapter(tmp_path / "a", tensors, r=1))


def test_deeply_nested_config_is_a_clear_error(tmp_path: Path) -> None:
    directory = make_adapter(tmp_path / "a")
    (directory / ADAPTER_CONFIG).write_text('{"r": 8, "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(AdapterValidationError, match="nested too deeply"):
        inspect(directory)


# -- adapters saved by real PEFT --------------------------------------------------------------


def _save(toy_base: Path, out: Path, save_embedding_layers: bool = False, **config: Any) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(toy_base)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], **config)
    peft_model = get_peft_model(model, lora)
    peft_model.save_pretrained(out, save_embedding_layers=save_embedding_layers)
    return out


PEFT_CONFIGS: dict[str, tuple[dict[str, Any], str]] = {
    "modules_to_save": ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    "bias all": ({"bias": "all"}, "'bias' is 'all'"),
    "bias lora_only": ({"bias": "lora_only"}, "'bias' is 'lora_only'"),
    "DoRA": ({"use_dora": True}, "'use_dora' is set"),
    "layer replication": ({"layer_replication": [[0, 1], [0, 1]]}, "'layer_replication'"),
}


@pytest.mark.parametrize("case", sorted(PEFT_CONFIGS))
def test_real_peft_adapters_that_restructure_the_base_are_refused(
    toy_base: Path, tmp_path: Path, case: str
) -> None:
    config, message = PEFT_CONFIGS[case]
    directory = _save(toy_base, tmp_path / "a", **config)
    with pytest.raises(AdapterValidationError, match=re.escape(message)):
        validate(directory, base=toy_base)


def test_real_peft_saved_embedding_layers_are_refused(toy_base: Path, tmp_path: Path) -> None:
    """save_embedding_layers=True writes the full embed_tokens weight: a base tensor."""
    directory = _save(toy_base, tmp_path / "a", save_embedding_layers=True)
    with pytest.raises(
        AdapterValidationError, match=r"(embed_tokens|lm_head)\.weight' is not a LoRA"
    ):
        validate(directory, base=toy_base)


def test_real_peft_plain_lora_passes(toy_base: Path, tmp_path: Path) -> None:
    info = validate(_save(toy_base, tmp_path / "a"), base=toy_base)
    assert info.rank == 4
    assert all(ALLOWED.fullmatch(tensor.name) for tensor in info.tensors)


# -- fuzz -------------------------------------------------------------------------------------

_WORDS = st.sampled_from(
    ["model", "layers", "0", "1", "self_attn", "q_proj", "v_proj", "base_layer", "lm_head",
     "norm", "embed_tokens", "lora_A", "lora_B", "weight", "bias", "modules_to_save", "default",
     "lora_magnitude_vector", "lora_embedding_A", "", "..", "a|a", "(a)*"]
)  # fmt: skip
_PREFIXES = st.sampled_from(["base_model.model.", "", "base_model.", "model."])
_NAMES = st.builds(lambda p, ws: p + ".".join(ws), _PREFIXES, st.lists(_WORDS, max_size=7))
_LEAVES = st.none() | st.booleans() | st.integers(-5, 70) | st.floats() | st.text(max_size=8)
_JSON = st.recursive(
    _LEAVES,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
_CONFIG_KEYS = st.sampled_from(
    ["r", "lora_alpha", "target_modules", "rank_pattern", "alpha_pattern", "bias",
     "modules_to_save", "use_dora", "layer_replication", "lora_dropout", "fan_in_fan_out",
     "peft_type", "model_type", "base_model_name_or_path", "use_rslora", "megatron_config"]
)  # fmt: skip
FUZZ = settings(
    max_examples=200,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(
    names=st.lists(_NAMES, max_size=6, unique=True),
    dtypes=st.lists(st.sampled_from(["F32", "F16", "BF16", "F64", "I8"]), min_size=6, max_size=6),
    shapes=st.lists(st.lists(st.integers(0, 9), min_size=0, max_size=3), min_size=6, max_size=6),
    config=st.dictionaries(_CONFIG_KEYS, _JSON, max_size=6),
)
def test_fuzzed_adapters_pass_only_with_lora_tensors(
    tmp_path: Path,
    names: list[str],
    dtypes: list[str],
    shapes: list[list[int]],
    config: dict[str, Any],
) -> None:
    """Whatever the names, dtypes, shapes and config: AdapterInfo or AdapterValidationError,
    never another exception; and what passes holds only allowed LoRA tensor names."""
    directory = tmp_path / "fuzz"
    directory.mkdir(exist_ok=True)
    tensors = {
        name: (dtype, tuple(shape))
        for name, dtype, shape in zip(names, dtypes, shapes, strict=False)
    }
    try:
        write_safetensors(directory / ADAPTER_WEIGHTS, tensors)
        write_config(directory, **{"r": 8, **config})
    except (TypeError, ValueError, KeyError):  # not writable as JSON: not an input
        return
    try:
        info = inspect(directory)
    except AdapterValidationError:
        return
    assert all(ALLOWED.fullmatch(tensor.name) for tensor in info.tensors)
    assert info.tensors


@FUZZ
@given(raw=st.binary(max_size=200))
def test_fuzzed_config_bytes_never_escape(tmp_path: Path, raw: bytes) -> None:
    directory = make_adapter(tmp_path / "raw")
    (directory / ADAPTER_CONFIG).write_bytes(raw)
    with contextlib.suppress(AdapterValidationError):
        inspect(directory)
