"""What the isolation probe sends, in which order: pure plans, run by the sync and async probes.

A plan is a list of steps: :class:`Ask` (one request, alone), :class:`Together` (requests
released at once), :class:`DecodeWhileLoad` (streams held mid-decode while one more request
loads an adapter) and :class:`Between` (the caller's hook, to evict or load between steps).
Every answer of an :class:`Ask` with ``compare`` set is checked against the reference answer
for its (target, prompt), which the plan's first steps (``sequence="reference"``) collect.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from tenantlora.errors import ConfigurationError
from tenantlora.types import AdapterRecord

__all__ = [
    "requests_in",
    "SEQUENCES",
    "Ask",
    "Between",
    "DecodeWhileLoad",
    "Step",
    "Target",
    "Together",
    "check",
    "plan",
    "targets_of",
]

SEQUENCES = ("concurrent", "interleaved", "base_drift", "load_during_decode")
"""Every sequence the probe knows, in the order it runs them."""

Target = tuple[str | None, AdapterRecord | None]  # (adapter id or None for base, its record)


@dataclass(frozen=True)
class Ask:
    """One request: ``key`` is (adapter id or None, prompt)."""

    key: tuple[str | None, str]
    record: AdapterRecord | None
    sequence: str
    round: int = 0
    detail: str = ""
    compare: bool = True


@dataclass(frozen=True)
class Together:
    """Requests released at once (a barrier in threads, a gather in asyncio)."""

    asks: tuple[Ask, ...]


@dataclass(frozen=True)
class DecodeWhileLoad:
    """Stream ``decoders``; once each has yielded a chunk, send ``load``; then finish them."""

    decoders: tuple[Ask, ...]
    load: Ask


@dataclass(frozen=True)
class Between:
    """Call the caller's ``between`` hook (evict or load adapters to force slot changes)."""


Step = Ask | Together | DecodeWhileLoad | Between


def requests_in(step: Step) -> int:
    """How many requests a step sends (for progress)."""
    if isinstance(step, Ask):
        return 1
    if isinstance(step, Together):
        return len(step.asks)
    if isinstance(step, DecodeWhileLoad):
        return len(step.decoders) + 1
    return 0


def check(
    prompts: Sequence[str], rounds: int, max_tokens: int, sequences: Iterable[str]
) -> tuple[str, ...]:
    """Validate the probe's arguments; return the chosen sequences in run order."""
    if not prompts:
        raise ConfigurationError("the probe needs at least one prompt")
    if rounds < 1 or max_tokens < 1:
        raise ConfigurationError("rounds and max_tokens must be >= 1")
    if isinstance(sequences, str):
        sequences = (sequences,)
    wanted = set(sequences)
    unknown = sorted(wanted - set(SEQUENCES))
    if unknown:
        raise ConfigurationError(f"unknown probe sequences {unknown}: choose from {SEQUENCES}")
    if not wanted:
        raise ConfigurationError("the probe needs at least one sequence")
    return tuple(name for name in SEQUENCES if name in wanted)


def targets_of(
    adapters: Mapping[str, AdapterRecord | None] | Iterable[AdapterRecord | str],
    include_base: bool,
) -> list[Target]:
    """The probe's targets in probe order (base last), distinct; ConfigurationError otherwise."""
    found: list[Target] = []
    if isinstance(adapters, Mapping):
        found.extend((str(name), record) for name, record in adapters.items())
    else:
        for item in adapters:
            if isinstance(item, AdapterRecord):
                found.append((item.adapter_id, item))
            elif isinstance(item, str):
                found.append((item, None))
            else:
                raise ConfigurationError(
                    f"adapters must be AdapterRecords or adapter ids, not {type(item).__name__}"
                )
    if include_base:
        found.append((None, None))
    if len({name for name, _ in found}) != len(found):
        raise ConfigurationError("the probe's adapters must be distinct")
    return found


def _show(name: str | None) -> str:
    return name or "<base>"


def plan(
    targets: list[Target],
    prompts: Sequence[str],
    rounds: int,
    sequences: tuple[str, ...],
    loads: list[Target],
) -> list[Step]:
    """The whole probe as steps: the reference phase (base first), then each sequence."""
    ordered = sorted(targets, key=lambda target: target[0] is not None)  # base first
    steps: list[Step] = [
        Ask((name, prompt), record, "reference", compare=False)
        for name, record in ordered
        for prompt in prompts
    ]
    for sequence in sequences:
        steps += _SEQUENCE_PLANS[sequence](targets, prompts, rounds, loads)
    return steps


def _concurrent(
    targets: list[Target], prompts: Sequence[str], rounds: int, loads: list[Target]
) -> list[Step]:
    return [
        Together(
            tuple(
                Ask((name, prompt), record, "concurrent", n)
                for name, record in targets
                for prompt in prompts
            )
        )
        for n in range(1, rounds + 1)
    ]


def _interleaved(
    targets: list[Target], prompts: Sequence[str], rounds: int, loads: list[Target]
) -> list[Step]:
    steps: list[Step] = []
    n = 0
    for first, first_record in targets:
        for second, second_record in targets:
            if second == first:
                continue
            for prompt in prompts:
                n += 1
                detail = f"{_show(first)} then {_show(second)} then {_show(first)}"
                ask_first = Ask((first, prompt), first_record, "interleaved", n, detail)
                steps += [
                    ask_first,
                    Between(),
                    Ask((second, prompt), second_record, "interleaved", n, detail),
                    Between(),
                    ask_first,
                ]
    return steps


def _base_drift(
    targets: list[Target], prompts: Sequence[str], rounds: int, loads: list[Target]
) -> list[Step]:
    if (None, None) not in targets:
        return []
    steps: list[Step] = []
    adapters = [target for target in targets if target[0] is not None]
    for n, (name, record) in enumerate(adapters, start=1):
        steps.append(Ask((name, prompts[0]), record, "base_drift", n, "load", compare=False))
        steps += [
            Ask((None, prompt), None, "base_drift", n, f"after {_show(name)}") for prompt in prompts
        ]
    return steps


def _load_during_decode(
    targets: list[Target], prompts: Sequence[str], rounds: int, loads: list[Target]
) -> list[Step]:
    prompt = prompts[0]
    steps: list[Step] = []
    loaders = loads or [target for target in targets if target[0] is not None]
    for n, (loader, loader_record) in enumerate(loaders, start=1):
        detail = f"while loading {_show(loader)}"
        decoders = tuple(
            Ask((name, prompt), record, "load_during_decode", n, detail)
            for name, record in targets
            if name != loader
        )
        if not decoders:
            continue
        probed = any(name == loader for name, _ in targets)
        load = Ask((loader, prompt), loader_record, "load_during_decode", n, "load", probed)
        steps += [Between(), DecodeWhileLoad(decoders, load)]
    return steps


_SEQUENCE_PLANS = {
    "concurrent": _concurrent,
    "interleaved": _interleaved,
    "base_drift": _base_drift,
    "load_during_decode": _load_during_decode,
}
