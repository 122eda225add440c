"""The audit workbook's and alert rules' Kusto queries (infra/queries/) against what the code logs.

No Kusto parser on PyPI is both maintained and usable offline (Microsoft's parser is a .NET
library), so the queries are checked at the token level: each query tokenizes completely with
balanced brackets; every ``message startswith "…"`` marker is the opening of a line the code
really logs; a ``d = parse_json(substring(message, N))`` binding skips exactly its marker; every
field a query reads (``d.verdict``, ``d.timings.validate``, ``d.target_tags[1]``, ``p.errors``)
exists in the lines the code writes for real records and real poll passes; the verdicts and
actions a query compares with are ones the code uses; workbook placeholders are workbook
parameters (alert queries have none: nothing would fill them in); alert dimensions are columns
their query outputs. Each check is shown failing on a deliberately wrong query.
"""

from __future__ import annotations

import ast
import json
import logging
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from azure.functions.timer import TimerRequest
from pycep import BicepParser

import function_app
from devstack.configs import empty_task_gate_yaml, local_gate_yaml
from gate.adapters.ledger.sqlite import SqliteLedger
from gate.config.loading import load_config
from gate.domain.records import GateRecord, Outcome, State, new_record_id
from gate.entrypoints.messages import GateRequest
from gate.usecases import audit
from gate.usecases.gating import gate_image
from gate.usecases.keeper import Gatekeeper
from gate.usecases.rollback import rollback
from tests.fakes import FakeRegistry, FakeSecrets, FakeValidator
from tests.unit.test_function_events import Collect

ROOT = Path(__file__).resolve().parents[2]
QUERIES = ROOT / "infra" / "queries"
MONITORING = ROOT / "infra" / "core" / "monitoring.bicep"
UP = "upstream.example.com"
ART = "artifacts.example.com"

# -- a Kusto tokenizer (enough for the queries' own syntax) --------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<comment>//[^\n]*)
  | (?P<string>@?"(?:[^"\\\n]|\\.)*"|@?'(?:[^'\\\n]|\\.)*')
  | (?P<number>\d+(?:\.\d+)?[a-z]*)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>==|!=|<=|>=|=~|!~|=>|[-+*/%<>=|(),.\[\]{};:!])
  | (?P<space>\s+)
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class Token:
    kind: str
    text: str

    @property
    def value(self) -> str:
        """A string literal's text (the queries' literals use no escapes)."""
        return self.text.lstrip("@")[1:-1]


def tokenize(query: str) -> list[Token]:
    """The tokens of ``query`` without comments and blanks; ValueError at anything else."""
    tokens, at = [], 0
    while at < len(query):
        match = _TOKEN.match(query, at)
        if match is None:
            raise ValueError(f"cannot read the query at {query[at : at + 30]!r}")
        kind = match.lastgroup or ""
        if kind not in ("comment", "space"):
            tokens.append(Token(kind, match.group()))
        at = match.end()
    return tokens


def _texts(tokens: list[Token], at: int, count: int) -> list[str]:
    return [t.text for t in tokens[at : at + count]]


@dataclass(frozen=True)
class Binding:
    """``extend VAR = parse_json(substring(message, OFFSET))`` after ``startswith MARKER``."""

    var: str
    marker: str
    offset: int


def bindings(tokens: list[Token]) -> list[Binding]:
    found, marker = [], ""
    for i in range(len(tokens)):
        if _texts(tokens, i, 2) == ["message", "startswith"] and tokens[i + 2].kind == "string":
            marker = tokens[i + 2].value
        shape = _texts(tokens, i, 13)
        if (
            len(shape) == 13
            and shape[0] == "extend"
            and shape[2:7] == ["=", "parse_json", "(", "substring", "("]
            and shape[7:9] == ["message", ","]
            and tokens[i + 9].kind == "number"
            and shape[10:12] == [")", ")"]
        ):
            found.append(Binding(shape[1], marker, int(shape[9])))
    return found


