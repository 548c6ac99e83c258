"""The neutral HTTP layer every HTTP client in tenantlora uses: backends, registries, providers.

``secrets`` (keys as SecretStr, redaction, the foreign-exception stand-in), ``errors`` (the one
boundary where transport exceptions and error responses become tenantlora errors), ``sse`` (the
shared drain-and-decode of server-sent events), ``config`` (how to reach one API), and the
transports: ``sync`` (httpx), ``httpx_async``, ``aiohttp_transport`` (the async fast path) and
``transports`` (picking the async one). Nothing here knows about backends or registries; nothing
here imports aiohttp until the aiohttp transport is built.
"""
