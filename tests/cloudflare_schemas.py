"""Cloudflare's own JSON Schemas for the Workers AI LoRA base models, for contract tests.

The three catalog entries are copied byte for byte into ``tests/data/cloudflare/`` (see the
README there) so the tests run on a clean checkout. ``check_request`` validates a run body
against ``schema.input`` *and* checks its keys, because the schemas allow any extra key;
``check_result`` validates a success reply's ``result`` against ``schema.output``.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

DATA = Path(__file__).parent / "data" / "cloudflare"

#: model name -> (file, size in bytes from the README's table)
FILES: dict[str, tuple[str, int]] = {
    "@cf/meta-llama/llama-2-7b-chat-hf-lora": ("llama-2-7b-chat-hf-lora.json", 22984),
    "@cf/mistral/mistral-7b-instruct-v0.2-lora": ("mistral-7b-instruct-v0.2-lora.json", 25527),
    "@cf/google/gemma-7b-it-lora": ("gemma-7b-it-lora.json", 22761),
}
MODELS = tuple(FILES)

# Keys we send that a variant does not declare, and why they are allowed:
# - "lora" with "messages": every entry declares lora only on the Prompt variant, yet Cloudflare's
#   own LoRA guide sends it with messages; its value is checked against the Prompt declaration.
# - "options": {"rejectIfBusy": true} is documented on the reject-if-busy page, not in the schema.
_UNDECLARED = {"lora", "options"}


@functools.cache
def entry(model: str) -> dict[str, Any]:
    """The catalog entry of ``model``, checked to be the untouched copy."""
    name, size = FILES[model]
    raw = (DATA / name).read_bytes()
    assert len(raw) == size, f"{name} is not the byte-for-byte copy ({len(raw)} != {size})"
    data: dict[str, Any] = json.loads(raw)
    assert data["name"] == model
    return data


def _variant(model: str, body: dict[str, Any]) -> dict[str, Any]:
    variants = entry(model)["schema"]["input"]["oneOf"]
    title = "Prompt" if "prompt" in body else "Messages"
    (variant,) = [v for v in variants if v["title"] == title]
    return dict(variant)


def check_request(model: str, body: dict[str, Any]) -> None:
    """``body`` is valid for ``model``'s ``schema.input`` and sends no undeclared key.

    Raises ``jsonschema.ValidationError`` or ``AssertionError``.
    """
    Draft202012Validator(entry(model)["schema"]["input"]).validate(body)
    variant = _variant(model, body)
    declared = set(variant["properties"])
    stray = set(body) - declared - _UNDECLARED
    assert not stray, f"keys not in the {variant['title']} variant: {sorted(stray)}"
    if "lora" in body:
        prompt_variant = _variant(model, {"prompt": ""})
        Draft202012Validator(prompt_variant["properties"]["lora"]).validate(body["lora"])
    if "options" in body:
        assert body["options"] == {"rejectIfBusy": True}


def check_result(model: str, result: object) -> None:
    """``result`` is valid for ``model``'s ``schema.output`` as the JSON (not streamed) branch."""
    output = entry(model)["schema"]["output"]
    Draft202012Validator(output).validate(result)
    Draft202012Validator(output["oneOf"][0]).validate(result)
