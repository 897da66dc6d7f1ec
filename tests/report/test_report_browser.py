"""The HTML report opened in headless Chromium: every plot decodes and shows, the events are listed.

A copy of the report gets a small script that, on ``load``, writes per-image results (complete,
natural size, distinct colours and transparent pixels once drawn on a canvas) and the page's rendered text
into a ``<pre>`` as JSON; Chromium's ``--dump-dom`` gives that back, and ``--screenshot`` the page as
it was painted. The expected plots come from what was logged and the report's layout (one figure per
observable, raw observables under the "raw" heading, symmetry-aware ones under "symmetry-aware"),
not from the HTML.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from shockwatch.monitor import RunStore
from shockwatch.report.html import write_report

STEPS = 300
RAW = ("loss", "grad_norm", "curvature/raw_min")
SYMMETRIC = ("gradient_breaking/rescale", "charge_drift/rescale", "curvature/quotient_min")
EVENTS = [(0, "no-symmetries", "raw observables only: <none> given"),
          (120, "nonfinite", "loss nan, |g|^2 inf"),
          (240, "warning", "charge_drift/rescale > 1e-2 & rising")]
CHROMIUM_TIMEOUT_S = 60
MIN_COLOURS_PER_PLOT = 8  # a blank or undecoded plot has 0 or 1; a drawn one has dozens (anti-aliasing)

# Synchronous on purpose: --dump-dom does not wait for promises (img.decode() raced the dump).
# drawImage decodes the image; the report's figures are opaque (white background), so pixels left
# transparent mean part of the PNG did not decode (a truncated data URI draws only its first rows).
_PROBE = """<script>
function column(img) {  // the heading over the image: its table column's <th>, or its <section>'s <h2>
  var cell = img.closest("td"), table = cell && cell.closest("table");
  if (table) { var head = table.querySelectorAll("th")[cell.cellIndex]; return head ? head.textContent : null; }
  var section = img.closest("section"), heading = section && section.querySelector("h2");
  return heading ? heading.textContent : null;
}
window.addEventListener("load", function () {
  var results = Array.prototype.map.call(document.images, function (img) {
    var colours = -1, transparent = -1;
    try {
      var canvas = document.createElement("canvas");
      canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
      colours = 0; transparent = 0;
      if (canvas.width > 0 && canvas.height > 0) {
        var context = canvas.getContext("2d");
        context.drawImage(img, 0, 0);
        var data = context.getImageData(0, 0, canvas.width, canvas.height).data;
        var words = new Uint32Array(data.buffer), seen = new Set();
        for (var p = 0; p < words.length; p++) {
          seen.add(words[p]);
          if (data[4 * p + 3] === 0) transparent += 1;
        }
        colours = seen.size;
      }
    } catch (error) { colours = -1; transparent = -1; }
    return {alt: img.alt, complete: img.complete, naturalWidth: img.naturalWidth,
            naturalHeight: img.naturalHeight, colours: colours, transparent: transparent,
            column: column(img)};
  });
  var out = document.createElement("pre");
  out.id = "probe-result";
  out.textContent = JSON.stringify({images: results, text: document.body.innerText});
  document.body.appendChild(out);
});
</script>"""

_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync",
          "--disable-dev-shm-usage", "--hide-scrollbars", "--virtual-time-budget=5000")


def _build_run(run_dir: Path) -> None:
    """A small run straight into the store: the raw and symmetry-aware observables, a NaN step, events."""
    rng = np.random.default_rng(0)
    with RunStore(run_dir / "run.sqlite") as store:
        store.set_meta({"model": "MLP", "optimizer": "SGD", "law": "sgd"})
        for step in range(1, STEPS + 1):
            values = {"loss": 2.0 * math.exp(-step / 80) + 0.05 * rng.random(),
                      "grad_norm": 1.0 + 0.3 * math.sin(step / 10) + 0.1 * rng.random(),
                      "gradient_breaking/rescale": 1e-6 * (1 + rng.random()),
                      "charge_drift/rescale": 1e-4 * step * (1 + 0.1 * rng.random())}
            if step == EVENTS[1][0]:  # what the Monitor logs on a non-finite step: the loss only
                values = {"loss": math.nan}
            if step % 25 == 0:
                values["curvature/raw_min"] = -0.5 + 0.3 * math.cos(step / 40)
                values["curvature/quotient_min"] = 0.01 + 1e-3 * step
            store.log(step, values)
        for step, kind, message in EVENTS:
            store.event(step, kind, message)


def _expected_plots() -> list[tuple[str, str]]:
    """(column, observable) per figure, sorted, from the report's documented layout: one plot per
    logged observable, raw ones under "raw", symmetry-aware ones under "symmetry-aware"."""
    return sorted([("raw", name) for name in RAW] + [("symmetry-aware", name) for name in SYMMETRIC])


def _with_probe(report: Path, dest: Path, extra: str = "") -> Path:
    page = report.read_text()
    assert page.count("</body>") == 1
    dest.write_text(page.replace("</body>", extra + _PROBE + "</body>"))
    return dest


def _chromium(chromium: str, work: Path, *args: str) -> subprocess.CompletedProcess:
    command = [chromium, *_FLAGS, f"--user-data-dir={work / 'profile'}", "--window-size=1200,3000", *args]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S)
    assert done.returncode == 0, f"chromium exited {done.returncode}: {done.stderr[-2000:]}"
    return done


def _render(chromium: str, page: Path, work: Path) -> dict:
    """Open ``page`` (a probed copy) in headless Chromium; returns the probe's JSON."""
    done = _chromium(chromium, work, "--dump-dom", page.resolve().as_uri())
    found = re.search(r'<pre id="probe-result">(.*?)</pre>', done.stdout, re.DOTALL)
    assert found, f"the probe wrote no result (load never fired?); stderr: {done.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


