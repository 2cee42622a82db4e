"""One self-contained HTML page of an evaluation: provenance and config, summary
tables, SDR curve, error plots, class confusion matrices, measurements and the
gallery. Images are embedded as data URIs and the page loads nothing from
anywhere, so it opens from a USB stick or an e-mail attachment."""

from __future__ import annotations

import html
import json
import pathlib
from typing import Any

from lmjax import conformal
from lmjax.overlay import colour
from lmjax.report import gallery, plots

_CSS = """
body{font-family:system-ui,sans-serif;margin:0 auto;max-width:1400px;padding:0 16px;color:#222}
h1{font-size:1.5em} h2{border-bottom:1px solid #ccc;padding-top:8px}
nav a{margin-right:12px} table{border-collapse:collapse;margin:6px 0;font-size:.9em}
td,th{border:1px solid #ddd;padding:2px 6px;text-align:right} th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left} .mono{font-family:monospace;font-size:.85em}
.figs img{max-width:100%;margin:4px} .figs{display:flex;flex-wrap:wrap;align-items:flex-start}
#gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:10px}
.card{margin:0;border:1px solid #ccc;border-radius:4px;padding:4px;background:#fafafa}
.card img{width:100%;cursor:zoom-in} .card.big{grid-column:1/-1} .card.big img{cursor:zoom-out}
.card figcaption{font-size:.8em} .meas td,.meas th{font-size:.95em;padding:0 3px}
tr.wrong td{color:#b00} .legend span{display:inline-block;margin:2px 10px 2px 0;font-size:.85em}
.legend i{display:inline-block;width:10px;height:10px;border-radius:50%;margin-right:4px;
border:2px solid #000}
pre{background:#f6f6f6;padding:8px;overflow:auto;max-height:480px}
"""
# Enlarges a card on click; marks the page rendered (the browser test reads it).
_JS = """
document.querySelectorAll('.card img').forEach(function(img){
  img.addEventListener('click',function(){img.parentElement.classList.toggle('big');});});
document.body.dataset.cards=String(document.querySelectorAll('#gallery .card').length);
"""


def _esc(v: Any) -> str:
    return html.escape(str(v))


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "nan" if v != v else f"{v:.{digits}f}"
    return _esc(v)


def table(rows: list[dict], cols: list[str], headers: list[str] | None = None) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers or cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{_fmt(r.get(c))}</td>" for c in cols) + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _summary(report: dict) -> str:
    unit = report["unit"]
    row = {k: report.get(k) for k in ("n_images", "n", "missed", "mre", "sd", "median", "iqr")}
    row |= {"p95": report.get("p95")}
    cols = ["n_images", "n", "missed", "mre", "sd", "median", "iqr", "p95"]
    heads = ["images", "landmarks", "missed", f"MRE ({unit})", "SD", "median", "IQR", "p95"]
    for t, v in report["sdr"].items():
        row[f"sdr{t}"] = v
        cols.append(f"sdr{t}")
        heads.append(f"SDR {t} {unit} (%)")
    out = table([row], cols, heads)
    if "stages" in report:
        rows = [
            {"stage": name, **s, **{f"sdr{t}": v for t, v in s["sdr"].items()}}
            for name, s in report["stages"].items()
        ]
        sdr_cols = [f"sdr{t}" for t in report["sdr"]]
        out += "<p>Stages (the errors above are the last stage's):</p>" + table(
            rows,
            ["stage", "mre", "median", "p95", "missed", *sdr_cols],
            ["stage", "MRE", "median", "p95", "missed", *(f"SDR {t}" for t in report["sdr"])],
        )
    cov = report.get("conformal")
    if cov:
        line = conformal.format_coverage(cov).splitlines()[0].removeprefix("conformal radii: ")
        out += f"<p>Conformal radii: {_esc(line)}</p>"
    seg = report.get("segmentation")
    if seg:
        out += (
            f"<p>Landmark masks: IoU {seg['iou']:.3f}, Dice {seg['dice']:.3f}, pooled IoU "
            f"{seg['iou_pooled']:.3f} over {seg['n']} masks.</p>"
        )
    return out


