"""Every attestation the gate writes (promotion, demotion, rollback) read field by field against
SLSA Verification Summary v1.0 (https://slsa.dev/spec/v1.0/verification_summary) and the in-toto
Statement v1 and field types it builds on (https://github.com/in-toto/attestation/tree/main/
spec/v1). The checks are written from those texts, not from the gate's code, so a change that
breaks the spec fails here even when the gate's own verify() still accepts it."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gate.domain import attestation as attest
from gate.domain.attestation import (
    FAILED,
    PASSED,
    Evidence,
    StoredAttestation,
    statement,
    verify,
)
from gate.domain.ref import ImageRef
from gate.usecases.attestation import Attestor

DIGEST = "sha256:" + "ab" * 32
UPSTREAM_DIGEST = "sha256:" + "cd" * 32
WHEN = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)

# RFC 3986 appendix B's regular expression splits any URI reference; a URI (not a relative
# reference) has a scheme, and section 3.1 says what a scheme is.
_URI_PARTS = re.compile(r"^(([^:/?#]+):)?(//([^/?#]*))?([^?#]*)(\?([^#]*))?(#(.*))?$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*$")
# the characters RFC 3986 allows at all (unreserved, reserved, and "%" of a pct-encoding)
_URI_CHARS = re.compile(r"^[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]*$")
_PCT = re.compile(r"%(?![0-9A-Fa-f]{2})")
# RFC 3339 date-time (section 5.6); in-toto's Timestamp adds: in UTC, "Z"
_RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
# in-toto DigestSet: lowercase hex for the sha2 family
_HEX = {"sha256": 64, "sha512": 128, "sha384": 96, "sha224": 56}
# VSA v1.0 SlsaResult: these, or custom values that do not start with SLSA_
_SLSA_RESULTS = {f"SLSA_BUILD_LEVEL_{n}" for n in range(4)} | {FAILED}
VSA_FIELDS = {
    "verifier",
    "timeVerified",
    "resourceUri",
    "policy",
    "inputAttestations",
    "verificationResult",
    "verifiedLevels",
    "dependencyLevels",
    "slsaVersion",
}


def is_uri(text: object) -> bool:
    """An absolute RFC 3986 URI: a scheme, allowed characters only, well-formed escapes, and the
    scheme and authority in lowercase (in-toto's case normalization, RFC 3986 6.2.2.1)."""
    if not isinstance(text, str) or not text or not _URI_CHARS.match(text) or _PCT.search(text):
        return False
    parts = _URI_PARTS.match(text)
    assert parts is not None  # the expression matches every string
    scheme, authority = parts.group(2), parts.group(4) or ""
    return (
        bool(scheme and _SCHEME.match(scheme) and scheme == scheme.lower())
        and authority == authority.lower()
    )


def check_digest_set(digests: object, where: str) -> None:
    assert isinstance(digests, dict) and digests, f"{where}: a DigestSet is a non-empty map"
    for algorithm, value in digests.items():
        assert isinstance(algorithm, str) and isinstance(value, str), where
        if algorithm in _HEX:
            assert re.fullmatch(f"[0-9a-f]{{{_HEX[algorithm]}}}", value), (
                f"{where}: {algorithm} must be lowercase hex of its length, not {value!r}"
            )


def check_resource_descriptor(descriptor: object, where: str) -> None:
    """in-toto ResourceDescriptor: at least one of uri, digest, content; uri a ResourceURI,
    digest a DigestSet."""
    assert isinstance(descriptor, dict), f"{where} is a ResourceDescriptor object"
    assert {"uri", "digest", "content"} & descriptor.keys(), f"{where}: uri, digest or content"
    if "uri" in descriptor:
        assert is_uri(descriptor["uri"]), f"{where}.uri is not a URI: {descriptor['uri']!r}"
    if "digest" in descriptor:
        check_digest_set(descriptor["digest"], f"{where}.digest")


def check_vsa(body: Mapping[str, Any]) -> None:
    """Assert that ``body`` (a parsed statement) is an in-toto Statement v1 carrying a
    conforming SLSA VSA v1.0 predicate."""
    # -- in-toto Statement v1
    assert body["_type"] == "https://in-toto.io/Statement/v1"
    subjects = body["subject"]
    assert isinstance(subjects, list) and subjects, "subject: a non-empty list"
    for i, subject in enumerate(subjects):
        assert isinstance(subject, dict)
        check_digest_set(subject.get("digest"), f"subject[{i}].digest")
    assert body["predicateType"] == "https://slsa.dev/verification_summary/v1"
    predicate = body["predicate"]
    assert isinstance(predicate, dict)

    # -- verifier (object, required); verifier.id (TypeURI, required)
    verifier = predicate["verifier"]
    assert isinstance(verifier, dict)
    assert is_uri(verifier.get("id")), f"verifier.id is not a URI: {verifier.get('id')!r}"
    version = verifier.get("version", {})
    assert isinstance(version, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in version.items()
    ), "verifier.version: map string -> string"

    # -- timeVerified (Timestamp, required in v1.0): RFC 3339, UTC "Z"
    when = predicate["timeVerified"]
    assert isinstance(when, str) and _RFC3339_UTC.match(when), f"timeVerified: {when!r}"
    datetime.fromisoformat(when.replace("Z", "+00:00"))

    # -- resourceUri (ResourceURI, required)
    assert is_uri(predicate["resourceUri"]), f"resourceUri: {predicate['resourceUri']!r}"

    # -- policy (ResourceDescriptor, required): MUST contain a uri
    policy = predicate["policy"]
    check_resource_descriptor(policy, "policy")
    assert "uri" in policy, "policy MUST contain a uri"

    # -- inputAttestations (optional): ResourceDescriptors, each MUST contain a digest
    if "inputAttestations" in predicate:
        inputs = predicate["inputAttestations"]
        assert isinstance(inputs, list)
        for i, entry in enumerate(inputs):
            check_resource_descriptor(entry, f"inputAttestations[{i}]")
            assert "digest" in entry, f"inputAttestations[{i}] MUST contain a digest"

    # -- verificationResult (required): PASSED or FAILED
    result = predicate["verificationResult"]
    assert result in (PASSED, FAILED), f"verificationResult: {result!r}"

    # -- verifiedLevels (SlsaResult[], required): the highest level per track, or FAILED if
    # policy verification failed; at most one level per SLSA track
    levels = predicate["verifiedLevels"]
    assert isinstance(levels, list) and all(isinstance(v, str) for v in levels)
    for level in levels:
        assert level in _SLSA_RESULTS or not level.startswith("SLSA_"), (
            f"verifiedLevels: custom values MUST NOT start with SLSA_: {level!r}"
        )
    tracks = [v.rsplit("_LEVEL_", 1)[0] for v in levels if "_LEVEL_" in v]
    assert len(tracks) == len(set(tracks)), f"verifiedLevels: one level per track: {levels}"
    if result == FAILED:
        assert levels == [FAILED], f"a FAILED result has verifiedLevels ['FAILED'], not {levels}"
    else:
        assert levels and FAILED not in levels, f"a PASSED result names levels: {levels}"

    # -- dependencyLevels (optional): map SlsaResult -> non-negative int
    if predicate.get("dependencyLevels") is not None:
        deps = predicate["dependencyLevels"]
        assert isinstance(deps, dict)
        for level, count in deps.items():
            assert isinstance(level, str) and (
                level in _SLSA_RESULTS or not level.startswith("SLSA_")
            )
            assert isinstance(count, int) and not isinstance(count, bool) and count >= 0

    # -- slsaVersion (optional): <MAJOR>.<MINOR>
    if "slsaVersion" in predicate:
        assert re.fullmatch(r"\d+\.\d+", predicate["slsaVersion"]), predicate["slsaVersion"]

    # -- producers MAY add extension fields using field names that are URIs
    for name in predicate.keys() - VSA_FIELDS:
        assert is_uri(name), f"extension field {name!r} is not named by a URI"


# -- the attestations the gate writes, made by its own code --------------------------------------


@dataclass
class RecordingSigner:
    """A signer that keeps what it was asked to sign (the statement) and signs nothing real."""

    key_hint: str = "test-key"
    payloads: list[bytes] = field(default_factory=list)

    def sign_dsse(self, payload_type: str, payload: bytes) -> dict[str, Any]:
        self.payloads.append(payload)
        return {"payloadType": payload_type, "payload": "", "signatures": []}


@dataclass
class NoStore:
    """An attestation store that accepts and forgets."""

    def attach(self, subject: ImageRef, bundle: bytes, *, predicate_type: str, created: str) -> str:
        return "sha256:" + "00" * 32

    def find(self, subject: ImageRef) -> list[StoredAttestation]:
        return []


@dataclass(frozen=True)
class Record:
    """The fields of a gate record that Attestor.demotion reads."""

    id: str = "rec-1"
    rule: str = "node base"
    target_tags: tuple[str, ...] = ("15-alpine",)


SUBJECT = ImageRef.parse(f"contosobase.azurecr.io/base/node@{DIGEST}")


def promotion(verifier_id: str = "urn:gated-import-gate") -> bytes:
    """A promotion's statement, with the evidence Attestor.promotion gives."""
    return statement(
        Evidence(
            subject=SUBJECT,
            result=PASSED,
            status="promoted",
            reason="passed validation run ca1",
            rule="node",
            record_id="rec-1",
            run_id="ca1",
            stable_tag="15-alpine",
            upstream="docker.io/library/node",
            upstream_digest=UPSTREAM_DIGEST,
            policy_uri=attest.policy_uri("node", "acr-task.yaml"),
            policy_digest="ef" * 32,
            task_digest="12" * 32,
            log_sha256="34" * 32,
            time=WHEN,
        ),
        verifier_id,
    )


def demotion(why: str, verifier_id: str = "https://gate.example/test") -> bytes:
    """The statement Attestor.demotion signs (a rollback and a re-validation's demotion)."""
    signer = RecordingSigner()
    attestor = Attestor(signer, NoStore(), verifier_id)
    attestor.demotion(SUBJECT, Record(), why)  # type: ignore[arg-type]
    [payload] = signer.payloads
    return payload


KINDS: dict[str, Callable[[], bytes]] = {
    "promotion": promotion,
    "demotion": lambda: demotion("demoted by re-validation: run ca2 failed"),
    "rollback": lambda: demotion("rolled back: Orange breaks apps"),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_attestation_the_gate_writes_conforms_to_vsa_v1(kind: str) -> None:
    check_vsa(json.loads(KINDS[kind]()))


def test_a_promotion_claims_build_level_0_and_names_its_policy_and_resource() -> None:
    predicate = json.loads(promotion())["predicate"]
    assert predicate["verifiedLevels"] == ["SLSA_BUILD_LEVEL_0"]
    assert predicate["policy"] == {
        "uri": "gate-rule:node/acr-task.yaml",
        "digest": {"sha256": "ef" * 32},
    }
    assert predicate["resourceUri"] == (
        "pkg:oci/node@sha256%3A" + "ab" * 32 + "?repository_url=contosobase.azurecr.io/base/node"
    )
    assert predicate["slsaVersion"] == "1.0"
    assert predicate[attest.EXTENSION_FIELD]["runId"] == "ca1"
    assert "gate" not in predicate


def test_a_demotion_fails_with_the_failed_level_and_names_the_rule_as_policy() -> None:
    predicate = json.loads(demotion("rolled back: bad"))["predicate"]
    assert predicate["verificationResult"] == FAILED
    assert predicate["verifiedLevels"] == [FAILED]
    # the rule name is percent-encoded into the URI; no empty digest is claimed
    assert predicate["policy"] == {"uri": "gate-rule:node%20base"}
    assert predicate[attest.EXTENSION_FIELD]["status"] == "demoted"


@pytest.mark.parametrize(
    ("rule", "task", "uri"),
    [
        ("node", "acr-task.yaml", "gate-rule:node/acr-task.yaml"),
        ("node", "tasks/run.yaml", "gate-rule:node/tasks/run.yaml"),
        ("a b/c", "", "gate-rule:a%20b%2Fc"),
        ("", "", "gate-rule:unnamed"),
    ],
)
def test_policy_uris_are_uris(rule: str, task: str, uri: str) -> None:
    assert attest.policy_uri(rule, task) == uri
    assert is_uri(uri)


def test_resource_uris_of_registries_with_ports_and_nested_repositories_are_uris() -> None:
    image = ImageRef.parse(f"localhost:5000/a/b/c@{DIGEST}")
    uri = attest.resource_uri(image)
    assert uri == f"pkg:oci/c@sha256%3A{'ab' * 32}?repository_url=localhost:5000/a/b/c"
    assert is_uri(uri)


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("https://example.com/x", True),
        ("urn:gated-import-gate", True),
        ("pkg:oci/n@sha256%3Aab?repository_url=h/n", True),
        ("contosobase.azurecr.io/base/node@sha256:ab", False),
        ("gate", False),
        ("", False),
        ("HTTPS://example.com/", False),
        ("https://Example.com/", False),
        ("a b:c", False),
        ("x:%zz", False),
    ],
)
def test_the_uri_check_itself(text: str, ok: bool) -> None:
    assert is_uri(text) is ok


