"""A/B evaluation: does a tenant's adapter beat the base model on a held-out set?

Every held-out case is answered twice through the same client, once pinned to the control arm
(the base model) and once to the adapter arm, so the comparison is paired. The report gives both
accuracies, the uplift in points, a bootstrap confidence interval of the uplift, and the ship
decision: ``ship = uplift > threshold`` (3 points by default, as the rollout design requires).

```python
from tenantlora.evaluation import evaluate

report = evaluate(client, tenant="acme", task="icp_classifier", dataset=heldout)
print(report)              # a plain-text table
report.ship, report.uplift, report.to_dict()
```

The statistics (:func:`summarize`) are pure functions over score lists; :func:`evaluate` and
:func:`aevaluate` only do the calls around them.
"""

from __future__ import annotations

import asyncio
import math
import random
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from tenantlora._display import Rows, html_table
from tenantlora._progress import Progress, ProgressArg, reporter
from tenantlora.datasets import Example
from tenantlora.errors import ConfigurationError, InvalidRequestError
from tenantlora.types import ChatResponse, Message

if TYPE_CHECKING:
    from tenantlora.client import AsyncTenantLoRA, TenantLoRA

__all__ = [
    "CaseResult",
    "EvalCase",
    "EvalReport",
    "Progress",
    "Scorer",
    "aevaluate",
    "evaluate",
    "exact_match",
    "summarize",
]

Scorer = Callable[[str, str], float]
"""``scorer(prediction, expected) -> score`` in [0, 1]; accuracy is the mean score."""


def exact_match(prediction: str, expected: str) -> float:
    """1.0 when the texts match ignoring case, surrounding and repeated whitespace, else 0.0."""
    return float(" ".join(prediction.split()).casefold() == " ".join(expected.split()).casefold())


@dataclass(frozen=True)
class EvalCase:
    """One held-out example: the conversation to send and the answer we expect."""

    messages: tuple[Message, ...]
    expected: str

    @classmethod
    def parse(cls, row: EvalCase | Example | Mapping[str, Any], index: int = 0) -> EvalCase:
        """Accept ``{"messages", "expected"}``, chat rows whose last message is the assistant's
        answer, or ``{"prompt", "completion"}``; InvalidRequestError names the bad row."""
        if isinstance(row, EvalCase):
            return row
        if isinstance(row, Example):  # what tenantlora.training.split() returns
            return cls(row.prompt_messages, row.completion)
        if not isinstance(row, Mapping):
            raise InvalidRequestError(
                f"evaluation case {index}: a {type(row).__name__}, not a mapping, an Example or "
                "an EvalCase (pass split()'s held-out list, not the (train, heldout) pair)"
            )
        try:
            if "prompt" in row:
                messages = [{"role": "user", "content": row["prompt"]}]
                expected = row["completion"]
            elif "expected" in row:
                messages, expected = list(row["messages"]), row["expected"]
            else:
                *messages, last = row["messages"]
                if last["role"] != "assistant":
                    raise ValueError("the last message is not the assistant's answer")
                expected = last["content"]
            if not isinstance(expected, str) or not messages:
                raise ValueError("needs messages and a text answer")
            return cls(tuple(Message.model_validate(m) for m in messages), expected)
        except (KeyError, TypeError, ValueError) as exc:
            reason = type(exc).__name__ if isinstance(exc, KeyError) else str(exc).splitlines()[0]
            raise InvalidRequestError(f"evaluation case {index}: {reason}") from None


@dataclass(frozen=True)
class CaseResult:
    """Both arms' answers and scores for one case."""

    index: int
    expected: str
    base_answer: str
    adapter_answer: str
    base_score: float
    adapter_score: float


