"""Tag listing over the distribution API, page by page.

A registry's pages are followed only as far as they make sense: at most :data:`MAX_PAGES`
pages of at most :data:`PAGE_LIMIT` bytes, never a page twice (a ``Link`` loop), never to
another origin (a ``Link`` elsewhere would send the gate, if not its credentials, where the
configuration does not say). A listed name that is not a valid tag is skipped, so that one
bad name costs that name, not the listing.
"""

from __future__ import annotations

import re
import time
from contextlib import closing
from urllib.parse import urljoin

import httpx

from gate.adapters.registry.http import RegistryHttp
from gate.domain.ref import ImageRef
from gate.errors import ManifestUnknown, RegistryMisbehaved
from gate.logsafe import get_logger

logger = get_logger(__name__)

PAGE_LIMIT = 4 << 20
"""The most the gate reads of one tag-list page (a registry may ignore ``n`` and send all)."""
MAX_PAGES = 1000
"""The most pages one listing follows (a million tags at the default page size)."""
LISTING_BUDGET = 240.0
"""The most seconds one listing takes by default (``poll.budget``'s default): pages that each
come just within the request deadline must not add up to hours."""

# the OCI distribution spec's tag grammar
_TAG = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")


class Tags:
    """``GET /v2/<name>/tags/list`` of every registry, ``page_size`` tags a page."""

    def __init__(
        self, http: RegistryHttp, *, page_size: int = 1000, budget: float = LISTING_BUDGET
    ) -> None:
        self._http = http
        self._page_size = page_size
        self._budget = budget

    def list(
        self, repository: ImageRef, *, wait_limits: bool, budget: float | None = None
    ) -> list[str]:
        """Every tag of ``repository``, following ``Link: <...>; rel="next"`` page by page
        (OCI distribution spec, "Listing Tags": the ``n``/``last`` query and the ``Link``
        header of the next page). ``wait_limits=False`` raises ``RateLimited`` at a 429.
        No page is asked for once ``budget`` seconds (default: the client's) have passed."""
        allowed = self._budget if budget is None else budget
        until = time.monotonic() + allowed
        http = self._http
        ep = http.endpoint(repository.registry)
        scopes = (f"repository:{repository.repository}:pull",)
        url: str | None = f"{ep.base}/v2/{repository.repository}/tags/list?n={self._page_size}"
        origin = httpx.URL(ep.base)
        tags: list[str] = []
        visited: set[str] = set()
        skipped = 0
        while url is not None:
            page_url = url
            self._check_page(repository, page_url, origin, visited)
            if visited and time.monotonic() > until:
                raise RegistryMisbehaved(
                    f"the tag list of {repository.name} on registry {repository.registry} "
                    f"took more than {allowed:g} s ({len(visited)} pages); the gate stopped "
                    "listing it. Report it to the registry's operator, or list fewer tags."
                )
            visited.add(page_url)

            def page(page_url: str = page_url) -> tuple[list[object], str | None]:
                response = http.request(
                    ep, "GET", page_url, scopes=scopes, limit=PAGE_LIMIT, poll=True
                )
                with closing(response):
                    if response.status_code == 404:
                        raise ManifestUnknown(
                            f"repository '{repository.repository}' does not exist on registry "
                            f"{repository.registry}; check the repository name of the rule"
                        )
                    http.expect(response, (200,), ep, f"listing tags of {repository.name}")
                    try:
                        body = response.json()
                    except ValueError:
                        body = None
                    next_link = response.links.get("next", {}).get("url")
                names = body.get("tags") if isinstance(body, dict) else None
                if names is not None and not isinstance(names, list):
                    raise RegistryMisbehaved(
                        f"registry {ep.name} answered the tag list of {repository.name} with "
                        "'tags' that is not a list; it does not follow the distribution API"
                    )
                return (
                    list(names or []),
                    urljoin(page_url, next_link) if next_link else None,
                )

            names, url = http.retry(
                f"listing tags of {repository.name}", page, wait_limits=wait_limits
            )
            for name in names:
                if isinstance(name, str) and _TAG.fullmatch(name):
                    tags.append(name)
                else:
                    skipped += 1
        if skipped:
            logger.warning(
                "registry %s listed %d name(s) in %s that are not valid tags; skipped them",
                ep.name,
                skipped,
                repository.name,
            )
        return tags

    @staticmethod
    def _check_page(repository: ImageRef, url: str, origin: httpx.URL, visited: set[str]) -> None:
        """Refuse a next page that loops, goes elsewhere, or is one page too many."""
        where = f"the tag list of {repository.name}"
        if url in visited:
            raise RegistryMisbehaved(
                f"registry {repository.registry} sent the gate in a loop through {where} "
                f"(page {url[:200]!r} again); the listing was stopped. Report it to the "
                "registry's operator."
            )
        target = httpx.URL(url)
        if (target.scheme, target.host, target.port) != (origin.scheme, origin.host, origin.port):
            raise RegistryMisbehaved(
                f"registry {repository.registry} named a next page of {where} on another "
                f"origin ({url[:200]!r}); the gate lists tags only at the registry itself"
            )
        if len(visited) >= MAX_PAGES:
            raise RegistryMisbehaved(
                f"{where} on registry {repository.registry} runs past {MAX_PAGES} pages; the "
                "gate lists no more. Report it to the registry's operator."
            )
