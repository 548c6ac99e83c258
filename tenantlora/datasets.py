"""Training datasets: load, check and split examples (no torch needed).

A dataset is JSONL (or an iterable of dicts), one example per row, in either form:

- chat: ``{"messages": [{"role": "user", "content": "..."}, ..., {"role": "assistant", ...}]}``;
  the last message is the assistant's and is the training target, the ones before are the prompt;
- pairs: ``{"prompt": "...", "completion": "..."}``; the prompt becomes one user message.

:func:`load_examples` checks the schema, empty and over-long rows, duplicates and conflicting
answers, and names the offending line; :func:`split` makes a deterministic held-out split.
:mod:`tenantlora.training` re-exports both.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from tenantlora.errors import ConfigurationError, InvalidRequestError
from tenantlora.types import Message

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["Example", "load_examples", "normalized_prompt_key", "split"]

_ROLES = ("system", "user", "assistant")
_MAX_PROBLEMS = 20


@dataclasses.dataclass(frozen=True)
class Example:
    """One training example: the prompt messages and the assistant's answer to learn."""

    prompt_messages: tuple[Message, ...]
    completion: str

    @property
    def messages(self) -> list[dict[str, str]]:
        """The whole conversation as chat dicts, the completion last as the assistant's turn."""
        prompt = [{"role": m.role, "content": m.text} for m in self.prompt_messages]
        return [*prompt, {"role": "assistant", "content": self.completion}]


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, not {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{what} is empty")
    return value


def _chat_row(messages: object) -> Example:
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list")
    parsed: list[Message] = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ValueError(f"messages[{i}] must be an object with 'role' and 'content'")
        role = message.get("role")
        if role not in _ROLES:
            raise ValueError(f"messages[{i}].role must be one of {', '.join(_ROLES)}, not {role!r}")
        content = _text(message.get("content"), f"messages[{i}].content")
        parsed.append(Message(role=role, content=content))
    if parsed[-1].role != "assistant":
        raise ValueError("the last message must be the assistant's (the training target)")
    if not any(m.role == "user" for m in parsed[:-1]):
        raise ValueError("no user message before the assistant's answer")
    return Example(prompt_messages=tuple(parsed[:-1]), completion=parsed[-1].text)


def _parse_row(row: object) -> Example:
    """One row's Example, or ValueError saying what is wrong with it."""
    if not isinstance(row, Mapping):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    if not row:
        raise ValueError("empty row")
    if "messages" in row:
        if "prompt" in row or "completion" in row:
            raise ValueError("has both 'messages' and 'prompt'/'completion': use one form")
        return _chat_row(row["messages"])
    if "prompt" in row or "completion" in row:
        prompt = _text(row.get("prompt"), "'prompt'")
        completion = _text(row.get("completion"), "'completion'")
        return Example(
            prompt_messages=(Message(role="user", content=prompt),), completion=completion
        )
    raise ValueError("expected 'messages' or 'prompt' and 'completion'")


def _rows(
    source: str | os.PathLike[str] | Iterable[Mapping[str, Any]],
) -> Iterator[tuple[int, Any]]:
    """(line number, parsed row or a ValueError) for a JSONL path or an iterable of dicts."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    yield number, ValueError("empty line")
                    continue
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as exc:
                    yield number, ValueError(f"not valid JSON ({exc.msg}, column {exc.colno})")
    else:
        yield from enumerate(source, start=1)


def _prompt_key(example: Example) -> str:
    blob = json.dumps([[m.role, m.text] for m in example.prompt_messages])
    return hashlib.sha256(blob.encode()).hexdigest()


def normalized_prompt_key(messages: Iterable[Message | Mapping[str, Any]]) -> str:
    """A key equal for prompts that differ only in case and whitespace: what decides that a
    held-out case is also a training example (an overlap that would flatter the adapter)."""
    parts = []
    for message in messages:
        if not isinstance(message, Message):
            message = Message.model_validate(dict(message))
        parts.append([message.role, " ".join(message.text.split()).casefold()])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def _count_tokens(tokenizer: PreTrainedTokenizerBase, example: Example) -> int:
    text = tokenizer.apply_chat_template(example.messages, tokenize=False)
    assert isinstance(text, str)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _check_example(
    example: Example, max_chars: int | None, max_tokens: int | None, tokenizer: Any
) -> None:
    chars = sum(len(m.text) for m in example.prompt_messages) + len(example.completion)
    if max_chars is not None and chars > max_chars:
        raise ValueError(f"too long: {chars} characters (max_chars={max_chars})")
    if max_tokens is not None:
        tokens = _count_tokens(tokenizer, example)
        if tokens > max_tokens:
            raise ValueError(f"too long: {tokens} tokens (max_tokens={max_tokens})")


def load_examples(
    source: str | os.PathLike[str] | Iterable[Mapping[str, Any]],
    *,
    max_chars: int | None = 20_000,
    max_tokens: int | None = None,
    tokenizer: PreTrainedTokenizerBase | str | os.PathLike[str] | None = None,
) -> list[Example]:
    """Read and check a dataset: a JSONL path, or an iterable of row dicts.

    Every row is checked; on any problem this raises :class:`~tenantlora.errors.InvalidRequestError`
    whose message lists the problems (up to 20), each as ``line N: ...`` (for an iterable, ``N`` is
    the row's 1-based position). Checked: JSON, schema (see the module docstring), empty rows and
    empty contents, length (``max_chars`` over all contents; ``max_tokens`` over the rendered chat,
    which needs ``tokenizer``: an object or a model directory), duplicate rows, and rows with the
    same prompt but a different completion. An empty dataset is an error too.
    """
    if max_tokens is not None:
        if tokenizer is None:
            raise ConfigurationError("max_tokens needs a tokenizer (or a model directory)")
        if isinstance(tokenizer, (str, os.PathLike)):
            from tenantlora._fit import load_tokenizer as _load_tokenizer  # the training extra

            tokenizer = _load_tokenizer(tokenizer)
    examples: list[Example] = []
    problems: list[str] = []
    seen: dict[str, tuple[int, str]] = {}
    for number, row in _rows(source):
        try:
            if isinstance(row, ValueError):
                raise row
            example = _parse_row(row)
            _check_example(example, max_chars, max_tokens, tokenizer)
            first = seen.setdefault(_prompt_key(example), (number, example.completion))
            if first[0] != number and first[1] == example.completion:
                raise ValueError(f"duplicate of line {first[0]}")
            if first[0] != number:
                raise ValueError(f"same prompt as line {first[0]} with a different completion")
        except ValueError as exc:
            problems.append(f"line {number}: {exc}")
            continue
        examples.append(example)
    if problems:
        more = len(problems) - _MAX_PROBLEMS
        shown = problems[:_MAX_PROBLEMS] + ([f"... and {more} more"] if more > 0 else [])
        raise InvalidRequestError("\n".join(shown))
    if not examples:
        raise InvalidRequestError("the dataset has no examples")
    return examples


def split(
    examples: Sequence[Example], holdout: float = 0.2, seed: int = 0
) -> tuple[list[Example], list[Example]]:
    """Shuffle with ``seed`` and cut off a held-out share: ``(train, heldout)``.

    Deterministic: the same examples, ``holdout`` and ``seed`` give the same split. Both parts
    keep at least one example (so at least two are needed) unless ``holdout`` is 0.
    """
    if not 0.0 <= holdout < 1.0:
        raise ConfigurationError(f"holdout must be in [0, 1), not {holdout!r}")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    count = 0 if holdout == 0 else max(1, round(len(order) * holdout))
    if count and len(order) - count < 1:
        raise InvalidRequestError(f"cannot hold out {holdout:.0%} of {len(order)} examples")
    heldout = [examples[i] for i in order[:count]]
    train = [examples[i] for i in order[count:]]
    return train, heldout


# --- training ---------------------------------------------------------------------------------