@dataclass(frozen=True)
class EvalReport:
    """The outcome of an evaluation; accuracies, uplift and interval bounds are in points."""

    tenant: str
    task: str
    adapter: str
    n: int
    base_accuracy: float
    adapter_accuracy: float
    uplift: float
    ci_low: float
    ci_high: float
    confidence: float
    threshold: float
    ship: bool
    cases: tuple[CaseResult, ...] = ()

    def to_dict(self, *, cases: bool = False) -> dict[str, Any]:
        """A JSON-ready dict; per-case answers only when ``cases=True``."""
        data = asdict(self)
        if not cases:
            del data["cases"]
        return data

    def table(self) -> str:
        """A plain-text report."""
        pct = f"{self.confidence * 100:.0f}%"
        verdict = "SHIP" if self.ship else "do not ship"
        rows = [
            f"A/B evaluation: tenant {self.tenant!r}, task {self.task!r}, adapter {self.adapter!r}",
            f"  held-out cases      {self.n}",
            f"  base accuracy       {self.base_accuracy:6.1f} %",
            f"  adapter accuracy    {self.adapter_accuracy:6.1f} %",
            f"  uplift              {self.uplift:+6.1f} points  "
            f"({pct} CI {self.ci_low:+.1f} .. {self.ci_high:+.1f})",
            f"  decision            {verdict} (ship when uplift > {self.threshold:g} points)",
        ]
        return "\n".join(rows)

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        return (
            f"EvalReport(tenant={self.tenant!r}, task={self.task!r}, n={self.n}, "
            f"base={self.base_accuracy:.1f}, adapter={self.adapter_accuracy:.1f}, "
            f"uplift={self.uplift:+.1f} [{self.ci_low:+.1f}, {self.ci_high:+.1f}], "
            f"ship={self.ship})"
        )

    def to_records(self) -> Rows:
        """One plain row per held-out case: the expected answer, both answers, both scores."""
        columns = ("index", "expected", "base_answer", "adapter_answer")
        return Rows.of((asdict(c) for c in self.cases), (*columns, "base_score", "adapter_score"))

    def to_pandas(self) -> Any:
        """The per-case rows as a pandas DataFrame (needs pandas)."""
        return self.to_records().to_pandas()

    def _repr_html_(self) -> str:
        pct = f"{self.confidence * 100:.0f}% CI"
        row = {
            "tenant": self.tenant,
            "task": self.task,
            "adapter": self.adapter,
            "cases": self.n,
            "base %": self.base_accuracy,
            "adapter %": self.adapter_accuracy,
            "uplift (points)": self.uplift,
            pct: f"{self.ci_low:+.1f} .. {self.ci_high:+.1f}",
            "decision": "SHIP" if self.ship else "do not ship",
        }
        caption = f"A/B evaluation (ship when uplift > {self.threshold:g} points)"
        return html_table([row], list(row), caption=caption)


def summarize(
    base_scores: Sequence[float],
    adapter_scores: Sequence[float],
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float, float, float]:
    """``(base_accuracy, adapter_accuracy, uplift, ci_low, ci_high)`` in points.

    The interval is a paired percentile bootstrap of the mean per-case difference: cases are
    resampled with replacement ``resamples`` times (deterministic for a ``seed``).
    """
    n = len(base_scores)
    if n == 0 or n != len(adapter_scores):
        raise ValueError("need the same, non-zero number of base and adapter scores")
    if not 0 < confidence < 1:
        raise ValueError("confidence must be between 0 and 1")
    diffs = [a - b for a, b in zip(adapter_scores, base_scores, strict=True)]
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(diffs, k=n)) for _ in range(resamples))
    tail = (1 - confidence) / 2
    low = means[round(tail * (resamples - 1))]
    high = means[round((1 - tail) * (resamples - 1))]
    # From sums, not a difference of means: 0/1 scores then give exact points, so an uplift of
    # exactly the threshold is not shipped because of a rounding error.
    base, adapter = math.fsum(base_scores), math.fsum(adapter_scores)
    points = 100.0 / n
    return base * points, adapter * points, (adapter - base) * points, low * 100, high * 100


def _cases(dataset: Iterable[EvalCase | Example | Mapping[str, Any]]) -> list[EvalCase]:
    cases = [EvalCase.parse(row, i) for i, row in enumerate(dataset)]
    if not cases:
        raise InvalidRequestError("the evaluation dataset is empty")
    return cases


def _setup(
    client: object, dataset: Iterable[EvalCase | Example | Mapping[str, Any]], *, want_async: bool
) -> list[EvalCase]:
    """Check the client is the kind the function drives (ConfigurationError naming the right
    function otherwise), then parse the dataset."""
    if asyncio.iscoroutinefunction(getattr(client, "chat", None)) != want_async:
        raise ConfigurationError(
            "aevaluate() takes an AsyncTenantLoRA; for a TenantLoRA use evaluate(client, ...)"
            if want_async
            else "evaluate() takes a TenantLoRA; for an AsyncTenantLoRA use "
            "`await tenantlora.evaluation.aevaluate(client, ...)`"
        )
    return _cases(dataset)


def _served_adapter(reply: ChatResponse, index: int) -> str:
    if reply.adapter is None:
        raise InvalidRequestError(
            f"case {index}: the adapter arm was served by the base model "
            f"(fallback_reason={reply.fallback_reason!r}); evaluate needs a ready adapter"
        )
    return reply.adapter


