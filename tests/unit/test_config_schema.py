"""The configuration's schema: its JSON Schema for editors, `gate config check`, and its errors."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from click.testing import CliRunner

from gate.config.loading import load_config
from gate.entrypoints.cli import main
from gate.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]

AZURE = """\
    azure:
      subscription_id: sub
      registry: {name: contosobase, resource_group: rg, promote: push}
      runner:
        name: contosorunner
        resource_group: rg
    rules:
      - name: node
        source: docker.io/library/node
        tags: 15-alpine
        target: contosobase.azurecr.io/node
        validation: {folder: checks, timeout: 900, values: {NODE_MAJOR: 15}}
        downstream:
          - hello-world
          - {task: app-rebuild, registry: contosoteam, resource_group: team-rg}
    """


def write(tmp_path: Path, body: str) -> Path:
    (tmp_path / "checks").mkdir(exist_ok=True)
    (tmp_path / "checks" / "acr-task.yaml").write_text("version: v1.1.0\nsteps: []\n")
    path = tmp_path / "gate.yaml"
    path.write_text(textwrap.dedent(body))
    return path


def editor_errors(document: Any) -> list[str]:
    """What an editor's JSON Schema validator reports for ``document`` against our schema."""
    schema = json.loads((ROOT / "schema" / "gate.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    return [error.message for error in validator.iter_errors(document)]


def test_printed_schema_is_the_committed_schema_file() -> None:
    result = CliRunner().invoke(main, ["config", "schema"])

    assert result.exit_code == 0, result.output
    committed = (ROOT / "schema" / "gate.schema.json").read_text()
    assert json.loads(result.output) == json.loads(committed), (
        "schema/gate.schema.json is stale: regenerate it with "
        "`gate config schema > schema/gate.schema.json`"
    )


def test_schema_accepts_the_shipped_examples_and_the_azure_options() -> None:
    jsonschema.Draft202012Validator.check_schema(
        json.loads((ROOT / "schema" / "gate.schema.json").read_text())
    )
    seed = yaml.safe_load((ROOT / "examples" / "seed" / "gate.yaml").read_text())
    azure = yaml.safe_load(textwrap.dedent(AZURE).replace("NODE_MAJOR: 15", "NODE_MAJOR: '15'"))

    azure["rules"][0]["validation"]["timeout"] = "${TIMEOUT:-900}"  # read as a number

    walkthrough = yaml.safe_load((ROOT / "infra" / "walkthrough" / "gate.yaml").read_text())

    assert editor_errors(seed) == []
    assert editor_errors(azure) == []
    assert editor_errors(walkthrough) == []  # ${...} in choices, names and numbers


def test_schema_flags_what_the_loader_refuses() -> None:
    document = yaml.safe_load(textwrap.dedent(AZURE))
    document["rules"][0]["colour"] = "red"
    document["azure"]["registry"]["promote"] = "copy"

    errors = editor_errors(document)

    assert any("colour" in e for e in errors), errors
    assert any("copy" in e for e in errors), errors


def test_azure_options_load_with_numbers_and_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, AZURE))

    (rule,) = config.rules
    assert config.azure is not None and config.azure.registry.promote == "push"
    assert rule.tags == ("15-alpine",)
    assert rule.validation.timeout_seconds == 900.0
    assert rule.validation.values == {"NODE_MAJOR": "15"}
    assert [(t.task, t.registry, t.resource_group) for t in rule.downstream] == [
        ("hello-world", "contosobase", "rg"),
        ("app-rebuild", "contosoteam", "team-rg"),
    ]


def test_values_from_the_environment_are_read_as_their_field_type(tmp_path: Path) -> None:
    body = """\
        registries:
          - host: 127.0.0.1:5001
            insecure: ${INSECURE:-false}
        rules:
          - name: node
            source: 127.0.0.1:5001/node
            tags: ["15-alpine"]
            target: 127.0.0.1:5002/node
            validation: {folder: checks, timeout: "${TIMEOUT}"}
        """
    config = load_config(write(tmp_path, body), env={"INSECURE": "true", "TIMEOUT": "45"})

    assert config.registry("127.0.0.1:5001").insecure is True
    assert config.rules[0].validation.timeout_seconds == 45.0


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ("promote: push", "promote: copy"),
            "azure.registry.promote: 'copy' is not one of: import, push",
        ),
        (("subscription_id: sub\n      ", ""), "azure.subscription_id: required but missing"),
        (("name: contosorunner", "name: x"), "azure.runner.name: 'x' does not match"),
        (("- hello-world", "- hi"), "rule 'node'.downstream[0]: 'hi' does not match"),
        (
            ("registry: contosoteam", "registry: contosoteam, colour: red"),
            "rule 'node'.downstream[1]: unknown field(s) colour; allowed: file, registry, resource_group, task, timeout, values",
        ),
        (
            ("timeout: 900", "timeout: soon"),
            "rule 'node'.validation.timeout: expected a positive number, got 'soon'",
        ),
        (
            ("timeout: 900", "timeout: 0"),
            "rule 'node'.validation.timeout: expected a positive number, got 0",
        ),
        (("tags: 15-alpine", "tags: {a: b}"), "rule 'node'.tags: expected a string or a list"),
        (("rg, promote", "rg, identity: x, promote"), "azure.registry: unknown field(s) identity"),
        (
            ("subscription_id: sub", "subscription_id: sub\n      identity: '[system]'"),
            "azure.identity: no longer read",
        ),
        (
            ("- hello-world", "- {task: hello-world, registry: contosoteam}"),
            "rule 'node'.downstream[0].resource_group: task 'hello-world' lives in registry",
        ),
    ],
)
def test_errors_name_file_rule_and_field_and_say_what_fits(
    tmp_path: Path, change: tuple[str, str], expected: str
) -> None:
    assert change[0] in AZURE
    path = write(tmp_path, AZURE.replace(*change))

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert caught.value.message.startswith(f"{path}: ")
    assert expected in caught.value.message


def test_an_empty_file_or_a_list_says_what_the_file_needs(tmp_path: Path) -> None:
    for body in ("", "- a\n- b\n"):
        with pytest.raises(
            ConfigError, match="top level: expected a mapping with at least 'rules:'"
        ):
            load_config(write(tmp_path, body))


def test_config_check_lists_the_rules_without_running_anything(tmp_path: Path) -> None:
    path = write(tmp_path, AZURE)

    result = CliRunner().invoke(main, ["config", "check", str(path)])

    assert result.exit_code == 0, result.output
    assert f"ok {path}: 1 rule(s), Azure" in result.output
    assert (
        "node: docker.io/library/node [15-alpine] -> contosobase.azurecr.io/node" in result.output
    )
    assert not (tmp_path / ".gate").exists()  # no ledger, no state: nothing ran


def test_config_check_of_a_bad_file_exits_2_naming_the_field(tmp_path: Path) -> None:
    path = write(tmp_path, AZURE.replace("promote: push", "promote: copy"))

    result = CliRunner().invoke(main, ["config", "check", str(path)])

    assert result.exit_code == 2
    assert "azure.registry.promote" in result.output and "import, push" in result.output
