"""The smaller sections: ``validator:``, ``lease:``, ``poll:``, ``ledger:`` (retention),
``attestation:``, and a rule's ``revalidate:``.

Each is one struct with the defaults the file may leave out, and under it the older name the use
cases read it by (:data:`LeaseSettings` is :class:`LeaseSection`).
"""

# no ``from __future__ import annotations``: msgspec reads these classes' annotations on the
# first check, and text annotations would have it compile each one then (a third of the check)
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec.structs import force_setattr

from gate.config.common import Duration, Refusal, Section, Text, doc, duration_seconds, resolve
from gate.domain.durations import CONFIG, parse_duration


class ValidatorSection(Section, frozen=True, kw_only=True):
    """The local validator: the container engine and the network its steps get."""

    engine_choice: Annotated[Text, doc("podman, docker or auto (the first found).")] = (
        msgspec.field(default="auto", name="engine")
    )
    network: Annotated[Text, doc("Network of the steps' containers (none by default).")] = "none"
    keep_images: Annotated[
        bool, doc("Keep the images a run pulled or built in the engine's store (debugging).")
    ] = False

    @property
    def engine(self) -> str | None:
        """The engine to use; None: the first found (``auto``)."""
        return None if self.engine_choice == "auto" else self.engine_choice


ValidatorSettings = ValidatorSection


class RevalidateEntry(Section, frozen=True, kw_only=True):
    """Re-run the rule's current validation on the promoted digest on a schedule."""

    every: Annotated[
        Duration,
        doc("How often the digest the stable tag points at is validated again (e.g. 24h)."),
    ]
    on_failure: Annotated[
        Literal["demote", "alert"],
        doc(
            "demote: move the stable tag back to the newest earlier promoted digest that passes "
            "now (else mark the rule broken); alert: move nothing, report the failure."
        ),
    ] = "demote"
    candidates: Annotated[
        int,
        msgspec.Meta(
            ge=1,
            le=50,
            description="Earlier promoted digests re-validated at most, newest first, when "
            "looking for one to demote to.",
        ),
    ] = 5

    def __post_init__(self) -> None:
        duration_seconds(self.every, "every")

    @property
    def every_seconds(self) -> float:
        """Seconds between re-validations."""
        return float(parse_duration(self.every, CONFIG))


Revalidation = RevalidateEntry


class LeaseSection(Section, frozen=True, kw_only=True):
    """How a worker holds a record while it validates or promotes it."""

    seconds: Annotated[
        float,
        msgspec.Meta(
            gt=0,
            description="Seconds a lease lasts past its last renewal; a worker silent that long "
            "(it died) is taken over by the next attempt.",
        ),
    ] = 60.0
    heartbeat_seconds: Annotated[
        float,
        msgspec.Meta(
            gt=0,
            description="Seconds between lease renewals while a worker works (at most half of "
            "seconds).",
        ),
    ] = msgspec.field(default=10.0, name="heartbeat")

    def __post_init__(self) -> None:
        if self.heartbeat_seconds * 2 > self.seconds:
            raise Refusal(
                f"{self.heartbeat_seconds:g} s is more than half of lease.seconds "
                f"({self.seconds:g} s): one late renewal would lose the lease; renew at "
                "least twice per lease",
                "heartbeat",
            )


LeaseSettings = LeaseSection


