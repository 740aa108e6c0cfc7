"""Sans-I/O SOCKS5 server handshake (RFC 1928) with username/password auth (RFC 1929).

Only what the sandbox needs: the client must authenticate with the sandbox's
credential, and the only command is CONNECT (IPv4, IPv6 or a domain name, so
name resolution happens on the host, where the rules can check it). BIND and
UDP ASSOCIATE are refused with reply 0x07: the proxy relays no UDP at all.

The machine is a table: states in ``State``, transitions in ``_TRANSITIONS``,
every change through ``_set_state``. A peer's mistake raises ``SocksError``
(a ``RemoteProtocolError``) with the reply bytes to send before closing; our
own misuse (replying twice, replying out of turn) raises ``LocalProtocolError``.
"""

from __future__ import annotations

import enum
import hmac
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import Final

from inwall.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "SOCKS4_REJECT",
    "AuthRequest",
    "ConnectRequest",
    "Reply",
    "Socks5Server",
    "SocksError",
    "State",
]

VERSION: Final = 0x05
AUTH_VERSION: Final = 0x01
METHOD_USERPASS: Final = 0x02
NO_ACCEPTABLE: Final = 0xFF
CMD_CONNECT: Final = 0x01
ATYP_IPV4: Final = 0x01
ATYP_DOMAIN: Final = 0x03
ATYP_IPV6: Final = 0x04
MAX_BUFFER: Final = 64 * 1024

#: What a SOCKS4 client gets: "request rejected or failed" (we only speak SOCKS5).
SOCKS4_REJECT: Final = b"\x00\x5b\x00\x00\x00\x00\x00\x00"


class Reply(enum.IntEnum):
    """RFC 1928 reply codes the proxy uses."""

    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08


class State(enum.Enum):
    GREETING = "greeting"
    AUTH = "auth"
    AWAIT_AUTH_RESULT = "await_auth_result"
    REQUEST = "request"
    AWAIT_REPLY = "await_reply"
    ESTABLISHED = "established"
    CLOSED = "closed"


_TRANSITIONS: Final[dict[tuple[State, str], State]] = {
    (State.GREETING, "greeting"): State.AUTH,
    (State.AUTH, "auth"): State.AWAIT_AUTH_RESULT,
    (State.AWAIT_AUTH_RESULT, "auth_ok"): State.REQUEST,
    (State.AWAIT_AUTH_RESULT, "auth_failed"): State.CLOSED,
    (State.REQUEST, "connect"): State.AWAIT_REPLY,
    (State.AWAIT_REPLY, "reply_ok"): State.ESTABLISHED,
    (State.AWAIT_REPLY, "reply_failed"): State.CLOSED,
}


class SocksError(RemoteProtocolError):
    """The client broke the handshake or asked for something refused; send ``reply`` and close."""

    def __init__(self, message: str, reply: bytes = b"") -> None:
        super().__init__(message)
        self.reply = reply


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """The client's RFC 1929 credentials; answer with ``Socks5Server.accept_auth``."""

    username: bytes = field(repr=False)
    password: bytes = field(repr=False)

    def matches(self, credential: str) -> bool:
        """Constant-time check of the password (the username is not part of the secret)."""
        return bool(credential) and hmac.compare_digest(self.password, credential.encode())


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """CONNECT to *host* (as the client spelled it; not yet canonical) and *port*."""

    host: str
    port: int


Event = AuthRequest | ConnectRequest


def _reply_bytes(code: int) -> bytes:
    # BND.ADDR/BND.PORT are zero: the host-side address is none of the sandbox's business.
    return bytes((VERSION, code, 0x00, ATYP_IPV4, 0, 0, 0, 0, 0, 0))


