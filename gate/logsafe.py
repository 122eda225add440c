"""Log lines that outside input cannot forge or flood.

Event ids, repository names, actions, media types, rollback reasons and error messages that
quote them come from outside the gate. Written raw, a newline in an event id starts a second,
forged log line, and a 100 KB id fills the log. Every logger of the gate therefore carries
:class:`CleanArgs`, which escapes and length-caps each argument of a log call (the format
string is ours), and the audit fields are cleaned the same way before they become JSON.

Libraries log too, and some log secrets: httpx writes every request's full URL at INFO, so the
SAS URL of an ACR blob redirect (its ``sig=`` signature) would reach the Function's logs, and
urllib3 logs request lines at DEBUG. :func:`redact_library_logs` makes every record, the
libraries' and ours, go through :func:`redact` when it is created, whatever handler or level the
host configured.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # logging is imported by get_logger: clean() alone (the CLI's) does not need it
    import logging

DEFAULT_LIMIT = 300
REDACTED = "REDACTED"

# Query parameters whose value is a credential: a SAS signature (Azure Storage's ``sig``), the
# signatures of other clouds' signed URLs, and tokens, codes and passwords of OAuth-style flows.
_SECRET_PARAMETERS = (
    "sig",
    "signature",
    "x-amz-signature",
    "x-goog-signature",
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "code",
    "password",
    "client_secret",
    "client_assertion",
)
_SECRET_QUERY = re.compile(
    r"(?i)([?&;](?:" + "|".join(re.escape(p) for p in _SECRET_PARAMETERS) + r")=)[^&#\s'\"]+"
)
# user:password@ in a URL, and the credential of an Authorization header or bearer token
_URL_USERINFO = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://)[^/@\s:'\"]+:[^/@\s'\"]*@")
_AUTHORIZATION = re.compile(
    r"(?i)\b(authorization[\"']?\s*[:=]\s*[\"']?(?:bearer|basic)\s+)[^\s'\",]+"
)
_BEARER = re.compile(r"(?i)\b(bearer\s+)[a-z0-9._~+/=-]{16,}")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def clean(value: object, limit: int = DEFAULT_LIMIT) -> str:
    """``value`` as text on one line: unprintable characters escaped, at most ``limit`` long.

    Escaped are control characters, line and paragraph separators and other characters that are
    not printable (``str.isprintable``), so the text can neither break a line nor move a
    terminal's cursor; a cut says how much was left out.
    """
    text = value if isinstance(value, str) else str(value)
    if not text.isprintable():
        text = "".join(
            char
            if char.isprintable()
            else _ESCAPES.get(char)
            or (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")
            for char in text
        )
    if len(text) > limit:
        text = f"{text[:limit]}…(+{len(text) - limit} chars)"
    return text


def redact(text: str) -> str:
    """``text`` with credentials in URLs and headers replaced by ``REDACTED``: the values of
    signature, token, code and password query parameters, ``user:password@`` and bearer or basic
    credentials; the rest (host, path, other parameters) stays, so the line still says what
    was called."""
    if not any(mark in text for mark in ("=", "@", "earer", "asic")):
        return text  # the common case: nothing that could hold a credential
    text = _SECRET_QUERY.sub(rf"\g<1>{REDACTED}", text)
    text = _URL_USERINFO.sub(rf"\g<1>{REDACTED}@", text)
    text = _AUTHORIZATION.sub(rf"\g<1>{REDACTED}", text)
    return _BEARER.sub(rf"\g<1>{REDACTED}", text)


_installed = False


def redact_library_logs() -> None:
    """Redact (:func:`redact`) every log record as it is created (a library's or ours): its
    message, and the traceback and stack it carries.

    A filter on a library's logger would only see that logger's own records, not its
    children's (Python docs, logging, "Logger.filter": filters are consulted by the logger the
    record is logged on), and handlers belong to the host (the Functions worker adds its own);
    a log record factory sees every record (logging.setLogRecordFactory). Installed once per
    process, by the adapters package and the Functions app.
    """
    global _installed
    import logging

    if _installed:
        return
    previous: Callable[..., logging.LogRecord] = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        _redact_traceback(record)
        try:
            message = record.getMessage()
        except Exception:  # a library's broken format string: leave it to the handler
            return record
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return record

    logging.setLogRecordFactory(factory)
    _installed = True


def _redact_traceback(record: logging.LogRecord) -> None:
    """Redact the traceback and stack a record carries (``exc_info``, ``stack_info``).

    An exception's text can quote a URL (httpx's status errors name theirs) and azure-identity
    logs its credentials' failures with ``exc_info`` at DEBUG. A handler formats ``exc_info``
    only when ``exc_text`` is empty (logging.Formatter.format), so a traceback that held a
    credential is kept as its redacted text alone: ``exc_info`` is dropped, or a handler that
    reads the exception itself would still write the credential.
    """
    import logging

    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    if not record.exc_info:
        return
    try:
        text = record.exc_text or logging.Formatter().formatException(record.exc_info)
    except Exception:  # an exception whose str() fails: leave it to the handler
        return
    cleaned = redact(text)
    if cleaned != text:
        record.exc_info, record.exc_text = None, cleaned


def _cleaned(arg: Any) -> Any:
    # numbers keep their type so "%d" and "%.1f" still format them
    if isinstance(arg, bool | int | float) or arg is None:
        return arg
    return clean(arg)


class CleanArgs:
    """Cleans every argument of a log record with :func:`clean` (the format string is trusted).

    A filter need not subclass ``logging.Filter``: an object with a ``filter`` method is one
    (Python docs, logging, "Filter Objects").
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, Mapping):
            record.args = {key: _cleaned(value) for key, value in args.items()}
        elif args:
            record.args = tuple(_cleaned(arg) for arg in args)
        return True


def get_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)`` with :class:`CleanArgs` attached (once)."""
    import logging

    logger = logging.getLogger(name)
    if not any(isinstance(f, CleanArgs) for f in logger.filters):
        logger.addFilter(CleanArgs())
    return logger
