"""Executes every notebook and exports it with its outputs to docs/notebooks/NAME.html (``make notebooks``), so a
reader sees the figures without running anything.

The pages work offline: plotly figures are drawn by one shared ``plotly.min.js`` written beside them (not 4 MB
per page), and the page template (export.html.j2) leaves out the scripts nbconvert would fetch from the network.
The circuit explorer runs with ``MECHEDIT_STATIC=1``: a static page has no widget front-end, so it shows the
figures of one selection. The .ipynb files themselves stay without outputs.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbformat
import plotly.io as pio
from nbclient import NotebookClient
from nbconvert import HTMLExporter
from plotly.offline import get_plotlyjs

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "docs" / "notebooks"
PLOTLY_MIME = "application/vnd.plotly.v1+json"


def static_figures(nb: nbformat.NotebookNode) -> int:
    """Replace each plotly output by a div drawn with the shared plotly.js; returns how many were replaced."""
    n = 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data") or {}
            if PLOTLY_MIME in data:
                fig = pio.from_json(nbformat.v4.nbjson.json.dumps(data[PLOTLY_MIME]), skip_invalid=True)
                out["data"] = {"text/html": pio.to_html(fig, full_html=False, include_plotlyjs=False)}
                n += 1
    return n


def export(path: Path, exporter: HTMLExporter) -> Path:
    """Execute one notebook in a fresh kernel and write its HTML page; returns the page's path."""
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    if errors:
        raise RuntimeError(f"{path.name}: {errors[0].get('ename')}: {errors[0].get('evalue')}")
    n = static_figures(nb)
    body, _ = exporter.from_notebook_node(nb)
    page = OUT / f"{path.stem}.html"
    page.write_text(body)
    print(f"{page.relative_to(HERE.parent)}: {n} figure(s)")
    return page


def main(names: list[str]) -> None:
    """Export the notebooks named on the command line (default: every notebooks/*.ipynb)."""
    os.environ["MECHEDIT_STATIC"] = "1"  # read by the kernels started below
    os.environ["PLOTLY_RENDERER"] = "plotly_mimetype"  # figure JSON in the outputs, drawn by the shared plotly.js
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "plotly.min.js").write_text(get_plotlyjs())
    exporter = HTMLExporter(template_name="lab", template_file=str(HERE / "export.html.j2"))
    paths = [HERE / f"{n}.ipynb" for n in names] if names else sorted(HERE.glob("*.ipynb"))
    for path in paths:
        t0 = time.time()
        export(path, exporter)
        print(f"  executed in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
