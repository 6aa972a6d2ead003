"""Command line: ``python -m selector select|explain|variants|fleet``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table

from selector.fleet import FleetReport, scan
from selector.models import NodeType, RankedVariant, SelectionResult
from selector.policy import explain, explain_kits, select
from selector.registry import default_registry


def _csv(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _add_request_arguments(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument(
        "--node-type",
        choices=[t.value for t in NodeType],
        required=required,
        help="the ONEX node type",
    )
    parser.add_argument("--operations", type=_csv, default=[], help="comma-separated names")
    parser.add_argument("--features", type=_csv, default=[], help="comma-separated feature tags")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m selector", description="Recommend an ONEX node variant."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    choose = commands.add_parser("select", help="recommend a variant")
    _add_request_arguments(choose, required=False)
    choose.add_argument("--json", action="store_true", help="print the full result as JSON")
    choose.add_argument(
        "--batch",
        type=Path,
        metavar="CASES.jsonl",
        help=(
            "one JSON object a line (id, node_type, operations, features); prints one a line "
            "(id, variant, confidence, rationale, warnings, kits_added)"
        ),
    )

    explain = commands.add_parser("explain", help="show every compatible variant, ranked")
    _add_request_arguments(explain, required=True)

    variants = commands.add_parser("variants", help="print the compatibility matrix")
    variants.add_argument("--vocabulary", action="store_true", help="also list known tags")

    fleet = commands.add_parser(
        "fleet",
        help="report variant usage over a folder of rendered nodes",
        description=(
            "Read every .copier-answers.yml (and the packaged src/<pkg>/contract.yaml of a node "
            "without one) under the folders, skipping .git, .venv and node_modules, and report "
            "nodes per variant and node type, template versions and how many releases each "
            "node is behind, mixin and kit changes against each variant's own, and the nodes "
            "whose variant differs from today's recommendation. Unreadable or foreign files "
            "are reported with a reason; the exit code is 0 whenever the scan ran."
        ),
        epilog=FLEET_JSON_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fleet.add_argument("folders", nargs="+", type=Path, metavar="DIR", help="folders to scan")
    fleet.add_argument("--json", action="store_true", help="print the report as JSON (below)")
    fleet.add_argument(
        "--template",
        type=Path,
        metavar="DIR",
        help="git repository of the template whose tags are the releases "
        "(default: the repository the selector runs from)",
    )
    return parser


FLEET_JSON_HELP = """\
--json prints one object with these keys:
  template           {path, releases (oldest first, or null when unknown), newest_release}
  nodes              one object per node: path, source (answers|contract), node_name,
                     node_type, variant, recommended, override, features, operations,
                     template_version, release, behind (releases newer, or null when
                     unknown), mixins_added, mixins_removed, kits_added, kits_removed, notes
  by_variant         {variant: {node_type: count}}
  template_versions  {template_version: count}
  changes            {variant: {mixins_added|mixins_removed|kits_added|kits_removed:
                     {name: count}}}
  overrides          [{path, node_name, node_type, variant, recommended, features}]
  problems           [{path, reason}] files that are no readable ONEX node