def _per_landmark(report: dict) -> str:
    rows = report["per_landmark"]
    sdr_keys = [k for k in rows[0] if k.startswith("sdr@")] if rows else []
    cols = ["landmark", "n", "missed", "mre", "sd", "median", "p95", *sdr_keys]
    return table(rows, cols)


def _provenance(prov: dict, report: dict) -> str:
    rows = {
        "split": report.get("split"),
        "ground truth": report.get("ground_truth"),
        "model": report.get("model"),
        **prov,
    }
    body = "".join(
        f"<tr><th>{_esc(k)}</th><td class='mono'>{_fmt(v)}</td></tr>" for k, v in rows.items()
    )
    return f"<table>{body}</table>"


def _measurements(report: dict) -> str:
    m = report.get("measurements")
    if not m:
        return "<p>The landmark set defines no clinical measurements.</p>"
    out = []
    numbers = [{"name": k, **v} for k, v in m["measurements"].items() if "error" not in v]
    if numbers:
        out.append("<h3>Values</h3>")
        out.append(
            table(
                numbers,
                ["name", "unit", "n", "missed", "mae", "median", "iqr"],
                ["measurement", "unit", "n", "missed", "MAE", "median AE", "IQR"],
            )
        )
    classes = [
        {"name": k, **v, "macro_f1": v.get("macro", {}).get("f1")}
        for k, v in m["classifications"].items()
    ]
    if classes:
        out.append("<h3 id='classes'>Classes</h3>")
        out.append(
            table(
                classes,
                ["name", "n", "missed", "accuracy", "macro_f1", "kappa"],
                ["class", "n", "missed", "accuracy", "macro F1", "Cohen's kappa"],
            )
        )
        figs = [
            f'<img alt="confusion {_esc(k)}" class="confusion" '
            f'src="{plots.confusion_figure(k, v["labels"], v["confusion"])}">'
            for k, v in m["classifications"].items()
            if v.get("n")
        ]
        out.append("<p>Confusion matrices (rows: true class, columns: predicted):</p>")
        out.append(f'<div class="figs">{"".join(figs)}</div>')
    per = m["per_image"]
    scatter = [
        f'<img alt="{_esc(k)}" src="{plots.scatter_figure(k, u, per["predicted"][k], t)}">'
        for k, u in per["units"].items()
        if (t := per["true"][k]) is not None and u != "type" and not u.startswith("mixed")
    ]
    out.append(f'<h3>Predicted against true</h3><div class="figs">{"".join(scatter)}</div>')
    names = list(per["units"])
    head = "".join(f"<th>{_esc(n)} pred</th><th>{_esc(n)} true</th>" for n in names)
    body = []
    for i, image in enumerate(per["images"]):
        cells = []
        for n in names:
            for key, ckey in (("predicted", "predicted_class"), ("true", "true_class")):
                v, c = per[key][n][i], per[ckey][n][i]
                cells.append(f"<td>{_fmt(v, 2)}{'' if c is None else ' ' + _esc(c)}</td>")
        body.append(f"<tr><td>{_esc(image)}</td>{''.join(cells)}</tr>")
    out.append(
        "<details><summary>Every image's measurements, predicted and true</summary>"
        f"<table><tr><th>image</th>{head}</tr>{''.join(body)}</table></details>"
    )
    return "".join(out)


def _legend(names) -> str:
    items = "".join(
        f"<span><i style='background:rgb{colour(k)}'></i>{k + 1} {_esc(n)}</span>"
        for k, n in enumerate(names)
    )
    return (
        f'<div class="legend">{items}</div><p>Circle: prediction; cross: ground truth; line: '
        "the error vector; thin circle: conformal radius (when calibrated); red cross: "
        "missed. Click an image to enlarge it.</p>"
    )


