"""Where the monitor's values go besides the run store: TensorBoard event files and MLflow.

A sink is anything with ``log(step, values)``, ``event(step, kind, message)`` and ``close()``. The
run store (SQLite) stays the record a report is built from and the one that survives a killed
process step by step; sinks are views for the tools users already have open. Each sink buffers and
writes every ``flush_every`` steps and at ``close()``: a killed process can lose up to that many steps
in a sink, never in the store.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

__all__ = ["MLflowSink", "Sink", "TensorBoardSink"]


class Sink(Protocol):
    def log(self, step: int, values: Mapping[str, float]) -> None: ...

    def event(self, step: int, kind: str, message: str) -> None: ...

    def close(self) -> None: ...


class TensorBoardSink:
    """Scalars and events (as text) in TensorBoard event files under ``log_dir``.

    One event record per step holds every scalar of the step (a Summary with one value per name,
    what ``SummaryWriter.add_scalar`` writes one record each for): the protobuf work per step is one
    record, not one per observable."""

    def __init__(self, log_dir: str | Path, *, flush_every: int = 100) -> None:
        try:
            from tensorboard.compat.proto.summary_pb2 import Summary
            from torch.utils.tensorboard.summary import text
            from torch.utils.tensorboard.writer import FileWriter
        except ImportError as error:  # torch's writer needs the tensorboard package
            raise ImportError(f"TensorBoardSink needs the tensorboard package ({error}): pip install tensorboard") from None
        if flush_every < 1:
            raise ValueError(f"flush_every must be >= 1, got {flush_every}")
        self.log_dir = Path(log_dir)
        self._summary, self._text = Summary, text
        # max_queue large: the writer's own thread writes in batches; flush() is ours
        self._writer = FileWriter(str(self.log_dir), max_queue=10 * flush_every, flush_secs=3600)
        self._flush_every, self._since_flush = flush_every, 0

    def log(self, step: int, values: Mapping[str, float]) -> None:
        value = self._summary.Value
        self._writer.add_summary(self._summary(value=[value(tag=name, simple_value=float(v)) for name, v in values.items()]),
                                 step)
        self._since_flush += 1
        if self._since_flush >= self._flush_every:
            self._writer.flush()
            self._since_flush = 0

    def event(self, step: int, kind: str, message: str) -> None:
        self._writer.add_summary(self._text(f"events/{kind}", message), step)

    def close(self) -> None:
        self._writer.close()


class MLflowSink:
    """Scalars (as metrics) and events (as a text artifact per event kind) in an MLflow run.

    Uses the active run, or starts one (``run_name``, at ``tracking_uri`` if given) and ends it at
    ``close()``. Metrics are sent with one ``log_batch`` call per ``flush_every`` steps: one call per
    step would make the tracking server the slowest part of training.
    """

    def __init__(self, *, run_name: str | None = None, tracking_uri: str | None = None, flush_every: int = 50) -> None:
        try:
            import mlflow
            from mlflow.entities import Metric
        except ImportError:
            raise ImportError("MLflowSink needs mlflow: pip install mlflow (or mlflow-skinny)") from None
        if flush_every < 1:
            raise ValueError(f"flush_every must be >= 1, got {flush_every}")
        self._mlflow, self._metric = mlflow, Metric
        if tracking_uri is not None:
            mlflow.set_tracking_uri(tracking_uri)
        self._owns_run = mlflow.active_run() is None
        run = mlflow.start_run(run_name=run_name) if self._owns_run else mlflow.active_run()
        self.run_id = run.info.run_id
        self._client = mlflow.MlflowClient()
        self._pending: list = []
        self._events: dict[str, list[str]] = {}
        self._flush_every, self._since_flush = flush_every, 0

    def log(self, step: int, values: Mapping[str, float]) -> None:
        now = int(time.time() * 1000)
        # MLflow metric names allow "/", and NaN is stored as NaN
        self._pending += [self._metric(name, float(value), now, int(step)) for name, value in values.items()]
        self._since_flush += 1
        if self._since_flush >= self._flush_every:
            self.flush()

    def event(self, step: int, kind: str, message: str) -> None:
        self._events.setdefault(kind, []).append(f"{step}\t{message}")

    def flush(self) -> None:
        # log_batch takes at most 1000 metrics per call
        for start in range(0, len(self._pending), 1000):
            self._client.log_batch(self.run_id, metrics=self._pending[start:start + 1000])
        self._pending, self._since_flush = [], 0

    def close(self) -> None:
        self.flush()
        for kind, lines in self._events.items():
            self._client.log_text(self.run_id, "\n".join(lines) + "\n", f"events/{kind}.tsv")
        if self._owns_run:
            self._mlflow.end_run()
