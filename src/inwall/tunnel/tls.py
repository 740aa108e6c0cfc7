"""Inner TLS as a sans-I/O core: ciphertext in, plaintext out, over ``ssl.MemoryBIO``.

The inner TLS runs end to end between the edge (client) and the gateway (server)
inside the WebSocket link, so anything that terminates the outer TLS in front of the
server sees only ciphertext. Using memory BIOs keeps this layer free of sockets: the
anyio driver moves bytes, this object only transforms them.

The edge trusts nothing but the CAs registered on the tunnel (never the system store)
and checks the certificate against the tunnel's domain.
"""

from __future__ import annotations

import ssl
from typing import cast

from inwall.tunnel.errors import GatewayCertificateRejected, TunnelProtocolError

__all__ = ["ALPN_PROTOCOL", "TLSEndpoint", "edge_client_context", "gateway_server_context"]

ALPN_PROTOCOL = "h2"
_READ_CHUNK = 256 * 1024
_CERTIFICATE_ALERTS = frozenset(
    {
        "TLSV1_ALERT_UNKNOWN_CA",
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "SSLV3_ALERT_CERTIFICATE_EXPIRED",
        "SSLV3_ALERT_CERTIFICATE_REVOKED",
        "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
    }
)


def edge_client_context(ca_pems: list[str]) -> ssl.SSLContext:
    """The edge's TLS client context: trust exactly ``ca_pems``, require TLS 1.3, check the hostname.

    Raises ``ValueError`` when ``ca_pems`` is empty or holds no certificate: an empty
    trust store must never silently fall back to the system CAs.
    """
    if not ca_pems:
        raise ValueError("at least one CA certificate is required")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = True
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    try:
        context.load_verify_locations(cadata="\n".join(ca_pems))
    except ssl.SSLError as exc:
        raise ValueError(f"a registered CA certificate could not be loaded: {exc.reason or exc}") from exc
    if not context.get_ca_certs():
        raise ValueError("no CA certificate could be loaded")
    context.set_alpn_protocols([ALPN_PROTOCOL])
    return context


def gateway_server_context(
    certfile: str, keyfile: str | None = None, *, password: str | None = None
) -> ssl.SSLContext:
    """The gateway's TLS server context for the inner TLS (TLS 1.3, ALPN h2).

    ``certfile`` may hold the server certificate followed by intermediates.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(certfile, keyfile, password=password)
    context.set_alpn_protocols([ALPN_PROTOCOL])
    return context


class TLSEndpoint:
    """One side of the inner TLS session, driven by bytes.

    Feed the peer's ciphertext with :meth:`receive_ciphertext`, drive the handshake with
    :meth:`do_handshake`, then move plaintext with :meth:`read` / :meth:`write`; whatever
    must go to the peer is in :meth:`ciphertext_to_send`. A certificate the peer cannot
    prove raises :class:`GatewayCertificateRejected`; any other TLS failure raises
    :class:`TunnelProtocolError` (close that connection).
    """

    def __init__(
        self, context: ssl.SSLContext, *, server_side: bool, server_hostname: str | None = None
    ) -> None:
        if not server_side and not server_hostname:
            raise ValueError("a TLS client needs server_hostname (the tunnel's domain)")
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._obj = context.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side, server_hostname=server_hostname
        )
        self.server_side = server_side
        self.handshake_complete = False
        self.peer_closed = False

    def receive_ciphertext(self, data: bytes) -> None:
        self._incoming.write(data)

    def do_handshake(self) -> bool:
        """Advance the handshake; True once it is complete (then call :meth:`read` for early data)."""
        if self.handshake_complete:
            return True
        try:
            self._obj.do_handshake()
        except ssl.SSLWantReadError:
            return False
        except ssl.SSLCertVerificationError as exc:
            raise GatewayCertificateRejected(
                f"the gateway's certificate is not trusted: {exc.verify_message or exc.reason}"
            ) from exc
        except ssl.SSLError as exc:
            if self.server_side and exc.reason in _CERTIFICATE_ALERTS:
                # The gateway's view of the same refusal: the edge rejected our certificate.
                raise GatewayCertificateRejected(
                    f"the edge does not trust this gateway's certificate ({exc.reason}): register the "
                    "CA that signed it on the tunnel, and make sure it names the tunnel's domain"
                ) from exc
            raise TunnelProtocolError(f"inner TLS handshake failed: {exc.reason or exc}") from exc
        alpn = self._obj.selected_alpn_protocol()
        if alpn not in (None, ALPN_PROTOCOL):
            raise TunnelProtocolError(f"inner TLS negotiated {alpn!r}, expected {ALPN_PROTOCOL!r}")
        self.handshake_complete = True
        return True

    def read(self) -> bytes | bytearray:
        """All plaintext decrypted so far (empty when none); sets :attr:`peer_closed` on close_notify.

        Records are decrypted straight into one buffer sized from the ciphertext waiting
        (plaintext is never longer), so a bulk transfer costs no per-record allocation
        and no join.
        """
        buffer = bytearray(self._incoming.pending + self._obj.pending() + _READ_CHUNK)
        view = memoryview(buffer)
        filled = 0
        while True:
            if filled == len(buffer):
                buffer.extend(bytes(_READ_CHUNK))
                view.release()
                view = memoryview(buffer)
            try:
                # With a buffer, read() returns a count; typeshed only knows the bytes form.
                got = cast(int, self._obj.read(len(buffer) - filled, view[filled:]))
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.peer_closed = True
                break
            except ssl.SSLError as exc:
                raise TunnelProtocolError(f"inner TLS record rejected: {exc.reason or exc}") from exc
            if not got:
                self.peer_closed = True
                break
            filled += got
        view.release()
        if not filled:
            return b""
        del buffer[filled:]
        return buffer

    def write(self, data: bytes) -> None:
        """Encrypt ``data``; the records are then in :meth:`ciphertext_to_send`."""
        if not data:
            return
        view = memoryview(data)
        while view:
            try:
                written = self._obj.write(view)
            except ssl.SSLError as exc:
                raise TunnelProtocolError(f"inner TLS write failed: {exc.reason or exc}") from exc
            view = view[written:]

    def ciphertext_to_send(self) -> bytes:
        return self._outgoing.read()

    @property
    def pending_ciphertext(self) -> int:
        return self._outgoing.pending
