"""Adapters: implementations of the ports in :mod:`gate.ports`, one subpackage per port
(registry, validation, ledger, downstream, secrets; signers in :mod:`gate.adapters.signers`)."""

import sys

from gate.logsafe import redact_library_logs

# httpx/__init__.py imports its own command line (httpx._main, which imports rich, pygments and
# click when they are installed) inside ``try: ... except ImportError`` and falls back to a
# stub. The gate never runs that command line, and the import costs ~50 ms of every start-up
# that reaches a registry. A None entry in sys.modules makes that import raise ImportError
# (the import system's documented meaning of None), so httpx takes its fallback. It changes
# nothing when httpx was imported before.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

# httpx logs every request's full URL at INFO, ACR's blob redirects included (a SAS URL whose sig=
# is a credential); every adapter talks to a peer through a library, so the redaction is on
# before any of them is used (gate/logsafe.py)
redact_library_logs()
