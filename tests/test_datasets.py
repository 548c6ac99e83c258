"""Tests for tenantlora.datasets: schema checks naming the line, duplicates, the split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tenantlora import toy
from tenantlora.datasets import Example, load_examples, split
from tenantlora.errors import ConfigurationError, InvalidRequestError
from tenantlora.types import Message


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


# --- dataset checks ----------------------------------------------------------------------------


def test_chat_and_pair_rows_become_examples() -> None:
    """Both row forms load as Examples; a pair's prompt is one user message."""
    rows: list[dict[str, Any]] = [
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
            ]
        },
        {"prompt": "ping", "completion": "pong"},
    ]
    chat, pair = load_examples(rows)
    assert chat.prompt_messages == (
        Message(role="system", content="be brief"),
        Message(role="user", content="hi"),
    )
    assert chat.completion == "hello"
    assert pair == Example(
        prompt_messages=(Message(role="user", content="ping"),), completion="pong"
    )
    assert pair.messages == [
        {"role": "user", "content": "ping"},
        {"role": "assistant", "content": "pong"},
    ]


BAD_ROWS = [
    ("not a dict", "expected a JSON object"),
    ({}, "empty row"),
    ({"text": "x"}, "expected 'messages' or 'prompt' and 'completion'"),
    ({"messages": []}, "'messages' must be a non-empty list"),
    ({"messages": ["hi"]}, "messages[0] must be an object"),
    ({"messages": [{"role": "bot", "content": "x"}]}, "messages[0].role must be one of"),
    ({"messages": [{"role": "user", "content": " "}]}, "messages[0].content is empty"),
    ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content must be a string"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "the last message must be the assistant"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, "no user message"),
    ({"prompt": "hi"}, "'completion' must be a string"),
    ({"prompt": "", "completion": "x"}, "'prompt' is empty"),
    ({"prompt": "a", "completion": "b", "messages": []}, "use one form"),
    ({"prompt": "a" * 30, "completion": "b"}, "too long: 31 characters (max_chars=20)"),
]


@pytest.mark.parametrize(("row", "message"), BAD_ROWS)
def test_bad_row_is_named_by_line(row: Any, message: str) -> None:
    """Each schema problem is reported as `line N: ...` for the row it is on."""
    rows = [{"prompt": "fine", "completion": "ok"}, row]
    with pytest.raises(InvalidRequestError) as info:
        load_examples(rows, max_chars=20)
    assert str(info.value).startswith("line 2: ")
    assert message in str(info.value)


def test_duplicates_and_conflicts() -> None:
    """A repeated row is a duplicate; the same prompt with another answer is a conflict."""
    rows = [_chat("a", "x"), _chat("b", "y"), _chat("a", "x"), _chat("a", "z")]
    assert _problem(rows).splitlines() == [
        "line 3: duplicate of line 1",
        "line 4: same prompt as line 1 with a different completion",
    ]


def test_jsonl_file_problems_name_file_lines(tmp_path: Path) -> None:
    """A JSONL file's bad JSON and blank lines are named by their line numbers."""
    path = tmp_path / "data.jsonl"
    good = json.dumps({"prompt": "p", "completion": "c"})
    path.write_text(f"{good}\n{{not json\n\n", encoding="utf-8")
    with pytest.raises(InvalidRequestError) as info:
        load_examples(path)
    lines = str(info.value).splitlines()
    assert lines[0].startswith("line 2: not valid JSON")
    assert lines[1] == "line 3: empty line"


def test_valid_jsonl_file(tmp_path: Path) -> None:
    """A valid file loads in order."""
    path = tmp_path / "data.jsonl"
    rows = toy.tenant_rules()["goliath"].rows(toy.leads(seed=0, n=5))
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    assert [e.completion for e in load_examples(path)] == [
        row["messages"][-1]["content"] for row in rows
    ]


def test_problem_list_is_capped() -> None:
    """At most 20 problems are listed, then a count of the rest."""
    lines = _problem([{}] * 25).splitlines()
    assert len(lines) == 21
    assert lines[19] == "line 20: empty row"
    assert lines[20] == "... and 5 more"


def test_empty_dataset() -> None:
    """A dataset without rows is an error."""
    assert _problem([]) == "the dataset has no examples"


def test_token_bound_needs_a_tokenizer_and_names_the_line(toy_base: Path) -> None:
    """max_tokens counts the rendered chat's tokens (tokenizer object or model directory)."""
    with pytest.raises(ConfigurationError, match="tokenizer"):
        load_examples([_chat("a", "b")], max_tokens=5)
    short = _chat("acme corp", "qualified")
    long = _chat(toy.lead_prompt(toy.leads(seed=0, n=1)[0]), "qualified")
    assert len(load_examples([short], max_tokens=12, tokenizer=toy_base)) == 1
    with pytest.raises(
        InvalidRequestError, match=r"^line 2: too long: \d+ tokens \(max_tokens=12\)"
    ):
        load_examples([short, long], max_tokens=12, tokenizer=toy.build_tokenizer())


# --- split -------------------------------------------------------------------------------------


def _examples(n: int) -> list[Example]:
    return load_examples(toy.BASE_RULE.rows(toy.leads(seed=0, n=n)))


def test_split_is_deterministic_and_disjoint() -> None:
    """One seed gives one split; another seed another; the parts partition the examples."""
    examples = _examples(50)
    train, heldout = split(examples, holdout=0.2, seed=1)
    assert (train, heldout) == split(examples, holdout=0.2, seed=1)
    assert split(examples, holdout=0.2, seed=2) != (train, heldout)
    assert (len(train), len(heldout)) == (40, 10)
    assert sorted(map(id, train + heldout)) == sorted(map(id, examples))


def test_split_edges() -> None:
    """holdout=0 keeps everything; a share outside [0, 1) or a one-example split is refused."""
    examples = _examples(3)
    train, heldout = split(examples, holdout=0.0)
    assert (set(train), heldout) == (set(examples), [])
    assert len(split(examples, holdout=0.01)[1]) == 1  # at least one held out
    with pytest.raises(ConfigurationError):
        split(examples, holdout=1.0)
    with pytest.raises(InvalidRequestError):
        split(examples[:1], holdout=0.5)
