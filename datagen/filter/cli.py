"""Subcommands of Stage 3: refilter, audit, label, export (all from stored scores, no GPU)."""
from __future__ import annotations

import functools
import json
import logging
import sys

log = logging.getLogger(__name__)


def _clear_errors(func):
    """Bad input (run folder, config, labels, CLIP) -> one clear line on stderr and exit code 2."""
    @functools.wraps(func)
    def wrapper(args):
        from datagen.clip.loading import ClipLoadError   # no torch: the CLIP factory imports it lazily
        from datagen.config import ConfigError

        from .labels import LabelError
        from .table import RunError

        try:
            return func(args)
        except (ConfigError, RunError, LabelError, ClipLoadError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2

    return wrapper


def _print(obj) -> None:
    print(json.dumps(obj, indent=1, sort_keys=True, default=str))


@_clear_errors
def _refilter(args) -> int:
    from .refilter import refilter

    info = refilter(args.run, args.set or [], export=args.export, reset=args.reset)
    print(f"selected {info['selected']} pairs from {info['triples_with_pairs']} of {info['triples']} triples "
          f"(was {info['previous_selected']}); {info['passing']} of {info['scored']} scored candidates pass "
          f"{info['thresholds']}, top {info['max_pairs_per_triple']} per triple; {info['seconds']} s")
    if info["selected_without_images"]:
        print(f"warning: {info['selected_without_images']} selected candidates are outside the keep bound "
              f"{info['keep_bound']}: no stored images, the export skips them")
    if args.export:
        made = info["export"]["export_shards"]
        print(f"exported {info['export']['pairs']} pairs: {made['written']} of {made['total']} export shards "
              f"rewritten (their filter shard's selection changed), {made['reused']} reused; files repacked")
    else:
        print(f"the export in {args.run}/export (if any) still holds the previous selection: "
              f"`editsynth export --run {args.run}` or refilter with --export")
    return 0


@_clear_errors
def _audit(args) -> int:
    from .audit import audit_run

    numbers = audit_run(args.run, labels_path=args.labels, target_precision=args.target_precision,
                        max_rows=args.max_rows, images_per_side=args.images)
    print(f"report: {numbers['html']}")
    _print(numbers["summary"])
    for name, res in numbers["labels"].items():
        print(f"against {name} labels ({res['labelled']}): {res['current']}; best F1: {res['best_f1']}")
    return 0


@_clear_errors
def _label(args) -> int:
    from .label import LabelServer

    server = LabelServer(args.run, n=args.n, seed=args.seed, host=args.host, port=args.port, labels_path=args.labels)
    print(f"labelling {len(server.items)} candidates at {server.url} (labels -> {server.labels.path}); Ctrl-C to stop")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()
    print(f"{len(server.labels.entries)} labels in {server.labels.path}")
    return 0


@_clear_errors
def _export(args) -> int:
    from datagen.config import load_run_config
    from datagen.store import RunStore

    from .export import export_run

    sets = list(args.set or [])
    if args.format:
        sets.append(f"export.formats=[{','.join(args.format)}]")
    cfg = load_run_config(args.run, sets)
    manifest = export_run(cfg, RunStore(args.run), out=args.out)
    _print({k: manifest[k] for k in ("pairs", "splits", "skipped")})
    return 0


def register(sub) -> None:
    p = sub.add_parser("refilter", help="re-select pairs from stored scores with new thresholds (no GPU)")
    p.add_argument("--run", required=True, help="run folder")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="filter.min_sim_0|min_sim_1|min_direction|min_image|max_pairs_per_triple, export.*")
    p.add_argument("--export", action="store_true", help="re-export the new selection")
    p.add_argument("--reset", action="store_true", help="start from the run's config, not the current selection")
    p.set_defaults(func=_refilter)

    p = sub.add_parser("audit", help="HTML report of the CLIP filter: distributions, threshold effects, "
                                     "precision/recall against labels")
    p.add_argument("--run", required=True, help="run folder")
    p.add_argument("--labels", help="labels file (CSV/JSON keyed by candidate_id); default <run>/labels/labels.json")
    p.add_argument("--target-precision", type=float, default=0.9, help="find the best setting meeting this precision")
    p.add_argument("--max-rows", type=int, default=200_000,
                   help="histograms, breakdowns, label figures and images on a sample of whole shards of about this "
                        "many rows, plus the triples of every human label (counts and sweeps are over every row)")
    p.add_argument("--images", type=int, default=6, help="candidates shown on each side of each threshold")
    p.set_defaults(func=_audit)

    p = sub.add_parser("label", help="label a random sample of candidates good/bad in the browser")
    p.add_argument("--run", required=True, help="run folder")
    p.add_argument("--n", type=int, default=100, help="sample size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--labels", help="labels file to write; default <run>/labels/labels.json")
    p.set_defaults(func=_label)

    p = sub.add_parser("export", help="write the selected pairs as webdataset shards and/or a HF parquet dataset")
    p.add_argument("--run", required=True, help="run folder")
    p.add_argument("--out", help="output folder; default <run>/export")
    p.add_argument("--format", action="append", choices=["webdataset", "hf"], help="only these formats")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="export.* overrides, e.g. export.image_format=jpg")
    p.set_defaults(func=_export)
