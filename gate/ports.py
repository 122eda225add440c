"""The ports: what the gate service needs from the outside world, as structural types.

Adapters in :mod:`gate.adapters` implement them (OCI registry over HTTP, podman validator,
SQLite ledger); Azure adapters implement the same protocols. Tests use fakes of these ports,
never mocks of SDK internals.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypedDict, Unpack

from gate.domain.records import (
    FIRST_PAGE,
    Claim,
    DownstreamRun,
    GateRecord,
    HistoryQuery,
    ValidationResult,
)
from gate.domain.ref import ImageRef
from gate.errors import RegistryUnavailable

if TYPE_CHECKING:  # annotations only: a command that reads the ledger loads none of them
    from gate.config.model import DownstreamTask, Rule
    from gate.domain.attestation import StoredAttestation
    from gate.domain.signatures import CosignSignature

ProgressCallback = Callable[[str, int, int], None]
"""``progress(what, done_bytes, total_bytes)``: called while blobs are copied."""
OnStarted = Callable[[str], None]
"""``on_started(run_id)``: a validator calls it as soon as the run has an ID."""


@dataclass(frozen=True)
class CopyReport:
    """What a copy did: how much moved, how much was already there or mounted."""

    digest: str
    manifests: int = 0
    blobs_copied: int = 0
    blobs_skipped: int = 0
    blobs_mounted: int = 0
    bytes_copied: int = 0
    tags: tuple[str, ...] = ()


class CopyOptions(TypedDict, total=False):
    """What :meth:`Registry.copy` takes besides source and target (each optional)."""

    immutable_tags: Sequence[str]
    tags: Sequence[str]
    progress: ProgressCallback | None
    # an earlier attempt of this promotion may have copied it already (a retry, a takeover):
    # an adapter whose copy is a request that cannot tell "done" from "refused" (ACR's NoForce
    # import) looks at the run-ID tags first and copies only what is missing
    resumed: bool


def copy_options(
    options: CopyOptions,
) -> tuple[Sequence[str], Sequence[str], ProgressCallback | None]:
    """``options`` with their defaults: (immutable_tags, tags, progress)."""
    return options.get("immutable_tags", ()), options.get("tags", ()), options.get("progress")


class Registry(Protocol):
    """Resolves, lists and copies images between registries, by digest."""

    def resolve(self, ref: ImageRef) -> str:
        """Return the digest ``ref`` points at now (one HEAD request; digest refs are checked)."""
        ...

    def list_tags(self, repository: ImageRef) -> list[str]:
        """Return every tag of ``repository`` (registry and repository of the ref; tag ignored)."""
        ...

    def check_push(self, target: ImageRef) -> None:
        """Check, writing nothing that stays, that ``target``'s repository takes a promotion.

        Called before a validation runs, so that refused credentials cost no validation:
        :class:`~gate.errors.AuthenticationError` when they are missing or refused, the
        registry errors otherwise. What an adapter can check without promoting is its own
        (see each adapter); what it cannot check, it says so and leaves to the promotion.
        """
        ...

    def copy(
        self, source: ImageRef, target: ImageRef, **options: Unpack[CopyOptions]
    ) -> CopyReport:
        """Copy ``source`` (which must carry a digest) into ``target``'s repository, whole.

        Content first (blobs, child manifests, then the manifest with its bytes unchanged), then
        ``immutable_tags`` (run-ID tags: one already at the same digest is accepted, a resumed
        promotion; one at another digest is :class:`~gate.errors.Conflict` before anything is
        written and before any of ``tags`` moves), then ``tags`` in order (moved if they
        exist). ``progress`` hears of the bytes of each blob the adapter moves itself. A
        source not pinned by digest is :class:`~gate.errors.InvalidReference`; the report
        counts what was written and names the tags in the order they were set.
        """
        ...


@dataclass(frozen=True)
class Unstaged:
    """What removing staged blobs did: how many were deleted, how many were left (for the
    registry's garbage collection), and why any were left ('' when none were)."""

    deleted: int = 0
    left: int = 0
    note: str = ""


class BlobStager(Protocol):
    """Copies an image's blobs into a target repository ahead of its promotion (an optional
    capability of a registry adapter that copies blobs itself; ACR import copies server-side).

    Staging writes no manifest and no tag: an image whose validation fails is never visible in
    the target, and its staged blobs are unreferenced, which is what a registry's garbage
    collection removes. The promotion that follows a pass finds the blobs there and copies
    only the manifests and tags.
    """

    def stage(
        self,
        source: ImageRef,
        target: ImageRef,
        *,
        progress: ProgressCallback | None = None,
        on_uploaded: Callable[[str], None] | None = None,
    ) -> CopyReport:
        """Copy every blob :meth:`Registry.copy` of ``source`` (pinned) would copy into
        ``target``'s repository, checked by digest as the copy does; no manifest, no tag.

        ``on_uploaded(digest)`` hears of each blob this call wrote that was not there before
        (copied or mounted), as soon as it is written, so that a staging stopped half-way still
        knows what it added. ``progress`` is called as a copy's is: raising from it stops the
        staging (the upload in flight is cancelled).
        """
        ...

    def unstage(self, target: ImageRef, digests: Sequence[str]) -> Unstaged:
        """Delete the blobs ``digests`` from ``target``'s repository where the registry allows
        it, within a bounded time; never raises for a registry that refuses or cannot be
        reached (what is left is for its garbage collection, and the result says so)."""
        ...


class RateLimited(RegistryUnavailable):
    """A registry asked the gate to stop for a while (``429``); ``retry_after`` in seconds."""

    def __init__(self, message: str, *, registry: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.registry = registry
        self.retry_after = retry_after


@dataclass(frozen=True)
class PolledDigest:
    """One poll HEAD: the digest, and why the registry's quota says to stop (empty: it does not)."""

    digest: str
    quota_spent: str = ""


class PollingRegistry(Protocol):
    """A registry a poll pass can ask without waiting out rate limits (an optional capability).

    Unlike :meth:`Registry.resolve` and :meth:`Registry.list_tags`, which wait out a ``429``
    within bounded retries, these raise :class:`RateLimited` at the first ``429`` so that the
    pass stops asking that registry and polls the others. Safe to call from several threads.
    """

    def poll_digest(self, ref: ImageRef) -> PolledDigest:
        """The digest tag ``ref`` points at now: one HEAD request, never a manifest GET."""
        ...

    def poll_tags(self, repository: ImageRef, *, budget: float | None = None) -> list[str]:
        """Every tag of ``repository``, following the tag list's pagination.

        No page is asked for once ``budget`` seconds have passed (None: the adapter's own
        bound); a poll pass gives what is left of ``poll.budget``, so an endless listing ends
        as an error within the pass. An adapter that lists in one request may ignore it.
        """
        ...


class ManifestReader(Protocol):
    """Reads manifests and small blobs (an optional capability of a registry adapter).

    What a rule with ``platforms:`` needs: the upstream image's index, to find each platform's
    child manifest, or a single manifest's config, to read its platform.
    """

    def fetch_manifest(self, repository: ImageRef, reference: str) -> tuple[bytes, str] | None:
        """The bytes and media type of manifest ``reference`` (checked against a digest),
        None if there is none."""
        ...

    def fetch_blob(self, repository: ImageRef, digest: str, *, limit: int = 4 << 20) -> bytes:
        """A small blob of ``repository``, checked against ``digest``."""
        ...


@dataclass(frozen=True)
class ValidationRequest:
    """One validation run: the task file of a rule's folder against a digest-pinned image.

    ``key`` names the validation durably (the gate record's id) and ``attempt`` counts the
    workers that took it on (1, then 2 for a worker that resumed it, ...): a validator whose
    runs outlive the worker (ACR) derives a deterministic run name from both, so a later
    attempt finds the run of an earlier one by name. An empty ``key`` leaves nothing to find.
    ``platform`` (``os/arch[/variant]``) is the platform the run executes on: every step, as
    on an agent of that platform; empty: the validator's default platform.
    ``hand_over`` counts the downstream runs on this machine that build on the candidate once
    it is promoted: a validator with a local image store keeps a passed candidate there for
    them (the last one removes it), so that it is not downloaded twice; others ignore it.
    """

    image: ImageRef
    folder: Path
    task_file: str
    values: dict[str, str] = field(default_factory=dict)
    secret_values: frozenset[str] = frozenset()
    timeout_seconds: float = 600.0
    run_registry: str = ""
    key: str = ""
    attempt: int = 1
    platform: str = ""
    hand_over: int = 0


@dataclass(frozen=True)
class Resume:
    """A validation an earlier worker started and did not finish.

    ``run_id`` is the run it recorded, if it got that far; ``since`` is when it was about to
    start one. Without a ``run_id``, a validator whose runs live elsewhere (ACR) looks for the
    run an earlier attempt of the same request ``key`` started and never recorded.
    """

    run_id: str | None
    since: datetime


class Validator(Protocol):
    """Runs a validation and reports pass, reject (the image is bad) or fail (we could not tell)."""

    def validate(
        self, request: ValidationRequest, on_started: OnStarted, resume: Resume | None = None
    ) -> ValidationResult:
        """Run the validation; call ``on_started(run_id)`` as soon as the run has an ID.

        With ``resume``, follow that earlier run to its end instead of starting another when the
        validator can (ACR runs outlive our process); a validator whose runs died with the
        process that started them (local containers) starts a new run.
        """
        ...


class Ledger(Protocol):
    """Durable gate records: the audit trail and the (rule, digest) dedupe."""

    def claim(
        self,
        record: GateRecord,
        *,
        force: bool,
        lease_seconds: float,
        holder: str = "",
        start: bool = True,
    ) -> Claim:
        """Atomically decide whether ``record`` may gate its (rule, digest), and insert it if so.

        Looking at the (rule, digest)'s records, newest first (failed ones never block), as
        :func:`gate.domain.records.claim_step` decides:

        * ``record`` itself, queued and held by none (admitted, or re-queued): with ``start``,
          take it (``attempts + 1``, leased to ``holder``) and return it acquired;
        * a promoted or rejected record: return it, not acquired (``force`` skips these);
        * an in-progress record whose lease is live: return it, not acquired (even with
          ``force``: someone is working on it);
        * an in-progress record whose lease lapsed: take it over (leased to ``holder`` for
          ``lease_seconds``, ``attempts + 1``; queued for a worker when not ``start``) and
          return it acquired and ``resumed``;
        * none of these: insert ``record`` (``attempts = 1`` and leased to ``holder``, or 0 and
          queued when not ``start``) and return it acquired.
        """
        ...

    def renew(self, record_id: str, holder: str, until: datetime) -> bool:
        """Move the lease of an in-progress record to ``until``, if ``holder`` still holds it.

        One conditional write. False when the record is final or another worker holds it (its
        lease lapsed and it was taken over): the caller stops and writes no verdict. An
        ``until`` in the past gives the lease up. :class:`~gate.errors.NotFound` if there is no
        such record.
        """
        ...

    def save(self, record: GateRecord) -> None:
        """Persist a newer version of a record already claimed or added.

        Conditional on the lease: :class:`~gate.domain.records.LeaseLost` if another worker than the
        ``record``'s ``lease_holder`` holds it now; the stored lease is kept, never shortened.
        """
        ...

    def add(self, record: GateRecord) -> None:
        """Insert a record that takes no claim (a rollback; a failure to resolve a digest)."""
        ...

    def get(self, record_id: str) -> GateRecord:
        """Return one record; :class:`~gate.errors.NotFound` if there is none."""
        ...

    def history(self, query: HistoryQuery = FIRST_PAGE) -> list[GateRecord]:
        """Return the records ``query`` selects, newest first (see :class:`HistoryQuery`).

        Records come without their logs (``log`` is empty; :meth:`get` reads it): a page of
        history never reads validation logs.
        """
        ...

    def prune(self, *, created_before: datetime, keep: Callable[[GateRecord], bool]) -> int:
        """Delete final records created before ``created_before`` that ``keep`` declines.

        Their logs go with them, and a (rule, digest) forgets them. Records in progress are
        never deleted, whatever ``keep`` says. ``keep`` sees records without their logs.
        Returns how many records were deleted.
        """
        ...

    def decided(self, rule: str, digest: str) -> GateRecord | None:
        """Return the promoted or rejected record of (rule, digest), if any."""
        ...


class DownstreamRunner(Protocol):
    """Starts a rule's downstream task after a promotion.

    An ACR task is queued and not waited for; a local task file runs to its end, and the run
    it returns carries its outcome.
    """

    def start(self, task: DownstreamTask, image: ImageRef) -> DownstreamRun:
        """Queue one run of ``task`` for the promoted ``image`` (target repository @ digest).

        Returns the run it got; raises a :class:`~gate.errors.GateError` when it could not be
        queued (the caller records that; the promotion stands).
        """
        ...


class Secrets(Protocol):
    """Reads secret values by name (registry passwords, task secrets). Values are never logged."""

    def get(self, name: str) -> str:
        """Return the secret ``name``; :class:`~gate.errors.ConfigError` if it does not exist."""
        ...


class SecretUris(Protocol):
    """Names a secret by a URI that a validation run reads itself (an optional capability of a
    secret store: Key Vault), so that its value never passes through the gate."""

    def secret_uri(self, name: str) -> str:
        """The URI of secret ``name`` (no value is read)."""
        ...


class Attester(Protocol):
    """Writes the gate's signed evidence: a promotion, and a stable tag moved off a digest
    (:class:`gate.domain.attestation.Attestor`)."""

    def promotion(self, rule: Rule, image: ImageRef, record: GateRecord) -> str:
        """Attest that ``image`` (target repository @ digest) passed ``record``'s validation;
        returns the attestation's digest."""
        ...

    def demotion(self, image: ImageRef, record: GateRecord, reason: str) -> str:
        """Attest that ``image`` is no longer the gate's verdict for its stable tag; returns the
        attestation's digest."""
        ...


class AttestationStore(Protocol):
    """Attaches signed evidence to manifests in a registry, and finds it again."""

    def attach(self, subject: ImageRef, bundle: bytes, *, predicate_type: str, created: str) -> str:
        """Store ``bundle`` as an artifact whose subject is ``subject`` (repository @ digest).

        Returns the artifact manifest's digest; raises a :class:`~gate.errors.GateError` when it
        could not be written (the caller treats that as a failed promotion).
        """
        ...

    def find(self, subject: ImageRef) -> list[StoredAttestation]:
        """Every gate attestation attached to ``subject`` (repository @ digest), unverified."""
        ...


class Signer(Protocol):
    """Signs DSSE envelopes with the gate's attestation key (a key file or a Key Vault key)."""

    @property
    def key_hint(self) -> str:
        """The bundle's key hint: base64 of the SHA-256 of the public key's DER, as cosign and
        sigstore-go write it, for verifiers that look keys up by hint."""
        ...

    def sign_dsse(self, payload_type: str, payload: bytes) -> dict[str, object]:
        """The DSSE envelope (JSON object) of ``payload``, signed over its PAE."""
        ...


class SignatureStore(Protocol):
    """Finds the cosign signatures stored beside an image (upstream), unverified."""

    def cosign_signatures(self, image: ImageRef) -> list[CosignSignature]:
        """Every signature layer of ``image`` (pinned by digest); [] when it has none."""
        ...

    def public_keys(self, sources: Sequence[str]) -> list[Any]:
        """A rule's signer keys (``cryptography`` ECDSA P-256 public keys) from PEM files or
        Key Vault key URIs; :class:`~gate.errors.ConfigError` for one that cannot be read or is
        not such a key."""
        ...


class RequestQueue(Protocol):
    """The queue the worker reads (``gate-requests``), for a request to be delivered later."""

    def send_later(self, body: str, *, delay_seconds: float) -> None:
        """Put ``body`` on the queue, invisible for ``delay_seconds`` (whole seconds, at least
        0, at most the queue's 7-day bound); raises a retryable
        :class:`~gate.errors.InfrastructureError` when the queue cannot be reached."""


class ImageSigner(Protocol):
    """Signs bytes with the gate's signature key (not the attestation key), as cosign signs a
    simple-signing payload: ECDSA P-256 over SHA-256 of the bytes, DER-encoded."""

    @property
    def verifying_key(self) -> Any:
        """The public half (a ``cryptography`` ECDSA P-256 public key)."""
        ...

    def sign_payload(self, payload: bytes) -> bytes:
        """The DER ECDSA signature of ``payload``."""
        ...


class SignatureWriter(Protocol):
    """Writes and removes cosign signatures beside an image in the target repository."""

    def signatures(self, image: ImageRef) -> list[CosignSignature]:
        """Every signature layer of ``image`` (pinned), with its layer digest; [] when none."""
        ...

    def add_signature(self, image: ImageRef, payload: bytes, signature: str) -> str:
        """Append one signature layer (``payload`` and its base64 ``signature``); returns the
        signature manifest's digest."""
        ...

    def remove_signatures(self, image: ImageRef, layers: Sequence[str]) -> str:
        """Remove the layers ``layers`` (digests) from ``image``'s signature manifest, deleting
        it when none is left; returns what was done, in words. Raises a
        :class:`~gate.errors.GateError` when the registry refuses."""
        ...


class PromotionSigner(Protocol):
    """The gate's signature of a digest it currently approves
    (:class:`gate.usecases.signature.Signatory`)."""

    def sign(self, image: ImageRef, record: GateRecord) -> str:
        """Sign ``image`` (target repository @ digest) unless the gate's key already has; returns
        what was done, in words."""
        ...

    def unsign(self, image: ImageRef) -> str:
        """Remove every signature of ``image`` by the gate's key; returns what was done."""
        ...
