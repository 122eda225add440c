"""Tag listing over the distribution API, page by page."""

from __future__ import annotations

from contextlib import closing
from urllib.parse import urljoin

from gate.adapters.registry.http import RegistryHttp
from gate.domain.ref import ImageRef
from gate.errors import ManifestUnknown

PAGE_LIMIT = 4 << 20
"""The most the gate reads of one tag-list page (a registry may ignore ``n`` and send all)."""


class Tags:
    """``GET /v2/<name>/tags/list`` of every registry, ``page_size`` tags a page."""

    def __init__(self, http: RegistryHttp, *, page_size: int = 1000) -> None:
        self._http = http
        self._page_size = page_size

    def list(self, repository: ImageRef, *, wait_limits: bool) -> list[str]:
        """Every tag of ``repository``, following ``Link: <...>; rel="next"`` page by page
        (OCI distribution spec, "Listing Tags": the ``n``/``last`` query and the ``Link``
        header of the next page). ``wait_limits=False`` raises ``RateLimited`` at a 429."""
        http = self._http
        ep = http.endpoint(repository.registry)
        scopes = (f"repository:{repository.repository}:pull",)
        url: str | None = f"{ep.base}/v2/{repository.repository}/tags/list?n={self._page_size}"
        tags: list[str] = []
        while url is not None:
            page_url = url

            def page(page_url: str = page_url) -> tuple[list[str], str | None]:
                response = http.request(ep, "GET", page_url, scopes=scopes, limit=PAGE_LIMIT)
                with closing(response):
                    if response.status_code == 404:
                        raise ManifestUnknown(
                            f"repository '{repository.repository}' does not exist on registry "
                            f"{repository.registry}; check the repository name of the rule"
                        )
                    http.expect(response, (200,), ep, f"listing tags of {repository.name}")
                    body = response.json()
                    next_link = response.links.get("next", {}).get("url")
                names = body.get("tags") if isinstance(body, dict) else None
                return (
                    [str(t) for t in names or []],
                    urljoin(page_url, next_link) if next_link else None,
                )

            names, url = http.retry(
                f"listing tags of {repository.name}", page, wait_limits=wait_limits
            )
            tags.extend(names)
        return tags
