"""The host side of sandbox egress: an allowlisting HTTP + SOCKS5 proxy on a unix socket.

One ``EgressProxy`` per sandbox. Its unix socket is bind-mounted into the
sandbox, where the bridge forwards the loopback proxy ports to it; nothing else
leaves the sandbox's network namespace. For every connection the proxy:

1. detects the protocol from the first byte (0x05 SOCKS5, anything else HTTP);
2. requires the sandbox's credential (Proxy-Authorization Basic / RFC 1929);
3. judges the destination by name (``NetworkRules.decide``);
4. resolves the name here, on the host, at connect time, and judges *every*
   address it got (``NetworkRules.check_addresses``);
5. dials one of those checked addresses, never the name, so there is no second
   lookup an attacker's DNS could answer differently (no rebinding window);
6. splices bytes both ways in bounded chunks, counting them;
7. writes one ``egress`` audit record and emits one ``EgressEvent``.

Absolute-form HTTP is forwarded one request per connection (see ``http.py``).
A refusal reads plainly: HTTP 403 with ``X-Inwall-Denied-Reason`` and a text
body, SOCKS reply 0x02.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import stat
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Protocol

import anyio
from anyio.abc import ByteStream, TaskGroup, TaskStatus

from inwall.audit import AuditLog
from inwall.errors import ConfigError, InvalidInput, LocalProtocolError, Unavailable
from inwall.sandbox.egress._hostaddrs import host_addresses as read_host_addresses
from inwall.sandbox.egress._rawsock import RawStream, UnixListener, connect_tcp
from inwall.sandbox.egress.addresses import IPAddress, parse_ip
from inwall.sandbox.egress.http import (
    CONNECT_ESTABLISHED,
    HttpProxyError,
    HttpRequestParser,
    ProxyRequest,
    check_basic_credential,
    denied_response,
    error_response,
    origin_request_head,
)
from inwall.sandbox.egress.rules import NetworkRules, canonical_host
from inwall.sandbox.egress.socks import (
    SOCKS4_REJECT,
    AuthRequest,
    ConnectRequest,
    Reply,
    Socks5Server,
    SocksError,
)

__all__ = [
    "EgressEvent",
    "EgressProxy",
    "ProxyStats",
    "Resolver",
    "StaticResolver",
    "SystemResolver",
]

log = logging.getLogger(__name__)

CHUNK: Final = 64 * 1024
_UNIX_PATH_MAX: Final = 107
_CLEANUP_S: Final = 5.0
_DRAIN_S: Final = 2.0
_DRAIN_BYTES: Final = 1024 * 1024

Decision = Literal["allowed", "denied", "failed"]
Protocol_ = Literal["http", "connect", "socks5", "unknown"]


class Resolver(Protocol):
    """Name resolution, injectable so tests can point public-looking names anywhere."""

    async def __call__(self, host: str, port: int) -> Sequence[IPAddress]:
        """Every address of *host*; raise OSError (e.g. ``socket.gaierror``) when there are none."""
        ...


class SystemResolver:
    """The host's resolver (getaddrinfo in a worker thread)."""

    async def __call__(self, host: str, port: int) -> Sequence[IPAddress]:
        infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        seen: dict[IPAddress, None] = {}
        for _family, _type, _proto, _canon, sockaddr in infos:
            ip = parse_ip(str(sockaddr[0]).partition("%")[0])
            if ip is not None:
                seen.setdefault(ip, None)
        return list(seen)


class StaticResolver:
    """A fixed name -> addresses table: the in-memory twin of ``SystemResolver`` for tests and benches."""

    def __init__(self, table: Mapping[str, Sequence[str]]) -> None:
        self._table: dict[str, list[IPAddress]] = {}
        for name, addresses in table.items():
            parsed = [parse_ip(a) for a in addresses]
            if any(p is None for p in parsed):
                raise ConfigError(f"StaticResolver: {name!r} has an entry that is not an IP address")
            self._table[canonical_host(name)] = [p for p in parsed if p is not None]

    async def __call__(self, host: str, port: int) -> Sequence[IPAddress]:
        await anyio.lowlevel.checkpoint()
        found = self._table.get(canonical_host(host))
        if not found:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(found)


