"""The gated-import gatekeeper.

Pins an upstream image by digest, validates that digest, and only on success promotes the very
same digest into the base-artifacts registry under a stable tag and an immutable run-ID tag.

Layout: ``gate.ref``/``gate.model`` are the domain, ``gate.service`` the service layer,
``gate.ports`` the interfaces the service needs, ``gate.adapters`` their implementations, and
``gate.cli`` a thin entry point.
"""

__version__ = "0.1.0"
