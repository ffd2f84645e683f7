"""``clip-zoo embed --engine ray``: the plan's pending batches embedded by a Ray Data actor pool.

The driver builds the same plan and work dir as the in-process engine (:mod:`clip_zoo.embed`) and
hands Ray one row per pending batch (``shard``, ``kind``, ``values``). ``map_batches`` runs
:class:`EmbedActor` (a callable class: the model is loaded once per actor) with ``batch_size=1``,
so every actor encodes exactly the plan's batches — the same inputs, in the same batch, through the
same decode → preprocess → model code (:func:`clip_zoo.embed.encode_batch`): the embeddings are
bit-identical to the in-process engine's for a framework, batch size and thread count. Each actor
writes its batch's shard into the work dir atomically (the work dir must be on a file system every
node sees); the driver only counts. Ray Data restarts a dead actor and retries its batch
(``max_restarts=-1``, ``max_task_retries=-1``), and a shard is a file named by its batch, so a
retried batch is written once; a killed driver resumes from the finished shards like the local engine.
Ray is imported only here, only for ``--engine ray``.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Optional

import numpy as np

from .errors import CLIZooError

__all__ = ["run_ray", "EmbedActor"]

#: Internal test hook, never read from the environment: the batch whose first actor kills itself
#: with SIGKILL (once per work dir: a marker file records it), to test Ray's retries.
_test_kill_shard: Optional[int] = None
#: Internal test hook: seconds each actor sleeps after writing a shard (a test kills the driver halfway).
_test_batch_pause = 0.0


class EmbedActor:
    """Loads the model once; ``__call__`` embeds the batches of a Ray block and writes their shards."""

    def __init__(self, model: Optional[str], framework: str, threads: Optional[int], max_pixels: Optional[int],
                 work: str, digest: str, model_key: str, kill_shard: Optional[int] = None,
                 pause: float = 0.0, precision: str = "fp32") -> None:
        from .engines import load_encoder
        from .images import ImageLoader

        self.encoder = load_encoder(model, framework, threads, precision=precision)
        self.loader = ImageLoader(self.encoder.processor, threads, max_pixels=max_pixels, fingerprints=True)
        self.work, self.digest, self.model_key, self.kill_shard = Path(work), digest, model_key, kill_shard
        self.pause = pause

    def _maybe_die(self, k: int) -> None:
        marker = self.work / ".test-killed"
        if self.kill_shard == k and not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)

    def __call__(self, batch: dict) -> dict:
        from .embed import _merge, _shard_path, _write_shard, encode_batch

        done, dims = [], []
        for k, kind, values in zip(batch["shard"], batch["kind"], batch["values"]):
            self._maybe_die(int(k))
            values = [str(v) for v in values]
            embeds, ok, errors, keys = encode_batch(self.encoder, self.loader, str(kind), values)
            n = len(values)
            shard = _merge(n, None, list(range(n)), embeds, ok, errors, keys, self.model_key, self.digest)
            _write_shard(_shard_path(self.work, int(k)), shard)
            done.append(int(k))
            if self.pause:
                time.sleep(self.pause)
            dims.append(self.encoder.dim)
        return {"shard": np.asarray(done, np.int64), "dim": np.asarray(dims, np.int64)}


def _connect(address: Optional[str]) -> bool:
    """Connect to (or start) Ray; → whether this call started it (and should shut it down)."""
    try:
        import ray
    except ImportError:
        raise CLIZooError("--engine ray needs Ray, install it with: pip install 'clip-zoo[ray]'") from None
    if ray.is_initialized():
        return False
    ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    return True


def _pool_size(workers: Optional[int], cpus_per_actor: float) -> int:
    import ray

    if workers is not None:
        if workers < 1:
            raise CLIZooError("--workers must be at least 1, pass a positive number")
        return workers
    return max(1, int(ray.cluster_resources().get("CPU", 1) // max(cpus_per_actor, 1)))


def run_ray(plan: dict, work: Path, todo: list, runner, args) -> int:
    """Embed the batches ``todo`` (whole batches) on Ray; the shards land in ``work`` and are loaded
    into ``runner.kept``. → the embedding dimension."""
    from .embed import _progress, _read_shard, _shard_path

    started = _connect(getattr(args, "address", None))
    import ray

    try:
        rows = [{"shard": k, "kind": plan["items"][plan["batches"][k][0]][0],
                 "values": [v for _, v in plan["items"][slice(*plan["batches"][k])]]} for k, _ in todo]
        cpus = float(args.threads or 1)
        workers = _pool_size(getattr(args, "workers", None), cpus)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), 4 * workers)))
        ds = ds.map_batches(EmbedActor, batch_size=1, concurrency=workers, num_cpus=cpus,
                            fn_constructor_kwargs=dict(model=args.model, framework=plan["framework"],
                                                       threads=args.threads, max_pixels=getattr(args, "max_pixels", None),
                                                       work=str(work), digest=plan["digest"],
                                                       model_key=runner.model_key.result(),
                                                       kill_shard=_test_kill_shard, pause=_test_batch_pause,
                                                       precision=plan.get("precision", "fp32")))
        dim = None
        total = len(plan["items"])
        with _progress(total, total - sum(e - s for s, e in (plan["batches"][k] for k, _ in todo)),
                       args.progress) as bar:
            for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
                for k, d in zip(out["shard"], out["dim"]):
                    s, e = plan["batches"][int(k)]
                    shard = _read_shard(_shard_path(work, int(k)), e - s)
                    if shard is None:
                        raise CLIZooError(f"shard {k} was reported done but cannot be read, rerun the command")
                    runner.kept[int(k)] = shard
                    runner.computed += e - s
                    dim = int(d)
                    bar.update(e - s)
        missing = [k for k, _ in todo if runner.kept.get(k) is None or runner.kept[k]["plan"] != plan["digest"]]
        if missing:
            raise CLIZooError(f"{len(missing)} batches were not embedded by Ray, rerun the command to finish them")
        runner.preprocessing = _describe_processor(args)
        return dim
    finally:
        if started:
            ray.shutdown()


def _describe_processor(args) -> Optional[dict]:
    """The preprocessing of the model (for the Parquet manifest), without loading a framework."""
    from .embed_io import preprocessing
    from .engines import early_processor, resolve_model

    proc = early_processor(resolve_model(args.model))
    return preprocessing(proc) if proc is not None else None
