"""Polling upstreams: HEAD every watched tag, concurrently per registry, within a budget, and
say which digests are new. Nothing is gated here."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from copy import replace
from dataclasses import dataclass, field
from datetime import UTC, datetime

from gate.config.model import Rule
from gate.domain.records import GateRecord, utcnow
from gate.domain.ref import ImageRef
from gate.errors import GateError
from gate.logsafe import get_logger
from gate.ports import PolledDigest, RateLimited
from gate.usecases.keeper import Gatekeeper, GateOutcome
from gate.usecases.queueing import in_progress

# the logger name is what log queries select by; it stays the one from before the split
_log = get_logger("gate.service")


@dataclass(frozen=True)
class WatchItem:
    """One watched upstream tag in one poll: its digest and what the poll did about it.

    ``polled`` is the tag reference the poll asked (``source`` parsed), so that whoever gates
    the digest need not parse ``source`` again.
    """

    rule: str
    source: str
    digest: str | None = None
    outcome: GateOutcome | None = None
    skipped: str = ""
    error: str = ""
    polled: ImageRef | None = field(default=None, compare=False, repr=False)

    def pinned(self) -> ImageRef:
        """The polled tag pinned to the digest it pointed at (``source`` when not polled)."""
        assert self.digest is not None, "an item without a digest has nothing to pin"
        ref = self.polled if self.polled is not None else ImageRef.parse(self.source)
        return ref.with_digest(self.digest)


@dataclass(frozen=True)
class _PollJob:
    rule: Rule
    ref: ImageRef


class _Pass:
    """One poll pass's shared state: its deadline, and the registries told to stop."""

    def __init__(self, deadline: float, paused: dict[str, tuple[float, str]]) -> None:
        self.deadline = deadline
        self.lock = threading.Lock()
        # registry -> why it is not polled any more in this pass (a 429, a spent quota)
        self.stopped: dict[str, str] = {}
        self.paused = paused

    def stop(self, registry: str, why: str, retry_after: float | None) -> None:
        with self.lock:
            self.stopped.setdefault(registry, why)
            if retry_after is not None:
                self.paused[registry] = (time.time() + retry_after, why)

    def left(self) -> float:
        """Seconds left of the pass's budget (0 once it is spent)."""
        return max(0.0, self.deadline - time.monotonic())

    def blocked(self, registry: str) -> str:
        """Why ``registry`` is not to be asked now (empty: go ahead)."""
        if time.monotonic() >= self.deadline:
            return "budget"
        with self.lock:
            return self.stopped.get(registry, "")


def _run_per_registry[R](
    jobs: list[_PollJob], limit: Callable[[str], int], work: Callable[[_PollJob], R]
) -> list[R]:
    """``work`` on every job, at most ``limit(registry)`` at a time per registry; results in
    job order.

    ``limit`` 0: one job at a time in this thread, whatever the registry.
    """
    from concurrent.futures import Future, ThreadPoolExecutor

    registries = sorted({job.ref.registry for job in jobs})
    if not registries or any(limit(r) == 0 for r in registries):
        return [work(job) for job in jobs]
    pools = {
        r: ThreadPoolExecutor(
            max_workers=min(limit(r), _jobs_of(jobs, r)), thread_name_prefix="poll"
        )
        for r in registries
    }
    try:
        futures: list[Future[R]] = [pools[j.ref.registry].submit(work, j) for j in jobs]
        return [f.result() for f in futures]
    finally:
        for pool in pools.values():
            pool.shutdown(wait=True)


def _jobs_of(jobs: list[_PollJob], registry: str) -> int:
    # no more threads than the registry has jobs: a pass of 3 tags starts 3, not 16
    return sum(1 for j in jobs if j.ref.registry == registry)


@dataclass(frozen=True)
class _Polled:
    """What one registry's share of a pass found, by job (``id``): per listing its selected
    tags to HEAD (or the item saying why it failed), per HEAD its item."""

    listed: dict[int, list[_PollJob] | WatchItem]
    answers: dict[int, WatchItem]


def _selected(job: _PollJob, listed: list[str]) -> list[_PollJob]:
    """The tags of a listing that the rule selects and does not name exactly, as HEAD jobs."""
    exact = set(job.rule.exact_tags)
    chosen = sorted(t for t in listed if job.rule.selects(t))
    return [_PollJob(job.rule, job.rule.source.with_tag(t)) for t in chosen if t not in exact]