def _broken(images: list[dict]) -> list[str]:
    """The images that did not render: not loaded, no size, blank, or partly undecoded (transparent)."""
    return [f"{img['alt']}: {img}" for img in images
            if not (img["complete"] and img["naturalWidth"] > 0 and img["naturalHeight"] > 0
                    and img["colours"] >= MIN_COLOURS_PER_PLOT and img["transparent"] == 0)]


def _distinct_colours(png: Path) -> tuple[int, float]:
    """(distinct RGB colours, fraction of pixels that are not white) of a PNG file."""
    import matplotlib.image

    pixels = np.asarray(matplotlib.image.imread(png))
    if pixels.dtype != np.uint8:
        pixels = np.round(pixels * 255).astype(np.uint8)
    rgb = pixels[..., :3].reshape(-1, 3).astype(np.uint32)
    packed = (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]
    return len(np.unique(packed)), float(np.mean(packed != 0xFFFFFF))


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("run")
    _build_run(run_dir)
    return write_report(run_dir)


@pytest.fixture(scope="module")
def rendered(chromium, report, tmp_path_factory):
    work = tmp_path_factory.mktemp("chromium")
    result = _render(chromium, _with_probe(report, work / "probed.html"), work)
    # a separate run: with --screenshot, Chromium does not also --dump-dom; the report as it is
    screenshot = work / "report.png"
    _chromium(chromium, work, f"--screenshot={screenshot}", report.resolve().as_uri())
    return result, screenshot


def test_every_plot_rendered(rendered):
    result, _ = rendered
    images = result["images"]
    assert len(images) == len(_expected_plots())
    assert sorted((img["column"], img["alt"]) for img in images) == _expected_plots()
    assert _broken(images) == []
    # the report's figures: figsize (5.2, 3.0) at dpi 100
    assert {(img["naturalWidth"], img["naturalHeight"]) for img in images} == {(520, 300)}


def test_events_listed(rendered):
    result, _ = rendered
    rows = [re.split(r"\t+", line.strip()) for line in result["text"].splitlines()]
    for step, kind, message in EVENTS:
        assert [str(step), kind, message] in rows, f"event {(step, kind, message)} not in the rendered page"


def test_screenshot_not_blank(rendered):
    _, screenshot = rendered
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", "chromium wrote no PNG screenshot"
    colours, inked = _distinct_colours(screenshot)
    assert colours > 100, f"screenshot has only {colours} distinct colours"
    assert inked > 0.02, f"screenshot is {1 - inked:.1%} white"


def test_checker_flags_broken_images(chromium, report, tmp_path):
    """Negative control: injected images with a corrupted and a truncated data URI are reported broken."""
    uri = re.search(r'src="(data:image/png;base64,[^"]+)"', report.read_text()).group(1)
    png = base64.b64decode(uri.split(",", 1)[1])
    truncated = "data:image/png;base64," + base64.b64encode(png[:len(png) // 3]).decode()
    garbage = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4).decode()
    extra = (f'<img alt="injected-garbage" src="{garbage}">'
             f'<img alt="injected-truncated" src="{truncated}">'
             f'<img alt="injected-good" src="{uri}">')
    result = _render(chromium, _with_probe(report, tmp_path / "broken.html", extra), tmp_path)
    by_alt = {img["alt"]: img for img in result["images"]}
    assert len(result["images"]) == len(_expected_plots()) + 3
    flagged = {entry.split(":", 1)[0] for entry in _broken(result["images"])}
    assert "injected-garbage" in flagged
    assert "injected-good" not in flagged and not flagged & {name for _, name in _expected_plots()}
    assert by_alt["injected-garbage"]["naturalWidth"] == 0
    # a PNG cut short has its full size (from the header) but decodes only its first rows
    assert by_alt["injected-truncated"]["naturalWidth"] > 0 and by_alt["injected-truncated"]["transparent"] > 0
    assert "injected-truncated" in flagged