def field_paths(tokens: list[Token], var: str) -> list[tuple[str | int, ...]]:
    """Every path read under ``var``: ``d.a.b`` -> ('a', 'b'), ``d.a[1]`` -> ('a', 1)."""
    paths = []
    for i, token in enumerate(tokens):
        if token.text != var or token.kind != "name" or (i and tokens[i - 1].text == "."):
            continue
        if i + 1 < len(tokens) and tokens[i + 1].text == "=":
            continue  # the binding itself
        path: list[str | int] = []
        j = i + 1
        while j + 1 < len(tokens):
            if tokens[j].text == "." and tokens[j + 1].kind == "name":
                path.append(tokens[j + 1].text)
                j += 2
            elif tokens[j].text == "[" and j + 2 < len(tokens) and tokens[j + 2].text == "]":
                inner = tokens[j + 1]
                path.append(int(inner.text) if inner.kind == "number" else inner.value)
                j += 3
            else:
                break
        paths.append(tuple(path))
    return paths


def compared_values(tokens: list[Token], var: str, field: str) -> list[tuple[str, str]]:
    """(operator, literal) for ``tostring(VAR.FIELD) in ("a", "b")`` / ``== "a"`` /
    ``startswith "a"``."""
    found = []
    for i in range(len(tokens)):
        if _texts(tokens, i, 6) != ["tostring", "(", var, ".", field, ")"]:
            continue
        j = i + 6
        if j >= len(tokens):
            continue
        operator = tokens[j].text
        if operator == "!" and j + 1 < len(tokens):
            operator, j = "!" + tokens[j + 1].text, j + 1
        if operator in ("in", "!in") and tokens[j + 1].text == "(":
            k = j + 2
            while tokens[k].text != ")":
                if tokens[k].kind == "string":
                    found.append((operator, tokens[k].value))
                k += 1
        elif operator in ("==", "!=", "startswith") and tokens[j + 1].kind == "string":
            found.append((operator, tokens[j + 1].value))
    return found


def balanced(tokens: list[Token]) -> bool:
    pairs, stack = {")": "(", "]": "[", "}": "{"}, []
    for token in tokens:
        if token.text in "([{" and token.kind == "op":
            stack.append(token.text)
        elif (
            token.text in pairs
            and token.kind == "op"
            and (not stack or stack.pop() != pairs[token.text])
        ):
            return False
    return not stack


# -- what the code writes -------------------------------------------------------------------------

_LOG_METHODS = {"debug", "info", "warning", "error", "exception", "critical"}


