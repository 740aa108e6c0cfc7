"""Egress end to end: commands in a real bubblewrap sandbox, through the bridge, to origins on the host.

The sandbox has its own network namespace with nothing but loopback, the
bridge on 127.0.0.1:3128 / :1080, and HTTP_PROXY & co. carrying the sandbox's
credential. Origins run on the host's 127.0.0.1, which the sandbox can only
reach through the host proxy. Every refusal test also proves the sandbox ran
(a marker file) and that the allowed path worked in the same command.

SB's runtime sets ``NO_PROXY=localhost,127.0.0.1,::1`` (the sandbox's own
loopback is local), so the commands here pass ``--noproxy ''`` / clear
``NO_PROXY`` to send ``localhost`` through the proxy on purpose.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from inwall.sandbox.egress._hostaddrs import host_addresses
from inwall.sandbox.policy import SandboxSettings
from inwall.sandbox.runner import RunResult, Sandbox
from inwall.sandbox.violations import EgressDenied

from .helpers import TlsMaterial, http_origin, tls_origin

pytestmark = [
    pytest.mark.sandbox,
    pytest.mark.anyio,
    pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed"),
]

MARK = "echo ran > ran; "
CURL = "curl -sS --max-time 10 --noproxy ''"
CODE = "code=%{http_code}\\n"


def settings(*allowed: str, denied: tuple[str, ...] = ()) -> SandboxSettings:
    return SandboxSettings.from_dict(
        {"network": {"allowedDomains": list(allowed), "deniedDomains": list(denied)}}
    )


async def sh(ws: Path, script: str, config: SandboxSettings) -> RunResult:
    async with Sandbox(config, ws) as sb:
        return await sb.run(["/bin/sh", "-c", MARK + script], timeout_s=60)


def ran(ws: Path) -> bool:
    return (ws / "ran").read_text().strip() == "ran"


def out(result: RunResult) -> str:
    return result.stdout.decode(errors="replace")


async def test_allowlisted_http_works_and_other_hosts_get_403(workspace: Path) -> None:
    async with http_origin() as origin, http_origin() as other:
        r = await sh(
            workspace,
            f"{CURL} http://localhost:{origin.port}/ok; echo rc=$?; "
            f"{CURL} -w 'code=%{{http_code}}\\n' http://localhost:{other.port}/; "
            f"{CURL} -w 'code=%{{http_code}}\\n' http://example.com/",
            settings(f"localhost:{origin.port}"),
        )
    assert ran(workspace)
    text = out(r)
    assert "hello from origin\nrc=0" in text  # positive control
    assert f"egress to localhost:{other.port} denied" in text
    assert "egress to example.com:80 denied: example.com:80 is not in network.allowedDomains" in text
    assert text.count("code=403") == 2
    assert origin.connections == 1 and other.connections == 0
    denied = [v for v in r.violations if isinstance(v, EgressDenied)]
    assert {(v.host, v.port) for v in denied} == {("localhost", other.port), ("example.com", 80)}


async def test_allowlisted_https_through_connect(workspace: Path, tls_material: TlsMaterial) -> None:
    shutil.copy(tls_material.cert_pem, workspace / "ca.pem")
    async with tls_origin(tls_material) as origin:
        r = await sh(
            workspace,
            f"{CURL} --cacert ca.pem https://localhost:{origin.port}/; echo rc=$?; "
            f"{CURL} -k https://example.com/; echo rc=$?",
            settings(f"localhost:{origin.port}"),
        )
    assert ran(workspace)
    text, err = out(r), r.stderr.decode()
    assert "hello from origin\nrc=0" in text  # verified TLS, end to end through the tunnel
    assert "rc=56" in text and "403" in err  # CONNECT refused
    assert origin.connections == 1


async def test_socks5_and_python_clients(workspace: Path, tls_material: TlsMaterial) -> None:
    shutil.copy(tls_material.cert_pem, workspace / "ca.pem")
    code = """
import os, ssl, urllib.request
def get(url, **kw):
    print(urllib.request.urlopen(url, **kw).read().decode(), end="")
get("http://localhost:%s/py" % os.environ["P"])
get("https://localhost:%s/" % os.environ["T"], context=ssl.create_default_context(cafile="ca.pem"))
try:
    urllib.request.urlopen("http://example.org/")
except urllib.error.HTTPError as e:
    print("py-denied", e.code, e.headers["X-Inwall-Denied-Reason"])
"""
    (workspace / "client.py").write_text(code)
    async with http_origin() as origin, tls_origin(tls_material) as tls:
        r = await sh(
            workspace,
            f'{CURL} -x "$ALL_PROXY" http://localhost:{origin.port}/s; echo rc=$?; '
            f'{CURL} -x "$ALL_PROXY" http://example.com/; echo rc=$?; '
            f"NO_PROXY= no_proxy= P={origin.port} T={tls.port} python3 client.py",
            settings(f"localhost:{origin.port}", f"localhost:{tls.port}"),
        )
    assert ran(workspace)
    text = out(r)
    assert "hello from origin\nrc=0" in text  # SOCKS5 (socks5h: the host resolves)
    assert "rc=97" in text  # SOCKS reply 0x02
    assert text.count("hello from origin\n") == 3  # curl via SOCKS, urllib http and https
    assert "py-denied 403 example.org:80 is not in network.allowedDomains" in text
    assert origin.connections == 2 and tls.connections == 1


async def test_direct_tcp_without_the_proxy_fails(workspace: Path) -> None:
    code = """
