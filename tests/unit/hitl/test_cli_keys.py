"""`hitl keys create/list/revoke` against a real SQLite database."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from hitl import cli, cli_keys
from hitl.settings import ServingSettings, Settings
from serving.keys import KEY_PREFIX, Role, authenticate
from serving.store import Store


def settings(tmp_path: Path) -> Settings:
    return Settings(
        state_dir=tmp_path, serving=ServingSettings(database_url=f"sqlite:///{tmp_path / 'k.db'}")
    )


def test_create_prints_the_key_once_on_stdout_and_it_authenticates(tmp_path: Path) -> None:
    conf = settings(tmp_path)
    result = CliRunner().invoke(cli_keys.app, ["create", "--role", "service", "--name", "ingest"], obj=conf)
    assert result.exit_code == 0, result.output
    assert "shown once" in result.stderr
    plaintext = result.stdout.strip()
    assert plaintext.startswith(KEY_PREFIX)
    store = Store(conf.database_url)
    try:
        principal = authenticate(store, plaintext)
    finally:
        store.close()
    assert principal is not None
    assert (principal.name, principal.role) == ("ingest", Role.SERVICE)

    listed = CliRunner().invoke(cli_keys.app, ["list"], obj=conf)
    assert listed.exit_code == 0
    assert "ingest" in listed.stdout
    assert plaintext[:9] in listed.stdout
    assert plaintext not in listed.stdout


def test_unknown_role_is_a_clear_error_listing_the_valid_ones(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli_keys.app, ["create", "--role", "root", "--name", "x"], obj=settings(tmp_path)
    )
    assert result.exit_code == 2
    assert "unknown role 'root'" in result.stderr
    for role in Role:
        assert role.value in result.stderr
    assert "Traceback" not in result.output


def test_blank_name_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli_keys.app, ["create", "--role", "admin", "--name", "  "], obj=settings(tmp_path)
    )
    assert result.exit_code == 2
    assert "key name" in result.stderr


def test_revoke_then_the_key_fails_and_unknown_id_exits_1(tmp_path: Path) -> None:
    conf = settings(tmp_path)
    created = CliRunner().invoke(cli_keys.app, ["create", "-r", "admin", "-n", "root"], obj=conf)
    plaintext = created.stdout.strip()
    revoked = CliRunner().invoke(cli_keys.app, ["revoke", "1"], obj=conf)
    assert revoked.exit_code == 0
    assert "revoked key 1" in revoked.stderr
    again = CliRunner().invoke(cli_keys.app, ["revoke", "1"], obj=conf)
    assert again.exit_code == 0
    assert "was already revoked at" in again.stderr
    store = Store(conf.database_url)
    try:
        assert authenticate(store, plaintext) is None
    finally:
        store.close()
    assert "root" not in CliRunner().invoke(cli_keys.app, ["list"], obj=conf).stdout
    assert "root" in CliRunner().invoke(cli_keys.app, ["list", "--all"], obj=conf).stdout
    missing = CliRunner().invoke(cli_keys.app, ["revoke", "42"], obj=conf)
    assert missing.exit_code == 1
    assert "no key 42" in missing.stderr


def test_keys_group_is_registered() -> None:
    cli._register()
    result = CliRunner().invoke(cli.app, ["keys", "--help"])
    assert result.exit_code == 0
    assert "create" in result.stdout
    assert "revoke" in result.stdout


def test_create_says_the_name_as_it_is_stored_with_personal_data_masked(tmp_path: Path) -> None:
    conf = settings(tmp_path)
    result = CliRunner().invoke(
        cli_keys.app, ["create", "--role", "service", "--name", "jane.doe@example.com laptop"], obj=conf
    )
    assert result.exit_code == 0, result.output
    assert "jane.doe@example.com" not in result.output
    assert "'[EMAIL] laptop'" in result.stderr
    assert "jane.doe" not in CliRunner().invoke(cli_keys.app, ["list"], obj=conf).stdout
