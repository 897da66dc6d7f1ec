"""``shockwatch report RUN_DIR``: one self-contained HTML file (plots embedded as PNG data URIs).

Raw observables (loss, |g|) on the left, the symmetry-aware ones (gradient breaking, charge drift,
exact-law error, per kind) on the right; events (non-finite steps, warnings) are marked on the loss
curve and listed. Reads the run store only: nothing is recomputed here.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

from ..monitor import RunStore

__all__ = ["write_report"]

_RAW = ("loss", "grad_norm")


def _figure_uri(draw) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.0), layout="constrained")
    draw(ax)
    ax.grid(alpha=0.3)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write ``run_dir/report.html`` (or ``out``) from ``run_dir/run.sqlite``; returns its path."""
    run_dir = Path(run_dir)
    database = run_dir / "run.sqlite"
    if not database.exists():
        raise FileNotFoundError(f"{database} not found: RUN_DIR must be a Monitor's log_dir")
    store = RunStore(database, resume=True)
    try:
        names, events, meta = store.names(), store.events(), store.meta()
        series = {name: store.scalars(name) for name in names}
    finally:
        store.close()
    marked = [step for step, kind, _ in events]

    def plot(name: str):
        steps, values = series[name]

        def draw(ax) -> None:
            ax.plot(steps, values, lw=1.3)
            if name == "loss":
                for step in marked:
                    ax.axvline(step, color="red", lw=0.8, ls="--")
            if name != "loss" and all(v > 0 for v in values if not math.isnan(v)):
                ax.set_yscale("log")
            ax.set_title(name, fontsize=9)
            ax.set_xlabel("step")

        return f'<figure><img alt="{html.escape(name)}" src="{_figure_uri(draw)}"><figcaption>{html.escape(name)}</figcaption></figure>'

    raw = [plot(n) for n in _RAW if n in series]
    symmetric = [plot(n) for n in names if n not in _RAW]
    rows = "".join(f"<tr><td>{s}</td><td>{html.escape(k)}</td><td>{html.escape(m)}</td></tr>" for s, k, m in events)
    meta_rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in sorted(meta.items()))
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>shockwatch report: {html.escape(run_dir.name)}</title>
<style>body{{font-family:sans-serif;margin:1.5em}} .cols{{display:flex;gap:2em}} figure{{margin:0.5em 0}}
table{{border-collapse:collapse}} td{{border:1px solid #ccc;padding:2px 6px;font-size:90%}}</style></head>
<body><h1>shockwatch report: {html.escape(run_dir.name)}</h1>
<table>{meta_rows}</table>
<div class="cols"><section><h2>raw</h2>{''.join(raw)}</section>
<section><h2>symmetry-aware</h2>{''.join(symmetric) or '<p>none logged (see events)</p>'}</section></div>
<h2>events</h2><table><tr><td>step</td><td>kind</td><td>message</td></tr>{rows}</table>
</body></html>
"""
    path = Path(out) if out is not None else run_dir / "report.html"
    path.write_text(page)
    return path
