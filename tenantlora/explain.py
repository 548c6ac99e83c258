"""Why a tenant's call would be served the way it would: ``client.explain(tenant, task)``.

```python
why = client.explain("acme", "icp_classifier")
print(why)             # a few lines: cache, registry, route, and why
why.adapter            # what the backend would be asked for (None: the base model)
why.fallback_reason    # why the base model, when it is
why.to_dict()          # for logs and ``tenantlora explain --json``
```

Explaining sends nothing to the backend and changes no cache entry or counter: it looks at what
the client's resolver holds (:meth:`~tenantlora.resolver.AdapterResolver.peek`), asks the
registry directly (:meth:`~tenantlora.resolver.AdapterResolver.fetch`), and runs the same pure
routing decision a call runs. :func:`explain` is that decision, without I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from tenantlora.resolver import CacheView
from tenantlora.routing import Experiment, fallback_route, route
from tenantlora.types import AdapterRecord, CacheOutcome, FallbackReason

__all__ = ["Explanation", "explain"]


@dataclass(frozen=True)
class Explanation:
    """How a call for ``tenant``'s ``task`` would be resolved and routed now.

    ``cache`` is what the resolver holds; ``registry`` the registry's answer now (``None`` when
    it has no active adapter for the task, or failed: see ``registry_error``); ``outcome`` the
    cache outcome a call would report and ``record`` the record routing would get (``None``
    with ``outcome="error"`` and ``on_error="raise"`` means the call would raise). ``adapter``
    is what the backend would be asked for (``None``: the base model, for ``fallback_reason``),
    ``arm`` the experiment arm, ``refused`` whether the backend refused this version recently
    (the client then serves the base model without asking again), ``raises`` whether the call
    would raise instead (``on_registry_error`` or ``on_no_adapter`` set to ``"raise"``; then
    ``fallback_reason`` says why it would). ``reasons`` says it in words.
    """

    tenant: str
    task: str
    backend: str
    model: str | None
    cache: CacheView
    registry: AdapterRecord | None
    registry_error: str | None
    outcome: CacheOutcome
    record: AdapterRecord | None
    adapter: str | None
    fallback_reason: FallbackReason | None
    arm: str | None
    experiment: str | None
    refused: bool
    raises: bool
    reasons: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (records as their JSON form)."""

        def plain(record: AdapterRecord | None) -> dict[str, Any] | None:
            return None if record is None else record.model_dump(mode="json")

        return {
            "tenant": self.tenant,
            "task": self.task,
            "backend": self.backend,
            "model": self.model,
            "cache": {
                "state": self.cache.state,
                "record": plain(self.cache.record),
                "age": self.cache.age,
                "expires_in": self.cache.expires_in,
            },
            "registry": plain(self.registry),
            "registry_error": self.registry_error,
            "outcome": self.outcome,
            "record": plain(self.record),
            "adapter": self.adapter,
            "fallback_reason": self.fallback_reason,
            "arm": self.arm,
            "experiment": self.experiment,
            "refused": self.refused,
            "raises": self.raises,
            "reasons": list(self.reasons),
        }

    def __str__(self) -> str:
        served = "raises" if self.raises else (self.adapter or "the base model")
        lines = [
            f"{self.tenant}/{self.task} -> {served} on {self.backend}"
            + (f" ({self.model})" if self.model else ""),
            f"  cache: {self.cache.state}, outcome {self.outcome}",
            f"  registry: {_name(self.registry, self.registry_error)}",
        ]
        if self.fallback_reason:
            lines.append(f"  fallback: {self.fallback_reason}")
        if self.arm:
            lines.append(f"  arm: {self.arm} ({self.experiment})")
        lines.extend(f"  - {reason}" for reason in self.reasons)
        return "\n".join(lines)


def _name(record: AdapterRecord | None, error: str | None = None) -> str:
    if error is not None:
        return f"error ({error})"
    if record is None:
        return "no adapter"
    return f"{record.adapter_id} (version {record.version}, {record.status})"


def _same(a: AdapterRecord | None, b: AdapterRecord | None) -> bool:
    if a is None or b is None:
        return a is b
    return (a.adapter_id, a.version, a.status, a.digest) == (
        b.adapter_id,
        b.version,
        b.status,
        b.digest,
    )


