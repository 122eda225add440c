"""Configuration: the gate file's types, which are its schema (:mod:`gate.config.model`, which
gathers the sections' modules), its loading (:mod:`gate.config.loading`), its JSON Schema
(:mod:`gate.config.schema`), the command line's parse cache, and the process's app settings.

Empty on purpose: the Functions app imports only :mod:`gate.config.app_settings` at start-up, and
a package import must not pull the YAML parser or the schema in with it."""
