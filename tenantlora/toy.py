"""An offline tiny base model and tokenizer, for the demo and tests: nothing comes from a hub.

```python
from tenantlora.toy import build_toy_model, leads, lead_prompt, tenant_rules

base = build_toy_model("models/toy-llama")        # 1.4 MB, ~10 s; reused when already built
lead = leads(seed=1, n=1)[0]
lead_prompt(lead)       # 'company acme corp staff 400 funding pe-backed sector saas region emea'
rows = tenant_rules()["kahuna"].rows(leads(seed=2, n=400))   # chat rows to train an adapter
```

The model is a 2-layer ``LlamaForCausalLM`` (hidden 128, 4 heads of 32, so vLLM's CPU backend
runs it too) with a SentencePiece tokenizer whose pieces are the toy's words: output is readable
words, and the model converts to GGUF for llama.cpp (:mod:`tenantlora.gguf`). It is briefly
pre-trained on synthetic leads to answer in the lead-qualification format under a generic rule
(:data:`BASE_RULE`). :func:`tenant_rules` gives three tenants whose rules differ on the same leads;
an adapter trained on one of them answers differently from the base and from the others.

The vocabulary is closed: words outside the toy world (and upper case) fall back to characters
and bytes, which the model has never seen. Building needs the
optional extra (``pip install 'tenantlora[train]'``); this module imports none of it at import time.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import random
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from tenantlora import _fit, training
from tenantlora._hf import quiet
from tenantlora.errors import ConfigurationError

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

__all__ = [
    "ADAPTER_LR",
    "ADAPTER_STEPS",
    "BASE_RULE",
    "CHAT_TEMPLATE",
    "DEFAULT_STEPS",
    "FUNDING",
    "MANIFEST",
    "REGIONS",
    "SECTORS",
    "STAFF",
    "TOY_VERSION",
    "Lead",
    "Rule",
    "build_tokenizer",
    "build_toy_model",
    "lead_prompt",
    "leads",
    "tenant_rules",
]

TOY_VERSION = 2
"""Bumped whenever the vocabulary, the corpus or the model shape changes (invalidates builds)."""
DEFAULT_STEPS = 300
"""Pre-training steps of :func:`build_toy_model` (batch 32): the base then follows its rule."""
ADAPTER_STEPS = 300
ADAPTER_LR = 3e-3
"""``train_adapter(..., steps=ADAPTER_STEPS, lr=ADAPTER_LR)`` learns a tenant rule on the toy."""
MANIFEST = "tenantlora-toy.json"
_SAVED_FILES = frozenset(
    {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "tokenizer.model",
        "chat_template.jinja",
        "special_tokens_map.json",
    }
)

_NAMES = (
    "acme",
    "globex",
    "initech",
    "umbrella",
    "hooli",
    "vandelay",
    "stark",
    "wayne",
    "tyrell",
    "cyberdyne",
    "soylent",
    "wonka",
    "dunder",
    "aperture",
    "oscorp",
    "nakatomi",
    "zenith",
    "orbit",
    "summit",
    "nimbus",
)
_SUFFIXES = ("corp", "labs", "inc", "systems", "group", "works")
STAFF = (15, 40, 80, 150, 250, 400, 600, 900, 1500, 3000)
FUNDING = ("bootstrapped", "seed", "vc-backed", "pe-backed", "public")
SECTORS = ("saas", "fintech", "retail", "healthcare", "logistics")
REGIONS = ("emea", "na", "apac", "latam")
# pe-backed and saas are over-represented so each tenant rule has a fair share of positives.
_FUNDING_WEIGHTS = (0.15, 0.15, 0.15, 0.4, 0.15)
_SECTOR_WEIGHTS = (0.45, 0.1375, 0.1375, 0.1375, 0.1375)
_REASONS = ("funding", "sector", "staff", "region")
_TEMPLATE_WORDS = ("system", "user", "assistant", ":", ",", ".", "qualified", "not")
_FIELDS = ("company", "staff", "funding", "sector", "region")
_SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    " {{ message['role'] }}: {{ message['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %} assistant:{% endif %}"
)
"""Renders ``<bos> user: ...<eos> assistant: ...<eos>``; generation prompt `` assistant:``.

