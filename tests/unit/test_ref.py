"""ImageRef: the OCI/Docker reference grammar, Docker Hub normalisation, messages."""

from __future__ import annotations

import dataclasses
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gate.domain.ref import ImageRef, is_loopback_registry, parse_digest
from gate.errors import InvalidReference, UsageError

SHA256 = "sha256:" + "0123456789abcdef" * 4
SHA512 = "sha512:" + "fedcba9876543210" * 8

# (text, registry, repository, tag, digest)
VALID = [
    ("node", "docker.io", "library/node", None, None),
    ("node:15-alpine", "docker.io", "library/node", "15-alpine", None),
    ("user/app", "docker.io", "user/app", None, None),
    ("user/app:v1.2.3", "docker.io", "user/app", "v1.2.3", None),
    ("docker.io/node", "docker.io", "library/node", None, None),
    ("docker.io/library/node:20", "docker.io", "library/node", "20", None),
    ("index.docker.io/node", "docker.io", "library/node", None, None),
    ("registry-1.docker.io/user/app", "docker.io", "user/app", None, None),
    ("Docker.IO/node", "docker.io", "library/node", None, None),
    ("ghcr.io/team/app", "ghcr.io", "team/app", None, None),
    ("ghcr.io/app", "ghcr.io", "app", None, None),
    ("ghcr.io/a/b/c/d", "ghcr.io", "a/b/c/d", None, None),
    ("localhost/app", "localhost", "app", None, None),
    ("localhost:5000/app:1", "localhost:5000", "app", "1", None),
    ("127.0.0.1:5000/team/app", "127.0.0.1:5000", "team/app", None, None),
    ("10.1.2.3/app", "10.1.2.3", "app", None, None),
    ("[::1]:5000/app", "[::1]:5000", "app", None, None),
    ("[::1]/app", "[::1]", "app", None, None),
    ("[2001:db8::1]:443/x/y:z", "[2001:db8::1]:443", "x/y", "z", None),
    ("my-registry.example.com:8443/a", "my-registry.example.com:8443", "a", None, None),
    ("Registry/app", "Registry", "app", None, None),  # uppercase: a registry, as in distribution
    ("a.b/c", "a.b", "c", None, None),
    ("app-name/x_y", "docker.io", "app-name/x_y", None, None),
    ("a/b.c/d__e/f--g/h---i", "docker.io", "a/b.c/d__e/f--g/h---i", None, None),
    ("localhost", "docker.io", "library/localhost", None, None),
    ("localhost:5000", "docker.io", "library/localhost", "5000", None),
    ("node:_", "docker.io", "library/node", "_", None),
    ("node:" + "t" * 128, "docker.io", "library/node", "t" * 128, None),
    ("node:Latest.2_x-y", "docker.io", "library/node", "Latest.2_x-y", None),
    (f"node@{SHA256}", "docker.io", "library/node", None, SHA256),
    (f"node:20@{SHA256}", "docker.io", "library/node", "20", SHA256),
    (f"ghcr.io/a/b:c@{SHA512}", "ghcr.io", "a/b", "c", SHA512),
    ("a" * 63, "docker.io", "library/" + "a" * 63, None, None),
    # the 255-character limit counts the repository path only, as distribution/reference does
    ("/".join(["a"] * 127), "docker.io", "/".join(["a"] * 127), None, None),
    ("example.com/" + "a" * 255, "example.com", "a" * 255, None, None),
    ("a" * 247, "docker.io", "library/" + "a" * 247, None, None),
]


@pytest.mark.parametrize(("text", "registry", "repository", "tag", "digest"), VALID)
def test_parse_accepts_grammar_valid_references(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    ref = ImageRef.parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        registry,
        repository,
        tag,
        digest,
    )
    assert ImageRef.parse(str(ref)) == ref
    assert ImageRef.parse(ref.familiar) == ref


