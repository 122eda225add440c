"""Promotion evidence: a signed in-toto attestation on every promoted digest, and its check.

What is signed: an in-toto Statement v1 (https://github.com/in-toto/attestation/blob/main/spec/
v1/statement.md) whose subject is the promoted manifest (target repository, sha256 digest) and
whose predicate is a SLSA Verification Summary v1 (https://slsa.dev/spec/v1.0/verification_summary):
``verifier.id``, ``timeVerified``, ``resourceUri`` (the subject as a ``pkg:oci`` Package URL),
``policy`` (a ``gate-rule:`` URI and, for a promotion, the validation folder's content digest),
``verificationResult`` (``PASSED``; ``FAILED`` once the digest is demoted or rolled back),
``verifiedLevels`` (``FAILED`` with a FAILED result, as VSA v1.0 prescribes) and ``slsaVersion``,
plus the gate's own object under the URI :data:`EXTENSION_FIELD` (upstream, rule, run id, record
id, task file digest, validation log digest, stable tag, status and reason): VSA v1.0 lets
producers add extension fields named by URIs, and consumers ignore fields they do not know.
Attestations written before that object was renamed hold it under ``gate``; :func:`verify` reads
both.

How it is wrapped: a DSSE envelope (https://github.com/secure-systems-lab/dsse/blob/master/
envelope.md, payload type ``application/vnd.in-toto+json``) inside a Sigstore bundle v0.3
(``application/vnd.dev.sigstore.bundle.v0.3+json``), stored as cosign's bundle layout
(sigstore/cosign ``specs/BUNDLE_SPEC.md``): an OCI 1.1 manifest whose ``subject`` is the promoted
manifest. The store adapter (:mod:`gate.adapters.registry.referrers`) finds and writes it.

The statement is built with ``in-toto-attestation`` and signed with ``securesystemslib``'s DSSE
(imported where used: the gate's import stays light when no attestation is configured).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gate.domain.durations import AGE, DurationError, parse_duration
from gate.domain.ref import ImageRef
from gate.errors import UsageError

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/verification_summary/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
PASSED = "PASSED"
FAILED = "FAILED"
# VSA v1 requires verifiedLevels; the gate checks a validation run, not SLSA build provenance,
# so it claims the level that promises nothing about the build (SLSA v1.0 "Build L0").
_LEVELS = ("SLSA_BUILD_LEVEL_0",)
# VSA v1.0: verifiedLevels holds "FAILED" if policy verification failed
_FAILED_LEVELS = (FAILED,)
SLSA_VERSION = "1.0"
# VSA v1.0 parsing rules: producers MAY add extension fields using field names that are URIs. The
# urn: namespace is the one the default verifier.id uses.
EXTENSION_FIELD = "urn:gated-import-gate:evidence:v1"
# what attestations written before the rename call it; verify() still reads them
LEGACY_EXTENSION_FIELD = "gate"
POLICY_SCHEME = "gate-rule"


@dataclass(frozen=True)
class StoredAttestation:
    """One attestation found attached to a manifest: where it is and what it holds.

    ``digest`` is the attestation manifest's; ``subject_digest`` what its ``subject`` names;
    ``bundle`` the stored bytes (a Sigstore bundle), unverified.
    """

    digest: str
    subject_digest: str
    bundle: bytes
    created: str = ""


def parse_age(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``2w`` or ``45s`` as a span; :class:`UsageError` otherwise."""
    try:
        seconds = parse_duration(text, AGE)
    except DurationError:
        raise UsageError(
            f"'{text}' is not an age; write a positive number and a unit: 30d, 12h"
        ) from None
    return timedelta(seconds=seconds)