def _per_host(
    listings: list[_PollJob],
    exact: list[_PollJob],
    pipeline: Callable[[list[_PollJob], list[_PollJob]], _Polled],
) -> list[_Polled]:
    """``pipeline`` for each registry host's jobs, the hosts side by side.

    Each registry lists and then polls on its own: an upstream whose tag list takes the whole
    budget delays its own HEAD requests, not those of the other registries.
    """
    from concurrent.futures import ThreadPoolExecutor

    hosts = sorted({j.ref.registry for j in (*listings, *exact)})
    if not hosts:
        return []

    def share(host: str) -> _Polled:
        return pipeline(
            [j for j in listings if j.ref.registry == host],
            [j for j in exact if j.ref.registry == host],
        )

    with ThreadPoolExecutor(max_workers=len(hosts), thread_name_prefix="poll-host") as pool:
        return list(pool.map(share, hosts))


def poll_upstreams(keeper: Gatekeeper) -> list[WatchItem]:
    """HEAD every watched upstream tag; items without ``skipped``/``error`` are new digests.

    A digest decided already, or whose (rule, digest) a worker holds under a live lease (or a
    queue owes a worker), is ``skipped``: its record's outcome will be the answer, and a second
    request for it would only wait.

    Glob selectors list the repository's tags first (following the tag list's pagination).
    Requests run concurrently, at most the registry entry's ``concurrency`` (else
    ``poll.concurrency_per_registry``) in flight per registry; a ``429`` (its ``Retry-After``) or a spent Docker Hub pull quota stops that
    registry for the window (the rest of the pass without one); a pass stops starting requests
    after ``poll.budget`` seconds, and a tag listing asks for no page past it. What a pass did not reach comes back as an item with an
    ``error`` saying why, and is polled first by the next pass. One tag's error does not stop
    the others. Nothing is gated here: :func:`watch_once` gates inline, the timer enqueues.
    """
    settings = keeper.config.poll
    memory = keeper.poll_memory
    started = time.monotonic()
    with memory.lock:
        now = time.time()
        memory.paused = {r: p for r, p in memory.paused.items() if p[0] > now}
        paused = dict(memory.paused)
        carried = set(memory.pending)
    run = _Pass(started + settings.budget_seconds, paused)
    for host, (until, why) in paused.items():
        run.stopped[host] = f"{why} (paused until {_clock(until)})"
    registry = keeper.registry
    polling = keeper.polling
    # Adapters without the polling capability (their thread safety unknown) are asked one
    # request at a time.
    registries = keeper.config.registries

    def limit(host: str) -> int:
        if polling is None:
            return 0
        entry = registries.get(host)
        if entry is not None and entry.concurrency is not None:
            return entry.concurrency
        return settings.concurrency_per_registry

    def skipped_item(job: _PollJob, source: str, why: str) -> WatchItem:
        if why == "budget":
            why = (
                f"not polled: the pass's budget of {settings.budget_seconds:g} s ran out; "
                "it is polled first next pass"
            )
        else:
            why = f"not polled: registry {job.ref.registry} is paused: {why}"
        return WatchItem(job.rule.name, source, error=why)

    def list_job(job: _PollJob) -> list[str] | WatchItem:
        source = job.rule.source.name
        why = run.blocked(job.ref.registry)
        if why:
            return skipped_item(job, source, why)
        try:
            if polling is not None:
                # the listing's pages stop where the pass's budget does
                return polling.poll_tags(job.rule.source, budget=run.left())
            return registry.list_tags(job.rule.source)
        except RateLimited as exc:
            run.stop(job.ref.registry, exc.message, exc.retry_after)
            return WatchItem(job.rule.name, source, error=exc.message)
        except GateError as exc:
            return WatchItem(job.rule.name, source, error=exc.message)

    def head_job(job: _PollJob) -> WatchItem:
        source = str(job.ref)
        why = run.blocked(job.ref.registry)
        if why:
            return skipped_item(job, source, why)
        try:
            if polling is not None:
                answer = polling.poll_digest(job.ref)
            else:
                answer = PolledDigest(registry.resolve(job.ref))
        except RateLimited as exc:
            run.stop(job.ref.registry, exc.message, exc.retry_after)
            return WatchItem(job.rule.name, source, error=exc.message)
        except GateError as exc:
            return WatchItem(job.rule.name, source, error=exc.message)
        if answer.quota_spent:
            run.stop(job.ref.registry, f"registry {job.ref.registry}: {answer.quota_spent}", None)
        return WatchItem(job.rule.name, source, answer.digest, polled=job.ref)

    items: list[WatchItem] = []
    exact: list[_PollJob] = []
    listings: list[_PollJob] = []
    for rule in keeper.config.rules:
        exact += [_PollJob(rule, rule.source.with_tag(t)) for t in rule.exact_tags]
        if len(rule.exact_tags) != len(rule.tags):
            listings.append(_PollJob(rule, rule.source))

    def ordered(heads: list[_PollJob]) -> list[_PollJob]:
        # what the last pass did not reach goes first (a stable sort keeps the others in order)
        return sorted(heads, key=lambda j: (j.rule.name, str(j.ref)) not in carried)

    def pipeline(lists: list[_PollJob], tags: list[_PollJob]) -> _Polled:
        """List the tags, then HEAD them: one registry's jobs (all, without the capability)."""
        listed: dict[int, list[_PollJob] | WatchItem] = {}
        found: list[_PollJob] = []
        for job, got in zip(lists, _run_per_registry(lists, limit, list_job), strict=True):
            chosen = got if isinstance(got, WatchItem) else _selected(job, got)
            listed[id(job)] = chosen
            found += [] if isinstance(chosen, WatchItem) else chosen
        heads = ordered(tags + found)
        answers = _run_per_registry(heads, limit, head_job)
        return _Polled(listed, {id(j): a for j, a in zip(heads, answers, strict=True)})

    parts = [pipeline(listings, exact)] if polling is None else _per_host(listings, exact, pipeline)
    listed = {key: got for part in parts for key, got in part.listed.items()}
    answers = {key: answer for part in parts for key, answer in part.answers.items()}
    found: list[_PollJob] = []
    for job in listings:
        got = listed[id(job)]
        if isinstance(got, WatchItem):
            items.append(got)
        else:
            found += got
    heads = ordered(exact + found)
    polled = [answers[id(job)] for job in heads]
    not_reached: list[tuple[str, str]] = []
    claims = _Claims(keeper)
    for job, item in zip(heads, polled, strict=True):
        if item.error or item.digest is None:
            if item.error.startswith("not polled") or job.ref.registry in run.stopped:
                not_reached.append((job.rule.name, str(job.ref)))
            items.append(item)
            continue
        try:
            decided = keeper.ledger.decided(job.rule.name, item.digest)
            holder = None if decided else claims.held(job.rule.name, item.digest)
        except GateError as exc:
            items.append(replace(item, error=exc.message))
            continue
        if decided:
            items.append(replace(item, skipped=f"already {decided.state}"))
        elif holder is not None:
            # a worker holds it (or a queue owes it one): its outcome will be the record
            items.append(replace(item, skipped=f"held by record {holder.id} ({holder.state})"))
        else:
            items.append(item)
    with memory.lock:
        memory.pending = not_reached
        memory.paused.update(run.paused)
    _log_pass(items, heads, run, time.monotonic() - started)
    return items


