"""The command line as a user runs it: real processes, a real STEELSIGHT_HOME."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from tests.helpers import copy_severstal, truncate
from warehouse.schema import describe_markdown

REPO = Path(__file__).resolve().parents[2]
STEELSIGHT = Path(sys.executable).parent / "steelsight"

pytestmark = pytest.mark.e2e


def run(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "STEELSIGHT_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run(
        [str(STEELSIGHT), *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=300
    )


def test_every_command_has_help(tmp_path: Path) -> None:
    for command in (
        [],
        ["import-labels"],
        ["sql"],
        ["warehouse"],
        ["warehouse", "info"],
        ["warehouse", "check"],
        ["demo"],
        ["train"],
        ["evaluate"],
        ["promote"],
        ["rollback"],
        ["models"],
        ["register-sheets"],
        ["ingest"],
        ["inspect"],
        ["serve"],
    ):
        result = run(tmp_path, *command, "--help")
        assert result.returncode == 0, result.stderr
        assert "Usage: steelsight" in result.stdout
    # choices are listed
    assert "<tiny|demo|default|gpu>" in run(tmp_path, "train", "--help").stdout
    assert "<segmentation|classification|identity>" in run(tmp_path, "evaluate", "--help").stdout
    assert "<table|csv|json|parquet>" in run(tmp_path, "sql", "--help").stdout


def test_import_a_good_and_a_corrupt_copy_then_check(shared_data: Path, tmp_path: Path) -> None:
    corrupt = copy_severstal(shared_data, tmp_path / "corrupt-copy")
    truncate(next(iter(sorted((corrupt / "train_images").iterdir()))))
    text = (corrupt / "train.csv").read_text().splitlines()
    text[1] = text[1].rsplit(",", 1)[0] + ",1 2 3"  # odd number of values
    (corrupt / "train.csv").write_text("\n".join(text) + "\n")

    home = tmp_path / "home"
    result = run(home, "import-labels", str(shared_data / "severstal-sample"), str(corrupt))
    assert result.returncode == 0, result.stderr
    assert "partial" in result.stdout and "ok" in result.stdout
    assert "odd number of values" in result.stdout  # the first errors are shown
    assert run(home, "warehouse", "check").returncode == 0

    with duckdb.connect(str(home / "warehouse" / "steelsight.duckdb"), read_only=True) as con:
        assert con.sql("SELECT count(*) FROM archives").fetchall() == [(2,)]
        kinds = con.sql("SELECT DISTINCT error_kind FROM ingest_errors ORDER BY 1").fetchall()
    assert ("invalid_rle",) in kinds and ("unreadable_image",) in kinds


def test_exit_code_is_1_when_nothing_could_be_imported(tmp_path: Path) -> None:
    folder = tmp_path / "nothing"
    (folder / "train_images").mkdir(parents=True)
    (folder / "train.csv").write_text("not,the,header\n")
    result = run(tmp_path / "home", "import-labels", str(folder))
    assert result.returncode == 1
    assert "failed" in result.stdout
    result = run(tmp_path / "home", "import-labels", str(tmp_path / "does-not-exist"))
    assert result.returncode == 2 and "does not exist" in result.stderr


def test_readme_queries_run_and_return_rows(shared_data: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    imported = run(
        home, "import-labels", str(shared_data / "severstal-sample"), str(shared_data / "neu-det")
    )
    assert imported.returncode == 0, imported.stderr
    blocks = re.findall(r"```sql\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    queries = [
        q.strip() for b in blocks for q in b.split(";") if re.sub(r"--[^\n]*", "", q).strip()
    ]
    labelled = [q for q in queries if "label" in q]  # the ones a labels-only warehouse answers
    assert len(labelled) == 3 and len(queries) == 7
    with duckdb.connect(str(home / "warehouse" / "steelsight.duckdb"), read_only=True) as con:
        for query in queries:  # every one runs; those about labels return rows
            rows = con.sql(query).fetchall()
            assert rows or query not in labelled, query
    result = run(home, "sql", "SELECT count(*) AS n FROM ingest_error_report")
    assert result.returncode == 0 and "0" in result.stdout


def test_warehouse_doc_is_generated_from_the_schema() -> None:
    assert (REPO / "docs" / "warehouse.md").read_text() == describe_markdown()


def test_simulate_writes_both_archives_and_rejects_unknown_parameters(tmp_path: Path) -> None:
    out = tmp_path / "recordings"
    result = run(
        tmp_path / "home",
        "simulate",
        "--out",
        str(out),
        "--sheets",
        "2",
        "--seed",
        "3",
        "--format",
        "frames",
        "--fault",
        "dropped-frames",
    )
    assert result.returncode == 0, result.stderr
    assert "2 sheets" in result.stdout
    inspection, station = sorted(out.iterdir())
    assert (inspection / "manifest.json").exists() and (inspection / "frames").is_dir()
    assert len(list((station / "frames").iterdir())) == 2
    config = tmp_path / "twin.yaml"
    config.write_text("sheet_lenght_mm: {low: 1, high: 2}\n")
    result = run(tmp_path / "home", "simulate", "--out", str(out), "--config", str(config))
    assert result.returncode == 2 and "sheet_lenght_mm" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["ingest", "/nonexistent"],
            "Invalid value for 'paths': path '/nonexistent' does not exist.",
        ),
        (["sql", "select * from nonexist"], "Table with name nonexist does not exist!"),
        (["train", "segmentation", "--data", "/nonexistent"], "dir '/nonexistent' does not exist"),
        (["evaluate", "marking", "--data", "."], "'marking' is not one of 'segmentation', "),
        (["train", "imprint", "--data", ".", "--size", "huge"], "'huge' is not one of 'tiny'"),
        (["simulate", "--out", "x", "--format", "gif"], "'gif' is not one of 'video', 'frames'"),
        (["sql", "select 1", "--format", "parquet"], "--format parquet writes a file: add --out"),
    ],
)
def test_a_user_error_is_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str):
    result = run(tmp_path / "home", *args)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert message in last, result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_sql_renders_a_table_and_streams_csv_json_and_parquet(
    shared_data: Path, tmp_path: Path
) -> None:
    import csv
    import json

    import pyarrow.parquet as pq

    home = tmp_path / "home"
    assert run(home, "import-labels", str(shared_data / "severstal-sample")).returncode == 0
    query = "SELECT image_id, class_name, area, rle FROM labels ORDER BY image_id, label_index"
    with duckdb.connect(str(home / "warehouse" / "steelsight.duckdb"), read_only=True) as con:
        expected = con.sql(query).fetchall()

    table = run(home, "sql", query, "--max-rows", "6")
    assert table.returncode == 0, table.stderr
    assert "image_id" in table.stdout and "rle" in table.stdout
    assert f"{len(expected)} rows" in table.stdout and "6 shown" in table.stdout
    assert max(map(len, table.stdout.splitlines())) <= 200  # fitted to COLUMNS

    csv_out = run(home, "sql", query, "--format", "csv")
    lines = csv_out.stdout.strip().splitlines()
    assert lines[0] == '"image_id","class_name","area","rle"' and len(lines) == len(expected) + 1

    json_out = run(home, "sql", query, "--format", "json")
    rows = [json.loads(line) for line in json_out.stdout.splitlines()]
    assert [tuple(r.values()) for r in rows] == expected

    # maps and lists (sheets.defect_counts, the roll-ups' grades) as JSON text in CSV
    nested = "SELECT class_name, histogram(area > 500) AS sizes, list(area ORDER BY area)[1:2] "
    nested += "AS smallest FROM labels WHERE class_name = 'scratches' GROUP BY ALL"
    csv_nested = run(home, "sql", nested, "--format", "csv")
    assert csv_nested.returncode == 0, csv_nested.stderr
    (header, row) = csv_nested.stdout.strip().splitlines()
    sizes, smallest = next(csv.reader([row]))[1:]
    assert header == '"class_name","sizes","smallest"'
    assert set(json.loads(sizes)) <= {"true", "false"} and len(json.loads(smallest)) == 2

    target = tmp_path / "labels.parquet"
    parquet = run(home, "sql", query, "--format", "parquet", "--out", str(target))
    assert parquet.returncode == 0 and f"{len(expected)} rows written" in parquet.stderr
    assert [tuple(r.values()) for r in pq.read_table(target).to_pylist()] == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "labels.parquet"]


def test_a_copied_home_reads_its_own_rows_with_plain_duckdb(
    shared_data: Path, tmp_path: Path
) -> None:
    """Paths inside the home are stored relative to it; the first steelsight command in a
    copy rebuilds the catalogue's views for the copy's folder."""
    import shutil

    home = tmp_path / "home"
    copy_severstal(shared_data, home / "landing" / "severstal-sample")
    assert run(home, "ingest").returncode == 0
    copied = tmp_path / "elsewhere" / "home"
    shutil.copytree(home, copied)
    shutil.rmtree(home)
    assert run(copied, "warehouse", "info").returncode == 0
    with duckdb.connect(str(copied / "warehouse" / "steelsight.duckdb"), read_only=True) as con:
        (path,) = con.sql("SELECT path FROM archives").fetchall()[0]
        images = con.sql("SELECT path FROM images").fetchall()
        labels = con.sql("SELECT count(*) FROM labels").fetchall()[0][0]
    assert path == str(copied / "archives" / "severstal-sample")
    assert images and all(p.startswith(f"{path}/train_images/") for (p,) in images)
    assert labels > 0
    stored = duckdb.sql(
        f"SELECT path FROM read_parquet('{copied}/warehouse/parquet/archives/*.parquet') "
        "WHERE path IS NOT NULL"
    ).fetchall()
    assert stored == [("archives/severstal-sample",)]


def test_sql_into_a_pipe_that_closes_early_is_not_an_error(tmp_path: Path) -> None:
    env = {**os.environ, "STEELSIGHT_HOME": str(tmp_path / "home")}
    for output_format in ("csv", "json"):
        piped = subprocess.run(
            [
                "bash",
                "-o",
                "pipefail",
                "-c",
                f"'{STEELSIGHT}' sql 'SELECT * FROM range(3000000)' --format {output_format}"
                " | head -1",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert piped.returncode == 0 and piped.stderr == "", piped.stderr
        assert piped.stdout.strip() in ('"range"', '{"range": 0}')