def folder_digest(folder: Path) -> str:
    """The sha256 of a validation folder's content: every file's path and sha256, sorted.

    Line ``<relative posix path> NUL <sha256 hex> LF`` per regular file; symlinks and other
    special files are named by their kind, so changing one still changes the digest.
    """
    lines = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_symlink():
            lines.append(f"{rel}\0link:{path.readlink().as_posix()}\n")
        elif path.is_file():
            lines.append(f"{rel}\0{hashlib.sha256(path.read_bytes()).hexdigest()}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def now_text(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _pct(text: str, safe: str = "") -> str:
    """``text`` percent-encoded per RFC 3986 2.1 (UTF-8), keeping unreserved characters and
    ``safe``; written here because the domain imports no ``urllib`` (a network package)."""
    keep = _UNRESERVED | frozenset(safe.encode())
    return "".join(chr(b) if b in keep else f"%{b:02X}" for b in text.encode())


def policy_uri(rule: str, task: str = "") -> str:
    """The ``policy.uri`` of a rule's verdict: ``gate-rule:<rule>[/<task file>]``.

    VSA v1.0 requires a ``uri`` in ``policy``; rule and task are percent-encoded so that any rule
    name gives a valid RFC 3986 URI. A demotion names the rule alone: it withdraws the verdict,
    no task ran.
    """
    uri = f"{POLICY_SCHEME}:{_pct(rule or 'unnamed', safe='')}"
    return f"{uri}/{_pct(task, safe='/')}" if task else uri


def resource_uri(image: ImageRef) -> str:
    """``image`` (which carries its digest) as a Package URL of type ``oci``, an RFC 3986 URI.

    in-toto's ResourceURI recommends Package URLs; the purl ``oci`` type names the image by the
    last path segment of its repository, versions it by the digest (its ``:`` percent-encoded)
    and says where it is in ``repository_url`` (registry host and repository, no scheme), as in
    ``pkg:oci/node@sha256%3A...?repository_url=registry.example/base/node``.
    """
    assert image.digest is not None
    last = image.repository.rsplit("/", 1)[-1]
    return (
        f"pkg:oci/{_pct(last.lower(), safe='')}@{_pct(image.digest, safe='')}"
        f"?repository_url={_pct(image.name, safe='/:')}"
    )


def extension(predicate: dict[str, Any]) -> dict[str, Any]:
    """The gate's own object in a VSA predicate, under its URI or (older attestations) ``gate``;
    empty if there is none."""
    for key in (EXTENSION_FIELD, LEGACY_EXTENSION_FIELD):
        found = predicate.get(key)
        if isinstance(found, dict):
            return found
    return {}


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


@dataclass(frozen=True)
class Evidence:
    """What one attestation says about one digest in the target repository."""

    subject: ImageRef
    result: str
    status: str
    reason: str
    rule: str
    record_id: str
    run_id: str | None
    stable_tag: str
    upstream: str = ""
    upstream_digest: str = ""
    # empty: the rule's own policy URI (policy_uri(rule))
    policy_uri: str = ""
    policy_digest: str = ""
    task_digest: str = ""
    log_sha256: str = ""
    time: datetime = field(default_factory=lambda: datetime.now(UTC))


def statement(evidence: Evidence, verifier_id: str) -> bytes:
    """The in-toto Statement v1 (JSON bytes) with the VSA v1 predicate for ``evidence``."""
    from google.protobuf import json_format  # type: ignore[import-untyped]
    from in_toto_attestation.v1.resource_descriptor import (  # type: ignore[import-untyped]
        ResourceDescriptor,
    )
    from in_toto_attestation.v1.statement import Statement  # type: ignore[import-untyped]

    import gate

    subject = evidence.subject
    assert subject.digest is not None
    algorithm, hexdigest = subject.digest.split(":", 1)
    policy: dict[str, Any] = {"uri": evidence.policy_uri or policy_uri(evidence.rule)}
    if evidence.policy_digest:
        # a DigestSet holds real digests only: a demotion has no policy content to digest
        policy["digest"] = {"sha256": evidence.policy_digest}
    predicate: dict[str, Any] = {
        "verifier": {"id": verifier_id, "version": {"gated-import-gate": gate.__version__}},
        "timeVerified": now_text(evidence.time),
        "resourceUri": resource_uri(subject),
        "policy": policy,
        "verificationResult": evidence.result,
        "verifiedLevels": list(_LEVELS if evidence.result == PASSED else _FAILED_LEVELS),
        "slsaVersion": SLSA_VERSION,
        EXTENSION_FIELD: {
            "status": evidence.status,
            "reason": evidence.reason,
            "rule": evidence.rule,
            "recordId": evidence.record_id,
            "runId": evidence.run_id or "",
            "stableTag": evidence.stable_tag,
            "upstream": evidence.upstream,
            "upstreamDigest": evidence.upstream_digest,
            "taskFileDigest": {"sha256": evidence.task_digest},
            "validationLogDigest": {"sha256": evidence.log_sha256},
        },
    }
    made = Statement(
        [ResourceDescriptor(name=subject.name, digest={algorithm: hexdigest}).pb],
        PREDICATE_TYPE,
        predicate,
    )
    made.validate()
    body = json_format.MessageToDict(made.pb)
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def public_key_hint(public_key: Any) -> str:
    """The bundle's key hint of a ``cryptography`` public key: base64 of the SHA-256 of its DER
    SubjectPublicKeyInfo.

    protobuf-specs (``sigstore_common.proto``, ``PublicKeyIdentifier.hint``) recommends deriving
    the hint from the key as RFC 6962 section 3.2 does (SHA-256 of the DER key); cosign
    (``internal/key/svkeypair.go``, ``cmd/cosign/cli/verify/verify_bundle.go``) and sigstore-go
    (``pkg/sign/keys.go``) write exactly this, base64-encoded. The same for both signers, so a
    verifier holding the public key can match it whatever holds the private half.
    """
    import base64
    import hashlib

    from cryptography.hazmat.primitives import serialization

    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def bundle(envelope: dict[str, Any], key_hint: str) -> bytes:
    """A Sigstore bundle v0.3 around a DSSE envelope signed by a public key (no log entries).

    Shape per sigstore/protobuf-specs ``sigstore_bundle.proto`` (``verificationMaterial.publicKey``
    with a ``hint``; ``dsseEnvelope``). Without transparency-log entries a cosign verifier needs
    its "ignore the log" option (docs/guide/evidence.md). The envelope's signatures carry an
    empty ``keyid`` beside this hint, the pair cosign and sigstore-go write (sigstore-go
    ``pkg/sign/content.go`` and ``pkg/sign/signer.go``). ``sigstore_bundle.proto`` asks the
    hint and the envelope's key hint to be the same; no keyid can be both that and accepted, as
    go-securesystemslib skips a set ``keyid`` other than the key's SSH fingerprint
    (``dsse/verify.go``), so the gate follows cosign, whose ``bundle inspect`` warns of a
    mismatch only when the ``keyid`` is set.
    """
    body = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": key_hint}, "tlogEntries": []},
        "dsseEnvelope": envelope,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


# -- verification ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """What ``gate verify`` concluded about one digest."""

    image: str
    digest: str
    verified: bool
    reason: str
    attestation: str | None = None
    time_verified: str | None = None
    predicate: dict[str, Any] | None = None
    rejected: tuple[str, ...] = ()
    # the gate's promotion signature: True signed, False not, None not checked (no key)
    signed: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        """The ``gate verify --json`` object."""
        return {
            "image": self.image,
            "digest": self.digest,
            "verified": self.verified,
            "reason": self.reason,
            "attestation": self.attestation,
            "time_verified": self.time_verified,
            "predicate": self.predicate,
            "rejected": list(self.rejected),
            "signed": self.signed,
        }

    def with_signature(self, signed: bool) -> Verdict:
        """This verdict with the gate's promotion signature taken into account: verified only
        when the newest attestation says PASSED *and* the digest carries the gate's signature;
        a disagreement between the two is explained."""
        from dataclasses import replace

        result = (self.predicate or {}).get("verificationResult")
        if signed and self.verified:
            return replace(self, signed=True, reason=self.reason + "; signed by the gate")
        if signed and result is not None and result != PASSED:
            reason = (
                f"signed by the gate, but {self.reason}: the signature should have been "
                "removed when the digest was demoted or rolled back (see the record of that "
                "move); do not admit it"
            )
        elif signed:
            reason = f"signed by the gate, but {self.reason}"
        elif self.verified:
            reason = (
                f"{self.reason}, but the digest carries no gate signature: demoted or rolled "
                "back, or not promoted by this gate (or promoted before it had a signature key)"
            )
        else:
            reason = f"{self.reason}; and the digest carries no gate signature"
        return replace(self, verified=False, signed=signed, reason=reason)


def load_public_key(pem: bytes, where: str) -> Any:
    """A PEM public key as a ``securesystemslib`` key; :class:`UsageError` if it is not one."""
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(pem)
    except ValueError:
        raise UsageError(
            f"{where} is not a PEM public key; pass the .pub file 'gate keygen' wrote"
        ) from None
    return verification_key(key, where)


def verification_key(key: Any, where: str) -> Any:
    """A ``cryptography`` public key (a PEM file's, a Key Vault key's) as a verification key;
    :class:`UsageError` unless it is ECDSA P-256."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from securesystemslib.signer import SSlibKey  # type: ignore[attr-defined]

    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise UsageError(f"{where} is not an ECDSA P-256 public key, the gate's key type")
    return SSlibKey.from_crypto(key, scheme="ecdsa-sha2-nistp256")


def _dsse_verifies(envelope: Any, keys: Sequence[Any]) -> bool:
    """Whether one signature of ``envelope`` verifies with one of ``keys``.

    A signature with a ``keyid`` is tried with the key of that id only (bundles written before
    the gate left it empty carry securesystemslib's key id); one without is tried with every key,
    as the DSSE spec and go-securesystemslib do. securesystemslib's own ``Envelope.verify`` would
    skip it, as it matches ids only.
    """
    from securesystemslib.exceptions import UnverifiedSignatureError
    from securesystemslib.signer import Signature  # type: ignore[attr-defined]

    pae = envelope.pae()
    for signature in envelope.signatures.values():
        for key in keys:
            if signature.keyid and signature.keyid != key.keyid:
                continue
            try:
                key.verify_signature(Signature(key.keyid, signature.signature), pae)
            except UnverifiedSignatureError:
                continue
            return True
    return False


def _check_one(
    found: StoredAttestation, digest: str, repository: str, resource: str, keys: Sequence[Any]
) -> dict[str, Any]:
    """The predicate of an attestation that holds; ValueError says what is wrong with it."""
    from securesystemslib.dsse import Envelope

    if found.subject_digest != digest:
        raise ValueError(f"its manifest's subject is {found.subject_digest}, not {digest}")
    try:
        body = json.loads(found.bundle)
        raw = body["dsseEnvelope"]
        # a copy: from_dict rewrites the signature objects it is given
        envelope = Envelope.from_dict(json.loads(json.dumps(raw)))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"it is not a Sigstore bundle with a DSSE envelope ({exc})") from None
    if envelope.payload_type != PAYLOAD_TYPE:
        raise ValueError(f"its payload type is {envelope.payload_type!r}, not {PAYLOAD_TYPE}")
    if not _dsse_verifies(envelope, keys):
        raise ValueError("its signature does not verify with the given key")
    try:
        stmt = json.loads(envelope.payload)
    except ValueError:
        raise ValueError("its signed payload is not JSON") from None
    if not isinstance(stmt, dict) or stmt.get("_type") != STATEMENT_TYPE:
        raise ValueError("its payload is not an in-toto Statement v1")
    if stmt.get("predicateType") != PREDICATE_TYPE:
        raise ValueError(f"its predicate type is {stmt.get('predicateType')!r}")
    algorithm, hexdigest = digest.split(":", 1)
    subjects = stmt.get("subject") or []
    if not any(
        isinstance(s, dict)
        and (s.get("digest") or {}).get(algorithm) == hexdigest
        and s.get("name") == repository
        for s in subjects
    ):
        raise ValueError(f"its statement is about another subject, not {repository}@{digest}")
    predicate = stmt.get("predicate")
    if not isinstance(predicate, dict) or not isinstance(predicate.get("timeVerified"), str):
        raise ValueError("its predicate has no timeVerified")
    # VSA v1.0 "How to verify": the resourceUri must be the expected one; attestations written
    # before it became a Package URL hold <repository>@<digest>
    named = predicate.get("resourceUri")
    if named is not None and named not in (resource, f"{repository}@{digest}"):
        raise ValueError(f"its resourceUri is {named!r}, not {resource}")
    return predicate


def verify(
    image: ImageRef,
    found: Sequence[StoredAttestation],
    keys: Sequence[Any],
    *,
    max_age: timedelta | None = None,
    now: datetime | None = None,
) -> Verdict:
    """Judge ``image`` (which carries its digest) by the newest attestation that verifies.

    Every attestation is checked (signature with one of ``keys``, manifest subject, statement
    subject, predicate type, ``resourceUri`` in either form); of those that pass, the one with
    the latest ``timeVerified`` decides: it must say ``PASSED`` and be younger than ``max_age``.
    """
    assert image.digest is not None
    digest = image.digest
    resource = resource_uri(image)
    valid: list[tuple[datetime, StoredAttestation, dict[str, Any]]] = []
    rejected: list[str] = []
    for item in found:
        try:
            predicate = _check_one(item, digest, image.name, resource, keys)
            valid.append((_parse_time(predicate["timeVerified"]), item, predicate))
        except ValueError as exc:
            rejected.append(f"{item.digest}: {exc}")

    def verdict(verified: bool, reason: str, chosen: tuple[Any, ...] | None = None) -> Verdict:
        if chosen is None:
            return Verdict(str(image), digest, verified, reason, rejected=tuple(rejected))
        _, item, predicate = chosen
        return Verdict(
            str(image),
            digest,
            verified,
            reason,
            attestation=item.digest,
            time_verified=predicate["timeVerified"],
            predicate=predicate,
            rejected=tuple(rejected),
        )

    if not valid:
        if not found:
            return verdict(False, "no attestation of the gate is attached")
        return verdict(False, "no attached attestation verifies: " + "; ".join(rejected))
    newest = max(valid, key=lambda v: v[0])
    when, _, predicate = newest
    gate_part = extension(predicate)
    if predicate.get("verificationResult") != PASSED:
        reason = (
            f"the newest attestation ({predicate['timeVerified']}) says "
            f"{predicate.get('verificationResult')}: {gate_part.get('status', '')}"
            f" ({gate_part.get('reason', '')})"
        )
        return verdict(False, reason, newest)
    age = (now or datetime.now(UTC)) - when
    if max_age is not None and age > max_age:
        reason = (
            f"the newest attestation is from {predicate['timeVerified']}, older than the "
            f"allowed {max_age}; re-gate the image or allow an older one (--max-age)"
        )
        return verdict(False, reason, newest)
    verifier = predicate.get("verifier")
    who = verifier.get("id", "?") if isinstance(verifier, dict) else "?"
    reason = f"PASSED by {who} at {predicate['timeVerified']}"
    if gate_part.get("runId"):
        reason += f" (validation run {gate_part['runId']}, record {gate_part.get('recordId')})"
    return verdict(True, reason, newest)