import socket, sys
port = int(sys.argv[1])
for host in ["127.0.0.1", "1.1.1.1", sys.argv[2]]:
    try:
        socket.create_connection((host, port), timeout=5).close()
        print("CONNECTED", host)
    except OSError as exc:
        print("refused", host, type(exc).__name__)
"""
    (workspace / "direct.py").write_text(code)
    host_ip = _host_non_loopback_ip()
    async with http_origin() as origin:
        r = await sh(
            workspace,
            f"python3 direct.py {origin.port} {host_ip}; {CURL} http://localhost:{origin.port}/; echo rc=$?",
            settings(f"localhost:{origin.port}"),
        )
    assert ran(workspace)
    text = out(r)
    assert "CONNECTED" not in text
    assert text.count("refused ") == 3
    assert "hello from origin\nrc=0" in text  # the same origin is reachable, through the proxy only
    assert origin.connections == 1


async def test_udp_and_dns_fail(workspace: Path) -> None:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.setblocking(False)
    udp_port = udp.getsockname()[1]
    code = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "s.sendto(b'escape', ('127.0.0.1', int(sys.argv[1])))  # the sandbox's own loopback: goes nowhere\n"
        "for target in [('1.1.1.1', 53), ('8.8.8.8', 53)]:\n"
        "    try:\n"
        "        s.sendto(b'escape', target)\n"
        "        print('SENT', target)\n"
        "    except OSError as exc:\n"
        "        print('udp-refused', type(exc).__name__)\n"
        "for name in ['example.com', 'pypi.org']:\n"
        "    try:\n"
        "        print('RESOLVED', socket.getaddrinfo(name, 80))\n"
        "    except OSError as exc:\n"
        "        print('dns-refused', name)\n"
        "print('local', socket.getaddrinfo('localhost', 80, socket.AF_INET)[0][4][0])\n"
    )
    (workspace / "udp.py").write_text(code)
    try:
        async with http_origin() as origin:
            r = await sh(
                workspace,
                f"python3 udp.py {udp_port}; getent hosts example.com; echo getent=$?; "
                f"{CURL} http://localhost:{origin.port}/; echo rc=$?",
                settings(f"localhost:{origin.port}"),
            )
        with pytest.raises(BlockingIOError):
            udp.recv(100)  # nothing arrived on the host's loopback (delivery there would be synchronous)
    finally:
        udp.close()
    assert ran(workspace)
    text = out(r)
    assert "SENT" not in text and text.count("udp-refused") == 2
    assert "RESOLVED" not in text and text.count("dns-refused") == 2
    assert "getent=2" in text
    assert "local 127.0.0.1" in text  # /etc/hosts still answers: the lookups ran
    assert "hello from origin\nrc=0" in text


async def test_proxy_needs_the_sandbox_credential_and_the_unix_socket_is_out_of_reach(
    workspace: Path,
) -> None:
    code = (
        "import socket\n"
        "try:\n"
        "    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
        "    s.connect('/run/inwall/proxy.sock')\n"
        "    print('UNIX-CONNECTED')\n"
        "except OSError as exc:\n"
        "    print('unix-refused', type(exc).__name__)\n"
    )
    (workspace / "unix.py").write_text(code)
    async with http_origin() as origin:
        url = f"http://localhost:{origin.port}/"
        r = await sh(
            workspace,
            f"{CURL} -x http://127.0.0.1:3128 -w '{CODE}' -o /dev/null {url}; "
            f"{CURL} -x http://inwall:guess@127.0.0.1:3128 -w '{CODE}' -o /dev/null {url}; "
            f"python3 unix.py; {CURL} http://localhost:{origin.port}/; echo rc=$?",
            settings(f"localhost:{origin.port}"),
        )
    assert ran(workspace)
    text = out(r)
    assert text.count("code=407") == 2
    assert "UNIX-CONNECTED" not in text and "unix-refused" in text
    assert "hello from origin\nrc=0" in text
    assert origin.connections == 1


async def test_rebinding_a_wildcard_name_to_loopback_is_denied(workspace: Path) -> None:
    """``localhost`` matched by no exact rule: a wildcard or another name cannot reach host loopback."""
    async with http_origin() as origin:
        r = await sh(
            workspace,
            f"{CURL} -w 'code=%{{http_code}}\\n' http://127.0.0.1:{origin.port}/; "
            f"{CURL} http://localhost:{origin.port}/; echo rc=$?",
            settings(f"localhost:{origin.port}", "*.example.com"),
        )
    assert ran(workspace)
    text = out(r)
    assert f"egress to 127.0.0.1:{origin.port} denied" in text  # the IP is not named by any rule
    assert "hello from origin\nrc=0" in text
    assert origin.connections == 1


async def test_no_allowlist_means_no_network_at_all(workspace: Path) -> None:
    async with http_origin() as origin:
        r = await sh(
            workspace,
            "env | grep -ci proxy; "
            f"{CURL} -x http://127.0.0.1:3128 http://localhost:{origin.port}/; echo rc=$?; "
            "getent hosts example.com; echo getent=$?",
            SandboxSettings.default(),
        )
    assert ran(workspace)
    text = out(r)
    assert text.splitlines()[0] == "0"  # no proxy variables at all
    assert "rc=7" in text  # nothing listens on the proxy port: there is no bridge
    assert "getent=2" in text
    assert origin.connections == 0


def _host_non_loopback_ip() -> str:
    """An address of this host that is not loopback (the sandbox must not reach it either)."""
    for addr in sorted(host_addresses(), key=str):
        if addr.version == 4 and not addr.is_loopback:
            return str(addr)
    return "192.0.2.1"
