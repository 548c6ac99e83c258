"""Tests for tenantlora.toy: the synthetic lead world, the tokenizer and the tiny base model."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import hypothesis
import pytest
from hypothesis import strategies as st

from tenantlora import _fit, toy, training
from tenantlora.errors import ConfigurationError

PROMPT = "company acme corp staff 400 funding pe-backed sector saas region emea"


@pytest.fixture
def no_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `import torch` fail, as on an install without the training extra."""
    monkeypatch.setitem(sys.modules, "torch", None)


# --- the lead world (no torch) -----------------------------------------------------------------


def test_leads_are_seeded_and_distinct() -> None:
    """The same seed gives the same leads; a lead never repeats within one draw."""
    assert toy.leads(seed=3, n=50) == toy.leads(seed=3, n=50)
    assert toy.leads(seed=3, n=50) != toy.leads(seed=4, n=50)
    batch = toy.leads(seed=3, n=2000)
    assert len({tuple(lead.values()) for lead in batch}) == 2000


def test_lead_prompt_format() -> None:
    """A lead renders as the fixed `field value` prompt."""
    lead = toy.Lead(
        company="acme corp", staff=400, funding="pe-backed", sector="saas", region="emea"
    )
    assert toy.lead_prompt(lead) == PROMPT


def test_tenant_rules_disagree_with_the_base_and_each_other() -> None:
    """On the same leads, each tenant's answers differ from the base's and from each other's."""
    sample = toy.leads(seed=7, n=500)
    rules = {"base": toy.BASE_RULE, **toy.tenant_rules()}
    answers = {name: [rule.answer(lead) for lead in sample] for name, rule in rules.items()}
    names = list(answers)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            same = sum(a == b for a, b in zip(answers[first], answers[second], strict=True))
            assert same / len(sample) < 0.5, (first, second)
    for name, given in answers.items():
        qualified = sum(a.startswith("qualified") for a in given) / len(sample)
        assert 0.15 < qualified < 0.85, name  # every rule says both verdicts


def test_rule_rows_are_a_valid_dataset() -> None:
    """Rule.rows gives chat rows that pass the dataset checks."""
    rows = toy.tenant_rules()["europa"].rows(toy.leads(seed=1, n=20))
    examples = training.load_examples(rows)
    assert len(examples) == 20
    assert examples[0].completion in {"qualified region", "not qualified region"}


# --- tokenizer ---------------------------------------------------------------------------------


