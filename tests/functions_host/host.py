"""The host side: start a worker, index the app, load its functions, invoke them."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from tests.functions_host.payloads import Trigger
from tests.functions_host.rpc import RPC_DIR, load_protos, read_message, write_message

WORKER = Path(__file__).resolve().parent / "worker_process.py"
HOST_VERSION = "4.0.0-harness"


class WorkerFailure(AssertionError):
    """The worker answered a host request with a Failure status."""

    def __init__(self, stage: str, exception_type: str, message: str) -> None:
        super().__init__(f"{stage} failed: {exception_type}: {message}")
        self.stage = stage
        self.exception_type = exception_type
        self.message = message


@dataclass(frozen=True)
class FunctionMetadata:
    """One function as the worker indexed it: its name, id and raw binding definitions."""

    name: str
    function_id: str
    bindings: tuple[Mapping[str, Any], ...]
    proto: Any = field(repr=False, compare=False)

    @property
    def trigger(self) -> Mapping[str, Any]:
        """The function's trigger binding (the host requires exactly one)."""
        triggers = [b for b in self.bindings if str(b.get("type", "")).endswith("Trigger")]
        if len(triggers) != 1:
            raise AssertionError(f"{self.name} has {len(triggers)} trigger bindings, not 1")
        return triggers[0]

    def binding(self, name: str) -> Mapping[str, Any]:
        """The binding called ``name``."""
        for binding in self.bindings:
            if binding.get("name") == name:
                return binding
        raise KeyError(f"{self.name} has no binding {name!r}")


@dataclass(frozen=True)
class LogLine:
    """A log record the worker sent the host (``RpcLog``)."""

    level: str
    category: str
    message: str


@dataclass(frozen=True)
class HttpAnswer:
    """The HTTP response an HTTP-triggered function returned (``$return`` of type ``http``)."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


@dataclass(frozen=True)
class Invocation:
    """The worker's answer to one ``InvocationRequest``, in terms the host acts on."""

    function: FunctionMetadata
    ok: bool
    error: str
    outputs: Mapping[str, Any]
    return_value: Any
    logs: tuple[LogLine, ...]

    def output_values(self, name: str) -> list[Any]:
        """What the host hands an output binding's collector for ``name``.

        A collector output (queue) receives each element of a JSON array, a JSON object as one
        item, and any other value as is (azure-functions-host, ``src/WebJobs.Script/Binding/
        FunctionBinding.cs``, ``ReadAsCollection``/``BindAsyncCollectorAsync``). Nothing was
        written when the function left the output unset.
        """
        self.function.binding(name)  # the binding must exist
        data = self.outputs.get(name)
        if data is None:
            return []
        kind = data.WhichOneof("data")
        if kind == "json":
            value = json.loads(data.json)
            return value if isinstance(value, list) else [value]
        if kind == "string":
            try:
                value = json.loads(data.string)
            except ValueError:
                return [data.string]
            if isinstance(value, (dict, list)):
                return value if isinstance(value, list) else [value]
            return [data.string]
        if kind == "bytes":
            return [data.bytes]
        raise AssertionError(f"output {name} carries {kind!r} data the harness does not map")

    def queue_messages(self, name: str) -> list[str]:
        """The messages a queue output binding would put on its queue, as text.

        The host turns each collected item into a string: strings stay as they are, JSON
        objects are serialized again (by Json.NET, with other whitespace than here).
        """
        return [
            item if isinstance(item, str) else json.dumps(item, indent=2)
            for item in self.output_values(name)
        ]

    def http_response(self) -> HttpAnswer:
        """The HTTP response in ``$return``."""
        if not self.ok:
            raise AssertionError(f"{self.function.name} failed: {self.error}")
        value = self.return_value
        if value is None or value.WhichOneof("data") != "http":
            raise AssertionError(f"{self.function.name} returned no HTTP response")
        body = value.http.body
        kind = body.WhichOneof("data")
        raw = body.bytes if kind == "bytes" else body.string.encode() if kind == "string" else b""
        return HttpAnswer(int(value.http.status_code), dict(value.http.headers), raw)

    def logged(self, text: str) -> bool:
        """Whether a log line of this invocation contains ``text``."""
        return any(text in line.message for line in self.logs)


