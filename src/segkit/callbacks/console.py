"""What a run prints on the console: Lightning's progress bar and model summary, less what tells a user nothing.

- ``ProgressBar``: Lightning's rich progress bar without ``v_num``, the logger's version (under W&B a random run
  id such as ``p700``), which is no metric.
- ``ModelSummary``: Lightning's model summary without its FLOPs column when it has none to show. Lightning counts
  FLOPs only by running the module's ``example_input_array``, which segkit's module leaves unset (the input size is
  the data's), so every row and the total would read 0. A table of real FLOPs per model is ``src/benchmark.py``'s.
"""

from __future__ import annotations

import logging
from typing import Any

from pytorch_lightning.callbacks import ModelSummary as LightningModelSummary
from pytorch_lightning.callbacks import RichModelSummary, RichProgressBar
from pytorch_lightning.utilities.model_summary import get_formatted_model_size, get_human_readable_count

log = logging.getLogger("pytorch_lightning.callbacks.model_summary")


class ProgressBar(RichProgressBar):
    """``RichProgressBar`` showing the logged ``prog_bar`` metrics only."""

    def get_metrics(self, trainer, pl_module) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items


class ModelSummary(LightningModelSummary):
    """Lightning's summary (rich when rich is installed), the FLOPs column and total left out when they are 0."""

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        args = (summary_data, total_parameters, trainable_parameters, model_size, total_training_modes, total_flops)
        if total_flops:
            try:
                RichModelSummary.summarize(*args, **summarize_kwargs)
            except ImportError:
                LightningModelSummary.summarize(*args, **summarize_kwargs)
            return
        columns = [column for column in summary_data if column[0] != "FLOPs"]
        totals = [
            ("Trainable params", get_human_readable_count(int(trainable_parameters))),
            ("Non-trainable params", get_human_readable_count(int(total_parameters - trainable_parameters))),
            ("Total params", get_human_readable_count(int(total_parameters))),
            ("Total estimated model params size (MB)", get_formatted_model_size(model_size)),
            ("Modules in train mode", str(total_training_modes["train"])),
            ("Modules in eval mode", str(total_training_modes["eval"])),
        ]
        try:
            _print_rich(columns, totals)
        except ImportError:  # rich is a dependency; the summary must show regardless
            log.info("\n" + _plain(columns, totals))


LEFT = (" ", "Name", "Type", "Mode")


def _print_rich(columns: list[tuple[str, list[str]]], totals: list[tuple[str, str]]) -> None:
    from rich import get_console
    from rich.table import Table

    table = Table(header_style="bold magenta")
    for name, _ in columns:  # the first is Lightning's unnamed row-number column
        table.add_column(name, style="dim" if not name.strip() else None, justify="left" if name in LEFT else "right")
    for row in zip(*(values for _, values in columns), strict=True):
        table.add_row(*row)
    console = get_console()
    console.print(table)
    grid = Table.grid(expand=True)
    grid.add_column()
    for label, value in totals:
        grid.add_row(f"[bold]{label}[/]: {value}")
    console.print(grid)


def _plain(columns: list[tuple[str, list[str]]], totals: list[tuple[str, str]]) -> str:
    widths = [max([len(name), *(len(str(v)) for v in values)]) for name, values in columns]
    lines = [" | ".join(name.ljust(w) for (name, _), w in zip(columns, widths, strict=True))]
    for row in zip(*(values for _, values in columns), strict=True):
        lines.append(" | ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)))
    return "\n".join(lines + [f"{value:<10} {label}" for label, value in totals])
