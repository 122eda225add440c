"""The ``registries:`` section: how to reach one registry host, and its credentials' secrets."""

# no ``from __future__ import annotations``: msgspec reads these classes' annotations on the
# first check, and text annotations would have it compile each one then (a third of the check)
import re
from typing import Annotated

import msgspec
from msgspec.structs import force_setattr

from gate.config.common import Refusal, Section, Text, doc
from gate.domain.ref import ImageRef, is_loopback_registry
from gate.errors import InvalidReference

_REALM = re.compile(r"[A-Za-z0-9.-]+(:[0-9]+)?")
_ACR_ID = re.compile(
    r"/subscriptions/[^/]+/resourceGroups/[^/]+/providers/"
    r"Microsoft\.ContainerRegistry/registries/[A-Za-z0-9]+",
    flags=re.IGNORECASE,
)


class RegistryEntry(Section, frozen=True, kw_only=True):
    """How to reach one registry host, and which secrets hold its credentials."""

    host: Annotated[Text, doc("Registry host[:port], e.g. registry-1.docker.io or 127.0.0.1:5000.")]
    insecure: Annotated[bool, doc("Plain HTTP; allowed for loopback registries only.")] = False
    username: Annotated[
        str | None, doc("User name in clear (local runs only; with azure: use username_secret).")
    ] = None
    username_secret: Annotated[str | None, doc("Name of the secret that holds the user name.")] = (
        None
    )
    password_secret: Annotated[
        str | None, doc("Name of the secret that holds the password or token.")
    ] = None
    resource_id: Annotated[
        str | None,
        doc("ARM id of an Azure Container Registry upstream (pulled by identity, no secret)."),
    ] = None
    token_realms: Annotated[
        tuple[Text, ...],
        doc(
            "Token realm hosts (host[:port]) on another host that may receive this registry's "
            "credentials, beyond its own host and the known ones (auth.docker.io for Docker Hub)."
        ),
    ] = ()
    concurrency: Annotated[
        Annotated[int, msgspec.Meta(ge=1, le=64)] | None,
        doc(
            "Requests in flight at once to this host during a poll pass, instead of "
            "poll.concurrency_per_registry (raise it where the registry allows more, lower it "
            "for one that asks for gentler clients)."
        ),
    ] = None

    def __post_init__(self) -> None:
        try:
            probe = ImageRef.parse(f"{self.host}/probe")
        except InvalidReference:
            probe = None
        # a name without '.' or ':port' (and not localhost) would read as a Docker Hub path
        if probe is None or probe.repository not in ("probe", "library/probe"):
            raise Refusal(
                f"'{self.host}' is not a registry host[:port]; write e.g. "
                "registry.example.com or 127.0.0.1:5000",
                "host",
            )
        host = probe.registry
        if self.insecure and not is_loopback_registry(host):
            raise Refusal(
                f"plain HTTP is allowed for loopback registries only, not '{host}'; "
                "serve it over TLS",
                "insecure",
            )
        if self.username and self.username_secret:
            raise Refusal("give username or username_secret, not both")
        if (self.username or self.username_secret) and not self.password_secret:
            raise Refusal("a username needs a password_secret", "password_secret")
        if self.resource_id and not _ACR_ID.fullmatch(self.resource_id):
            raise Refusal(
                "expected /subscriptions/…/resourceGroups/…/providers/"
                "Microsoft.ContainerRegistry/registries/NAME",
                "resource_id",
            )
        for j, realm in enumerate(self.token_realms):
            if not _REALM.fullmatch(realm):
                raise Refusal(
                    f"'{realm}' is not a host[:port]; write the realm's host only, e.g. "
                    "auth.example.com (no scheme, no path)",
                    "token_realms",
                    j,
                )
        # the settings name the host as references do, and an empty value is no value
        force_setattr(self, "host", host)
        for name in ("username", "username_secret", "password_secret", "resource_id"):
            if getattr(self, name) == "":
                force_setattr(self, name, None)


RegistrySettings = RegistryEntry
"""How to reach one registry host, as the use cases read it (the same struct)."""
