"""Validator port adapters: ACR task files (parsed once, for both), the local runner
(podman/docker) and ACR task runs (Azure).

``taskfile`` (with ``taskfile_model``, ``taskfile_render``, ``taskfile_build``) reads task files;
``local`` (with ``local_engine``) is the local validator; ``acr_task_run`` (with
``acr_run_request``, ``acr_run_log``) the Azure one; ``masking`` hides secret values in the logs
of both."""
