"""Loading the gate configuration: env substitution, relative paths, errors that say where."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gate.config import load_config
from gate.errors import ConfigError, NoMatchingRule, UsageError
from gate.ref import ImageRef


def make(tmp_path: Path, body: str, *, folder: bool = True) -> Path:
    if folder:
        (tmp_path / "checks").mkdir(exist_ok=True)
        (tmp_path / "checks" / "acr-task.yaml").write_text("version: v1.1.0\nsteps: []\n")
    path = tmp_path / "gate.yaml"
    path.write_text(textwrap.dedent(body))
    return path


GOOD = """\
    registries:
      - host: ${UP}
        insecure: true
    rules:
      - name: node
        source: ${UP}/node
        tags: ["15-alpine", "16-*"]
        target: ${ART:-127.0.0.1:6000}/base/node
        validation:
          folder: checks
          timeout: 120
    """


def test_environment_values_and_defaults_are_substituted(tmp_path: Path) -> None:
    config = load_config(make(tmp_path, GOOD), env={"UP": "127.0.0.1:5001"})

    (rule,) = config.rules
    assert rule.source == ImageRef("127.0.0.1:5001", "node")
    assert rule.target == ImageRef("127.0.0.1:6000", "base/node")
    assert config.registry("127.0.0.1:5001").insecure
    assert rule.validation.timeout_seconds == 120


def test_paths_resolve_relative_to_the_file_not_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = make(tmp_path, GOOD)
    monkeypatch.chdir("/")

    config = load_config(path, env={"UP": "127.0.0.1:5001"})

    assert config.rules[0].validation.folder == tmp_path / "checks"
    assert config.data_dir == tmp_path / ".gate"


def test_missing_environment_variable_names_file_rule_and_field(tmp_path: Path) -> None:
    path = make(tmp_path, GOOD.replace("${UP}/node", "${NOPE}/node"))

    with pytest.raises(ConfigError) as caught:
        load_config(path, env={"UP": "127.0.0.1:5001"})

    message = caught.value.message
    assert str(path) in message and "rule 'node'.source" in message and "NOPE" in message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (('tags: ["15-alpine", "16-*"]', "tags: []"), "rule 'node'.tags"),
        (("target: ${ART:-127.0.0.1:6000}/base/node", "target: base/Node"), "rule 'node'.target"),
        (("target: ${ART:-127.0.0.1:6000}/base/node", "target: a/b:tag"), "repository only"),
        (("folder: checks", "folder: nowhere"), "rule 'node'.validation.folder"),
        (("timeout: 120", "timeout: -1"), "validation.timeout"),
        (("name: node", "name: node\n        colour: red"), "unknown field(s) colour"),
        (("insecure: true", "insecure: yes-please"), "registries[0].insecure"),
        (("name: node", "name: node\n        unique_tag: '{tag}-fixed'"), "{run_id}"),
        (
            ("name: node", "name: node\n        stable_tag: '{branch}'"),
            "unknown placeholder(s) {branch}",
        ),
    ],
)
def test_invalid_fields_are_named(tmp_path: Path, change: tuple[str, str], expected: str) -> None:
    path = make(tmp_path, GOOD.replace(*change))

    with pytest.raises(ConfigError) as caught:
        load_config(path, env={"UP": "127.0.0.1:5001"})

    assert expected in caught.value.message and str(path) in caught.value.message


def test_plain_http_is_refused_for_a_remote_registry(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="loopback registries only"):
        load_config(make(tmp_path, GOOD), env={"UP": "registry.example.com"})


def test_broken_yaml_reports_the_line(tmp_path: Path) -> None:
    path = make(tmp_path, "rules:\n  - name: [unclosed\n")

    with pytest.raises(ConfigError, match=r"line \d+"):
        load_config(path)


def test_missing_file_says_how_to_point_at_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="GATE_CONFIG"):
        load_config(tmp_path / "absent.yaml")


def test_rule_matching_by_exact_tag_glob_and_digest(tmp_path: Path) -> None:
    config = load_config(make(tmp_path, GOOD), env={"UP": "127.0.0.1:5001"})
    digest = "sha256:" + "a" * 64

    assert config.match(ImageRef.parse("127.0.0.1:5001/node:16-slim")).name == "node"
    assert config.match(ImageRef.parse(f"127.0.0.1:5001/node:15-alpine@{digest}")).name == "node"
    with pytest.raises(NoMatchingRule):
        config.match(ImageRef.parse("127.0.0.1:5001/node:17"))
    with pytest.raises(NoMatchingRule):
        config.match(ImageRef.parse("node:15-alpine"))  # docker.io is not this rule's upstream


def test_digest_request_without_tag_needs_one_when_rule_watches_several(tmp_path: Path) -> None:
    config = load_config(make(tmp_path, GOOD), env={"UP": "127.0.0.1:5001"})
    ref = ImageRef.parse("127.0.0.1:5001/node@sha256:" + "b" * 64)

    with pytest.raises(UsageError, match="say which"):
        config.rules[0].gated_tag(ref)


def test_docker_hub_short_names_normalize_in_rules(tmp_path: Path) -> None:
    body = GOOD.replace("source: ${UP}/node", "source: node").replace(
        "registries:\n  - host: ${UP}\n    insecure: true\n", "registries: []\n"
    )
    config = load_config(make(tmp_path, body), env={"UP": "127.0.0.1:5001"})

    assert config.match(ImageRef.parse("docker.io/library/node:15-alpine")).name == "node"


def test_registry_host_without_dot_or_port_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"registries\[0\].host.*not a registry host"):
        load_config(make(tmp_path, GOOD), env={"UP": "myregistry"})


AZURE = """\
    registries:
      - host: registry-1.docker.io
        username: bot
        password_secret: hub-token
    azure:
      subscription_id: sub
      registry: {name: contosobase, resource_group: rg}
    rules:
      - name: node
        source: node
        tags: ["15-alpine"]
        target: contosobase.azurecr.io/node
        validation: {folder: checks}
    """


def test_azure_section_names_credentials_by_secret_only(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"registries\[0\].username.*username_secret"):
        load_config(make(tmp_path, AZURE))

    config = load_config(
        make(tmp_path, AZURE.replace("username: bot", "username_secret: hub-user"))
    )
    assert (
        config.azure is not None and config.azure.registry.login_server == "contosobase.azurecr.io"
    )
    assert config.azure.runner == config.azure.registry


def test_azure_target_must_be_the_configured_registry(tmp_path: Path) -> None:
    body = AZURE.replace("username: bot", "username_secret: u").replace(
        "target: contosobase.azurecr.io/node", "target: elsewhere.azurecr.io/node"
    )
    with pytest.raises(ConfigError, match=r"rule 'node'.target.*not the Azure registry"):
        load_config(make(tmp_path, body))


RUNNER_ID = (
    "/subscriptions/sub/resourceGroups/rg/providers/Microsoft.ManagedIdentity/"
    "userAssignedIdentities/gate-runner"
)
CLIENT_ID = "0f0e0d0c-1111-2222-3333-444455556666"
ACR_UPSTREAM = """\
    registries:
      - host: upstream.azurecr.io
        resource_id: /subscriptions/sub/resourceGroups/rg/providers/Microsoft.ContainerRegistry/registries/upstream
    azure:
      subscription_id: sub
      registry: {name: contosobase, resource_group: rg}
    rules:
      - name: node
        source: upstream.azurecr.io/node
        tags: ["15-alpine"]
        target: contosobase.azurecr.io/node
        validation: {folder: checks}
    """
RUNNER = f"""\
      runner:
        name: contosobase
        resource_group: rg
        identity: {{resource_id: "{RUNNER_ID}", client_id: "{CLIENT_ID}"}}
