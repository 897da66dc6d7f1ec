"""Writing an experiment's result: its data as JSON and its figure as PNG, side by side."""

from __future__ import annotations

import json
from pathlib import Path

from matplotlib.figure import Figure


def write_result(out: Path, stem: str, data: dict, figure: Figure) -> list[Path]:
    """``out/stem.json`` (the data, indented) and ``out/stem.png`` (the figure at 130 dpi); closes the figure."""
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path_json, path_png = out / f"{stem}.json", out / f"{stem}.png"
    path_json.write_text(json.dumps(data, indent=1))
    figure.savefig(path_png, dpi=130)
    plt.close(figure)
    return [path_json, path_png]
