"""Build and push small OCI images without a container daemon (umoci + skopeo + busybox).

The root filesystem is a static busybox with applet symlinks, enough for shell scripts
(``sh -c 'echo $X'``) to run in validation containers. A multi-platform index gets each
architecture's own busybox where one is installed (:func:`busybox_for`): the arm64 child then
really runs as arm64 (under QEMU user emulation on an x86_64 host).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Literal

import httpx

BUSYBOX = Path("/bin/busybox")

FOREIGN_BUSYBOX_DIR = Path(__file__).resolve().parents[1] / ".tools" / "busybox"
"""``<arch>/bin/busybox`` under here: Debian's ``busybox-static:<arch>``, unpacked by
``scripts/setup`` (arm64)."""

_HOST_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)


def busybox_for(architecture: str) -> tuple[Path, bool]:
    """The busybox binary for ``architecture`` and whether it is that architecture's own.

    The host's busybox serves the host's architecture; another architecture's comes from
    :data:`FOREIGN_BUSYBOX_DIR` when setup installed it. Otherwise the host's binary stands in
    (``False``): such a child has the right config but cannot run as its architecture.
    """
    if architecture == _HOST_ARCH:
        return BUSYBOX, True
    foreign = FOREIGN_BUSYBOX_DIR / architecture / "bin" / "busybox"
    if foreign.is_file():
        return foreign, True
    return BUSYBOX, False


APPLETS = (
    "sh", "ash", "echo", "printf", "tr", "cat", "env", "ls", "sleep", "test", "[", "[[",
    "true", "false", "grep", "sed", "awk", "head", "tail", "wc", "cut", "sort", "uniq",
    "id", "uname", "hostname", "mkdir", "rm", "cp", "mv", "ln", "touch", "chmod", "pwd",
    "date", "expr", "seq", "tee", "which", "basename", "dirname", "stat", "find", "xargs",
    "readlink", "realpath", "md5sum", "sha256sum", "od", "hexdump", "ps", "kill", "wget",
)  # fmt: skip

ManifestFormat = Literal["oci", "docker"]

MANIFEST_ACCEPT = ", ".join(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)

_CHUNK = 1 << 20


def _run(args: Sequence[str]) -> str:
    result = subprocess.run(list(args), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(args)} failed (exit {result.returncode}):\n{result.stderr.strip()}"
        )
    return result.stdout


def _split(dest: str) -> tuple[str, str, str]:
    """``HOST/REPO:TAG`` → (host, repo, tag)."""
    host, _, rest = dest.partition("/")
    if not rest:
        raise ValueError(f"destination {dest!r} must be HOST/REPOSITORY[:TAG]")
    repo, sep, tag = rest.rpartition(":")
    if not sep or "/" in tag:
        return host, rest, "latest"
    return host, repo, tag


def _rootfs(root: Path, files: Mapping[str, bytes], busybox: Path = BUSYBOX) -> None:
    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True)
    shutil.copy2(busybox, bin_dir / "busybox")
    for applet in APPLETS:
        os.symlink("busybox", bin_dir / applet)
    for sub in ("tmp", "etc", "usr/bin", "root"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    for name, content in files.items():
        path = root / name.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        # Scripts must be runnable as entrypoints; data files stay read-only-ish.
        path.chmod(0o755 if content.startswith(b"#!") else 0o644)


def _random_file(path: Path, size: int) -> None:
    # Streamed in 1 MiB chunks: a 200 MB layer never sits in memory.
    with path.open("wb") as out:
        left = size
        while left > 0:
            n = min(_CHUNK, left)
            out.write(os.urandom(n))
            left -= n


def _build_layout(
    layout: Path,
    tag: str,
    scratch: Path,
    *,
    env: Mapping[str, str] | None,
    files: Mapping[str, bytes] | None,
    entrypoint: Sequence[str] | None,
    cmd: Sequence[str] | None,
    extra_layer_bytes: int,
    architecture: str,
    busybox: Path = BUSYBOX,
) -> None:
    """Add image ``tag`` to the OCI layout at ``layout`` (created if missing)."""
    if not (layout / "index.json").exists():
        _run(["umoci", "init", "--layout", str(layout)])
    image = f"{layout}:{tag}"
    _run(["umoci", "new", "--image", image])
    root = scratch / f"rootfs-{tag}"
    _rootfs(root, files or {}, busybox)
    _run(["umoci", "insert", "--image", image, str(root), "/"])
    shutil.rmtree(root)
    if extra_layer_bytes > 0:
        blob = scratch / f"extra-{tag}.bin"
        _random_file(blob, extra_layer_bytes)
        _run(["umoci", "insert", "--image", image, str(blob), "/data/extra.bin"])
        blob.unlink()
    config = ["umoci", "config", "--image", image, "--os", "linux"]
    config += ["--architecture", architecture]
    config += ["--config.env", "PATH=/usr/local/bin:/usr/bin:/bin"]
    for key, value in (env or {}).items():
        config += ["--config.env", f"{key}={value}"]
    if entrypoint is not None:
        config += ["--clear", "config.entrypoint"]
        for arg in entrypoint:
            config += ["--config.entrypoint", arg]
    config += ["--clear", "config.cmd"]
    for arg in cmd if cmd is not None else ["/bin/sh"]:
        config += ["--config.cmd", arg]
    _run(config)
    # umoci leaves unreferenced blobs of intermediate steps behind; skopeo ignores them.
    _run(["umoci", "gc", "--layout", str(layout)])


def _push(source: str, dest: str, *, scratch: Path, fmt: ManifestFormat, all_: bool) -> str:
    digest_file = scratch / f"digest-{uuid.uuid4().hex}"
    args = ["skopeo", "copy", "--quiet", "--dest-tls-verify=false"]
    args += ["--digestfile", str(digest_file)]
    if all_:
        args.append("--all")
    if fmt == "docker":
        args += ["--format", "v2s2"]
    _run([*args, source, f"docker://{dest}"])
    digest = digest_file.read_text().strip()
    digest_file.unlink()
    return digest


def manifest_digest(dest: str) -> str:
    """HEAD ``HOST/REPO:TAG`` on a plain-http registry and return its manifest digest."""
    host, repo, tag = _split(dest)
    response = httpx.head(
        f"http://{host}/v2/{repo}/manifests/{tag}", headers={"Accept": MANIFEST_ACCEPT}
    )
    response.raise_for_status()
    return response.headers["Docker-Content-Digest"]


def build_image(
    workdir: Path,
    dest: str,
    *,
    env: dict[str, str] | None = None,
    files: dict[str, bytes] | None = None,
    entrypoint: list[str] | None = None,
    cmd: list[str] | None = None,
    extra_layer_bytes: int = 0,
    architecture: str = "amd64",
    manifest_format: ManifestFormat = "oci",
) -> str:
    """Build a busybox image and push it to ``dest`` (``HOST/REPO:TAG``, plain http).

    Returns the digest of the manifest as the registry stores it (skopeo may recompress
    layers on the way, so the local digest is not the pushed one). ``extra_layer_bytes``
    adds a layer of that many incompressible random bytes. ``manifest_format="docker"``
    pushes a Docker v2 schema 2 manifest instead of an OCI one.
    """
    scratch = Path(workdir) / f"build-{uuid.uuid4().hex[:12]}"
    scratch.mkdir(parents=True)
    layout = scratch / "layout"
    try:
        _build_layout(
            layout,
            "image",
            scratch,
            env=env,
            files=files,
            entrypoint=entrypoint,
            cmd=cmd,
            extra_layer_bytes=extra_layer_bytes,
            architecture=architecture,
        )
        return _push(f"oci:{layout}:image", dest, scratch=scratch, fmt=manifest_format, all_=False)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _layout_blob(layout: Path, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).write_bytes(data)
    return digest


def build_index(
    workdir: Path,
    dest: str,
    *,
    architectures: Iterable[str] = ("amd64", "arm64"),
    env: dict[str, str] | None = None,
    files: dict[str, bytes] | None = None,
    manifest_format: ManifestFormat = "oci",
    files_by_arch: Mapping[str, Mapping[str, bytes]] | None = None,
    variants: Mapping[str, str] | None = None,
) -> str:
    """Push a multi-architecture image (OCI index, or Docker manifest list) to ``dest``.

    Each child is a busybox image whose config names its architecture, with that
    architecture's own busybox where :func:`busybox_for` finds one (else the host's, which
    serves registry and resolver tests but does not run as that architecture).
    ``files_by_arch`` adds files to one child only; ``variants`` gives an architecture a CPU
    variant (``{"arm64": "v8"}``) in its index entry (umoci writes no config variant). Returns the digest of the
    index as the registry stores it.
    """
    scratch = Path(workdir) / f"build-{uuid.uuid4().hex[:12]}"
    scratch.mkdir(parents=True)
    layout = scratch / "layout"
    try:
        children: list[dict[str, object]] = []
        architectures = list(architectures)
        variants = dict(variants or {})
        for arch in architectures:
            _build_layout(
                layout,
                arch,
                scratch,
                env={**(env or {}), "IMAGE_ARCH": arch},
                files={**(files or {}), **(files_by_arch or {}).get(arch, {})},
                entrypoint=None,
                cmd=None,
                extra_layer_bytes=0,
                architecture=arch,
                busybox=busybox_for(arch)[0],
            )
        index_file = layout / "index.json"
        layout_index = json.loads(index_file.read_text())
        by_name = {
            m["annotations"]["org.opencontainers.image.ref.name"]: m
            for m in layout_index["manifests"]
        }
        for arch in architectures:
            entry = by_name[arch]
            platform = {"architecture": arch, "os": "linux"}
            if variants.get(arch):
                platform["variant"] = variants[arch]
            children.append(
                {
                    "mediaType": entry["mediaType"],
                    "digest": entry["digest"],
                    "size": entry["size"],
                    "platform": platform,
                }
            )
        index = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": children,
        }
        data = json.dumps(index, indent=2).encode()
        digest = _layout_blob(layout, data)
        layout_index["manifests"].append(
            {
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "digest": digest,
                "size": len(data),
                "annotations": {"org.opencontainers.image.ref.name": "index"},
            }
        )
        index_file.write_text(json.dumps(layout_index))
        return _push(f"oci:{layout}:index", dest, scratch=scratch, fmt=manifest_format, all_=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def push_to_tag(registry_host: str, repository: str, digest: str, tag: str) -> None:
    """Point ``tag`` of ``repository`` at the existing manifest ``digest`` (plain http).

    Re-PUTs the manifest's exact bytes under the tag: the digest is unchanged.
    """
    base = f"http://{registry_host}/v2/{repository}/manifests"
    response = httpx.get(f"{base}/{digest}", headers={"Accept": MANIFEST_ACCEPT})
    response.raise_for_status()
    put = httpx.put(
        f"{base}/{tag}",
        content=response.content,
        headers={"Content-Type": response.headers["Content-Type"]},
    )
    put.raise_for_status()


class ImageBuilder:
    """Builds and pushes test images, with scratch space under one work directory."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)

    def image(self, dest: str, **options: object) -> str:
        """:func:`build_image` into ``dest``; returns the pushed manifest digest."""
        return build_image(self.workdir, dest, **options)  # type: ignore[arg-type]

    def index(self, dest: str, **options: object) -> str:
        """:func:`build_index` into ``dest``; returns the pushed index digest."""
        return build_index(self.workdir, dest, **options)  # type: ignore[arg-type]


def tag_digests(registry_host: str, repository: str) -> dict[str, str]:
    """Every tag of ``repository`` on a plain-http registry, with the digest it points at."""
    base = f"http://{registry_host}/v2/{repository}"
    listed = httpx.get(f"{base}/tags/list").json().get("tags") or []
    return {
        tag: httpx.head(f"{base}/manifests/{tag}", headers={"Accept": MANIFEST_ACCEPT}).headers[
            "Docker-Content-Digest"
        ]
        for tag in sorted(listed)
    }
