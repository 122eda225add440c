"""Downstream task files run locally after a promotion (``downstream: [{file: ...}]``).

Implements :class:`gate.ports.DownstreamRunner` on the local validator: the task file (an ACR
task file, e.g. an application's ``build`` + ``cmd`` on the new base image) runs with podman or
docker, its folder as the source context, exactly as a validation does. Unlike an ACR task,
which the gate queues and leaves, a local run ends before ``start`` returns, so the record gets
its outcome: ``succeeded``, or ``failed`` with the reason (a failure never undoes the
promotion; the service records it and ``gate downstream RECORD_ID`` runs it again).

The run gets these values besides the entry's own ``values``:

* ``BASE_IMAGE``: the promoted stable reference, e.g. ``127.0.0.1:5002/node:15-alpine``;
* ``BASE_DIGEST``: the promoted digest; ``BASE_IMAGE_PINNED``: the repository at that digest;
* ``REGISTRY_FROM_URL``: the registry promoted into, with a trailing slash (what a Dockerfile
  written as ``FROM ${REGISTRY_FROM_URL}node:15-alpine`` expects).

``{{.Run.Registry}}`` is the registry promoted into; what a build step tags stays in the
engine's store and is removed when the run ends, and a push step pushes only to the run's
scratch store, as in a validation.

The validation's candidate is the promoted digest: the validator keeps it in the engine's store
after a pass (``ValidationRequest.hand_over``) and the run names it with the stable reference
before it starts, so the ``FROM`` of the promoted base resolves in the store, checked against
the promoted digest, and nothing is downloaded twice.
"""

from __future__ import annotations

from gate.adapters.validation.local import LocalValidator, last_step_output
from gate.config.model import DownstreamTask
from gate.domain.records import DownstreamRun, Outcome
from gate.domain.ref import ImageRef
from gate.errors import ConfigError
from gate.ports import ValidationRequest

__all__ = ["LocalTaskDownstream"]

_OUTPUT_CHARS = 300


class LocalTaskDownstream:
    """:class:`gate.ports.DownstreamRunner` for local task files, on a :class:`LocalValidator`."""

    def __init__(self, validator: LocalValidator) -> None:
        self.validator = validator

    def start(self, task: DownstreamTask, image: ImageRef) -> DownstreamRun:
        """Run the task file for the promoted ``image`` (stable tag and digest) to its end.

        Raises ConfigError (nothing ran) for an entry that is not a local task file or a task
        file the local runner refuses; a run that fails is returned with its ``error``.
        """
        if task.file is None:
            raise ConfigError(
                f"downstream task '{task.task}' is an ACR task; the local gate runs task files "
                "only ({file: path/to/acr-task.yaml})"
            )
        if image.digest is None or image.tag is None:
            raise ConfigError(f"downstream of {image}: the promoted image needs tag and digest")
        stable = ImageRef(image.registry, image.repository, tag=image.tag)
        pinned = image.pinned()
        values = {
            **task.values,
            "BASE_IMAGE": str(stable),
            "BASE_DIGEST": image.digest,
            "BASE_IMAGE_PINNED": str(pinned),
            "REGISTRY_FROM_URL": f"{image.registry}/",
        }
        request = ValidationRequest(
            image=pinned,
            folder=task.file.parent,
            task_file=task.file.name,
            values=values,
            timeout_seconds=task.timeout_seconds,
            run_registry=image.registry,
        )
        # the candidate the validation pulled is this digest: named as the stable reference,
        # the run builds on it without downloading it again
        self.validator.adopt(image.digest, stable)
        try:
            result = self.validator.validate(request, lambda _run_id: None)
        finally:
            self.validator.release(image.digest)
        output = last_step_output(result.log)[:_OUTPUT_CHARS]
        if result.outcome is Outcome.PASSED:
            return DownstreamRun(
                registry=task.registry,
                task=task.task,
                run_id=result.run_id,
                outcome="succeeded",
                output=output,
            )
        return DownstreamRun(
            registry=task.registry,
            task=task.task,
            run_id=result.run_id,
            error=f"run {result.run_id} {result.outcome.value}: {result.reason}",
            outcome="failed",
            output=output,
        )