class PollSection(Section, frozen=True, kw_only=True):
    """How a watch pass polls the upstream registries (HEAD requests, tag lists)."""

    # 16: a pass over 1000 tags (1100 requests with the tag lists) on a registry 50 ms away
    # takes 1100 x 0.05 / 16 = 3.4 s of waiting, under the 4 s a pass is meant to take. The
    # requests are manifest HEADs ("version checks"), which Docker Hub does not count as pulls
    # (docs.docker.com, "Docker Hub pull usage and limits": "Version checks do not count
    # towards usage pricing"; its page's own limit check is a HEAD), and tag lists. Azure
    # Container Registry documented read operations per minute by tier (learn.microsoft.com,
    # "Azure Container Registry service tiers": Basic 1,000, Standard 3,000, Premium 10,000;
    # the current page no longer lists them): a pass of 1100 requests fits in any minute of
    # Standard and above, not Basic, whose registries set ``concurrency`` lower. A registry that
    # answers 429 stops being polled for its Retry-After whatever the budget (polling.py).
    concurrency_per_registry: Annotated[
        int,
        msgspec.Meta(
            ge=1,
            le=64,
            description="Requests in flight at once to one registry host during a poll pass "
            "(a registry's own concurrency: overrides it).",
        ),
    ] = 16
    budget_seconds: Annotated[
        float,
        msgspec.Meta(
            gt=0,
            description="Seconds a poll pass may take (keep it under the timer's interval); tags "
            "not reached in time are polled first by the next pass.",
        ),
    ] = msgspec.field(default=240.0, name="budget")


PollSettings = PollSection


class LedgerSection(Section, frozen=True, kw_only=True):
    """How long the ledger keeps records (wherever it lives: SQLite or Table Storage)."""

    keep: Annotated[
        Duration | None,
        doc(
            "Delete final records older than this (daily); records behind a current stable or "
            "run-ID tag are kept whatever their age. null keeps every record."
        ),
    ] = "400d"

    def __post_init__(self) -> None:
        # records are the audit trail: a typo like 40s must not empty it overnight
        if self.keep is not None and duration_seconds(self.keep, "keep") < 86400:
            raise Refusal(f"is {self.keep}: keep records at least 1d (or null)", "keep")

    @property
    def keep_seconds(self) -> int | None:
        """Seconds the ledger keeps final records; None: forever."""
        return None if self.keep is None else parse_duration(self.keep, CONFIG)


RetentionSettings = LedgerSection


class AttestationSection(Section, frozen=True, kw_only=True, dict=True):
    """Signed evidence on every promoted digest (an in-toto attestation, DSSE, ECDSA P-256)."""

    key_text: Annotated[
        Text | None,
        doc("PEM private key file (ECDSA P-256) that signs; 'gate keygen' writes one (local)."),
    ] = msgspec.field(default=None, name="key")
    key_vault_key: Annotated[
        Text | None,
        doc("Key Vault EC P-256 key URI that signs instead (with azure:, promote: push)."),
    ] = None
    verifier_id: Annotated[
        Text, doc("Who verified, as the attestation names it (a URI identifying this gate).")
    ] = "urn:gated-import-gate"
    referrers_api: Annotated[
        bool, doc("Use the registry's OCI referrers API when it has one (else the tag schema).")
    ] = True
    signature_key_text: Annotated[
        Text | None,
        doc(
            "PEM private key file (ECDSA P-256, not the attestation key) that signs each "
            "promoted digest as cosign does, removed again on demotion or rollback (local)."
        ),
    ] = msgspec.field(default=None, name="signature_key")
    signature_key_vault_key: Annotated[
        Text | None,
        doc("Key Vault EC P-256 key URI (not the attestation key) for that signature (azure:)."),
    ] = None

    def __post_init__(self) -> None:
        # the checks need the azure section, so the whole file's (ConfigFile); the key
        # is resolved now, while the file's folder is known, and kept as written for messages
        _ = self.key
        _ = self.signature_key
        for name in ("key_vault_key", "signature_key_vault_key"):
            value = getattr(self, name)
            if value is not None and value.startswith("https://"):
                force_setattr(self, name, value.rstrip("/"))

    @cached_property
    def key(self) -> Path | None:
        """The signing key file (absolute), for the local gate; None: a Key Vault key signs."""
        return None if self.key_text is None else resolve(self.key_text)

    @cached_property
    def signature_key(self) -> Path | None:
        """The promotion signature's key file (absolute); None: none, or a Key Vault key."""
        return None if self.signature_key_text is None else resolve(self.signature_key_text)

    @property
    def signs(self) -> bool:
        """Whether the gate signs promoted digests (a signature key is configured)."""
        return self.signature_key_text is not None or self.signature_key_vault_key is not None


AttestationSettings = AttestationSection
