"""Dataset checks and a local PEFT LoRA trainer.

```python
from tenantlora.training import load_examples, split, train_adapter

examples = load_examples("acme-icp.jsonl")          # InvalidRequestError("line 7: ...") on bad rows
train, heldout = split(examples, holdout=0.2, seed=0)
result = train_adapter("models/base", train, "adapters/acme-icp-v1", steps=200)
result.path, result.steps, result.final_loss, result.seconds
```

A dataset is JSONL (or an iterable of dicts), one example per row, in either form:

- chat: ``{"messages": [{"role": "user", "content": "..."}, ..., {"role": "assistant", ...}]}``;
  the last message is the assistant's and is the training target, the ones before are the prompt;
- pairs: ``{"prompt": "...", "completion": "..."}``; the prompt becomes one user message.

Loading checks the schema, empty and over-long rows, duplicates and conflicting answers, and names
the offending line. Training needs the optional extra (``pip install 'tenantlora[train]'``):
torch, transformers and peft are imported inside the functions that use them, never at import time.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tenantlora._fit import (
    Schedule as _Schedule,
)
from tenantlora._fit import (
    encode as _encode,
)
from tenantlora._fit import (
    fit as _fit,
)
from tenantlora._fit import (
    load_model as _load_model,
)
from tenantlora._fit import (
    load_tokenizer as _load_tokenizer,
)
from tenantlora._fit import (
    render as _render,
)
from tenantlora._fit import (
    require_extra as _require_extra,
)
from tenantlora._fit import (
    seeded as _seeded,
)
from tenantlora._hf import quiet as _quiet
from tenantlora.datasets import Example, load_examples, split
from tenantlora.errors import ConfigurationError, InvalidRequestError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "ADAPTER_FILES",
    "Example",
    "TrainResult",
    "load_examples",
    "predict",
    "split",
    "train_adapter",
]

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
"""The two files an adapter directory holds (what Workers AI accepts as fine-tune assets)."""


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What :func:`train_adapter` did. ``os.fspath(result)`` is the adapter directory."""

    path: Path
    steps: int
    final_loss: float
    seconds: float

    def __fspath__(self) -> str:
        return str(self.path)


def _steps_for(size: int, batch_size: int, steps: int | None, epochs: float | None) -> int:
    if steps is not None and epochs is not None:
        raise ConfigurationError("pass steps or epochs, not both")
    if steps is None:
        epochs = 3.0 if epochs is None else epochs
        if epochs <= 0:
            raise ConfigurationError(f"epochs must be positive, not {epochs!r}")
        steps = math.ceil(epochs * size / batch_size)
    if steps < 1:
        raise ConfigurationError(f"steps must be at least 1, not {steps!r}")
    return steps


def _as_examples(
    dataset: str | os.PathLike[str] | Iterable[Example] | Iterable[Mapping[str, Any]],
) -> list[Example]:
    if isinstance(dataset, (str, os.PathLike)):
        return load_examples(dataset)
    rows: list[Example | Mapping[str, Any]] = list(dataset)
    examples = [row for row in rows if isinstance(row, Example)]
    if not examples:
        return load_examples(row for row in rows if not isinstance(row, Example))
    if len(examples) != len(rows):
        raise InvalidRequestError("dataset mixes Example objects and row dicts: use one kind")
    return examples


def _base_name(base: str | os.PathLike[str], base_name: str | None) -> str:
    """What goes in ``base_model_name_or_path``: never a local absolute path."""
    if base_name:
        return base_name
    path = Path(base)
    return path.resolve().name if path.exists() else os.fspath(base)


def _save_adapter(model: Any, out_dir: Path, base_name: str) -> None:
    """Write exactly ADAPTER_FILES into ``out_dir``, mode 0644, with a portable base name.

    peft also writes a README.md model card and creates files 0600, so it saves into a scratch
    directory next to ``out_dir`` and only the two adapter files are moved in. The config is
    rewritten with sorted keys and target modules (peft keeps them in a set: random order).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        # save_embedding_layers=False: "auto" may look the base model's name up on the Hub.
        model.save_pretrained(os.fspath(scratch), save_embedding_layers=False)
        config_path = scratch / "adapter_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["base_model_name_or_path"] = base_name
        if isinstance(config.get("target_modules"), list):
            config["target_modules"] = sorted(config["target_modules"])
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", "utf-8")
        for name in ADAPTER_FILES:
            (scratch / name).chmod(0o644)
            os.replace(scratch / name, out_dir / name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _linear_names(model: PreTrainedModel) -> list[str]:
    """What peft's ``all-linear`` means, as sorted short names: every Linear but the head."""
    import torch

    head = model.get_output_embeddings()  # type: ignore[no-untyped-call]
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not head
    }
    return sorted(names)