def _resolution(
    cache: CacheView,
    registry: AdapterRecord | None,
    registry_error: str | None,
    *,
    max_stale: float,
    on_error: Literal["fallback", "raise"],
) -> tuple[CacheOutcome, AdapterRecord | None, bool, list[str]]:
    """What a resolve would answer now: (outcome, record, raises, reasons). The resolver's own
    order: a fresh entry; else a remembered failure or a read; a failure serves the last good
    entry within ``max_stale``, else falls back or raises."""
    if cache.state == "fresh":
        why = [f"the cache has a fresh entry, read {cache.age:.1f} s ago"]
        if cache.expires_in is not None:
            why[0] += f", that expires in {cache.expires_in:.1f} s"
        if registry_error is None and not _same(cache.record, registry):
            why.append(
                f"the registry now says {_name(registry)}; this process serves "
                f"{_name(cache.record)} until the entry expires (at once when the registry's "
                "change feed announces the write, or after client.resolver.invalidate(tenant))"
            )
        return "hit", cache.record, False, why
    failed = cache.state == "failing" or registry_error is not None
    if not failed:
        why = ["no fresh cache entry: the call reads the registry"]
        return "miss", registry, False, why
    why = [
        "a registry read failed recently: calls fail fast until it expires"
        if cache.state == "failing"
        else "the registry read failed"
    ]
    if cache.age is not None and cache.age <= max_stale:
        why.append(
            f"the last good entry ({cache.age:.1f} s old, within max_stale={max_stale:g} s) "
            "is served"
        )
        return "stale", cache.record, False, why
    if on_error == "raise":
        why.append("no good entry within max_stale and on_error='raise': the call raises")
        return "error", None, True, why
    why.append("no good entry within max_stale: the base model serves")
    return "error", None, False, why


_FALLBACKS: dict[str, str] = {
    "no_adapter": "the tenant has no active adapter for this task: the base model serves",
    "adapter_not_ready": "the active version is not ready: the base model serves",
    "registry_error": "the registry could not answer: the base model serves",
    "experiment_control": "the experiment put this unit in the control arm: the base model serves",
    "adapter_unavailable": (
        "the backend refused this version recently (remembered for the policy's refusal_ttl): "
        "the base model serves without asking it again"
    ),
}


def explain(
    tenant: str,
    task: str,
    *,
    backend: str,
    model: str | None,
    cache: CacheView,
    registry: AdapterRecord | None,
    registry_error: str | None,
    max_stale: float,
    on_error: Literal["fallback", "raise"],
    experiment: Experiment | None = None,
    unit: str | None = None,
    refused: Callable[[AdapterRecord], bool] = lambda record: False,
    on_no_adapter: Literal["fallback", "raise"] = "fallback",
) -> Explanation:
    """The decision behind :class:`Explanation`, from what was observed (pure; no I/O).

    ``refused(record)`` says whether the client remembers the backend refusing ``record``.
    """
    outcome, record, raises, reasons = _resolution(
        cache, registry, registry_error, max_stale=max_stale, on_error=on_error
    )
    chosen = route(
        record, tenant=tenant, task=task, outcome=outcome, experiment=experiment, unit=unit
    )
    was_refused = chosen.adapter is not None and record is not None and refused(record)
    if was_refused:
        chosen = fallback_route(chosen)
    if chosen.adapter is not None:
        reasons.append(f"the backend is asked for adapter {chosen.adapter}")
    elif chosen.fallback_reason is not None and not raises:
        reasons.append(_FALLBACKS.get(chosen.fallback_reason, chosen.fallback_reason))
    if chosen.fallback_reason == "adapter_not_ready" and record is not None:
        reasons[-1] = f"version {record.version} has status {record.status!r}: " + reasons[-1]
    if chosen.fallback_reason in ("no_adapter", "adapter_not_ready") and on_no_adapter == "raise":
        raises = True
        reasons.append("on_no_adapter='raise': the call raises NoAdapterError instead")
    return Explanation(
        tenant=tenant,
        task=task,
        backend=backend,
        model=model,
        cache=cache,
        registry=registry,
        registry_error=registry_error,
        outcome=outcome,
        record=record,
        adapter=chosen.adapter,
        fallback_reason=chosen.fallback_reason,
        arm=chosen.arm,
        experiment=experiment.name if experiment is not None and chosen.arm else None,
        refused=was_refused,
        raises=raises,
        reasons=tuple(reasons),
    )