# (text, the part the message must name, the offending value it must quote)
INVALID = [
    ("", "reference", "''"),
    ("node:x y", "tag", "'x y'"),
    ("node:-x", "tag", "'-x'"),
    ("node:.x", "tag", "'.x'"),
    ("node:", "tag", "''"),
    ("node:" + "t" * 129, "tag", "'" + "t" * 129 + "'"),
    ("node:a/b", "registry port", "'a'"),  # ':' before the '/': a registry, not a tag
    ("Node", "repository", "'Node'"),
    ("user/App", "repository", "'user/App'"),
    ("ghcr.io/Team/app", "repository", "'Team/app'"),
    ("a//b", "repository", "component ''"),
    ("a/", "repository", "component ''"),
    ("/a", "repository", "component ''"),
    ("-a/b", "repository", "component '-a'"),
    ("a-/b", "repository", "component 'a-'"),
    ("a__/b", "repository", "component 'a__'"),
    ("a___b", "repository", "component 'a___b'"),
    ("a._b", "repository", "component 'a._b'"),
    ("a b", "repository", "component 'a b'"),
    ("ex_ample.com/app", "registry", "'ex_ample.com'"),
    ("-example.com/app", "registry", "'-example.com'"),
    ("example-.com/app", "registry", "'example-.com'"),
    ("example..com/app", "registry", "'example..com'"),
    ("localhost:/app", "registry port", "''"),
    ("localhost:99999/app", "registry port", "'99999'"),
    ("localhost:0/app", "registry port", "'0'"),
    ("localhost:50a/app", "registry port", "'50a'"),
    ("[::1/app", "registry", "'[::1'"),
    ("[zz::1]:5000/app", "registry", "'[zz::1]:5000'"),
    ("[fe80::1%eth0]/app", "registry", "'[fe80::1%eth0]'"),
    ("node@", "digest", "''"),
    ("node@sha256", "digest", "'sha256'"),
    ("node@sha256:abc", "digest", "'sha256:abc'"),
    ("node@sha256:" + "A" * 64, "digest", "'sha256:" + "A" * 64 + "'"),
    ("node@sha256:" + "a" * 65, "digest", "'sha256:" + "a" * 65 + "'"),
    ("node@sha512:" + "a" * 64, "digest", "'sha512:" + "a" * 64 + "'"),
    ("node@SHA256:" + "a" * 64, "digest", "'SHA256:" + "a" * 64 + "'"),
    ("node@md5:" + "a" * 31, "digest", "'md5:" + "a" * 31 + "'"),
    ("node@md5:" + "a" * 32, "digest", "'md5:" + "a" * 32 + "'"),
    ("node@sha1:" + "a" * 40, "digest", "'sha1:" + "a" * 40 + "'"),
    ("node@sha256x:" + "a" * 64, "digest", "'sha256x:" + "a" * 64 + "'"),
    ("node@foo:" + "A" * 64, "digest", "'foo:" + "A" * 64 + "'"),
    ("node@sha384:" + "a" * 96, "digest", "'sha384:" + "a" * 96 + "'"),
    ("node@blake3:" + "a" * 64, "digest", "'blake3:" + "a" * 64 + "'"),
    ("node@sha+:" + "a" * 32, "digest", "'sha+:" + "a" * 32 + "'"),
    ("node@x:" + "a" * 31 + "!", "digest", "'x:" + "a" * 31 + "!'"),
    (f"node@{SHA256}@{SHA256}", "digest", f"'{SHA256}@{SHA256}'"),
    ("a" * 64, "reference", "'" + "a" * 64 + "'"),
    ("https://ghcr.io/app", "reference", "'https://ghcr.io/app'"),
    (":tag", "reference", "':tag'"),
    ("example.com/" + "a" * 256, "name", "'example.com/" + "a" * 256 + "'"),
    ("a" * 248, "name", "'docker.io/library/" + "a" * 248 + "'"),
    ("/".join(["a"] * 129), "name", "'docker.io/" + "/".join(["a"] * 129) + "'"),
    ("node\n", "repository", "component 'node\\n'"),
]


@pytest.mark.parametrize(("text", "part", "quoted"), INVALID)
def test_parse_rejects_invalid_references_naming_the_part(
    text: str, part: str, quoted: str
) -> None:
    with pytest.raises(InvalidReference) as caught:
        ImageRef.parse(text)
    message = caught.value.message
    assert message.startswith(f"invalid {part} "), message
    assert quoted in message, message
    # The whole input is quoted, so the caller can find it (unless it *is* the quoted part).
    assert repr(text) in message or len(text) > 300, message


