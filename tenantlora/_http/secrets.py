"""Secrets on the wire: checked at construction, kept out of every message.

API keys and tokens are :class:`~pydantic.SecretStr`; a value that HTTP libraries would choke on
(and quote into their exceptions and logs) is refused at construction; credentials leave URLs
before any library sees them; :func:`sensitive_values` lists what :func:`scrub` removes from
error text; :func:`foreign` is the chain link that stands in for a foreign exception.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import SecretStr

from tenantlora.errors import ConfigurationError

__all__ = [
    "ForeignError",
    "as_secret",
    "auth_headers",
    "check_secret",
    "foreign",
    "json_headers",
    "safe_url",
    "scrub",
    "sensitive_values",
    "split_userinfo",
]

_SENSITIVE_HEADER_PARTS = ("authorization", "key", "token", "secret", "cookie", "password")


def check_secret(name: str, value: str) -> None:
    """Refuse a key or token that cannot be sent safely, without ever echoing it.

    Control characters (a trailing newline from a key file, a CR) and non-ASCII characters make
    HTTP libraries fail *while quoting the header*, into their exceptions and DEBUG logs; so
    they are refused here, at construction, with a :class:`ConfigurationError` that names only
    ``name`` and the problem.
    """
    for index, char in enumerate(value):
        code = ord(char)
        if code < 0x20 or code == 0x7F:
            where = "at its end" if index == len(value) - 1 else f"at position {index}"
            raise ConfigurationError(
                f"{name} contains a control character {where} (a newline from a key file?); "
                "strip it (the value is not shown)"
            )
        if code > 0x7E:
            raise ConfigurationError(
                f"{name} contains a non-ASCII character at position {index}; HTTP headers "
                "carry ASCII only (the value is not shown)"
            )


def as_secret(value: SecretStr | str | None, name: str = "api_key") -> SecretStr | None:
    """Wrap a plain-string key in a SecretStr, checked by :func:`check_secret`; an empty key
    means no key."""
    if value is None:
        return None
    secret = value if isinstance(value, SecretStr) else SecretStr(value)
    check_secret(name, secret.get_secret_value())
    return secret if secret.get_secret_value() else None


def split_userinfo(url: str) -> tuple[str, dict[str, str]]:
    """``http://user:pass@host/v1`` -> (``http://host/v1``, a Basic ``Authorization`` header).

    The credentials leave the URL before any HTTP library sees it, so no request log line (httpx
    logs every URL at INFO) can print them. Both parts are checked like any secret.
    """
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, {}
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    user, password = unquote(user), unquote(password)
    check_secret("the user name in base_url", user)
    check_secret("the password in base_url", password)
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return urlunsplit(parts._replace(netloc=host)), {"Authorization": f"Basic {token}"}


class ForeignError(Exception):
    """Stands in for a foreign exception in a chain (``raise ours from ForeignError(...)``):
    its type and, when safe, its message with every secret scrubbed. The foreign exception
    itself (whose attributes, message or traceback might hold a key, a header or request
    content) is not kept."""


def foreign(exc: BaseException, secrets: tuple[str, ...] = (), *, detail: bool = True) -> Exception:
    """The chain link for ``exc``: its qualified type name, plus its scrubbed message when
    ``detail`` (never for errors whose message may quote request content)."""
    kind = f"{type(exc).__module__}.{type(exc).__qualname__}"
    if not detail:
        return ForeignError(kind)
    text = scrub(str(exc), secrets)
    return ForeignError(f"{kind}: {text[:300]}" if text else kind)


def auth_headers(api_key: SecretStr | None, scheme: str = "Bearer") -> dict[str, str]:
    """``{"Authorization": "Bearer <key>"}``, or nothing without a key."""
    if api_key is None:
        return {}
    return {"Authorization": f"{scheme} {api_key.get_secret_value()}"}


def sensitive_values(headers: Mapping[str, str]) -> tuple[str, ...]:
    """Header values that must never show up in an error: auth, keys, tokens, cookies.

    Both the full value and, for ``Authorization: <scheme> <credential>``, the bare credential.
    """
    found: list[str] = []
    for name, value in headers.items():
        if value and any(part in name.lower() for part in _SENSITIVE_HEADER_PARTS):
            found.append(value)
            credential = value.partition(" ")[2]
            if credential:
                found.append(credential)
                if value.lower().startswith("basic "):  # the decoded user:password, and each
                    try:
                        plain = base64.b64decode(credential, validate=True).decode()
                    except ValueError:
                        plain = ""
                    found.extend(p for p in (plain, *plain.partition(":")[::2]) if len(p) >= 4)
    return tuple(found)


def scrub(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text


def json_headers(api_key: SecretStr | None, extra: Mapping[str, str] | None) -> dict[str, str]:
    """The headers of a JSON API: content type, accept, bearer auth, then ``extra``; every value
    checked like a secret (a header may carry one)."""
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    headers.update(auth_headers(api_key))
    if extra:
        headers.update(extra)
    for header, value in headers.items():
        check_secret(f"header {header!r}", value)
    return headers


def safe_url(url: str) -> str:
    """The URL without user:password, for reprs and messages."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))
