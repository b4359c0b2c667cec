"""Benchmark: UNet rows per kept pair of the paper's recipe against waves, previews and fewer steps.

On the shapes world, the same triples for both recipes:
- paper: every candidate rendered to the end (``--candidates`` >= 16, ``--paper-steps`` >= 50, seeds
  drawn afresh), scored, top 4 kept;
- ours: the ``--pipeline`` (shapes-fast) render settings: waves with k/m (up to its own candidates per
  triple, ``--ours-candidates``), previews stopped by a rule, fewer steps. Its preview rule is
  calibrated first on separate triples (``--calibration-triples``, ``--calibration-candidates`` each)
  rendered to the end with previews recorded, for ``--target-recall`` of the would-be-kept ones.
The filter thresholds are the shapes pipeline's, with min_direction raised until the paper recipe keeps
at most ``--max-kept-fraction`` of its candidates; both recipes are judged with them. Pairs are judged
by the exact oracle with un-named facts (``correct_full``).

Each set's JSON (and the pooled one) carries a paired bootstrap over its triples: the 95 % interval of
each target figure and the share of draws meeting all three, i.e. how much a set of this size decides.
Work is cached per block of triples under ``--out``, so a killed bench resumes where it stopped.
The last line is one JSON object.

    OMP_NUM_THREADS=1 python bench/cost.py --out runs/bench-cost --jobs 2   # the full bench (~3 CPU-hours here)
    OMP_NUM_THREADS=1 python bench/cost.py --out /tmp/c --triples 8 --calibration-triples 4 --paper-steps 10
    OMP_NUM_THREADS=1 python bench/cost.py --out runs/bench-cost --jobs 2 --seeds 0,1,2   # three sets, then pooled
"""
from __future__ import annotations

import argparse
import io
import json
import random
import sys
import time
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from datagen.clip.loading import load_clip  # noqa: E402
from datagen.config import PipelineConfig, PreviewConfig, load_config  # noqa: E402
from datagen.filter.scorer import ClipScorer  # noqa: E402
from datagen.filter.selection import Selector, Thresholds, passes  # noqa: E402
from datagen.p2p.loading import load_pipeline  # noqa: E402
from datagen.p2p.render import CandidateRenderer, RenderCounters, RenderedCandidate  # noqa: E402
from datagen.p2p.stage import render_shard  # noqa: E402
from datagen.preview_rule import FEATURES, fit_rule, load_rule, rule_metrics, save_rule  # noqa: E402
from datagen.records import Triple, seed_from, stable_id  # noqa: E402
from datagen.waves import TripleProgress, after_wave, total_waves  # noqa: E402
from datagen.shapes import grammar  # noqa: E402
from datagen.shapes.oracle import judge_pair  # noqa: E402

METRICS = ("sim_0", "sim_1", "sim_image", "sim_direction")


def make_triples(n: int, seed: int, tag: str) -> list[Triple]:
    """``n`` shapes-world grammar triples, the same for every recipe (``tag`` keeps sets apart)."""
    rng = random.Random(seed_from(seed, tag))
    out = []
    for i in range(n):
        t = grammar.sample_triple(rng)
        out.append(Triple(triple_id=stable_id("bench-cost", tag, seed, i), input_caption=t.input_caption,
                          instruction=t.instruction, output_caption=t.output_caption, edit_kind=t.edit_kind,
                          backend="grammar"))
    return out


class Judge:
    """Scores rendered candidates with the pipeline's CLIP and judges them with the oracle."""

    def __init__(self, cfg: PipelineConfig):
        f = cfg.filter
        self.scorer = ClipScorer(load_clip(f.clip_model, f.clip_pretrained, "cpu", "fp32"), batch_size=64)
        self.rows: list[dict] = []

    def score_chunk(self, rendered: list[RenderedCandidate]) -> dict[str, dict | None]:
        ok = [r for r in rendered if r.candidate.status == "ok"]
        pairs = [tuple(Image.open(io.BytesIO(r.images[f"{part}.png"])).convert("RGB")
                       for part in ("input", "edited")) for r in ok]
        scores = {s.candidate_id: s for s in self.scorer.score([r.candidate for r in ok], pairs)}
        out = {}
        for r in rendered:
            c = r.candidate
            row = {"candidate_id": c.candidate_id, "triple_id": c.triple_id, "index": c.index, "status": c.status,
                   **{f"preview_{m}": getattr(c, f"preview_{m}") for m in METRICS}}
            s = scores.get(c.candidate_id)
            row.update({m: getattr(s, m) if s else float("nan") for m in METRICS})
            if s is not None:
                j = judge_pair(*pairs[ok.index(r)], c.input_caption, c.output_caption)
                row.update(correct=bool(j.correct), correct_full=bool(j.correct_full))
            self.rows.append(row)
            out[c.candidate_id] = {m: row[m] for m in METRICS} if s is not None else None
        return out