class FunctionsHost:
    """Plays the Functions host against one worker process serving the app in ``app_dir``.

    ``settings`` are the app settings: the host passes them to the worker process as
    environment variables, on top of this process's environment (which carries the machine's
    podman configuration and the like).
    """

    def __init__(
        self, app_dir: Path, settings: Mapping[str, str], *, timeout: float = 180.0
    ) -> None:
        self.app_dir = app_dir.resolve()
        self.settings = dict(settings)
        self.timeout = timeout
        self.protos = load_protos()
        self.capabilities: dict[str, str] = {}
        self.init_logs: tuple[LogLine, ...] = ()
        self.functions: dict[str, FunctionMetadata] = {}
        self._process: subprocess.Popen[bytes] | None = None
        self._replies: queue.Queue[Any] = queue.Queue()
        self._logs: list[LogLine] = []
        self._log_lock = threading.Lock()
        # the worker's stdout and stderr, kept for failure messages; closed in close()
        self._output = tempfile.TemporaryFile()  # noqa: SIM115

    # -- process lifetime ------------------------------------------------------------------

    def __enter__(self) -> FunctionsHost:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Start the worker process (it knows nothing of the app until the init request)."""
        read_fd, write_fd = os.pipe()
        env = {
            **os.environ,
            **self.settings,
            "AzureWebJobsScriptRoot": str(self.app_dir),
            "FUNCTIONS_WORKER_RUNTIME": "python",
        }
        env.pop("PYTHONPATH", None)
        self._process = subprocess.Popen(
            [sys.executable, "-P", str(WORKER), str(RPC_DIR), str(write_fd)],
            cwd=self.app_dir,
            env=env,
            stdin=subprocess.PIPE,
            stdout=self._output,
            stderr=self._output,
            pass_fds=(write_fd,),
        )
        os.close(write_fd)
        responses = os.fdopen(read_fd, "rb")
        threading.Thread(target=self._read, args=(responses,), daemon=True).start()

    def close(self) -> None:
        """Close the stream (the worker exits) and wait for the process."""
        process, self._process = self._process, None
        if process is None:
            return
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        self._output.close()

    def worker_output(self) -> str:
        """What the worker process printed (stdout and stderr), for failure messages."""
        if self._output.closed:
            return ""
        self._output.seek(0)
        return self._output.read().decode(errors="replace")

    def _read(self, stream: BinaryIO) -> None:
        while True:
            try:
                message = read_message(stream, self.protos)
            except (EOFError, OSError) as exc:
                self._replies.put(exc)
                return
            if message is None:
                self._replies.put(EOFError("the worker closed its stream"))
                return
            if message.WhichOneof("content") == "rpc_log":
                log = message.rpc_log
                line = LogLine(self.protos.RpcLog.Level.Name(log.level), log.category, log.message)
                with self._log_lock:
                    self._logs.append(line)
                continue
            self._replies.put(message)

    def _call(self, **content: Any) -> Any:
        if self._process is None:
            raise RuntimeError("start the worker first")
        request_id = uuid.uuid4().hex
        message = self.protos.StreamingMessage(request_id=request_id, **content)
        assert self._process.stdin is not None
        write_message(self._process.stdin, message)
        try:
            reply = self._replies.get(timeout=self.timeout)
        except queue.Empty:
            raise AssertionError(
                f"the worker did not answer within {self.timeout}s\n{self.worker_output()}"
            ) from None
        if isinstance(reply, BaseException):
            raise AssertionError(f"the worker stopped: {reply}\n{self.worker_output()}")
        assert reply.request_id == request_id, "the worker answered another request"
        return reply

    def _take_logs(self) -> tuple[LogLine, ...]:
        with self._log_lock:
            logs, self._logs = tuple(self._logs), []
        return logs

    # -- the host's startup sequence -------------------------------------------------------

    def init(self) -> Any:
        """``WorkerInitRequest`` with the app folder; returns the ``StatusResult``.

        The worker library indexes ``function_app.py`` here: an app it cannot bind comes back
        as a Failure, and then none of its functions exist.
        """
        protos = self.protos
        reply = self._call(
            worker_init_request=protos.WorkerInitRequest(
                host_version=HOST_VERSION,
                worker_directory=str(WORKER.parent),
                function_app_directory=str(self.app_dir),
            )
        ).worker_init_response
        self.capabilities = dict(reply.capabilities)
        self.init_logs = self._take_logs()
        return reply.result

    def index(self) -> dict[str, FunctionMetadata]:
        """``FunctionsMetadataRequest``: the functions the worker indexed, by name."""
        protos = self.protos
        reply = self._call(
            functions_metadata_request=protos.FunctionsMetadataRequest(
                function_app_directory=str(self.app_dir)
            )
        ).function_metadata_response
        _raise_on_failure("function metadata", reply.result, protos)
        if reply.use_default_metadata_indexing:
            raise AssertionError("the worker asked the host to index the app (function.json)")
        self.functions = {
            meta.name: FunctionMetadata(
                meta.name,
                meta.function_id,
                tuple(json.loads(raw) for raw in meta.raw_bindings),
                meta,
            )
            for meta in reply.function_metadata_results
        }
        return self.functions

    def load(self) -> None:
        """``FunctionLoadRequest`` for every indexed function, as the host sends them."""
        protos = self.protos
        for function in self.functions.values():
            reply = self._call(
                function_load_request=protos.FunctionLoadRequest(
                    function_id=function.function_id, metadata=function.proto
                )
            ).function_load_response
            _raise_on_failure(f"loading {function.name}", reply.result, protos)

    def boot(self) -> dict[str, FunctionMetadata]:
        """Init (indexing), metadata, load: what the host does before it starts listeners."""
        _raise_on_failure("worker init (indexing the app)", self.init(), self.protos)
        self.index()
        self.load()
        return self.functions

    # -- invocations -----------------------------------------------------------------------

    def invoke(self, name: str, trigger: Trigger) -> Invocation:
        """One ``InvocationRequest`` of function ``name`` with ``trigger`` as its trigger data."""
        protos = self.protos
        function = self.functions[name]
        request = protos.InvocationRequest(
            invocation_id=str(uuid.uuid4()),
            function_id=function.function_id,
            input_data=[
                protos.ParameterBinding(
                    name=function.trigger["name"], data=trigger.data.to_proto(protos)
                )
            ],
            trigger_metadata={
                key: value.to_proto(protos) for key, value in trigger.metadata.items()
            },
        )
        reply = self._call(invocation_request=request).invocation_response
        ok = reply.result.status == protos.StatusResult.Success
        return Invocation(
            function=function,
            ok=ok,
            error="" if ok else reply.result.exception.message,
            outputs={binding.name: binding.data for binding in reply.output_data},
            return_value=reply.return_value if reply.HasField("return_value") else None,
            logs=self._take_logs(),
        )


def _raise_on_failure(stage: str, result: Any, protos: Any) -> None:
    if result.status != protos.StatusResult.Success:
        raise WorkerFailure(stage, result.exception.type, result.exception.message)