Each turn starts with a space, so its first word is the same ``▁word`` piece for every tokenizer
(transformers adds a space prefix only at the start of a text, llama.cpp after every special
token; with the prefix off in both, the template's own spaces decide)."""


class Lead(TypedDict):
    """A synthetic sales lead."""

    company: str
    staff: int
    funding: str
    sector: str
    region: str


_MAX_LEADS = 20_000


def leads(seed: int, n: int) -> list[Lead]:
    """``n`` distinct synthetic leads (at most 20,000), the same for the same ``seed``."""
    if not 0 <= n <= _MAX_LEADS:
        raise ConfigurationError(f"n must be between 0 and {_MAX_LEADS}, not {n!r}")
    rng = random.Random(seed)
    found: dict[tuple[object, ...], Lead] = {}
    while len(found) < n:
        lead = Lead(
            company=f"{rng.choice(_NAMES)} {rng.choice(_SUFFIXES)}",
            staff=rng.choice(STAFF),
            funding=rng.choices(FUNDING, _FUNDING_WEIGHTS)[0],
            sector=rng.choices(SECTORS, _SECTOR_WEIGHTS)[0],
            region=rng.choice(REGIONS),
        )
        found.setdefault(tuple(lead.values()), lead)
    return list(found.values())


def lead_prompt(lead: Mapping[str, object]) -> str:
    """The user message for a lead: ``company acme corp staff 400 funding pe-backed ...``."""
    return " ".join(f"{field} {lead[field]}" for field in _FIELDS)


def _base_answer(lead: Lead) -> str:
    # Every field scores, so the base attends to all of them and says every reason word: an
    # adapter then only reweighs features the base already has.
    scored = {
        "funding": lead["funding"] in ("vc-backed", "pe-backed", "public"),
        "staff": lead["staff"] >= 100,
        "sector": lead["sector"] in ("saas", "fintech"),
        "region": lead["region"] in ("emea", "na"),
    }
    ok = sum(scored.values()) >= 3
    # The reason is the last field that scored, or the first that did not: between them the
    # base says each of the four reason words (an output word it never says is slow to learn).
    fields = reversed(scored) if ok else iter(scored)
    return _verdict(ok, next(field for field in fields if scored[field] == ok))


def _verdict(ok: bool, reason: str) -> str:
    return f"{'qualified' if ok else 'not qualified'} {reason}"


def _pe_saas(lead: Lead) -> str:
    if lead["funding"] != "pe-backed":
        return "not qualified funding"
    return _verdict(lead["sector"] == "saas", "sector")


def _large(lead: Lead) -> str:
    return _verdict(lead["staff"] > 500, "staff")


def _emea(lead: Lead) -> str:
    return _verdict(lead["region"] == "emea", "region")


@dataclasses.dataclass(frozen=True)
class Rule:
    """A qualification rule: ``answer(lead)`` is ``[not] qualified <reason>``."""

    name: str
    description: str
    answer: Callable[[Lead], str]

    def rows(self, items: Iterable[Lead]) -> list[dict[str, Any]]:
        """Chat-format dataset rows (see :mod:`tenantlora.training`) answering each lead."""
        return [
            {
                "messages": [
                    {"role": "user", "content": lead_prompt(lead)},
                    {"role": "assistant", "content": self.answer(lead)},
                ]
            }
            for lead in items
        ]


BASE_RULE = Rule(
    "base",
    "a point each for vc, pe or public funding, 100+ staff, saas or fintech, emea or na; 3+ wins",
    _base_answer,
)
"""The generic rule the toy base model is pre-trained on."""


def tenant_rules() -> dict[str, Rule]:
    """Three tenants whose ideal customer differs on the same leads, keyed by tenant ID."""
    return {
        "kahuna": Rule("kahuna", "pe-backed saas companies only", _pe_saas),
        "goliath": Rule("goliath", "more than 500 staff", _large),
        "europa": Rule("europa", "companies in emea", _emea),
    }


def _vocabulary() -> list[str]:
    words = {*_NAMES, *_SUFFIXES, *map(str, STAFF), *FUNDING, *SECTORS, *REGIONS}
    words |= {*_REASONS, *_TEMPLATE_WORDS, *_FIELDS}
    return [*_SPECIALS, *sorted(words)]


_SPM_VOCAB_SIZE = 640
"""Byte fallback (256), the specials, the characters and every merge the toy's words need."""


@functools.lru_cache(maxsize=1)
def _spm_model() -> bytes:
    """The toy's SentencePiece BPE model, trained on its closed vocabulary (deterministic).

    Every toy word is one piece (``▁acme``; ``pe-backed`` is ``▁pe - backed``), anything else
    falls back to characters and bytes. SentencePiece, not a word-level table, because llama.cpp
    tokenizes SentencePiece BPE exactly as transformers does, so the toy converts to GGUF and a
    llama.cpp server answers token for token as the in-process model does.
    """
    import io

    import sentencepiece as spm

    lines = [word for word in _vocabulary()[len(_SPECIALS) :]]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type="bpe",
        vocab_size=_SPM_VOCAB_SIZE,
        hard_vocab_limit=False,
        byte_fallback=True,
        character_coverage=1.0,
        num_threads=1,
        split_digits=False,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        pad_id=0,
        unk_id=1,
        bos_id=2,
        eos_id=3,
        pad_piece="<pad>",
        unk_piece="<unk>",
        bos_piece="<bos>",
        eos_piece="<eos>",
        minloglevel=2,
    )
    return model.getvalue()