def test_tokenizer_round_trip_and_unknown_words() -> None:
    """Every toy word after a space is one piece; text round-trips; anything else falls back to
    characters and bytes (never <unk>), so no input is lost."""
    tokenizer = toy.build_tokenizer()
    words = [w for w in toy._vocabulary()[4:] if "-" not in w]
    for word in words:
        assert tokenizer.tokenize(f" {word}") == [f"▁{word}"]
    assert tokenizer.tokenize(" pe-backed") == ["▁pe", "-", "backed"]
    ids = tokenizer(f" {PROMPT}", add_special_tokens=False)["input_ids"]
    assert len(ids) == len(PROMPT.split()) + PROMPT.count("-") * 2
    assert tokenizer.decode(ids) == PROMPT
    odd = " Acme Corp, zorblax ünï 😀"
    ids = tokenizer(odd, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == odd.lstrip()


def test_tokenizer_special_tokens_and_padding_side() -> None:
    """bos/eos/pad/unk are set and padding is on the left."""
    tokenizer = toy.build_tokenizer()
    assert (tokenizer.bos_token, tokenizer.eos_token) == ("<bos>", "<eos>")
    assert (tokenizer.pad_token, tokenizer.unk_token) == ("<pad>", "<unk>")
    batch = tokenizer([" acme corp", " acme corp staff 400"], padding=True)
    assert batch["input_ids"][0][:2] == [tokenizer.pad_token_id] * 2
    assert batch["attention_mask"][0] == [0, 0, 1, 1]


def test_chat_template_renders() -> None:
    """The chat template renders a conversation and ends a prompt with `assistant:`."""
    tokenizer = toy.build_tokenizer()
    messages = [{"role": "user", "content": PROMPT}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == f"<bos> user: {PROMPT}<eos> assistant:"
    full = [*messages, {"role": "assistant", "content": "qualified region"}]
    text = tokenizer.apply_chat_template(full, tokenize=False)
    assert text == f"<bos> user: {PROMPT}<eos> assistant: qualified region<eos>"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces = tokenizer.convert_ids_to_tokens(ids)
    assert pieces[:3] == ["<bos>", "▁user", ":"]
    assert pieces[-5:] == ["▁assistant", ":", "▁qualified", "▁region", "<eos>"]


def test_missing_extra_names_the_install_hint(no_torch: None, tmp_path: Path) -> None:
    """Without torch, building raises ConfigurationError with the pip hint."""
    with pytest.raises(ConfigurationError, match=r"pip install 'tenantlora\[train\]'"):
        toy.build_toy_model(tmp_path / "toy", steps=1)
    with pytest.raises(ConfigurationError, match="torch"):
        toy.build_tokenizer()


# --- the built model ---------------------------------------------------------------------------


def test_saved_tokenizer_keeps_left_padding_and_template(toy_base: Path) -> None:
    """The saved tokenizer reloads with left padding and the chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(toy_base)
    assert tokenizer.padding_side == "left"
    assert tokenizer.chat_template == toy.CHAT_TEMPLATE
    config = json.loads((toy_base / "tokenizer_config.json").read_text())
    assert config["padding_side"] == "left"
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"


def test_model_config(toy_base: Path) -> None:
    """A 2-layer Llama with head_dim 32 (vLLM's CPU minimum) and the tokenizer's vocabulary."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(toy_base)
    assert config.model_type == "llama"
    assert (config.hidden_size, config.num_attention_heads, config.head_dim) == (128, 4, 32)
    assert (config.num_hidden_layers, config.intermediate_size) == (2, 256)
    assert config.vocab_size == len(toy.build_tokenizer())
    assert config.max_position_embeddings == 256


def test_files_are_readable(toy_base: Path) -> None:
    """Every model file is 0644 and the weights are safetensors."""
    assert (toy_base / "model.safetensors").is_file()
    for path in toy_base.iterdir():
        assert path.stat().st_mode & 0o777 == 0o644, path.name


def test_base_answers_in_format_by_its_rule(toy_base: Path) -> None:
    """Pre-trained, the base answers unseen leads by BASE_RULE."""
    sample = toy.leads(seed=12345, n=50)
    prompts = [[{"role": "user", "content": toy.lead_prompt(lead)}] for lead in sample]
    answers = training.predict(toy_base, prompts)
    expected = [toy.BASE_RULE.answer(lead) for lead in sample]
    assert sum(a == e for a, e in zip(answers, expected, strict=True)) >= 45


def test_same_seed_same_weights(tmp_path: Path) -> None:
    """Two builds with one seed have identical weights; another seed gives other weights."""
    first = toy.build_toy_model(tmp_path / "a", seed=5, steps=10)
    second = toy.build_toy_model(tmp_path / "b", seed=5, steps=10)
    other = toy.build_toy_model(tmp_path / "c", seed=6, steps=10)
    weights = [(p / "model.safetensors").read_bytes() for p in (first, second, other)]
    assert weights[0] == weights[1]
    assert weights[0] != weights[2]
    prompts = [[{"role": "user", "content": PROMPT}]]
    assert training.predict(first, prompts) == training.predict(second, prompts)


def test_second_build_is_a_no_op(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A complete build with the same parameters is reused; other parameters rebuild."""
    out = toy.build_toy_model(tmp_path / "toy", steps=3)
    manifest = json.loads((out / toy.MANIFEST).read_text())
    assert manifest["params"] == {"toy_version": toy.TOY_VERSION, "seed": 0, "steps": 3}
    stamp = (out / "model.safetensors").stat().st_mtime_ns

    def refuse(*args: object, **kwargs: object) -> float:
        raise AssertionError("trained again")

    monkeypatch.setattr(_fit, "fit", refuse)
    assert toy.build_toy_model(out, steps=3) == out
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(AssertionError, match="trained again"):
        toy.build_toy_model(out, steps=4)  # other parameters: not reused


def test_incomplete_build_is_redone(tmp_path: Path) -> None:
    """A build missing a file (say, interrupted) is not mistaken for a complete one."""
    out = toy.build_toy_model(tmp_path / "toy", steps=2)
    os.remove(out / "model.safetensors")
    toy.build_toy_model(out, steps=2)
    assert (out / "model.safetensors").is_file()


_PIECES = [*toy._vocabulary()[4:], "Acme", "x", "ü", "😀", "", "  ", "\n", "<eos>x"]


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(st.lists(st.sampled_from(_PIECES), min_size=1, max_size=12))
def test_saved_sentencepiece_model_tokenizes_as_the_tokenizer(
    toy_base: Path, parts: list[str]
) -> None:
    """The saved tokenizer.model (what llama.cpp's converter reads) splits any text into the
    same ids as tokenizer.json (what transformers and vLLM read): one tokenizer, two files."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    processor = spm.SentencePieceProcessor(model_file=str(toy_base / "tokenizer.model"))
    tokenizer = AutoTokenizer.from_pretrained(toy_base)
    text = " " + " ".join(parts)
    # SentencePiece encodes "" as nothing, not as its dummy-prefix space: not a tokenizer case.
    hypothesis.assume(text != " ")
    # The SentencePiece model adds its own leading "▁" (add_dummy_prefix, kept for training);
    # llama.cpp does not (add_space_prefix false in tokenizer_config.json), nor does transformers.
    expected = processor.encode(text[1:])
    assert tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"] == (
        expected
    )
    config = json.loads((toy_base / "tokenizer_config.json").read_text())
    assert (config["add_prefix_space"], config["add_bos_token"]) == (False, False)
