"""The Functions RPC protobuf messages and how the harness frames them on a pipe.

The generated ``*_pb2`` modules are not part of ``azure-functions-runtime`` (the proxy worker
brings them in Azure); ``scripts/setup`` extracts them from the pinned
``azure-functions-runtime-v1`` wheel into ``.tools/functions-rpc/functions_rpc/``.
"""

from __future__ import annotations

import importlib
import struct
import sys
import types
from pathlib import Path
from typing import Any, BinaryIO

ROOT = Path(__file__).resolve().parents[2]
RPC_DIR = ROOT / ".tools" / "functions-rpc"
_HEADER = struct.Struct(">I")


class ProtosMissing(RuntimeError):
    """The generated Functions RPC modules are not where ``scripts/setup`` puts them."""


def load_protos(rpc_dir: Path = RPC_DIR) -> types.ModuleType:
    """One module holding the RPC message classes, shaped like the proxy worker's ``protos``.

    The worker library reads everything it needs from the ``protos`` object the proxy worker
    hands it: the messages of ``FunctionRpc.proto`` and the nullable wrappers of
    ``shared/NullableTypes.proto``.
    """
    if not (rpc_dir / "functions_rpc" / "FunctionRpc_pb2.py").is_file():
        raise ProtosMissing(
            f"the Functions RPC protobuf modules are missing under {rpc_dir}; run scripts/setup"
        )
    if str(rpc_dir) not in sys.path:
        sys.path.insert(0, str(rpc_dir))
    rpc = importlib.import_module("functions_rpc.FunctionRpc_pb2")
    nullable = importlib.import_module("functions_rpc.shared.NullableTypes_pb2")
    protos = types.ModuleType("protos")
    for source in (rpc, nullable):
        for name in dir(source):
            if not name.startswith("_"):
                setattr(protos, name, getattr(source, name))
    return protos


def write_message(stream: BinaryIO, message: Any) -> None:
    """Send one ``StreamingMessage``: a 4-byte big-endian length, then the protobuf bytes."""
    data = message.SerializeToString()
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def read_message(stream: BinaryIO, protos: types.ModuleType) -> Any | None:
    """The next ``StreamingMessage`` on ``stream``, or None when the other side closed it."""
    header = _read_exactly(stream, _HEADER.size)
    if header is None:
        return None
    (length,) = _HEADER.unpack(header)
    data = _read_exactly(stream, length) if length else b""
    if data is None:
        raise EOFError("the stream ended inside a message")
    message = protos.StreamingMessage()
    message.ParseFromString(data)
    return message


def _read_exactly(stream: BinaryIO, size: int) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = stream.read(size - len(chunks))
        if not chunk:
            if chunks:
                raise EOFError("the stream ended inside a message")
            return None
        chunks.extend(chunk)
    return bytes(chunks)
