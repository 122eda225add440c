"""The ``build`` and ``push`` steps of an ACR task file, and the ``FROM`` images of a Dockerfile.

A ``build`` value is read the way ``docker build`` (and so ACR's runner) reads it, limited to the
flags the local runner reproduces; a ``push`` step names images a build step of the file tags.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from collections.abc import Sequence
from typing import Any

from gate.adapters.validation.taskfile_model import ENV_KEY, WORKSPACE, BuildStep, PushStep
from gate.adapters.validation.taskfile_model import LOCAL_FIX as _FIX
from gate.domain.ref import ImageRef
from gate.errors import ConfigError, InvalidReference, UnsupportedTask

# docker build flags the local runner reproduces: the ones that take a value, and switches.
_BUILD_VALUE_FLAGS = {
    "-f": "file",
    "--file": "file",
    "-t": "tag",
    "--tag": "tag",
    "--build-arg": "build-arg",
    "--target": "target",
    "--platform": "platform",
}
_BUILD_SWITCHES = frozenset({"--no-cache"})
_REMOTE_CONTEXT = re.compile(r"^(?:[a-z][a-z0-9+.-]*://|git@)|\.git(?:#.*)?$", re.IGNORECASE)
_DOCKERFILE_VARIABLE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


def base_images(dockerfile: str, build_args: Sequence[str]) -> tuple[tuple[str, ...], bool]:
    """The images a Dockerfile's ``FROM`` lines name, with ARGs declared before them resolved.

    Returns the normalized names (build stages and ``scratch`` left out) and whether every
    ``FROM`` could be resolved (False when one uses an ARG without value or is not a valid
    reference: the engine then resolves it itself). ACR scans the same lines for the run's
    image dependencies before it builds.
    """
    given = dict(arg.partition("=")[::2] for arg in build_args)
    defaults: dict[str, str] = {}
    stages: set[str] = set()
    images: list[str] = []
    complete = True
    logical = re.sub(r"\\\r?\n", " ", dockerfile)
    seen_from = False
    for line in logical.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        instruction = words[0].upper()
        if instruction == "ARG" and not seen_from:
            for word in words[1:]:
                name, _, default = word.partition("=")
                defaults[name] = default.strip("\"'")
            continue
        if instruction != "FROM":
            continue
        seen_from = True
        rest = [w for w in words[1:] if not w.startswith("--")]
        if not rest:
            complete = False
            continue
        if len(rest) >= 3 and rest[1].upper() == "AS":
            stages.add(rest[2].lower())
        values = {**defaults, **given}
        unresolved = False

        def substitute(match: re.Match[str], values: dict[str, str] = values) -> str:
            nonlocal unresolved
            name = match.group(1) or match.group(2)
            if name not in values:
                unresolved = True
                return ""
            return values[name]

        name = _DOCKERFILE_VARIABLE.sub(substitute, rest[0])
        if unresolved:
            complete = False
            continue
        if name.lower() in stages or name.lower() == "scratch":
            continue
        try:
            images.append(str(ImageRef.parse(name)))
        except InvalidReference:
            complete = False
    return tuple(dict.fromkeys(images)), complete


def _inside(path: str, where: str, what: str) -> str:
    """``path`` (absolute, under /workspace) normalized; refused when it leaves /workspace."""
    normal = posixpath.normpath(path)
    if normal != WORKSPACE and not normal.startswith(WORKSPACE + "/"):
        raise UnsupportedTask(
            f"{where}: the {what} {normal} is outside the source context ({WORKSPACE}); the "
            "local runner builds only from the validation folder: move the files into it"
        )
    return normal


def parse_build_step(value: object, where: str, workdir: str, common: dict[str, Any]) -> BuildStep:
    """Parse a ``build`` value the way ``docker build`` (and so ACR) reads it."""
    if not isinstance(value, str):
        raise ConfigError(f"{where}: 'build' must be a string of docker build arguments")
    try:
        words = shlex.split(value)
    except ValueError as exc:
        raise ConfigError(f"{where}: 'build' cannot be split into words ({exc})") from None
    options: dict[str, list[str]] = {name: [] for name in set(_BUILD_VALUE_FLAGS.values())}
    no_cache = False
    positional: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if not word.startswith("-") or word == "-":
            positional.append(word)
            continue
        flag, equals, inline = word.partition("=")
        if flag in _BUILD_SWITCHES:
            if equals and inline.lower() not in ("true", "false"):
                raise ConfigError(f"{where}: '{word}' must be {flag}, {flag}=true or =false")
            no_cache = not equals or inline.lower() == "true"
            continue
        if flag not in _BUILD_VALUE_FLAGS:
            raise UnsupportedTask(
                f"{where}: the build flag '{flag}' is not supported locally (supported: -f, -t, "
                f"--build-arg, --target, --no-cache, --platform); {_FIX}, or remove it"
            )
        if equals:
            argument = inline
        elif i < len(words):
            argument = words[i]
            i += 1
        else:
            raise ConfigError(f"{where}: the build flag '{flag}' needs a value")
        options[_BUILD_VALUE_FLAGS[flag]].append(argument)
    if len(positional) != 1:
        found = ", ".join(repr(p) for p in positional) or "none"
        raise ConfigError(
            f"{where}: 'build' needs exactly one build context (e.g. '.') after its flags "
            f"(found: {found})"
        )
    if _REMOTE_CONTEXT.search(positional[0]) or positional[0] == "-":
        raise UnsupportedTask(
            f"{where}: the build context {positional[0]!r} is not a local folder; the local "
            f"runner builds from the validation folder only; {_FIX}"
        )
    context = _inside(posixpath.join(workdir, positional[0]), where, "build context")
    files = options["file"]
    if len(files) > 1:
        raise ConfigError(f"{where}: 'build' names more than one Dockerfile (-f)")
    # docker build reads a relative -f from its working directory, the default from the context
    dockerfile = posixpath.join(workdir, files[0]) if files else f"{context}/Dockerfile"
    dockerfile = _inside(dockerfile, where, "Dockerfile")
    tags = []
    for tag in options["tag"]:
        try:
            tags.append(str(ImageRef.parse(tag)))
        except InvalidReference as exc:
            raise ConfigError(
                f"{where}: the build tag {tag!r} is not valid: {exc.message}"
            ) from None
    for arg in options["build-arg"]:
        key, equals, rest = arg.partition("=")
        if not equals or not ENV_KEY.fullmatch(key):
            raise ConfigError(
                f"{where}: --build-arg {key!r} has no value; write --build-arg KEY=value (the "
                "local runner does not read build arguments from its own environment)"
            )
        if "\n" in rest or "\r" in rest:
            raise UnsupportedTask(f"{where}: the value of --build-arg {key} spans lines")
    for name in ("target", "platform"):
        if len(options[name]) > 1:
            raise ConfigError(f"{where}: 'build' gives --{name} more than once")
    return BuildStep(
        tags=tuple(dict.fromkeys(tags)),
        dockerfile=dockerfile,
        context=context,
        build_args=tuple(options["build-arg"]),
        target=options["target"][0] if options["target"] else None,
        no_cache=no_cache,
        platform=options["platform"][0] if options["platform"] else None,
        working_directory=workdir,
        **common,
    )


def parse_push_step(value: object, where: str, common: dict[str, Any]) -> PushStep:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}: 'push' must be a list of image names (registry/repo:tag)")
    images = []
    for name in value:
        try:
            ref = ImageRef.parse(name)
        except InvalidReference as exc:
            raise ConfigError(
                f"{where}: the image {name!r} to push is not valid: {exc.message}"
            ) from None
        if ref.tag is None:
            raise ConfigError(f"{where}: the image {name!r} to push needs a tag")
        images.append(str(ref))
    return PushStep(images=tuple(dict.fromkeys(images)), **common)
