"""Poll passes at scale, against a real docker-registry behind a real HTTP proxy.

The proxy (devstack.proxy.LatencyProxy) adds latency, counts the requests it forwards and the
most in flight at once, answers 429 with a Retry-After on demand, adds Docker Hub's rate-limit
headers on demand, and pages tag lists the way the OCI distribution spec describes.
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.proxy import LatencyProxy, push_tiny_images
from devstack.registry import RegistryProcess
from gate.adapters.ledger.sqlite import SqliteLedger
from gate.adapters.registry.oci import HostSettings, OciRegistry, quota_spent
from gate.config.loading import load_config
from gate.entrypoints.worker import poll_carrying
from gate.errors import ConfigError
from gate.usecases.keeper import Gatekeeper
from gate.usecases.polling import WatchItem, poll_upstreams
from tests.fakes import FakeSecrets, FakeValidator

TAGS = [f"v{n}" for n in range(6)]


@pytest.fixture
def seeded(registry: RegistryProcess) -> dict[str, str]:
    """Two repositories of six tags each in the registry: ``{"repo:tag": digest}``."""
    return push_tiny_images(registry.host, ["lib/one", "lib/two"], TAGS)


@pytest.fixture
def proxies(registry: RegistryProcess) -> Iterator[tuple[LatencyProxy, LatencyProxy]]:
    """Two proxies in front of the same registry: to the gate, two registries."""
    with (
        LatencyProxy(registry.host, latency=0.02) as first,
        LatencyProxy(registry.host, latency=0.02) as second,
    ):
        yield first, second


def keeper_for(
    tmp_path: Path,
    hosts: list[str],
    poll: str = "",
    page_size: int = 1000,
    entries: dict[str, str] | None = None,
) -> Gatekeeper:
    """A keeper whose rules watch ``v*`` of lib/one and lib/two on each of ``hosts``;
    ``entries`` adds settings to a host's registry entry (``"concurrency: 2"``)."""
    (tmp_path / "validation").mkdir(exist_ok=True)
    (tmp_path / "validation" / "acr-task.yaml").write_text("version: v1.1.0\nsteps: []\n")
    extra = entries or {}
    registries = "".join(
        f"  - {{host: '{h}', insecure: true{', ' + extra[h] if h in extra else ''}}}\n"
        for h in hosts
    )
    rules = "".join(
        textwrap.dedent(
            f"""\
              - name: r{n}-{repo}
                source: {host}/lib/{repo}
                tags: ["v*"]
                target: 127.0.0.1:9/base/{repo}{n}
                validation: {{folder: validation}}
            """
        )
        for n, host in enumerate(hosts)
        for repo in ("one", "two")
    )
    path = tmp_path / "gate.yaml"
    path.write_text(
        f"data_dir: {tmp_path / 'data'}\nregistries:\n{registries}"
        + (f"poll: {poll}\n" if poll else "")
        + f"rules:\n{rules}"
    )
    config = load_config(path)
    registry = OciRegistry(
        {h: HostSettings(insecure=True) for h in hosts}, tags_page_size=page_size
    )
    return Gatekeeper(
        config=config,
        registry=registry,
        polling=registry,
        validator=FakeValidator(),
        ledger=SqliteLedger(config.data_dir / "gate.db"),
        secrets=FakeSecrets(),
    )


def digests(items: list[WatchItem]) -> dict[str, str]:
    return {i.source.split("/", 1)[1]: i.digest for i in items if i.digest}


def heads(proxy: LatencyProxy) -> list[str]:
    """The tags the proxy saw HEAD requests for, in order, as ``repo:tag``."""
    return [
        path.removeprefix("/v2/").replace("/manifests/", ":")
        for method, path in proxy.log
        if method == "HEAD"
    ]


