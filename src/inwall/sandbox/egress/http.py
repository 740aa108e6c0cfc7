"""Sans-I/O HTTP/1.1 proxy requests: parse the head a sandboxed client sends, write our replies.

Only the request head is parsed; bodies and tunnels are spliced as bytes by the
driver. Two request forms are accepted: ``CONNECT host:port`` (a tunnel) and
the absolute form ``METHOD http://host[:port]/path`` (plain HTTP forwarding).
Everything the peer can get wrong raises ``HttpProxyError`` (a
``RemoteProtocolError``) carrying the status and the complete response to send
before closing, so the driver never has to improvise an error page.

Forwarding is one request per connection: the rewritten request tells the
origin ``Connection: close`` and the driver splices until either side closes.
That keeps every request on a connection pinned to the destination that was
checked, with no second request to re-check.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, Literal

from inwall.errors import InvalidInput, LocalProtocolError, RemoteProtocolError
from inwall.sandbox.egress.rules import canonical_host, format_authority

__all__ = [
    "CONNECT_ESTABLISHED",
    "HttpProxyError",
    "HttpRequestParser",
    "ProxyRequest",
    "check_basic_credential",
    "denied_response",
    "error_response",
    "origin_request_head",
]

MAX_HEAD: Final = 64 * 1024
MAX_LINE: Final = 8 * 1024
MAX_HEADERS: Final = 100

CONNECT_ESTABLISHED: Final = b"HTTP/1.1 200 Connection established\r\n\r\n"

_REASONS: Final = {
    400: "Bad Request",
    403: "Forbidden",
    405: "Method Not Allowed",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION: Final = re.compile(r"HTTP/1\.[01]")
_ANY_VERSION: Final = re.compile(r"HTTP/[0-9]\.[0-9]")
_TARGET_CHARS: Final = re.compile(r"[\x21-\x7e]+")
_FIELD_VALUE: Final = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
_PORT: Final = re.compile(r"[0-9]{1,5}")
_DIGITS: Final = re.compile(r"[0-9]{1,18}")
_HOP_BY_HOP: Final = frozenset({"connection", "keep-alive", "proxy-connection", "te", "upgrade", "host"})
_PRINTABLE: Final = re.compile(r"[^\x20-\x7e]")


def _sanitize(text: str, limit: int = 300) -> str:
    """Plain visible ASCII, bounded: safe in a header line and in a log."""
    text = _PRINTABLE.sub("?", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def error_response(status: int, message: str, *, headers: Iterable[tuple[str, str]] = ()) -> bytes:
    """A complete ``Connection: close`` response with a plain-text body the model can read."""
    body = (_sanitize(message, 2000) + "\n").encode("ascii")
    lines = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
        "Content-Type: text/plain; charset=utf-8",
        *(f"{name}: {_sanitize(value)}" for name, value in headers),
        f"Content-Length: {len(body)}",
        "Connection: close",
        "",
        "",
    ]
    return "\r\n".join(lines).encode("ascii") + body


def denied_response(host: str, port: int, reason: str) -> bytes:
    """The 403 for a destination the rules refuse; the reason is both in a header and the body."""
    dest = format_authority(host, port) if host else "(unknown)"
    return error_response(
        403,
        f"inwall sandbox: egress to {dest} denied: {reason}",
        headers=[("X-Inwall-Denied-Reason", reason)],
    )


class HttpProxyError(RemoteProtocolError):
    """The client sent something we will not serve; ``response`` is what to send before closing."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.response = error_response(status, f"inwall sandbox: {message}")


@dataclass(frozen=True, slots=True)
class ProxyRequest:
    """One parsed proxy request head. ``host`` is canonical; ``path`` is empty for CONNECT."""

    method: str
    form: Literal["authority", "absolute"]
    host: str
    port: int
    path: str
    version: str
    headers: tuple[tuple[str, str], ...] = field(repr=False)

    def header(self, name: str) -> str | None:
        """The first value of header *name* (case-insensitive), or None."""
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None

    def header_values(self, name: str) -> list[str]:
        lname = name.lower()
        return [value for key, value in self.headers if key.lower() == lname]


