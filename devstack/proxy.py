"""An HTTP/1.1 forwarding proxy for benchmarks and tests: latency, request counts, 429s.

``LatencyProxy`` listens on a free loopback port and forwards every request to one upstream
(``127.0.0.1:PORT``) over a kept-alive connection per client connection, after sleeping
``latency`` seconds, so that each request costs one round trip the way a distant registry's
does. It counts the requests it forwards (by method), the most in flight at once, and can
answer ``429 Too Many Requests`` with a ``Retry-After`` instead of forwarding, or add headers
(e.g. Docker Hub's ``ratelimit-remaining``) to every answer.

The docker-registry it fronts (distribution 2.8) returns a repository's whole tag list at
once; with ``page_tags`` the proxy serves it in pages the way the OCI distribution spec
describes ("Listing Tags": at most ``n`` tags after ``last``, and a ``Link`` header with
``rel="next"`` while more remain), so clients' pagination is exercised against real tags.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlencode, urlsplit

from devstack.process import ThreadedServer

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "proxy-connection",
    }
)


class LatencyProxy(ThreadedServer):
    """Forwards to ``upstream`` with ``latency`` seconds added per request; counts requests."""

    def __init__(self, upstream: str, *, latency: float = 0.05) -> None:
        self.upstream = upstream
        self.latency = latency
        self.requests: Counter[str] = Counter()
        self.log: list[tuple[str, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.throttled = 0
        self.connections = 0
        self.extra_headers: dict[str, str] = {}
        self.page_tags = False
        self._too_many: str | None = None
        self._lock = threading.Lock()
        super().__init__(self._handler())

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT`` of the proxy: the registry part of image references."""
        return f"127.0.0.1:{self.port}"

    @property
    def total(self) -> int:
        """Requests forwarded (429s answered by the proxy itself not included)."""
        return sum(self.requests.values())

    def reset(self, settle: float = 5.0) -> None:
        """Zero the counters, once the requests in flight are done (up to ``settle`` seconds):
        a request still on its way when the phase ended would otherwise be counted in the next."""
        deadline = time.monotonic() + settle
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        with self._lock:
            self.requests.clear()
            self.log.clear()
            self.max_in_flight = 0
            self.throttled = 0
            self.connections = 0

    def throttle(self, retry_after: str | None) -> None:
        """Answer every request with 429 and this ``Retry-After`` (None: forward again)."""
        self._too_many = retry_after

    def _enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _count(self, method: str, path: str) -> None:
        # counted before the answer goes back: a client that has its answer finds it counted
        with self._lock:
            self.requests[method] += 1
            self.log.append((method, path))

    def _leave(self, forwarded: bool) -> None:
        with self._lock:
            self.in_flight -= 1
            if not forwarded:
                self.throttled += 1

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            upstream_conn: http.client.HTTPConnection | None = None

            def setup(self) -> None:
                super().setup()
                with proxy._lock:
                    proxy.connections += 1

            def log_message(self, format: str, *args: object) -> None:
                pass  # quiet: the counters are the record

            def _forward(self) -> None:
                proxy._enter()
                forwarded = False
                try:
                    time.sleep(proxy.latency)
                    length = int(self.headers.get("Content-Length") or 0)
                    body = self.rfile.read(length) if length else None
                    retry_after = proxy._too_many
                    if retry_after is not None:
                        self.send_response(429)
                        self.send_header("Retry-After", retry_after)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    if self.upstream_conn is None:
                        self.upstream_conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
                    headers = {
                        k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP
                    }
                    self.upstream_conn.request(self.command, self.path, body=body, headers=headers)
                    answer = self.upstream_conn.getresponse()
                    data = answer.read()
                    forwarded = True
                    proxy._count(self.command, self.path)
                    link = None
                    if proxy.page_tags and answer.status == 200 and "/tags/list" in self.path:
                        data, link = _tag_page(self.path, data)
                    self.send_response(answer.status, answer.reason)
                    for key, value in answer.getheaders():
                        if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                            self.send_header(key, value)
                    for key, value in proxy.extra_headers.items():
                        self.send_header(key, value)
                    if link:
                        self.send_header("Link", f'<{link}>; rel="next"')
                    length_header = answer.getheader("Content-Length")
                    if self.command == "HEAD" and length_header is not None:
                        self.send_header("Content-Length", length_header)
                    else:
                        self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    proxy._leave(forwarded)

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _forward

        return Handler


def _tag_page(path: str, data: bytes) -> tuple[bytes, str | None]:
    """The page of a full tag list that ``?n=&last=`` asks for, and the next page's URL."""
    parts = urlsplit(path)
    query = parse_qs(parts.query)
    body = json.loads(data)
    tags = sorted(body.get("tags") or [])
    last = query.get("last", [""])[0]
    if last:
        tags = [t for t in tags if t > last]
    size = int(query.get("n", ["0"])[0] or 0)
    if not size or len(tags) <= size:
        return json.dumps({**body, "tags": tags}).encode(), None
    page = tags[:size]
    following = f"{parts.path}?{urlencode({'n': size, 'last': page[-1]})}"
    return json.dumps({**body, "tags": page}).encode(), following


def push_tiny_images(host: str, repositories: list[str], tags: list[str]) -> dict[str, str]:
    """Push a distinct tiny OCI image as every ``tag`` of every repository on ``host`` (plain
    http); returns ``{"repo:tag": digest}``. Enough for polls, which only read manifests."""
    import json

    from gate.adapters.registry.oci import OCI_MANIFEST, HostSettings, OciRegistry
    from gate.domain.ref import ImageRef

    digests: dict[str, str] = {}
    with OciRegistry({host: HostSettings(insecure=True)}) as registry:
        for repo in repositories:
            target = ImageRef(host, repo)
            layer = registry.push_blob(target, b"layer")
            for tag in tags:
                config = json.dumps({"repo": repo, "tag": tag}).encode()
                manifest = {
                    "schemaVersion": 2,
                    "mediaType": OCI_MANIFEST,
                    "config": {
                        "mediaType": "application/vnd.oci.image.config.v1+json",
                        "digest": registry.push_blob(target, config),
                        "size": len(config),
                    },
                    "layers": [
                        {
                            "mediaType": "application/vnd.oci.image.layer.v1.tar",
                            "digest": layer,
                            "size": len(b"layer"),
                        }
                    ],
                }
                data = json.dumps(manifest).encode()
                digests[f"{repo}:{tag}"] = registry.put_manifest(target, tag, data, OCI_MANIFEST)
    return digests
