"""The audit report: renders offline, shows the numbers of the scores table, labels give P/R."""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from datagen.filter import stage
from datagen.filter.audit import audit_run
from datagen.filter.labels import LabelError, load_labels
from datagen.filter.oracle import write_oracle_json
from datagen.filter.selection import Selector, Thresholds, passes
from datagen.filter.table import read_oracle, read_scores, read_selection
from tests.filter.conftest import make_candidates, write_render_shard


def cells(html: str) -> dict[str, str]:
    return dict(re.findall(r'data-key="([^"]+)">([^<]*)<', html))


def fmt(x) -> str:
    return f"{x:.4f}"


@pytest.fixture(scope="module")
def audited(scored_run, tmp_path_factory):
    """The session run plus a shard with bad images, audited once."""
    src, cfg = scored_run
    root = tmp_path_factory.mktemp("audited") / "run"
    shutil.copytree(src.root, root)
    from datagen.store import RunStore

    store = RunStore(root)
    items = make_candidates(7, triples=1, per_triple=3)
    write_render_shard(store, 7, items, drop_images={items[0][0].candidate_id: ("input",)},
                       corrupt={items[1][0].candidate_id})
    stage.Worker(cfg, str(root)).process_shard(7)
    stage.finalize(cfg, store)
    numbers = audit_run(root)
    return store, cfg, numbers, (root / "report" / "audit.html").read_text()


def test_report_numbers_match_the_scores_table(audited):
    store, cfg, numbers, html = audited
    df = read_scores(store)
    t = Thresholds.from_config(cfg.filter)
    sel = read_selection(store)
    got = cells(html)
    want = {"candidates": len(df), "scored": int((df["status"] == "ok").sum()),
            "failed": int((df["status"] != "ok").sum()), "images_kept": int(df["images_kept"].sum()),
            "passing": int(passes(df, t).sum()), "selected": len(sel), "triples": df["triple_id"].nunique(),
            "triples_with_pairs": sel["triple_id"].nunique()}
    for key, value in want.items():
        assert got[f"summary.{key}"] == str(value), key
    assert want["failed"] == 2 and got["failures.missing_image"] == "1" and got["failures.unreadable_image"] == "1"
    ok = df[df["status"] == "ok"]
    for m in ("sim_0", "sim_1", "sim_image", "sim_direction"):
        assert got[f"metrics.{m}.mean"] == fmt(ok[m].mean())
        assert got[f"metrics.{m}.median"] == fmt(ok[m].median())
    selector = Selector(df)
    for name, rows in numbers["sweeps"].items():
        for i in (0, len(rows) // 2, len(rows) - 1):
            expect = selector.select(t.replace(**{name: rows[i]["value"]}), cfg.filter.max_pairs_per_triple).sum()
            assert got[f"sweeps.{name}.{i}.pairs_kept"] == str(expect)
    without = selector.select(t.replace(min_image=-np.inf), cfg.filter.max_pairs_per_triple).sum()
    assert got["marginal.min_image.pairs_kept_without"] == str(without)
    assert got["marginal.min_image.pairs_removed"] == str(without - len(sel))


def test_report_is_self_contained_and_has_every_section(audited):
    *_, html = audited
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', html)   # nothing fetched from outside
    assert "<script" not in html
    for section in ("summary", "failures", "histograms", "sweeps", "grid", "marginal", "labels", "breakdown", "images"):
        assert f'id="{section}"' in html
    assert html.count("<svg") >= 4 + 4 + 1            # histograms, sweeps, a precision/recall chart
    assert html.count("data:image/png;base64,") >= 2 * 4   # image grids: both images of each card
    assert "just above" in html and "just below" in html


def test_oracle_json_has_the_agreed_keys_and_keeps_keys_written_by_others(audited):
    store, cfg, numbers, html = audited
    path = store.root / "report" / "oracle.json"
    data = json.loads(path.read_text())
    for key in ("pairs_correct_rate_all", "pairs_correct_rate_kept", "filter_precision", "filter_recall", "by_edit_kind"):
        assert key in data
    judged = read_oracle(store).set_index("candidate_id")["correct"]
    df = read_scores(store)
    assert data["pairs_correct_rate_all"] == pytest.approx(judged.mean(), abs=1e-6)
    kept = judged[read_selection(store)["candidate_id"]]
    assert data["filter_precision"] == pytest.approx(kept.mean(), abs=1e-6)
    assert cells(html)["oracle.filter_recall"] == fmt(data["filter_recall"])
    assert set(data["by_edit_kind"]) == set(df.loc[df["status"] == "ok", "edit_kind"])
    # The same four against the pairs whose un-named facts were kept too.
    full = read_oracle(store).set_index("candidate_id")["correct_full"]
    assert data["pairs_correct_rate_all_full"] == pytest.approx(full.mean(), abs=1e-6)
    assert data["pairs_correct_rate_kept_full"] == data["filter_precision_full"]
    kept_full = full[read_selection(store)["candidate_id"]]
    assert data["filter_precision_full"] == pytest.approx(kept_full.mean(), abs=1e-6)
    assert data["filter_recall_full"] == pytest.approx(kept_full.sum() / full.sum(), abs=1e-6)
    assert (full <= judged).all()   # keeping the un-named facts is a further demand
    write_oracle_json(store.root, {"p2p_modes": {"self": 0.5}, "clip_top1": 0.9})
    audit_run(store.root)   # a later audit must not drop them
    data = json.loads(path.read_text())
    assert data["p2p_modes"] == {"self": 0.5} and data["clip_top1"] == 0.9 and "filter_recall" in data


def test_human_labels_give_precision_and_recall_of_the_filter(run_copy, tmp_path):
    store, cfg = run_copy
    df = read_scores(store)
    rng = np.random.default_rng(0)
    sample = df.sample(20, random_state=1)
    good = rng.uniform(size=len(sample)) < 0.5
    path = tmp_path / "labels.csv"
    pd.DataFrame({"candidate_id": sample["candidate_id"], "label": np.where(good, "good", "bad")}).to_csv(path, index=False)
    numbers = audit_run(store.root, labels_path=path, target_precision=0.5)
    res = numbers["labels"]["human"]
    selected = set(read_selection(store)["candidate_id"])
    pred = sample["candidate_id"].isin(selected).to_numpy()
    tp = int((pred & good).sum())
    assert res["labelled"] == 20 and res["positives"] == int(good.sum())
    assert res["current"]["precision"] == pytest.approx(tp / pred.sum() if pred.sum() else None, abs=1e-6)
    assert res["current"]["recall"] == pytest.approx(tp / good.sum(), abs=1e-6)
    best = res["best_f1"]   # the best over all settings searched, so at least the current and every sweep
    assert best["f1"] >= max([res["current"]["f1"] or 0] + [r["f1"] or 0 for rows in res["sweeps"].values() for r in rows])
    t_best = Thresholds(**{k: (-np.inf if v is None else v) for k, v in best["thresholds"].items()})
    best_pred = sample["candidate_id"].isin(set(df.loc[Selector(df).select(t_best, cfg.filter.max_pairs_per_triple),
                                                       "candidate_id"])).to_numpy()
    tp = int((best_pred & good).sum())
    assert best["precision"] == pytest.approx(tp / best_pred.sum(), abs=1e-6)
    assert best["recall"] == pytest.approx(tp / good.sum(), abs=1e-6)
    target = res["at_target_precision"]
    assert target is None or target["precision"] >= 0.5
    html = (store.root / "report" / "audit.html").read_text()
    assert cells(html)["labels.human.labelled"] == "20"


def test_label_files_in_every_accepted_form_and_bad_ones_named(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"c1": "good", "c2": {"label": "bad"}, "c3": 1}))
    (tmp_path / "b.json").write_text(json.dumps([{"candidate_id": "c1", "label": True}]))
    assert load_labels(tmp_path / "a.json").to_dict() == {"c1": True, "c2": False, "c3": True}
    assert load_labels(tmp_path / "b.json").to_dict() == {"c1": True}
    (tmp_path / "bad.csv").write_text("id,verdict\nc1,good\n")
    with pytest.raises(LabelError, match="candidate_id,label"):
        load_labels(tmp_path / "bad.csv")
    (tmp_path / "bad.json").write_text(json.dumps({"c1": "maybe"}))
    with pytest.raises(LabelError, match="'maybe' is not one of"):
        load_labels(tmp_path / "bad.json")


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if path := shutil.which(name):
            return path
    return None


