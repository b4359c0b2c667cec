"""The Ray Data plumbing every stage shares: shard ids -> actor pool -> shard files + stats.

A stage is a worker class with ``process_shard(shard: int) -> ShardStats``; it loads its
model once in ``__init__`` and writes each shard through the RunStore (atomic files, stats
last). Ray Data feeds the not-yet-done shard ids to a pool of such actors, one shard per
call, with the CPUs/GPUs per actor from the config. ``ray.init()`` is local unless an
address is given (``--ray-address``), so the same code runs on a laptop or a cluster.

A shard whose worker raises comes back as an error row rather than a Ray exception, because
Ray Data hands the driver its own wrapper with the worker's message lost; the driver stops at
the first one with ``StageFailed`` naming the shard and the worker's error.
"""
from __future__ import annotations

import logging
import warnings
from typing import Any, Callable

import numpy as np

from .config import Resources
from .records import ShardStats

log = logging.getLogger(__name__)

_RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune")
_ray_verbose = False


def quiet_ray_logging(verbose: bool | None = None) -> None:
    """Ray's own log lines and progress bars only with ``-v``: off a terminal, Ray Data logs
    "Total Progress: 0/?" every 10 s. Our lines (datagen.*) stay. Applied again after Ray is
    imported, because importing Ray configures its loggers."""
    global _ray_verbose
    if verbose is not None:
        _ray_verbose = verbose
    if not _ray_verbose:
        for name in _RAY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


class StageFailed(RuntimeError):
    """A stage cannot go on (a shard's worker failed, or nothing was kept): the message says why."""


class _ShardActor:
    """Ray Data callable class: builds the stage worker once, then processes shard ids."""

    def __init__(self, factory: Callable[[], Any]):
        self.worker = factory()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import json

        import traceback

        rows = []
        for shard in batch["shard"]:
            try:
                rows.append(json.dumps(self.worker.process_shard(int(shard)).to_row()))
            except Exception as e:  # noqa: BLE001 — the driver stops the stage with this message
                rows.append(json.dumps({"failed_shard": int(shard), "error": f"{type(e).__name__}: {e}",
                                        "traceback": traceback.format_exc()}))
        return {"stats": np.array(rows, dtype=object)}


def init_ray(address: str | None = None) -> None:
    """Connect to ``address`` (a cluster) or start/attach a local Ray once per process."""
    import ray
    import ray.data  # noqa: F401  (configures the ray.data logger: quiet it after)

    quiet_ray_logging()
    if ray.is_initialized():
        return
    # ray.init sets the "ray" logger's level itself: INFO unless told otherwise
    level = logging.INFO if _ray_verbose else logging.WARNING
    if address:
        ray.init(address=address, log_to_driver=False, logging_level=level)
    else:
        # "local": always a private Ray. Without an address ray.init joins the last cluster that
        # `ray start` made on this machine (/tmp/ray/ray_current_cluster), maybe someone else's.
        ray.init(address="local", include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1",
                 logging_level=level)


def run_shards(
    stage: str,
    factory: Callable[[], Any],
    shards: list[int],
    resources: Resources,
    ray_address: str | None = None,
) -> list[ShardStats]:
    """Process ``shards`` with a Ray Data actor pool of ``factory()`` workers; return their stats.

    ``factory`` must be picklable (a top-level function or a functools.partial of one). Raises
    StageFailed at the first shard whose worker raised; shards already done stay done.
    """
    import json

    import ray

    if not shards:
        return []
    init_ray(ray_address)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = True   # off a terminal they are log lines of ray.data, quiet unless -v
    ctx.execution_options.preserve_order = False
    # Ray Data (2.60) stops a dataset after 30 min without output; one unit may legitimately take
    # longer (a slow GPU, a large shard_size). A killed actor is retried; a hung one is the user's to see.
    if hasattr(ctx, "execution_no_progress_timeout_s"):
        ctx.execution_no_progress_timeout_s = -1
    actors = max(1, min(resources.actors, len(shards)))
    log.info("%s: %d shard(s) on %d actor(s) (cpus=%s gpus=%s each)", stage, len(shards), actors,
             resources.num_cpus, resources.num_gpus)
    ds = ray.data.from_items([{"shard": s} for s in shards], override_num_blocks=len(shards))
    with warnings.catch_warnings():  # the two bounds below are **ray_remote_args: pyproject.toml pins Ray for them
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        out = ds.map_batches(
            _ShardActor,
            fn_constructor_kwargs={"factory": factory},
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=resources.num_cpus,
            num_gpus=resources.num_gpus,
            max_restarts=2,      # actors: restart a dead actor and retry its shard (was max_retries, a task-only option)
            max_task_retries=2,
        )
    from tqdm import tqdm

    done = []
    items_out = 0
    # A bar on a terminal (units, rate, ETA, items out); off a terminal the log line per shard says it.
    with tqdm(total=len(shards), desc=stage, unit="shard", disable=None, dynamic_ncols=True) as bar:
        for r in out.iter_rows():
            row = json.loads(r["stats"])
            if "failed_shard" in row:
                log.error("%s shard %d failed:\n%s", stage, row["failed_shard"], row["traceback"])
                raise StageFailed(f"{stage} shard {row['failed_shard']} failed (not marked done): {row['error']}")
            done.append(ShardStats.from_row(row))
            items_out += done[-1].count_out      # a running total: a paper stage has 112,500 shards
            bar.update(1)
            bar.set_postfix_str(f"{items_out:,} out")
            if bar.disable:
                log.info("%s: shard %d done in %.1f s (%d of %d)", stage, done[-1].shard, done[-1].seconds,
                         len(done), len(shards))
    return done
