"""Headless Chromium for the tests: render a page, read back its DOM, check labels for overlaps, screenshot."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

# Runs in the page once it has loaded: for every plotly figure, the bounding boxes of its text
# labels (annotations, legend entries and titles, figure/axis/colour-bar titles) must not overlap
# each other, and each axis's tick labels must overlap neither each other nor those labels. The
# findings go to <body data-overlaps> (JSON list) and <body data-plots-checked>.
OVERLAP_JS = r"""
window.addEventListener('load', function () {
  setTimeout(function () {
    function boxes(root, sel) {
      return Array.prototype.slice.call(root.querySelectorAll(sel)).filter(function (e) {
        var r = e.getBoundingClientRect(), st = getComputedStyle(e);
        return (e.textContent || '').trim() && r.width > 0 && r.height > 0 &&
          st.visibility !== 'hidden' && st.display !== 'none' && st.opacity !== '0';
      }).map(function (e) { return {r: e.getBoundingClientRect(), t: e.textContent.trim()}; });
    }
    function hit(a, b) {
      var dx = Math.min(a.r.right, b.r.right) - Math.max(a.r.left, b.r.left);
      var dy = Math.min(a.r.bottom, b.r.bottom) - Math.max(a.r.top, b.r.top);
      return dx > 1 && dy > 1;
    }
    var found = [], plots = document.querySelectorAll('.js-plotly-plot');
    plots.forEach(function (plot) {
      var id = plot.id || '?';
      var labels = boxes(plot, 'text.annotation-text, text.legendtext, text.legendtitletext, text.gtitle, ' +
                               '.infolayer text[class$="title"], .cbtitle text');
      for (var i = 0; i < labels.length; i++)
        for (var j = i + 1; j < labels.length; j++)
          if (hit(labels[i], labels[j])) found.push(id + ': "' + labels[i].t + '" / "' + labels[j].t + '"');
      plot.querySelectorAll('.xaxislayer-above, .yaxislayer-above').forEach(function (layer) {
        var ticks = boxes(layer, '.xtick text, .ytick text');
        for (var i = 0; i < ticks.length; i++) {
          for (var j = i + 1; j < ticks.length; j++)
            if (hit(ticks[i], ticks[j])) found.push(id + ': tick "' + ticks[i].t + '" / tick "' + ticks[j].t + '"');
          for (var k = 0; k < labels.length; k++)
            if (hit(ticks[i], labels[k])) found.push(id + ': tick "' + ticks[i].t + '" / "' + labels[k].t + '"');
        }
      });
    });
    document.body.dataset.overlaps = JSON.stringify(found);
    document.body.dataset.plotsChecked = String(plots.length);
  }, 500);
});
"""


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(browser: str, url: str, *args: str, width: int = 1280, height: int = 4000) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", f"--window-size={width},{height}", "--virtual-time-budget=30000",
             *args, url],
            capture_output=True, text=True, timeout=240)


def dump_dom(browser: str, path: Path) -> subprocess.CompletedProcess:
    """Render ``path`` (an HTML file) and return the process whose stdout is the final DOM."""
    return _run(browser, Path(path).resolve().as_uri(), "--dump-dom")


def screenshot(browser: str, path: Path, png: Path, *, width: int = 1280, height: int = 2400) -> Path:
    """A PNG of the top ``width × height`` pixels of the rendered page."""
    _run(browser, Path(path).resolve().as_uri(), f"--screenshot={png}", width=width, height=height)
    return png


def overlaps(browser: str, page: str, tmp: Path) -> tuple[int, list[str], subprocess.CompletedProcess]:
    """Render an HTML string with :data:`OVERLAP_JS` added; returns (plots checked, overlaps, process)."""
    checked = tmp / "overlap_check.html"
    checked.write_text(page.replace("</body>", f"<script>{OVERLAP_JS}</script></body>"))
    res = dump_dom(browser, checked)
    found = re.search(r'data-overlaps="([^"]*)"', res.stdout)
    n = re.search(r'data-plots-checked="(\d+)"', res.stdout)
    if not found or not n:
        raise AssertionError(f"the overlap check did not run: {res.stderr[-2000:]}")
    return int(n.group(1)), json.loads(html.unescape(found.group(1))), res


def png_size(png: Path) -> tuple[int, int]:
    """Width and height of a PNG, from its header."""
    data = Path(png).read_bytes()[:24]
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise AssertionError(f"{png} is not a PNG")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
