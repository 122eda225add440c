"""Image references: parse, validate and format ``registry/repository[:tag][@digest]``.

The grammar is the one of the OCI/Docker reference (``distribution/reference``)::

    reference   := name [ ":" tag ] [ "@" digest ]
    name        := [ domain "/" ] path          (path, the repository: at most 255 characters)
    domain      := host [ ":" port ]
    host        := domain-name | IPv4 address | "[" IPv6 address "]"
    domain-name := label ( "." label )*
    label       := [a-zA-Z0-9] | [a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]
    path        := component ( "/" component )*
    component   := [a-z0-9]+ ( ( [._] | __ | -+ ) [a-z0-9]+ )*
    tag         := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
    digest      := "sha256:" 64 lowercase hex | "sha512:" 128 lowercase hex

As in ``distribution``, the first ``/``-separated part is the registry only when it contains
``.`` or ``:``, is ``localhost``, or has an uppercase letter; otherwise the whole name is a Docker
Hub repository. Docker Hub names are normalised: ``node`` is ``docker.io/library/node`` and
``index.docker.io`` / ``registry-1.docker.io`` are ``docker.io``.

The length limit counts the repository path after normalisation, without the registry, as
``distribution/reference`` does (``Parse``: ``len(repo.path) > RepositoryNameTotalLengthMax``):
a registry's API routes carry only that path. Digests are the algorithms the OCI image spec
registers (``descriptor.md``, "Registered algorithms": ``sha256``, ``sha512``) in their fixed
lowercase-hex encodings; the grammar's other algorithm spellings (``md5:…``, ``sha1:…``,
``foo:…``) name no content a registry serves, so they are refused where they enter.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace

from gate.errors import InvalidReference

__all__ = ["DOCKER_HUB", "ImageRef", "is_loopback_registry", "parse_digest"]

DOCKER_HUB = "docker.io"
"""The canonical name of Docker Hub."""

# Other spellings of Docker Hub; compared case-insensitively because host names are.
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
_OFFICIAL_PREFIX = "library/"
_NAME_MAX = 255

# fullmatch() everywhere: "$" in Python would also accept a trailing newline.
_LABEL = re.compile(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?")
_PORT = re.compile(r"[0-9]+")
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_IMAGE_ID = re.compile(r"[a-f0-9]{64}")
# The OCI image spec's registered algorithms and their fixed encodings.
_HEX_LENGTH = {"sha256": 64, "sha512": 128}

_FORM = "write registry/repository[:tag][@digest], e.g. 'docker.io/library/node:20-alpine'"
_REGISTRY_RULE = (
    "a registry is a host name (labels of letters, digits and '-' joined by '.'), 'localhost', "
    "an IPv4 address or a bracketed IPv6 address like '[::1]', optionally followed by ':port'"
)
_REPOSITORY_RULE = (
    "a repository is '/'-separated components of lowercase letters and digits, joined inside a "
    "component by '.', '_', '__' or '-', e.g. 'library/node' or 'team/my-app'"
)
_TAG_RULE = (
    "a tag is up to 128 characters of letters, digits, '_', '.', '-', not starting with '.' or '-'"
)
_DIGEST_RULE = (
    "a digest is 'sha256:' followed by 64 lowercase hex characters, or 'sha512:' followed by "
    "128 (the algorithms the OCI image spec registers)"
)


def _shown(text: str) -> str:
    """``text`` quoted for a message, with anything that looks like credentials masked."""
    # A valid reference has '@' only after its last '/'; an '@' before the first '/' (or after a
    # scheme) is URL userinfo ("user:token@host/..."), which must never reach a message or log.
    scheme_end = text.find("://") + 3 if "://" in text else 0
    rest = text[scheme_end:]
    slash = rest.find("/")
    at = rest.rfind("@", 0, slash if slash != -1 else len(rest))
    if at != -1 and (scheme_end or slash != -1):
        text = text[:scheme_end] + "***" + rest[at:]
    if len(text) > 300:
        text = text[:300] + "..."
    return repr(text)


def _where(context: str | None) -> str:
    return f" in {_shown(context)}" if context is not None else ""


def _fail(part: str, value: str, context: str | None, rule: str) -> InvalidReference:
    return InvalidReference(f"invalid {part} {_shown(value)}{_where(context)}: {rule}")


def _check_registry(registry: str, context: str | None) -> None:
    host, port = _split_port(registry)
    if port is not None and not (_PORT.fullmatch(port) and 0 < int(port) <= 65535):
        raise _fail(
            "registry port", port, context or registry, "a port is a number from 1 to 65535"
        )
    if host.startswith("[") and host.endswith("]"):
        try:
            # A zone ("%eth0") passes ipaddress but is no part of a reference.
            if "%" in host:
                raise ValueError(host)
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise _fail("registry", registry, context, _REGISTRY_RULE) from None
        return
    # IPv4 addresses are covered: their labels are digits.
    if not all(_LABEL.fullmatch(label) for label in host.split(".")):
        raise _fail("registry", registry, context, _REGISTRY_RULE)
    if not _looks_like_registry(registry):
        # Written before a '/', such a name would be read as part of a Docker Hub repository,
        # so str() of the reference would name another image.
        raise _fail(
            "registry",
            registry,
            context,
            "a registry name needs a '.' or a ':port', or is 'localhost' "
            f"(otherwise it reads as a Docker Hub repository); e.g. '{registry}.local' or "
            f"'{registry}:5000'",
        )


def _split_port(registry: str) -> tuple[str, str | None]:
    """``host[:port]`` split into host and port (``None`` when absent)."""
    if registry.startswith("["):
        end = registry.find("]")
        if end != -1 and registry[end + 1 :].startswith(":"):
            return registry[: end + 1], registry[end + 2 :]
        return registry, None
    host, colon, port = registry.partition(":")
    return (host, port) if colon else (host, None)


def _looks_like_registry(first: str) -> bool:
    """Whether a first name component is a registry (``splitDockerDomain`` in distribution)."""
    return "." in first or ":" in first or first == "localhost" or first.lower() != first


def _check_repository(repository: str, context: str | None) -> None:
    if repository.lower() != repository:
        raise _fail(
            "repository",
            repository,
            context,
            f"a repository name must be lowercase; write {_shown(repository.lower())}",
        )
    for component in repository.split("/"):
        if not _COMPONENT.fullmatch(component):
            raise _fail(
                "repository",
                repository,
                context,
                f"component {_shown(component)} is not valid; {_REPOSITORY_RULE}",
            )


def _check_tag(tag: str, context: str | None) -> None:
    if not _TAG.fullmatch(tag):
        raise _fail("tag", tag, context, _TAG_RULE)


def _check_digest(digest: str, context: str | None) -> None:
    algorithm, colon, encoded = digest.partition(":")
    length = _HEX_LENGTH.get(algorithm)
    if not colon or length is None:
        raise _fail("digest", digest, context, _DIGEST_RULE)
    if not (len(encoded) == length and all(c in "0123456789abcdef" for c in encoded)):
        raise _fail(
            "digest",
            digest,
            context,
            f"a {algorithm} digest is '{algorithm}:' followed by {length} lowercase hex "
            f"characters (this one has {len(encoded)} characters after the ':')",
        )


def _normalize(registry: str, repository: str) -> tuple[str, str]:
    """Docker Hub's spellings folded into one: ``docker.io`` and ``library/<name>``."""
    if registry.lower() in _HUB_ALIASES:
        registry = DOCKER_HUB
        if "/" not in repository:
            repository = _OFFICIAL_PREFIX + repository
    return registry, repository


