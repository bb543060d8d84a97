"""Picks the tf.distribute strategy and says which worker is the chief.

`auto`: TPUStrategy when a TPU cluster resolver finds one,
MultiWorkerMirroredStrategy when TF_CONFIG lists more than one worker,
MirroredStrategy with more than one GPU, else the default strategy.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import tempfile

import tensorflow as tf

from tfchat import atomic
from training.hardware import tpu_attached

log = logging.getLogger(__name__)

STRATEGIES = ("auto", "default", "mirrored", "multiworker", "tpu")


def _tf_config() -> dict:
    try:
        return json.loads(os.environ.get("TF_CONFIG", "") or "{}")
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON: {e}") from e


def _num_workers(tf_config: dict) -> int:
    cluster = tf_config.get("cluster", {})
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def _tpu_strategy():
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


_multi_worker_strategies: list = []  # built in this process, for `leave_together`


def make_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """Returns the strategy called `name` (one of STRATEGIES)."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; valid: {', '.join(STRATEGIES)}")
    if name == "auto":
        if tpu_attached():
            try:
                strategy = _tpu_strategy()
                log.info("Found a TPU: using TPUStrategy")
                return strategy
            except (ValueError, tf.errors.NotFoundError, tf.errors.UnavailableError, RuntimeError) as e:
                log.warning("TPU not usable (%s); falling back", e)
        if _num_workers(_tf_config()) > 1:
            name = "multiworker"
        elif len(tf.config.list_logical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "default"
    if name == "tpu":
        return _tpu_strategy()
    if name == "multiworker":
        _multi_worker_strategies.append(tf.distribute.MultiWorkerMirroredStrategy())
        return _multi_worker_strategies[-1]
    if name == "mirrored":
        # All GPUs; without any, all (logical) CPU devices.
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    return tf.distribute.get_strategy()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the one worker that writes summaries, checkpoints and the model directory."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type in (None, "worker") and task_id == 0 and not has_chief


def worker_dir(path: str, strategy: tf.distribute.Strategy) -> str:
    """`path` on the chief; on other workers a throwaway directory, removed when the process exits.

    Under MultiWorkerMirroredStrategy every worker must take part in a
    checkpoint save (it is a collective), but only the chief's copy is kept.
    A worker that was killed leaves its directory behind; the next worker
    with the same task on this machine removes it.
    """
    if is_chief(strategy):
        return path
    resolver = strategy.cluster_resolver
    name = f"tfchat-{resolver.task_type}-{resolver.task_id}"
    atomic.remove_stale_temps(tempfile.gettempdir(), name)
    scratch = atomic.temp_path(os.path.join(tempfile.gettempdir(), name))
    os.makedirs(scratch)
    atexit.register(shutil.rmtree, scratch, True)
    return scratch


def _multi_worker(strategy: tf.distribute.Strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and strategy.extended._num_workers > 1


def gather(strategy: tf.distribute.Strategy, value: float) -> list[float]:
    """`value` of every worker (a collective: every worker must call it); `[value]` with one worker."""
    if not _multi_worker(strategy):
        return [value]

    @tf.function
    def step():
        def replica():
            ctx = tf.distribute.get_replica_context()
            return ctx.all_gather(tf.constant([value], tf.float64), axis=0)
        return strategy.experimental_local_results(strategy.run(replica))[0]

    return [float(v) for v in step().numpy()]


def barrier(strategy: tf.distribute.Strategy) -> None:
    """Returns when every worker has reached it: workers leave together, so the chief's
    coordination service does not report the ones that finished first as crashed."""
    gather(strategy, 0.0)


def leave_together() -> bool:
    """A last barrier with the other workers of this process's MultiWorkerMirroredStrategy, if one was
    built; returns whether there was one. After it, a process has nothing left to say to its peers."""
    if not _multi_worker_strategies:
        return False
    barrier(_multi_worker_strategies[-1])
    return True
