"""Headless Chromium for the tests: render a page, read back its DOM, check labels for overlaps, what the
page logs to the console, whether anything is wider than the page's column, and the text a reader sees."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
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


# Runs in the page once it has loaded: the page's width against the viewport's, and every figure, table
# or image whose right edge passes the right edge of the content column (<main> less its padding; the
# body where there is no <main>), unless it sits in a box that scrolls sideways within the column. Results go to <body data-page-width data-viewport-width data-wide>.
WIDTH_JS = r"""
window.addEventListener('load', function () {
  setTimeout(function () {
    var b = document.body, main = document.querySelector('main') || b, st = getComputedStyle(main);
    var limit = main.getBoundingClientRect().right - parseFloat(st.paddingRight || '0') + 1;
    var wide = [];
    function inScrollBox(e) {  // a wide table inside a box that scrolls sideways does not widen the page
      for (var a = e.parentElement; a && a !== main; a = a.parentElement) {
        var o = getComputedStyle(a).overflowX;
        if ((o === 'auto' || o === 'scroll') && a.getBoundingClientRect().right <= limit) return true;
      }
      return false;
    }
    document.querySelectorAll('.js-plotly-plot, table, img').forEach(function (e) {
      var r = e.getBoundingClientRect();
      if (r.width > 0 && r.right > limit && !inScrollBox(e))
        wide.push((e.id || e.tagName.toLowerCase()) + ': ' + Math.round(r.width) + ' px wide, right edge at ' +
                  Math.round(r.right) + ' > ' + Math.round(limit));
    });
    b.dataset.pageWidth = String(document.documentElement.scrollWidth);
    b.dataset.viewportWidth = String(window.innerWidth);
    b.dataset.wide = JSON.stringify(wide);
  }, 700);
});
"""

# What the console shows, from Chromium's log on stderr (--enable-logging=stderr).
_CONSOLE = re.compile(r':CONSOLE(?:\(\d+\)|:\d+)?\] "(.*)", source: ')


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
             "--enable-logging=stderr", "--v=0",
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
    checked = inspect_page(browser, page, tmp)
    return checked.n_plots, checked.overlaps, checked.process


@dataclass
class PageCheck:
    """What a reader of a rendered page meets (see :func:`inspect_page`)."""

    n_plots: int                 # plotly figures drawn
    overlaps: list[str]          # text labels of a figure that overprint each other
    console: list[str]           # messages logged to the console (plotly's warnings, script errors)
    js_errors: int               # uncaught script errors counted by the report's hook (-1: no hook)
    page_width: int              # document width, px
    viewport_width: int          # window width, px
    wide: list[str]              # figures, tables or images wider than the content column
    text: str                    # the visible text (DOM text outside <script>/<style>, SVG labels included)
    process: subprocess.CompletedProcess

    def problems(self) -> list[str]:
        """Everything a reader should never see: console messages, overprinted labels, a page wider
        than the window or a figure wider than its column, literal escapes (``\\u2265``), ``null`` /
        ``None`` / ``NaN`` where a value should be, and English plurals built by adding an 's'."""
        out = [f"console: {m}" for m in self.console] + [f"overlap: {o}" for o in self.overlaps]
        out += [f"too wide: {w}" for w in self.wide]
        if self.js_errors > 0:
            out.append(f"{self.js_errors} script errors")
        if self.page_width > self.viewport_width:
            out.append(f"the page is {self.page_width} px wide in a {self.viewport_width} px window")
        return out + text_problems(self.text)


def text_problems(text: str) -> list[str]:
    """What a reader should never see in a page's text: literal escapes (``\\u2265``, ``&amp;gt;``),
    ``null`` / ``None`` / ``NaN`` / ``undefined`` where a value or its absence should be said, and
    plurals made by adding an 's' (``frequencys``)."""
    out = []
    for pattern, what in [(r"\\u[0-9a-fA-F]{4}|\\x[0-9a-fA-F]{2}|&#?\w+;", "a literal escape"),
                          (r"\b(?:null|None|NaN|nan|undefined)\b", "a missing value shown raw"),
                          (r"\b\w*[bcdfghjklmnpqrstvwxz]ys\b", "a bad plural (e.g. 'frequencys')")]:
        for m in re.finditer(pattern, text):
            out.append(f"{what}: ...{text[max(0, m.start() - 60):m.end() + 60]}...")
    return out


def visible_text(dom: str) -> str:
    """The text of an HTML page outside ``<script>`` and ``<style>``, entities decoded, spaces collapsed."""
    body = dom[dom.find("<body"):] if "<body" in dom else dom
    body = re.sub(r"<(script|style)\b.*?</\1>", " ", body, flags=re.S | re.I)
    body = re.sub(r"<[^>]+>", " ", body)
    return " ".join(html.unescape(body).split())


def inspect_page(browser: str, page: str | Path, tmp: Path, *, width: int = 1280) -> PageCheck:
    """Render a page (an HTML string or file) in a ``width``-px window with :data:`OVERLAP_JS` and
    :data:`WIDTH_JS` added, and collect what a reader meets (:class:`PageCheck`)."""
    text = Path(page).read_text() if isinstance(page, Path) else page
    checked = Path(tmp) / "page_check.html"
    checked.write_text(text.replace("</body>", f"<script>{OVERLAP_JS}</script><script>{WIDTH_JS}</script></body>"))
    res = _run(browser, checked.resolve().as_uri(), "--dump-dom", width=width)
    dom = res.stdout

    def attr(name: str) -> str:
        found = re.search(rf'data-{name}="([^"]*)"', dom)
        if not found:
            raise AssertionError(f"the page check did not run (no data-{name}): {res.stderr[-2000:]}")
        return html.unescape(found.group(1))

    errors = re.search(r'data-js-errors="(\d+)"', dom)
    # the checks' own attributes hold text; read the visible text without them
    plain = re.sub(r'\sdata-(?:overlaps|wide)="[^"]*"', "", dom)
    return PageCheck(int(attr("plots-checked")), json.loads(attr("overlaps")),
                     [m.group(1) for m in _CONSOLE.finditer(res.stderr)], int(errors.group(1)) if errors else -1,
                     int(attr("page-width")), int(attr("viewport-width")), json.loads(attr("wide")), visible_text(plain), res)


def png_size(png: Path) -> tuple[int, int]:
    """Width and height of a PNG, from its header."""
    data = Path(png).read_bytes()[:24]
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise AssertionError(f"{png} is not a PNG")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
