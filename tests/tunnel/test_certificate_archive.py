"""Archiving a tunnel's CA certificate through the API ends the connections that CA let in.

The control plane is the real server (uvicorn on loopback, the SDK's tunnels API); the gateway
end is a real :class:`TunnelConnector` presenting a certificate signed by the registered CA.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import anyio.abc
import pytest

from inwall.errors import InwallError
from inwall.gateway.certs import create_certificates
from inwall.gateway.program import tunnel_url
from inwall.tunnel import TunnelClosed, TunnelConnector, TunnelRefused, gateway_server_context
from tests.helpers import fast_settings, running_server
from tests.tunnel.helpers import ProbeApp

pytestmark = pytest.mark.anyio


async def test_archiving_the_ca_closes_connections_it_verified(tmp_path: Path) -> None:
    async with running_server(fast_settings(tmp_path / "data")) as server, server.client() as client:
        tunnel = await client.beta.tunnels.create(display_name="crm-network")
        certs = create_certificates(tunnel.domain, tmp_path / "certs")
        cert = await client.beta.tunnels.certificates.create(
            tunnel.id, ca_certificate_pem=certs.ca_cert.read_text()
        )
        token = (await client.beta.tunnels.reveal_token(tunnel.id)).tunnel_token
        url = tunnel_url(server.base_url)
        server_ssl = gateway_server_context(str(certs.server_cert), str(certs.server_key))
        connector = TunnelConnector(url, token, ProbeApp(), server_ssl)
        ended: list[InwallError] = []

        async def run(*, task_status: anyio.abc.TaskStatus[None]) -> None:
            try:
                await connector.run(task_status=task_status)
            except InwallError as exc:
                ended.append(exc)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                await tg.start(run)
                assert connector.connected
                archived = await client.beta.tunnels.certificates.archive(cert.id, tunnel_id=tunnel.id)
                assert archived.archived_at is not None
                # The task group waits for the connection to end: the edge closed it.
        assert len(ended) == 1 and isinstance(ended[0], TunnelClosed)
        # And the archived CA lets nothing back in.
        with anyio.fail_after(10), pytest.raises(TunnelRefused, match="no registered CA"):
            await TunnelConnector(url, token, ProbeApp(), server_ssl).run()
        # Archiving again changes nothing and closes nothing.
        again = await client.beta.tunnels.certificates.archive(cert.id, tunnel_id=tunnel.id)
        assert again.archived_at == archived.archived_at
