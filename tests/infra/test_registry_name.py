"""`registry.model_name` is checked when the config loads, not at registration after all the
training: known placeholders only, characters MLflow and its search filter accept, one
registered model per task; by default one per experiment and task."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from infra.experiment.config import ConfigError, RegistrySpec, parse_config

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests/fixtures/configs/tiny.yaml"


def _with_name(name: str | None) -> dict:
    data = yaml.safe_load(TINY.read_text())
    if name is None:
        del data["registry"]["model_name"]
    else:
        data["registry"]["model_name"] = name
    return data


def test_the_default_name_is_one_registered_model_per_experiment_and_task():
    cfg = parse_config(_with_name(None))
    assert cfg.registry.model_name == "prunegrid-{experiment}-{task}"
    assert RegistrySpec().model_name.format(experiment="tiny", task="sst2") == "prunegrid-tiny-sst2"


@pytest.mark.parametrize("name", ["{task}", "tiny-{task}", "{experiment}_{task}.v2", "a-{experiment}-{task}"])
def test_good_names_load(name: str):
    assert parse_config(_with_name(name)).registry.model_name == name


def test_an_unknown_placeholder_is_named_with_the_ones_allowed():
    with pytest.raises(ConfigError) as error:
        parse_config(_with_name("prunegrid-{dataset}-{task}"))
    message = str(error.value)
    assert "registry.model_name" in message and "{dataset}" in message
    assert "{experiment}" in message and "{task}" in message


@pytest.mark.parametrize("name", ["it's-{task}", 'q"{task}', "a/{task}", "a:{task}", "a b-{task}",
                                  "{task}}", "{{task}}", "{task!r}", "{task:>9}", "{}-{task}"])
def test_a_character_the_registry_or_its_search_rejects_is_refused(name: str):
    with pytest.raises(ConfigError, match=r"registry\.model_name: .*letters, digits"):
        parse_config(_with_name(name))


def test_a_name_without_the_task_is_refused():
    # Every task of the experiment would share one registered model and its aliases.
    with pytest.raises(ConfigError, match=r"registry\.model_name: .*\{task\}"):
        parse_config(_with_name("prunegrid-{experiment}"))
