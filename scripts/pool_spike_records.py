"""Score the saved runs of several transformer-spikes experiments together (their records archives,
``transformer_spikes.save_records``), one bed and its control, without training again.

    .venv/bin/python scripts/pool_spike_records.py adam-spike OUT.json ARCHIVE.npz [ARCHIVE.npz ...]

Writes OUT.json: the bed, the archives, the rows at each false-alarm cap, every setting's score and the
verdict (``score_records`` with the default ``Config``); prints the rows at each cap.
"""

import json
import math
import sys
from dataclasses import asdict
from pathlib import Path

from shockwatch.experiments import transformer_spikes as ts


def main(argv: list[str]) -> None:
    if len(argv) < 3:
        raise SystemExit(f"usage: pool_spike_records.py BED OUT.json ARCHIVE.npz [...]; BED one of {', '.join(ts.CONTROLS)}")
    bed, out, archives = argv[0], Path(argv[1]), [Path(a) for a in argv[2:]]
    records = [run for archive in archives for run in ts.load_records(archive, bed=bed)]
    config = ts.Config(beds=(bed,))
    rows, sweeps, verdict = ts.score_records(records, config, bed)
    spikes = sum(len(r.events) for r in records)
    quiet = sum(1 for r in records if not r.events)
    print(f"{bed}: {len(records)} runs, {spikes} events, {quiet} runs without one")
    for row in rows:
        leads = [int(t) for t in row.leads if not math.isnan(t)]
        print(f"  {row.family:18s} {row.signal:8s} cap {row.rate_cap:g}: {row.caught}/{row.events} at "
              f"{row.false_alarm_rate:.2f} / 1000, leads {leads}")
    print(verdict)
    out.write_text(json.dumps({"bed": bed, "archives": [str(a) for a in archives], "runs": len(records),
                               "events": spikes, "quiet_runs": quiet, "rows": [asdict(r) for r in rows],
                               "sweeps": sweeps, "verdict": verdict}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
