"""The poll requests' way to a registry: HTTP/2 where a TLS registry offers it by ALPN, HTTP/1.1
otherwise, and one connection per request in flight over HTTP/1.1; against real docker-registry
processes (Go's net/http offers h2 on a TLS listener)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import trustme

from devstack.proxy import LatencyProxy, push_tiny_images
from devstack.registry import RegistryProcess
from gate.adapters.registry.http import MAX_ORIGINS, RegistryHttp, _PerOrigin
from gate.adapters.registry.manifests import ACCEPT
from gate.adapters.registry.oci import HostSettings, OciRegistry
from gate.domain.ref import ImageRef

SCOPES = ("repository:lib/none:pull",)


@pytest.fixture
def tls_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RegistryProcess]:
    """A docker-registry serving HTTPS with a test CA's certificate, the CA trusted by httpx."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(tmp_path / "cert.pem")
    cert.private_key_pem.write_to_path(tmp_path / "key.pem")
    ca.cert_pem.write_to_path(tmp_path / "ca.pem")
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
    tls = (tmp_path / "cert.pem", tmp_path / "key.pem")
    with RegistryProcess(tmp_path / "registry", tls=tls) as process:
        yield process


def test_poll_requests_speak_http2_to_a_tls_registry_that_offers_it(
    tls_registry: RegistryProcess,
) -> None:
    http = RegistryHttp({tls_registry.host: HostSettings()})
    ep = http.endpoint(tls_registry.host)
    try:
        head = http.head(ep, f"{ep.base}/v2/lib/none/manifests/v1", scopes=SCOPES, accept=ACCEPT)
        listing = http.request(
            ep, "GET", f"{ep.base}/v2/lib/none/tags/list", scopes=SCOPES, poll=True
        )
        other = http.request(ep, "GET", f"{ep.base}/v2/", scopes=())
    finally:
        http.close()

    assert head.status_code == 404 and head.extensions["http_version"] == b"HTTP/2"
    assert listing.status_code == 404 and listing.extensions["http_version"] == b"HTTP/2"
    # everything else (blobs, uploads) stays on HTTP/1.1
    assert other.status_code == 200 and other.extensions["http_version"] == b"HTTP/1.1"


def test_poll_requests_to_a_plain_http_registry_stay_on_http1(registry: RegistryProcess) -> None:
    http = RegistryHttp({registry.host: HostSettings(insecure=True)})
    ep = http.endpoint(registry.host)
    try:
        head = http.head(ep, f"{ep.base}/v2/lib/none/manifests/v1", scopes=SCOPES, accept=ACCEPT)
    finally:
        http.close()

    # httpx negotiates HTTP/2 by TLS ALPN only: no h2 without TLS
    assert head.status_code == 404 and head.extensions["http_version"] == b"HTTP/1.1"


def test_concurrent_poll_heads_reuse_as_many_connections_as_were_in_flight(
    registry: RegistryProcess,
) -> None:
    tags = [f"v{n}" for n in range(24)]
    digests = push_tiny_images(registry.host, ["lib/app"], tags)
    with LatencyProxy(registry.host, latency=0.05) as proxy:
        refs = [ImageRef.parse(f"{proxy.host}/lib/app:{t}") for t in tags]
        with (
            OciRegistry({proxy.host: HostSettings(insecure=True)}) as oci,
            ThreadPoolExecutor(max_workers=4) as pool,
        ):
            first = list(pool.map(oci.poll_digest, refs))
            second = list(pool.map(oci.poll_digest, refs))

    assert [p.digest for p in first] == [p.digest for p in second]
    assert [p.digest for p in first] == [digests[f"lib/app:{t}"] for t in tags]
    assert proxy.requests["HEAD"] == 48
    # four in flight: four connections for both rounds, none opened per request
    assert proxy.max_in_flight <= 4 and proxy.connections <= 4


def test_origins_past_the_bound_share_a_pool_instead_of_growing_the_set() -> None:
    origins = _PerOrigin()
    try:
        pools = [
            origins.pool(httpx.URL(f"http://cdn{n}.example/blob"), poll=False)
            for n in range(MAX_ORIGINS + 10)
        ]
        again = origins.pool(httpx.URL("http://cdn0.example/other"), poll=False)
    finally:
        origins.close()

    assert len({id(p) for p in pools[:MAX_ORIGINS]}) == MAX_ORIGINS
    assert len({id(p) for p in pools[MAX_ORIGINS:]}) == 1  # the rest share one
    assert again is pools[0]  # an origin keeps its own pool
