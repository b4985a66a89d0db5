"""Configuration parsing: DATABASE_URL spellings, clear errors for malformed values."""

from __future__ import annotations

import pytest

from services.common.settings import ConfigError, Settings, normalize_database_url, redact_url


@pytest.mark.parametrize("url", [
    "postgresql://u:p@db:5432/iceos",
    "postgres://u:p@db:5432/iceos",
    "postgresql+psycopg://u:p@db:5432/iceos",
    "postgresql+asyncpg://u:p@db:5432/iceos",
])
def test_database_url_spellings_normalise_to_libpq(url: str) -> None:
    assert normalize_database_url(url) == "postgresql://u:p@db:5432/iceos"


@pytest.mark.parametrize("url, fragment", [
    ("mysql://u@db/iceos", "scheme 'mysql' is not supported"),
    ("postgresql://u@db:notaport/iceos", "malformed"),
    ("postgresql://u@db:5432", "names no database"),
    ("postgresql:///iceos", "names no host"),
    ("   ", "empty"),
])
def test_malformed_database_url_is_a_clear_error(url: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        normalize_database_url(url)


def test_settings_read_env_flags_and_sandbox_limits() -> None:
    settings = Settings.from_env({
        "DATABASE_URL": "postgresql+asyncpg://u:secret@db/iceos", "ICEOS_RUN_MIGRATIONS": "1",
        "ICEOS_REQUIRE_DB": "0", "ICEOS_SANDBOX_TIMEOUT_S": "5", "ICEOS_SANDBOX_MEMORY_MB": "256",
        "ICEOS_SANDBOX_CPU_S": "2", "ICE_DISABLE_SECCOMP": "1", "ICEOS_REGISTRY_PORT": "6000"})
    assert settings.database_url == "postgresql://u:secret@db/iceos"
    assert settings.run_migrations and not settings.require_db and settings.disable_seccomp
    assert (settings.sandbox.timeout_s, settings.sandbox.memory_mb, settings.sandbox.cpu_s) == \
        (5.0, 256, 2.0)
    assert settings.ports["registry"] == 6000


@pytest.mark.parametrize("env, fragment", [
    ({"ICEOS_RUN_MIGRATIONS": "maybe"}, "ICEOS_RUN_MIGRATIONS='maybe' is not a boolean"),
    ({"ICEOS_SANDBOX_TIMEOUT_S": "-1"}, "must be at least"),
    ({"ICEOS_SANDBOX_MEMORY_MB": "lots"}, "is not a number"),
    ({"ICEOS_LOG_LEVEL": "LOUD"}, "ICEOS_LOG_LEVEL"),
])
def test_bad_settings_name_the_variable(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        Settings.from_env(env)


def test_passwords_are_redacted_in_messages() -> None:
    assert redact_url("postgresql://u:hunter2@db/iceos") == "postgresql://u:***@db/iceos"