# -- gate verify reads both forms -----------------------------------------------------------------


def _signed(payload: bytes) -> tuple[StoredAttestation, Any]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from securesystemslib.dsse import Envelope
    from securesystemslib.signer import CryptoSigner  # type: ignore[attr-defined]

    private = ec.generate_private_key(ec.SECP256R1())
    signer = CryptoSigner(private)
    envelope = Envelope(payload, attest.PAYLOAD_TYPE, {})
    envelope.sign(signer)
    stored = StoredAttestation(
        "sha256:" + "99" * 32,
        DIGEST,
        attest.bundle(envelope.to_dict(), "k"),
    )
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return stored, attest.load_public_key(pem, "test key")


def _old_form(payload: bytes) -> bytes:
    """A statement as the gate wrote it before VSA v1.0 conformance: the extension under
    ``gate``, the resource as ``host/repo@digest``, FAILED with the pass levels."""
    body = json.loads(payload)
    predicate = body["predicate"]
    predicate["gate"] = predicate.pop(attest.EXTENSION_FIELD)
    predicate["resourceUri"] = f"{SUBJECT.name}@{DIGEST}"
    predicate["verifiedLevels"] = ["SLSA_BUILD_LEVEL_0"]
    predicate.pop("slsaVersion")
    if predicate["verificationResult"] == FAILED:
        predicate["policy"] = {"uri": "", "digest": {"sha256": ""}}
    return json.dumps(body).encode()


