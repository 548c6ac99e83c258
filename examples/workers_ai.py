"""Per-tenant adapters on Cloudflare Workers AI, each tenant's fine-tune found in Cloudflare KV.

    export CLOUDFLARE_ACCOUNT_ID=... CLOUDFLARE_API_TOKEN=... CLOUDFLARE_KV_NAMESPACE_ID=...
    python examples/workers_ai.py acme globex newco [--task icp_classifier] [--model MODEL]

The shared base model is a Workers AI LoRA model (``--model``, default
``@cf/mistral/mistral-7b-instruct-v0.2-lora``); each tenant's adapter is a Workers AI
fine-tune, and the KV key ``lora_adapters:{tenant}`` maps the tenant's tasks to fine-tunes
(``{"icp_classifier": "<fine-tune id or name>"}``, as ``publish_adapter`` or ``tenantlora
publish`` writes it). For each tenant on the command line the script asks the same question
through ``TenantLoRA(backend=WorkersAI, registry=CloudflareKV)`` and prints which fine-tune
answered: a tenant without a key is answered by the base model (``fallback_reason
no_adapter``), and so is one whose fine-tune is gone from the account (``adapter_unavailable``).
Then it streams the first tenant's answer and prints the client's stats.

The API token needs Workers AI Read and Workers KV Storage Read. Credentials come from the
environment only. ``--base-url`` replaces the API root (``https://api.cloudflare.com/client/v4``),
e.g. to run against a local stand-in, as tests/test_examples.py does.
"""

from __future__ import annotations

import argparse

from tenantlora import TenantLoRA
from tenantlora.backends import WorkersAI
from tenantlora.registry import CloudflareKV

QUESTION = "Acme Corp, 400 staff, PE-backed, SaaS, EMEA. Is it in our ideal customer profile?"
DEFAULT_BASE_URL = "https://api.cloudflare.com/client/v4"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("tenants", nargs="+", metavar="TENANT")
    parser.add_argument("--task", default="icp_classifier")
    parser.add_argument("--model", default="@cf/mistral/mistral-7b-instruct-v0.2-lora")
    parser.add_argument("--base-url", default=DEFAULT_BASE_URL, help="the API root")
    args = parser.parse_args(argv)

    # from_env reads CLOUDFLARE_ACCOUNT_ID and CLOUDFLARE_API_TOKEN (+ CLOUDFLARE_KV_NAMESPACE_ID
    # for KV); keyword arguments override. The token is a SecretStr: never in a repr or an error.
    backend = WorkersAI.from_env(model=args.model, base_url=args.base_url)
    registry = CloudflareKV.from_env(base_url=args.base_url)
    messages = [{"role": "user", "content": QUESTION}]
    with registry, TenantLoRA(backend=backend, registry=registry, ttl=60) as client:
        for tenant in args.tenants:
            reply = client.chat(tenant, args.task, messages, max_tokens=64, temperature=0.0)
            # reply.adapter: the fine-tune sent as "lora" (None: the base model answered).
            print(
                f"{tenant}: adapter={reply.adapter} fallback={reply.fallback_reason} "
                f"latency={reply.latency_ms:.0f} ms text={reply.text.strip()!r}"
            )

        with client.stream(args.tenants[0], args.task, messages, max_tokens=64) as stream:
            text = "".join(chunk.text for chunk in stream)  # server-sent events, as they come
        assert stream.response is not None  # set once the stream has ended
        print(f"streamed {args.tenants[0]}: adapter={stream.response.adapter} text={text!r}")

        stats = client.stats()
        print(
            f"stats: {stats.requests} requests, fallbacks {stats.fallbacks}, "
            f"cache hit rate {stats.cache_hit_rate:.0%}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
