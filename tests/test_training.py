"""Tests for tenantlora.training: dataset checks, the split, and LoRA training on the toy base."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tenantlora import toy, training
from tenantlora.errors import ConfigurationError, InvalidRequestError
from tenantlora.training import ADAPTER_FILES, Example, load_examples, split, train_adapter

ROOT = Path(__file__).resolve().parents[1]
ADAPTER_STEPS = 150


def _examples(n: int) -> list[Example]:
    return load_examples(toy.BASE_RULE.rows(toy.leads(seed=0, n=n)))


def _chat(prompt: str, answer: str) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": answer},
        ]
    }


def _problem(rows: list[Any]) -> str:
    with pytest.raises(InvalidRequestError) as info:
        load_examples(rows)
    return str(info.value)


# --- training ----------------------------------------------------------------------------------


def test_train_adapter_files_modes_and_base_name(toy_base: Path, tmp_path: Path) -> None:
    """Exactly the two adapter files, mode 0644, a portable base name, sorted short targets."""
    rows = toy.tenant_rules()["europa"].rows(toy.leads(seed=1, n=40))
    result = train_adapter(toy_base, rows, tmp_path / "adapter", steps=3, progress=False)
    assert result.path == tmp_path / "adapter"
    assert os.fspath(result) == str(tmp_path / "adapter")
    assert result.steps == 3
    assert result.final_loss > 0
    assert result.seconds > 0
    assert sorted(p.name for p in result.path.iterdir()) == sorted(ADAPTER_FILES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no scratch left behind
    for name in ADAPTER_FILES:
        assert (result.path / name).stat().st_mode & 0o777 == 0o644
    config = json.loads((result.path / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == toy_base.name == "toy-base"
    assert (config["r"], config["lora_alpha"], config["peft_type"]) == (8, 16, "LORA")
    assert config["target_modules"] == sorted(config["target_modules"])
    assert "q_proj" in config["target_modules"]
    assert "lm_head" not in config["target_modules"]


def test_base_name_override_and_epochs(toy_base: Path, tmp_path: Path) -> None:
    """base_name replaces the directory name; epochs set the step count."""
    rows = toy.tenant_rules()["europa"].rows(toy.leads(seed=1, n=32))
    result = train_adapter(
        toy_base, rows, tmp_path / "a", epochs=0.5, batch_size=16, base_name="toy", progress=False
    )
    assert result.steps == 1
    config = json.loads((result.path / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "toy"


@pytest.mark.parametrize(
    "options",
    [
        {"steps": 2, "epochs": 1.0},
        {"steps": 0},
        {"epochs": -1.0},
        {"rank": 0},
        {"lr": 0.0},
        {"batch_size": 0},
    ],
)
def test_bad_options(toy_base: Path, tmp_path: Path, options: dict[str, Any]) -> None:
    """Bad training options raise ConfigurationError before any work."""
    rows = [_chat("a", "b")]
    with pytest.raises(ConfigurationError):
        train_adapter(toy_base, rows, tmp_path / "a", progress=False, **options)
    assert not (tmp_path / "a").exists()


def test_bad_dataset_is_refused(toy_base: Path, tmp_path: Path) -> None:
    """A bad dataset raises InvalidRequestError naming the line, before loading the model."""
    with pytest.raises(InvalidRequestError, match=r"^line 1: "):
        train_adapter(toy_base, [{"prompt": "x"}], tmp_path / "a", steps=1, progress=False)
    mixed: list[Any] = [*_examples(1), _chat("a", "b")]
    with pytest.raises(InvalidRequestError, match="mixes"):
        train_adapter(toy_base, mixed, tmp_path / "a", steps=1)


def test_training_is_deterministic_and_isolated(toy_base: Path, tmp_path: Path) -> None:
    """One seed gives byte-identical adapters, even after training another adapter in between
    (the base is reloaded per adapter); another seed gives another adapter."""
    rules = toy.tenant_rules()
    europa = rules["europa"].rows(toy.leads(seed=2, n=64))
    kahuna = rules["kahuna"].rows(toy.leads(seed=2, n=64))

    def weights(rows: list[dict[str, Any]], name: str, seed: int = 0) -> bytes:
        result = train_adapter(toy_base, rows, tmp_path / name, steps=5, seed=seed, progress=False)
        return (result.path / "adapter_model.safetensors").read_bytes()

    first = weights(europa, "e1")
    weights(kahuna, "k1")
    assert weights(europa, "e2") == first
    assert weights(europa, "e3", seed=1) != first
    config = (tmp_path / "e1" / "adapter_config.json").read_bytes()
    assert (tmp_path / "e2" / "adapter_config.json").read_bytes() == config


def test_adapter_learns_its_tenant_rule(toy_base: Path, tmp_path: Path) -> None:
    """Trained on one tenant's rule, the adapter answers held-out leads by it; the base does not."""
    rows = toy.tenant_rules()["europa"].rows(toy.leads(seed=1, n=250))
    train, heldout = split(load_examples(rows), holdout=0.2, seed=0)
    result = train_adapter(
        toy_base, train, tmp_path / "europa", steps=ADAPTER_STEPS, lr=toy.ADAPTER_LR, progress=False
    )
    base = training.predict(toy_base, heldout)
    tuned = training.predict(toy_base, heldout, adapter=result.path)

    def accuracy(answers: list[str]) -> float:
        return sum(a == e.completion for a, e in zip(answers, heldout, strict=True)) / len(heldout)

    assert accuracy(tuned) >= 0.9
    assert accuracy(base) <= 0.5
    assert sum(a != b for a, b in zip(base, tuned, strict=True)) >= len(heldout) // 2


def test_missing_extra_names_the_install_hint(
    toy_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without torch, training and prediction raise ConfigurationError with the pip hint."""
    monkeypatch.setitem(sys.modules, "torch", None)
    hint = r"training needs torch, which is not installed: pip install 'tenantlora\[train\]'"
    with pytest.raises(ConfigurationError, match=hint):
        train_adapter(toy_base, [_chat("a", "b")], tmp_path / "a", steps=1)
    with pytest.raises(ConfigurationError, match=hint):
        training.predict(toy_base, [[{"role": "user", "content": "a"}]])
    with pytest.raises(ConfigurationError, match=hint):
        load_examples([_chat("a", "b")], max_tokens=5, tokenizer=toy_base)


def test_import_does_not_load_torch() -> None:
    """`import tenantlora.training` and `tenantlora.toy` load none of the training extra."""
    script = (
        "import sys, tenantlora.training, tenantlora.toy\n"
        "heavy = ('torch', 'transformers', 'peft', 'tokenizers', 'tqdm')\n"
        "print([name for name in heavy if name in sys.modules])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"
