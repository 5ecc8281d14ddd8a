"""How every benchmark figure is written: the command that made it printed along its foot."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def save_with_command(
    fig: Any, path: Path, command: str, *, fontsize: float = 7, dpi: int = 110, footer: float = 0.04
) -> None:
    """Write `fig` to `path` with `command` in monospace along the bottom `footer` share of the
    figure (kept clear of the axes), then close it."""
    import matplotlib.pyplot as plt

    fig.text(0.01, 0.01, command, fontsize=fontsize, family="monospace")
    fig.tight_layout(rect=(0, footer, 1, 1))
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
