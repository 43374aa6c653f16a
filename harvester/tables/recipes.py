"""Answers the README's recipes give, computed with pyarrow alone (what ``demo`` prints)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc
import pyarrow.dataset as ds

from harvester.tables.build import TABLES_DIR

MonthRow = tuple[str, int, float]  # (YYYY-MM in local time, workouts, total output in kJ)


def monthly_output(root: Path, months: int = 12) -> list[MonthRow]:
    """Workouts and total output (kJ) per month of the workouts' local dates, newest first.

    The same numbers as the README's "Workouts and output per month" DuckDB recipe.
    """
    table = ds.dataset(Path(root) / TABLES_DIR / "workouts", format="parquet",
                       partitioning="hive").to_table(columns=["local_date", "total_output"])
    table = table.append_column("local_month", pc.strftime(table["local_date"], format="%Y-%m"))
    grouped = table.group_by("local_month").aggregate(
        [([], "count_all"), ("total_output", "sum")]).sort_by(
        [("local_month", "descending")])
    return [(str(m), int(n or 0), float(kj or 0.0)) for m, n, kj in zip(
        grouped["local_month"].to_pylist(), grouped["count_all"].to_pylist(),
        grouped["total_output_sum"].to_pylist(), strict=True)][:months]


def format_monthly(rows: list[MonthRow]) -> str:
    lines = ["month    workouts  output_kj"]
    lines += [f"{month}  {count:>8}  {kj:>9.0f}" for month, count, kj in rows]
    return "\n".join(lines)