class Socks5Server:
    """One server-side SOCKS5 handshake: ``receive_data``, then ``next_event`` until it returns None."""

    def __init__(self) -> None:
        self._state = State.GREETING
        self._buf = bytearray()
        self._out = bytearray()

    @property
    def state(self) -> State:
        return self._state

    def _set_state(self, event: str) -> None:
        try:
            self._state = _TRANSITIONS[(self._state, event)]
        except KeyError:
            raise LocalProtocolError(f"{event!r} is not possible in state {self._state.value}") from None

    def _fail(self, message: str, reply: bytes) -> SocksError:
        self._state = State.CLOSED
        return SocksError(message, reply)

    def receive_data(self, data: bytes) -> None:
        if self._state is State.CLOSED:
            raise LocalProtocolError("the handshake is closed")
        self._buf += data
        if len(self._buf) > MAX_BUFFER:
            raise self._fail("too much data before the handshake finished", b"")

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    @property
    def remainder(self) -> bytes:
        """Bytes the client sent after its CONNECT request (optimistic data), once established."""
        if self._state is not State.ESTABLISHED:
            raise LocalProtocolError("the tunnel is not established")
        out = bytes(self._buf)
        self._buf.clear()
        return out

    def next_event(self) -> Event | None:
        """Parse what is buffered; None means more bytes are needed (or we owe the client an answer)."""
        while True:
            if self._state is State.GREETING:
                if not self._greeting():
                    return None
                continue
            if self._state is State.AUTH:
                return self._auth()
            if self._state is State.REQUEST:
                return self._request()
            return None

    def _greeting(self) -> bool:
        buf = self._buf
        if len(buf) < 2:
            return False
        if buf[0] != VERSION:
            raise self._fail("not a SOCKS5 greeting", b"")
        count = buf[1]
        if len(buf) < 2 + count:
            return False
        methods = bytes(buf[2 : 2 + count])
        del buf[: 2 + count]
        if METHOD_USERPASS not in methods:
            raise self._fail(
                "the client offered no username/password authentication",
                bytes((VERSION, NO_ACCEPTABLE)),
            )
        self._set_state("greeting")
        self._out += bytes((VERSION, METHOD_USERPASS))
        return True

    def _auth(self) -> AuthRequest | None:
        buf = self._buf
        if len(buf) < 2:
            return None
        if buf[0] != AUTH_VERSION:
            raise self._fail("malformed username/password request", bytes((AUTH_VERSION, 0x01)))
        ulen = buf[1]
        if len(buf) < 3 + ulen:
            return None
        plen = buf[2 + ulen]
        end = 3 + ulen + plen
        if len(buf) < end:
            return None
        event = AuthRequest(bytes(buf[2 : 2 + ulen]), bytes(buf[3 + ulen : end]))
        del buf[:end]
        self._set_state("auth")
        return event

    def accept_auth(self, ok: bool) -> None:
        """Answer the ``AuthRequest``; after a refusal the connection must be closed."""
        self._set_state("auth_ok" if ok else "auth_failed")
        self._out += bytes((AUTH_VERSION, 0x00 if ok else 0x01))

    def _request(self) -> ConnectRequest | None:
        buf = self._buf
        if len(buf) < 5:
            return None
        version, command, _reserved, atyp = buf[0], buf[1], buf[2], buf[3]
        if version != VERSION:
            raise self._fail("malformed request", _reply_bytes(Reply.GENERAL_FAILURE))
        if atyp == ATYP_IPV4:
            end = 4 + 4 + 2
        elif atyp == ATYP_IPV6:
            end = 4 + 16 + 2
        elif atyp == ATYP_DOMAIN:
            end = 5 + buf[4] + 2
        else:
            raise self._fail("unknown address type", _reply_bytes(Reply.ADDRESS_TYPE_NOT_SUPPORTED))
        if command != CMD_CONNECT:
            # Refused before the address is even complete: BIND and UDP ASSOCIATE never run.
            name = {0x02: "BIND", 0x03: "UDP ASSOCIATE"}.get(command, f"command {command:#04x}")
            raise self._fail(f"{name} is not supported", _reply_bytes(Reply.COMMAND_NOT_SUPPORTED))
        if len(buf) < end:
            return None
        raw, port = bytes(buf[4 : end - 2]), int.from_bytes(buf[end - 2 : end], "big")
        del buf[:end]
        if atyp == ATYP_IPV4:
            host = str(IPv4Address(raw))
        elif atyp == ATYP_IPV6:
            host = str(IPv6Address(raw))
        else:
            try:
                host = raw[1:].decode("utf-8")
            except UnicodeDecodeError:
                raise self._fail(
                    "the domain name is not UTF-8", _reply_bytes(Reply.GENERAL_FAILURE)
                ) from None
            if not host:
                raise self._fail("empty domain name", _reply_bytes(Reply.GENERAL_FAILURE))
        self._set_state("connect")
        return ConnectRequest(host, port)

    def reply(self, code: Reply) -> None:
        """Answer the ``ConnectRequest``: SUCCEEDED opens the tunnel; anything else ends the connection."""
        self._set_state("reply_ok" if code == Reply.SUCCEEDED else "reply_failed")
        self._out += _reply_bytes(code)
