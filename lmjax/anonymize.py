"""Output names that do not reveal the input file names (`--anonymize_names`).

File and folder names of radiographs often hold a patient's name, ID or an
accession number. With `--anonymize_names` every output named after an input
(predict's `<stem>.json`, `.png`, `.labelme.json`, the rows of `predictions.csv`,
`provenance.json` and the review; evaluate's per-image tables) uses instead the
first 20 hex digits of HMAC-SHA256(salt, name), where `name` is the input's
output name with its folders (`a/b/x`); the outputs then lie flat in the output
folder, since folder names identify patients as often as file names do.

The salt is `--anonymize_salt` or, when not given, 128 random bits drawn per job
and never written anywhere, so that the names cannot be linked to other jobs nor
recovered by hashing guessed names. A job resumed with `--skip_existing` needs the
same `--anonymize_salt` to find its earlier outputs. The mapping from inputs to
hashed names is written only where the user asks (`--name_map=FILE`, a CSV).
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import os
import pathlib
import secrets
from collections.abc import Iterable
from typing import Any

HASH_DIGITS = 20  # 80 bits: no collision in any realistic job


class Anonymizer:
    """Salted hashes of input names (`name` -> a hex stem of `HASH_DIGITS`)."""

    def __init__(self, salt: str | None = None):
        self._key = (salt if salt else secrets.token_hex(16)).encode("utf-8")

    def stem(self, name: str) -> str:
        digest = hmac.new(self._key, name.encode("utf-8"), hashlib.sha256).hexdigest()
        return digest[:HASH_DIGITS]

    def names(self, names: Iterable[str]) -> dict[str, str]:
        """`{name: hashed stem}` for each distinct name."""
        return {n: self.stem(n) for n in names}


def scrub_text(text: str, replacements: dict[str, str]) -> str:
    """`text` with every occurrence of a key replaced by its value, longest keys first
    (a path before the file name it ends with)."""
    for old in sorted(replacements, key=len, reverse=True):
        if old:
            text = text.replace(old, replacements[old])
    return text


def scrub(obj: Any, replacements: dict[str, str]) -> Any:
    """A copy of a JSON-like `obj` (dicts, lists, strings, numbers) with every string
    (dictionary keys included) that equals a key of `replacements` replaced. Only
    whole strings: an image named "1" leaves "unet_1" alone."""
    if isinstance(obj, str):
        return replacements.get(obj, obj)
    if isinstance(obj, dict):
        return {scrub(k, replacements): scrub(v, replacements) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [scrub(v, replacements) for v in obj]
    return obj


def report_names(report: Any) -> set[str]:
    """The image names of an evaluation report: every `per_image` table's `images`
    and every `"image"` entry, at any depth (extractor comparisons nest reports)."""
    found: set[str] = set()
    if isinstance(report, dict):
        for key, value in report.items():
            if key == "images" and isinstance(value, list):
                found.update(v for v in value if isinstance(v, str))
            elif key == "image" and isinstance(value, str):
                found.add(value)
            else:
                found |= report_names(value)
    elif isinstance(report, list):
        for value in report:
            found |= report_names(value)
    return found


def anonymize_report(report: dict[str, Any], anonymizer: Anonymizer) -> dict[str, Any]:
    """An evaluation report with its image names hashed (`report_names`)."""
    names = report_names(report)
    return scrub(report, anonymizer.names(names)) if names else report


def write_name_map(path: str | os.PathLike, pairs: Iterable[tuple[str, str]]) -> None:
    """`path` as a CSV of `image,output` rows: each input as named on the command
    line or found in its folder, and the hashed name of its outputs. Written whole
    or not at all."""
    target = pathlib.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.tmp")
    with open(partial, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["image", "output"])
        out.writerows(pairs)
    os.replace(partial, target)


__all__ = [
    "HASH_DIGITS",
    "Anonymizer",
    "anonymize_report",
    "report_names",
    "scrub",
    "scrub_text",
    "write_name_map",
]
