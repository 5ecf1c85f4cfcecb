"""Framed pipe protocol between the worker, the sandbox zygote and sandbox children.

A frame is a 4-byte big-endian unsigned length followed by that many bytes of UTF-8 JSON
(one JSON object per frame).  Readers enforce a maximum frame size *before* allocating the
body, so a hostile child cannot make the parent allocate more than ``max_frame`` bytes.

Channels:

* parent <-> child: a ``SOCK_STREAM`` unix socketpair per sandbox, frames back to back.
* parent <-> zygote: a ``SOCK_SEQPACKET`` unix socketpair; every datagram carries exactly one
  frame (plus, for ``spawned`` replies, the child's socket and pidfd as ``SCM_RIGHTS``).

Messages (``op`` field):

parent -> child
    ``tools``       ``{"tools": [{"name", "description", "inputs", "output_type", "local"?}]}``
    ``vars``        ``{"vars": {...}}``
    ``exec``        ``{"code": str}``
    ``exec_raw``    ``{"code": str}`` (test-only, honoured only when the pool allows it)
    ``tool_result`` ``{"ok": bool, "value"?: Any, "error"?: str}``
    ``exit``
child -> parent
    ``ready``        ``{"pid", "isolation": {...}}``  (first frame, once set-up is complete)
    ``setup_failed`` ``{"error": str}``
    ``tool_call``    ``{"name", "args": list, "kwargs": dict}``
    ``result``       ``{"output", "output_is_text": bool, "logs": str, "is_final_answer": bool}``
    ``error``        ``{"message": str, "logs": str}``
parent -> zygote: ``config``, ``spawn {id}``, ``release {pid}``, ``shutdown``
zygote -> parent: ``hello``, ``spawned {id, pid, workdir}`` (+fds), ``spawn_error {id, error}``,
    ``exited {pid, code, signal}``, ``reaped {pid}``
"""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

HEADER = struct.Struct(">I")
HEADER_SIZE = HEADER.size
#: Absolute upper bound for any frame, whatever the limits say.
DEFAULT_MAX_FRAME_BYTES = 16 * 2**20
#: Control (zygote) datagrams are tiny.
MAX_CONTROL_FRAME_BYTES = 64 * 1024

# Child exit codes (the parent maps them to human readable reasons).
EXIT_OK = 0
EXIT_SETUP_FAILED = 70
EXIT_MEMORY = 71
EXIT_PROTOCOL = 72
EXIT_PARENT_GONE = 73
EXIT_INTERNAL = 74


class ProtocolError(Exception):
    """Malformed or oversized frame."""


class FrameTooLarge(ProtocolError):
    pass


class ChannelClosed(ProtocolError):
    """The peer closed the channel (EOF)."""


def dumps(obj: Any, *, default: Callable[[Any], Any] | None = None) -> bytes:
    text = json.dumps(
        obj, ensure_ascii=False, separators=(",", ":"), allow_nan=True, default=default
    )
    return text.encode("utf-8")


def encode_frame(
    obj: dict[str, Any],
    *,
    max_frame: int = DEFAULT_MAX_FRAME_BYTES,
    default: Callable[[Any], Any] | None = None,
) -> bytes:
    """Serialise ``obj`` into a frame.  Raises ``TypeError``/``ValueError`` for non-JSON values
    (unless ``default`` converts them) and ``FrameTooLarge`` when the payload exceeds
    ``max_frame``."""
    payload = dumps(obj, default=default)
    if len(payload) > max_frame:
        raise FrameTooLarge(f"frame of {len(payload)} bytes exceeds the limit of {max_frame} bytes")
    return HEADER.pack(len(payload)) + payload