"""


def _batch(path: Path, out: TextIO, err: TextIO) -> int:
    failures = 0
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                case: dict[str, Any] = json.loads(line)
                result = select(
                    case["node_type"], case.get("operations", []), case.get("features", [])
                )
            except (ValueError, KeyError, TypeError) as exc:
                failures += 1
                print(f"{path}:{number}: {exc}", file=err)
                continue
            record = {
                "id": case.get("id"),
                "variant": result.variant,
                "confidence": result.confidence,
                "rationale": result.rationale,
                "warnings": list(result.warnings),
                "kits_added": result.kits_added,
            }
            print(json.dumps(record), file=out)
    return 1 if failures else 0


def _print_result(result: SelectionResult, console: Console) -> None:
    console.print(f"[bold]{result.variant}[/bold] (confidence {result.confidence:.2f})")
    if result.kits_added:
        console.print(f"kits added: {', '.join(result.kits_added)}", highlight=False)
    console.print(result.rationale, highlight=False)
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)


def _explain(
    result: SelectionResult,
    rows: list[tuple[RankedVariant, str]],
    kits: list[tuple[str, str]],
    console: Console,
) -> None:
    kind = result.node_type.value
    article = "an" if kind[0] in "aeiou" else "a"
    table = Table(title=f"Variants for {article} {kind} node", show_lines=False)
    table.add_column("#", justify="right")
    table.add_column("variant")
    table.add_column("score", justify="right")
    table.add_column("reason")
    compatible = {alt.variant for alt in result.alternatives}
    for rank, (alt, reason) in enumerate(rows, start=1):
        if alt.variant not in compatible:
            table.add_row("-", alt.variant, "-", reason, style="dim")
            continue
        style = "bold green" if alt.variant == result.variant else ""
        table.add_row(str(rank), alt.variant, f"{alt.score:.2f}", reason, style=style)
    console.print(table)
    if kits:
        added = Table(title=f"Kits added beside {result.variant}'s own")
        added.add_column("kit")
        added.add_column("why")
        for kit, why in kits:
            added.add_row(kit, why.removeprefix(f"{kit}: "))
        console.print(added)
    _print_result(result, console)


def _variants(console: Console, *, vocabulary: bool) -> None:
    registry = default_registry()
    table = Table(title="Compatibility matrix")
    table.add_column("variant")
    for node_type in NodeType:
        table.add_column(node_type.value, justify="center")
    table.add_column("complexity", justify="center")
    for name, spec in registry.variants.items():
        marks = ["yes" if spec.supports(t) else "-" for t in NodeType]
        table.add_row(name, *marks, str(spec.complexity))
    console.print(table)
    if vocabulary:
        for category, entries in registry.vocabulary().items():
            console.print(f"[bold]{category}[/bold]: {', '.join(entries)}", highlight=False)


def _counted(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} x{count}" if count > 1 else name for name, count in counts.items())


def _fleet(report: FleetReport, console: Console) -> None:
    node_types = [t.value for t in NodeType]
    count = len(report.nodes)
    usage = Table(title=f"Nodes per variant ({count} node{'' if count == 1 else 's'})")
    usage.add_column("variant")
    for kind in node_types:
        usage.add_column(kind, justify="right")
    usage.add_column("total", justify="right")
    for variant, counts in report.by_variant().items():
        cells = [str(counts.get(kind, 0) or "-") for kind in node_types]
        usage.add_row(variant, *cells, str(sum(counts.values())))
    console.print(usage)

    newest = report.template.newest or "unknown"
    versions = Table(title=f"Template versions (newest release: {newest})")
    versions.add_column("node", overflow="fold")
    versions.add_column("variant")
    versions.add_column("version")
    versions.add_column("releases behind", justify="right")
    for node in report.nodes:
        version = node.version.version or "unversioned"
        if not node.version.release:
            version += " (not a release)"
        behind = "unknown" if node.version.behind is None else str(node.version.behind)
        versions.add_row(node.path, node.variant, version, behind)
    console.print(versions)

    changes = Table(title="Changes against each variant's own mixins and kits")
    changes.add_column("variant")
    for column in ("mixins added", "mixins removed", "kits added", "kits removed"):
        changes.add_column(column)
    for variant, changed in report.changes().items():
        if any(changed.values()):
            changes.add_row(variant, *(_counted(counts) or "-" for counts in changed.values()))
    if changes.row_count:
        console.print(changes)
    else:
        console.print("Every node keeps its variant's own mixins and kits.")

    overrides = Table(title="Variants chosen against today's recommendation")
    for column in ("node", "type", "chosen", "recommended", "tags"):
        overrides.add_column(column, overflow="fold")
    for node in report.overrides():
        overrides.add_row(
            node.path,
            node.node_type,
            node.variant,
            node.recommended or "-",
            ", ".join(node.features) or "-",
        )
    if overrides.row_count:
        console.print(overrides)
    else:
        console.print("Every node has the variant the selector recommends today.")

    for node in report.nodes:
        for note in node.notes:
            console.print(f"[yellow]note:[/yellow] {node.path}: {note}", highlight=False)
    if report.problems:
        problems = Table(title="Files read as no ONEX node")
        problems.add_column("file", overflow="fold")
        problems.add_column("reason")
        for problem in report.problems:
            problems.add_row(problem.path, problem.reason)
        console.print(problems)


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    console = Console(soft_wrap=True)
    if args.command == "fleet":
        given = [*args.folders, *([args.template] if args.template else [])]
        missing = [str(folder) for folder in given if not folder.is_dir()]
        if missing:
            print(f"error: no such folder: {', '.join(missing)}", file=sys.stderr)
            return 2
        report = scan(args.folders, template=args.template)
        if args.json:
            print(json.dumps(report.as_json(), indent=2))
        else:
            _fleet(report, console)
        return 0
    if args.command == "variants":
        _variants(console, vocabulary=args.vocabulary)
        return 0
    if args.command == "select" and args.batch is not None:
        return _batch(args.batch, sys.stdout, sys.stderr)
    if args.node_type is None:
        print("error: --node-type is required unless --batch is given", file=sys.stderr)
        return 2
    if args.command == "explain":
        result, rows = explain(args.node_type, args.operations, args.features)
        kits = explain_kits(args.node_type, args.operations, args.features)
        _explain(result, rows, kits, console)
        return 0
    result = select(args.node_type, args.operations, args.features)
    if args.json:
        print(result.model_dump_json(indent=2))
    else:
        _print_result(result, console)
    return 0