# Per process (the bench's own, or each of --jobs workers): a Judge per CLIP, a renderer per render config.
_JUDGES: dict[str, Judge] = {}
_RENDERERS: dict[str, CandidateRenderer] = {}


def judge_for(cfg: PipelineConfig) -> Judge:
    key = f"{cfg.filter.clip_model}|{cfg.filter.clip_pretrained}"
    if key not in _JUDGES:
        _JUDGES[key] = Judge(cfg)
    return _JUDGES[key]


def render_block(cfg: PipelineConfig, triples: list[Triple], part: Path, previews: bool, threads: int) -> str:
    """Render, score and judge one block of triples; its rows and counters go next to ``part``."""
    torch.set_num_threads(threads)
    judge = judge_for(cfg)
    key = cfg.render.model_dump_json()
    if key not in _RENDERERS:
        rule = load_rule(cfg.render.preview.rule) if cfg.render.preview and cfg.render.preview.rule else None
        loaded = load_pipeline(cfg.render.model, cfg.render.scheduler, "cpu", "float32")
        _RENDERERS[key] = CandidateRenderer(loaded, cfg.render, judge.scorer.score if previews else None, rule)
    judge.rows = []
    counters = RenderCounters()
    t0 = time.perf_counter()
    waves = cfg.render.waves is not None
    for rendered in render_shard(_RENDERERS[key], cfg, triples, counters, judge.score_chunk if waves else None):
        if not waves:
            judge.score_chunk(rendered)
    pd.DataFrame(judge.rows).to_parquet(part.with_suffix(".parquet"))
    stats = {k: v for k, v in vars(counters).items()}
    stats["seconds"] = round(time.perf_counter() - t0, 2)
    part.with_suffix(".json").write_text(json.dumps(stats))   # last: the block is done
    return f"{part.parent.name}/{part.name}: {len(triples)} triples in {stats['seconds']} s, {counters.unet_rows} UNet rows"


def recipe_blocks(name: str, cfg: PipelineConfig, triples: list[Triple], out: Path, block: int,
                  previews: bool = False) -> tuple[Path, list[tuple]]:
    """The folder of a recipe's cached blocks, and the render_block arguments of those not done yet."""
    # Cached under what changes the blocks: the triples, the render section, and the filter when waves read it.
    render = cfg.render.model_dump(exclude={"steps_reference"})   # a count, not a setting
    if render["waves"] and render["waves"]["rescue_after"] is None:
        # Off, the rescue (added after blocks were first cached) leaves the key as it was: they stay valid.
        del render["waves"]["rescue_after"], render["waves"]["rescue_near"]
    key = {"seed": cfg.seed, "render": render,
           "filter": cfg.filter.model_dump() if cfg.render.waves else None,
           # Triples are drawn in sequence from the bench's seed: the first names the set (a longer run
           # of the same seed reuses a shorter one's blocks).
           "triples": triples[0].triple_id}
    if cfg.render.preview and cfg.render.preview.rule:
        key["rule"] = Path(cfg.render.preview.rule).read_text()
    folder = out / f"{name}-{stable_id(json.dumps(key, sort_keys=True), length=8)}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(cfg.model_dump_json(indent=1))
    todo = []
    for b in range(0, len(triples), block):
        part = folder / f"block-{b // block:04d}"
        if not part.with_suffix(".json").exists():
            todo.append((cfg, triples[b:b + block], part, previews))
    return folder, todo


