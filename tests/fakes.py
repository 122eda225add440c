"""Fakes of the gate's own ports (never of SDK internals), recording what was asked of them."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gate.domain.records import Outcome, ValidationResult
from gate.domain.ref import ImageRef
from gate.errors import (
    AuthenticationError,
    Conflict,
    ManifestUnknown,
    QueueError,
    RegistryUnavailable,
)
from gate.ports import (
    CopyReport,
    PolledDigest,
    ProgressCallback,
    Resume,
    Unstaged,
    ValidationRequest,
)


def digest_of(text: str) -> str:
    """A well-formed sha256 digest for a made-up image."""
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


@dataclass
class FakeRegistry:
    """In-memory registries: ``{(registry, repository): {tag: digest}}`` plus stored digests."""

    tags: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    content: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    writes: list[tuple[str, str, str]] = field(default_factory=list)
    copies: list[tuple[str, str]] = field(default_factory=list)
    resumed_copies: list[str] = field(default_factory=list)
    resolves: int = 0
    down: bool = False
    push_refused: bool = False
    push_checks: list[str] = field(default_factory=list)
    tag_budgets: list[float | None] = field(default_factory=list)

    def push(self, ref: str, name: str) -> str:
        """Put a made-up image at ``ref`` (a tagged reference); return its digest."""
        parsed = ImageRef.parse(ref)
        digest = digest_of(name)
        key = (parsed.registry, parsed.repository)
        self.content.setdefault(key, set()).add(digest)
        self.tags.setdefault(key, {})[parsed.tag or "latest"] = digest
        return digest

    def _check(self) -> None:
        if self.down:
            raise RegistryUnavailable("fake registry is down; check that it runs")

    def resolve(self, ref: ImageRef) -> str:
        self._check()
        self.resolves += 1
        key = (ref.registry, ref.repository)
        if ref.digest:
            if ref.digest in self.content.get(key, set()):
                return ref.digest
        elif ref.tag in self.tags.get(key, {}):
            return self.tags[key][ref.tag or "latest"]
        raise ManifestUnknown(f"{ref} is not in the registry; check the name")

    def list_tags(self, repository: ImageRef) -> list[str]:
        self._check()
        return sorted(self.tags.get((repository.registry, repository.repository), {}))

    def poll_digest(self, ref: ImageRef) -> PolledDigest:
        """The polling capability (:class:`gate.ports.PollingRegistry`): ``resolve``."""
        return PolledDigest(self.resolve(ref))

    def poll_tags(self, repository: ImageRef, *, budget: float | None = None) -> list[str]:
        """``list_tags``, keeping the ``budget`` each listing was given in ``tag_budgets``."""
        self.tag_budgets.append(budget)
        return self.list_tags(repository)

    def check_push(self, target: ImageRef) -> None:
        self._check()
        self.push_checks.append(target.name)
        if self.push_refused:
            raise AuthenticationError(f"{target.registry} refused the credentials; check them")

    def copy(
        self,
        source: ImageRef,
        target: ImageRef,
        *,
        immutable_tags: Sequence[str] = (),
        tags: Sequence[str] = (),
        progress: ProgressCallback | None = None,
        resumed: bool = False,
    ) -> CopyReport:
        self._check()
        if resumed:
            self.resumed_copies.append(target.name)
        if self.push_refused:
            raise AuthenticationError(f"{target.registry} refused the credentials; check them")
        assert source.digest, "copies go by digest"
        if source.digest not in self.content.get((source.registry, source.repository), set()):
            raise ManifestUnknown(f"{source} is not in the registry")
        key = (target.registry, target.repository)
        existing = self.tags.setdefault(key, {})
        for tag in immutable_tags:
            if existing.get(tag, source.digest) != source.digest:
                raise Conflict(f"{target.name}:{tag} already points at another digest")
        self.copies.append((str(source), target.name))
        self.content.setdefault(key, set()).add(source.digest)
        for tag in (*immutable_tags, *tags):
            existing[tag] = source.digest
            self.writes.append((target.name, tag, source.digest))
        return CopyReport(digest=source.digest, tags=(*immutable_tags, *tags))

    def tag_of(self, ref: str) -> str | None:
        parsed = ImageRef.parse(ref)
        return self.tags.get((parsed.registry, parsed.repository), {}).get(parsed.tag or "latest")


@dataclass
class FakeValidator:
    """Decides by a callback on the request; counts runs; can act while 'running'."""

    decide: Callable[[ValidationRequest], Outcome] = lambda request: Outcome.PASSED
    during: Callable[[ValidationRequest], None] | None = None
    requests: list[ValidationRequest] = field(default_factory=list)

    resumed: list[Resume] = field(default_factory=list)

    def validate(
        self,
        request: ValidationRequest,
        on_started: Callable[[str], None],
        resume: Resume | None = None,
    ) -> ValidationResult:
        self.requests.append(request)
        if resume is not None:
            self.resumed.append(resume)
        run_id = resume.run_id if resume and resume.run_id else f"run{len(self.requests)}"
        if not (resume and resume.run_id):
            on_started(run_id)
        if self.during:
            self.during(request)
        outcome = self.decide(request)
        return ValidationResult(
            outcome=outcome, run_id=run_id, reason=f"fake says {outcome}", log="fake log"
        )


@dataclass
class FakeSecrets:
    """Secrets from a dict."""

    values: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> str:
        return self.values[name]


@dataclass
class FakeRequestQueue:
    """The worker's request queue, keeping what was put back as ``(body, delay_seconds)``."""

    sent: list[tuple[str, float]] = field(default_factory=list)
    down: bool = False

    def send_later(self, body: str, *, delay_seconds: float) -> None:
        if self.down:
            raise QueueError("fake queue is down; check that it runs")
        self.sent.append((body, delay_seconds))


@dataclass
class FakeStager:
    """Stages by saying which blobs it uploaded; notes what the registry had copied by then.

    ``blobs`` are reported as uploaded; ``hold`` (when set) keeps the staging running until it
    is set or stopped; ``fail`` raises instead of staging.
    """

    registry: FakeRegistry
    blobs: tuple[str, ...] = ("sha256:" + "1" * 64, "sha256:" + "2" * 64)
    hold: threading.Event | None = None
    fail: bool = False
    copied_when_done: list[list[tuple[str, str]]] = field(default_factory=list)
    unstaged: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)

    def stage(
        self,
        source: ImageRef,
        target: ImageRef,
        *,
        progress: ProgressCallback | None = None,
        on_uploaded: Callable[[str], None] | None = None,
    ) -> CopyReport:
        assert source.digest, "staging goes by digest"
        if self.fail:
            raise RegistryUnavailable("fake target is down for staging; check that it runs")
        for blob in self.blobs:
            if on_uploaded is not None:
                on_uploaded(blob)
        while self.hold is not None and not self.hold.wait(0.01):
            if progress is not None:
                progress(self.blobs[-1], 0, 1)  # raises once the staging is stopped
        time.sleep(0.05)  # still copying when the validation ends
        self.copied_when_done.append(list(self.registry.copies))
        return CopyReport(digest=source.digest, blobs_copied=len(self.blobs))

    def unstage(self, target: ImageRef, digests: Sequence[str]) -> Unstaged:
        self.unstaged.append((target.name, tuple(digests)))
        return Unstaged(deleted=len(digests))
