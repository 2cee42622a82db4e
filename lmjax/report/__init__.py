"""The HTML report of an evaluation (`lmjax report`, `lmjax evaluate --report`):
`page` assembles it, `plots` draws its figures, `gallery` its image cards, and
`browser` renders it in headless Chromium for screenshots and tests."""

from lmjax.report.page import render, write_report

__all__ = ["render", "write_report"]