@pytest.mark.parametrize("old", [False, True], ids=["new form", "old form"])
def test_gate_verify_reads_promotions_and_demotions_in_either_form(old: bool) -> None:
    passed, failed = promotion(), demotion("rolled back: Orange breaks apps")
    if old:
        passed, failed = _old_form(passed), _old_form(failed)
    stored, key = _signed(passed)
    verdict = verify(SUBJECT, [stored], [key], now=WHEN)
    assert verdict.verified, verdict.reason
    assert verdict.reason.endswith("(validation run ca1, record rec-1)")

    stored_failed, key = _signed(failed)
    verdict = verify(SUBJECT, [stored_failed], [key])
    assert not verdict.verified
    assert "says FAILED: demoted (rolled back: Orange breaks apps)" in verdict.reason


# -- the consumer examples match what the gate writes ---------------------------------------------


def _conditions_hold(conditions: list[dict[str, str]], predicate: dict[str, Any]) -> bool:
    """Kyverno's ``Equals`` conditions over ``{{ a.b }}`` paths into the predicate."""
    for condition in conditions:
        assert condition["operator"] == "Equals"
        value: Any = predicate
        for part in condition["key"].strip("{} ").split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value != condition["value"]:
            return False
    return True


def test_the_kyverno_example_admits_a_promotion_and_not_a_demotion() -> None:
    import yaml

    root = Path(__file__).resolve().parents[2]
    text = (root / "examples" / "consumers" / "kyverno-policy.yaml").read_text()
    [policy] = yaml.safe_load_all(text)
    [image_rule] = policy["spec"]["rules"][0]["verifyImages"]
    [wanted] = image_rule["attestations"]
    conditions = wanted["conditions"][0]["all"]
    verifier = next(c["value"] for c in conditions if c["key"] == "{{ verifier.id }}")
    assert _conditions_hold(conditions, json.loads(promotion(verifier))["predicate"])
    demoted = json.loads(demotion("rolled back: x", verifier))["predicate"]
    assert not _conditions_hold(conditions, demoted)