def check_basic_credential(header_value: str | None, credential: str) -> bool:
    """Whether a ``Proxy-Authorization: Basic`` value carries *credential* as its password.

    The username is not checked: the secret is the password, and clients differ
    in what they put before the colon. Compared in constant time.
    """
    if header_value is None or not credential:
        return False
    scheme, _, token = header_value.strip().partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    _user, sep, password = decoded.partition(b":")
    return bool(sep) and hmac.compare_digest(password, credential.encode())


def _parse_port(text: str) -> int:
    if not _PORT.fullmatch(text) or not 1 <= int(text) <= 65535:
        raise HttpProxyError(400, "the destination port must be a number from 1 to 65535")
    return int(text)


def _split_authority(authority: str, default_port: int | None) -> tuple[str, int]:
    if "@" in authority:
        raise HttpProxyError(400, "credentials in the request target are not accepted")
    if authority.startswith("["):
        close = authority.find("]")
        if close == -1:
            raise HttpProxyError(400, "an IPv6 host is missing its closing ']'")
        host_text, rest = authority[: close + 1], authority[close + 1 :]
        if rest and not rest.startswith(":"):
            raise HttpProxyError(400, "unexpected text after the IPv6 host")
        has_port, port_text = bool(rest), rest[1:]
    else:
        host_text, sep, port_text = authority.partition(":")
        has_port = bool(sep)
    if has_port:
        port = _parse_port(port_text)
    elif default_port is not None:
        port = default_port
    else:
        raise HttpProxyError(400, "CONNECT needs host:port")
    try:
        return canonical_host(host_text), port
    except InvalidInput as exc:
        raise HttpProxyError(400, f"invalid destination host: {exc}") from exc


def _parse_target(method: str, target: str) -> tuple[Literal["authority", "absolute"], str, int, str]:
    if method == "CONNECT":
        host, port = _split_authority(target, None)
        return "authority", host, port, ""
    scheme, sep, rest = target.partition("://")
    if not sep:
        raise HttpProxyError(
            400,
            "this is the sandbox's egress proxy: send requests in absolute form (http://host/path) "
            "or use CONNECT (set HTTP_PROXY / HTTPS_PROXY)",
        )
    if scheme.lower() != "http":
        raise HttpProxyError(501, f"scheme {scheme.lower()!r} is not forwarded; use CONNECT for https")
    end = len(rest)
    for stop in "/?#":
        idx = rest.find(stop)
        if idx != -1:
            end = min(end, idx)
    authority, path = rest[:end], rest[end:]
    if "#" in path:
        raise HttpProxyError(400, "a fragment is not allowed in the request target")
    if path.startswith("?"):
        path = "/" + path
    host, port = _split_authority(authority, 80)
    return "absolute", host, port, path or "/"


