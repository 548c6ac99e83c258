"""A FastAPI service that answers each tenant with its own adapter; the tenant comes from auth.

    pip install tenantlora fastapi uvicorn
    export TENANTLORA_TOKEN_SECRET=$(python -c "import secrets; print(secrets.token_hex(32))")
    TOKEN=$(python examples/fastapi_service.py token acme)      # a bearer token for tenant acme
    python examples/fastapi_service.py serve --port 8080         # or: uvicorn fastapi_service:app
    curl -s http://127.0.0.1:8080/v1/classify -H "Authorization: Bearer $TOKEN" \\
        -H "Content-Type: application/json" -d '{"text": "Acme Corp, 400 staff, PE-backed"}'
    # {"tenant":"acme","answer":"[acme-icp-v1] Acme Corp, ...","adapter":"acme-icp-v1",
    #  "fallback_reason":null,"latency_ms":0.2}

The tenant is never read from the request body (a body with a ``tenant`` field is refused):
it is the verified subject of the bearer token, here ``<tenant>.<HMAC-SHA256 of it>`` signed
with ``TENANTLORA_TOKEN_SECRET``; in production, a claim of the JWT your identity provider
issued, verified the same way. The endpoint calls ``AsyncTenantLoRA`` and returns the answer
with the adapter that served it and, when the base model answered, why. The client is created
at startup and closed at shutdown (FastAPI's lifespan).

Configuration, from the environment:

* ``TENANTLORA_TOKEN_SECRET`` (required): the key tokens are signed with;
* ``TENANTLORA_OPENAI_BASE_URL`` (+ ``TENANTLORA_OPENAI_MODEL``, ``TENANTLORA_OPENAI_API_KEY``):
  a real OpenAI-compatible server (vLLM, SGLang, ...); unset, a ``FakeBackend`` echoes which
  adapter would answer;
* ``TENANTLORA_REGISTRY``: ``redis://...``, ``postgresql://...`` or an SQLite file path; unset,
  an in-memory registry where ``acme`` and ``globex`` have adapters (any other tenant gets the
  base model, ``fallback_reason`` ``no_adapter``).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from tenantlora import AsyncTenantLoRA
from tenantlora.errors import InvalidRequestError, TenantLoRAError

TASK = "icp_classifier"
SECRET_VARIABLE = "TENANTLORA_TOKEN_SECRET"


# -- auth: the tenant is the verified subject of the bearer token ------------------------------


def sign(secret: bytes, tenant: str) -> str:
    """A token for ``tenant``: ``<tenant>.<hex HMAC-SHA256(secret, tenant)>``."""
    return f"{tenant}.{hmac.new(secret, tenant.encode(), hashlib.sha256).hexdigest()}"


def verify(secret: bytes, token: str) -> str | None:
    """The tenant a token was signed for, or None when the signature does not match."""
    tenant, _, _ = token.rpartition(".")
    if not tenant or not hmac.compare_digest(sign(secret, tenant), token):
        return None
    return tenant


def load_secret() -> bytes:
    secret = os.environ.get(SECRET_VARIABLE, "")
    if len(secret) < 32:
        raise RuntimeError(f"set {SECRET_VARIABLE} to a random secret of 32+ characters")
    return secret.encode()


bearer = HTTPBearer(auto_error=False)


def current_tenant(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> str:
    tenant = (
        None if credentials is None else verify(request.app.state.secret, credentials.credentials)
    )
    if tenant is None:
        raise HTTPException(401, "a valid bearer token is required", {"WWW-Authenticate": "Bearer"})
    return tenant


# -- the client: created at startup, closed at shutdown ---------------------------------------


def make_backend() -> Any:
    if os.environ.get("TENANTLORA_OPENAI_BASE_URL"):
        from tenantlora.backends import OpenAICompatible

        return OpenAICompatible.from_env()  # TENANTLORA_OPENAI_BASE_URL, _MODEL, _API_KEY
    from tenantlora.testing import FakeBackend

    return FakeBackend()  # answers "[<adapter or base>] <the question>"


def make_registry() -> Any:
    where = os.environ.get("TENANTLORA_REGISTRY")
    if where and where.startswith(("redis://", "rediss://")):
        from tenantlora.registry import RedisRegistry

        return RedisRegistry(where)
    if where and where.startswith(("postgresql://", "postgres://")):
        from tenantlora.registry import PostgresRegistry

        return PostgresRegistry(where)
    if where:
        from tenantlora.registry import SQLiteRegistry

        return SQLiteRegistry(where)
    from tenantlora.registry import MemoryRegistry

    registry = MemoryRegistry()  # the demo: two tenants with adapters
    registry.publish("acme", TASK, adapter_id="acme-icp-v1")
    registry.publish("globex", TASK, adapter_id="globex-icp-v1")
    return registry


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.secret = load_secret()
    registry = make_registry()
    app.state.client = AsyncTenantLoRA(backend=make_backend(), registry=registry, ttl=60)
    try:
        yield
    finally:
        await app.state.client.aclose()  # closes the backend's connections
        registry.close()
        print("shutdown: client and registry closed", flush=True)


# -- the API ----------------------------------------------------------------------------------


class Question(BaseModel):
    model_config = ConfigDict(extra="forbid")  # no "tenant" (or anything else) in the body
    text: str = Field(min_length=1, max_length=4000)


class Answer(BaseModel):
    tenant: str
    answer: str
    adapter: str | None  # the adapter that served the answer; None: the base model
    fallback_reason: str | None  # why the base model answered (no_adapter, ...)
    latency_ms: float


app = FastAPI(title="tenantlora example", lifespan=lifespan)


@app.exception_handler(TenantLoRAError)
async def model_unavailable(request: Request, exc: TenantLoRAError) -> JSONResponse:
    if isinstance(exc, InvalidRequestError):
        return JSONResponse({"detail": str(exc)}, status_code=400)
    # The backend failed after its retries: say so without internals.
    return JSONResponse({"detail": "the model is unavailable, retry later"}, status_code=503)


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/v1/classify")
async def classify(
    question: Question, request: Request, tenant: Annotated[str, Depends(current_tenant)]
) -> Answer:
    client: AsyncTenantLoRA = request.app.state.client
    messages = [{"role": "user", "content": question.text}]
    reply = await client.chat(tenant, TASK, messages, max_tokens=64)
    return Answer(
        tenant=tenant,
        answer=reply.text,
        adapter=reply.adapter,
        fallback_reason=reply.fallback_reason,
        latency_ms=round(reply.latency_ms, 1),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    token = commands.add_parser("token", help="print a bearer token for a tenant")
    token.add_argument("tenant")
    serve = commands.add_parser("serve", help="run the service with uvicorn")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    if args.command == "token":
        print(sign(load_secret(), args.tenant))
        return 0
    import uvicorn

    uvicorn.run(app, host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
