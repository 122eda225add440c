"""Platforms of multi-arch images: the ``os/arch[/variant]`` value and picking an index's children.

A rule's ``platforms:`` lists what must pass before an image is promoted. The upstream digest is
an image index (OCI ``application/vnd.oci.image.index.v1+json`` or Docker's manifest list) whose
``manifests[]`` carry a ``platform`` object (``os``, ``architecture``, optional ``variant``), or
a single image manifest whose config blob names its ``os`` / ``architecture`` / ``variant``
(OCI image spec, image-index.md and config.md). :func:`select_platforms` maps each listed
platform to the child manifest digest that is validated, or says why the image cannot be
validated for it (a rejection: the image does not offer what the rule requires).

Variants compare as containerd's platform matcher normalizes them: ``arm64`` without a variant
is ``v8`` and ``arm`` without one is ``v7``; a listed platform without a variant takes the
child of its ``os/arch`` with the default variant, else the only child of that ``os/arch``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

INDEX_MEDIA_TYPES = frozenset(
    {
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    }
)
IMAGE_MEDIA_TYPES = frozenset(
    {
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    }
)

PLATFORM_PATTERN = r"^[a-z0-9]+/[a-z0-9_]+(/v[0-9]+(\.[0-9]+)?)?$"
_PLATFORM = re.compile(PLATFORM_PATTERN)

# Go's GOOS / GOARCH names: what OCI's platform.os / platform.architecture use (image-index.md)
KNOWN_OS = frozenset(
    {"aix", "android", "darwin", "dragonfly", "freebsd", "illumos", "ios", "linux", "netbsd",
     "openbsd", "plan9", "solaris", "windows"}
)  # fmt: skip
KNOWN_ARCHITECTURES = frozenset(
    {"386", "amd64", "arm", "arm64", "loong64", "mips", "mipsle", "mips64", "mips64le", "ppc64",
     "ppc64le", "riscv64", "s390x", "wasm"}
)  # fmt: skip
# what people write for an architecture, and Go's name for it
_ALIASES = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "i386": "386", "x86": "386"}
_DEFAULT_VARIANT = {"arm64": "v8", "arm": "v7"}


class PlatformError(ValueError):
    """A platform string that is not ``os/arch[/variant]`` in Go's names; the message says why."""


@dataclass(frozen=True)
class Platform:
    """One platform an image is validated on: OCI's ``os``, ``architecture`` and ``variant``."""

    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> Platform:
        """``linux/arm64`` or ``linux/arm/v7`` as a Platform; :class:`PlatformError` if not one."""
        if not _PLATFORM.match(text):
            raise PlatformError(
                f"'{text}' is not a platform; write os/arch or os/arch/variant in lowercase, "
                "e.g. linux/amd64, linux/arm64 or linux/arm/v7"
            )
        os_name, arch, *rest = text.split("/")
        if arch in _ALIASES:
            fixed = "/".join([os_name, _ALIASES[arch], *rest])
            raise PlatformError(
                f"'{text}': '{arch}' is not how images name that architecture; write '{fixed}'"
            )
        if os_name not in KNOWN_OS:
            raise PlatformError(
                f"'{text}': unknown operating system '{os_name}'; use Go's names (linux, "
                "windows, ...)"
            )
        if arch not in KNOWN_ARCHITECTURES:
            raise PlatformError(
                f"'{text}': unknown architecture '{arch}'; use Go's names ("
                f"{', '.join(sorted(KNOWN_ARCHITECTURES))})"
            )
        return cls(os_name, arch, rest[0] if rest else "")

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    def matches(self, os_name: str, architecture: str, variant: str, *, exact: bool) -> bool:
        """True when an image's platform is this one (``exact``: the variant must agree too)."""
        if (os_name, architecture) != (self.os, self.architecture):
            return False
        if not exact:
            return True
        default = _DEFAULT_VARIANT.get(architecture, "")
        return (variant or default) == (self.variant or default)


@dataclass(frozen=True)
class PlatformManifest:
    """The manifest a platform of an image is validated as: its digest and its own platform."""

    platform: Platform
    digest: str
    found: str = ""  # the image's own platform text (e.g. linux/arm64/v8)


