"""Fixtures for the tunnel tests (helpers live in ``tests.tunnel.helpers``)."""

from __future__ import annotations

import pytest

from tests.tunnel.helpers import DOMAIN, PKI, TOKEN, TUNNEL_ID, FakeDirectory, make_pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def directory(pki: PKI) -> FakeDirectory:
    d = FakeDirectory()
    d.add_tunnel(TUNNEL_ID, DOMAIN, TOKEN, "tokid-1", [pki.ca_pem])
    return d
