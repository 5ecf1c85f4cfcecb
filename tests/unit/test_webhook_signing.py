"""Standard Webhooks signing: the published test vector, and what `verify` must refuse."""

from __future__ import annotations

import base64

import pytest

from agent_platform.webhooks.signing import InvalidSignature, generate_secret, sign, verify

# The vector of the spec's reference library (standard-webhooks/standard-webhooks,
# libraries/python/tests/test_webhooks.py::test_sign_function).
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TIMESTAMP = 1614265330
BODY = b'{"test": 2432232314}'
SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def headers(**overrides: str) -> dict[str, str]:
    values = {
        "webhook-id": MSG_ID,
        "webhook-timestamp": str(TIMESTAMP),
        "webhook-signature": SIGNATURE,
    }
    values.update({k.replace("_", "-"): v for k, v in overrides.items()})
    return values


def test_sign_matches_the_spec_vector() -> None:
    assert sign(SECRET, MSG_ID, TIMESTAMP, BODY) == SIGNATURE
    # a bare base64 key (no whsec_ prefix) is the same key
    assert sign(SECRET.removeprefix("whsec_"), MSG_ID, TIMESTAMP, BODY) == SIGNATURE


def test_verify_accepts_the_vector_within_tolerance() -> None:
    verify(SECRET, headers(), BODY, now=TIMESTAMP)
    verify(SECRET, headers(), BODY, now=TIMESTAMP + 299)
    # header names are case-insensitive; several signatures (key rotation) are allowed
    rotated = {
        "Webhook-Id": MSG_ID,
        "Webhook-Timestamp": str(TIMESTAMP),
        "Webhook-Signature": f"v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= {SIGNATURE}",
    }
    verify(SECRET, rotated, BODY, now=TIMESTAMP)


@pytest.mark.parametrize(
    ("hdrs", "body", "message"),
    [
        (headers(), b'{"test": 2432232315}', "no matching signature"),
        (headers(webhook_id="msg_other"), BODY, "no matching signature"),
        (headers(webhook_timestamp=str(TIMESTAMP + 1)), BODY, "no matching signature"),
        # a corrupted signature (one character changed) is refused
        (headers(webhook_signature=SIGNATURE[:-2] + "A="), BODY, "no matching signature"),
        # only v1 counts, even with the right digest
        (headers(webhook_signature="v2," + SIGNATURE[3:]), BODY, "no matching signature"),
        (headers(webhook_timestamp="soon"), BODY, "not a number"),
        ({"webhook-timestamp": str(TIMESTAMP), "webhook-signature": SIGNATURE}, BODY, "missing"),
    ],
)
def test_verify_rejects_tampering(hdrs: dict[str, str], body: bytes, message: str) -> None:
    with pytest.raises(InvalidSignature, match=message):
        verify(SECRET, hdrs, body, now=TIMESTAMP)


def test_verify_rejects_stale_and_future_timestamps() -> None:
    with pytest.raises(InvalidSignature, match="too old"):
        verify(SECRET, headers(), BODY, now=TIMESTAMP + 301)
    with pytest.raises(InvalidSignature, match="too old"):
        verify(SECRET, headers(), BODY)  # the vector is from 2021
    with pytest.raises(InvalidSignature, match="future"):
        verify(SECRET, headers(), BODY, now=TIMESTAMP - 301)
    verify(SECRET, headers(), BODY, tolerance_s=10**10)


def test_wrong_secret_is_rejected() -> None:
    with pytest.raises(InvalidSignature):
        verify(generate_secret(), headers(), BODY, now=TIMESTAMP)


def test_generate_secret_round_trips() -> None:
    secret = generate_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    assert generate_secret() != secret
    signature = sign(secret, "msg_1", 1_700_000_000, b"{}")
    hdrs = {
        "webhook-id": "msg_1",
        "webhook-timestamp": "1700000000",
        "webhook-signature": signature,
    }
    verify(secret, hdrs, b"{}", now=1_700_000_000)
    with pytest.raises(ValueError):
        sign("whsec_not base64!", "msg_1", 1, b"")
