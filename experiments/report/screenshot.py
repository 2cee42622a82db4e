"""Screenshots of an HTML report (`lmjax report`) in headless Chromium, with the
browser code the report's browser test uses (`lmjax.report.browser`).

Writes the top of the page (summary, SDR curve, error plots) and, with
`--gallery`, a second PNG of the gallery alone; exits 1 when the page logs
anything to the browser console (an error in the page).

    python experiments/report/screenshot.py experiments/results/isbi2015_report/report.html \
        docs/report.png --gallery docs/report_gallery.png
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from lmjax.report import browser


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=pathlib.Path, help="the report's HTML file")
    parser.add_argument("output", type=pathlib.Path, help="PNG of the top of the page")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1400)
    parser.add_argument("--gallery", type=pathlib.Path, help="also a PNG of the gallery alone")
    args = parser.parse_args(argv)
    if browser.find_chromium() is None:
        print("no Chromium found: apt-get install chromium, or set LMJAX_CHROMIUM", file=sys.stderr)
        return 2
    size = (args.width, args.height)
    shots = [(args.output, "")] + ([(args.gallery, "gallery-section")] if args.gallery else [])
    console = []
    for path, section in shots:
        console += browser.screenshot(args.page, path, size=size, section=section).console
        print(f"wrote {path}")
    for message in console:
        print(f"console: {message}", file=sys.stderr)
    return 1 if console else 0


if __name__ == "__main__":
    sys.exit(main())
