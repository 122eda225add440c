"""ACR task files: rendered, checked and refused as ACR Tasks would read them (no containers)."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gate.adapters.validation.taskfile import (
    DEFAULT_STEP_TIMEOUT,
    IMAGE_ALIASES,
    AcrTask,
    BuildStep,
    CmdStep,
    PushStep,
    RunContext,
    base_images,
    check_sources,
    load_task,
    parse_task,
    render,
    strip_comment_lines,
)
from gate.errors import ConfigError, UnsupportedTask

SEED = Path(__file__).resolve().parents[2] / "examples" / "seed" / "validation"
DIGEST = "sha256:" + "ab" * 32
IMAGE = f"127.0.0.1:5000/seed/app@{DIGEST}"
WHEN = datetime(2024, 3, 5, 7, 8, 9, tzinfo=UTC)


def context(**values: str) -> RunContext:
    return RunContext(
        run_id="lr01abcdefghjk",
        date=WHEN,
        values={"IMAGE": IMAGE, **values},
        registry="myregistry.azurecr.io",
        architecture="amd64",
    )


def parse(text: str, **values: str) -> AcrTask:
    return parse_task(textwrap.dedent(text), context(**values), source="task.yaml")


def test_seed_task_builds_the_test_image_from_the_pinned_candidate_then_runs_it() -> None:
    task = load_task(
        SEED / "acr-task.yaml",
        context(REGISTRY_FROM_URL="127.0.0.1:5000/", SOURCE_DIGEST=DIGEST),
    )

    assert task.version == "v1.1.0"
    build, run = task.steps
    assert isinstance(build, BuildStep) and isinstance(run, CmdStep)
    assert build.id == "build-test-base-image"
    assert build.tags == ("myregistry.azurecr.io/node-import:test",)
    assert build.build_args == ("REGISTRY_FROM_URL=127.0.0.1:5000/", f"SOURCE_DIGEST={DIGEST}")
    assert (build.dockerfile, build.context) == ("/workspace/Dockerfile", "/workspace")
    assert run.id == "validate-base-image" and run.after == ("build-test-base-image",)
    assert run.image == "myregistry.azurecr.io/node-import:test" and run.args == ()
    assert run.timeout == DEFAULT_STEP_TIMEOUT
    assert task.images == ()  # the test image is built in the run, never pulled
    check_sources(task, SEED)  # its Dockerfile and context are in the folder


def test_seed_dockerfile_builds_from_the_candidate_digest() -> None:
    text = (SEED / "Dockerfile").read_text()

    images, complete = base_images(
        text, ["REGISTRY_FROM_URL=127.0.0.1:5000/", f"SOURCE_DIGEST={DIGEST}"]
    )

    assert complete and images == (f"127.0.0.1:5000/node:15-alpine@{DIGEST}",)
    assert "COPY ./test.sh ." in text and "CMD ./test.sh" in text


def test_seed_test_script_is_executable_and_sets_its_exit_code_in_both_branches() -> None:
    script = SEED / "test.sh"
    assert script.read_text().startswith("#!/bin/sh\n")
    assert script.stat().st_mode & 0o111
    lines = [line.strip() for line in script.read_text().splitlines()]
    assert lines.index("EXIT_CODE=0") < next(i for i, line in enumerate(lines) if "if" in line)


def test_cmd_is_split_like_a_command_line_with_quotes() -> None:
    task = parse(
        """\
        version: v1.1.0
        steps:
          - cmd: "{{.Values.IMAGE}} sh -c 'echo \\"a b\\"; exit 3' last"
        """
    )
    assert task.steps[0].args == ("sh", "-c", 'echo "a b"; exit 3', "last")


def test_short_image_names_are_docker_hub_names() -> None:
    task = parse("steps:\n  - cmd: alpine:3.19 true\n")
    assert task.steps[0].image == "docker.io/library/alpine:3.19"


def test_invalid_image_in_cmd_is_a_config_error_naming_the_step() -> None:
    with pytest.raises(ConfigError, match=r"step 'bad'.*image"):
        parse('steps:\n  - id: bad\n    cmd: "Not_An_Image@x true"\n')


def test_values_and_run_variables_are_rendered_with_optional_spaces() -> None:
    task = parse(
        """\
        version: v1.1.0
        steps:
          - cmd: >-
              {{ .Values.IMAGE }} {{.Values.COLOR}} {{.Run.ID}} {{ .Run.Registry }}
              {{.Run.RegistryName}} {{.Run.Date}} {{.Run.OS}} {{.Run.Architecture}}
        """,
        COLOR="green",
    )
    assert task.steps[0].args == (
        "green",
        "lr01abcdefghjk",
        "myregistry.azurecr.io",
        "myregistry",
        "20240305-070809z",
        "linux",
        "amd64",
    )


def test_trim_markers_remove_the_whitespace_beside_the_action() -> None:
    out = render("a  {{- .Values.X -}}  b|c {{.Values.X}} d", context(X="1"))
    assert out == "a1b|c 1 d"


@given(st.text(alphabet=st.characters(blacklist_characters="{}\r\n"), max_size=40))
def test_a_value_renders_to_exactly_itself(value: str) -> None:
    assert render("<{{.Values.V}}>", context(V=value)) == f"<{value}>"


def test_missing_value_is_a_config_error_naming_it_and_the_given_names_only() -> None:
    with pytest.raises(ConfigError) as caught:
        parse("steps:\n  - cmd: {{.Values.IMAGE}} {{.Values.NOPE}}\n", TOKEN="hunter2-secret")
    assert "NOPE" in caught.value.message
    assert "IMAGE, TOKEN" in caught.value.message
    assert "hunter2-secret" not in caught.value.message


@pytest.mark.parametrize(
    "action",
    ["{{.Run.Commit}}", "{{ .Run.SharedVolume }}", "{{ upper .Values.IMAGE }}", "{{ if 1 }}"],
)
def test_unsupported_template_actions_are_refused_naming_them(action: str) -> None:
    with pytest.raises(UnsupportedTask, match=r"template action|has no local value"):
        parse(f"steps:\n  - cmd: {{{{.Values.IMAGE}}}} echo {action}\n")


def test_run_registry_used_without_a_registry_is_a_config_error() -> None:
    ctx = RunContext(run_id="lr1", date=WHEN, values={"IMAGE": IMAGE})
    with pytest.raises(ConfigError, match="no registry"):
        parse_task("steps:\n  - cmd: {{.Run.Registry}}/app true\n", ctx)


def test_unclosed_action_is_a_config_error_with_its_line() -> None:
    with pytest.raises(ConfigError, match="line 3"):
        parse("version: v1.1.0\nsteps:\n  - cmd: {{.Values.IMAGE true\n")


def test_comment_lines_are_dropped_before_rendering() -> None:
    text = "version: v1.1.0\n  # {{.Values.UNKNOWN}} $Commit\nsteps:\n  - cmd: {{.Values.IMAGE}}\n"
    assert "UNKNOWN" not in strip_comment_lines(text)
    assert parse(text).steps[0].image == IMAGE


def test_v110_aliases_expand_and_unknown_dollar_names_stay() -> None:
    task = parse(
        """\
        version: v1.1.0
        steps:
          - cmd: $Registry/app:$ID echo $ID $RegistryName $HOME $$ID ${X} $
        """
    )
    step = task.steps[0]
    assert step.image == "myregistry.azurecr.io/app:lr01abcdefghjk"
    assert step.args == ("echo", "lr01abcdefghjk", "myregistry", "$HOME", "$ID", "${X}", "$")


def test_aliases_do_not_apply_before_v110() -> None:
    task = parse("version: v1.0.0\nsteps:\n  - cmd: bash echo $ID\n")
    assert task.steps[0].image == "docker.io/library/bash"
    assert task.steps[0].args == ("echo", "$ID")


def test_image_alias_names_the_microsoft_image_from_v110() -> None:
    task = parse("version: v1.1.0\nsteps:\n  - cmd: bash echo hi\n")
    assert task.steps[0].image == IMAGE_ALIASES["bash"]


def test_alias_without_a_local_value_is_refused() -> None:
    with pytest.raises(UnsupportedTask, match=r"\$Commit"):
        parse("version: v1.1.0\nsteps:\n  - cmd: {{.Values.IMAGE}} echo $Commit\n")


def test_custom_alias_section_is_refused() -> None:
    with pytest.raises(UnsupportedTask, match="alias"):
        parse("version: v1.1.0\nalias:\n  values:\n    repo: x\nsteps:\n  - cmd: a/b true\n")


@pytest.mark.parametrize("version", [None, "v1.0.0", "V1.1.0", "1.0-preview-1"])
def test_accepted_versions(version: str | None) -> None:
    head = f"version: {version}\n" if version else ""
    task = parse(head + "steps:\n  - cmd: {{.Values.IMAGE}}\n")
    assert task.version == (version or "v1.0.0")


@pytest.mark.parametrize("version", ["v2.0.0", "1.1", "'latest'"])
def test_unknown_version_is_a_config_error(version: str) -> None:
    with pytest.raises(ConfigError, match="version"):
        parse(f"version: {version}\nsteps:\n  - cmd: {{{{.Values.IMAGE}}}}\n")


def test_build_value_is_read_like_docker_build_flags_and_context() -> None:
    task = parse(
        """\
        steps:
          - id: make
            workingDirectory: app
            build: >-
              --build-arg A=1 --build-arg=B=two -t one:1 --tag {{.Run.Registry}}/two:2
              --target=test --no-cache --platform linux/amd64 -f docker/Dockerfile.test sub
        """
    )

    [step] = task.steps
    assert isinstance(step, BuildStep)
    assert step.build_args == ("A=1", "B=two")
    assert step.tags == ("docker.io/library/one:1", "myregistry.azurecr.io/two:2")
    assert (step.target, step.no_cache, step.platform) == ("test", True, "linux/amd64")
    # -f is read from the working directory, the context joined to it
    assert step.dockerfile == "/workspace/app/docker/Dockerfile.test"
    assert step.context == "/workspace/app/sub"
    assert task.built == step.tags


def test_default_dockerfile_is_in_the_context() -> None:
    [step] = parse("steps:\n  - build: -t a/b:1 ctx\n").steps
    assert isinstance(step, BuildStep) and step.dockerfile == "/workspace/ctx/Dockerfile"


@pytest.mark.parametrize(
    ("value", "flag"),
    [
        ("--label x=y -t a/b:1 .", "--label"),
        ("--secret id=x -t a/b:1 .", "--secret"),
        ("-t a/b:1 --network host .", "--network"),
        ("--cache-from a/b:0 .", "--cache-from"),
    ],
)
def test_unsupported_build_flag_is_refused_naming_step_and_flag(value: str, flag: str) -> None:
    with pytest.raises(UnsupportedTask) as caught:
        parse(f"steps:\n  - id: make\n    build: {value}\n")
    assert "step 'make'" in caught.value.message
    assert f"'{flag}'" in caught.value.message


@pytest.mark.parametrize(
    ("value", "error", "says"),
    [
        ("-t a/b:1", ConfigError, "exactly one build context"),
        ("-t a/b:1 . other", ConfigError, "exactly one build context"),
        ("-t a/b:1 -f", ConfigError, "needs a value"),
        ("--build-arg ONLY -t a/b:1 .", ConfigError, "KEY=value"),
        ("-t Bad:Tag .", ConfigError, "build tag"),
        ("-t a/b:1 ..", UnsupportedTask, "outside the source context"),
        ("-t a/b:1 -f ../Dockerfile .", UnsupportedTask, "outside the source context"),
        ("-t a/b:1 https://github.com/x/y.git#main", UnsupportedTask, "not a local folder"),
    ],
)
def test_bad_build_value_is_refused_before_anything_runs(
    value: str, error: type[Exception], says: str
) -> None:
    with pytest.raises(error, match=says):
        parse(f"steps:\n  - id: make\n    build: {value}\n")


@pytest.mark.parametrize("prop", ["entryPoint: sh", "env: [A=1]", "privileged: true"])
def test_container_properties_on_a_build_step_are_refused(prop: str) -> None:
    with pytest.raises(UnsupportedTask, match="step 'make'"):
        parse(f"steps:\n  - id: make\n    build: -t a/b:1 .\n    {prop}\n")


def test_push_of_an_image_the_task_built_is_a_push_step() -> None:
    task = parse(
        """\
        steps:
          - {id: make, build: "-t {{.Run.Registry}}/app:{{.Run.ID}} ."}
          - {id: test, cmd: "{{.Run.Registry}}/app:{{.Run.ID}} --selftest"}
          - {id: ship, push: ["{{.Run.Registry}}/app:{{.Run.ID}}"]}
        """
    )

    _, _, ship = task.steps
    assert isinstance(ship, PushStep)
    assert ship.images == ("myregistry.azurecr.io/app:lr01abcdefghjk",)
    assert ship.after == ("test",)
    assert task.images == ()  # nothing to pull: the cmd step runs the built image


@pytest.mark.parametrize("push", ['["docker.io/library/node:15"]', '["{{.Run.Registry}}/other:1"]'])
def test_push_of_an_image_no_build_step_made_is_refused(push: str) -> None:
    with pytest.raises(UnsupportedTask, match=r"step 'ship' pushes .* no earlier build"):
        parse(
            'steps:\n  - {id: make, build: "-t {{.Run.Registry}}/app:1 ."}\n'
            f"  - id: ship\n    push: {push}\n"
        )


def test_push_needs_a_list_of_tagged_names() -> None:
    with pytest.raises(ConfigError, match="list of image names"):
        parse("steps:\n  - {id: make, build: -t a/b:1 .}\n  - {id: ship, push: a/b:1}\n")
    with pytest.raises(ConfigError, match="needs a tag"):
        parse("steps:\n  - {id: make, build: -t a/b:1 .}\n  - {id: ship, push: [a/b]}\n")


def test_cmd_running_a_built_image_before_its_build_is_refused() -> None:
    with pytest.raises(ConfigError, match="before the build step"):
        parse(
            'steps:\n  - {id: test, cmd: a/b:1}\n  - {id: make, build: -t a/b:1 ., when: ["-"]}\n'
        )


def test_missing_dockerfile_or_context_is_refused_naming_the_step(tmp_path: Path) -> None:
    task = parse("steps:\n  - {id: make, build: -t a/b:1 -f ./Dockerfile.test .}\n")
    with pytest.raises(ConfigError, match=r"step 'make'.*Dockerfile.test does not exist"):
        check_sources(task, tmp_path)
    other = parse("steps:\n  - {id: make, build: -t a/b:1 ./app}\n")
    with pytest.raises(ConfigError, match=r"step 'make'.*not a folder"):
        check_sources(other, tmp_path)


@pytest.mark.parametrize(
    ("dockerfile", "args", "images", "complete"),
    [
        ("FROM alpine:3.19\n", [], ("docker.io/library/alpine:3.19",), True),
        (
            "ARG BASE=a/b:1\nFROM --platform=linux/amd64 $BASE AS build\nFROM build\n"
            "FROM scratch\n",
            [],
            ("docker.io/a/b:1",),
            True,
        ),
        ("ARG R\nFROM ${R}x/y:2\n", ["R=127.0.0.1:5/"], ("127.0.0.1:5/x/y:2",), True),
        ("FROM ${NOT_GIVEN}\n", [], (), False),
        ("# FROM ignored:1\nFROM \\\n  c/d:3\n", [], ("docker.io/c/d:3",), True),
    ],
)
def test_base_images_resolves_from_lines_with_their_args(
    dockerfile: str, args: list[str], images: tuple[str, ...], complete: bool
) -> None:
    assert base_images(dockerfile, args) == (images, complete)


@pytest.mark.parametrize(
    "prop",
    [
        "detach: true",
        "keep: true",
        "privileged: true",
        "repeat: 2",
        "retries: 1",
        "startDelay: 5",
        'ports: ["8080:80"]',
        'expose: ["80"]',
        "isolation: hyperv",
        "network: host",
        "user: nobody",
        "secret: {id: x}",
        "volumeMounts: [{name: v, mountPath: /v}]",
    ],
)
def test_unsupported_step_properties_are_refused_naming_step_and_property(prop: str) -> None:
    with pytest.raises(UnsupportedTask) as caught:
        parse(f"steps:\n  - id: check\n    cmd: {{{{.Values.IMAGE}}}}\n    {prop}\n")
    message = caught.value.message
    assert "step 'check'" in message
    assert f"'{prop.split(':')[0]}'" in message
    assert "quick run" in message


@pytest.mark.parametrize("prop", ["detach: false", "retries: 0", "privileged: false", "pull: true"])
def test_properties_at_their_default_are_accepted(prop: str) -> None:
    task = parse(f"steps:\n  - id: check\n    cmd: {{{{.Values.IMAGE}}}}\n    {prop}\n")
    assert task.steps[0].id == "check"


@pytest.mark.parametrize(
    "prop",
    [
        "secrets: [{id: s, keyvault: https://v.vault.azure.net/secrets/s}]",
        "networks: [{name: n}]",
        "volumes: [{name: v, secret: {a: b}}]",
        "totalTimeout: 100",
    ],
)
def test_unsupported_task_properties_are_refused(prop: str) -> None:
    with pytest.raises(UnsupportedTask, match=f"'{prop.split(':')[0]}'"):
        parse(f"{prop}\nsteps:\n  - cmd: {{{{.Values.IMAGE}}}}\n")


def test_unknown_properties_are_refused_as_misspelled() -> None:
    with pytest.raises(UnsupportedTask, match=r"'enviroment'.*spelling"):
        parse("steps:\n  - cmd: {{.Values.IMAGE}}\n    enviroment: [A=1]\n")
    with pytest.raises(UnsupportedTask, match="'defaultWorkingDirectory'"):
        parse("defaultWorkingDirectory: /x\nsteps:\n  - cmd: {{.Values.IMAGE}}\n")


def test_steps_without_id_get_acr_default_ids() -> None:
    task = parse("steps:\n  - cmd: a/b one\n  - cmd: a/b two\n")
    assert [s.id for s in task.steps] == ["acb_step_0", "acb_step_1"]


def test_when_defaults_to_the_previous_step_and_dash_means_no_dependency() -> None:
    task = parse(
        """\
        steps:
          - {id: a, cmd: x/y a}
          - {id: b, cmd: x/y b}
          - {id: c, cmd: x/y c, when: ["-"]}
          - {id: d, cmd: x/y d, when: [a, c]}
        """
    )
    after = {s.id: s.after for s in task.steps}
    assert after == {"a": (), "b": ("a",), "c": (), "d": ("a", "c")}


def test_steps_run_after_what_they_wait_for_and_otherwise_in_file_order() -> None:
    task = parse(
        """\
        steps:
          - {id: report, cmd: x/y r, when: [scan, test]}
          - {id: test, cmd: x/y t, when: [setup]}
          - {id: setup, cmd: x/y s, when: ["-"]}
          - {id: scan, cmd: x/y c, when: ["-"]}
        """
    )
    assert [s.id for s in task.steps] == ["setup", "test", "scan", "report"]


@given(st.lists(st.lists(st.integers(0, 7), max_size=3), min_size=1, max_size=8))
def test_execution_order_respects_every_dependency(deps: list[list[int]]) -> None:
    # Step i may wait only for steps with a smaller index: an acyclic graph, in any file order.
    lines = ["steps:"]
    for i, wanted in reversed(list(enumerate(deps))):
        after = sorted({f"s{j}" for j in wanted if j < i})
        when = "[" + ", ".join(after) + "]" if after else '["-"]'
        lines.append(f"  - {{id: s{i}, cmd: x/y run, when: {when}}}")
    task = parse("\n".join(lines) + "\n")
    position = {step.id: n for n, step in enumerate(task.steps)}
    assert len(position) == len(deps)
    for step in task.steps:
        assert all(position[d] < position[step.id] for d in step.after)


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ("  - {id: a, cmd: x/y, when: [nope]}\n", "no step has that id"),
        ("  - {id: a, cmd: x/y, when: [a]}\n", "waits for itself"),
        ("  - {id: a, cmd: x/y, when: ['-', b]}\n  - {id: b, cmd: x/y}\n", "cannot mix"),
        ("  - {id: a, cmd: x/y, when: [b]}\n  - {id: b, cmd: x/y, when: [a]}\n", "cycle"),
        ("  - {id: a, cmd: x/y}\n  - {id: a, cmd: x/y}\n", "unique"),
        ("  - {id: 'a b', cmd: x/y}\n", "without spaces"),
        ("  - {id: a, cmd: x/y, build: .}\n", "exactly one of"),
        ("  - {id: a}\n", "exactly one of"),
        ("  - {id: a, cmd: x/y, timeout: '10'}\n", "whole number"),
        ("  - {id: a, cmd: x/y, ignoreErrors: 'yes'}\n", "true or false"),
        ("  - {id: a, cmd: x/y, env: {A: 1}}\n", "list of"),
        ("  - {id: a, cmd: x/y, env: [NOEQUALS]}\n", "KEY=value"),
        ("  - {id: a, cmd: 'x/y \"unclosed'}\n", "cannot be split"),
        ("  - just a string\n", "must be a mapping"),
    ],
)
def test_malformed_files_are_config_errors(steps: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse("steps:\n" + steps)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("steps: []\n", "non-empty list"),
        ("version: v1.1.0\n", "non-empty list"),
        ("- a\n- b\n", "mapping"),
        ("steps: [\n", "not valid YAML"),
    ],
)
def test_file_shape_errors_are_config_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(text)


def test_missing_task_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nothere.yaml does not exist"):
        load_task(tmp_path / "nothere.yaml", context())


def test_timeouts_default_to_600_then_step_timeout_then_the_step_s_own() -> None:
    plain = parse("steps:\n  - {id: a, cmd: x/y}\n  - {id: b, cmd: x/y, timeout: 0}\n")
    assert [s.timeout for s in plain.steps] == [600, 600]
    task = parse(
        "stepTimeout: 30\nsteps:\n  - {id: a, cmd: x/y}\n  - {id: b, cmd: x/y, timeout: 5}\n"
    )
    assert [s.timeout for s in task.steps] == [30, 5]


def test_step_env_overrides_task_env_and_task_entries_split_at_commas() -> None:
    task = parse(
        """\
        env: ["A=task", "B=1,C=2"]
        steps:
          - {id: a, cmd: x/y, env: ["A=step", "D=x=y"]}
        """
    )
    assert task.steps[0].env == ("A=step", "D=x=y", "B=1", "C=2")


def test_multi_line_env_value_is_refused() -> None:
    with pytest.raises(UnsupportedTask, match="env A spans lines"):
        parse('steps:\n  - {id: a, cmd: x/y, env: ["A=one\\ntwo"]}\n')


def test_working_directory_defaults_to_workspace_and_relative_ones_are_under_it() -> None:
    task = parse(
        """\
        workingDirectory: sub
        steps:
          - {id: a, cmd: x/y}
          - {id: b, cmd: x/y, workingDirectory: /tmp}
          - {id: c, cmd: x/y, workingDirectory: ../workspace/other}
          - {id: d, cmd: x/y, disableWorkingDirectoryOverride: true}
        """
    )
    dirs = [s.working_directory for s in task.steps]
    assert dirs == ["/workspace/sub", "/tmp", "/workspace/other", None]
    assert parse("steps:\n  - {id: a, cmd: x/y}\n").steps[0].working_directory == "/workspace"


def test_images_lists_each_step_image_once_in_first_use_order() -> None:
    task = parse(
        "steps:\n  - {id: a, cmd: b/b}\n  - {id: b, cmd: '{{.Values.IMAGE}}'}\n"
        "  - {id: c, cmd: b/b x}\n"
    )
    assert task.images == ("docker.io/b/b", IMAGE)