def render_all(todo: list[tuple], jobs: int, threads: int) -> None:
    """Render the blocks in ``todo``: here, or on ``jobs`` worker processes (blocks are independent)."""
    if jobs <= 1 or len(todo) <= 1:
        for args in todo:
            print(render_block(*args, threads), file=sys.stderr, flush=True)
        return
    # spawn: a forked copy of a process that already ran torch's thread pool can hang.
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        for done in as_completed([pool.submit(render_block, *args, threads) for args in todo]):
            print(done.result(), file=sys.stderr, flush=True)


def read_recipe(folder: Path, n_triples: int, block: int) -> tuple[pd.DataFrame, dict]:
    """A recipe's rows and summed counters from its cached blocks."""
    frames, totals = [], {}
    for b in range(0, n_triples, block):
        part = folder / f"block-{b // block:04d}"
        frames.append(pd.read_parquet(part.with_suffix(".parquet")))
        for k, v in json.loads(part.with_suffix(".json").read_text()).items():
            totals[k] = totals.get(k, 0) + v
    rows = pd.concat(frames, ignore_index=True)
    for column in ("correct", "correct_full"):   # absent when every candidate was stopped
        if column not in rows:
            rows[column] = np.nan
    return rows, totals


def run_recipe(name: str, cfg: PipelineConfig, triples: list[Triple], out: Path, block: int, jobs: int,
               threads: int, previews: bool = False) -> tuple[pd.DataFrame, dict]:
    """Render ``triples`` with ``cfg``, block by block (cached under out/name): rows and summed counters."""
    folder, todo = recipe_blocks(name, cfg, triples, out, block, previews)
    render_all(todo, jobs, threads)
    return read_recipe(folder, len(triples), block)


def choose_thresholds(scores: pd.DataFrame, base: Thresholds, max_pairs: int, max_kept_fraction: float) -> Thresholds:
    """``base`` with min_direction raised (by 0.01) until at most ``max_kept_fraction`` of the candidates are kept."""
    selector = Selector(scores)
    t = base
    for step in range(0, 200):
        t = base.replace(min_direction=round(base.min_direction + 0.01 * step, 4))
        if selector.select(t, max_pairs).mean() <= max_kept_fraction:
            return t
    raise SystemExit(f"no min_direction keeps at most {max_kept_fraction} of the candidates")


def kept_mask(rows: pd.DataFrame, t: Thresholds, max_pairs: int) -> tuple[pd.DataFrame, np.ndarray]:
    """The rows as the filter sees them (a candidate without scores failed), and which it keeps."""
    scored = rows.assign(status=np.where(rows["sim_0"].notna(), "ok", "failed")).reset_index(drop=True)
    return scored, Selector(scored).select(t, max_pairs)


def outcome(rows: pd.DataFrame, triples: list[Triple], t: Thresholds, max_pairs: int, unet_rows: int,
            seconds: float) -> dict:
    scored, kept = kept_mask(rows, t, max_pairs)
    n_kept = int(kept.sum())
    chosen = scored[kept]
    return {"unet_rows": int(unet_rows), "candidates_started": int(len(rows)), "kept_pairs": n_kept,
            "rows_per_kept_pair": round(unet_rows / n_kept, 1) if n_kept else None,
            "precision": round(float(chosen["correct_full"].mean()), 4) if n_kept else None,
            "precision_named": round(float(chosen["correct"].mean()), 4) if n_kept else None,
            "coverage": round(chosen["triple_id"].nunique() / len(triples), 4),
            "kept_fraction": round(n_kept / max(len(rows), 1), 4), "render_seconds": round(seconds, 1),
            "correct_full_rate_all": round(float(scored["correct_full"].fillna(False).astype(bool).mean()), 4),
            # Edit kinds differ most in how often any candidate passes: where coverage is won or lost.
            "coverage_by_kind": coverage_by_kind(chosen, triples)}


def coverage_by_kind(chosen: pd.DataFrame, triples: list[Triple]) -> dict[str, float]:
    """Per edit kind, the share of its triples with a kept pair."""
    covered = set(chosen["triple_id"])
    kinds = pd.Series([t.triple_id in covered for t in triples], index=[t.edit_kind for t in triples])
    return {kind: round(float(v), 4) for kind, v in kinds.groupby(level=0).mean().items()}


