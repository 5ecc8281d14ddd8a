"""Bad input to the CLI: a clear message and a non-zero exit, never a traceback, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner, Result

from hitl import cli, cli_db, cli_demo, cli_keys, cli_learner, cli_models, cli_report, cli_score, cli_serve
from hitl.settings import ServingSettings, Settings
from learner.synthetic import generate_catalog, write_catalog


def settings(tmp_path: Path, database_url: str | None = None) -> Settings:
    url = database_url or f"sqlite:///{tmp_path / 'cli.db'}"
    return Settings(state_dir=tmp_path / "state", serving=ServingSettings(database_url=url))


def refused(result: Result, code: int, *reasons: str) -> None:
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    said = " ".join(result.output.split())  # rich wraps long lines
    for reason in reasons:
        assert reason in said


def test_generate_names_what_is_wrong_with_out(tmp_path: Path) -> None:
    invoke = CliRunner().invoke
    refused(
        invoke(cli_learner.catalog_app, ["generate", "--out", str(tmp_path), "--n", "5"]), 2, "is a directory"
    )
    refused(
        invoke(cli_learner.catalog_app, ["generate", "--out", str(tmp_path / "c.txt"), "--n", "5"]),
        2,
        "use a .jsonl suffix",
    )
    a_file = tmp_path / "f.jsonl"
    a_file.write_text("")
    refused(
        invoke(cli_learner.catalog_app, ["generate", "--out", str(a_file), "--n", "5"]), 2, "pass --overwrite"
    )
    assert a_file.read_text() == ""
    replaced = invoke(cli_learner.catalog_app, ["generate", "--out", str(a_file), "--n", "5", "--overwrite"])
    assert replaced.exit_code == 0
    assert len(a_file.read_text().splitlines()) == 5
    refused(
        invoke(cli_learner.catalog_app, ["generate", "--out", str(a_file / "c.jsonl"), "--n", "5"]),
        2,
        "cannot write",
    )


def test_an_empty_catalog_does_not_validate(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    refused(CliRunner().invoke(cli_learner.catalog_app, ["validate", str(empty)]), 1, "holds no records")


def test_train_refuses_a_catalog_it_cannot_learn_from_before_loading_a_model(tmp_path: Path) -> None:
    small = tmp_path / "small.jsonl"
    write_catalog(generate_catalog(40, seed=0), small)
    text = tmp_path / "cat.txt"
    text.write_text("x")
    conf = settings(tmp_path)
    invoke = CliRunner().invoke
    refused(invoke(cli_learner.learner_app, ["--catalog", str(small)], obj=conf), 2, "no class has")
    refused(invoke(cli_learner.learner_app, ["--catalog", str(text)], obj=conf), 2, "unsupported")
    assert not (conf.state_dir / "models").exists()


def test_score_refuses_an_unreadable_catalog_and_a_bundle_path_without_a_bundle(tmp_path: Path) -> None:
    text = tmp_path / "cat.txt"
    text.write_text("x")
    good = tmp_path / "c.jsonl"
    write_catalog(generate_catalog(20, seed=0), good)
    out = ["--out", str(tmp_path / "scored")]
    conf = settings(tmp_path)
    score = typer.Typer()
    score.command()(cli_score.score)
    refused(CliRunner().invoke(score, ["--catalog", str(text), *out], obj=conf), 2, "unsupported")
    no_bundle = conf.model_copy(
        update={
            "serving": conf.serving.model_copy(update={"model_source": "bundle", "bundle_path": tmp_path})
        }
    )
    refused(
        CliRunner().invoke(score, ["--catalog", str(good), *out], obj=no_bundle),
        1,
        "no model to score with",
    )


@pytest.mark.parametrize(
    ("url", "code", "reason"),
    [
        ("notaurl", 2, "not a usable database URL"),
        ("mysql://user:pw-s3cret@127.0.0.1:1/x", 2, "driver"),
        ("postgresql+psycopg://user:pw-s3cret@127.0.0.1:1/hitl", 1, "could not open the database"),
    ],
)
def test_a_database_url_that_cannot_be_used_is_a_clear_error(
    tmp_path: Path, url: str, code: int, reason: str
) -> None:
    result = CliRunner().invoke(cli_keys.app, ["list"], obj=settings(tmp_path, url))
    refused(result, code, reason)
    assert "s3cret" not in result.output  # the URL's password is never printed
    if code == 2:
        refused(CliRunner().invoke(cli_db.app, ["current", "--database-url", url], obj=settings(tmp_path)), 2)


def test_demo_review_with_a_missing_catalog_is_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli_demo.app,
        ["review", "--n", "1", "--catalog", str(tmp_path / "missing.jsonl")],
        obj=settings(tmp_path),
    )
    refused(result, 2, "catalog file not found")


def test_a_broken_config_file_is_a_configuration_error(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text('learner:\n  seed: 1\n token: "x\n')
    cli._register()
    refused(
        CliRunner().invoke(cli.app, ["-c", str(config), "catalog", "validate", "x.jsonl"]),
        2,
        "not valid YAML",
    )


def test_min_class_size_zero_is_refused_not_replaced(tmp_path: Path) -> None:
    cli._register()
    catalog = tmp_path / "c.jsonl"
    write_catalog(generate_catalog(40, seed=0), catalog)
    result = CliRunner().invoke(
        cli.app, ["simulate", "--catalog", str(catalog), "--min-class-size", "0", "--no-mlflow"]
    )
    refused(result, 2, "--min-class-size")


def test_serve_refuses_dev_placeholder_secrets_on_a_public_address(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli_serve.app, ["--host", "0.0.0.0", "--port", "1"], obj=settings(tmp_path))
    refused(result, 2, "refusing to serve on '0.0.0.0'", "labelstudio.webhook_secret", "127.0.0.1")
    assert "hitl-dev" not in result.output


def test_register_refuses_a_folder_that_is_no_bundle_before_it_can_become_the_champion(
    tmp_path: Path,
) -> None:
    empty = tmp_path / "adir"
    empty.mkdir()
    conf = settings(tmp_path)
    result = CliRunner().invoke(cli_serve.app, ["register", str(empty)], obj=conf)
    refused(result, 2, "is not a model bundle that loads", "missing manifest.json", "nothing registered")
    assert not any(conf.state_dir.rglob("*.db")), "MLflow was never touched"


def test_catalog_lines_that_break_parsers_are_bad_records_on_their_line(tmp_path: Path) -> None:
    catalog = tmp_path / "odd.jsonl"
    catalog.write_text(
        '{"id": "a", "title": "T", "price": ' + "9" * 400 + "}\n"
        + '{"id": "b", "title": "T", "category": ' + "[" * 100_000 + "]" * 100_000 + "}\n"
        + '{"id": "c", "title": "T", "price": ' + "9" * 5000 + "}\n",
        encoding="utf-8",
    )  # fmt: skip
    result = CliRunner().invoke(cli_learner.catalog_app, ["validate", str(catalog)])
    refused(
        result,
        1,
        "0 good record(s), 3 bad",
        ":1: price: price must be finite",
        ":2: invalid JSON: nested too deeply",
        ":3: invalid JSON",
    )


def test_key_names_and_ids_out_of_range_are_refused(tmp_path: Path) -> None:
    conf = settings(tmp_path)
    invoke = CliRunner().invoke
    refused(
        invoke(cli_keys.app, ["create", "--role", "admin", "--name", "a\nb\x1b[31mRED"], obj=conf),
        2,
        "control or format character",
    )
    refused(invoke(cli_keys.app, ["revoke", "9" * 26], obj=conf), 2, "Invalid value")
    refused(
        invoke(cli_learner.catalog_app, ["generate", "--out", str(tmp_path / "c.jsonl"), "--seed", "-5"]), 2
    )


def test_a_taxonomy_of_the_wrong_shape_is_a_clear_error(tmp_path: Path) -> None:
    from hitl.cli_labelstudio import load_taxonomy
    from labeling.exceptions import LabelingError

    for name, text, reason in [
        ("int.json", "[3]", "a category path is a string or a list of names, not int"),
        ("mixed.json", '[["A", 3]]', "a category path holds names"),
        ("deep.json", "[" * 100_000 + "]" * 100_000, "not readable as json"),
    ]:
        (tmp_path / name).write_text(text)
        with pytest.raises(LabelingError, match=reason):
            load_taxonomy(tmp_path / name)
    with pytest.raises(LabelingError, match="is a directory, not a file"):
        load_taxonomy(tmp_path)


def test_models_urls_are_checked_and_their_passwords_never_printed(tmp_path: Path) -> None:
    invoke, conf = CliRunner().invoke, settings(tmp_path)
    refused(
        invoke(cli_models.models_app, ["list", "--api-key", "k", "--url", "http://[::1"], obj=conf),
        2,
        "not a usable URL",
    )
    result = invoke(
        cli_models.models_app,
        ["list", "--api-key", "k", "--url", "http://user:pw-s3cret@127.0.0.1:1/"],
        obj=conf,
    )
    refused(result, 1, "cannot reach")
    assert "s3cret" not in result.output


def test_score_refuses_an_empty_catalog_and_a_folder_with_a_broken_manifest(
    tmp_path: Path, small_bundle_dir: Path
) -> None:
    score = typer.Typer()
    score.command()(cli_score.score)
    conf = settings(tmp_path)
    conf = conf.model_copy(
        update={
            "serving": conf.serving.model_copy(
                update={"model_source": "bundle", "bundle_path": small_bundle_dir}
            )
        }
    )
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    out = tmp_path / "scored"
    refused(
        CliRunner().invoke(score, ["--catalog", str(empty), "--out", str(out)], obj=conf), 2, "holds no items"
    )
    assert not out.exists()
    good = tmp_path / "c.jsonl"
    write_catalog(generate_catalog(5, seed=0), good)
    out.mkdir()
    (out / "manifest.json").write_text("{oops")
    refused(
        CliRunner().invoke(score, ["--catalog", str(good), "--out", str(out)], obj=conf),
        2,
        "is not a manifest of `hitl score`",
    )
    no_cluster = [
        "--catalog",
        str(good),
        "--out",
        str(tmp_path / "ray"),
        "--engine",
        "ray",
        "--ray-address",
        "auto",
    ]
    refused(CliRunner().invoke(score, no_cluster, obj=conf), 2, "cannot start the Ray engine", "running Ray")


def test_reading_commands_never_create_a_database_and_say_why_they_cannot_read(tmp_path: Path) -> None:
    missing = tmp_path / "typo" / "sub" / "x.db"
    result = CliRunner().invoke(
        cli_db.app, ["current", "--database-url", f"sqlite:///{missing}"], obj=settings(tmp_path)
    )
    refused(result, 1, "no database at", "hitl db upgrade")
    assert not (tmp_path / "typo").exists()
    out = tmp_path / "report"
    unreachable = settings(tmp_path, "postgresql+psycopg://user:pw-s3cret@127.0.0.1:1/hitl")
    report = typer.Typer()
    report.command()(cli_report.report)
    result = CliRunner().invoke(report, ["--out", str(out)], obj=unreachable)
    refused(result, 1, "could not read the database")
    assert "s3cret" not in result.output
    assert not out.exists(), "a failed report leaves no empty folder"


def test_an_out_that_is_a_file_is_refused_before_any_work(tmp_path: Path) -> None:
    catalog = tmp_path / "c.jsonl"
    write_catalog(generate_catalog(600, seed=0), catalog)
    a_file = tmp_path / "taken.jsonl"
    a_file.write_text("keep me")
    conf = settings(tmp_path)
    train = CliRunner().invoke(
        cli_learner.learner_app, ["--catalog", str(catalog), "--out", str(a_file)], obj=conf
    )
    refused(train, 2, "is a file; it names the bundle's folder")
    cli._register()
    simulate = CliRunner().invoke(
        cli.app, ["simulate", "--catalog", str(catalog), "--out", str(a_file), "--no-mlflow"]
    )
    refused(simulate, 2, "is a file; it names a folder for the runs")
    assert a_file.read_text() == "keep me"