def test_gate_verify_rejects_an_attestation_about_another_resource() -> None:
    body = json.loads(promotion())
    body["predicate"]["resourceUri"] = "pkg:oci/other@sha256%3A" + "ab" * 32
    stored, key = _signed(json.dumps(body).encode())
    verdict = verify(SUBJECT, [stored], [key])
    assert not verdict.verified
    assert "its resourceUri is 'pkg:oci/other@sha256%3A" in verdict.reason


def test_the_statement_attestor_promotion_signs_conforms(tmp_path: Path) -> None:
    from devstack.configs import GateYaml, Rule, write_empty_task
    from gate.config.loading import load_config
    from gate.domain.records import GateRecord

    write_empty_task(tmp_path)
    rule = Rule("upstream.example.com/node", "contosobase.azurecr.io/base/node", tags=("15",))
    [loaded] = load_config(GateYaml("data", (rule,)).write(tmp_path)).rules
    record = GateRecord(
        id="rec-1",
        rule=loaded.name,
        source="upstream.example.com/node:15",
        target="contosobase.azurecr.io/base/node",
        digest=UPSTREAM_DIGEST,
        run_id="ca1",
        target_tags=("15-ca1", "15"),
        log="fake log",
    )
    signer = RecordingSigner()
    Attestor(signer, NoStore(), "urn:gated-import-gate").promotion(loaded, SUBJECT, record)
    [payload] = signer.payloads
    body = json.loads(payload)
    check_vsa(body)
    predicate = body["predicate"]
    assert predicate["policy"]["uri"] == f"gate-rule:{loaded.name}/acr-task.yaml"
    assert predicate[attest.EXTENSION_FIELD]["runId"] == "ca1"
