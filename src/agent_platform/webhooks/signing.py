"""Standard Webhooks signatures (https://www.standardwebhooks.com/).

A receiver authenticates a delivery by recomputing
`base64(HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{body}"))`, where `key` is the
base64-decoded part of the secret after `whsec_`. The id makes replays detectable (it is the
same on every retry of one delivery) and the timestamp bounds how long a captured request
stays valid, so `verify` rejects timestamps outside a tolerance window in either direction.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping

__all__ = ["SECRET_PREFIX", "InvalidSignature", "generate_secret", "sign", "verify"]

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE_S = 300


class InvalidSignature(Exception):
    """The request is not a valid, fresh delivery signed with the expected secret."""


def _key(secret: str) -> bytes:
    """The HMAC key: the base64 part of `whsec_<base64>` (a bare base64 key is accepted too,
    as the reference libraries do)."""
    raw = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("a webhook secret must be 'whsec_' followed by base64") from exc
    if not key:
        raise ValueError("the webhook secret is empty")
    return key


def generate_secret(n_bytes: int = 32) -> str:
    """A new random secret in the spec's format (24..64 bytes of key material)."""
    if not 24 <= n_bytes <= 64:
        raise ValueError("a webhook secret should have between 24 and 64 random bytes")
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(n_bytes)).decode("ascii")


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value for one message: `v1,<base64 HMAC-SHA256>`."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is None:  # plain dicts are case-sensitive; HTTP header names are not
        value = next((v for k, v in headers.items() if k.lower() == name), None)
    if not value:
        raise InvalidSignature(f"missing {name} header")
    return value


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    *,
    now: int | None = None,
) -> None:
    """Check a received delivery; raises `InvalidSignature` unless one of the `v1` signatures
    in `webhook-signature` (space-separated, as during secret rotation) matches and the
    timestamp is within `tolerance_s` of `now` (default: the current time)."""
    msg_id = _header(headers, "webhook-id")
    raw_timestamp = _header(headers, "webhook-timestamp")
    signatures = _header(headers, "webhook-signature")
    try:
        timestamp = int(raw_timestamp)
    except ValueError:
        raise InvalidSignature("webhook-timestamp is not a number of seconds") from None
    current = int(time.time()) if now is None else now
    if timestamp < current - tolerance_s:
        raise InvalidSignature("the message timestamp is too old")
    if timestamp > current + tolerance_s:
        raise InvalidSignature("the message timestamp is too far in the future")
    expected = sign(secret, msg_id, timestamp, body).split(",", 1)[1]
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode(), expected.encode()):
            return
    raise InvalidSignature("no matching signature")