def test_invalid_reference_is_a_usage_error_with_exit_code_2() -> None:
    with pytest.raises(UsageError) as caught:
        ImageRef.parse("node:x y")
    assert caught.value.exit_code == 2
    assert caught.value.retryable is False


def test_tag_error_says_what_a_valid_tag_looks_like() -> None:
    with pytest.raises(InvalidReference) as caught:
        ImageRef.parse("node:x y")
    assert caught.value.message == (
        "invalid tag 'x y' in 'node:x y': a tag is up to 128 characters of letters, digits, "
        "'_', '.', '-', not starting with '.' or '-'"
    )


def test_uppercase_repository_error_suggests_the_lowercase_name() -> None:
    with pytest.raises(InvalidReference, match="must be lowercase; write 'team/app'"):
        ImageRef.parse("ghcr.io/Team/App")


def test_sha256_digest_error_gives_the_expected_length() -> None:
    with pytest.raises(InvalidReference) as caught:
        ImageRef.parse("node@sha256:abc")
    assert "64 lowercase hex characters" in caught.value.message
    assert "has 3 characters" in caught.value.message


def test_unqualified_registry_error_suggests_a_qualified_one() -> None:
    with pytest.raises(InvalidReference) as caught:
        ImageRef("myregistry", "app")
    assert "'myregistry.local'" in caught.value.message
    assert "'myregistry:5000'" in caught.value.message


def test_port_error_says_the_valid_range() -> None:
    with pytest.raises(InvalidReference, match="a port is a number from 1 to 65535"):
        ImageRef.parse("localhost:70000/app")


def test_image_id_error_suggests_a_digest_reference() -> None:
    with pytest.raises(InvalidReference, match=r"image ID.*repository@sha256:"):
        ImageRef.parse("f" * 64)


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("user:s3cret@ghcr.io/team/app", "s3cret"),
        ("https://user:s3cret@ghcr.io/team/app", "s3cret"),
        ("https://user:s3cret@ghcr.io", "s3cret"),
    ],
)
def test_messages_never_quote_url_credentials(text: str, secret: str) -> None:
    with pytest.raises(InvalidReference) as caught:
        ImageRef.parse(text)
    assert secret not in caught.value.message
    assert "***@ghcr.io" in caught.value.message


def test_very_long_input_is_shortened_in_the_message() -> None:
    with pytest.raises(InvalidReference) as caught:
        ImageRef.parse("a" * 5000)
    assert len(caught.value.message) < 1200


# ---- normalisation, default registry ------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "node",
        "docker.io/node",
        "library/node",
        "docker.io/library/node",
        "index.docker.io/node",
        "index.docker.io/library/node",
        "registry-1.docker.io/library/node",
    ],
)
def test_docker_hub_spellings_of_one_image_are_equal(text: str) -> None:
    assert ImageRef.parse(text) == ImageRef("docker.io", "library/node")
    assert hash(ImageRef.parse(text)) == hash(ImageRef("docker.io", "library/node"))


def test_direct_construction_normalises_docker_hub() -> None:
    assert ImageRef("index.docker.io", "node", "20") == ImageRef.parse("node:20")


def test_default_registry_takes_unqualified_names_without_library_prefix() -> None:
    assert ImageRef.parse("node:20", default_registry="ghcr.io") == ImageRef(
        "ghcr.io", "node", "20"
    )
    assert ImageRef.parse("team/app", default_registry="localhost:5000") == ImageRef(
        "localhost:5000", "team/app"
    )


def test_default_registry_does_not_apply_to_qualified_names() -> None:
    assert ImageRef.parse("docker.io/node", default_registry="ghcr.io") == ImageRef(
        "docker.io", "library/node"
    )
    assert ImageRef.parse("quay.io/a/b", default_registry="ghcr.io").registry == "quay.io"


def test_default_registry_must_be_a_registry_name() -> None:
    with pytest.raises(InvalidReference, match="default_registry: invalid registry 'bad_host'"):
        ImageRef.parse("node", default_registry="bad_host")