def _check_types(registry: object, repository: object, tag: object, digest: object) -> None:
    # Config files are YAML: "tag: 20" arrives as an int, and deserves a clear message.
    for field, value, optional in (
        ("registry", registry, False),
        ("repository", repository, False),
        ("tag", tag, True),
        ("digest", digest, True),
    ):
        if not (isinstance(value, str) or (optional and value is None)):
            expected = "a string or None" if optional else "a string"
            hint = f" (quote it: '{value}')" if isinstance(value, int | float) else ""
            raise InvalidReference(f"invalid {field} {value!r}: expected {expected}{hint}")


def _check_fields(
    registry: str, repository: str, tag: str | None, digest: str | None, context: str | None
) -> None:
    _check_registry(registry, context)
    _check_repository(repository, context)
    if len(repository) > _NAME_MAX:
        raise _fail(
            "name",
            f"{registry}/{repository}",
            context,
            f"the repository path is {len(repository)} characters; it is at most {_NAME_MAX} "
            "(the registry is not counted)",
        )
    if tag is not None:
        _check_tag(tag, context)
    if digest is not None:
        _check_digest(digest, context)


@dataclass(frozen=True)
class ImageRef:
    """A parsed, validated, normalised image reference.

    Constructing one directly validates the fields too, and folds Docker Hub spellings
    (``index.docker.io``, a repository without ``library/``) into the canonical form, so two
    references to the same image compare equal.
    """

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    def __post_init__(self) -> None:
        _check_types(self.registry, self.repository, self.tag, self.digest)
        registry, repository = _normalize(self.registry, self.repository)
        # Frozen: normalisation has to go through object.__setattr__.
        object.__setattr__(self, "registry", registry)
        object.__setattr__(self, "repository", repository)
        _check_fields(self.registry, self.repository, self.tag, self.digest, None)

    @classmethod
    def parse(cls, text: str, *, default_registry: str = DOCKER_HUB) -> ImageRef:
        """Parse ``[registry/]repository[:tag][@digest]``; raise InvalidReference if invalid.

        A name without a registry belongs to ``default_registry``; only Docker Hub adds the
        ``library/`` prefix to a one-component name.
        """
        if not isinstance(text, str):
            raise InvalidReference(f"invalid reference {text!r}: expected a string; {_FORM}")
        if not text:
            raise InvalidReference(f"invalid reference '': it is empty; {_FORM}")
        if "://" in text:
            raise InvalidReference(
                f"invalid reference {_shown(text)}: a reference has no URL scheme "
                f"(drop '{text.split('://', 1)[0]}://'); {_FORM}"
            )
        if _IMAGE_ID.fullmatch(text):
            raise InvalidReference(
                f"invalid reference {_shown(text)}: 64 hex characters are an image ID, not a "
                f"repository name; write repository@sha256:{text}"
            )
        name, at, digest = text.partition("@")
        if at and "/" in digest:
            raise InvalidReference(
                f"invalid reference {_shown(text)}: it looks like a URL with credentials; "
                f"references carry no credentials (configure them per registry); {_FORM}"
            )
        tag: str | None = None
        colon = name.rfind(":")
        if colon > name.rfind("/"):
            name, tag = name[:colon], name[colon + 1 :]
        if not name:
            raise InvalidReference(
                f"invalid reference {_shown(text)}: the name is missing; {_FORM}"
            )

        first, slash, rest = name.partition("/")
        if slash and _looks_like_registry(first):
            registry, repository = first, rest
        else:
            registry, repository = default_registry, name
            try:
                _check_registry(default_registry, None)
            except InvalidReference as exc:
                raise InvalidReference(f"default_registry: {exc.message}") from None
        # Checked as written first, so a message quotes what the caller typed ("Node", not
        # "library/Node").
        _check_repository(repository, text)
        registry, repository = _normalize(registry, repository)
        _check_fields(registry, repository, tag, digest if at else None, text)
        return cls(registry, repository, tag, digest if at else None)

    def __str__(self) -> str:
        """The canonical full form ``registry/repository[:tag][@digest]``."""
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

    @property
    def name(self) -> str:
        """``registry/repository``."""
        return f"{self.registry}/{self.repository}"

    @property
    def familiar(self) -> str:
        """The short Docker form for display (``node:20`` for ``docker.io/library/node:20``).

        It parses back to the same reference.
        """
        short = self.name
        if self.registry == DOCKER_HUB:
            path = self.repository
            official = path.removeprefix(_OFFICIAL_PREFIX)
            if path.startswith(_OFFICIAL_PREFIX) and "/" not in official:
                path = official
            # "docker.io/my.org/app" must keep its registry: "my.org/app" names another one.
            if "/" not in path:
                # A bare 64-hex name reads as an image ID, not as a repository.
                if not _IMAGE_ID.fullmatch(path) or self.tag or self.digest:
                    short = path
            elif not _looks_like_registry(path.split("/", 1)[0]):
                short = path
        if self.tag is not None:
            short += f":{self.tag}"
        if self.digest is not None:
            short += f"@{self.digest}"
        return short

    @property
    def reference(self) -> str:
        """What to ask the registry for: the digest if set (it wins), else the tag, else
        ``latest``."""
        return self.digest or self.tag or "latest"

    def with_digest(self, digest: str) -> ImageRef:
        """The same reference pinned to ``digest``, keeping the tag."""
        return replace(self, digest=digest)

    def with_tag(self, tag: str | None) -> ImageRef:
        """The same reference with ``tag`` (``None`` drops it), keeping the digest."""
        return replace(self, tag=tag)

    def pinned(self) -> ImageRef:
        """``registry/repository@digest`` with the tag dropped; InvalidReference if no digest."""
        if self.digest is None:
            raise InvalidReference(
                f"{_shown(str(self))} has no digest to pin to; resolve the tag to a digest "
                "first, or write repository@sha256:<64 hex>"
            )
        return ImageRef(self.registry, self.repository, None, self.digest)


def parse_digest(text: str) -> str:
    """Validate a digest such as ``sha256:<64 lowercase hex>`` and return it unchanged."""
    if not isinstance(text, str):
        raise InvalidReference(f"invalid digest {text!r}: expected a string; {_DIGEST_RULE}")
    _check_digest(text, None)
    return text


def is_loopback_registry(registry: str) -> bool:
    """True for a registry on this machine: ``localhost``, ``127.0.0.0/8`` or ``::1``, with
    or without a port. False for anything else, including text that is not a registry."""
    host = registry.strip()
    try:
        # A bare IPv6 address ("::1") has colons that are not a port separator.
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    host, _ = _split_port(host)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