def test_a_pass_heads_each_tag_once_follows_tag_list_pages_and_reuses_connections(
    tmp_path: Path, seeded: dict[str, str], proxies: tuple[LatencyProxy, LatencyProxy]
) -> None:
    proxy, _ = proxies
    proxy.page_tags = True
    keeper = keeper_for(tmp_path, [proxy.host], "{concurrency_per_registry: 2}", page_size=4)

    first = poll_upstreams(keeper)
    proxy.reset()
    second = poll_upstreams(keeper)

    assert digests(first) == digests(second) == seeded
    # 6 tags in pages of 4: two tag-list GETs per repository, one HEAD per tag, no manifest GET
    assert dict(proxy.requests) == {"GET": 4, "HEAD": 12}
    assert all("/tags/list" in path for method, path in proxy.log if method == "GET")
    assert proxy.connections <= 2


def test_concurrency_is_bounded_per_registry(
    tmp_path: Path, seeded: dict[str, str], proxies: tuple[LatencyProxy, LatencyProxy]
) -> None:
    for proxy in proxies:
        proxy.latency = 0.1
    keeper = keeper_for(tmp_path, [p.host for p in proxies], "{concurrency_per_registry: 3}")

    started = time.monotonic()
    items = poll_upstreams(keeper)
    elapsed = time.monotonic() - started

    assert len([i for i in items if i.digest]) == 24
    assert [p.max_in_flight for p in proxies] == [3, 3]
    # 14 requests per registry at 0.1 s, three at a time, both registries at once
    assert elapsed < 14 * 0.1


def test_a_registry_entrys_concurrency_overrides_the_poll_default_for_that_host(
    tmp_path: Path, seeded: dict[str, str], proxies: tuple[LatencyProxy, LatencyProxy]
) -> None:
    gentle, eager = proxies
    for proxy in proxies:
        proxy.latency = 0.1
    keeper = keeper_for(
        tmp_path,
        [gentle.host, eager.host],
        "{concurrency_per_registry: 3}",
        entries={gentle.host: "concurrency: 1", eager.host: "concurrency: 5"},
    )

    items = poll_upstreams(keeper)

    assert len([i for i in items if i.digest]) == 24
    assert [gentle.max_in_flight, eager.max_in_flight] == [1, 5]
    assert gentle.connections == 1


def test_retry_after_stops_polling_that_registry_for_the_window_and_the_others_go_on(
    tmp_path: Path, seeded: dict[str, str], proxies: tuple[LatencyProxy, LatencyProxy]
) -> None:
    limited, healthy = proxies
    limited.throttle("120")
    keeper = keeper_for(tmp_path, [limited.host, healthy.host], "{concurrency_per_registry: 1}")

    started = time.monotonic()
    first = poll_upstreams(keeper)
    elapsed = time.monotonic() - started
    limited.throttle(None)
    second = poll_upstreams(keeper)

    assert elapsed < 5, "the pass waited out the Retry-After instead of moving on"
    assert limited.throttled == 1 and limited.total == 0
    assert len([i for i in first if i.digest and healthy.host in i.source]) == 12
    stopped = [i for i in first if limited.host in i.source]
    assert stopped and all(i.error for i in stopped)
    assert any("HTTP 429" in i.error for i in stopped)
    assert limited.host in keeper.poll_memory.paused
    # the window is not over: the next pass does not ask that registry at all, and says why
    assert limited.total == 0 and limited.throttled == 1
    again = [i for i in second if limited.host in i.source]
    assert again and all("paused" in i.error and "HTTP 429" in i.error for i in again)


def test_retry_after_window_over_the_registry_is_polled_again(
    tmp_path: Path, seeded: dict[str, str], proxies: tuple[LatencyProxy, LatencyProxy]
) -> None:
    limited, _ = proxies
    limited.throttle("1")
    keeper = keeper_for(tmp_path, [limited.host], "{concurrency_per_registry: 1}")
    poll_upstreams(keeper)
    limited.throttle(None)

    time.sleep(1.2)
    items = poll_upstreams(keeper)

    assert digests(items) == seeded and limited.requests["HEAD"] == 12


