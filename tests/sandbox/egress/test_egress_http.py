"""The sans-I/O HTTP proxy request parser: accepted forms, rewriting, limits, and hostile input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inwall.errors import InvalidInput, LocalProtocolError, RemoteProtocolError
from inwall.sandbox.egress.http import (
    HttpProxyError,
    HttpRequestParser,
    ProxyRequest,
    check_basic_credential,
    denied_response,
    origin_request_head,
)

from .helpers import CRED, basic


def parse(data: bytes, **kw: int) -> ProxyRequest:
    parser = HttpRequestParser(**kw)
    request = parser.feed(data)
    assert request is not None
    return request


def test_connect_request() -> None:
    req = parse(b"CONNECT Example.COM.:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    assert (req.method, req.form, req.host, req.port, req.path) == (
        "CONNECT",
        "authority",
        "example.com",
        443,
        "",
    )


def test_connect_ipv6() -> None:
    req = parse(b"CONNECT [::1]:8443 HTTP/1.1\r\n\r\n")
    assert (req.host, req.port) == ("::1", 8443)


def test_absolute_form_with_default_port_and_query() -> None:
    req = parse(b"GET http://example.com?q=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (req.form, req.host, req.port, req.path) == ("absolute", "example.com", 80, "/?q=1")
    req = parse(b"POST HTTP://example.com:8080/a/b?c HTTP/1.0\r\n\r\n")
    assert (req.host, req.port, req.path, req.version) == ("example.com", 8080, "/a/b?c", "HTTP/1.0")


def test_head_arriving_byte_by_byte_and_remainder() -> None:
    raw = b"CONNECT example.com:443 HTTP/1.1\r\nProxy-Authorization: x\r\n\r\n\x16\x03\x01hello"
    parser = HttpRequestParser()
    result = None
    for i in range(len(raw)):
        result = parser.feed(raw[i : i + 1])
        if result is not None:
            break
    assert result is not None
    rest = raw[raw.index(b"\r\n\r\n") + 4 :]
    assert parser.remainder + raw[i + 1 :] == rest
    with pytest.raises(LocalProtocolError):
        parser.feed(b"more")


def test_bare_lf_line_endings_are_accepted() -> None:
    req = parse(b"GET http://example.com/ HTTP/1.1\nHost: example.com\nX-A: 1\n\nBODY")
    assert req.header("x-a") == "1"


def test_origin_request_head_rewrites_target_host_and_strips_proxy_fields() -> None:
    req = parse(
        b"GET http://Example.com:8080/p?q HTTP/1.1\r\n"
        b"Host: evil.example.net\r\n"
        b"Proxy-Authorization: Basic abc\r\n"
        b"Proxy-Connection: keep-alive\r\n"
        b"Connection: keep-alive, X-Hop\r\n"
        b"X-Hop: drop me\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"Upgrade: websocket\r\n"
        b"Content-Length: 3\r\n"
        b"X-Kept: yes\r\n\r\n"
    )
    head = origin_request_head(req).decode()
    lines = head.split("\r\n")
    assert lines[0] == "GET /p?q HTTP/1.1"
    assert lines[1] == "Host: example.com:8080"
    assert "X-Kept: yes" in lines
    assert "Content-Length: 3" in lines
    assert lines[-3:] == ["Connection: close", "", ""]
    lowered = head.lower()
    for gone in ("proxy-", "evil.example.net", "x-hop", "keep-alive", "upgrade"):
        assert gone not in lowered
    assert lowered.count("connection:") == 1


def test_origin_request_head_default_port_and_ipv6() -> None:
    assert b"\r\nHost: example.com\r\n" in origin_request_head(
        parse(b"GET http://example.com/ HTTP/1.1\r\n\r\n")
    )
    head = origin_request_head(parse(b"GET http://[::1]:81/ HTTP/1.1\r\n\r\n"))
    assert b"\r\nHost: [::1]:81\r\n" in head
    with pytest.raises(LocalProtocolError):
        origin_request_head(parse(b"CONNECT example.com:443 HTTP/1.1\r\n\r\n"))


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n", 400),  # origin form: not a proxy request
        (b"GET https://example.com/ HTTP/1.1\r\n\r\n", 501),
        (b"GET ftp://example.com/ HTTP/1.1\r\n\r\n", 501),
        (b"CONNECT example.com HTTP/1.1\r\n\r\n", 400),  # no port
        (b"CONNECT example.com: HTTP/1.1\r\n\r\n", 400),
        (b"CONNECT example.com:0 HTTP/1.1\r\n\r\n", 400),
        (b"CONNECT example.com:99999 HTTP/1.1\r\n\r\n", 400),
        (b"CONNECT [::1:443 HTTP/1.1\r\n\r\n", 400),
        (b"CONNECT user@example.com:443 HTTP/1.1\r\n\r\n", 400),
        (b"GET http://allowed.test@evil.test/ HTTP/1.1\r\n\r\n", 400),
        (b"GET http://exa mple.com/ HTTP/1.1\r\n\r\n", 400),
        (b"GET http://example.com/#frag HTTP/1.1\r\n\r\n", 400),
        (b"GET http://1.2.3.256/ HTTP/1.1\r\n\r\n", 400),
        (b"GET http://example.com/ HTTP/2.0\r\n\r\n", 505),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
        (b"GET http://example.com/ HTTP/1.1 extra\r\n\r\n", 400),
        (b"G(T http://example.com/ HTTP/1.1\r\n\r\n", 400),
        (b"GET http://example.com/ HTTP/1.1\r\nBad Name: x\r\n\r\n", 400),
        (b"GET http://example.com/ HTTP/1.1\r\nNoColon\r\n\r\n", 400),
        (b"GET http://example.com/ HTTP/1.1\r\nX: a\r\n folded\r\n\r\n", 400),
        (b"GET http://example.com/ HTTP/1.1\r\nX: a\x00b\r\n\r\n", 400),
        (
            b"POST http://example.com/ HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
        ),
        (b"POST http://example.com/ HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 400),
        (b"POST http://example.com/ HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST http://example.com/ HTTP/1.1\r\nContent-Length: \xb2\r\n\r\n", 400),
        (b"POST http://example.com/ HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
        (b"POST http://example.com/ HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"\r\n\r\n", 400),
    ],
)
def test_malformed_requests(raw: bytes, status: int) -> None:
    with pytest.raises(HttpProxyError) as info:
        HttpRequestParser().feed(raw)
    assert info.value.status == status
    response = info.value.response
    assert response.startswith(f"HTTP/1.1 {status} ".encode())
    assert b"\r\nConnection: close\r\n" in response
    assert b"inwall sandbox: " in response


def test_duplicate_identical_content_length_is_fine() -> None:
    req = parse(b"POST http://example.com/ HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n")
    assert req.header("content-length") == "3, 3"


def test_limits() -> None:
    with pytest.raises(HttpProxyError) as info:
        HttpRequestParser(max_line=100).feed(b"GET http://example.com/" + b"a" * 200)
    assert info.value.status == 414
    big_header = b"GET http://example.com/ HTTP/1.1\r\nX: " + b"a" * 200 + b"\r\n\r\n"
    with pytest.raises(HttpProxyError) as info:
        HttpRequestParser(max_line=100).feed(big_header)
    assert info.value.status == 431
    many = b"GET http://example.com/ HTTP/1.1\r\n" + b"X: 1\r\n" * 20 + b"\r\n"
    with pytest.raises(HttpProxyError) as info:
        HttpRequestParser(max_headers=10).feed(many)
    assert info.value.status == 431
    parser = HttpRequestParser(max_head=1000)
    with pytest.raises(HttpProxyError) as info:
        for _ in range(100):
            parser.feed(b"X-Header: " + b"b" * 80 + b"\r\n")
    assert info.value.status == 431


def test_basic_credential() -> None:
    assert check_basic_credential(basic(), CRED)
    assert check_basic_credential(basic(user="anyone"), CRED)  # the password is the secret
    assert check_basic_credential("basic " + basic().split()[1], CRED)
    assert not check_basic_credential(basic("wrong"), CRED)
    assert not check_basic_credential(basic(CRED + "x"), CRED)
    assert not check_basic_credential(None, CRED)
    assert not check_basic_credential("Bearer " + CRED, CRED)
    assert not check_basic_credential("Basic !!!not-base64", CRED)
    assert not check_basic_credential("Basic " + "aW53YWxs", CRED)  # "inwall" without a colon
    assert not check_basic_credential(basic(""), "")


def test_denied_response_is_readable() -> None:
    response = denied_response("evil.test", 443, "evil.test:443 is not in network.allowedDomains")
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert b"\r\nX-Inwall-Denied-Reason: evil.test:443 is not in network.allowedDomains\r\n" in head
    assert (
        body
        == b"inwall sandbox: egress to evil.test:443 denied: evil.test:443 is not in network.allowedDomains\n"
    )
    assert f"Content-Length: {len(body)}".encode() in head


def test_denied_response_cannot_be_split_by_a_reason() -> None:
    response = denied_response("x.test", 80, "bad\r\nSet-Cookie: a=b\x00")
    assert b"\r\nSet-Cookie" not in response
    assert response.count(b"\r\n\r\n") == 1


# --- hostile input ----------------------------------------------------------------------------

_PIECES = st.sampled_from(
    [
        b"GET ",
        b"CONNECT ",
        b"http://",
        b"example.com",
        b"[::1]",
        b":443",
        b":",
        b"/",
        b" HTTP/1.1",
        b" HTTP/9.9",
        b"\r\n",
        b"\n",
        b"\r\n\r\n",
        b"Host: x",
        b"Content-Length: 5",
        b"Transfer-Encoding: chunked",
        b"Proxy-Authorization: Basic ",
        b"\x00",
        b"\xff\xfe",
        b" ",
        b"\t",
        b"@",
        b"%",
        b"#",
        b"\xc3\xa9",
    ]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(_PIECES, st.binary(max_size=40)), max_size=40), st.integers(1, 64))
def test_parser_never_raises_anything_else(pieces: list[bytes], chunk: int) -> None:
    data = b"".join(pieces)
    parser = HttpRequestParser(max_head=2048, max_line=512, max_headers=20)
    try:
        for i in range(0, len(data), chunk):
            if parser.feed(data[i : i + chunk]) is not None:
                break
    except (RemoteProtocolError, InvalidInput):
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=4096))
def test_parser_on_random_bytes(data: bytes) -> None:
    try:
        request = HttpRequestParser().feed(data)
    except RemoteProtocolError:
        return
    if request is not None and request.form == "absolute":
        head = origin_request_head(request)
        assert head.endswith(b"Connection: close\r\n\r\n")
        assert b"\r\n\r\n" not in head[:-4]  # no header smuggled past the end of the head


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["GET", "POST", "CONNECT", "DELETE"]),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=80),
)
def test_targets_are_either_valid_or_refused(method: str, target: str) -> None:
    raw = f"{method} {target} HTTP/1.1\r\n\r\n".encode()
    try:
        request = HttpRequestParser().feed(raw)
    except HttpProxyError as exc:
        assert 400 <= exc.status < 600
        return
    assert request is not None
    assert 1 <= request.port <= 65535
    assert request.host and " " not in request.host
