"""Runs `training.jobs.align` in its own process (fresh TF runtime) for the resume test.

usage: python tests/_align_proc.py OUT_JSON RUN_DIR CHAT_DIR DATA [--steps N] [--sigterm-after K] [--dropout P]
"""

import argparse
import json
import os
import signal
import sys

import numpy as np

ap = argparse.ArgumentParser()
ap.add_argument("out_json")
ap.add_argument("run_dir")
ap.add_argument("chat_dir")
ap.add_argument("data")
ap.add_argument("--steps", type=int, default=6)
ap.add_argument("--sigterm-after", type=int, default=None)
ap.add_argument("--dropout", type=float, default=0.0)
args = ap.parse_args()

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tfchat.checkpoint.model_dir import load_model  # noqa: E402
from training import jobs, trainer  # noqa: E402

if args.sigterm_after is not None:
    make_step, calls = trainer.Trainer._make_train_step, []

    def make_step_then_signal(self):
        step_fn = make_step(self)

        def step(iterator):
            out = step_fn(iterator)
            calls.append(1)
            if len(calls) == args.sigterm_after:
                os.kill(os.getpid(), signal.SIGTERM)
            return out

        return step

    trainer.Trainer._make_train_step = make_step_then_signal

cfg = trainer.TrainConfig(steps=args.steps, batch_size=4, seq_len=64, lr=3e-3, warmup_steps=2, eval_every=1000,
                          save_every=2, log_every=1, eval_batches=2)
opts = jobs.JobOptions(out=args.run_dir, data=args.data, train=cfg, strategy="default", progress=False,
                       init_from=args.chat_dir, dropout=args.dropout, beta=0.1, loss="dpo")
try:
    metrics = jobs.align(opts)
    status = "done"
except KeyboardInterrupt:
    metrics, status = {}, "interrupted"
model = load_model(args.run_dir)
weights = [np.asarray(w).tolist() for w in model.model.get_weights()]
with open(args.out_json, "w") as f:
    json.dump({"status": status, "step": model.metadata["step"], "loss": metrics.get("loss"),
               "val_loss": metrics.get("val_loss"), "weights": weights}, f)
