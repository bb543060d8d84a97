"""Generation speed: tokens/s, time to first token, time per token early vs late in the context.

    python -m benchmarks.generate [--preset small] [--model runs/chat] [--new-tokens 128] [--repeats 3]

Prints one JSON object. A random model of the preset's shape is used unless
`--model` is given. Everything runs through `tfchat.inference.generation.generate`
compiled with `tf.function` (no XLA), the same loop the SavedModel runs.

* `batch_N.tokens_per_s`: new tokens / wall time of a whole `generate` call
  (prompt of `--prompt-len` ids, `--new-tokens` new ids, no stop ids);
* `batch_N.decode_tokens_per_s`: the same without the prefill + first token;
* `time_to_first_token_ms`: a call with max_new_tokens=1 (prefill + sample);
* `ms_per_token_early` / `_late`: the marginal cost of 64 more tokens after a
  short prompt vs. after a prompt that fills the context up to the last 65
  positions; a ratio near 1 means the per-token cost stays flat.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time

import tensorflow as tf

from benchmarks.common import emit, machine

from tfchat.config import GPTConfig
from tfchat.inference.generation import compiled_generate
from tfchat.model import build_gpt


def _timer(fn, prompts, max_new: int, repeats: int) -> float:
    """Median seconds of `repeats` calls (after one warm-up)."""
    b = int(prompts.nrows())
    args = (
        prompts, tf.fill([b], max_new), tf.fill([b], 0.0), tf.fill([b], 0), tf.fill([b], 1.0), tf.fill([b], 0),
        tf.constant([], tf.int32),
    )
    fn(*args)[0].numpy()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*args)[0].numpy()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _prompts(batch: int, length: int, vocab: int) -> tf.RaggedTensor:
    ids = tf.random.stateless_uniform([batch, length], seed=[1, 2], minval=1, maxval=vocab, dtype=tf.int32)
    return tf.RaggedTensor.from_tensor(ids)


def run(model, new_tokens: int = 128, prompt_len: int = 16, batches=(1, 8), repeats: int = 3) -> dict:
    cfg_vocab, block = model.config.vocab_size, model.config.block_size
    fn = compiled_generate(model)
    new_tokens = min(new_tokens, block - prompt_len)
    result = {}
    for b in batches:
        prompts = _prompts(b, prompt_len, cfg_vocab)
        total = _timer(fn, prompts, new_tokens, repeats)
        first = _timer(fn, prompts, 1, repeats)
        result[f"batch_{b}"] = {
            "tokens_per_s": round(b * new_tokens / total, 1),
            "decode_tokens_per_s": round(b * (new_tokens - 1) / max(total - first, 1e-9), 1),
            "seconds": round(total, 3),
        }
        if b == batches[0]:
            result["time_to_first_token_ms"] = round(1000 * first, 2)
    # Marginal cost of 64 tokens, early (short prompt) vs late (context almost full).
    span = 64
    if block > 2 * (span + 1):
        per_token = {}
        for name, length in (("early", prompt_len), ("late", block - span - 1)):
            prompts = _prompts(1, length, cfg_vocab)
            t_long = _timer(fn, prompts, span + 1, repeats)
            t_short = _timer(fn, prompts, 1, repeats)
            per_token[name] = 1000 * (t_long - t_short) / span
        result["ms_per_token_early"] = round(per_token["early"], 3)
        result["ms_per_token_late"] = round(per_token["late"], 3)
        result["late_over_early"] = round(per_token["late"] / per_token["early"], 3)
        result["positions"] = {"early": [prompt_len, prompt_len + span], "late": [block - span - 1, block - 1]}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.generate", description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="small", help="model shape when --model is not given")
    parser.add_argument("--model", default=None, help="a tfchat model directory instead of a random model")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.model:
        from tfchat.checkpoint.model_dir import load_model

        loaded = load_model(args.model)
        model, config, source = loaded.model, loaded.config, args.model
    else:
        config = GPTConfig.from_preset(args.preset)
        model, source = build_gpt(config), f"random {args.preset}"
    batches = tuple(int(b) for b in args.batches.split(","))
    result = {
        "benchmark": "generate",
        "model": source,
        "config": config.to_dict(),
        "params": model.count_params(),
        "new_tokens": args.new_tokens,
        "prompt_len": args.prompt_len,
        "xla": False,
        **run(model, args.new_tokens, args.prompt_len, batches, args.repeats),
    }
    emit(result)
    if args.out:
        with open(args.out, "w") as f:
            f.write(json.dumps({**result, "machine": machine()}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
