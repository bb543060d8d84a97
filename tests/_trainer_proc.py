"""Runs a small Trainer in its own process (fresh TF runtime) for the distributed and resume tests.

usage: python tests/_trainer_proc.py OUT_JSON RUN_DIR [--strategy S] [--logical-cpus N]
       [--steps N] [--batch B] [--micro M] [--sigterm-after K]
"""

import argparse
import json
import os
import signal
import sys

import numpy as np
import tensorflow as tf

ap = argparse.ArgumentParser()
ap.add_argument("out_json")
ap.add_argument("run_dir")
ap.add_argument("--strategy", default="default")
ap.add_argument("--logical-cpus", type=int, default=1)
ap.add_argument("--steps", type=int, default=4)
ap.add_argument("--batch", type=int, default=8)
ap.add_argument("--micro", type=int, default=None)
ap.add_argument("--sigterm-after", type=int, default=None)
ap.add_argument("--dropout", type=float, default=0.0)
ap.add_argument("--optimizer", default="adamw")
ap.add_argument("--schedule", default="cosine")
ap.add_argument("--arch", default="", help="GPTConfig overrides, e.g. position=rope,mlp=relu2")
args = ap.parse_args()

if args.logical_cpus > 1:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * args.logical_cpus)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.fixtures import synthetic_dataset, tiny_config, tiny_tokenizer  # noqa: E402
from training.trainer import TrainConfig, Trainer  # noqa: E402
from training.strategy import make_strategy  # noqa: E402

strategy = make_strategy(args.strategy)
tok = tiny_tokenizer()
cfg = TrainConfig(steps=args.steps, batch_size=args.batch, micro_batch_size=args.micro, seq_len=16, lr=3e-3,
                  warmup_steps=2, eval_every=1000, save_every=2, log_every=1, optimizer=args.optimizer,
                  schedule=args.schedule)
arch = dict(kv.split("=") for kv in args.arch.split(",") if kv)
arch = {k: (v == "true" if v in ("true", "false") else float(v) if k == "logit_softcap" else v) for k, v in arch.items()}
trainer = Trainer(tiny_config(tok).replace(dropout=args.dropout, **arch), tok, cfg, strategy, args.run_dir,
                  synthetic_dataset)

if args.sigterm_after is not None:
    step_fn, calls = trainer._train_step, []

    def step_then_signal(iterator):
        out = step_fn(iterator)
        calls.append(1)
        if len(calls) == args.sigterm_after:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    trainer._train_step = step_then_signal

try:
    metrics = trainer.train(progress=False)
    status = "done"
except KeyboardInterrupt:
    metrics, status = {"step": int(trainer.step)}, "interrupted"
weights = [np.asarray(w).tolist() for w in trainer.model.get_weights()]
with open(args.out_json, "w") as f:
    json.dump({"status": status, "metrics": metrics, "weights": weights, "replicas": strategy.num_replicas_in_sync}, f)
