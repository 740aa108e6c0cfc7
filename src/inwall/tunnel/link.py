"""The link: an opaque, ordered byte stream carried in binary WebSocket messages.

The WebSocket only frames the inner TLS records; message boundaries mean nothing to the
layers above, so a sender may cut its bytes anywhere and a receiver may see them in any
grouping. What the link does enforce is hygiene: binary messages only, each at most
``max_message_bytes``; a text message or an oversized one closes that connection (and
only that one).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_INTERNAL_ERROR",
    "CLOSE_NORMAL",
    "CLOSE_POLICY",
    "CLOSE_PROTOCOL_ERROR",
    "CLOSE_TOO_BIG",
    "CLOSE_UNSUPPORTED",
    "CONNECT_PATH",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "SUBPROTOCOL",
    "LinkLimits",
    "split_messages",
]

SUBPROTOCOL = "inwall-tunnel.v1"
"""Offered by the gateway and echoed by the edge, so a future incompatible link can be told apart."""

CONNECT_PATH = "/v1/tunnels/connect"
DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_UNSUPPORTED = 1003
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011


@dataclass(frozen=True, slots=True)
class LinkLimits:
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES

    def __post_init__(self) -> None:
        if not 16 * 1024 <= self.max_message_bytes <= 64 * 1024 * 1024:
            raise ValueError("max_message_bytes must be between 16 KiB and 64 MiB")


def split_messages(data: bytes, max_message_bytes: int) -> list[bytes]:
    """Cut ``data`` into messages of at most ``max_message_bytes`` (no copy when it already fits)."""
    if len(data) <= max_message_bytes:
        return [data] if data else []
    view = memoryview(data)
    return [bytes(view[i : i + max_message_bytes]) for i in range(0, len(data), max_message_bytes)]
