"""One way to print a store or broker URL: never with its password, whatever form the password takes.

A URL carries secrets in two places: the userinfo (``scheme://user:PASSWORD@host``) and query
parameters (``?password=…``, ``?sslpassword=…``, ``?token=…``). ``redact_url`` replaces both
with ``***`` and is what every message, log line, spinner and status page of tidings prints.
``scrub`` also removes the URL's secrets from text someone else wrote (a client library's error
that quotes the URL or a host string cut out of it), which ``redact_url`` alone cannot reach.
"""

from __future__ import annotations

import re
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

__all__ = ["MASK", "redact_url", "scrub", "secrets_of"]

MASK = "***"

# Query parameters whose value is a secret. A substring match on purpose: sslpassword,
# sasl_plain_password, access_token, client_secret, apikey… all fall under it.
_SECRET_PARAMETER = re.compile(r"pass|pwd|secret|token|credential|api[_-]?key|private[_-]?key|signature", re.IGNORECASE)
# ``//user:secret@`` anywhere in text (a URL inside a sentence), and ``,user:secret@`` of the
# second and later servers of a list (``nats://a:p@h1,b:q@h2``).
_USERINFO = re.compile(r"(?P<head>(?://|,)[^/@\s:'\",]*):(?P<secret>[^@\s'\"]*)@")
_MIN_FREE_TEXT_SECRET = 4
_QUERY_PAIR = re.compile(r"(?P<head>[?&;](?P<name>[^=&#\s'\"]+)=)(?P<value>[^&#\s'\"]*)")


def redact_url(url: str) -> str:
    """``url`` with the password of its userinfo and every password-like query value replaced by ``***``.

    Works on anything that looks like one or more URLs (``nats://a:p@h1,b:q@h2``, a typo such as
    ``amqp:/u:p@h``); text without secrets comes back unchanged.
    """
    if not isinstance(url, str):
        return repr(url)
    return scrub(url, url)


def secrets_of(url: str) -> list[str]:
    """The secret values in ``url``: its userinfo password and password-like query values, raw and decoded."""
    if not isinstance(url, str):
        return []
    found: set[str] = set()
    for match in _USERINFO.finditer(url):
        found.add(match["secret"])
    parts = _split(url)
    if parts is not None:
        netloc = parts.netloc or parts.path.lstrip("/").split("/", 1)[0]
        for server in netloc.split(","):
            userinfo, at, _ = server.rpartition("@")
            if at and ":" in userinfo:
                found.add(userinfo.split(":", 1)[1])
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if _SECRET_PARAMETER.search(name):
                found.add(value)
    for match in _QUERY_PAIR.finditer(url):
        if _SECRET_PARAMETER.search(match["name"]):
            found.add(match["value"])
    found |= {unquote(value) for value in found}
    # Longest first, so a secret that contains another is replaced whole.
    return sorted((value for value in found if value), key=len, reverse=True)


def scrub(text: str, *urls: str | None) -> str:
    """``text`` with every secret of ``urls`` replaced by ``***``, and any URL in it redacted."""
    secrets = [secret for url in urls if url for secret in secrets_of(url)]
    # Known secrets first: a password holding an unencoded "@" would fool the patterns below.
    text = _scrub_known(text, secrets)
    text = _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@", text)
    return _QUERY_PAIR.sub(lambda m: m["head"] + (MASK if _SECRET_PARAMETER.search(m["name"]) else m["value"]), text)


def _scrub_known(text: str, secrets: list[str]) -> str:
    # Anywhere in free text: a secret of a few characters would also match ordinary words and
    # mangle the message, so the shortest are left to the anchored patterns above.
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= _MIN_FREE_TEXT_SECRET and secret != MASK:
            text = text.replace(secret, MASK)
    return text


def _split(url: str) -> SplitResult | None:
    try:
        return urlsplit(url)
    except ValueError:  # e.g. an unbalanced "[" in the host
        return None
