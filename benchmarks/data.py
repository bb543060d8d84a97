"""Input pipeline throughput on the bundled data.

    python -m benchmarks.data [--seq-len 256 --batch-size 16] [--tokenizer DIR]

Prints one JSON object per measurement, each with a machine description:

- `extract_cold`: first-time extraction of the Wikipedia sample (parsing the
  wiki markup) into a fresh, temporary cache;
- `pretrain_pipeline`: tokens/s of `pretrain_dataset` with the cache warm
  (what a training run sees after its first run);
- `parquet_pipeline`: tokens/s of `pretrain_dataset` on the same documents
  written as a Parquet file (read a row group at a time, no cache), with its
  ratio to `pretrain_pipeline`;
- `finetune_pipeline`: build time and tokens/s of `finetune_dataset` on the
  bundled dialogues (`tokens_per_s` counts padded positions,
  `loss_tokens_per_s` the assistant tokens that carry the loss).

- `training_consumes`: tokens/s that training `--train-preset` (default
  small) consumes at the same sequence length and batch, measured in the same
  run; every pipeline record then carries `headroom_vs_training`, its tokens/s
  over that (the pipelines should stay at least 10x ahead).

Without `--tokenizer`, a SentencePiece tokenizer is trained on the sample
(`--vocab-size`).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

from benchmarks.common import emit
from tfchat import cli


def time_batches(ds, warmup: int, seconds: float) -> dict:
    """Token positions/s and loss tokens/s over `seconds` of a tf.data.Dataset, after `warmup` batches."""
    import tensorflow as tf

    it = iter(ds)
    for _ in range(warmup):
        next(it)
    n_batches = n_tokens = n_loss = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        batch = next(it)
        n_tokens += int(tf.size(batch["token_ids"]))
        n_loss += int(tf.reduce_sum(batch["loss_mask"]))
        n_batches += 1
    elapsed = time.perf_counter() - start
    return {"tokens_per_s": round(n_tokens / elapsed), "loss_tokens_per_s": round(n_loss / elapsed),
            "batches": n_batches, "seconds": round(elapsed, 2)}


def main(argv=None) -> int:
    parser = cli.parser("python -m benchmarks.data", __doc__)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--tokenizer", help="tokenizer directory; default: train one on the sample")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per pipeline")
    parser.add_argument("--cache-dir", help="warm cache to use (default: a temporary one)")
    parser.add_argument("--train-preset", default="small",
                        help="measure what training this preset consumes, for the headroom ratio; 'none' skips it")
    args = parser.parse_args(argv)

    def body() -> int:
        cli.setup(args.verbose)
        measure(args)
        return 0

    return cli.run(body)


def measure(args) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tfchat.data import batches, sources
    from tfchat.text.tokenizer import load_tokenizer, train_tokenizer

    consumed = None
    if args.train_preset != "none":
        from benchmarks import train as train_bench
        from training.hardware import resolve_precision

        precision = resolve_precision("auto")
        record = train_bench.run(args.train_preset, args.seq_len, args.batch_size, precision, steps=3, warmup=1)
        consumed = record["tokens_per_sec"]
        emit({"measurement": "training_consumes", "preset": args.train_preset, "precision": precision,
              "seq_len": args.seq_len, "batch_size": args.batch_size, "tokens_per_s": round(consumed)})

    def timed(ds, seconds):
        result = time_batches(ds, warmup=5, seconds=seconds)
        if consumed:
            result["headroom_vs_training"] = round(result["tokens_per_s"] / consumed, 1)
        return result

    with tempfile.TemporaryDirectory(prefix="tfchat-bench-") as tmp:
        cache_dir = args.cache_dir or tmp
        cold_dir = os.path.join(tmp, "cold")
        start = time.perf_counter()
        directory = sources.prepare_cache(sources.SAMPLE_NAME, cold_dir)
        cold = time.perf_counter() - start
        meta = sources.source_stats(sources.SAMPLE_NAME, cold_dir)
        text_bytes = sum(
            os.path.getsize(os.path.join(directory, name)) for names in meta["shards"].values() for name in names
        )
        emit({
            "measurement": "extract_cold", "source": sources.SAMPLE_NAME, "seconds": round(cold, 2),
            "articles": sum(meta["stats"]["kept"].values()), "pages": meta["stats"]["read"],
            "text_mb": round(text_bytes / 1e6, 2), "text_mb_per_s": round(text_bytes / 1e6 / cold, 2),
        })
        sources.prepare_cache(sources.SAMPLE_NAME, cache_dir)  # warm (no-op if --cache-dir is warm)

        docs = [d.numpy().decode("utf-8") for d in sources.documents_dataset(sources.SAMPLE_NAME, cache_dir=cache_dir)]
        if args.tokenizer:
            tok = load_tokenizer(args.tokenizer)
        else:
            start = time.perf_counter()
            tok = train_tokenizer(docs, args.vocab_size)
            emit({"measurement": "tokenizer_train", "vocab_size": tok.vocab_size,
                  "seconds": round(time.perf_counter() - start, 2)})

        ds = batches.pretrain_dataset(
            sources.SAMPLE_NAME, tok, args.seq_len, args.batch_size, cache_dir=cache_dir
        )
        cached = timed(ds, args.seconds)
        emit({
            "measurement": "pretrain_pipeline", "source": sources.SAMPLE_NAME, "cache": "warm",
            "seq_len": args.seq_len, "batch_size": args.batch_size, "vocab_size": tok.vocab_size, **cached,
        })

        parquet = os.path.join(tmp, "wikipedia-sample.parquet")  # 8 row groups: read like a real dump's shards
        pq.write_table(pa.table({"id": [str(i) for i in range(len(docs))], "text": docs}), parquet,
                       row_group_size=max(1, len(docs) // 8))
        ds = batches.pretrain_dataset(parquet, tok, args.seq_len, args.batch_size)
        result = timed(ds, args.seconds)
        emit({
            "measurement": "parquet_pipeline", "source": f"{sources.SAMPLE_NAME} as Parquet", "cache": "none",
            "seq_len": args.seq_len, "batch_size": args.batch_size, "vocab_size": tok.vocab_size, **result,
            "ratio_to_pretrain_pipeline": round(result["tokens_per_s"] / max(cached["tokens_per_s"], 1), 2),
        })

        start = time.perf_counter()
        ds = batches.finetune_dataset(None, tok, args.seq_len, args.batch_size)
        build = time.perf_counter() - start
        emit({
            "measurement": "finetune_pipeline", "source": "dialogues-sample", "seq_len": args.seq_len,
            "batch_size": args.batch_size, "pack": False, "build_seconds": round(build, 2),
            **timed(ds, min(args.seconds, 5.0)),
        })


if __name__ == "__main__":
    sys.exit(cli.run(main))  # a known failure: one "error: ..." line
