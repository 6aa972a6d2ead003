"""The selector's command line, run as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import CASES_IN_REPO, REPO_ROOT


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "selector", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )


def test_select_prints_the_variant_and_rationale() -> None:
    out = run(
        "select", "--node-type", "effect", "--operations", "a,b", "--features", "postgres,retries"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("database_heavy (confidence ")
    assert "postgres" in out.stdout


def test_select_json_is_the_full_result() -> None:
    out = run("select", "--node-type", "reducer", "--features", "p95,histogram", "--json")
    data = json.loads(out.stdout)
    assert data["variant"] == "analytics"
    assert {"confidence", "rationale", "matched_features", "alternatives", "warnings"} <= set(data)


def test_batch_reads_and_writes_one_json_object_a_line(tmp_path: Path) -> None:
    out = run("select", "--batch", str(CASES_IN_REPO))
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    expected = [json.loads(line) for line in CASES_IN_REPO.read_text().splitlines() if line.strip()]
    assert [line["id"] for line in lines] == [case["id"] for case in expected]
    assert [line["variant"] for line in lines] == [case["expected"] for case in expected]
    assert set(lines[0]) == {"id", "variant", "confidence", "rationale", "warnings", "kits_added"}
    assert all(line["kits_added"] == [] for line in lines if line["id"] == "s01")


def test_batch_and_json_carry_the_kits_added(tmp_path: Path) -> None:
    cases = tmp_path / "cases.jsonl"
    cases.write_text(
        '{"id": "pair", "node_type": "effect", "features": ["postgres", "kafka_producer"]}\n'
    )
    out = run("select", "--batch", str(cases))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["kits_added"] == ["kafka"]
    out = run("select", "--node-type", "effect", "--features", "postgres,kafka_producer", "--json")
    assert json.loads(out.stdout)["kits_added"] == ["kafka"]


def test_batch_reports_bad_lines_and_keeps_going(tmp_path: Path) -> None:
    cases = tmp_path / "cases.jsonl"
    cases.write_text(
        '{"id": "ok", "node_type": "effect", "operations": [], "features": []}\n'
        '{"id": "bad", "node_type": "gateway", "operations": [], "features": []}\n'
        "not json\n"
    )
    out = run("select", "--batch", str(cases))
    assert out.returncode == 1
    assert [json.loads(line)["id"] for line in out.stdout.splitlines()] == ["ok"]
    assert "cases.jsonl:2: node_type 'gateway'" in out.stderr
    assert "cases.jsonl:3:" in out.stderr


def test_explain_ranks_every_variant_with_reasons() -> None:
    out = run("explain", "--node-type", "orchestrator", "--features", "saga,http,postgres")
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if "│" in line]
    names = [row.split("│")[2].strip() for row in rows]
    ranked = ["workflow", "api_heavy", "minimal", "standard", "production", "kafka_heavy"]
    assert [n for n in names if n in ranked] == ranked
    database_row = rows[names.index("database_heavy")]
    assert "does not support orchestrator nodes" in database_row
    assert "postgres" in database_row
    assert names.index("database_heavy") > names.index("kafka_heavy")


def test_variants_prints_the_compatibility_matrix() -> None:
    out = run("variants", "--vocabulary")
    assert out.returncode == 0, out.stderr
    workflow_row = next(line for line in out.stdout.splitlines() if "workflow " in line)
    assert workflow_row.count("yes") == 1
    assert "circuit_breaker" in out.stdout


def test_select_without_node_type_is_an_error() -> None:
    out = run("select", "--features", "x")
    assert out.returncode == 2
    assert "--node-type is required" in out.stderr


def test_select_names_the_kits_it_adds() -> None:
    out = run("select", "--node-type", "effect", "--features", "postgres,kafka_producer,outbox")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("database_heavy (confidence ")
    assert lines[1] == "kits added: kafka, outbox"
    assert "kafka: 1 tag (kafka_producer) beside database" in out.stdout


def test_explain_shows_each_added_kit_and_why() -> None:
    out = run("explain", "--node-type", "effect", "--features", "postgres,kafka_producer,outbox")
    assert out.returncode == 0, out.stderr
    assert "Kits added beside database_heavy's own" in out.stdout
    rows = {
        cells[1].strip(): cells[2].strip()
        for line in out.stdout.splitlines()
        if len(cells := line.split("│")) == 4
    }
    assert rows == {
        "kafka": "1 tag (kafka_producer) beside database",
        "outbox": "1 tag (outbox) asks for it",
    }
    kafka_row = next(line for line in out.stdout.splitlines() if "│ kafka_heavy" in line)
    assert "adds its kits (kafka) beside database_heavy" in kafka_row


def test_explain_without_additions_has_no_kit_table() -> None:
    out = run("explain", "--node-type", "effect", "--features", "postgres")
    assert out.returncode == 0, out.stderr
    assert "Kits added" not in out.stdout
    assert "kits added" not in out.stdout


def test_explain_says_an_unfit_variants_tags_add_its_kit() -> None:
    out = run("explain", "--node-type", "compute", "--features", "onnx,kafka")
    assert out.returncode == 0, out.stderr
    kafka_row = next(line for line in out.stdout.splitlines() if "│ kafka_heavy" in line)
    assert "does not support compute nodes" in kafka_row
    assert "its tags (kafka) add its kits (kafka)" in kafka_row
    assert "kafka_heavy itself does not support compute nodes" in out.stdout
