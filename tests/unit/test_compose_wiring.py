"""The composition root's wiring: ports built on first use, once, and the registry's optional
capabilities given to the gatekeeper explicitly (no probing of the adapter)."""

from __future__ import annotations

import threading
from pathlib import Path

from devstack.configs import unreachable_target_gate_yaml
from gate.compose import (
    Deferred,
    LazyManifests,
    LazyPolling,
    LazyRegistry,
    LazyValidator,
    Once,
    local_gatekeeper,
)
from gate.config.loading import load_config
from gate.ports import FIRST_PAGE, HistoryQuery


def test_once_builds_its_port_on_the_first_call_only_even_from_several_threads() -> None:
    built: list[object] = []
    go = threading.Barrier(8)

    def build() -> object:
        built.append(object())
        return built[-1]

    once = Once(build)
    assert built == []  # nothing is built before it is asked for
    seen: list[object] = []

    def ask() -> None:
        go.wait()
        seen.append(once())

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(built) == 1
    assert seen == built * 8


def test_the_local_gatekeeper_gives_its_registry_capabilities_from_one_adapter(
    tmp_path: Path,
) -> None:
    keeper = local_gatekeeper(load_config(unreachable_target_gate_yaml(tmp_path, "127.0.0.1:9")))

    assert isinstance(keeper.registry, LazyRegistry)
    assert isinstance(keeper.manifests, LazyManifests)
    assert isinstance(keeper.polling, LazyPolling)
    assert isinstance(keeper.validator, LazyValidator)
    registry = keeper.registry.port()
    # one client serves resolving, manifests and polling: its connections and tokens are shared
    assert keeper.manifests.port() is registry
    assert keeper.polling.port() is registry
    assert keeper.registry.port() is registry
    assert all(isinstance(p, Deferred) for p in (keeper.registry, keeper.manifests))


def test_a_history_query_without_filters_is_the_first_page() -> None:
    assert HistoryQuery() == FIRST_PAGE
    assert FIRST_PAGE.limit == 50
    assert (FIRST_PAGE.rule, FIRST_PAGE.target, FIRST_PAGE.state, FIRST_PAGE.actor) == (
        None,
        None,
        None,
        None,
    )