def _check_lora_options(rank: int, alpha: int, lr: float, batch_size: int) -> None:
    if rank < 1:
        raise ConfigurationError(f"rank must be at least 1, not {rank!r}")
    if alpha <= 0 or lr <= 0:
        raise ConfigurationError("alpha and lr must be positive")
    if batch_size < 1:
        raise ConfigurationError(f"batch_size must be at least 1, not {batch_size!r}")


def train_adapter(
    base: str | os.PathLike[str],
    dataset: str | os.PathLike[str] | Iterable[Example] | Iterable[Mapping[str, Any]],
    out_dir: str | os.PathLike[str],
    *,
    rank: int = 8,
    alpha: int = 16,
    target_modules: str | Sequence[str] = "all-linear",
    steps: int | None = None,
    epochs: float | None = None,
    lr: float = 2e-4,
    batch_size: int = 16,
    seed: int = 0,
    base_name: str | None = None,
    threads: int = 1,
    progress: bool = True,
) -> TrainResult:
    """Train a LoRA adapter on ``base`` (a model directory) and write it to ``out_dir``.

    ``dataset`` is a JSONL path, row dicts (both checked by :func:`load_examples`) or Examples.
    Train for ``steps`` optimizer steps or ``epochs`` passes (default: 3 epochs, not both);
    the loss counts the answer tokens only. The base is loaded afresh for every call.

    ``out_dir`` receives exactly :data:`ADAPTER_FILES`, mode 0644 (other files there are left
    alone); ``base_model_name_or_path`` in the config is ``base_name``, or the base directory's
    name, never a local path. Training runs on the CPU with ``threads`` torch threads (raise it
    for models bigger than the toy); the same inputs, ``seed`` and ``threads`` give the same
    adapter bytes.
    Raises ConfigurationError for bad options or a missing training extra, InvalidRequestError
    for a bad dataset.
    """
    examples = _as_examples(dataset)
    _check_lora_options(rank, alpha, lr, batch_size)
    schedule = _Schedule(_steps_for(len(examples), batch_size, steps, epochs), batch_size, lr, seed)
    _require_extra()
    from peft import LoraConfig, get_peft_model

    started = time.perf_counter()
    with _quiet(), _seeded(seed, threads):
        tokenizer = _load_tokenizer(base)
        encoded = [_encode(tokenizer, example) for example in examples]
        model = _load_model(base)
        # Spelled out so adapter_config.json lists short names (q_proj, ...) in a stable order.
        modules = _linear_names(model) if target_modules == "all-linear" else target_modules
        config = LoraConfig(
            r=rank,
            lora_alpha=alpha,
            target_modules=modules if isinstance(modules, str) else list(modules),
            lora_dropout=0.0,
            task_type="CAUSAL_LM",
        )
        peft_model = get_peft_model(model, config)
        pad_id = _pad_id(tokenizer)
        path = Path(out_dir)
        loss = _fit(peft_model, encoded, schedule, pad_id=pad_id, desc=path.name, progress=progress)
        _save_adapter(peft_model, path, _base_name(base, base_name))
    seconds = time.perf_counter() - started
    return TrainResult(path=path, steps=schedule.steps, final_loss=loss, seconds=seconds)


def _pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if isinstance(candidate, int):
            return candidate
    return 0


def _prompt_dicts(prompt: Example | Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    if isinstance(prompt, Example):
        return prompt.messages[:-1]
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def predict(
    base: str | os.PathLike[str],
    prompts: Sequence[Example | Sequence[Mapping[str, str]]],
    *,
    adapter: str | os.PathLike[str] | None = None,
    max_new_tokens: int = 16,
    batch_size: int = 64,
) -> list[str]:
    """Greedy answers of ``base`` (with ``adapter`` if given) to each prompt, in order.

    A prompt is an Example (its prompt messages are used) or a list of chat dicts; the answer is
    the decoded new text without special tokens, stripped. Meant for evaluation and tests: it
    loads the model on every call.
    """
    _require_extra()
    import torch

    with _quiet():
        tokenizer = _load_tokenizer(base)
        model: Any = _load_model(base)
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, os.fspath(adapter))
    model.eval()
    texts = [_render(tokenizer, _prompt_dicts(p), True) for p in prompts]
    answers: list[str] = []
    with _seeded(0), torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[start : start + batch_size],
                add_special_tokens=False,
                padding=True,
                padding_side="left",
                return_tensors="pt",
            )
            out = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=_pad_id(tokenizer),
            )
            new = out[:, batch["input_ids"].shape[1] :]
            answers += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    return answers
