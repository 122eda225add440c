"""Podman configuration for this kind of host: runc, cgroupfs, vfs storage, file events.

crun fails on kernels with hybrid cgroups, overlay needs privileges a nested sandbox may lack,
and journald is usually absent; these settings avoid all three. Storage lives under a state
directory of our own so tests never touch the machine's image store (run state, which is
transient, under a short path in /tmp: see _short_runroot).
"""

from __future__ import annotations

import tempfile
from pathlib import Path


def podman_env(state_dir: Path) -> dict[str, str]:
    """Write containers.conf and storage.conf under ``state_dir``; return the env vars to set.

    Add the result to ``os.environ`` (or a subprocess ``env``) before running ``podman``.
    """
    state_dir = Path(state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    graphroot = state_dir / "storage"
    runroot = _short_runroot(state_dir)
    tmpdir = state_dir / "tmp"
    for path in (graphroot, runroot, tmpdir):
        path.mkdir(parents=True, exist_ok=True)
    containers_conf = state_dir / "containers.conf"
    containers_conf.write_text(
        "[engine]\n"
        'runtime = "runc"\n'
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
        f'events_logfile_path = "{state_dir / "events.log"}"\n'
        f'tmp_dir = "{tmpdir}"\n'
        "\n"
        "[containers]\n"
        'default_ulimits = ["nofile=20000:20000", "nproc=20000:20000"]\n'
    )
    storage_conf = state_dir / "storage.conf"
    storage_conf.write_text(
        f'[storage]\ndriver = "vfs"\ngraphroot = "{graphroot}"\nrunroot = "{runroot}"\n'
    )
    return {
        "CONTAINERS_CONF": str(containers_conf),
        "CONTAINERS_STORAGE_CONF": str(storage_conf),
    }


def _short_runroot(state_dir: Path) -> Path:
    """The run root (sockets, pid files) for ``state_dir``, at a short path of its own.

    With a run root longer than about 50 characters (a pytest tmp_path is), every ``podman run
    --rm`` here took 20 s more: podman gave up waiting for conmon ("Exceeded conmon timeout
    waiting for container to exit"), presumably because a unix socket path under the run root
    passed the 108-byte limit. Run state is transient, so it lives under /tmp, named after the
    state directory (the same directory gets the same run root, as podman's database expects).
    """
    import hashlib

    name = hashlib.sha256(str(state_dir).encode()).hexdigest()[:12]
    base = Path("/tmp") if Path("/tmp").is_dir() else Path(tempfile.gettempdir())
    return base / f"gate-podman-{name}"


def started_containers(since: str, suffix: str = "") -> list[str]:
    """Names of the containers podman started since ``since`` (ISO time) ending in ``suffix``.

    Read from podman's own event log, so a test can count the validations that really ran.
    """
    import subprocess

    listed = subprocess.run(
        [
            "podman",
            "events",
            "--stream=false",
            "--since",
            since,
            "--filter",
            "event=start",
            "--format",
            "{{.Name}}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [name for name in listed if name.endswith(suffix)]