def per_triple(rows: pd.DataFrame, triples: list[Triple], t: Thresholds, max_pairs: int, unet_rows: int,
               stopped_fraction: float) -> pd.DataFrame:
    """One line per triple: UNet rows, kept pairs, correct kept pairs, covered (0/1). The recipe's
    measured rows are shared out by candidate (the counters are per block), a candidate stopped at
    its preview counting ``stopped_fraction`` of one rendered to the end."""
    weight = np.where(rows["status"].to_numpy() == "stopped", stopped_fraction, 1.0)
    scored, kept = kept_mask(rows, t, max_pairs)
    chosen = scored.assign(kept=kept, correct=kept & scored["correct_full"].fillna(False).astype(bool),
                           rows=unet_rows * weight / weight.sum())
    table = chosen.groupby("triple_id").agg(rows=("rows", "sum"), kept=("kept", "sum"), correct=("correct", "sum"))
    table = table.reindex([tr.triple_id for tr in triples], fill_value=0).astype(float)
    return table.assign(covered=(table["kept"] > 0).astype(float))


def bootstrap(sets: list[tuple[pd.DataFrame, pd.DataFrame]], draws: int = 2000, seed: int = 0) -> dict:
    """How much the three target figures move with the draw of triples: a paired bootstrap (both
    recipes resampled on the same triples, each set within itself, then summed as ``pooled`` does).
    Gives each figure's 95 % interval and the share of draws in which all three targets hold."""
    rng = np.random.default_rng(seed)
    cols = ["rows", "kept", "correct", "covered"]
    total = np.zeros((draws, 8))
    for paper, ours in sets:
        x = np.hstack([paper[cols].to_numpy(), ours.loc[paper.index, cols].to_numpy()])
        total += x[rng.integers(0, len(x), size=(draws, len(x)))].sum(axis=1)
    p_rows, p_kept, p_correct, p_covered, o_rows, o_kept, o_correct, o_covered = total.T
    with np.errstate(divide="ignore", invalid="ignore"):
        figures = {"rows_per_kept_pair_ratio": (p_rows / p_kept) / (o_rows / o_kept),
                   "precision_difference": o_correct / o_kept - p_correct / p_kept,
                   "coverage_ratio": o_covered / p_covered}
    met = np.all([np.nan_to_num(v, nan=-np.inf) >= TARGETS[k] for k, v in figures.items()], axis=0)
    return {"draws": draws, "ci95": {k: [round(float(q), 4) for q in np.nanpercentile(v, [2.5, 97.5])]
                                     for k, v in figures.items()},
            "all_targets_met_share": round(float(met.mean()), 4)}