def render(
    report: dict,
    dataset,
    *,
    config: dict | None = None,
    radii: dict | None = None,
    title: str | None = None,
) -> str:
    """The page's HTML for an evaluation `report` (as `lmjax evaluate` gives it, with
    its `provenance`) of `dataset` (the evaluated split, records in report order).
    `config`: the run's resolved config; `radii`: its conformal.json."""
    if "per_image" not in report:
        raise ValueError(
            f"the evaluation of this run (model {report.get('model')!r}) has no per-image "
            "landmark errors to show; lmjax report covers landmark models (heatmap, "
            "segmentation, coordinate heads), evaluated with one extractor"
        )
    names = list(dataset.landmark_set.names)
    if len(report["per_image"]["images"]) != len(dataset.records):
        raise ValueError(
            f"the report has {len(report['per_image']['images'])} images, the split "
            f"{len(dataset.records)}: it is not an evaluation of this split"
        )
    errors = plots.error_matrix(report)
    unit = report["unit"]
    title = (
        title or f"{dataset.name or 'lmjax'} {report.get('split', '')}: {report.get('model', '')}"
    )
    prov = report.get("provenance") or {}
    cards = gallery.cards(report, dataset, radii)
    figs = [
        plots.sdr_figure(errors, unit, report["sdr"]),
        plots.histogram_figure(errors, unit),
        plots.box_figure(errors, names, unit),
    ]
    sections = [
        ("summary", "Summary", _summary(report)),
        (
            "plots",
            "Errors",
            '<div class="figs">' + "".join(f'<img alt="plot" src="{f}">' for f in figs) + "</div>",
        ),
        ("landmarks", "Per landmark", _per_landmark(report)),
        ("measurements", "Clinical measurements", _measurements(report)),
        (
            "gallery-section",
            f"Gallery: {len(cards)} images, worst first",
            _legend(names) + f'<div id="gallery">{"".join(cards)}</div>',
        ),
        (
            "run",
            "Run",
            _provenance(prov, report)
            + (
                "<details><summary>Config</summary><pre>"
                + _esc(json.dumps(config, indent=1, sort_keys=True))
                + "</pre></details>"
                if config is not None
                else ""
            ),
        ),
    ]
    nav = "".join(f'<a href="#{sid}">{_esc(h.split(":")[0])}</a>' for sid, h, _ in sections)
    body = "".join(f'<section id="{sid}"><h2>{_esc(h)}</h2>{c}</section>' for sid, h, c in sections)
    version = prov.get("lmjax_version", "")
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_esc(title)}</h1><p>lmjax {_esc(version)} · checkpoint step "
        f"{_fmt(prov.get('checkpoint_step', report.get('checkpoint_step')))} · weights "
        f"<span class='mono'>{_fmt(prov.get('weights_sha256'))}</span></p>"
        f"<nav>{nav}</nav>{body}<script>{_JS}</script></body></html>"
    )


def write_report(
    workdir: str | pathlib.Path,
    report: dict,
    output: str | pathlib.Path,
    *,
    data_dir: str | None = None,
    ground_truth: str | None = None,
    anonymize: bool = False,
) -> pathlib.Path:
    """Writes the page of `report` (an evaluation of the run in `workdir` on
    `report["split"]`, with `data_dir` and `ground_truth` as evaluated) to `output`;
    with several processes, process 0 does. `anonymize` (`--anonymize_names`, whose
    report already has hashed image names): the data folder is named nowhere."""
    import jax

    from lmjax.train.evaluation import dataset_for_split
    from lmjax.train.restore import read_config

    out = pathlib.Path(output)
    if jax.process_index() != 0:  # every process evaluated; one writes
        return out
    config = read_config(workdir)
    with config.unlocked():
        if data_dir is not None:
            config.data.data_dir = data_dir
        if ground_truth is not None:
            config.data.ground_truth = ground_truth
    _, dataset = dataset_for_split(config, report.get("split"))
    radii = conformal.load(workdir) if "conformal" in report else None
    shown, title = config.to_dict(), None
    if anonymize:  # folder names identify patients as often as file names do
        for key in ("data_dir", "image_dir"):
            if shown["data"].get(key):
                shown["data"][key] = "(not shown: --anonymize_names)"
        title = f"{report.get('split', '')}: {report.get('model', '')}"
    page = render(report, dataset, config=shown, radii=radii, title=title)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out
