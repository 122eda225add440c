"""The command line keeps each configuration file's YAML parse as JSON, used only for that text."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from devstack.configs import local_gate_yaml
from gate.config.loading import load_config
from gate.config.parse_cache import cache_dir, cached_parse
from gate.errors import ConfigError


def entries(folder: Path) -> dict[str, dict[str, object]]:
    loaded: dict[str, dict[str, object]] = json.loads(
        (folder / "config-parses.json").read_text(encoding="utf-8")
    )
    return loaded


def test_a_file_parsed_once_is_read_back_from_the_cache_while_its_text_is_the_same(
    tmp_path: Path,
) -> None:
    cache, file = tmp_path / "cache", tmp_path / "gate.yaml"
    text = "rules: [{name: a}]\n"

    first = cached_parse(file, text, cache)
    # the cache is what answers now: an entry edited behind its back shows through
    entry = entries(cache)[str(file)]
    assert entry == {"text": text, "data": first}
    (cache / "config-parses.json").write_text(
        json.dumps({str(file): {"text": text, "data": {"rules": [{"name": "from-cache"}]}}})
    )

    assert first == {"rules": [{"name": "a"}]}
    assert cached_parse(file, text, cache) == {"rules": [{"name": "from-cache"}]}


def test_a_changed_file_is_parsed_again_and_its_entry_replaced(tmp_path: Path) -> None:
    cache, file = tmp_path / "cache", tmp_path / "gate.yaml"
    cached_parse(file, "rules: [{name: a}]\n", cache)

    changed = cached_parse(file, "rules: [{name: b}]\n", cache)

    assert changed == {"rules": [{"name": "b"}]}
    assert list(entries(cache)) == [str(file)]
    assert entries(cache)[str(file)]["data"] == changed


@pytest.mark.parametrize(
    "text",
    ["when: 2026-12-02\n", "1: one\n", "blob: !!binary aGVsbG8=\n", "n: .nan\n"],
    ids=["date", "number-key", "bytes", "nan"],
)
def test_a_parse_json_would_change_is_not_cached(tmp_path: Path, text: str) -> None:
    cache = tmp_path / "cache"

    cached_parse(tmp_path / "gate.yaml", text, cache)

    assert not (cache / "config-parses.json").exists()


def test_the_cache_keeps_the_sixteen_files_parsed_last(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    for n in range(20):
        cached_parse(tmp_path / f"gate{n}.yaml", f"n: {n}\n", cache)

    kept = list(entries(cache))

    assert kept == [str(tmp_path / f"gate{n}.yaml") for n in range(4, 20)]


def test_environment_values_never_reach_the_cache(tmp_path: Path) -> None:
    (tmp_path / "validation").mkdir()
    (tmp_path / "validation" / "acr-task.yaml").write_text("version: v1.1.0\nsteps: []\n")
    config = local_gate_yaml(
        tmp_path,
        "127.0.0.1:5000",
        "127.0.0.1:5001",
        validation="{folder: validation}",
        top=["secrets_dir: ${GATE_TEST_SECRET_DIR}"],
    )
    (tmp_path / "s3cr3t-folder").mkdir()
    env = {**os.environ, "GATE_TEST_SECRET_DIR": str(tmp_path / "s3cr3t-folder")}

    loaded = load_config(config, env=env, parse_cache=tmp_path / "cache")

    assert loaded.secrets_dir == tmp_path / "s3cr3t-folder"
    stored = (tmp_path / "cache" / "config-parses.json").read_text()
    assert "${GATE_TEST_SECRET_DIR}" in stored and "s3cr3t" not in stored


def test_a_cache_folder_that_cannot_be_written_only_means_parsing(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder would go")

    assert cached_parse(tmp_path / "gate.yaml", "a: 1\n", blocked) == {"a": 1}
    assert cached_parse(tmp_path / "gate.yaml", "a: 2\n", blocked) == {"a": 2}


def test_a_corrupt_cache_is_ignored_and_rewritten(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "config-parses.json").write_text("{not json")

    assert cached_parse(tmp_path / "gate.yaml", "a: 1\n", cache) == {"a": 1}
    assert entries(cache)[str(tmp_path / "gate.yaml")]["data"] == {"a": 1}


def test_invalid_yaml_is_a_config_error_with_its_place_and_nothing_is_cached(
    tmp_path: Path,
) -> None:
    config = tmp_path / "gate.yaml"
    config.write_text("rules:\n  - name: [unclosed\n")

    with pytest.raises(ConfigError, match=r"at line \d+, column \d+: not valid YAML"):
        load_config(config, parse_cache=tmp_path / "cache")
    assert not (tmp_path / "cache" / "config-parses.json").exists()


def test_the_cache_lives_under_xdg_cache_home_else_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", "/somewhere/cache")
    assert cache_dir() == Path("/somewhere/cache/gate")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", "/home/someone")
    assert cache_dir() == Path("/home/someone/.cache/gate")