def replay(rows: pd.DataFrame, cfg: PipelineConfig, rule, t: Thresholds, max_pairs: int, rows_per_candidate: float) -> dict:
    """What ``cfg``'s waves and ``rule`` would have done on triples rendered to the end with previews
    (the calibration run): the same pure decisions Stage 2 takes, on stored scores. Rows are
    estimated: a candidate costs the run's mean, a stopped one ``fraction`` of it. It chooses the
    waves on other triples than the ones the bench reports."""
    w = cfg.render.waves
    stop = ~rule.keep(rows[[f"preview_{m}" for m in FEATURES]].to_numpy(dtype=float))
    finals = rows.assign(stopped=stop)
    n_waves = total_waves(cfg.render.num_candidates, w) if w else 1
    spent, rendered = 0.0, []
    for _, g in finals.sort_values(["triple_id", "index"]).groupby("triple_id", sort=False):
        progress = TripleProgress()
        for wave in range(n_waves):
            part = g[g["index"] // w.size == wave] if w else g
            spent += rows_per_candidate * (part["stopped"] * cfg.render.preview.fraction + ~part["stopped"]).sum()
            live = part[~part["stopped"]]
            rendered.append(live)
            if not w:
                break
            scores = [None if s else {m: r[m] for m in METRICS} for s, (_, r) in zip(part["stopped"], part.iterrows())]
            progress = after_wave(progress, scores, cfg.filter, w)
            if progress.state(w, n_waves) != "open":
                break
    live = pd.concat(rendered).assign(status="ok").reset_index(drop=True)
    kept = live[Selector(live).select(t, max_pairs)]
    n = len(kept)
    return {"triples": int(rows["triple_id"].nunique()), "kept_pairs": n,
            "rows_per_kept_pair": round(float(spent) / n, 1) if n else None,
            "precision": round(float(kept["correct_full"].mean()), 4) if n else None,
            "coverage": round(kept["triple_id"].nunique() / rows["triple_id"].nunique(), 4),
            "coverage_all_rendered": round(rows[Selector(rows.assign(status="ok")).select(t, max_pairs)]["triple_id"]
                                           .nunique() / rows["triple_id"].nunique(), 4)}


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = [int(v) for v in args.seeds.split(",")] if args.seeds else [args.seed]
    results, tables = [], []
    for seed in seeds:
        result, table = bench_set(args, seed)
        results.append(result)
        tables.append(table)
        print(json.dumps(result), flush=True)
    if len(results) > 1:
        print(json.dumps({**pooled(results), "bootstrap": bootstrap(tables)}))
    return 0


# The targets: >= 5x fewer rows per kept pair, precision no lower (within 0.01), coverage >= 95 %.
TARGETS = {"rows_per_kept_pair_ratio": 5.0, "precision_difference": -0.01, "coverage_ratio": 0.95}


def judged(paper: dict, ours: dict) -> dict:
    """The three target figures of two recipes' outcomes, the standard error of the precision
    difference (two binomials: at ~300 kept pairs a set it is near 0.036), and which targets hold."""
    figures = {"rows_per_kept_pair_ratio": round(paper["rows_per_kept_pair"] / ours["rows_per_kept_pair"], 2),
               "precision_difference": round(ours["precision"] - paper["precision"], 4),
               "coverage_ratio": round(ours["coverage"] / paper["coverage"], 4)}
    se = sum(r["precision"] * (1 - r["precision"]) / r["kept_pairs"] for r in (paper, ours)) ** 0.5
    return {**figures, "precision_difference_se": round(se, 4),
            "targets_met": {k: figures[k] >= bound for k, bound in TARGETS.items()}}


def pooled(results: list[dict]) -> dict:
    """Several sets of triples (``--seeds``) as one: rows, kept pairs, correct pairs and covered triples
    summed per recipe (each set judged by its own thresholds), so a target is judged on all at once."""
    out = {"seeds": [r["seed"] for r in results], "triples": sum(r["triples"] for r in results)}
    for name in ("paper", "ours"):
        rows, kept = (sum(r[name][key] for r in results) for key in ("unet_rows", "kept_pairs"))
        out[name] = {"unet_rows": rows, "kept_pairs": kept, "rows_per_kept_pair": round(rows / kept, 1),
                     "precision": round(sum((r[name]["precision"] or 0) * r[name]["kept_pairs"] for r in results)
                                        / kept, 4),
                     "coverage": round(sum(r[name]["coverage"] * r["triples"] for r in results) / out["triples"], 4),
                     "kept_fraction": round(kept / sum(r[name]["candidates_started"] for r in results), 4)}
    p, o = out["paper"], out["ours"]
    out.update(rows_per_kept_pair_paper=p["rows_per_kept_pair"], rows_per_kept_pair_ours=o["rows_per_kept_pair"],
               precision_paper=p["precision"], precision_ours=o["precision"], coverage_paper=p["coverage"],
               coverage_ours=o["coverage"], kept_fraction_paper=p["kept_fraction"], **judged(p, o),
               per_seed={str(r["seed"]): {k: r[k] for k in (*TARGETS, "targets_met")} for r in results})
    return out


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="folder for the cached blocks and preview rules")
    ap.add_argument("--pipeline", default="shapes-fast", help="our recipe's pipeline (pipelines.yaml)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override our recipe's config")
    ap.add_argument("--triples", type=int, default=200)
    ap.add_argument("--calibration-triples", type=int, default=60)
    ap.add_argument("--calibration-candidates", type=int, default=32,
                    help="per calibration triple: the rule judges one candidate at a time, so this sets the sample "
                         "size, not ours' budget (its replay sees only these)")
    ap.add_argument("--candidates", type=int, default=16, help="per triple, the paper recipe's")
    ap.add_argument("--ours-candidates", type=int, default=None,
                    help="the most ours starts per triple (default: its pipeline's render.num_candidates)")
    ap.add_argument("--paper-steps", type=int, default=50)
    ap.add_argument("--max-kept-fraction", type=float, default=0.10)
    ap.add_argument("--target-recall", type=float, default=0.95)
    ap.add_argument("--rule-kind", choices=("logistic", "threshold"), default="logistic")
    ap.add_argument("--block", type=int, default=8, help="triples per cached block")
    ap.add_argument("--seed", type=int, default=0, help="which set of triples (and calibration triples)")
    ap.add_argument("--seeds", default="", metavar="S1,S2",
                    help="several sets, one JSON line each, then one line for all of them pooled (the last)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--jobs", type=int, default=1, help="processes rendering blocks side by side")
    ap.add_argument("--steps-study", default="", metavar="S1,S2",
                    help="also render the paper recipe at these step counts on the same triples and report pair "
                         "quality per step count (steps_study)")
    return ap.parse_args(argv)