def decode_payload(payload: bytes | bytearray | memoryview) -> dict[str, Any]:
    try:
        obj = json.loads(bytes(payload).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ProtocolError(f"invalid frame payload: {e}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("op"), str):
        raise ProtocolError("frame is not an object with an 'op' field")
    return obj


def decode_datagram(data: bytes, *, max_frame: int = MAX_CONTROL_FRAME_BYTES) -> dict[str, Any]:
    """Decode a frame that arrived as one ``SOCK_SEQPACKET`` datagram."""
    if len(data) < HEADER_SIZE:
        raise ProtocolError("truncated frame header")
    (length,) = HEADER.unpack_from(data)
    if length > max_frame:
        raise FrameTooLarge(f"frame of {length} bytes exceeds the limit of {max_frame} bytes")
    if length != len(data) - HEADER_SIZE:
        raise ProtocolError("datagram length does not match its frame header")
    return decode_payload(memoryview(data)[HEADER_SIZE:])


def send_frame(
    sock: socket.socket,
    obj: dict[str, Any],
    *,
    max_frame: int = DEFAULT_MAX_FRAME_BYTES,
    deadline: float | None = None,
    default: Callable[[Any], Any] | None = None,
) -> None:
    """Send one frame; ``deadline`` is a ``time.monotonic()`` value (``TimeoutError`` after)."""
    send_encoded(sock, encode_frame(obj, max_frame=max_frame, default=default), deadline=deadline)


def send_encoded(sock: socket.socket, data: bytes, *, deadline: float | None = None) -> None:
    """Send frames made by ``encode_frame``; ``deadline`` as for ``send_frame``."""
    if deadline is None:
        sock.settimeout(None)
        sock.sendall(data)
        return
    view = memoryview(data)
    while view:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("send deadline exceeded")
        sock.settimeout(remaining)
        sent = sock.send(view)
        view = view[sent:]


def _recv_exact(
    sock: socket.socket, n: int, deadline: float | None, *, at_start: bool
) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        if deadline is None:
            sock.settimeout(None)
        else:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("receive deadline exceeded")
            sock.settimeout(remaining)
        try:
            k = sock.recv_into(view[got:], n - got)
        except ConnectionResetError:
            k = 0
        if k == 0:
            if at_start and got == 0:
                raise ChannelClosed("peer closed the channel")
            raise ChannelClosed("peer closed the channel in the middle of a frame")
        got += k
    return buf


def recv_frame(
    sock: socket.socket,
    *,
    max_frame: int = DEFAULT_MAX_FRAME_BYTES,
    deadline: float | None = None,
) -> dict[str, Any]:
    """Receive one frame from a stream socket.

    Raises ``ChannelClosed`` on EOF, ``FrameTooLarge`` when the announced length exceeds
    ``max_frame`` (nothing is allocated), ``ProtocolError`` on garbage and ``TimeoutError`` when
    ``deadline`` (a ``time.monotonic()`` value) passes.
    """
    header = _recv_exact(sock, HEADER_SIZE, deadline, at_start=True)
    (length,) = HEADER.unpack(header)
    if length > max_frame:
        raise FrameTooLarge(f"frame of {length} bytes exceeds the limit of {max_frame} bytes")
    payload = _recv_exact(sock, length, deadline, at_start=False)
    return decode_payload(payload)


def json_size(value: Any) -> int:
    """Size in bytes of ``value`` once JSON-encoded as in a frame."""
    return len(dumps(value))


def fit_text(text: str, max_bytes: int, *, marker: str | None = None) -> tuple[str, bool]:
    """Truncate ``text`` so that its JSON encoding fits in ``max_bytes``.

    Returns ``(text, truncated)``; a truncation marker saying how much was dropped is appended.
    """
    size = json_size(text)
    if size <= max_bytes:
        return text, False
    original = len(text)
    keep = min(len(text), max_bytes)
    while True:
        kept = text[:keep]
        note = marker or f"\n..._truncated: {original - keep} of {original} characters dropped_..."
        candidate = kept + note
        if json_size(candidate) <= max_bytes or keep == 0:
            return candidate, True
        keep = int(keep * max_bytes / json_size(candidate) * 0.95)
