"""Training throughput of the real training step (the one `training.pretrain` runs).

    python -m benchmarks.train --preset small --seq-len 256 --batch-size 16 --precision bf16

Prints one JSON object: tokens/s, step time, MFU (model FLOP/s over the peak
matmul FLOP/s of the same dtype, measured in the same run) and the machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

from benchmarks.common import emit
from tfchat import cli
from tfchat.config import PRESETS, GPTConfig
from training.cli import PRECISIONS, STRATEGIES

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def random_batches(vocab_size: int, seq_len: int):
    import tensorflow as tf

    def fn(ctx, micro):
        ids = tf.data.Dataset.random(seed=0).map(lambda x: tf.cast(x % vocab_size, tf.int32))
        windows = ids.batch(seq_len + 1, drop_remainder=True)
        ds = windows.map(lambda w: {"token_ids": w[:-1], "targets": w[1:], "loss_mask": tf.ones([seq_len])})
        return ds.batch(micro, drop_remainder=True).repeat()

    return fn


def run(preset: str, seq_len: int, batch_size: int, precision: str, steps: int, warmup: int,
        xla: bool = False, strategy: str = "default", micro_batch_size: int | None = None,
        overrides: dict | None = None, optimizer: str = "adamw") -> dict:
    from tfchat.model import flops_per_token
    from tfchat.text.tokenizer import train_tokenizer
    from training.hardware import measure_peak_flops
    from training.strategy import make_strategy
    from training.trainer import TrainConfig, Trainer

    tok = train_tokenizer(["benchmark text"] * 10, vocab_size=400)  # only its special ids are used
    config = GPTConfig.from_preset(preset, **(overrides or {}))
    cfg = TrainConfig(steps=steps + warmup, batch_size=batch_size, micro_batch_size=micro_batch_size,
                      seq_len=seq_len, precision=precision, xla=xla, warmup_steps=1, optimizer=optimizer)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(config, tok, cfg, make_strategy(strategy), out, random_batches(config.vocab_size, seq_len))
        iterator = trainer._train_iterator(0)
        for _ in range(warmup):
            float(trainer._train_step(iterator)[0]["loss"])
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            float(trainer._train_step(iterator)[0]["loss"])
            times.append(time.perf_counter() - start)
    step_time = statistics.median(times)
    tokens = batch_size * seq_len
    peak = measure_peak_flops(DTYPES[precision])
    model_flops = flops_per_token(config, seq_len) * tokens / step_time
    return {
        "benchmark": "train", "preset": preset, "overrides": overrides or {}, "optimizer": optimizer,
        "seq_len": seq_len, "batch_size": batch_size, "precision": precision, "xla": xla, "strategy": strategy,
        "steps": steps,
        "step_time_s": step_time, "tokens_per_sec": tokens / step_time,
        "model_tflops": model_flops / 1e12, "peak_matmul_tflops": peak / 1e12, "mfu": model_flops / peak,
    }


def _overrides(text: str) -> dict:
    """"position=rope,qk_norm=true,logit_softcap=15" -> typed GPTConfig overrides."""
    import dataclasses

    types = {f.name: f.type for f in dataclasses.fields(GPTConfig)}
    out = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in types:
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE with a GPTConfig field, got {item!r}")
        kind = types[key]
        out[key] = (value.lower() == "true" if kind == "bool" else int(value) if kind == "int"
                    else float(value) if kind == "float" else value)
    return out


def main(argv=None) -> int:
    p = cli.parser("python -m benchmarks.train", __doc__)
    p.add_argument("--preset", choices=list(PRESETS), default="small")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--micro-batch-size", type=int, default=None)
    p.add_argument("--precision", choices=list(PRECISIONS), nargs="+", default=["fp32", "bf16"])
    p.add_argument("--xla", action="store_true")
    p.add_argument("--strategy", choices=STRATEGIES, default="default")
    p.add_argument("--arch", type=_overrides, default={}, metavar="KEY=VALUE,...",
                   help="GPTConfig fields over the preset's, e.g. position=rope,mlp=relu2,qk_norm=true")
    p.add_argument("--optimizer", choices=("adamw", "muon"), default="adamw")
    p.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=3)
    args = p.parse_args(argv)

    def body() -> int:
        cli.setup(args.verbose)
        for precision in args.precision:
            emit(run(args.preset, args.seq_len, args.batch_size, precision, args.steps, args.warmup, args.xla,
                     args.strategy, args.micro_batch_size, args.arch, args.optimizer))
        return 0

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(cli.run(main))  # a known failure: one "error: ..." line
