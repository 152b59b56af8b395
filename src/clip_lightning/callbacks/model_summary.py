"""ModelSummary: the table of the module's parts printed when fitting starts, without FLOPs."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import RichModelSummary
from lightning.pytorch.utilities.model_summary import get_human_readable_count
from rich import get_console
from rich.table import Table

_DROPPED = ("FLOPs",)


class ModelSummary(RichModelSummary):
    """Lightning's rich model summary without its FLOPs column and total.

    Lightning counts FLOPs only by running a module's ``example_input_array``; a CLIP model
    has none (it takes image and caption batches), so every FLOPs cell read 0.
    """

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
        columns = [(name, values) for name, values in summary_data if name not in _DROPPED]
        table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
        for name, _ in columns:
            table.add_column(name, justify="right" if name.startswith("Params") else "left")
        for row in zip(*(values for _, values in columns), strict=True):
            table.add_row(*row)
        console = get_console()
        console.print(table)
        frozen = total_parameters - trainable_parameters
        console.print(
            f"[bold]Trainable params[/]: {get_human_readable_count(trainable_parameters)}  "
            f"[bold]Non-trainable params[/]: {get_human_readable_count(frozen)}  "
            f"[bold]Total[/]: {get_human_readable_count(total_parameters)} "
            f"({model_size:,.1f} MB)"
        )
        console.print(
            f"[bold]Modules in train mode[/]: {total_training_modes['train']}  "
            f"[bold]in eval mode[/]: {total_training_modes['eval']}"
        )
