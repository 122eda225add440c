"""The gated-import gatekeeper.

Pins an upstream image by digest, validates that digest, and only on success promotes the very
same digest into the base-artifacts registry under a stable tag and an immutable run-ID tag.

Layout (arrows point down only):

    gate.entrypoints   command line, HTTP API, queue worker, listener (thin)
    gate.compose       the one place that builds adapters from the configuration
    gate.usecases      the service layer: one module per use case, taking its ports
    gate.ports         the interfaces the use cases need
    gate.adapters      their implementations, one subpackage per port
    gate.config        the configuration file's schema and loading; app settings
    gate.domain        values and rules: references, records, platforms, attestations
    gate.errors        the one exception tree
"""

__version__ = "0.1.0"