class _Claims:
    """The records in progress of each rule a pass asks about, read once per rule per pass."""

    def __init__(self, keeper: Gatekeeper) -> None:
        self._keeper = keeper
        self._by_rule: dict[str, list[GateRecord]] = {}

    def held(self, rule: str, digest: str) -> GateRecord | None:
        """The record of (rule, digest) in progress under a live lease, if any."""
        if rule not in self._by_rule:
            self._by_rule[rule] = in_progress(self._keeper, rule)
        now = utcnow()
        lease = self._keeper.config.lease.seconds
        live = [r for r in self._by_rule[rule] if r.digest == digest and r.lease_live(now, lease)]
        return max(live, key=lambda r: r.created_at, default=None)


def _clock(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%H:%M:%S UTC")


def _log_pass(
    items: list[WatchItem],
    heads: list[_PollJob],
    run: _Pass,
    elapsed: float,
) -> None:
    """One line per pass: what was polled, how long it took, and what it skipped and why."""
    skipped = [i.source for i in items if i.error.startswith("not polled")]
    errors = sum(1 for i in items if i.error) - len(skipped)
    line = "poll pass: %d tag(s) in %.1f s, %d error(s)"
    args: list[object] = [len(heads), elapsed, errors]
    if skipped:
        shown = ", ".join(skipped[:5])
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        line += "; not polled %d (tags among them are polled first next pass): %s%s"
        args += [len(skipped), shown, more]
    for registry, why in sorted(run.stopped.items()):
        line += "; registry %s stopped: %s"
        args += [registry, why]
    if skipped or run.stopped:
        _log.warning(line, *args)
    else:
        _log.info(line, *args)
