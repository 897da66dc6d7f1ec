"""``shockwatch report RUN_DIR``: one self-contained HTML file (plots embedded as PNG data URIs).

One plot per logged observable, in rows: a raw observable on the left beside its symmetry-aware
counterpart on the right (|g| and |P_H g|, |theta| and the path norm, raw and quotient curvature and
shock forecasts, |W_Q||W_K| and the attention logit maximum), then the observables with no raw
counterpart (gradient breaking, charge drift, exact-law error, per kind) on the right and those with
no quotient counterpart on the left, after a table of every observable's last finite value, minimum
and maximum. Events (non-finite steps) and the live warnings are marked on
the loss curve and listed, the warnings in a table of their own (rule, signal, forecast step, lead). Reads the run store only: nothing is recomputed here.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

from ..monitor import RunStore
from ..monitor.warnings import warnings_in

__all__ = ["write_report"]

# (raw, symmetry-aware) pairs drawn side by side; a prefix pair ("qk_weight_norm/", "logit_max/") pairs per layer
_PAIRS = (("grad_norm", "grad_norm/quotient"), ("update_norm", "update_norm/quotient"), ("param_norm", "path_norm"),
          ("curvature/raw_min", "curvature/quotient_min"), ("curvature/raw_max", "curvature/quotient_max"),
          # under Adam: D^1/2 H D^1/2 and its quotient, what the shock forecasts used
          ("curvature/preconditioned_raw_min", "curvature/preconditioned_quotient_min"),
          ("curvature/preconditioned_raw_max", "curvature/preconditioned_quotient_max"),
          ("shock_steps/raw", "shock_steps/quotient"),
          ("attention/qk_weight_max", "attention/qk_product_max"), ("attention/vo_weight_max", "attention/vo_product_max"))
_PREFIX_PAIRS = (("qk_weight_norm/", "logit_max/"),)
_RAW_ONLY = ("loss", "update_ratio")


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


def _summary(values) -> str:
    """Table cells of one observable: steps logged, finite ones, the last finite value, min and max."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return f"<td>{len(values)}</td><td>0</td><td></td><td></td><td></td>"
    return (f"<td>{len(values)}</td><td>{len(finite)}</td><td>{finite[-1]:.6g}</td><td>{min(finite):.6g}</td>"
            f"<td>{max(finite):.6g}</td>")


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write ``run_dir/report.html`` (or ``out``) from ``run_dir/run.sqlite``; returns its path."""
    run_dir = Path(run_dir)
    if run_dir.is_file() and run_dir.name == "run.sqlite":  # the store itself: its folder is the run
        run_dir = run_dir.parent
    database = run_dir / "run.sqlite"
    if not database.exists():
        raise FileNotFoundError(f"{database} not found: RUN_DIR must be a Monitor's log_dir")
    store = RunStore(database, read_only=True)
    try:
        series, events, meta = store.series(), store.events(), store.meta()
        names = list(series)
    finally:
        store.close()
    # "no-..." only explains what is absent; the live warnings are drawn apart from the other events
    raised = warnings_in(events)
    drawn = {(w.step, w.message) for w in raised}
    marked = [step for step, kind, message in events if not kind.startswith("no-") and (step, message) not in drawn]

    def plot(name: str):
        steps, values = series[name]

        def draw(ax) -> None:
            line, = ax.plot(steps, values, lw=1.3)
            # a finite value with no finite neighbour draws no line: a marker (a 1-step run, a point between NaNs)
            finite = [math.isfinite(v) for v in values]
            alone = [i for i, ok in enumerate(finite) if ok and not (i > 0 and finite[i - 1])
                     and not (i + 1 < len(finite) and finite[i + 1])]
            if alone:
                ax.plot([steps[i] for i in alone], [values[i] for i in alone], ls="none", marker="o", ms=3,
                        color=line.get_color())
            if name == "loss":
                for step in marked:
                    ax.axvline(step, color="red", lw=0.8, ls="--")
                for warning in raised:  # quotient-signal warnings in one colour, raw ones in another
                    ax.axvline(warning.step, color="tab:orange" if warning.signal == "quotient" else "tab:purple",
                               lw=0.8, ls=":")
            if name != "loss" and all(v > 0 for v in values if not math.isnan(v)):
                ax.set_yscale("log")
            ax.set_title(name, fontsize=9)
            ax.set_xlabel("step")

        return f'<figure><img alt="{html.escape(name)}" src="{_figure_uri(draw)}"><figcaption>{html.escape(name)}</figcaption></figure>'

    pairs = [(raw, quotient) for raw, quotient in _PAIRS if raw in series or quotient in series]
    for raw_prefix, quotient_prefix in _PREFIX_PAIRS:
        layers = sorted({n.removeprefix(p) for n in names for p in (raw_prefix, quotient_prefix) if n.startswith(p)})
        pairs += [(raw_prefix + layer, quotient_prefix + layer) for layer in layers]
    paired = {n for pair in pairs for n in pair}
    rows_of_plots = [(n, None) for n in _RAW_ONLY if n in series] + pairs
    rows_of_plots += [(None, n) for n in names if n not in paired and n not in _RAW_ONLY]
    grid = "".join(f"<tr><td>{plot(raw) if raw in series else ''}</td><td>{plot(aware) if aware in series else ''}</td></tr>"
                   for raw, aware in rows_of_plots)
    rows = "".join(f"<tr><td>{s}</td><td>{html.escape(k)}</td><td>{html.escape(m)}</td></tr>" for s, k, m in events)
    warning_rows = "".join(
        f"<tr><td>{w.step}</td><td>{html.escape(w.rule)}</td><td>{w.signal}</td><td>{html.escape(w.observable)}</td>"
        f"<td>{w.value:.4g}</td><td>{'' if w.forecast is None else w.forecast}</td>"
        f"<td>{'' if w.lead is None else w.lead}</td></tr>" for w in raised)
    summary_rows = "".join(f"<tr><td>{html.escape(name)}</td>{_summary(series[name][1])}</tr>" for name in names)
    summary = (f"<h2>observables ({len(names)})</h2><table><tr><td>observable</td><td>steps logged</td>"
               f"<td>finite</td><td>last finite</td><td>min</td><td>max</td></tr>{summary_rows}</table>" if names
               else "<h2>observables</h2><p>no steps logged</p>")
    meta_rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in sorted(meta.items()))
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>shockwatch report: {html.escape(run_dir.name)}</title>
<style>body{{font-family:sans-serif;margin:1.5em}} figure{{margin:0.5em 0}}
table{{border-collapse:collapse}} td{{border:1px solid #ccc;padding:2px 6px;font-size:90%}}
table.plots td{{border:none;vertical-align:top}}</style></head>
<body><h1>shockwatch report: {html.escape(run_dir.name)}</h1>
<table>{meta_rows}</table>
{summary}
<table class="plots"><tr><th>raw</th><th>symmetry-aware</th></tr>{grid}</table>
<h2>warnings ({len(raised)})</h2><p>Raised live by the monitor's rules; on the loss curve as dotted lines
(orange: a quotient signal, purple: a raw one; other events red dashed).</p>
<table><tr><td>step</td><td>rule</td><td>signal</td><td>observable</td><td>value</td><td>forecast step</td>
<td>lead</td></tr>{warning_rows}</table>
<h2>events</h2><table><tr><td>step</td><td>kind</td><td>message</td></tr>{rows}</table>
</body></html>
"""
    path = Path(out) if out is not None else run_dir / "report.html"
    path.write_text(page)
    return path
