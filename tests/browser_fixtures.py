"""Renders an HTML page in Debian's headless chromium and reports what loaded (the report and audit page tests).

    python -c "from tests.browser_fixtures import CHROMIUM; print(CHROMIUM)"
"""

import os
import re
import shutil
import subprocess

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

_PROBE = """<script>window.addEventListener('load', function () {
  var imgs = Array.from(document.images), ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  var m = document.createElement('div'); m.id = 'probe';
  m.textContent = 'PROBE loaded=' + ok.length + ' total=' + imgs.length +
    ' table=' + !!document.getElementById(TABLE_ID) + ' injected=' + (window.injected || 0);
  document.body.appendChild(m); });</script>"""


def render(html_path, tmp_path, dom=None, table_id: str = "metrics"):
    """Opens the page in headless chromium and returns (loaded images, total images, whether the element
    `table_id` is there); `dom`, a list, receives the page as chromium shows it, and the number of user-data
    scripts that ran (a page that sets window.injected)."""
    probe = os.path.join(os.path.dirname(html_path), "_probe.html")  # same folder: relative paths still resolve
    with open(html_path) as f, open(probe, "w") as g:
        g.write(f.read().replace("</body>", _PROBE.replace("TABLE_ID", repr(table_id)) + "</body>"))
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chrome-profile'}",
           "--allow-file-access-from-files", "--virtual-time-budget=5000", "--dump-dom", "file://" + probe]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    m = re.search(r"PROBE loaded=(\d+) total=(\d+) table=(\w+) injected=(\d+)", out.stdout)
    assert m, f"no probe in chromium output; stderr: {out.stderr[-2000:]}"
    if dom is not None:
        dom += [out.stdout, int(m.group(4))]
    return int(m.group(1)), int(m.group(2)), m.group(3) == "true"