def logged_formats() -> set[str]:
    """The format strings of every log call in function_app.py and gate/."""
    formats = set()
    for path in [ROOT / "function_app.py", *sorted((ROOT / "gate").rglob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in _LOG_METHODS
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                formats.add(node.args[0].value)
    return formats


def code_text() -> str:
    return "\n".join(
        p.read_text(encoding="utf-8")
        for p in [ROOT / "function_app.py", *sorted((ROOT / "gate").rglob("*.py"))]
    )


def actions_the_code_uses() -> set[str]:
    """``GateRecord.action`` values: the default and every ``action="…"`` in gate/."""
    found = {GateRecord(id="x", rule="r", source="s", target="t").action}
    found |= set(re.findall(r'\baction="(\w+)"', code_text()))
    return found


def _keeper(tmp_path: Path) -> Gatekeeper:
    config = load_config(empty_task_gate_yaml(tmp_path, UP, ART))
    return Gatekeeper(
        config=config,
        registry=FakeRegistry(),
        validator=FakeValidator(),
        ledger=SqliteLedger(config.data_dir / "gate.db"),
        secrets=FakeSecrets(),
    )


@pytest.fixture(scope="module")
def decision_lines(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """``GATE_DECISION`` fields of real records: a promotion, a rejection, a rollback (the
    service over fakes of our ports), a demotion and a rule marked broken (gate.domain.records)."""
    keeper = _keeper(tmp_path_factory.mktemp("decisions"))
    registry, validator = keeper.registry, keeper.validator
    assert isinstance(registry, FakeRegistry) and isinstance(validator, FakeValidator)
    registry.push(f"{UP}/node:15-alpine", "green")
    first = gate_image(keeper, f"{UP}/node:15-alpine").record
    registry.push(f"{UP}/node:15-alpine", "orange")
    second = gate_image(keeper, f"{UP}/node:15-alpine").record
    registry.push(f"{UP}/node:15-alpine", "red")
    validator.decide = lambda request: Outcome.REJECTED
    rejected = gate_image(keeper, f"{UP}/node:15-alpine").record
    rolled = rollback(keeper, f"{ART}/node:15-alpine", reason="orange breaks checkout", actor="al")
    assert [first.state, second.state, rejected.state, rolled.state] == [
        State.PROMOTED,
        State.PROMOTED,
        State.REJECTED,
        State.ROLLED_BACK,
    ]
    demoted = GateRecord(
        id=new_record_id(),
        action="demote",
        rule="node",
        source=f"{ART}/node@{second.digest}",
        digest=first.digest,
        target=f"{ART}/node",
        state=State.DEMOTED,
        run_id=first.run_id,
        target_tags=("15-alpine",),
        actor="revalidation",
        of_record=new_record_id(),
        reason="demoted: fails its current validation",
    )
    broken = GateRecord(
        id=new_record_id(),
        action="demote",
        rule="node",
        source=f"{ART}/node@{first.digest}",
        digest=first.digest,
        target=f"{ART}/node",
        state=State.BROKEN,
        target_tags=("15-alpine",),
        reason="fails its validation now and no earlier digest passes",
    )
    return [
        audit.decision(r, duration=1.5) for r in (first, second, rejected, rolled, demoted, broken)
    ]


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@contextmanager
def functions_app(folder: Path) -> Iterator[Path]:
    """The Functions app over local adapters, its upstream a loopback port nobody listens on."""
    config = local_gate_yaml(
        folder,
        f"127.0.0.1:{_closed_port()}",
        f"127.0.0.1:{_closed_port()}",
        validation="{folder: validation}",
    )
    (folder / "validation").mkdir()
    (folder / "validation" / "acr-task.yaml").write_text("version: v1.1.0\nsteps: []\n")
    cached = (function_app.settings, function_app.config, function_app.keeper)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GATE_CONFIG", str(config))
        for cache in cached:
            cache.cache_clear()
        try:
            yield config
        finally:
            for cache in cached:
                cache.cache_clear()


@pytest.fixture
def app_config(tmp_path: Path) -> Iterator[Path]:
    with functions_app(tmp_path) as config:
        yield config


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _marked(messages: list[str], marker: str) -> list[dict[str, Any]]:
    return [json.loads(m.removeprefix(marker)) for m in messages if m.startswith(marker)]


@pytest.fixture(scope="module")
def polled(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[dict[str, Any]]]:
    """The upstream registry and the ``GATE_POLL`` lines of one real timer pass that cannot
    reach it (one pass for the module: each attempt at the closed port takes seconds)."""
    lines = _Lines()
    logger = logging.getLogger("gate.audit")
    level = logger.level
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    try:
        with functions_app(tmp_path_factory.mktemp("poll")) as config:
            function_app.watch(TimerRequest(past_due=False), Collect())
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)
    return load_config(config).rules[0].source.registry, _marked(lines.messages, "GATE_POLL ")


@pytest.fixture(scope="module")
def poll_lines(polled: tuple[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return polled[1]


# -- the checker ----------------------------------------------------------------------------------


def _resolves(path: tuple[str | int, ...], samples: list[Any]) -> bool:
    """True when some sample holds a value at ``path`` (a key that is there, an index in range)."""
    for sample in samples:
        value, ok = sample, True
        for step in path:
            in_list = isinstance(step, int) and isinstance(value, list)
            if (in_list and -len(value) <= step < len(value)) or (
                isinstance(step, str) and isinstance(value, dict) and step in value
            ):
                value = value[step]
            else:
                ok = False
                break
        if ok:
            return True
    return False


@dataclass
class Written:
    """What the code writes: each marker's lines (as parsed JSON), its log formats, its text."""

    lines: dict[str, list[dict[str, Any]]]
    formats: set[str]
    text: str
    actions: set[str]


def problems(
    query: str, written: Written, *, parameters: frozenset[str] = frozenset()
) -> list[str]:
    """Everything in ``query`` that does not match what the code writes; [] when all does."""
    try:
        tokens = tokenize(query)
    except ValueError as exc:
        return [str(exc)]
    found = [] if balanced(tokens) else ["unbalanced brackets"]
    for i in range(len(tokens)):
        if _texts(tokens, i, 2) == ["message", "startswith"]:
            marker = tokens[i + 2].value
            if not any(f.split("%")[0].startswith(marker) for f in written.formats):
                found.append(f"no log line starts with {marker!r}")
    for binding in bindings(tokens):
        if binding.offset != len(binding.marker):
            found.append(
                f"{binding.var}: substring(message, {binding.offset}) does not skip "
                f"{binding.marker!r} ({len(binding.marker)} characters)"
            )
        samples = written.lines.get(binding.marker)
        if not samples:
            found.append(f"{binding.var}: no JSON lines are written after {binding.marker!r}")
            continue
        for path in field_paths(tokens, binding.var):
            if not path or not _resolves(path, samples):
                shown = ".".join(str(p) for p in path)
                found.append(f"{binding.var}.{shown}: not a field of the {binding.marker}lines")
        for operator, literal in compared_values(tokens, binding.var, "verdict"):
            if literal not in {s.value for s in State}:
                found.append(f"verdict {operator} {literal!r}: not a state of a record")
        for operator, literal in compared_values(tokens, binding.var, "action"):
            if literal not in written.actions:
                found.append(f"action {operator} {literal!r}: not an action of a record")
        for operator, literal in compared_values(tokens, binding.var, "reason"):
            if operator == "startswith" and f'"{literal}' not in written.text:
                found.append(f"reason startswith {literal!r}: no reason the code writes")
    for name in re.findall(r"\{([A-Za-z_]\w*)(?::\w+)?\}", query):
        if name not in parameters:
            found.append(f"{{{name}}} is not a workbook parameter")
    return found


@pytest.fixture(scope="module")
def written(decision_lines: list[dict[str, Any]], poll_lines: list[dict[str, Any]]) -> Written:
    return Written(
        lines={"GATE_DECISION ": decision_lines, "GATE_POLL ": poll_lines},
        formats=logged_formats(),
        text=code_text(),
        actions=actions_the_code_uses(),
    )


# -- the templates' side --------------------------------------------------------------------------


def _monitoring() -> dict[str, Any]:
    parsed: dict[str, Any] = BicepParser().parse(file_path=MONITORING)
    return parsed


def _loaded(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{query file name: its item} for a list of template items whose ``query`` is loaded."""
    found = {}
    for item in items:
        function = item["query"]["function"]
        assert function["type"] == "load_text_content", item
        found[Path(function["parameters"]["file_path"]).name] = item
    return found


def workbook_queries() -> dict[str, dict[str, Any]]:
    return _loaded(_monitoring()["variables"]["workbookTiles"]["value"])


def alert_queries() -> dict[str, dict[str, Any]]:
    return _loaded(_monitoring()["variables"]["logAlerts"]["value"])


def workbook_parameters() -> frozenset[str]:
    return frozenset(p["name"] for p in _monitoring()["variables"]["workbookParameters"]["value"])


# -- tests ----------------------------------------------------------------------------------------


def test_every_query_file_is_loaded_once_by_the_monitoring_template() -> None:
    files = sorted(p.name for p in QUERIES.glob("*.kql"))
    loaded = sorted([*workbook_queries(), *alert_queries()])
    assert files == loaded
    assert len(files) == 9


@pytest.mark.parametrize("name", sorted(p.name for p in QUERIES.glob("workbook-*.kql")))
def test_workbook_query_reads_only_what_the_code_writes(name: str, written: Written) -> None:
    query = (QUERIES / name).read_text(encoding="utf-8")
    assert problems(query, written, parameters=workbook_parameters()) == []
    assert bindings(tokenize(query)), f"{name} reads no GATE_ line"


@pytest.mark.parametrize("name", sorted(p.name for p in QUERIES.glob("alert-*.kql")))
def test_alert_query_reads_only_what_the_code_writes(name: str, written: Written) -> None:
    query = (QUERIES / name).read_text(encoding="utf-8")
    # nothing fills in a placeholder in an alert rule: there must be none
    assert problems(query, written, parameters=frozenset()) == []


@pytest.mark.parametrize("name", sorted(alert_queries()))
def test_alert_dimensions_are_columns_their_query_outputs(name: str) -> None:
    dimensions = alert_queries()[name]["dimensions"]
    tokens = tokenize((QUERIES / name).read_text(encoding="utf-8"))
    assigned = {tokens[i].text for i in range(len(tokens) - 1) if tokens[i + 1].text == "="}
    assert set(dimensions) <= assigned


def test_checker_finds_a_field_the_code_does_not_write(written: Written) -> None:
    query = """traces
| where message startswith "GATE_DECISION "
| extend d = parse_json(substring(message, 14))
| project verdict = tostring(d.verdit), t = todouble(d.timings.validat), s = tostring(d.target_tags[7])
"""
    assert problems(query, written) == [
        "d.verdit: not a field of the GATE_DECISION lines",
        "d.timings.validat: not a field of the GATE_DECISION lines",
        "d.target_tags.7: not a field of the GATE_DECISION lines",
    ]


def test_checker_finds_wrong_markers_offsets_values_and_placeholders(written: Written) -> None:
    query = """traces
| where message startswith "GATE_DECISIONS "
| extend d = parse_json(substring(message, 13))
| where tostring(d.verdict) in ("promoted", "rejectd") and tostring(d.action) == "rollbak"
| where tostring(d.reason) startswith "poisond: "
| project url = strcat("https://", "{FunctionHost}")
"""
    assert problems(query, written) == [
        "no log line starts with 'GATE_DECISIONS '",
        "d: substring(message, 13) does not skip 'GATE_DECISIONS ' (15 characters)",
        "d: no JSON lines are written after 'GATE_DECISIONS '",
        "{FunctionHost} is not a workbook parameter",
    ]
    fixed = query.replace("GATE_DECISIONS", "GATE_DECISION").replace("13)", "14)")
    assert problems(fixed, written, parameters=frozenset({"FunctionHost"})) == [
        "verdict in 'rejectd': not a state of a record",
        "action == 'rollbak': not an action of a record",
        "reason startswith 'poisond: ': no reason the code writes",
    ]
    assert problems("traces | where (x", written) == ["unbalanced brackets"]


def test_decision_line_says_what_when_and_how_long(decision_lines: list[dict[str, Any]]) -> None:
    promoted, _, rejected, rolled, *_ = decision_lines
    assert promoted["action"] == "gate" and rolled["action"] == "rollback"
    assert promoted["first_seen"] <= promoted["created_at"] <= promoted["decided_at"]
    assert set(promoted["timings"]) == {"resolve", "validate", "promote"}
    # the workbook's stable tag: a promotion's second target tag, a rollback's only one
    assert promoted["target_tags"][1] == rolled["target_tags"][0] == "15-alpine"
    assert rolled["actor"] == "al" and rolled["digest"] == promoted["digest"]
    assert rejected["verdict"] == "rejected" and rejected["reason"]


def test_watch_writes_a_gate_poll_line_per_watched_registry(
    polled: tuple[str, list[dict[str, Any]]],
) -> None:
    upstream, lines = polled
    (line,) = lines
    assert line["registry"] == upstream
    assert line["errors"] == 1 and line["skipped"] == 0
    assert line["first_error"].startswith(f"{upstream}/node:15-alpine: ")


def test_poll_report_counts_skipped_tags_and_leaves_out_other_errors() -> None:
    report = audit.poll_report(
        ["docker.io", "ghcr.io"],
        [
            "docker.io/library/node:20: not polled: registry docker.io is paused: 429",
            "docker.io/library/node:22: connection refused",
            "waiting records: the ledger is unreachable",
        ],
    )
    assert report == [
        {
            "registry": "docker.io",
            "errors": 2,
            "skipped": 1,
            "first_error": "docker.io/library/node:20: not polled: registry docker.io is paused: 429",
        },
        {"registry": "ghcr.io", "errors": 0, "skipped": 0, "first_error": None},
    ]


def test_a_refused_request_writes_the_decision_the_poison_alert_reads(
    app_config: Path, caplog: pytest.LogCaptureFixture
) -> None:
    request = GateRequest(image="nowhere.example.com/ruby:3", trigger="http")

    with caplog.at_level(logging.INFO):
        function_app.gate_worker(func.QueueMessage(id="m1", body=request.to_json().encode()))

    (line,) = _marked([r.getMessage() for r in caplog.records], "GATE_DECISION ")
    assert line["verdict"] == "failed" and line["reason"].startswith("poisoned: ")
    assert function_app.keeper().ledger.get(line["record_id"]).state is State.FAILED


def test_monitoring_docs_walk_through_every_query_file() -> None:
    page = (ROOT / "docs" / "monitoring.md").read_text(encoding="utf-8")
    section = page[page.index("# Auditing in Azure Monitor") :]
    missing = [p.name for p in sorted(QUERIES.glob("*.kql")) if f"`{p.name}`" not in section]
    assert missing == []
