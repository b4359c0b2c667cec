"""The audit as one self-contained HTML page: plots as inline SVG, images as data URIs.

No scripts, fonts or links outside the file, so it opens offline and can be mailed. Every
number shown comes from the ``numbers`` dict that audit.py also writes to audit.json; table
cells carry ``data-key`` attributes so tests (and scripts) can read them back.
"""
from __future__ import annotations

import base64
import html
import io
from typing import Any

import pandas as pd

from datagen.store import RunStore

from . import svgplot
from .selection import THRESHOLD_METRIC
from .table import image_pair, read_images_for

_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ccc}h3{font-size:15px}
table{border-collapse:collapse;margin:8px 0;font-size:13px}td,th{border:1px solid #ddd;padding:3px 7px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}.cur{outline:2px solid #d33}
.cards{display:flex;flex-wrap:wrap;gap:8px}.card{border:1px solid #ccc;padding:4px;width:220px;font-size:11px}
.card img{width:104px;height:104px;image-rendering:pixelated}.good{color:#080}.bad{color:#b00}
.note{color:#666;font-size:12px}svg.chart{margin:4px;border:1px solid #eee}
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _fmt(x: Any) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.4f}" if abs(x) < 10 else f"{x:.1f}"
    return str(x)


def _table(headers: list[str], rows: list[list[Any]], keys: list[list[str | None]] | None = None,
           left: int = 1) -> str:
    head = "".join(f'<th class="{"l" if i < left else ""}">{_e(h)}</th>' for i, h in enumerate(headers))
    body = []
    for r, row in enumerate(rows):
        cells = []
        for c, v in enumerate(row):
            key = keys[r][c] if keys and keys[r][c] else None
            attr = f' data-key="{_e(key)}"' if key else ""
            cells.append(f'<td class="{"l" if c < left else ""}"{attr}>{_e(_fmt(v))}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def histograms(audit, numbers) -> str:
    t, keep = numbers["thresholds"], numbers["keep_bound"]
    charts = []
    for name, metric in THRESHOLD_METRIC.items():
        v = audit.values[metric][audit.ok]
        marks = tuple(x for x in (t[name], keep[name]) if -1 <= x <= 1)
        chart = svgplot.histogram(v, metric, include=marks)
        chart.vline(t[name], "#d33", f"{name} = {t[name]:.3g}")
        chart.vline(keep[name], "#999", f"keep bound {keep[name]:.3g}", dash="4 3")
        charts.append(chart.svg())
    return "".join(charts)


def sweep_plots(numbers) -> str:
    charts = []
    for name, rows in numbers["sweeps"].items():
        x = [r["value"] for r in rows]
        kept = [r["pairs_kept"] for r in rows]
        top = max(1, max(kept))
        chart = svgplot.Chart(f"moving {name}", name, "pass rate  /  pairs kept ÷ max", (min(x), max(x)), (0, 1.05))
        chart.line(x, [r["pass_rate_alone"] for r in rows], svgplot.PALETTE[0], "pass rate, alone")
        chart.line(x, [r["pass_rate"] for r in rows], svgplot.PALETTE[1], "pass rate, all")
        chart.line(x, [k / top for k in kept], svgplot.PALETTE[2], f"pairs kept (max {top})", dash="4 2")
        chart.vline(numbers["thresholds"][name], "#d33", "current")
        charts.append(chart.svg())
    return "".join(charts)


def pr_plot(result: dict[str, Any], name: str, sweeps: dict[str, list]) -> str:
    chart = svgplot.Chart(f"filter vs {name} labels", "recall", "precision", (0, 1.02), (0, 1.05))
    for colour, (thr, rows) in zip(svgplot.PALETTE, sweeps.items()):
        pts = sorted((r["recall"], r["precision"]) for r in rows if r["precision"] is not None and r["recall"] is not None)
        if pts:
            chart.line([p[0] for p in pts], [p[1] for p in pts], colour, f"moving {thr}", marker=True)
    cur = result["current"]
    if cur["precision"] is not None and cur["recall"] is not None:
        chart.point(cur["recall"], cur["precision"], "#d33", "current")
    if result.get("best_f1") and result["best_f1"]["precision"] is not None:
        chart.point(result["best_f1"]["recall"], result["best_f1"]["precision"], "#ffd700", "best F1", r=6)
    return chart.svg()


def previews_section(previews: dict[str, Any] | None) -> str:
    """render.preview: what a candidate's preview predicted of its final scores, and the stop rule's recall."""
    if not previews:
        return ""
    metrics = [m for m in THRESHOLD_METRIC.values() if m in previews]
    charts = []
    for m in metrics:
        b = previews[m]["by_preview_decile"]
        x = [r["preview_mean"] for r in b]
        ys = [r[k] for r in b for k in ("final_p10", "final_p90")] + x
        lo, hi = min(ys), max(ys)
        chart = svgplot.Chart(f"{m}: final against preview", f"preview {m} (decile mean)", f"final {m}",
                              (min(x), max(x)), (lo - 0.02 * (hi - lo), hi + 0.02 * (hi - lo)))
        chart.line(x, [r["final_mean"] for r in b], svgplot.PALETTE[0], "final, mean", marker=True)
        chart.line(x, [r["final_p10"] for r in b], svgplot.PALETTE[1], "final, p10 / p90", dash="3 2")
        chart.line(x, [r["final_p90"] for r in b], svgplot.PALETTE[1], dash="3 2")
        chart.line(x, x, "#999", "final = preview", dash="6 3")
        charts.append(chart.svg())
    table = _table(["metric", "correlation", "mean final − preview"],
                   [[m, previews[m]["correlation"], previews[m]["mean_final_minus_preview"]] for m in metrics],
                   [[None, f"previews.{m}.correlation", f"previews.{m}.mean_final_minus_preview"] for m in metrics])
    counts = ["preview_fraction", "previewed", "stopped", "with_final_scores"]
    rule = previews.get("rule")
    shown = [k for k in ("file", "kind", "measured_on", "target_recall", "recall", "stop_rate",
                         "stop_rate_rejected", "positives", "rows") if rule and k in rule]
    rule_rows = ([[k.replace("_", " "), rule[k]] for k in shown] if rule else
                 [["(no rule: previews only recorded; calibrate one with editsynth preview-rule --run RUN)", ""]])
    rule_keys = [[None, f"previews.rule.{k}"] for k in shown] if rule else None
    return (f'<h2 id="previews">Previews against final scores</h2>'
            + _table(["", "value"], [[k.replace("_", " "), previews[k]] for k in counts],
                     [[None, f"previews.{k}"] for k in counts])
            + "".join(charts) + table + "<h3>Stop rule</h3>" + _table(["", "value"], rule_rows, rule_keys))


def _thumb(data: bytes, ext: str) -> str:
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    if max(img.size) > 128:  # keep the page small: 512 px renders become 128 px thumbnails
        img = img.convert("RGB")
        img.thumbnail((128, 128))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        data, ext = buf.getvalue(), "png"
    mime = "jpeg" if ext in ("jpg", "jpeg") else ext
    return f'<img alt="" src="data:image/{mime};base64,{base64.b64encode(data).decode()}">'


def near_threshold(audit, metric: str, value: float, n: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``n`` candidates with stored images just above and just below ``value``."""
    s = audit.scores[audit.ok & audit.scores["images_kept"].astype(bool).to_numpy()]
    above = s[s[metric] >= value].sort_values(metric).head(n)
    below = s[s[metric] < value].sort_values(metric, ascending=False).head(n)
    return above, below


def image_grids(store: RunStore, audit, numbers, sources, n: int) -> str:
    picks = {}
    for name, metric in THRESHOLD_METRIC.items():
        picks[name] = near_threshold(audit, metric, numbers["thresholds"][name], n)
    wanted = pd.concat([df for pair in picks.values() for df in pair])
    images: dict[str, dict[str, bytes]] = {}
    for shard, g in wanted.groupby("shard"):
        images.update(read_images_for(store, int(shard), set(g["candidate_id"])))
    selected = set(audit.scores.loc[audit.selected, "candidate_id"])
    parts = []
    for name, (above, below) in picks.items():
        metric = THRESHOLD_METRIC[name]
        parts.append(f"<h3>{_e(metric)} around {_e(name)} = {numbers['thresholds'][name]:.4g}</h3>")
        for side, df in (("just above (passes this threshold)", above), ("just below (fails it)", below)):
            cards = []
            for _, r in df.iterrows():
                pair = image_pair(images.get(r["candidate_id"], {}))
                if pair is None:
                    continue
                labels = " ".join(
                    f'<span class="{"good" if lab[r["candidate_id"]] else "bad"}">{_e(src)}: '
                    f'{"good" if lab[r["candidate_id"]] else "bad"}</span>'
                    for src, lab in sources.items() if r["candidate_id"] in lab.index)
                cards.append(
                    f'<div class="card">{_thumb(pair[0], pair[2])}{_thumb(pair[1], pair[2])}<br>'
                    f'<b>{_e(metric)} = {r[metric]:.4f}</b> {"✔ selected" if r["candidate_id"] in selected else ""}<br>'
                    f'{_e(r["instruction"])}<br><span class="note">{_e(r["candidate_id"])}</span> {labels}</div>')
            parts.append(f"<p>{_e(side)}: {len(cards)} shown</p><div class='cards'>{''.join(cards) or '(none)'}</div>")
    return "".join(parts)


def _grid_table(g: dict[str, Any], t: dict[str, float]) -> str:
    head = "".join(f"<th>{v:.3g}</th>" for v in g["col_values"])
    top = max(1, max((max(r) for r in g["pairs_kept"]), default=1))
    rows = []
    for i, rv in enumerate(g["row_values"]):
        cells = []
        for j, cv in enumerate(g["col_values"]):
            kept = g["pairs_kept"][i][j]
            shade = int(255 - 120 * kept / top)
            cur = " cur" if abs(rv - t[g["rows"]]) < 5e-4 and abs(cv - t[g["cols"]]) < 5e-4 else ""
            cells.append(f'<td class="{cur}" style="background:rgb({shade},{255},{shade})" '
                         f'data-key="grid.{i}.{j}">{kept}<br><span class="note">{g["pass_rate"][i][j]:.3f}</span></td>')
        rows.append(f"<tr><th>{rv:.3g}</th>{''.join(cells)}</tr>")
    return (f"<table><tr><th>{_e(g['rows'])} \\ {_e(g['cols'])}</th>{head}</tr>{''.join(rows)}</table>"
            "<p class='note'>cell: pairs kept (top-k applied), below it the pass rate; red outline: current setting.</p>")


def _labels_section(name: str, res: dict[str, Any]) -> str:
    def setting(s):
        if not s:
            return "none of the grid settings"
        th = ", ".join(f"{k} = {'off' if v is None else v}" for k, v in s["thresholds"].items())
        return f"{th} → precision {_fmt(s['precision'])}, recall {_fmt(s['recall'])}, F1 {_fmt(s['f1'])}, {s['selected']} pairs"

    cur = res["current"]
    rows = [[k, v] for k, v in (("labelled candidates", res["labelled"]), ("good (positive) labels", res["positives"]),
                                ("precision (current)", cur["precision"]), ("recall (current)", cur["recall"]),
                                ("F1 (current)", cur["f1"]))]
    keys = [[None, f"labels.{name}.{k}"] for k in ("labelled", "positives", "precision", "recall", "f1")]
    sweep_rows, sweep_keys = [], []
    for thr, rs in res["sweeps"].items():
        for r in rs:
            sweep_rows.append([thr, r["value"], r["selected"], r["precision"], r["recall"], r["f1"]])
            sweep_keys.append([None] * 6)
    return (f"<h3>Against {_e(name)} labels</h3>{_table(['', 'value'], rows, keys)}"
            f"<p><b>Best F1</b> over {res['settings_searched']} settings (current, sweeps, joint grid): {_e(setting(res['best_f1']))}</p>"
            f"<p><b>Best recall at precision ≥ {res['target_precision']}</b>: {_e(setting(res['at_target_precision']))}</p>"
            f"<details><summary>precision / recall per threshold setting (one threshold moved, others fixed)</summary>"
            f"{_table(['threshold', 'value', 'pairs', 'precision', 'recall', 'F1'], sweep_rows, sweep_keys)}</details>")


def render_report(store: RunStore, audit, numbers: dict[str, Any], sources: dict[str, pd.Series], n_images: int) -> str:
    s = numbers["summary"]
    summary_rows = [[k.replace("_", " "), v] for k, v in s.items()]
    summary_keys = [[None, f"summary.{k}"] for k in s]
    t = numbers["thresholds"]
    thr_text = ", ".join(f"{k} = {v}" for k, v in t.items()) + f", top {numbers['max_pairs_per_triple']} per triple"
    dist_rows = [[m] + [d[k] for k in ("mean", "p10", "median", "p90", "min", "max")] for m, d in numbers["metrics"].items()]
    dist_keys = [[None] + [f"metrics.{m}.{k}" for k in ("mean", "p10", "median", "p90", "min", "max")] for m in numbers["metrics"]]
    fail_rows = [[r, n] for r, n in sorted(numbers["failures"].items())] or [["(no failures)", 0]]
    fail_keys = [[None, f"failures.{r}"] for r, _ in sorted(numbers["failures"].items())] or None
    marg = numbers["marginal"]
    marg_rows = [[k, THRESHOLD_METRIC[k], t[k], m["pairs_kept"], m["pairs_kept_without"], m["pairs_removed"],
                  m["removed_only_by_this"]] for k, m in marg.items()]
    marg_keys = [[None] * 3 + [f"marginal.{k}.pairs_kept", f"marginal.{k}.pairs_kept_without",
                               f"marginal.{k}.pairs_removed", f"marginal.{k}.removed_only_by_this"] for k in marg]
    sweep_tables = "".join(
        f"<h3>{_e(name)}</h3>" + _table(["value", "pass rate alone", "pass rate (all)", "pairs kept"],
                                        [[r["value"], r["pass_rate_alone"], r["pass_rate"], r["pairs_kept"]] for r in rows],
                                        [[None, None, None, f"sweeps.{name}.{i}.pairs_kept"] for i in range(len(rows))])
        for name, rows in numbers["sweeps"].items())

    def breakdown(rows):
        cols = ["group", "candidates", "scored", "pass_rate", "selected"] + [f"mean_{m}" for m in THRESHOLD_METRIC.values()]
        if rows and "correct_rate" in rows[0]:
            cols += ["correct_rate", "correct_rate_kept"]
        return _table(cols, [[r.get(c) for c in cols] for r in rows])

    errors = "".join(f"<li>shard {e['shard']}: {_e(e['error'])}</li>" for e in numbers["shard_errors"])
    labels_html = "".join(_labels_section(name, res) + pr_plot(res, name, res["sweeps"])
                          for name, res in numbers["labels"].items()) or \
        "<p>No labels: label a sample with <code>editsynth label --run RUN</code>, pass <code>--labels FILE</code>, " \
        "or use shapes-world triples (oracle labels).</p>"
    oracle = numbers.get("oracle")
    oracle_html = ""
    if oracle:
        kinds = oracle["by_edit_kind"]
        # The _full keys: also each untouched object's un-named facts kept (runs judged before them lack them).
        keys = [k for base in ("pairs_correct_rate_all", "pairs_correct_rate_kept", "filter_precision", "filter_recall")
                for k in (base, base + "_full") if k in oracle]
        oracle_html = ("<h3>Shapes-world oracle</h3>" + _table(
            ["", "value"], [[k, oracle[k]] for k in keys], [[None, f"oracle.{k}"] for k in keys])
            + _table(["edit kind", "labelled", "selected", "correct (all)", "correct (kept)", "recall"],
                     [[k, v["labelled"], v["selected"], v["pairs_correct_rate_all"], v["pairs_correct_rate_kept"],
                       v["filter_recall"]] for k, v in kinds.items()]))
        extras = [[k, oracle[k]] for k in ("t2i_caption_match_rate", "clip_top1") if oracle.get(k) is not None]
        if oracle.get("p2p_modes"):
            extras += [[f"pairs correct, P2P mode {m}", r] for m, r in oracle["p2p_modes"].items()]
            extras += [[f"pairs correct with un-named facts kept, P2P mode {m}", r]
                       for m, r in (oracle.get("p2p_modes_full") or {}).items()]
        if extras:
            oracle_html += ("<h3>Does each stage add value? (same triples and seeds)</h3>"
                            + _table(["", "value"], extras))
    sampled = (f"<p class='note'>Counts, distributions, sweeps, marginal effects and the grid are over all "
               f"{numbers['rows_total']} candidates; histograms, figures against labels, breakdowns and images are "
               f"over a random sample of whole filter shards and the triples of every human label: "
               f"{numbers['rows_used']} candidates.</p>"
               if numbers["sampled"] else "")
    overrides = f" (refiltered: {_e(', '.join(numbers['overrides']))})" if numbers["overrides"] else ""
    return f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>editsynth audit</title>
<style>{_CSS}</style></head><body>
<h1>Filter audit: {_e(numbers['run'])}</h1>
<p>CLIP: <code>{_e(numbers['clip_model'])}</code>. Thresholds in effect: {_e(thr_text)}{overrides}.
Images are stored for candidates inside the keep bound {_e(numbers['keep_bound'])}.</p>{sampled}
<h2 id="summary">Summary</h2>{_table(['', 'count'], summary_rows, summary_keys)}
<h2 id="failures">Failures by reason</h2>{_table(['reason', 'candidates'], fail_rows, fail_keys)}
{f'<ul>{errors}</ul>' if errors else ''}
<h2 id="histograms">Score distributions</h2>{histograms(audit, numbers)}
{_table(['metric', 'mean', 'p10', 'median', 'p90', 'min', 'max'], dist_rows, dist_keys)}
<h2 id="sweeps">Pass rate and pairs kept as each threshold moves</h2>{sweep_plots(numbers)}
<details><summary>sweep tables</summary>{sweep_tables}</details>
<h2 id="grid">Pairs kept over a grid of thresholds</h2>{_grid_table(numbers['grid'], t)}
<h2 id="marginal">Marginal effect of each threshold</h2>
{_table(['threshold', 'metric', 'value', 'pairs kept', 'pairs kept without it', 'pairs it removes',
         'candidates only it rejects'], marg_rows, marg_keys)}
{previews_section(numbers.get("previews"))}
<h2 id="labels">Filter against labels</h2>{oracle_html}{labels_html}
<h2 id="breakdown">By edit kind</h2>{breakdown(numbers['breakdown']['edit_kind'])}
<h2>By instruction keyword (first word)</h2>{breakdown(numbers['breakdown']['keyword'])}
<h2 id="images">Candidates just above and just below each threshold</h2>
{image_grids(store, audit, numbers, sources, n_images)}
</body></html>"""