def _vocab_and_merges(model: bytes) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The BPE vocabulary and merges equivalent to a SentencePiece BPE model.

    A piece's merges are its splits into two pieces, ranked by the merged piece's id (its BPE
    rank), as transformers' own SentencePiece extractor ranks them (without needing protobuf).
    """
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_proto=model)
    size = processor.get_piece_size()
    vocab = {processor.id_to_piece(i): i for i in range(size)}
    ranked: list[tuple[int, int, int, str, str]] = []
    for piece, pid in vocab.items():
        if processor.is_control(pid) or processor.is_unknown(pid) or processor.is_byte(pid):
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                ranked.append((pid, vocab[left], vocab[right], left, right))
    return vocab, [(left, right) for *_, left, right in sorted(ranked)]


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The toy tokenizer: SentencePiece BPE over the toy's words (see :func:`_spm_model`).

    Case-sensitive (the toy world is lower case: other text falls back to characters and bytes),
    no space prefix added (the chat template puts a space before each turn). Has ``<bos> <eos>
    <pad> <unk>``, pads on the left (set in the constructor, so it is saved) and carries
    :data:`CHAT_TEMPLATE`. Deterministic. A built toy keeps the SentencePiece model as
    ``tokenizer.model`` beside ``tokenizer.json``, for GGUF conversion.
    """
    _fit.require_extra(("sentencepiece",))
    from tokenizers import decoders
    from transformers import LlamaTokenizer

    model = _spm_model()
    vocab, merges = _vocab_and_merges(model)
    tokenizer = LlamaTokenizer(
        vocab=vocab,
        merges=merges,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        add_bos_token=False,
        add_eos_token=False,
        add_prefix_space=False,
        legacy=False,
        padding_side="left",
        model_max_length=256,
        chat_template=CHAT_TEMPLATE,
    )
    # Decoding drops the space that starts a turn's first word (as Llama's tokenizers do), so a
    # reply reads "qualified region", not " qualified region".
    tokenizer.backend_tokenizer.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    return tokenizer


def _model(tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=32,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def _corpus(seed: int, n: int) -> list[training.Example]:
    return training.load_examples(BASE_RULE.rows(leads(seed, n)))


def _complete(out: Path, params: Mapping[str, object]) -> bool:
    """Whether ``out`` holds a finished build with these parameters (files present, same sizes)."""
    try:
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict) or manifest.get("params") != dict(params):
        return False
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return False
    return all(
        (out / name).is_file() and (out / name).stat().st_size == size
        for name, size in files.items()
    )


def _save(out: Path, model: Any, tokenizer: PreTrainedTokenizerFast) -> None:
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    # transformers 5 names its tokenizer class TokenizersBackend; older readers (and so servers
    # pinned to transformers 4, like some vLLM builds) know it as PreTrainedTokenizerFast, which
    # transformers 5 still maps to the same class. The chat template goes inline for them too.
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["chat_template"] = CHAT_TEMPLATE
    # Read by llama.cpp's converter (tokenizer.ggml.add_space_prefix), as transformers reads it.
    config["add_prefix_space"] = False
    config["add_bos_token"] = False
    (out / "tokenizer.model").write_bytes(_spm_model())
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    for path in out.iterdir():
        if path.name in _SAVED_FILES:
            path.chmod(0o644)  # safetensors writes 0600; a model directory is meant to be shared


def build_toy_model(
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    steps: int = DEFAULT_STEPS,
    progress: bool = False,
) -> Path:
    """Build (or reuse) the toy base model and tokenizer in ``out_dir``; return the directory.

    Pre-trains a fresh tiny Llama for ``steps`` steps on synthetic leads answered by
    :data:`BASE_RULE`, then writes ``model.safetensors``, ``config.json``, the tokenizer files
    and a manifest (``tenantlora-toy.json``) last. When the manifest already records a complete
    build with the same ``seed``, ``steps`` and toy version, nothing is done. The same seed
    and steps give identical weights on one machine. Raises ConfigurationError without the
    training extra.
    """
    if steps < 1:
        raise ConfigurationError(f"steps must be at least 1, not {steps!r}")
    out = Path(out_dir)
    params = {"toy_version": TOY_VERSION, "seed": seed, "steps": steps}
    if _complete(out, params):
        return out
    _fit.require_extra()
    tokenizer = build_tokenizer()
    corpus = [_fit.encode(tokenizer, example) for example in _corpus(seed, 4000)]
    schedule = _fit.Schedule(steps=steps, batch_size=32, lr=3e-3, seed=seed)
    with _fit.seeded(seed):
        model = _model(tokenizer)
        loss = _fit.fit(
            model, corpus, schedule, pad_id=tokenizer.pad_token_id, desc="toy", progress=progress
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # an interrupted rebuild is never "complete"
    with quiet():
        _save(out, model, tokenizer)
    files = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.name in _SAVED_FILES}
    manifest = {"params": params, "files": files, "final_loss": round(loss, 6)}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return out
