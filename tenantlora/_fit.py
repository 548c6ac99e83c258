"""The model side of LoRA training, shared by :mod:`tenantlora.training` and :mod:`tenantlora.toy`.

Loading a base model and its tokenizer (never from a hub: a missing directory is a
ConfigurationError), rendering and encoding examples, batching, the AdamW fit loop and seeding.
torch, transformers and peft are imported inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import random
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from tenantlora.errors import ConfigurationError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from tenantlora.datasets import Example

__all__ = [
    "INSTALL_HINT",
    "Schedule",
    "batches",
    "check_base",
    "collate",
    "encode",
    "fit",
    "load_model",
    "load_tokenizer",
    "progress_bar",
    "render",
    "require_extra",
    "seeded",
]

INSTALL_HINT = (
    "pip install 'tenantlora[train]' (install the torch build you want first, e.g. the CPU one: "
    "pip install torch --index-url https://download.pytorch.org/whl/cpu)"
)


def require_extra(also: Sequence[str] = ()) -> None:
    """Raise ConfigurationError with the install hint when torch/transformers/peft (or a module
    named in ``also``, from the same extra) are missing."""
    for name in ("torch", "transformers", "peft", *also):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigurationError(
                f"training needs {name}, which is not installed: {INSTALL_HINT}"
            ) from exc


# --- dataset checks -------------------------------------------------------------------------


def check_base(base: str | os.PathLike[str]) -> str:
    """The base model directory, or ConfigurationError naming it (never a hub download: a
    missing local directory would otherwise make transformers look the name up online)."""
    path = os.fspath(base)
    if not os.path.isdir(path):
        raise ConfigurationError(f"base model {path!r}: no such directory")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ConfigurationError(f"base model {path!r}: no config.json (not a saved model)")
    return path


def load_tokenizer(base: str | os.PathLike[str]) -> PreTrainedTokenizerBase:
    require_extra()
    from transformers import AutoTokenizer

    path = os.fspath(base)
    if not os.path.isdir(path):  # a tokenizer directory needs no config.json, only to exist
        raise ConfigurationError(f"base model {path!r}: no such directory")
    try:
        tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ConfigurationError(
            f"base model {path!r}: cannot load its tokenizer ({type(exc).__name__})"
        ) from None
    return tokenizer


def load_model(base: str | os.PathLike[str]) -> PreTrainedModel:
    """A fresh float32 copy of the base (peft wraps a model in place: never reuse one)."""
    require_extra()
    import torch
    from transformers import AutoModelForCausalLM

    path = check_base(base)
    try:
        model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise ConfigurationError(
            f"base model {path!r}: cannot load it as a causal LM ({type(exc).__name__})"
        ) from None
    return model


def render(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], gen: bool) -> str:
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=gen, tokenize=False)
    if not isinstance(text, str):  # pragma: no cover - tokenize=False always gives a string
        raise TypeError("apply_chat_template did not return a string")
    return text


def encode(tokenizer: PreTrainedTokenizerBase, example: Example) -> tuple[list[int], list[int]]:
    """Token ids of the whole chat and labels that mask the prompt with -100 (loss on the answer).

    The prompt is rendered with the generation prompt, exactly as at inference; the answer is
    what the full rendering adds after it (or the completion plus EOS when the template does not
    extend the prompt), so training and generation see the same prompt tokens.
    """
    prompt_messages = example.messages[:-1]
    prompt = render(tokenizer, prompt_messages, True)
    full = render(tokenizer, example.messages, False)
    answer = full[len(prompt) :] if full.startswith(prompt) else example.completion
    prompt_ids: list[int] = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids: list[int] = tokenizer(answer, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    if isinstance(eos, int) and eos not in answer_ids:
        answer_ids = [*answer_ids, eos]
    return [*prompt_ids, *answer_ids], [-100] * len(prompt_ids) + answer_ids


def batches(size: int, batch_size: int, steps: int, seed: int) -> Iterator[list[int]]:
    """``steps`` batches of indices drawn epoch by epoch from seeded shuffles of ``range(size)``."""
    rng = random.Random(seed)
    pool: list[int] = []
    for _ in range(steps):
        while len(pool) < batch_size:
            epoch = list(range(size))
            rng.shuffle(epoch)
            pool.extend(epoch)
        batch, pool = pool[:batch_size], pool[batch_size:]
        yield batch


def collate(rows: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors: positions then match unpadded inference (padding is masked out)."""
    import torch

    width = max(len(ids) for ids, _ in rows)
    ids = [ids + [pad_id] * (width - len(ids)) for ids, _ in rows]
    labels = [lab + [-100] * (width - len(lab)) for _, lab in rows]
    mask = [[1] * len(i) + [0] * (width - len(i)) for i, _ in rows]
    return {
        "input_ids": torch.tensor(ids),
        "attention_mask": torch.tensor(mask),
        "labels": torch.tensor(labels),
    }


def progress_bar(total: int, desc: str, enabled: bool) -> Any:
    # tqdm ships no type information; importlib keeps mypy from needing a stub package.
    tqdm = importlib.import_module("tqdm.auto").tqdm
    return tqdm(total=total, desc=desc, disable=not enabled, unit="step")


@dataclasses.dataclass(frozen=True)
class Schedule:
    steps: int
    batch_size: int
    lr: float
    seed: int


def fit(
    model: torch.nn.Module,
    encoded: Sequence[tuple[list[int], list[int]]],
    schedule: Schedule,
    *,
    pad_id: int,
    desc: str,
    progress: bool,
) -> float:
    """AdamW with warm-up and linear decay over ``schedule``; the mean loss of the last steps."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=schedule.lr, weight_decay=0.0)
    warmup = max(1, schedule.steps // 10)

    def factor(step: int) -> float:
        return min(1.0, (step + 1) / warmup) * max(0.0, 1.0 - step / schedule.steps)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    order = batches(len(encoded), schedule.batch_size, schedule.steps, schedule.seed)
    losses: list[float] = []
    model.train()
    bar = progress_bar(schedule.steps, desc, progress)
    try:
        for indices in order:
            loss = model(**collate([encoded[i] for i in indices], pad_id)).loss
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
    finally:
        bar.close()
    model.eval()
    tail = losses[-max(1, min(10, len(losses) // 10)) :]
    return sum(tail) / len(tail)


@contextlib.contextmanager
def seeded(seed: int, threads: int = 1) -> Iterator[None]:
    """Seed torch's global RNG and set its thread count inside the block; restore both after.

    One thread by default: a fixed count keeps float reductions in one order (a seed gives the
    same weights on any machine with the same torch build), and for tiny models a second thread
    gains little but loses a lot when the machine's cores are busy (threads wait on each other).
    """
    import torch

    if threads < 1:
        raise ConfigurationError(f"threads must be at least 1, not {threads!r}")
    saved = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(saved)