@dataclass(frozen=True, slots=True)
class EgressEvent:
    """What one connection attempt did; the audit record carries the same fields.

    ``decision`` is ``allowed`` (connected and spliced), ``denied`` (refused by
    the rules, the credential check or as malformed) or ``failed`` (allowed, but
    resolution or the connection failed).
    """

    protocol: Protocol_
    host: str
    port: int
    decision: Decision
    reason: str
    address: str | None
    bytes_up: int
    bytes_down: int
    duration_s: float

    @property
    def allowed(self) -> bool:
        """False only when inwall refused it (policy, credential, malformed request).

        A destination the rules allowed but that could not be reached
        (``decision == "failed"``) is not a violation, so it counts as allowed.
        """
        return self.decision != "denied"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class ProxyStats:
    """Running totals, for tests, benchmarks and the worker's status page."""

    connections: int = 0
    allowed: int = 0
    denied: int = 0
    failed: int = 0
    bytes_up: int = 0
    bytes_down: int = 0


@dataclass(slots=True)
class _Attempt:
    started: float
    protocol: Protocol_ = "unknown"
    host: str = ""
    port: int = 0
    decision: Decision | None = None
    reason: str = ""
    address: str | None = None
    bytes_up: int = 0
    bytes_down: int = 0

    def settle(self, decision: Decision, reason: str) -> None:
        if self.decision is None:
            self.decision, self.reason = decision, reason


class _Refused(Exception):
    """Internal: the destination is refused (``denied``) or unreachable (``failed``)."""

    def __init__(self, decision: Decision, reason: str, status: int, reply: Reply) -> None:
        super().__init__(reason)
        self.decision = decision
        self.reason = reason
        self.status = status
        self.reply = reply


_DISCONNECTS: Final = (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError)


