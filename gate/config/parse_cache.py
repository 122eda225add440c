"""The YAML parse of configuration files, kept as JSON so a command need not load a YAML parser.

Importing PyYAML costs a command-line run as much as reading and checking the rest of the file
does (its package imports the pure-Python parser and compiles its regular expressions even when
the C loader parses). Each ``gate`` command reads the configuration, so the command line keeps the
last parses of each file in one small JSON file under the user's cache folder
(``$XDG_CACHE_HOME/gate``, else ``~/.cache/gate``): an entry is the file's exact text and what
PyYAML made of it, and it is used only while the file's text is the same. Nothing is cached
that JSON cannot carry unchanged (a date, a number as a key), nor anything after ``${NAME}``
substitution: the environment's values never reach the disk. The cache is a convenience: a
folder that cannot be written, or an entry that cannot be read, means the file is parsed.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

_FILE = "config-parses.json"
_KEEP = 16  # files remembered: the sixteen parsed last (a hit writes nothing)


def cache_dir() -> Path:
    """Where the command line caches parses (``$XDG_CACHE_HOME/gate`` or ``~/.cache/gate``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gate"


class NotYaml(Exception):
    """The text is not valid YAML: what PyYAML found wrong, and where (1-based; 0 unknown)."""

    def __init__(self, problem: str, line: int = 0, column: int = 0) -> None:
        super().__init__(problem)
        self.problem, self.line, self.column = problem, line, column


def parse_yaml(text: str) -> Any:
    """``text`` parsed by PyYAML's safe loader (the C one when built); :class:`NotYaml` if it
    is not YAML."""
    import yaml

    try:
        return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = str(getattr(exc, "problem", None) or exc)
        where = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        raise NotYaml(problem, *where) from None


def cached_parse(file: Path, text: str, folder: Path | None) -> Any:
    """:func:`parse_yaml` of ``text``, the text of ``file``, from ``folder``'s cache when it has
    this exact text (and into it when not). ``folder`` None: no cache."""
    if folder is None:
        return parse_yaml(text)
    store = folder / _FILE
    entries = _read(store)
    key = str(file)
    entry = entries.get(key)
    if isinstance(entry, dict) and entry.get("text") == text and "data" in entry:
        return entry["data"]
    data = parse_yaml(text)
    if _json_exact(data):
        entries.pop(key, None)
        entries[key] = {"text": text, "data": data}
        _write(store, dict(list(entries.items())[-_KEEP:]))
    return data


def _read(store: Path) -> dict[str, Any]:
    try:
        entries = json.loads(store.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


def _json_exact(data: Any) -> bool:
    """Whether JSON gives ``data`` back as it is (PyYAML also makes dates, bytes, sets and
    non-text keys, which JSON would change or refuse)."""
    try:
        return bool(json.loads(json.dumps(data, allow_nan=False)) == data)
    except (TypeError, ValueError):
        return False


def _write(store: Path, entries: dict[str, Any]) -> None:
    # a new file then a rename: a reader sees the old cache or the new one, never half of one
    partial = store.with_name(f"{store.name}.{os.getpid()}.tmp")
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as out:
            json.dump(entries, out)
        os.replace(partial, store)
    except OSError:
        # never written, too, when there is no folder (or a file where the folder should be)
        with contextlib.suppress(OSError):
            partial.unlink()
