"""Engine ``ray``: the per-record chain of :mod:`apex_models.data.transforms` on Ray Data.

How the work is split:

- **reading** stays a stream in the driver (one XML dump or tar archive is one
  sequential stream; several dumps are read one after the other, as locally);
- the stream is cut into windows of ``window`` records; each window becomes a Ray
  Dataset whose ``map_batches`` runs :func:`transform_record` (licence filter, scrub,
  decontaminate, and the dedup keys: normalised-text digest and MinHash signature,
  the costly half of dedup) on the workers, in parallel;
- **dedup's global view** stays in the driver: the windows' outcomes come back in
  stream order (``preserve_order``) and their precomputed keys are looked up and
  inserted in the on-disk LSH index (:class:`~apex_models.data.dedup.Deduplicator`),
  cheap indexed look-ups, so the same first occurrences are kept as by engine ``local``.

Memory stays bounded by the window, whatever the corpus size. Records travel as JSON
strings so heterogeneous per-source fields never meet Arrow's schema inference. The
:class:`~apex_models.data.transforms.Transforms` (benchmark index included) is put in
the object store once and cached in each worker process.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Iterable, Iterator

import numpy as np

from apex_models.data.transforms import Outcome, Transforms, transform_record

log = logging.getLogger(__name__)

_WORKER_CACHE: dict[str, Transforms] = {}


def start_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to `address` (a real cluster) or start a local one; no-op when already up.

    The workers must import this very package, not whatever copy their Python finds: a
    local cluster gets the driver's package folder first on PYTHONPATH; a remote one gets
    the package uploaded as a ``py_modules`` runtime environment.
    """
    import os
    from pathlib import Path

    import ray

    import apex_models

    if ray.is_initialized():
        return
    package = Path(apex_models.__file__).resolve().parent
    if address:
        runtime_env = {"py_modules": [str(package)]}
    else:
        paths = [str(package.parent)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(paths)}}
    log.info("starting Ray (%s)", address or f"local, num_cpus={num_cpus}")
    ray.init(address=address, num_cpus=None if address else num_cpus, include_dashboard=False,
             log_to_driver=False, ignore_reinit_error=True, runtime_env=runtime_env)


def _transforms(holder: list) -> Transforms:
    import ray

    key = holder[0].hex()
    if key not in _WORKER_CACHE:
        _WORKER_CACHE.clear()  # one ingest run at a time per worker
        _WORKER_CACHE[key] = ray.get(holder[0])
    return _WORKER_CACHE[key]


def transform_batch(batch: dict[str, np.ndarray], holder: list) -> dict[str, list]:
    """``map_batches`` function: JSON records in, outcomes as plain columns out."""
    t = _transforms(holder)
    out: dict[str, list] = {"record": [], "dropped": [], "license": [], "scrub": [], "digest": [], "signature": []}
    for text in batch["record"]:
        o = transform_record(json.loads(text), t)
        out["record"].append(json.dumps(o.record, ensure_ascii=False) if o.record is not None else "")
        out["dropped"].append(o.dropped or "")
        out["license"].append(o.license)
        out["scrub"].append(json.dumps(dict(o.scrub)))
        out["digest"].append(o.digest)
        out["signature"].append(o.signature.tobytes() if o.signature is not None else b"")
    return out


def _outcome(row: dict[str, Any]) -> Outcome:
    from collections import Counter

    sig = row["signature"]
    return Outcome(json.loads(row["record"]) if row["record"] else None, dropped=row["dropped"] or None,
                   license=row["license"], scrub=Counter(json.loads(row["scrub"])), digest=bytes(row["digest"]),
                   signature=np.frombuffer(bytes(sig), dtype=np.uint32) if len(sig) else None)


def _windows(records: Iterable[dict], size: int) -> Iterator[list[str]]:
    window: list[str] = []
    for record in records:
        window.append(json.dumps(record, ensure_ascii=False))
        if len(window) >= size:
            yield window
            window = []
    if window:
        yield window


def ray_outcomes(records: Iterable[dict], t: Transforms, window: int = 20000, batch_size: int = 256,
                 ) -> Iterator[Outcome]:
    """Engine ``ray``: outcomes of :func:`transform_record` for `records`, in their order.

    Needs Ray started (:func:`start_ray`). `window` bounds the records in flight (and
    the driver's memory); `batch_size` is the records per ``map_batches`` call.
    """
    import ray
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # dedup keeps first occurrences: order matters
    ctx.enable_progress_bars = False
    holder = [ray.put(t)]
    parallelism = max(1, int(ray.cluster_resources().get("CPU", 1)))
    for texts in _windows(records, window):
        blocks = max(1, min(len(texts) // batch_size, 4 * parallelism))
        ds = ray.data.from_items([{"record": s} for s in texts], override_num_blocks=blocks)
        ds = ds.map_batches(transform_batch, fn_kwargs={"holder": holder}, batch_size=batch_size,
                            batch_format="numpy")
        for row in ds.iter_rows():
            yield _outcome(row)
