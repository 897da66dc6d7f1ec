"""The report page without a browser: every observable's numbers in a table, a lone finite value drawn,
an empty run said to be empty, and a finished run read without leaving SQLite's -wal / -shm files."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import shockwatch as sw
from shockwatch.monitor import RunStore
from shockwatch.report.html import write_report

BLUE = np.array([0x1F, 0x77, 0xB4]) / 255  # matplotlib's first line colour


def _figure(page: str, name: str) -> np.ndarray:
    import matplotlib.image

    uri = re.search(rf'<img alt="{re.escape(name)}" src="data:image/png;base64,([^"]+)"', page).group(1)
    return matplotlib.image.imread(io.BytesIO(base64.b64decode(uri)), format="png")[..., :3]


def _line_pixels(image: np.ndarray) -> int:
    return int((np.abs(image - BLUE).max(axis=-1) < 0.1).sum())


def test_a_one_step_run_shows_its_loss(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    monitor = sw.Monitor(model, optimizer, tmp_path / "run", example_input=x, tensorboard=False)
    optimizer.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    monitor.step(loss)
    monitor.close()
    page = write_report(tmp_path / "run").read_text()
    row = re.search(r"<tr><td>loss</td><td>1</td><td>1</td><td>([^<]+)</td>", page)
    assert row is not None and float(row.group(1)) == float(f"{loss.item():.6g}")
    assert _line_pixels(_figure(page, "loss")) > 10          # a marker: a line through one point draws nothing
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["report.html", "run.sqlite"]


def test_a_lone_finite_value_between_nans_is_drawn_and_counted(tmp_path):
    with RunStore(tmp_path / "run.sqlite") as store:
        for step, value in enumerate([float("nan"), 2.5, float("nan"), float("nan")], start=1):
            store.log(step, {"loss": value})
    page = write_report(tmp_path).read_text()
    assert "<tr><td>loss</td><td>4</td><td>1</td><td>2.5</td><td>2.5</td><td>2.5</td></tr>" in page
    assert _line_pixels(_figure(page, "loss")) > 10


def test_an_empty_run_says_so(tmp_path):
    RunStore(tmp_path / "run.sqlite").close()
    assert "no steps logged" in write_report(tmp_path).read_text()


def test_a_live_run_is_read_as_it_is_written(tmp_path):
    """While a writer holds the run, readers take SQLite's write-ahead log into account (not immutable)."""
    store = RunStore(tmp_path / "run.sqlite", pending_rows=1)
    try:
        for step in range(1, 4):
            store.log(step, {"loss": float(step)})
        store.flush()
        with RunStore(tmp_path / "run.sqlite", read_only=True) as reader:
            assert reader.scalars("loss")[1] == [1.0, 2.0, 3.0]
        store.log(4, {"loss": 4.0})
        store.flush()
        with RunStore(tmp_path / "run.sqlite", read_only=True) as reader:
            assert reader.scalars("loss")[1] == [1.0, 2.0, 3.0, 4.0]
    finally:
        store.close()