"""


def test_old_azure_identity_key_says_what_to_write_instead(tmp_path: Path) -> None:
    body = ACR_UPSTREAM.replace(
        "      subscription_id: sub\n", '      subscription_id: sub\n      identity: "[system]"\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_config(make(tmp_path, body))
    message = caught.value.message
    assert "azure.identity: no longer read" in message and "azure.runner.identity" in message
    assert "resource_id" in message and "client_id" in message


@pytest.mark.parametrize(
    "registries",
    [
        "resource_id: /subscriptions/sub/resourceGroups/rg/providers/Microsoft.ContainerRegistry/registries/upstream",
        "username_secret: hub-user\n        password_secret: hub-token",
    ],
    ids=["acr-upstream", "vault-credentials"],
)
def test_runner_identity_is_required_when_validation_runs_log_in(
    tmp_path: Path, registries: str
) -> None:
    body = ACR_UPSTREAM.replace(
        "resource_id: /subscriptions/sub/resourceGroups/rg/providers/Microsoft.ContainerRegistry/registries/upstream",
        registries,
    ).replace(
        "      subscription_id: sub\n",
        "      subscription_id: sub\n      key_vault_url: https://creds.vault.azure.net\n",
    )
    with pytest.raises(
        ConfigError, match=r"azure.runner.identity: validation runs log in to upstream.azurecr.io"
    ):
        load_config(make(tmp_path, body))
    config = load_config(make(tmp_path, body.replace("    rules:\n", RUNNER + "    rules:\n", 1)))
    assert config.azure is not None and config.azure.runner_identity is not None
    assert (config.azure.runner_identity.resource_id, config.azure.runner_identity.client_id) == (
        RUNNER_ID,
        CLIENT_ID,
    )


def test_runner_identity_is_optional_when_no_run_logs_in(tmp_path: Path) -> None:
    body = AZURE.replace("username: bot", "username_secret: hub-user")  # no Key Vault
    config = load_config(make(tmp_path, body))
    assert config.azure is not None and config.azure.runner_identity is None


@pytest.mark.parametrize(
    ("old", "new", "says"),
    [
        (
            RUNNER_ID,
            RUNNER_ID.replace(
                "Microsoft.ManagedIdentity/userAssignedIdentities",
                "Microsoft.ContainerRegistry/registries",
            ),
            "not the ARM id of a user-assigned identity",
        ),
        (CLIENT_ID, "[system]", "not a client id"),
    ],
)
def test_runner_identity_must_be_a_user_assigned_identity(
    tmp_path: Path, old: str, new: str, says: str
) -> None:
    body = ACR_UPSTREAM.replace("    rules:\n", RUNNER.replace(old, new) + "    rules:\n", 1)
    with pytest.raises(ConfigError, match=rf"azure.runner.identity.*{says}"):
        load_config(make(tmp_path, body))


# -- promote modes and downstream tasks ----------------------------------------------------------

PLAIN_AZURE = AZURE.replace("username: bot", "username_secret: hub-user")


def test_promote_mode_defaults_to_import_and_push_is_accepted(tmp_path: Path) -> None:
    config = load_config(make(tmp_path, PLAIN_AZURE))
    assert config.azure is not None and config.azure.registry.promote == "import"

    body = PLAIN_AZURE.replace(
        "registry: {name: contosobase, resource_group: rg}",
        "registry: {name: contosobase, resource_group: rg, promote: push}",
    )
    config = load_config(make(tmp_path, body))
    assert config.azure is not None and config.azure.registry.promote == "push"


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (
            "registry: {name: contosobase, resource_group: rg}",
            "registry: {name: contosobase, resource_group: rg, promote: copy}",
        ),
        (
            "registry: {name: contosobase, resource_group: rg}",
            "registry: {name: contosobase, resource_group: rg}\n"
            "      runner: {name: contosorun, resource_group: rg, promote: push}",
        ),
    ],
    ids=["unknown-mode", "on-the-runner"],
)
def test_bad_promote_mode_is_refused(tmp_path: Path, old: str, new: str) -> None:
    with pytest.raises(ConfigError, match="promote"):
        load_config(make(tmp_path, PLAIN_AZURE.replace(old, new)))


def with_downstream(body: str, downstream: str) -> str:
    """``body`` (a one-rule file) with ``downstream: ...`` added to its rule."""
    return body.rstrip() + f"\n        downstream: {downstream}\n"


def test_downstream_tasks_default_to_the_target_registry(tmp_path: Path) -> None:
    body = with_downstream(
        PLAIN_AZURE,
        "[hello-world, {task: other-app, registry: teamregistry, resource_group: team-rg}]",
    )
    config = load_config(make(tmp_path, body))

    (rule,) = config.rules
    hello, other = rule.downstream
    assert (hello.registry, hello.resource_group, hello.task) == (
        "contosobase",
        "rg",
        "hello-world",
    )
    assert (other.registry, other.resource_group, other.task) == (
        "teamregistry",
        "team-rg",
        "other-app",
    )
    assert other.task_id("sub") == (
        "/subscriptions/sub/resourceGroups/team-rg/providers/Microsoft.ContainerRegistry"
        "/registries/teamregistry/tasks/other-app"
    )


@pytest.mark.parametrize(
    ("downstream", "says"),
    [
        ("[hw]", "downstream"),
        ("['hello world']", "downstream"),
        ("[{task: other-app, registry: teamregistry}]", r"downstream\[0\].resource_group"),
        ("[hello-world, {task: hello-world}]", "same task twice"),
        ("hello-world", "downstream"),
        ("[{task: hello-world, when: always}]", "when"),
    ],
    ids=["short-name", "space", "foreign-registry-without-group", "twice", "not-a-list", "unknown"],
)
def test_bad_downstream_entries_are_refused(tmp_path: Path, downstream: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        load_config(make(tmp_path, with_downstream(PLAIN_AZURE, downstream)))


def test_downstream_without_azure_says_it_runs_only_there(tmp_path: Path) -> None:
    body = with_downstream(GOOD, "[hello-world]")
    with pytest.raises(ConfigError, match=r"rule 'node'.downstream.*need the azure: section"):
        load_config(make(tmp_path, body), env={"UP": "127.0.0.1:5001"})