def test_a_spent_docker_hub_pull_quota_stops_the_registry_for_the_pass(
    tmp_path: Path, seeded: dict[str, str], proxies: tuple[LatencyProxy, LatencyProxy]
) -> None:
    proxy, _ = proxies
    proxy.extra_headers = {"ratelimit-limit": "100;w=21600", "ratelimit-remaining": "0;w=21600"}
    keeper = keeper_for(tmp_path, [proxy.host], "{concurrency_per_registry: 1}")

    first = poll_upstreams(keeper)
    head_count = proxy.requests["HEAD"]
    proxy.extra_headers = {}
    proxy.reset()
    second = poll_upstreams(keeper)

    assert head_count == 1 and len(digests(first)) == 1
    rest = [i for i in first if not i.digest]
    assert len(rest) == 11 and all("ratelimit-remaining 0;w=21600" in i.error for i in rest)
    # no reset time is documented: the next pass polls again, the skipped tags first
    assert digests(second) == seeded
    skipped = [i.source.split("/", 1)[1] for i in rest]
    assert heads(proxy)[: len(skipped)] == skipped


def test_the_time_budget_carries_unreached_tags_to_the_front_of_the_next_pass(
    tmp_path: Path, seeded: dict[str, str], proxies: tuple[LatencyProxy, LatencyProxy]
) -> None:
    proxy, _ = proxies
    proxy.latency = 0.2
    keeper = keeper_for(tmp_path, [proxy.host], "{concurrency_per_registry: 1, budget: 1.0}")

    started = time.monotonic()
    first = poll_upstreams(keeper)
    elapsed = time.monotonic() - started
    reached = [i.source.split("/", 1)[1] for i in first if i.digest]
    unreached = [i for i in first if not i.digest]
    pending = [ref.split("/", 1)[1] for _, ref in keeper.poll_memory.pending]
    proxy.reset()
    poll_upstreams(keeper)

    assert 0 < len(reached) < 12 and elapsed < 3.0
    assert all("budget of 1 s ran out" in i.error for i in unreached)
    assert pending == [i.source.split("/", 1)[1] for i in unreached]
    assert heads(proxy)[: min(len(pending), len(heads(proxy)))] == pending[: len(heads(proxy))]
    assert heads(proxy)[0] not in reached


def test_poll_settings_default_to_16_in_flight_and_refuse_nonsense(tmp_path: Path) -> None:
    keeper = keeper_for(tmp_path, ["127.0.0.1:5999"])
    assert keeper.config.poll.concurrency_per_registry == 16
    assert keeper.config.poll.budget_seconds == 240.0
    assert keeper.config.registry("127.0.0.1:5999").concurrency is None

    for bad in ("{concurrency_per_registry: 0}", "{budget: 0}", "{burst: 3}"):
        with pytest.raises(ConfigError, match="poll"):
            keeper_for(tmp_path, ["127.0.0.1:5999"], bad)
    for bad in ("concurrency: 0", "concurrency: 65", "concurrency: many"):
        with pytest.raises(ConfigError, match="concurrency"):
            keeper_for(tmp_path, ["127.0.0.1:5999"], entries={"127.0.0.1:5999": bad})


def test_the_carry_over_survives_a_new_process_through_its_snapshot(
    tmp_path: Path, seeded: dict[str, str], proxies: tuple[LatencyProxy, LatencyProxy]
) -> None:
    limited, _ = proxies
    limited.throttle("120")
    first = keeper_for(tmp_path, [limited.host], "{concurrency_per_registry: 1}")
    requests, errors, state = poll_carrying(first, None)
    limited.throttle(None)

    second = keeper_for(tmp_path, [limited.host], "{concurrency_per_registry: 1}")
    _, again, _ = poll_carrying(second, state)
    asked_again = limited.total
    _, fresh, _ = poll_carrying(
        keeper_for(tmp_path, [limited.host], "{concurrency_per_registry: 1}"), "not json"
    )

    assert requests == [] and errors and limited.throttled == 1
    assert again and all("paused" in e for e in again) and asked_again == 0
    assert fresh == [] and limited.requests["HEAD"] == 12


@pytest.mark.parametrize(
    ("remaining", "spent"),
    [("0;w=21600", True), ("0", True), ("76;w=21600", False), ("junk", False), (None, False)],
)
def test_only_a_docker_hub_quota_of_zero_counts_as_spent(
    remaining: str | None, spent: bool
) -> None:
    headers = {"ratelimit-limit": "100;w=21600"}
    if remaining is not None:
        headers["ratelimit-remaining"] = remaining
    assert bool(quota_spent(headers)) is spent