def test_name_limit_counts_the_normalised_repository_path_not_the_registry() -> None:
    repository = "a" * 255
    assert ImageRef.parse(f"example.com/{repository}").repository == repository
    with pytest.raises(InvalidReference, match="path is 256 characters"):
        ImageRef.parse(f"example.com/{repository}a")
    # Docker Hub's "library/" counts: it is part of the path the registry serves
    with pytest.raises(InvalidReference, match="path is 256 characters"):
        ImageRef.parse("a" * 248)


# ---- formatting and derived values ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "full", "familiar"),
    [
        ("node:15-alpine", "docker.io/library/node:15-alpine", "node:15-alpine"),
        ("user/app", "docker.io/user/app", "user/app"),
        ("library/a/b", "docker.io/library/a/b", "library/a/b"),
        (f"node@{SHA256}", f"docker.io/library/node@{SHA256}", f"node@{SHA256}"),
        (f"node:1@{SHA256}", f"docker.io/library/node:1@{SHA256}", f"node:1@{SHA256}"),
        ("ghcr.io/team/app:1", "ghcr.io/team/app:1", "ghcr.io/team/app:1"),
        ("localhost:5000/app", "localhost:5000/app", "localhost:5000/app"),
        # "my.org/app" alone would name the registry my.org, so the familiar form keeps docker.io.
        ("docker.io/my.org/app", "docker.io/my.org/app", "docker.io/my.org/app"),
        ("docker.io/localhost/app", "docker.io/localhost/app", "docker.io/localhost/app"),
        ("docker.io/library/my.app", "docker.io/library/my.app", "my.app"),
    ],
)
def test_str_is_the_full_form_and_familiar_the_short_one(
    text: str, full: str, familiar: str
) -> None:
    ref = ImageRef.parse(text)
    assert str(ref) == full
    assert ref.familiar == familiar


def test_reference_prefers_digest_then_tag_then_latest() -> None:
    assert ImageRef.parse(f"node:20@{SHA256}").reference == SHA256
    assert ImageRef.parse("node:20").reference == "20"
    assert ImageRef.parse("node").reference == "latest"


def test_name_is_registry_slash_repository() -> None:
    assert ImageRef.parse("node:20").name == "docker.io/library/node"


def test_with_digest_keeps_the_tag_and_with_tag_keeps_the_digest() -> None:
    ref = ImageRef.parse("ghcr.io/team/app:1").with_digest(SHA256)
    assert str(ref) == f"ghcr.io/team/app:1@{SHA256}"
    assert str(ref.with_tag("2")) == f"ghcr.io/team/app:2@{SHA256}"
    assert str(ref.with_tag(None)) == f"ghcr.io/team/app@{SHA256}"


def test_with_digest_and_with_tag_validate() -> None:
    ref = ImageRef.parse("ghcr.io/team/app")
    with pytest.raises(InvalidReference, match="invalid digest 'sha256:nope'"):
        ref.with_digest("sha256:nope")
    with pytest.raises(InvalidReference, match="invalid tag 'a b'"):
        ref.with_tag("a b")


def test_pinned_drops_the_tag_and_requires_a_digest() -> None:
    ref = ImageRef.parse(f"ghcr.io/team/app:1@{SHA256}")
    assert ref.pinned() == ImageRef("ghcr.io", "team/app", None, SHA256)
    with pytest.raises(InvalidReference, match="has no digest to pin to"):
        ImageRef.parse("ghcr.io/team/app:1").pinned()


def test_image_ref_is_frozen_and_hashable() -> None:
    ref = ImageRef.parse("node:20")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ref.tag = "21"  # type: ignore[misc]
    assert {ref, ImageRef.parse("docker.io/library/node:20")} == {ref}


@pytest.mark.parametrize(
    ("fields", "part"),
    [
        (("ghcr.io", "Team/app"), "repository"),
        (("ghcr.io", "app", ""), "tag"),
        (("ghcr.io", "app", None, ""), "digest"),
        (("ghcr io", "app"), "registry"),
        (("ghcr.io", ""), "repository"),
        (("ghcr.io", "app", 20), "tag"),
        ((None, "app"), "registry"),
    ],
)
def test_direct_construction_validates_fields(fields: tuple[object, ...], part: str) -> None:
    with pytest.raises(InvalidReference, match=f"^invalid {part} "):
        ImageRef(*fields)  # type: ignore[arg-type]