def test_headless_browser_screenshot_of_the_report_is_not_blank(audited, tmp_path):
    from PIL import Image

    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install -y chromium)")
    *_, html = audited
    report = audited[0].root / "report" / "audit.html"
    shot = tmp_path / "shot.png"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,2400", f"--screenshot={shot}",
           report.as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=90, check=False)
    assert shot.exists() and shot.stat().st_size > 10_000
    img = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert img.shape == (2400, 1200)
    assert img.std() > 10                              # text, tables and plots, not a blank page
    assert (img < 128).mean() > 0.01


def test_a_sampled_audit_still_measures_every_human_label(run_copy, tmp_path):
    store, _ = run_copy
    df = read_scores(store)
    labelled = pd.concat([g.head(3) for _, g in df.groupby("shard")])      # labels in every shard
    path = tmp_path / "labels.json"
    path.write_text(json.dumps({c: "good" if i % 2 else "bad" for i, c in enumerate(labelled["candidate_id"])}))
    full = audit_run(store.root, labels_path=path)
    sampled = audit_run(store.root, labels_path=path, max_rows=1)       # one whole shard, plus the labelled triples
    assert sampled["sampled"] and sampled["rows_used"] < sampled["rows_total"] == len(df)
    assert sampled["labels"]["human"]["labelled"] == len(labelled) == full["labels"]["human"]["labelled"]
    assert sampled["labels"]["human"]["current"] == full["labels"]["human"]["current"]
    assert sampled["summary"] == full["summary"] and sampled["sweeps"] == full["sweeps"]   # over every row
