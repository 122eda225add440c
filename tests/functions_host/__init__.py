"""A stand-in for the Azure Functions host that drives the real Python worker library.

The host and a language worker talk over one gRPC stream of ``StreamingMessage`` protobufs
(``FunctionRpc.proto`` of azure-functions-language-worker-protobuf). In Azure, the Python
"proxy worker" receives them and hands each to the worker library the app ships in its
requirements (``azure-functions-runtime`` for the v2 programming model on Python 3.13+),
through its async entry points ``worker_init_request``, ``functions_metadata_request``,
``function_load_request`` and ``invocation_request``.

Here :class:`FunctionsHost` plays the host side and ``worker_process.py`` plays the proxy
worker, in a child process (one worker process per app, as in Azure), with the same
``StreamingMessage`` protobufs on a pipe instead of gRPC. Everything between the message and
the app's function (indexing ``function_app.py``, type checks of the annotations, converting
trigger payloads and output bindings) is the real worker library's code.

:mod:`.payloads` builds trigger payloads the way the host shapes them; :mod:`.checks` runs the
checks the host makes on the indexed metadata before it starts listeners.
"""

from tests.functions_host.host import (
    FunctionMetadata,
    FunctionsHost,
    Invocation,
    LogLine,
    WorkerFailure,
)

__all__ = ["FunctionMetadata", "FunctionsHost", "Invocation", "LogLine", "WorkerFailure"]