@dataclass(frozen=True)
class _Options:
    scorer: Scorer
    threshold: float
    confidence: float
    resamples: int
    seed: int
    params: dict[str, Any]


def _report(
    tenant: str,
    task: str,
    cases: list[EvalCase],
    replies: list[tuple[ChatResponse, ChatResponse]],
    options: _Options,
) -> EvalReport:
    results = tuple(
        CaseResult(
            index=i,
            expected=case.expected,
            base_answer=base.text,
            adapter_answer=adapted.text,
            base_score=options.scorer(base.text, case.expected),
            adapter_score=options.scorer(adapted.text, case.expected),
        )
        for i, (case, (base, adapted)) in enumerate(zip(cases, replies, strict=True))
    )
    adapters = {_served_adapter(adapted, i) for i, (_, adapted) in enumerate(replies)}
    base_acc, adapter_acc, uplift, low, high = summarize(
        [r.base_score for r in results],
        [r.adapter_score for r in results],
        confidence=options.confidence,
        resamples=options.resamples,
        seed=options.seed,
    )
    return EvalReport(
        tenant=tenant,
        task=task,
        adapter=", ".join(sorted(adapters)),
        n=len(results),
        base_accuracy=base_acc,
        adapter_accuracy=adapter_acc,
        uplift=uplift,
        ci_low=low,
        ci_high=high,
        confidence=options.confidence,
        threshold=options.threshold,
        ship=uplift > options.threshold,
        cases=results,
    )


def evaluate(
    client: TenantLoRA,
    *,
    tenant: str,
    task: str,
    dataset: Iterable[EvalCase | Example | Mapping[str, Any]],
    scorer: Scorer = exact_match,
    threshold: float = 3.0,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
    max_tokens: int | None = None,
    temperature: float | None = 0.0,
    progress: ProgressArg = None,
) -> EvalReport:
    """Run ``dataset`` through the base model and ``tenant``'s adapter; return the report.

    Both arms go through ``client`` (so routing, retries and stats apply), pinned with
    ``arm="control"`` and ``arm="adapter"``. Raises InvalidRequestError for an empty or malformed
    dataset, or when the adapter arm is not served by an adapter (the tenant has none ready).
    ``progress``: True shows a bar (in Jupyter, or on a terminal; nothing in a log), or a
    callable ``progress(done, total)`` is called after every call (two per case).
    """
    params = {"max_tokens": max_tokens, "temperature": temperature}
    options = _Options(scorer, threshold, confidence, resamples, seed, params)
    cases = _setup(client, dataset, want_async=False)
    report_to = reporter(progress, f"evaluating {tenant}/{task}")
    replies = []
    total = 2 * len(cases)
    for i, case in enumerate(cases):
        adapted = client.chat(tenant, task, case.messages, arm="adapter", **options.params)
        _served_adapter(adapted, i)
        if report_to is not None:
            report_to(2 * i + 1, total)
        base = client.chat(tenant, task, case.messages, arm="control", **options.params)
        if report_to is not None:
            report_to(2 * i + 2, total)
        replies.append((base, adapted))
    return _report(tenant, task, cases, replies, options)


async def aevaluate(
    client: AsyncTenantLoRA,
    *,
    tenant: str,
    task: str,
    dataset: Iterable[EvalCase | Example | Mapping[str, Any]],
    scorer: Scorer = exact_match,
    threshold: float = 3.0,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
    max_tokens: int | None = None,
    temperature: float | None = 0.0,
    concurrency: int = 8,
    progress: ProgressArg = None,
) -> EvalReport:
    """The async twin of :func:`evaluate`, with up to ``concurrency`` calls in flight."""
    params = {"max_tokens": max_tokens, "temperature": temperature}
    options = _Options(scorer, threshold, confidence, resamples, seed, params)
    cases = _setup(client, dataset, want_async=True)
    report_to = reporter(progress, f"evaluating {tenant}/{task}")
    gate = asyncio.Semaphore(max(1, concurrency))
    total, done = 2 * len(cases), 0

    async def answer(case: EvalCase, arm: Any) -> ChatResponse:
        nonlocal done
        async with gate:
            reply = await client.chat(tenant, task, case.messages, arm=arm, **options.params)
        done += 1
        if report_to is not None:
            report_to(done, total)
        return reply

    adapted = await asyncio.gather(*(answer(c, "adapter") for c in cases))
    for i, reply in enumerate(adapted):
        _served_adapter(reply, i)
    base = await asyncio.gather(*(answer(c, "control") for c in cases))
    return _report(tenant, task, cases, list(zip(base, adapted, strict=True)), options)