ReadBlob = Callable[[str], bytes]
"""``read_blob(digest)``: a blob of the image's repository (the config of a single manifest)."""


def select_platforms(
    manifest: bytes,
    media_type: str,
    digest: str,
    wanted: Sequence[Platform],
    read_blob: ReadBlob,
) -> list[PlatformManifest] | str:
    """The manifest of each ``wanted`` platform in image ``digest``, or why there is none.

    ``manifest`` / ``media_type`` are the image's manifest as the registry served it. An index
    gives each platform its child digest; a single image manifest serves only its own platform
    (read from its config with ``read_blob``). The text returned instead names the platforms
    the image does not offer and what it does offer.
    """
    try:
        body: Any = json.loads(manifest)
    except ValueError:
        return f"the manifest of {digest} is not JSON, so its platforms cannot be read"
    kind = media_type or (body.get("mediaType", "") if isinstance(body, dict) else "")
    if not isinstance(body, dict):
        return f"the manifest of {digest} is not a JSON object, so its platforms cannot be read"
    if kind in INDEX_MEDIA_TYPES or (not kind and "manifests" in body):
        return _from_index(body, digest, wanted)
    if kind in IMAGE_MEDIA_TYPES or (not kind and "config" in body):
        return _from_image(body, digest, wanted, read_blob)
    return f"{digest} is a {kind or 'manifest of unknown type'}, not an image or image index"


def _platform_text(raw: Any) -> tuple[str, str, str]:
    if not isinstance(raw, dict):
        return "", "", ""
    return (
        str(raw.get("os") or ""),
        str(raw.get("architecture") or ""),
        str(raw.get("variant") or ""),
    )


def _shown(os_name: str, arch: str, variant: str) -> str:
    return "/".join(p for p in (os_name, arch, variant) if p) or "unknown"


def _from_index(
    body: dict[str, Any], digest: str, wanted: Sequence[Platform]
) -> list[PlatformManifest] | str:
    children: list[tuple[tuple[str, str, str], str]] = []
    for entry in body.get("manifests") or ():
        if not isinstance(entry, dict) or not isinstance(entry.get("digest"), str):
            continue
        if entry.get("mediaType") not in IMAGE_MEDIA_TYPES | {None}:
            continue  # a nested index or an artifact: not something that runs
        children.append((_platform_text(entry.get("platform")), entry["digest"]))
    offered = sorted({_shown(*p) for p, _ in children if p[0] and p[1] != "unknown"})
    picked: list[PlatformManifest] = []
    missing: list[str] = []
    for platform in wanted:
        exact = [(p, d) for p, d in children if platform.matches(*p, exact=True)]
        loose = [(p, d) for p, d in children if platform.matches(*p, exact=False)]
        if exact:
            found, child = exact[0]
        elif not platform.variant and len(loose) == 1:
            found, child = loose[0]
        else:
            missing.append(str(platform))
            continue
        picked.append(PlatformManifest(platform, child, _shown(*found)))
    if missing:
        return (
            f"platform(s) {', '.join(missing)} required by the rule are missing from the image "
            f"index {digest}, which offers {', '.join(offered) or 'no platform'}; wait for "
            "upstream to publish them, or remove them from the rule's platforms"
        )
    return picked


def _from_image(
    body: dict[str, Any], digest: str, wanted: Sequence[Platform], read_blob: ReadBlob
) -> list[PlatformManifest] | str:
    config = body.get("config")
    config_digest = config.get("digest") if isinstance(config, dict) else None
    if not isinstance(config_digest, str):
        return f"the image manifest {digest} names no config, so its platform cannot be read"
    try:
        raw: Any = json.loads(read_blob(config_digest))
    except ValueError:
        return f"the config {config_digest} of {digest} is not JSON, so its platform is unknown"
    own = _platform_text(raw)
    shown = _shown(*own)
    others = [str(p) for p in wanted if not p.matches(*own, exact=True)]
    if others or len(wanted) != 1:
        listed = ", ".join(str(p) for p in wanted)
        return (
            f"{digest} is a single-platform image ({shown}), not an index, so it cannot be "
            f"validated for every listed platform ({listed}); gate a multi-platform index, or "
            f"list only {shown} in the rule's platforms"
        )
    return [PlatformManifest(wanted[0], digest, shown)]
