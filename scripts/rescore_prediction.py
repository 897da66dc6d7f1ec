"""Re-score the saved section 6 runs (docs/results/falsifiable_prediction_default*.json) with today's
rules (``falsifiable_prediction.rescore``: the shock rule once per entry into the horizon, the
stability crossing, and the approach forecast), without training again; writes
docs/results/falsifiable_prediction_rescored.json.

    .venv/bin/python scripts/rescore_prediction.py
"""

import json
from pathlib import Path

from shockwatch.experiments import falsifiable_prediction as fp
from shockwatch.monitor import score

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"
# (file, testbed, the stability bound of its optimizer): SGD 2; AdamW's 38 on the preconditioned curves.
# The grokking MLP's saved curves are not preconditioned: under Adam they are not the forecast's input.
RUNS = [("falsifiable_prediction_default.json", "catapult", 2.0),
        ("falsifiable_prediction_default.json", "edge-of-stability", 2.0),
        ("falsifiable_prediction_default_transformer_preconditioned.json", "grokking-transformer", 38.0)]

rows = []
for file, name, bound in RUNS:
    outcome = next(o for o in json.loads((RESULTS / file).read_text())["outcomes"] if o["name"] == name)
    for key, steps in fp.rescore(outcome, bound).items():
        scored = score(steps, outcome["events"], horizon=outcome["horizon"])
        rows.append({"testbed": name, "rule": key, "steps": outcome["steps"], "events": outcome["events"],
                     "horizon": outcome["horizon"], "warnings": steps, "leads": scored.lead_times,
                     "false_alarms_per_1000_steps": 1000.0 * scored.false_alarms / outcome["steps"]})
        print(f"{name:22s} {key:20s} warnings {steps[:8]} leads {scored.lead_times} "
              f"false alarms/1000 steps {rows[-1]['false_alarms_per_1000_steps']:.2f}")
(RESULTS / "falsifiable_prediction_rescored.json").write_text(json.dumps(rows, indent=1))
