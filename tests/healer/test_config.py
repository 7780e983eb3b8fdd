"""Settings are strict: a bad value names its variable; secrets never show."""

from __future__ import annotations

from pathlib import Path

import pytest

from healer.config import RemediationMode, Settings, SettingsError

SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "SENDGRID_API_KEY": "SG.aaaaaaaaaaaaaaaaaaaaaa.bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
    "STRIPE_SECRET_KEY": "sk_test_51HxyzabcdefghijklmnopQRSTUV",
    "STRIPE_WEBHOOK_SECRET": "whsec_abcdefghijklmnopqrstuvwxyz123456",
    "HEALER_ADMIN_TOKEN": "admin-token-abcdefghijklmnopqrstuvwxyz",
    "DATABASE_URL": "postgresql://shop:hunter2-db-password@db:5432/shop",
}


def test_defaults_are_the_embedded_ones(tmp_path: Path) -> None:
    settings = Settings.from_env({"HEALER_DATA_DIR": str(tmp_path)})

    assert settings.effective_database_url == f"sqlite:///{tmp_path}/healer.sqlite3"
    assert settings.http_port == 8080 and settings.public_base_url == "http://127.0.0.1:8080"
    assert settings.remediation is RemediationMode.ON
    assert (settings.max_attempts, settings.retry_base_seconds, settings.retry_max_seconds) == (10, 30, 1800)
    notes = " ".join(settings.embedded_defaults())
    assert "SQLite" in notes and "DISABLED" in notes and ".eml" in notes
    assert (settings.assets_dir / "templates").is_dir()


def test_secrets_appear_nowhere_in_reprs_or_descriptions() -> None:
    settings = Settings.from_env(SECRETS)
    shown = repr(settings) + str(settings.describe())

    for name, value in SECRETS.items():
        value.split("hunter2")[0] if name == "DATABASE_URL" else value
        assert value not in shown, name
    assert "hunter2-db-password" not in shown
    assert "AKIA…MPLE" in shown


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"HEALER_HTTP_PORT": "eighty"}, "HEALER_HTTP_PORT"),
        ({"HEALER_HTTP_PORT": "70000"}, "HEALER_HTTP_PORT"),
        ({"HEALER_WORKERS": "0"}, "HEALER_WORKERS"),
        ({"HEALER_REMEDIATION": "maybe"}, "HEALER_REMEDIATION"),
        ({"DATABASE_URL": "mysql://x@y/z"}, "DATABASE_URL"),
        ({"S3_BUCKET": "Not_A_Bucket"}, "S3_BUCKET"),
        ({"S3_ENDPOINT_URL": "localhost:9000"}, "S3_ENDPOINT_URL"),
        ({"AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE"}, "AWS_SECRET_ACCESS_KEY"),
        ({"SENDGRID_API_KEY": "not-a-sendgrid-key-1234567890"}, "SENDGRID_API_KEY"),
        ({"STRIPE_SECRET_KEY": "pk_test_publishable_key_123456"}, "STRIPE_SECRET_KEY"),
        ({"FROM_EMAIL": "not an address"}, "FROM_EMAIL"),
        ({"SESSION_EXPIRATION": "tomorrow"}, "SESSION_EXPIRATION"),
        ({"HEALER_RETRY_BASE_SECONDS": "60", "HEALER_RETRY_MAX_SECONDS": "10"}, "HEALER_RETRY_MAX_SECONDS"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(SettingsError) as error:
        Settings.from_env(env)

    message = str(error.value)
    assert message.startswith(names) or names in message.split()[0], message
    assert "\n" not in message
    for value in env.values():
        if "key" in value.lower():
            assert value not in message


def test_the_refund_grace_is_a_day_unless_set() -> None:
    assert Settings.from_env({}).refund_grace_seconds == 86400
    assert Settings.from_env({"HEALER_REFUND_GRACE_SECONDS": "3600"}).refund_grace_seconds == 3600
    assert Settings.from_env({"HEALER_REFUND_GRACE_SECONDS": "0"}).refund_grace_seconds == 0  # at once
    with pytest.raises(SettingsError, match=r"^HEALER_REFUND_GRACE_SECONDS='-1' must be at least 0$"):
        Settings.from_env({"HEALER_REFUND_GRACE_SECONDS": "-1"})
    with pytest.raises(SettingsError, match=r"^HEALER_REFUND_GRACE_SECONDS='24h' is not a whole number$"):
        Settings.from_env({"HEALER_REFUND_GRACE_SECONDS": "24h"})


def test_session_expiration_accepts_durations() -> None:
    assert Settings.from_env({"SESSION_EXPIRATION": "24h"}).session_expiration_seconds == 86400
    assert Settings.from_env({"SESSION_EXPIRATION": "3600"}).session_expiration_seconds == 3600
