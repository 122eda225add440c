"""Loading the gate configuration: env substitution, relative paths, errors that say where."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gate.config.loading import load_config
from gate.domain.ref import ImageRef
from gate.errors import ConfigError, NoMatchingRule, UsageError


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


def test_local_downstream_names_a_task_file_or_its_folder_relative_to_the_file(
    tmp_path: Path,
) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "acr-task.yaml").write_text("steps: []\n")
    (tmp_path / "other.yaml").write_text("steps: []\n")
    body = with_downstream(
        GOOD, "[{file: app, values: {GREETING: hi}, timeout: 60}, {file: other.yaml}]"
    )

    config = load_config(make(tmp_path, body), env={"UP": "127.0.0.1:5001"})

    app, other = config.rules[0].downstream
    assert app.local and app.file == tmp_path / "app" / "acr-task.yaml"
    assert (app.registry, app.task, dict(app.values), app.timeout_seconds) == (
        "local",
        "app",
        {"GREETING": "hi"},
        60,
    )
    assert other.file == tmp_path / "other.yaml" and other.timeout_seconds == 600


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ("{file: nothere}", r"downstream\[0\].file: .*nothere.* does not exist"),
        ("{task: hello-world, file: app}", "either task .* or file .*, not both"),
        ("{registry: contosoteam}", "not neither"),
        ("{file: app, registry: contosoteam}", "registry and resource_group are for ACR tasks"),
        ("{file: app, values: {BASE_IMAGE: x}}", "BASE_IMAGE are set by the gate"),
    ],
)
def test_bad_local_downstream_entry_is_refused_naming_it(
    tmp_path: Path, entry: str, says: str
) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "acr-task.yaml").write_text("steps: []\n")
    body = with_downstream(GOOD, f"[{entry}]")
    with pytest.raises(ConfigError, match=says):
        load_config(make(tmp_path, body), env={"UP": "127.0.0.1:5001"})


def test_local_downstream_file_with_azure_is_refused(tmp_path: Path) -> None:
    (tmp_path / "app.yaml").write_text("steps: []\n")
    body = with_downstream(PLAIN_AZURE, "[{file: app.yaml}]")
    with pytest.raises(ConfigError, match=r"downstream\[0\].file: local task files run"):
        load_config(make(tmp_path, body))


def test_keep_images_is_off_unless_the_validator_section_says_so(tmp_path: Path) -> None:
    plain = load_config(make(tmp_path, GOOD), env={"UP": "127.0.0.1:5001"})
    kept = load_config(
        make(tmp_path, GOOD + "validator: {keep_images: true}\n"), env={"UP": "127.0.0.1:5001"}
    )

    assert plain.validator.keep_images is False
    assert kept.validator.keep_images is True


def test_attestation_section_names_the_key_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "gate.key").write_text("not checked here: the signer reads it")
    body = (
        GOOD.rstrip(" ")
        + "    attestation: {key: keys/gate.key, verifier_id: 'https://gate.example'}\n"
    )

    config = load_config(make(tmp_path, body), env={"UP": "127.0.0.1:5001"})

    assert config.attestation is not None
    assert config.attestation.key == tmp_path / "keys" / "gate.key"
    assert config.attestation.verifier_id == "https://gate.example"
    assert config.attestation.referrers_api is True
    assert load_config(make(tmp_path, GOOD), env={"UP": "127.0.0.1:5001"}).attestation is None


def test_attestation_key_that_does_not_exist_says_how_to_make_one(tmp_path: Path) -> None:
    body = GOOD.rstrip(" ") + "    attestation: {key: keys/missing.key}\n"

    with pytest.raises(ConfigError, match=r"attestation.key: .*gate keygen keys/missing.key"):
        load_config(make(tmp_path, body), env={"UP": "127.0.0.1:5001"})


def test_leases_and_pass_freshness_default_to_a_minute_and_a_day(tmp_path: Path) -> None:
    config = load_config(make(tmp_path, GOOD), env={"UP": "127.0.0.1:5001"})

    assert (config.lease.seconds, config.lease.heartbeat_seconds) == (60.0, 10.0)
    assert config.rules[0].validation_fresh_for == 86400.0


def test_a_rule_may_keep_its_passes_fresh_for_longer_than_the_file_says(tmp_path: Path) -> None:
    body = """\
        validation_fresh_for: 600
        lease: {seconds: 30, heartbeat: 5}
        rules:
          - {name: node, source: up.example.com/node, tags: x, target: art.example.com/node,
             validation: {folder: checks}, validation_fresh_for: 7200}
          - {name: go, source: up.example.com/go, tags: x, target: art.example.com/go,
             validation: {folder: checks}}
        """

    config = load_config(make(tmp_path, body))

    fresh = {rule.name: rule.validation_fresh_for for rule in config.rules}
    assert fresh == {"node": 7200.0, "go": 600.0}
    assert (config.lease.seconds, config.lease.heartbeat_seconds) == (30.0, 5.0)


@pytest.mark.parametrize(
    ("setting", "says"),
    [
        ("lease: {seconds: 10, heartbeat: 6}", "lease.heartbeat.*more than half"),
        ("lease: {seconds: 0}", "lease.seconds"),
        ("validation_fresh_for: -1", "validation_fresh_for"),
    ],
)
def test_lease_and_freshness_settings_that_cannot_work_are_refused(
    tmp_path: Path, setting: str, says: str
) -> None:
    body = GOOD.rstrip(" ") + f"    {setting}\n"

    with pytest.raises(ConfigError, match=says):
        load_config(make(tmp_path, body), env={"UP": "127.0.0.1:5001"})


KV_KEY = "https://contoso-kv.vault.azure.net/keys/gate-attestation"


def test_the_azure_gate_signs_with_a_key_vault_key_and_only_in_push_mode(tmp_path: Path) -> None:
    push = PLAIN_AZURE.replace(
        "registry: {name: contosobase, resource_group: rg}",
        "registry: {name: contosobase, resource_group: rg, promote: push}",
    ).rstrip(" ")
    config = load_config(make(tmp_path, push + f"    attestation: {{key_vault_key: '{KV_KEY}'}}\n"))
    assert config.attestation is not None
    assert (config.attestation.key, config.attestation.key_vault_key) == (None, KV_KEY)

    imports = PLAIN_AZURE.rstrip(" ") + f"    attestation: {{key_vault_key: '{KV_KEY}'}}\n"
    with pytest.raises(
        ConfigError, match=r"attestation: attestations need azure\.registry\.promote"
    ):
        load_config(make(tmp_path, imports))
    (tmp_path / "gate.key").write_text("x")
    with pytest.raises(ConfigError, match=r"attestation\.key: with azure:, sign with a Key Vault"):
        load_config(make(tmp_path, push + "    attestation: {key: gate.key}\n"))


def test_attestation_names_exactly_one_key_and_a_vault_key_needs_azure(tmp_path: Path) -> None:
    (tmp_path / "gate.key").write_text("x")
    both = f"    attestation: {{key: gate.key, key_vault_key: '{KV_KEY}'}}\n"
    with pytest.raises(ConfigError, match="name exactly one signing key"):
        load_config(make(tmp_path, GOOD.rstrip(" ") + both), env={"UP": "127.0.0.1:5001"})
    with pytest.raises(ConfigError, match="name exactly one signing key"):
        load_config(
            make(tmp_path, GOOD.rstrip(" ") + "    attestation: {verifier_id: x}\n"),
            env={"UP": "127.0.0.1:5001"},
        )
    vault_only = f"    attestation: {{key_vault_key: '{KV_KEY}'}}\n"
    with pytest.raises(ConfigError, match=r"attestation\.key_vault_key: a Key Vault key signs"):
        load_config(make(tmp_path, GOOD.rstrip(" ") + vault_only), env={"UP": "127.0.0.1:5001"})


def test_a_duration_with_a_trailing_newline_is_the_files_error_at_its_field(tmp_path: Path) -> None:
    # the schema's pattern lets "6h\n" (a YAML block scalar) through; the parser does not
    body = GOOD.rstrip(" ") + '        cooldown: "6h\\n"\n'

    with pytest.raises(ConfigError, match=r"rule 'node'\.cooldown: '6h\n' is not a duration"):
        load_config(make(tmp_path, body), env={"UP": "127.0.0.1:5001"})


def test_the_promotion_signature_has_a_key_of_its_own(tmp_path: Path) -> None:
    (tmp_path / "gate.key").write_text("attestation key")
    (tmp_path / "sign.key").write_text("signature key")
    (tmp_path / "copy.key").write_text("attestation key")
    env = {"UP": "127.0.0.1:5001"}

    def attestation(line: str) -> Path:
        return make(tmp_path, GOOD.rstrip(" ") + f"    attestation: {line}\n")

    config = load_config(attestation("{key: gate.key, signature_key: sign.key}"), env=env)
    assert config.attestation is not None
    assert config.attestation.signature_key == tmp_path / "sign.key"
    assert config.attestation.signs
    plain = load_config(attestation("{key: gate.key}"), env=env).attestation
    assert plain is not None and not plain.signs

    # the same file, or a copy of it: cosign 3 would take any attestation as an approval
    for same in ("gate.key", "./gate.key", "copy.key"):
        with pytest.raises(ConfigError, match=r"signature_key: is the attestation key.*FAILED"):
            load_config(attestation(f"{{key: gate.key, signature_key: {same}}}"), env=env)
    with pytest.raises(ConfigError, match=r"signature_key: .*gate keygen missing.key"):
        load_config(attestation("{key: gate.key, signature_key: missing.key}"), env=env)


def test_a_key_vault_signature_key_is_another_key_of_the_azure_gate(tmp_path: Path) -> None:
    push = PLAIN_AZURE.replace(
        "registry: {name: contosobase, resource_group: rg}",
        "registry: {name: contosobase, resource_group: rg, promote: push}",
    ).rstrip(" ")
    other = "https://contoso-kv.vault.azure.net/keys/gate-signature"

    def attestation(extra: str) -> Path:
        return make(tmp_path, push + f"    attestation: {{key_vault_key: '{KV_KEY}', {extra}}}\n")

    config = load_config(attestation(f"signature_key_vault_key: '{other}/'"))
    assert config.attestation is not None
    assert config.attestation.signature_key_vault_key == other
    # the attestation key under another version or spelling is still that key
    for same in (KV_KEY, KV_KEY.upper().replace("HTTPS", "https") + "/0123abcd"):
        with pytest.raises(ConfigError, match=r"signature_key_vault_key: is the attestation key"):
            load_config(attestation(f"signature_key_vault_key: '{same}'"))
    (tmp_path / "sign.key").write_text("x")
    with pytest.raises(ConfigError, match=r"signature_key: with azure:, sign with a Key Vault"):
        load_config(attestation("signature_key: sign.key"))
    with pytest.raises(ConfigError, match="name at most one signature key"):
        load_config(attestation(f"signature_key: sign.key, signature_key_vault_key: '{other}'"))


def test_config_check_refuses_one_key_for_attestation_and_signature_saying_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from gate.entrypoints import cli

    (tmp_path / "gate.key").write_text("one key")
    monkeypatch.setenv("UP", "127.0.0.1:5001")
    path = make(
        tmp_path, GOOD.rstrip(" ") + "    attestation: {key: gate.key, signature_key: gate.key}\n"
    )

    done = CliRunner().invoke(cli.main, ["config", "check", str(path)])

    assert done.exit_code == 2, done.output
    assert "attestation.signature_key: is the attestation key" in done.stderr
    assert "a FAILED demotion too, would count as an approval" in done.stderr
