"""Settings: prefixes, nesting, masked secrets, and the README table kept true."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from cmrqc_shared.settings import (
    ServiceSettings,
    service_settings_config,
    settings_markdown,
)

README = Path(__file__).resolve().parents[2] / "README.md"


class ExampleSettings(ServiceSettings):
    model_config = service_settings_config("CMRQC_EXAMPLE_")


def test_nested_settings_are_read_with_the_service_prefix(env_clean: pytest.MonkeyPatch) -> None:
    env_clean.setenv("CMRQC_EXAMPLE_KAFKA__BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    env_clean.setenv("CMRQC_EXAMPLE_RUNNER__MAX_ATTEMPTS", "5")
    settings = ExampleSettings()
    assert settings.kafka.client_config()["bootstrap_servers"] == ["k1:9092", "k2:9092"]
    assert settings.runner.max_attempts == 5


def test_common_settings_apply_to_every_service_and_the_service_prefix_wins(
    env_clean: pytest.MonkeyPatch,
) -> None:
    env_clean.setenv("CMRQC_KAFKA__BOOTSTRAP_SERVERS", "shared:9092")
    env_clean.setenv("CMRQC_LOG_LEVEL", "DEBUG")
    env_clean.setenv("CMRQC_EXAMPLE_LOG_LEVEL", "WARNING")
    settings = ExampleSettings()
    assert settings.kafka.bootstrap_servers == "shared:9092"
    assert settings.log_level == "WARNING"


def test_secrets_are_masked_when_settings_are_printed(env_clean: pytest.MonkeyPatch) -> None:
    env_clean.setenv("CMRQC_EXAMPLE_KAFKA__SASL_PASSWORD", "hunter2")
    env_clean.setenv("CMRQC_EXAMPLE_BLOBS__PASSWORD", "r3dis")
    settings = ExampleSettings()
    printed = f"{settings!r} {settings} {settings.model_dump_json()}"
    assert "hunter2" not in printed and "r3dis" not in printed
    assert settings.kafka.sasl_password is not None
    assert settings.kafka.sasl_password.get_secret_value() == "hunter2"
    assert settings.blobs.resolved_url() == "redis://:r3dis@127.0.0.1:6379/0"


def test_invalid_settings_fail_naming_the_setting(env_clean: pytest.MonkeyPatch) -> None:
    env_clean.setenv("CMRQC_EXAMPLE_RUNNER__PROCESSING_GUARANTEE", "maybe-once")
    with pytest.raises(ValueError, match="processing_guarantee"):
        ExampleSettings()


def test_the_settings_table_lists_every_field_with_its_variable() -> None:
    table = settings_markdown(ServiceSettings)
    assert "`CMRQC_RUNNER__PROCESSING_GUARANTEE` | 'exactly-once' \\| 'at-least-once'" in table
    assert "`CMRQC_KAFKA__SASL_PASSWORD`" in table


def test_the_readme_lists_every_setting_exactly_as_cmrqc_settings_prints_it() -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "cmrqc_cli.main", "settings"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    readme = README.read_text()
    match = re.search(r"<!-- settings:begin -->\n(.*?)\n<!-- settings:end -->", readme, re.S)
    assert match, "README.md lacks the settings section markers"
    assert match.group(1).strip() == printed, "regenerate with `uv run cmrqc settings`"