class HttpRequestParser:
    """Accumulate bytes until one request head is complete, bounded in every dimension.

    ``feed`` returns the request once the head is in; bytes that arrived after
    it (a pipelined TLS ClientHello, the start of a body) are in ``remainder``.
    """

    def __init__(
        self, *, max_head: int = MAX_HEAD, max_line: int = MAX_LINE, max_headers: int = MAX_HEADERS
    ) -> None:
        self._buf = bytearray()
        self._max_head = max_head
        self._max_line = max_line
        self._max_headers = max_headers
        self._done = False
        self.remainder = b""

    def feed(self, data: bytes) -> ProxyRequest | None:
        if self._done:
            raise LocalProtocolError("the request head was already parsed")
        scan_from = max(0, len(self._buf) - 3)
        self._buf += data
        end, sep_len = self._find_end(scan_from)
        if end == -1:
            if len(self._buf) > self._max_head:
                raise HttpProxyError(431, "the request head is too large")
            self._check_first_line_length()
            return None
        if end > self._max_head:
            raise HttpProxyError(431, "the request head is too large")
        head = bytes(self._buf[:end])
        self.remainder = bytes(self._buf[end + sep_len :])
        self._buf.clear()
        self._done = True
        return self._parse_head(head)

    def _find_end(self, start: int) -> tuple[int, int]:
        crlf = self._buf.find(b"\r\n\r\n", start)
        lf = self._buf.find(b"\n\n", start)
        if crlf != -1 and (lf == -1 or crlf < lf):
            return crlf, 4
        if lf != -1:
            return lf, 2
        return -1, 0

    def _check_first_line_length(self) -> None:
        nl = self._buf.find(b"\n")
        if (nl == -1 and len(self._buf) > self._max_line) or nl > self._max_line:
            raise HttpProxyError(414, "the request line is too long")

    def _parse_head(self, head: bytes) -> ProxyRequest:
        text = head.decode("latin-1")
        lines = [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
        while lines and lines[0] == "":  # RFC 9112 2.2: ignore empty lines before the request line
            lines.pop(0)
        if not lines:
            raise HttpProxyError(400, "empty request")
        request_line, header_lines = lines[0], lines[1:]
        if len(request_line) > self._max_line:
            raise HttpProxyError(414, "the request line is too long")
        parts = request_line.split(" ")
        if len(parts) != 3:
            raise HttpProxyError(400, "malformed request line")
        method, target, version = parts
        if not _TOKEN.fullmatch(method):
            raise HttpProxyError(400, "malformed method")
        if not _VERSION.fullmatch(version):
            if _ANY_VERSION.fullmatch(version):
                raise HttpProxyError(505, f"{version} is not supported; use HTTP/1.1")
            raise HttpProxyError(400, "malformed HTTP version")
        if not _TARGET_CHARS.fullmatch(target):
            raise HttpProxyError(400, "malformed request target")
        if len(header_lines) > self._max_headers:
            raise HttpProxyError(431, "too many header fields")
        headers: list[tuple[str, str]] = []
        for line in header_lines:
            if len(line) > self._max_line:
                raise HttpProxyError(431, "a header field is too long")
            if line[:1] in (" ", "\t"):
                raise HttpProxyError(400, "obsolete line folding is not accepted")
            name, sep, value = line.partition(":")
            if not sep or not _TOKEN.fullmatch(name):
                raise HttpProxyError(400, "malformed header field")
            value = value.strip(" \t")
            if not _FIELD_VALUE.fullmatch(value):
                raise HttpProxyError(400, "a header value contains a control character")
            headers.append((name, value))
        form, host, port, path = _parse_target(method, target)
        request = ProxyRequest(method, form, host, port, path, version, tuple(headers))
        _check_framing(request)
        return request


def _check_framing(request: ProxyRequest) -> None:
    """Refuse ambiguous body framing: we splice bodies verbatim, so the origin must read them as we do."""
    lengths = request.header_values("content-length")
    codings = request.header_values("transfer-encoding")
    if lengths and codings:
        raise HttpProxyError(400, "both Content-Length and Transfer-Encoding are present")
    if lengths:
        values = {v.strip() for joined in lengths for v in joined.split(",")}
        if len(values) != 1 or not _DIGITS.fullmatch(values.pop()):
            raise HttpProxyError(400, "malformed Content-Length")
    if codings:
        if request.version == "HTTP/1.0":
            raise HttpProxyError(400, "Transfer-Encoding is not allowed in HTTP/1.0")
        final = ",".join(codings).split(",")[-1].strip().lower()
        if final != "chunked":
            raise HttpProxyError(400, "the final transfer coding must be chunked")


def origin_request_head(request: ProxyRequest) -> bytes:
    """The request as the origin should see it: origin-form target, our Host, no proxy or hop-by-hop fields.

    ``Host`` is rewritten from the checked target so a client cannot ask an
    allowed origin to serve a different virtual host than the one the rules
    judged. ``Connection: close`` makes this the connection's only request.
    """
    if request.form != "absolute":
        raise LocalProtocolError("only absolute-form requests are forwarded as HTTP")
    named = {
        token.strip().lower()
        for value in request.header_values("connection")
        for token in value.split(",")
        if token.strip()
    }
    default = request.port == 80
    host = f"[{request.host}]" if ":" in request.host else request.host
    authority = host if default else f"{host}:{request.port}"
    lines = [f"{request.method} {request.path} {request.version}", f"Host: {authority}"]
    for name, value in request.headers:
        lname = name.lower()
        if lname in _HOP_BY_HOP or lname in named or lname.startswith("proxy-"):
            continue
        lines.append(f"{name}: {value}")
    lines.extend(("Connection: close", "", ""))
    return "\r\n".join(lines).encode("latin-1")