def test_a_yaml_number_as_tag_gets_a_quote_it_hint() -> None:
    with pytest.raises(InvalidReference, match="quote it: '20'"):
        ImageRef("ghcr.io", "app", 20)  # type: ignore[arg-type]


# ---- parse_digest, is_loopback_registry ----------------------------------------------------


@pytest.mark.parametrize("digest", [SHA256, SHA512])
def test_parse_digest_returns_a_valid_digest_unchanged(digest: str) -> None:
    assert parse_digest(digest) == digest


@pytest.mark.parametrize(
    "digest",
    [
        "",
        "sha256",
        SHA256[:-1],
        SHA256.upper(),
        "sha256:" + "g" * 64,
        f" {SHA256}",
        "md5:" + "a" * 32,
        "sha1:" + "a" * 40,
        "sha256x:" + "a" * 64,
        "sha384:" + "0" * 96,
        "x.y+z:" + "a=" * 16,
    ],
)
def test_parse_digest_rejects_invalid_digests(digest: str) -> None:
    with pytest.raises(InvalidReference, match=f"^invalid digest {re.escape(repr(digest))}: "):
        parse_digest(digest)


@pytest.mark.parametrize(
    ("registry", "loopback"),
    [
        ("localhost", True),
        ("localhost:5000", True),
        ("LOCALHOST:5000", True),
        ("127.0.0.1", True),
        ("127.0.0.1:5000", True),
        ("127.8.9.10:80", True),
        ("[::1]", True),
        ("[::1]:5000", True),
        ("::1", True),
        ("128.0.0.1:5000", False),
        ("10.0.0.1", False),
        ("ghcr.io", False),
        ("localhost.example.com:5000", False),
        ("[2001:db8::1]:5000", False),
        ("", False),
        ("not a host", False),
    ],
)
def test_is_loopback_registry(registry: str, loopback: bool) -> None:
    assert is_loopback_registry(registry) is loopback


# ---- round trip over the grammar -----------------------------------------------------------

_label = st.from_regex(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,10}[a-zA-Z0-9])?", fullmatch=True)
_port = st.integers(1, 65535).map(lambda p: f":{p}")
_domain_name = st.tuples(_label, st.lists(_label, min_size=1, max_size=3)).map(
    lambda t: ".".join([t[0], *t[1]])
)
_ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
_ipv6 = st.ip_addresses(v=6).map(lambda a: f"[{a}]")
_registry = st.one_of(
    st.just("docker.io"),
    st.tuples(_domain_name, st.one_of(st.just(""), _port)).map("".join),
    st.tuples(_label, _port).map("".join),
    st.tuples(st.just("localhost"), st.one_of(st.just(""), _port)).map("".join),
    st.tuples(_ipv4, st.one_of(st.just(""), _port)).map("".join),
    st.tuples(_ipv6, st.one_of(st.just(""), _port)).map("".join),
)
_component = st.from_regex(r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+){0,3}", fullmatch=True)
_repository = st.lists(_component, min_size=1, max_size=4).map("/".join)
_tag = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", fullmatch=True)
_digest = st.one_of(
    st.from_regex(r"sha256:[a-f0-9]{64}", fullmatch=True),
    st.from_regex(r"sha512:[a-f0-9]{128}", fullmatch=True),
)


@st.composite
def _refs(draw: st.DrawFn) -> ImageRef:
    registry = draw(_registry)
    repository = draw(_repository.filter(lambda r: len(r) < 240))
    return ImageRef(registry, repository, draw(st.none() | _tag), draw(st.none() | _digest))


@given(_refs())
def test_parse_of_str_round_trips(ref: ImageRef) -> None:
    assert ImageRef.parse(str(ref)) == ref


@given(_refs())
def test_parse_of_familiar_round_trips(ref: ImageRef) -> None:
    assert ImageRef.parse(ref.familiar) == ref


@given(_refs(), st.sampled_from(["ghcr.io", "localhost:5000", "[::1]:5000"]))
def test_default_registry_does_not_change_fully_qualified_references(
    ref: ImageRef, default_registry: str
) -> None:
    assert ImageRef.parse(str(ref), default_registry=default_registry) == ref
