"""The worker side of the harness: what the Python proxy worker does with each host message.

Run by :class:`tests.functions_host.FunctionsHost` as a child process, in the function app's
folder, with the app settings in its environment (as the host starts a worker):

    python -P worker_process.py RPC_DIR RESPONSE_FD

It reads ``StreamingMessage`` requests on stdin and answers on ``RESPONSE_FD``, dispatching
each to the worker library's entry point the way the proxy worker's dispatcher does
(Azure/azure-functions-python-worker, ``workers/proxy_worker/dispatcher.py``): the init
request starts the library's thread pool and passes ``{"protos", "host"}`` properties; every
request goes in whole as ``WorkerRequest.request``; the answer goes back wrapped in a
``StreamingMessage`` with the request's id. Log records become ``RpcLog`` messages, tagged with
the invocation they belong to, as the dispatcher's logging handler sends them.

stdout and stderr stay free for whatever the app prints; the host keeps them for diagnostics.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class WorkerRequest:
    """What the proxy worker hands the library: the request name, the message, properties."""

    name: str
    request: Any
    properties: dict[str, Any] | None = None


class RpcLogHandler(logging.Handler):
    """Sends each log record to the host as an ``RpcLog`` message (as the proxy worker does)."""

    def __init__(self, send: Any, protos: Any, invocation_id: Any) -> None:
        super().__init__()
        self._send = send
        self._protos = protos
        self._invocation_id = invocation_id

    def emit(self, record: logging.LogRecord) -> None:
        protos = self._protos
        if record.levelno >= logging.CRITICAL:
            level = protos.RpcLog.Critical
        elif record.levelno >= logging.ERROR:
            level = protos.RpcLog.Error
        elif record.levelno >= logging.WARNING:
            level = protos.RpcLog.Warning
        elif record.levelno >= logging.INFO:
            level = protos.RpcLog.Information
        else:
            level = protos.RpcLog.Debug
        log = protos.RpcLog(level=level, message=self.format(record), category=record.name)
        invocation_id = self._invocation_id.get()
        if invocation_id:
            log.invocation_id = invocation_id
        self._send(protos.StreamingMessage(rpc_log=log))


async def serve(rpc_dir: Path, response_fd: int) -> None:
    """Answer host messages until stdin closes."""
    # the framing helpers, loaded by path: nothing of this folder goes on the app's sys.path
    spec = importlib.util.spec_from_file_location("_functions_host_rpc", HERE / "rpc.py")
    assert spec is not None and spec.loader is not None
    rpc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rpc)
    read_message, write_message = rpc.read_message, rpc.write_message
    protos = rpc.load_protos(rpc_dir)
    import azure_functions_runtime as library

    responses = os.fdopen(response_fd, "wb")
    lock = threading.Lock()

    def send(message: Any) -> None:
        with lock:
            write_message(responses, message)

    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.addHandler(RpcLogHandler(send, protos, library.invocation_id_cv))

    requests = sys.stdin.buffer
    while (message := read_message(requests, protos)) is not None:
        kind = message.WhichOneof("content")
        if kind == "worker_init_request":
            # the proxy worker puts the app folder (AzureWebJobsScriptRoot) on sys.path
            directory = message.worker_init_request.function_app_directory
            if directory not in sys.path:
                sys.path.insert(0, directory)
            library.start_threadpool_executor()
            answer = await library.worker_init_request(
                WorkerRequest(
                    "WorkerInitRequest",
                    message,
                    {"protos": protos, "host": "127.0.0.1"},
                )
            )
            reply = protos.StreamingMessage(worker_init_response=answer)
        elif kind == "functions_metadata_request":
            answer = await library.functions_metadata_request(
                WorkerRequest("WorkerMetadataRequest", message)
            )
            reply = protos.StreamingMessage(function_metadata_response=answer)
        elif kind == "function_load_request":
            answer = await library.function_load_request(
                WorkerRequest("FunctionLoadRequest", message)
            )
            reply = protos.StreamingMessage(function_load_response=answer)
        elif kind == "invocation_request":
            answer = await library.invocation_request(
                WorkerRequest("FunctionInvocationRequest", message)
            )
            reply = protos.StreamingMessage(invocation_response=answer)
        else:
            raise SystemExit(f"worker_process: no handler for {kind!r} messages")
        reply.request_id = message.request_id
        send(reply)
    library.stop_threadpool_executor()


if __name__ == "__main__":
    asyncio.run(serve(Path(sys.argv[1]), int(sys.argv[2])))