def calibration_config(pipeline: str, ours_set: list[str], candidates: int) -> PipelineConfig:
    """Ours' render settings with every candidate rendered to the end and its preview recorded. The
    rule judges one candidate at a time, so ``candidates`` a triple is a sample size: ours' budget
    (its waves) may change without rendering the calibration again."""
    return load_config(pipeline, [*ours_set, f"render.num_candidates={candidates}", "render.waves=null",
                                  "render.preview.rule="])


def bench_set(args: argparse.Namespace, seed: int) -> tuple[dict, tuple[pd.DataFrame, pd.DataFrame]]:
    """Both recipes on the set of triples of ``seed``: the result of one set, and both recipes'
    per-triple tables (``per_triple``) for the bootstrap."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    ours_budget = [] if args.ours_candidates is None else [f"render.num_candidates={args.ours_candidates}"]
    ours_set = ours_budget + args.set
    ours = load_config(args.pipeline, ours_set)   # a bad --set fails here, before hours of rendering
    paper = load_config("shapes", [f"render.num_candidates={args.candidates}", f"render.steps={args.paper_steps}",
                                   "render.candidates_per_seed=1", f"render.resources.batch_size={args.candidates}"])
    triples = make_triples(args.triples, seed, "bench")
    max_pairs = paper.filter.max_pairs_per_triple
    workers = dict(jobs=args.jobs, threads=args.threads)   # how blocks are rendered

    # 1. The paper recipe: every candidate to the end. Its scores fix the (strict) thresholds.
    # 2. Calibration: other triples, our steps, nothing stopped, previews recorded. Its blocks do not
    #    depend on the thresholds (no waves), so they render beside the paper recipe's.
    calibration = calibration_config(args.pipeline, ours_set, args.calibration_candidates)
    calibration_triples = make_triples(args.calibration_triples, seed, "calibration")
    paper_folder, paper_todo = recipe_blocks("paper", paper, triples, out, args.block)
    cal_folder, cal_todo = recipe_blocks("calibration", calibration, calibration_triples, out, args.block, previews=True)
    render_all(paper_todo + cal_todo, **workers)
    paper_rows, paper_counters = read_recipe(paper_folder, len(triples), args.block)
    t = choose_thresholds(paper_rows.assign(status=np.where(paper_rows["sim_0"].notna(), "ok", "failed")),
                          Thresholds.from_config(paper.filter), max_pairs, args.max_kept_fraction)
    filter_set = [f"filter.{k}={v}" for k, v in t.as_dict().items()]

    # Next to the calibration it is fitted on: sets of other seeds, benched side by side, keep their own.
    rule_path = cal_folder / f"preview_rule-{args.rule_kind}-{args.target_recall}.json"
    cal_rows, cal_counters = read_recipe(cal_folder, len(calibration_triples), args.block)
    cal_scored = cal_rows.assign(status=np.where(cal_rows["sim_0"].notna(), "ok", "failed"))
    label = passes(cal_scored, t)
    x = cal_rows[[f"preview_{m}" for m in FEATURES]].to_numpy(dtype=float)
    # Fitting is instant and pure: refit every time (the thresholds, hence the labels, may have moved).
    rule = fit_rule(x, label, args.target_recall, calibration.render.preview.fraction, calibration.render.steps,
                    args.rule_kind, source=str(cal_folder))
    save_rule(rule, rule_path)

    # 3. Ours: waves, previews stopped by the rule, our steps, the same thresholds.
    ours = load_config(args.pipeline, [*ours_set, *filter_set,
                                       f"render.preview.rule={rule_path}"])
    ours_rows, ours_counters = run_recipe("ours", ours, triples, out, args.block, previews=True, **workers)

    replayed = replay(cal_rows, ours, rule, t, max_pairs, cal_counters["unet_rows"] / max(len(cal_rows), 1))
    p = outcome(paper_rows, triples, t, max_pairs, paper_counters["unet_rows"], paper_counters["seconds"])
    o = outcome(ours_rows, triples, t, max_pairs, ours_counters["unet_rows"], ours_counters["seconds"])
    previewed = ours_rows[ours_rows["preview_sim_0"].notna()]
    result = {
        "seed": seed, "triples": len(triples), "candidates_per_triple": args.candidates,
        "ours_candidates_per_triple": ours.render.num_candidates, "paper_steps": args.paper_steps,
        "ours_steps": ours.render.steps, "ours_pipeline": args.pipeline, "thresholds": t.as_dict(),
        "waves": ours.render.waves.model_dump() if ours.render.waves else None,
        "preview": {"fraction": ours.render.preview.fraction, "rule": rule.kind, "target_recall": rule.target_recall,
                    "calibration": rule.calibration,
                    "recall_on_calibration": rule_metrics(rule, x, label)["recall"]} if ours.render.preview else None,
        "paper": p, "ours": o,
        # Calibration is paid once per model and settings, not per triple: apart from ours' rows.
        "calibration": {"triples": args.calibration_triples, "candidates_per_triple": args.calibration_candidates,
                        "unet_rows": cal_counters["unet_rows"],
                        "ours_replayed": replayed},
        "ours_levers": {"candidates_skipped_by_waves": ours_counters.get("skipped", 0),
                        "unet_rows_saved_waves": ours_counters.get("unet_rows_saved_waves", 0),
                        "candidates_stopped_by_preview": int((ours_rows["status"] == "stopped").sum()),
                        "unet_rows_saved_preview": ours_counters.get("unet_rows_saved_preview", 0),
                        "previewed": int(len(previewed))},
        "seconds": round(time.perf_counter() - t_start, 1),
        "rows_per_kept_pair_paper": p["rows_per_kept_pair"], "rows_per_kept_pair_ours": o["rows_per_kept_pair"],
        "precision_paper": p["precision"], "precision_ours": o["precision"],
        "coverage_paper": p["coverage"], "coverage_ours": o["coverage"], "kept_fraction_paper": p["kept_fraction"],
    }
    # The steps lever alone: the paper recipe at fewer steps, the same triples, candidates and thresholds.
    study = {args.paper_steps: p}
    for steps in [int(v) for v in args.steps_study.split(",") if v.strip()]:
        cfg = paper.model_copy(deep=True)
        cfg.render.steps = steps
        rows, counters = run_recipe("paper", cfg, triples, out, args.block, **workers)
        study[steps] = outcome(rows, triples, t, max_pairs, counters["unet_rows"], counters["seconds"])
    if len(study) > 1:
        result["steps_study"] = {str(k): {key: v[key] for key in ("correct_full_rate_all", "precision", "coverage",
                                                                   "kept_fraction", "rows_per_kept_pair")}
                                 for k, v in sorted(study.items())}
    tables = (per_triple(paper_rows, triples, t, max_pairs, paper_counters["unet_rows"], 1.0),
              per_triple(ours_rows, triples, t, max_pairs, ours_counters["unet_rows"],
                         ours.render.preview.fraction if ours.render.preview else 1.0))
    if p["kept_pairs"] and o["kept_pairs"]:
        result.update(judged(p, o), bootstrap=bootstrap([tables]))
    return result, tables


if __name__ == "__main__":
    sys.exit(main())