class EgressProxy:
    """Async context manager: listens on *socket_path* while open, one per sandbox.

    *credential* is the per-sandbox secret the bridge's clients must present
    (as the Basic password or the RFC 1929 password); it is never logged or
    audited. *socket_owner* chowns the socket (before it accepts anything) for
    a sandbox running as another uid. *host_addresses* overrides the host's
    interface addresses (read from /proc once at start). *audit_context* is
    merged into every audit record (a session id, say).

    The proxy owns a task group, so leave it the way you entered it (``async
    with`` or an ``AsyncExitStack`` at the same nesting level), not from inside
    another cancel scope: anyio closes scopes in LIFO order only. Leaving is
    already bounded: each connection's own cleanup is shielded and capped.
    """

    def __init__(
        self,
        rules: NetworkRules,
        socket_path: Path,
        *,
        credential: str,
        audit: AuditLog | None = None,
        on_event: Callable[[EgressEvent], None] | None = None,
        resolver: Resolver | None = None,
        connect_timeout_s: float = 10.0,
        header_timeout_s: float = 30.0,
        max_connections: int = 256,
        socket_mode: int = 0o600,
        socket_owner: tuple[int, int] | None = None,
        host_addresses: Collection[IPAddress] | None = None,
        audit_context: Mapping[str, str] | None = None,
    ) -> None:
        if not credential:
            raise ConfigError("EgressProxy needs a non-empty credential")
        if len(os.fsencode(socket_path)) > _UNIX_PATH_MAX:
            raise ConfigError(f"unix socket path is longer than {_UNIX_PATH_MAX} bytes: {socket_path}")
        self.rules = rules
        self.socket_path = Path(socket_path)
        self.credential = credential
        self.stats = ProxyStats()
        self._audit = audit
        self._on_event = on_event
        self._resolver: Resolver = resolver or SystemResolver()
        self._connect_timeout_s = connect_timeout_s
        self._header_timeout_s = header_timeout_s
        self._max_connections = max_connections
        self._socket_mode = socket_mode
        self._socket_owner = socket_owner
        self._host_addresses = frozenset(host_addresses) if host_addresses is not None else None
        self._audit_context = dict(audit_context or {})
        self._active = 0
        self._stack: AsyncExitStack | None = None
        self._tg: TaskGroup | None = None

    def __repr__(self) -> str:  # the credential stays out of reprs and tracebacks
        return f"EgressProxy(socket_path={str(self.socket_path)!r})"

    async def __aenter__(self) -> EgressProxy:
        if self._stack is not None:
            raise LocalProtocolError("EgressProxy is already running")
        if self._host_addresses is None:
            self._host_addresses = await anyio.to_thread.run_sync(read_host_addresses)
        listener = await self._listen()
        async with AsyncExitStack() as stack:
            stack.callback(self._unlink)
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            await self._tg.start(self._accept_loop, listener)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        stack, self._stack = self._stack, None
        if stack is None:
            return None
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        return await stack.__aexit__(exc_type, exc, tb)

    def _unlink(self) -> None:
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(os.lstat(self.socket_path).st_mode):
                os.unlink(self.socket_path)

    async def _listen(self) -> UnixListener:
        path = self.socket_path
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise Unavailable(f"cannot use {path} for the egress socket: {exc.strerror}") from exc
        else:
            if not stat.S_ISSOCK(st.st_mode):
                raise ConfigError(f"{path} exists and is not a socket; refusing to replace it")
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # Permissions are set before listen(): until then a connect() is refused, so no
            # client ever reaches the socket while it still has the umask's mode.
            sock.bind(os.fspath(path))
            os.chmod(path, self._socket_mode)
            if self._socket_owner is not None:
                os.chown(path, *self._socket_owner)
            sock.listen(512)
            return UnixListener(sock)
        except OSError as exc:
            sock.close()
            raise Unavailable(f"cannot listen on {path}: {exc.strerror or exc}") from exc

    async def _accept_loop(self, listener: UnixListener, *, task_status: TaskStatus[None]) -> None:
        async with listener:
            task_status.started()
            while True:
                try:
                    client = await listener.accept()
                except OSError as exc:  # EMFILE and friends: back off instead of spinning
                    log.warning("egress proxy accept failed: %s", exc)
                    await anyio.sleep(0.05)
                    continue
                if self._active >= self._max_connections:
                    await anyio.aclose_forcefully(client)
                    continue
                self._active += 1
                assert self._tg is not None
                self._tg.start_soon(self._serve_connection, client)

    async def _serve_connection(self, client: RawStream) -> None:
        attempt = _Attempt(started=time.monotonic())
        try:
            async with client:
                await self._handle(client, attempt)
        except _DISCONNECTS:
            attempt.settle("failed", "the connection broke")
        except Exception:  # one connection's bug must not cut off the whole sandbox
            log.exception("egress proxy connection handler failed")
            attempt.settle("failed", "internal proxy error")
        finally:
            self._active -= 1
            with anyio.CancelScope(shield=True), anyio.move_on_after(_CLEANUP_S):
                await self._record(attempt)

    async def _handle(self, client: RawStream, attempt: _Attempt) -> None:
        first = b""
        with anyio.move_on_after(self._header_timeout_s):
            try:
                first = await client.receive(CHUNK)
            except anyio.EndOfStream:
                return
        if not first:
            return
        if first[0] == 0x05:
            attempt.protocol = "socks5"
            await self._socks(client, first, attempt)
        elif first[0] == 0x04:
            attempt.protocol = "socks5"
            attempt.settle("denied", "SOCKS4 is not supported; use SOCKS5 with the sandbox credential")
            await self._refuse(client, SOCKS4_REJECT)
        else:
            attempt.protocol = "http"
            await self._http(client, first, attempt)

    async def _refuse(self, client: RawStream, payload: bytes) -> None:
        """Send the refusal, then let the client finish talking before we close.

        Closing a socket with unread input resets the connection, and a reset can
        destroy the response before the client reads it; so half-close, and drain
        for a bounded time and volume.
        """
        if payload:
            await client.send(payload)
        try:
            await client.send_eof()
            drained = 0
            with anyio.move_on_after(_DRAIN_S):
                while drained < _DRAIN_BYTES:
                    drained += len(await client.receive(CHUNK))
        except _DISCONNECTS:
            pass

    # --- HTTP -------------------------------------------------------------------------------

    async def _read_head(self, client: RawStream, first: bytes) -> tuple[ProxyRequest, bytes] | None:
        parser = HttpRequestParser()
        request = parser.feed(first)
        with anyio.move_on_after(self._header_timeout_s):
            while request is None:
                request = parser.feed(await client.receive(CHUNK))
        if request is None:
            return None
        return request, parser.remainder

    async def _http(self, client: RawStream, first: bytes, attempt: _Attempt) -> None:
        try:
            parsed = await self._read_head(client, first)
        except HttpProxyError as exc:
            attempt.settle("denied", f"malformed request: {exc}")
            await self._refuse(client, exc.response)
            return
        except anyio.EndOfStream:
            attempt.settle("denied", "malformed request: the connection closed inside the request head")
            return
        if parsed is None:
            attempt.settle("denied", "malformed request: the request head did not arrive in time")
            await self._refuse(
                client, error_response(408, "inwall sandbox: the request head did not arrive in time")
            )
            return
        request, remainder = parsed
        attempt.protocol = "connect" if request.form == "authority" else "http"
        attempt.host, attempt.port = request.host, request.port
        if not check_basic_credential(request.header("proxy-authorization"), self.credential):
            attempt.settle("denied", "missing or wrong proxy credential")
            await self._refuse(
                client,
                error_response(
                    407,
                    "inwall sandbox: the proxy credential is missing or wrong; use the proxy URL from "
                    "HTTP_PROXY / HTTPS_PROXY, which carries it",
                    headers=[("Proxy-Authenticate", 'Basic realm="inwall sandbox"')],
                ),
            )
            return
        try:
            upstream = await self._open(attempt)
        except _Refused as refused:
            attempt.settle(refused.decision, refused.reason)
            if refused.decision == "denied":
                await self._refuse(client, denied_response(request.host, request.port, refused.reason))
            else:
                await self._refuse(
                    client, error_response(refused.status, f"inwall sandbox: {refused.reason}")
                )
            return
        async with upstream:
            if request.form == "authority":
                await client.send(CONNECT_ESTABLISHED)
                head = b""
            else:
                head = origin_request_head(request)
            if head or remainder:
                await upstream.send(head + remainder)
                attempt.bytes_up += len(head) + len(remainder)
            await self._splice(client, upstream, attempt)

    # --- SOCKS5 -----------------------------------------------------------------------------

    async def _socks(self, client: RawStream, first: bytes, attempt: _Attempt) -> None:
        machine = Socks5Server()
        machine.receive_data(first)
        try:
            with anyio.fail_after(self._header_timeout_s):
                request = await self._socks_handshake(client, machine, attempt)
        except SocksError as exc:
            attempt.settle("denied", f"refused SOCKS request: {exc}")
            await self._refuse(client, exc.reply)
            return
        except TimeoutError:
            attempt.settle("denied", "malformed request: the SOCKS handshake did not finish in time")
            return
        except anyio.EndOfStream:
            attempt.settle("denied", "malformed request: the connection closed inside the SOCKS handshake")
            return
        if request is None:
            return
        attempt.host, attempt.port = request.host, request.port
        try:
            attempt.host = canonical_host(request.host)
            upstream = await self._open(attempt)
        except InvalidInput as exc:
            attempt.settle("denied", f"not a valid host name ({exc})")
            machine.reply(Reply.NOT_ALLOWED)
            await self._refuse(client, machine.data_to_send())
            return
        except _Refused as refused:
            attempt.settle(refused.decision, refused.reason)
            machine.reply(refused.reply)
            await self._refuse(client, machine.data_to_send())
            return
        async with upstream:
            machine.reply(Reply.SUCCEEDED)
            await client.send(machine.data_to_send())
            remainder = machine.remainder
            if remainder:
                await upstream.send(remainder)
                attempt.bytes_up += len(remainder)
            await self._splice(client, upstream, attempt)

    async def _socks_handshake(
        self, client: RawStream, machine: Socks5Server, attempt: _Attempt
    ) -> ConnectRequest | None:
        while True:
            event = machine.next_event()
            if isinstance(event, AuthRequest):
                ok = event.matches(self.credential)
                machine.accept_auth(ok)
                if not ok:
                    attempt.settle("denied", "missing or wrong proxy credential")
                    await self._refuse(client, machine.data_to_send())
                    return None
                await client.send(machine.data_to_send())
                continue
            if isinstance(event, ConnectRequest):
                return event
            out = machine.data_to_send()
            if out:
                await client.send(out)
            machine.receive_data(await client.receive(CHUNK))

    # --- the checked dial -------------------------------------------------------------------

    async def _open(self, attempt: _Attempt) -> ByteStream:
        host, port = attempt.host, attempt.port
        decision = self.rules.decide(host, port)
        if not decision.allowed:
            raise _Refused("denied", decision.reason, 403, Reply.NOT_ALLOWED)
        literal = parse_ip(host)
        if literal is not None:
            addresses: Sequence[IPAddress] = [literal]
        else:
            try:
                with anyio.fail_after(self._connect_timeout_s):
                    addresses = await self._resolver(host, port)
            except (OSError, TimeoutError) as exc:
                raise _Refused("failed", f"could not resolve {host}", 502, Reply.HOST_UNREACHABLE) from exc
        decision = self.rules.check_addresses(
            host, port, addresses, host_addresses=self._host_addresses or frozenset()
        )
        if not decision.allowed:
            raise _Refused("denied", decision.reason, 403, Reply.NOT_ALLOWED)
        last: str = "no address to try"
        try:
            with anyio.fail_after(self._connect_timeout_s):
                for address in dict.fromkeys(addresses):
                    try:
                        stream = await connect_tcp(address, port)
                    except OSError as exc:
                        last = exc.strerror or type(exc).__name__
                        continue
                    attempt.address = str(address)
                    return stream
        except TimeoutError:
            raise _Refused(
                "failed", f"connecting to {host}:{port} timed out", 504, Reply.TTL_EXPIRED
            ) from None
        reply = Reply.CONNECTION_REFUSED if "refused" in last.lower() else Reply.HOST_UNREACHABLE
        raise _Refused("failed", f"could not connect to {host}:{port}: {last}", 502, reply)

    async def _splice(self, client: ByteStream, upstream: ByteStream, attempt: _Attempt) -> None:
        attempt.settle("allowed", "allowed")

        async def pump(src: ByteStream, dst: ByteStream, up: bool) -> None:
            try:
                while True:
                    try:
                        data = await src.receive(CHUNK)
                    except anyio.EndOfStream:
                        break
                    await dst.send(data)
                    if up:
                        attempt.bytes_up += len(data)
                    else:
                        attempt.bytes_down += len(data)
                try:
                    await dst.send_eof()
                except _DISCONNECTS:
                    tg.cancel_scope.cancel()
            except _DISCONNECTS:
                tg.cancel_scope.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(pump, client, upstream, True)
            tg.start_soon(pump, upstream, client, False)

    # --- records ----------------------------------------------------------------------------

    async def _record(self, attempt: _Attempt) -> None:
        if attempt.decision is None:
            if attempt.protocol == "unknown":
                return  # connected and sent nothing: no destination was attempted
            attempt.settle("failed", "the connection ended before a decision")
        assert attempt.decision is not None
        event = EgressEvent(
            protocol=attempt.protocol,
            host=attempt.host,
            port=attempt.port,
            decision=attempt.decision,
            reason=attempt.reason,
            address=attempt.address,
            bytes_up=attempt.bytes_up,
            bytes_down=attempt.bytes_down,
            duration_s=round(time.monotonic() - attempt.started, 6),
        )
        stats = self.stats
        stats.connections += 1
        stats.bytes_up += event.bytes_up
        stats.bytes_down += event.bytes_down
        if event.decision == "allowed":
            stats.allowed += 1
        elif event.decision == "denied":
            stats.denied += 1
        else:
            stats.failed += 1
        if self._audit is not None:
            fields = {**self._audit_context, **event.to_dict()}
            await anyio.to_thread.run_sync(
                functools.partial(self._audit.append, "egress", **fields), abandon_on_cancel=True
            )
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:  # a buggy observer must not take the proxy down
                log.exception("egress on_event callback failed")
