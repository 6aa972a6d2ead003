"""Command line: ``python -m selector select|explain|variants``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table

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
    return parser


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


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    console = Console(soft_wrap=True)
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
