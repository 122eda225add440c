"""A registry that misbehaves on purpose, for tests of what the gate accepts from an upstream.

``HostileRegistry`` listens on a free loopback port. In front of an honest registry
(``upstream``, ``127.0.0.1:PORT``) it forwards every request it has no mischief for; without
one it answers only what it is told. ``behaviour`` switches one misbehaviour on at a time
(:data:`BEHAVIOURS`), and :meth:`serve_manifest` makes it serve any bytes as a manifest under
their own digest (indexes of indexes, chains, malformed JSON), so the gate's digest check
passes and the bytes themselves are what is tested.

Every request is logged with whether it carried an ``Authorization`` header, so that a test
can prove a credential never reached a host it was not for. A second instance without an
upstream serves as such a foreign host (a token realm, a ``Link`` target).
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler

from devstack.process import ThreadedServer

BEHAVIOURS = frozenset(
    {
        "honest",
        "endless-manifest",  # a manifest GET answers an endless body
        "huge-manifest",  # a manifest GET answers 200 MB with a Content-Length
        "trickle-manifest",  # a manifest GET answers one byte a second
        "retry-after-seconds",  # every manifest request: 503, Retry-After: 999999
        "retry-after-date",  # every manifest request: 503, Retry-After in the year 9999
        "tags-self-link",  # the tag list names itself as the next page
        "tags-foreign-link",  # the tag list's next page is on ``foreign``
        "tags-invalid-name",  # the tag list holds a name that is no valid tag
        "tags-huge-page",  # the tag list is an endless page
        "tags-endless-pages",  # every tag-list page names one more next page
        "blob-redirect-metadata",  # blob GETs redirect to the cloud instance metadata address
        "blob-redirect-file",  # blob GETs redirect to file:///etc/passwd
        "blob-redirect-loopback",  # blob GETs redirect to the upstream itself (another port)
        "blob-redirect-loop",  # blob GETs redirect to themselves, for ever
        "blob-flip",  # blob GETs answer the right length with one byte flipped
        "realm-foreign",  # bearer challenge with a realm on ``foreign``
        "realm-link-local",  # bearer challenge with a realm at 169.254.169.254
        "realm-file",  # bearer challenge with a file:// realm
        "realm-endless-token",  # bearer challenge with a realm on itself answering endlessly
        "error-endless",  # a manifest GET answers 400 with an endless error body
    }
)

OCI_INDEX = "application/vnd.oci.image.index.v1+json"

_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}
)


@dataclass(frozen=True)
class Seen:
    """One request the server received."""

    method: str
    path: str
    authorization: str


class HostileRegistry(ThreadedServer):
    """A registry on ``127.0.0.1:PORT`` that forwards to ``upstream`` or misbehaves.

    ``basic`` (``(user, password)``) makes it demand those credentials itself (``realm-*``
    behaviours demand a bearer token instead); ``foreign`` is the ``host:port`` the foreign
    realm and Link behaviours point at.
    """

    def __init__(self, upstream: str | None = None) -> None:
        self.upstream = upstream
        self.behaviour = "honest"
        self.foreign = "127.0.0.1:9"
        self.basic: tuple[str, str] | None = None
        self.seen: list[Seen] = []
        self.loops = 0  # redirects answered in "blob-redirect-loop"
        self._canned: dict[str, tuple[bytes, str]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        super().__init__(self._handler())

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``: the registry part of image references."""
        return f"127.0.0.1:{self.port}"

    def misbehave(self, behaviour: str) -> None:
        """Switch to ``behaviour`` (one of :data:`BEHAVIOURS`)."""
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"unknown behaviour {behaviour!r}; one of {sorted(BEHAVIOURS)}")
        self.behaviour = behaviour

    def serve_manifest(self, data: bytes, media_type: str = OCI_INDEX) -> str:
        """Serve ``data`` as the manifest of its own sha256 digest (any repository); the digest."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self._canned[digest] = (data, media_type)
        return digest

    def requests_to(self, fragment: str) -> list[Seen]:
        """The requests whose path contains ``fragment``."""
        with self._lock:
            return [seen for seen in self.seen if fragment in seen.path]

    def stop(self) -> None:
        """Stop serving (endless answers end at once) and close the listening socket."""
        self._stop.set()
        super().stop()

    def _record(self, method: str, path: str, authorization: str) -> None:
        with self._lock:
            self.seen.append(Seen(method, path, authorization))

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hostile = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass  # quiet: ``seen`` is the record

            def _answer(
                self, status: int, body: bytes = b"", headers: dict[str, str] | None = None
            ) -> None:
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _endless(
                self, content_type: str, *, length: int | None = None, status: int = 200
            ) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                if length is None:
                    self.send_header("Transfer-Encoding", "chunked")
                else:
                    self.send_header("Content-Length", str(length))
                self.end_headers()
                chunk = b" " * 65536
                sent = 0
                try:
                    while not hostile._stop.is_set() and (length is None or sent < length):
                        piece = chunk if length is None else chunk[: length - sent]
                        if length is None:
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                        else:
                            self.wfile.write(piece)
                        sent += len(piece)
                except OSError:
                    pass  # the client hung up: what it should do
                self.close_connection = True

            def _trickle(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
                self.send_header("Content-Length", "1000000")
                self.end_headers()
                try:
                    while not hostile._stop.wait(1.0):
                        self.wfile.write(b" ")
                        self.wfile.flush()
                except OSError:
                    pass
                self.close_connection = True

            def _mischief(self) -> bool:
                """Answer as the behaviour says; False when the request is forwarded."""
                path, method, mode = self.path, self.command, hostile.behaviour
                manifest = "/manifests/" in path
                digest = path.rsplit("/", 1)[-1]
                if manifest and digest in hostile._canned and method in ("GET", "HEAD"):
                    data, media_type = hostile._canned[digest]
                    headers = {"Content-Type": media_type, "Docker-Content-Digest": digest}
                    self._answer(200, data, headers)
                    return True
                if mode.startswith("realm-"):
                    if "/token" in path and mode == "realm-endless-token":
                        self._endless("application/json")
                        return True
                    if "/token" in path and mode != "realm-foreign":
                        self._answer(200, b'{"token": "t"}')
                        return True
                    if self.headers.get("Authorization") != "Bearer t":
                        realm = {
                            "realm-foreign": f"http://{hostile.foreign}/token",
                            "realm-link-local": "http://169.254.169.254/token",
                            "realm-file": "file:///etc/passwd",
                            "realm-endless-token": f"http://{hostile.host}/token",
                        }[mode]
                        challenge = f'Bearer realm="{realm}",service="hostile"'
                        self._answer(401, b"", {"WWW-Authenticate": challenge})
                        return True
                    return False
                if hostile.basic is not None and not self._basic_ok():
                    self._answer(401, b"", {"WWW-Authenticate": 'Basic realm="hostile"'})
                    return True
                if manifest and method == "GET":
                    if mode == "endless-manifest":
                        self._endless("application/vnd.oci.image.manifest.v1+json")
                        return True
                    if mode == "huge-manifest":
                        self._endless(
                            "application/vnd.oci.image.manifest.v1+json", length=200 << 20
                        )
                        return True
                    if mode == "trickle-manifest":
                        self._trickle()
                        return True
                    if mode == "error-endless":
                        self._endless("application/json", status=400)
                        return True
                if manifest and mode in ("retry-after-seconds", "retry-after-date"):
                    after = (
                        "999999"
                        if mode == "retry-after-seconds"
                        else ("Fri, 31 Dec 9999 23:59:59 GMT")
                    )
                    self._answer(503, b"", {"Retry-After": after})
                    return True
                if "/tags/list" in path and mode.startswith("tags-"):
                    return self._tags(mode)
                if "/blobs/" in path and "/uploads/" not in path and method == "GET":
                    if mode == "blob-redirect-metadata":
                        location = "http://169.254.169.254/latest/meta-data/"
                        self._answer(307, b"", {"Location": location})
                        return True
                    if mode == "blob-redirect-loopback" and hostile.upstream is not None:
                        location = f"http://{hostile.upstream}{path}"
                        self._answer(307, b"", {"Location": location})
                        return True
                    if mode == "blob-redirect-file":
                        self._answer(307, b"", {"Location": "file:///etc/passwd"})
                        return True
                    if mode == "blob-redirect-loop":
                        hostile.loops += 1
                        self._answer(307, b"", {"Location": path})
                        return True
                return False

            def _tags(self, mode: str) -> bool:
                repo = self.path.split("/v2/", 1)[1].split("/tags/list", 1)[0]
                if mode == "tags-huge-page":
                    self._endless("application/json")
                    return True
                tags = ["15-alpine"]
                headers = {"Content-Type": "application/json"}
                if mode == "tags-self-link":
                    headers["Link"] = f'<{self.path}>; rel="next"'
                elif mode == "tags-foreign-link":
                    link = f"http://{hostile.foreign}/v2/{repo}/tags/list?last=15-alpine"
                    headers["Link"] = f'<{link}>; rel="next"'
                elif mode == "tags-endless-pages":
                    page = int(self.path.rsplit("last=p", 1)[-1]) if "last=p" in self.path else 0
                    tags = [f"p{page + 1}"]
                    headers["Link"] = f'</v2/{repo}/tags/list?n=1&last=p{page + 1}>; rel="next"'
                elif mode == "tags-invalid-name":
                    tags = ["15-alpine", "../../etc/passwd", "-bad", "x" * 200, "16-alpine"]
                body = json.dumps({"name": repo, "tags": tags}).encode()
                self._answer(200, body, headers)
                return True

            def _basic_ok(self) -> bool:
                assert hostile.basic is not None
                pair = ":".join(hostile.basic).encode()
                return self.headers.get("Authorization") == "Basic " + (
                    base64.b64encode(pair).decode()
                )

            def _serve(self) -> None:
                hostile._record(self.command, self.path, self.headers.get("Authorization", ""))
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if self._mischief():
                    return
                if hostile.upstream is None:
                    if "/token" in self.path:
                        self._answer(200, b'{"token": "foreign"}')
                    else:
                        self._answer(404, b'{"errors": []}')
                    return
                self._forward(body)

            def _forward(self, body: bytes | None) -> None:
                assert hostile.upstream is not None
                conn = http.client.HTTPConnection(hostile.upstream, timeout=30)
                try:
                    headers = {
                        k: v
                        for k, v in self.headers.items()
                        if k.lower() not in _HOP_BY_HOP and k.lower() != "authorization"
                    }
                    conn.request(self.command, self.path, body=body, headers=headers)
                    answer = conn.getresponse()
                    data = answer.read()
                finally:
                    conn.close()
                flip = (
                    hostile.behaviour == "blob-flip"
                    and "/blobs/sha256:" in self.path
                    and self.command == "GET"
                    and answer.status == 200
                    and data
                )
                if flip:
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                self.send_response(answer.status, answer.reason)
                for key, value in answer.getheaders():
                    if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                        if key.lower() == "location" and value.startswith("http://"):
                            # an absolute upload Location names the upstream: name us instead
                            value = value.replace(hostile.upstream, hostile.host, 1)
                        self.send_header(key, value)
                length_header = answer.getheader("Content-Length")
                if self.command == "HEAD" and length_header is not None:
                    self.send_header("Content-Length", length_header)
                else:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _serve

        return Handler
