"""Generation speed per decode path, with Hugging Face transformers as the reference in the same run.

    python -m benchmarks.generate [--preset small] [--model runs/chat] [--path signature fast server]
                                  [--reference transformers] [--new-tokens 128] [--repeats 3] [--guidance 8]

Prints one JSON object. A random model of the preset's shape is used unless
`--model` is given. Paths:

* `signature`: `tfchat.inference.generation.generate` compiled with
  `tf.function`, no XLA: the loop the exported `serving_default`/`generate`
  signatures run in stock TF Serving;
* `fast`: `tfchat.inference.slots.SlotDecoder` (XLA, `--chunk` tokens per
  call): what `serving.server` and `serving.chat` decode with by default;
* `server`: one client streaming `/v1/completions` over HTTP from a
  `serving.server` subprocess (fast path) on an export of a random model
  (see `benchmarks.serve`); batch 1 only.

Per path and batch size: `tokens_per_s` (new tokens / wall time of a whole
generation: prompt of `--prompt-len` ids, `--new-tokens` new ids, no stop
ids), `decode_tokens_per_s` (the same without the prefill and first token),
`time_to_first_token_ms` (max_new_tokens=1), and `ms_per_token_early` /
`_late`: the marginal cost of 64 more tokens after a short prompt vs. after a
prompt that fills the context to its last 65 positions, measured in
`--position-rounds` interleaved rounds (`late_over_early`, the median of the
rounds' ratios, near 1: flat per-token cost; `late_over_early_quartiles`,
their first and third quartiles).

`--guidance G` also measures the signature and fast paths guided at scale G
(each prompt decodes beside its twin, the prompt without its first id, as a
guided tagged reply does beside its untagged prompt): each path's `guided`
figures and `guided_over_plain`, the guided generation's batch-1 speed over
the plain one's in interleaved rounds (1: guidance is free, 0.5: it takes
twice the time).

`--reference transformers` runs PyTorch `GPT2LMHeadModel.generate` (KV cache,
greedy, random weights of the same dims) in this process, with torch's
default threads and with one thread (under contention one is often faster),
and keeps the faster. Then `--rounds` rounds each run one batch-1 generation
of every in-process path and of the reference, in turn, so that a machine
whose speed drifts (a shared VM) slows both sides of a ratio alike:
`vs_reference` is the median over rounds of each path's speed over the
reference's in the same round (the server path, a subprocess, is compared
with the reference's median instead).
"""

from __future__ import annotations

import functools
import json
import statistics
import sys
import time

import numpy as np

from benchmarks.common import emit, machine

PATHS = ("signature", "fast", "server")


def _prompts(batch: int, length: int, vocab: int) -> np.ndarray:
    return np.random.default_rng(1).integers(1, vocab, size=(batch, length)).astype(np.int32)


def signature_generate(model, guidance: float = 1.0):
    """(prompts [B, L], max_new) -> generated ids, through the XLA-free `generate` (guided against each
    prompt without its first id, as a tagged chat is against its untagged twin, when `guidance` is not 1)."""
    import tensorflow as tf

    from tfchat.inference.generation import compiled_generate

    fn = compiled_generate(model, guided=guidance != 1)

    def call(prompts, max_new):
        b = len(prompts)
        guide = []
        if guidance != 1:
            guide = [tf.fill([b], guidance), tf.RaggedTensor.from_tensor(tf.constant(prompts[:, 1:]))]
        return fn(tf.RaggedTensor.from_tensor(tf.constant(prompts)), tf.fill([b], max_new), tf.fill([b], 0.0),
                  tf.fill([b], 0), tf.fill([b], 1.0), tf.fill([b], 0), tf.constant([], tf.int32), *guide)[0].numpy()

    return call


def fast_generate(model, chunk: int, guidance: float = 1.0):
    """(prompts [B, L], max_new) -> generated ids, through the XLA slot decoder (guided as in
    `signature_generate`: each prompt's twin is one more row)."""
    from tfchat.inference.slots import SlotDecoder

    decoder = SlotDecoder(model, chunk=chunk)

    def call(prompts, max_new):
        b = len(prompts)
        if guidance != 1:
            rows = decoder.prefill(prompts.tolist() + prompts[:, 1:].tolist(), [max_new] * 2 * b, [0.0] * 2 * b,
                                   [0] * 2 * b, [1.0] * 2 * b, [0] * 2 * b, guidance=[guidance] * b + [1.0] * b,
                                   twin_of=[-1] * b + list(range(b)))
        else:
            rows = decoder.prefill(prompts.tolist(), [max_new] * b, [0.0] * b, [0] * b, [1.0] * b, [0] * b)
        out = [rows.token.numpy()[:, None]]
        for _ in range(-(-(max_new - 1) // chunk)):
            tokens, _, rows = decoder.decode(rows)
            out.append(tokens)
        return np.concatenate(out, axis=1)[:b, :max_new]

    return call


@functools.cache
def _torch_default_threads() -> int:
    """torch's thread count before this benchmark changed it."""
    import torch

    return torch.get_num_threads()


def transformers_generate(config, threads: int | None):
    """(prompts [B, L], max_new) -> generated ids, through PyTorch GPT-2 of the same dims (random weights)."""
    import torch
    import transformers

    threads = threads or _torch_default_threads()
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd, n_layer=config.n_layer,
        n_head=config.n_head, bos_token_id=0, eos_token_id=0)).eval()  # GPT-2's 50256: outside a small vocabulary

    def call(prompts, max_new):
        torch.set_num_threads(threads)  # a process-wide setting: each call sets its own
        ids = torch.from_numpy(prompts.astype(np.int64))
        with torch.no_grad():
            return hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new,
                               min_new_tokens=max_new, do_sample=False, use_cache=True, pad_token_id=0)

    return call


def interleaved(calls: dict, rounds: int) -> dict:
    """Seconds of each no-argument call, one of each per round, in turn ({name: [seconds per round]})."""
    times = {name: [] for name in calls}
    for call in calls.values():
        call()  # warm-up
    for _ in range(rounds):
        for name, call in calls.items():
            t0 = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - t0)
    return times


def _median_seconds(call, repeats: int) -> float:
    """Median seconds of `repeats` calls of one no-argument call, after a warm-up."""
    return statistics.median(interleaved({"call": call}, repeats)["call"])


def measure(call, vocab: int, block: int, new_tokens: int, prompt_len: int, batches, repeats: int,
            positions: bool = True, position_rounds: int = 15) -> dict:
    new_tokens = min(new_tokens, block - prompt_len)
    result = {}
    for b in batches:
        prompts = _prompts(b, prompt_len, vocab)
        total = _median_seconds(lambda: call(prompts, new_tokens), repeats)
        first = _median_seconds(lambda: call(prompts, 1), repeats)
        result[f"batch_{b}"] = {
            "tokens_per_s": round(b * new_tokens / total, 1),
            "decode_tokens_per_s": round(b * (new_tokens - 1) / max(total - first, 1e-9), 1),
            "seconds": round(total, 3),
        }
        if b == batches[0]:
            result["time_to_first_token_ms"] = round(1000 * first, 2)
    span = 64
    if positions and block > 2 * (span + 1):
        # Early and late interleaved, several rounds: the ratio of each round, then their median.
        calls = {}
        for name, length in (("early", prompt_len), ("late", block - span - 1)):
            prompts = _prompts(1, length, vocab)
            calls[name + "_long"] = functools.partial(call, prompts, span + 1)
            calls[name + "_short"] = functools.partial(call, prompts, 1)
        t = interleaved(calls, position_rounds)
        per_token = {name: [1000 * (a - b) / span for a, b in zip(t[name + "_long"], t[name + "_short"])]
                     for name in ("early", "late")}
        result["ms_per_token_early"] = round(statistics.median(per_token["early"]), 3)
        result["ms_per_token_late"] = round(statistics.median(per_token["late"]), 3)
        ratios = [late / early for late, early in zip(per_token["late"], per_token["early"])]
        result["late_over_early"] = round(statistics.median(ratios), 3)
        if len(ratios) > 1:  # the rounds' spread: a shared machine's drift shows here
            result["late_over_early_quartiles"] = [round(q, 3) for q in statistics.quantiles(ratios, n=4)[::2]]
        result["positions"] = {"early": [prompt_len, prompt_len + span], "late": [block - span - 1, block - 1]}
    return result


def server_path(args) -> dict:
    """One streaming client against a server subprocess (fast path) on a random export."""
    import httpx

    from benchmarks import serve

    export_dir = serve.random_export(args.preset, args.work_dir)
    server = serve.start_server(export_dir, args.port, 1, args.chunk, plain=False)
    url = f"http://127.0.0.1:{args.port}"
    try:
        serve.wait_ready(url, server)
        prompt = "The history of the city and its river"
        with httpx.Client() as client:  # one connection, kept open, as `benchmarks.serve`'s clients
            serve.stream_one(client, url, prompt, args.new_tokens)  # warm-up
            runs = [serve.stream_one(client, url, prompt, args.new_tokens) for _ in range(args.repeats)]
    finally:
        server.terminate()
        server.wait(timeout=30)
    tokens = [args.new_tokens if r["finish"] == "length" else len(r["events"]) for r in runs]
    seconds = statistics.median(r["end"] - r["start"] for r in runs)
    return {
        "model": f"random {args.preset} export",
        "batch_1": {"tokens_per_s": round(statistics.median(tokens) / seconds, 1), "seconds": round(seconds, 3)},
        "time_to_first_token_ms": round(1000 * statistics.median(r["events"][0] - r["start"] for r in runs), 2),
        "stopped_early": sum(r["finish"] != "length" for r in runs),
    }


def main(argv: list[str] | None = None) -> int:
    from tfchat import cli

    parser = cli.parser("python -m benchmarks.generate", __doc__)
    parser.add_argument("--preset", default="small", help="model shape when --model is not given")
    parser.add_argument("--model", default=None, help="a tfchat model directory instead of a random model")
    parser.add_argument("--path", nargs="+", choices=PATHS, default=["signature", "fast"],
                        help="decode paths to measure")
    parser.add_argument("--reference", choices=["transformers", "none"], default="none",
                        help="also run Hugging Face transformers' GPT-2 of the same dims (needs torch)")
    parser.add_argument("--chunk", type=cli.positive_int, default=16, help="fast path: tokens per XLA call")
    parser.add_argument("--new-tokens", type=cli.positive_int, default=128)
    parser.add_argument("--prompt-len", type=cli.positive_int, default=16)
    parser.add_argument("--batches", type=cli.positive_ints, default=[1, 8], help="comma-separated batch sizes")
    parser.add_argument("--repeats", type=cli.positive_int, default=3)
    parser.add_argument("--rounds", type=cli.positive_int, default=7,
                        help="with --reference: interleaved rounds of every path and the reference for vs_reference")
    parser.add_argument("--position-rounds", type=cli.positive_int, default=15,
                        help="interleaved rounds of the early and late per-token costs (late_over_early)")
    parser.add_argument("--guidance", type=cli.guidance, default=1.0,
                        help="also measure the signature and fast paths guided at this scale (each row decodes "
                             "beside its twin, as a guided tagged reply does): guided_over_plain per path")
    parser.add_argument("--port", type=cli.port, default=8518, help="server path: its port")
    parser.add_argument("--work-dir", default="runs/bench", help="server path: where the random export is kept")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    cli.setup(args.verbose)  # without TensorFlow's start-up lines
    from tfchat.config import GPTConfig
    from tfchat.model import build_gpt

    if args.model:
        from tfchat.checkpoint.model_dir import load_model

        loaded = load_model(args.model)
        model, config, source = loaded.model, loaded.config, args.model
    else:
        config = GPTConfig.from_preset(args.preset)
        model, source = build_gpt(config), f"random {args.preset}"
    if args.prompt_len >= config.block_size:
        raise cli.UsageError(f"--prompt-len {args.prompt_len}: the model reads {config.block_size} tokens; "
                             "give a shorter prompt so that new tokens fit")
    batches = tuple(args.batches)
    shape = dict(vocab=config.vocab_size, block=config.block_size, new_tokens=args.new_tokens,
                 prompt_len=args.prompt_len, repeats=args.repeats)
    result = {
        "benchmark": "generate", "model": source, "config": config.to_dict(), "params": model.count_params(),
        "new_tokens": args.new_tokens, "prompt_len": args.prompt_len, "chunk": args.chunk, "paths": {},
    }
    calls = {}
    for path in args.path:
        if path == "server":
            result["paths"]["server"] = server_path(args)
            continue
        make = signature_generate if path == "signature" else functools.partial(fast_generate, chunk=args.chunk)
        calls[path] = make(model)
        result["paths"][path] = measure(calls[path], batches=batches, position_rounds=args.position_rounds,
                                        **shape)
        if args.guidance != 1:
            guided = make(model, guidance=args.guidance)
            r = result["paths"][path]["guided"] = measure(guided, batches=batches, positions=False, **shape)
            # Batch 1 in interleaved rounds: the guided generation's speed over the plain one's.
            new_tokens = min(args.new_tokens, config.block_size - args.prompt_len)
            prompts = _prompts(1, args.prompt_len, config.vocab_size)
            t = interleaved({"plain": functools.partial(calls[path], prompts, new_tokens),
                             "guided": functools.partial(guided, prompts, new_tokens)}, args.rounds)
            r["guided_over_plain"] = round(statistics.median(p / g for p, g in zip(t["plain"], t["guided"])), 2)
    if args.reference == "transformers":
        options, references = {}, {}
        for threads in (None, 1):  # torch's default, then one thread
            name = "default_threads" if threads is None else "1_thread"
            references[name] = transformers_generate(config, threads)
            options[name] = measure(references[name], batches=(1,), positions=False, **shape)
        best = max(options, key=lambda name: options[name]["batch_1"]["tokens_per_s"])
        new_tokens = min(args.new_tokens, config.block_size - args.prompt_len)
        prompts = _prompts(1, args.prompt_len, config.vocab_size)
        times = interleaved({name: functools.partial(call, prompts, new_tokens)
                             for name, call in {**calls, "reference": references[best]}.items()}, args.rounds)
        reference_times = times.pop("reference")
        reference_s = statistics.median(reference_times)
        result["reference"] = {"name": "transformers GPT2LMHeadModel.generate (torch, KV cache)", **options,
                               "threads": best, "tokens_per_s": round(new_tokens / reference_s, 1)}
        for name, r in result["paths"].items():
            if name in times:  # paired: this path over the reference in the same round
                r["interleaved_tokens_per_s"] = round(new_tokens / statistics.median(times[name]), 1)
                r["vs_reference"] = round(statistics.median(ref / t for ref, t in zip(reference_times, times[name])), 2)
            else:
                r["vs_reference"] = round(r["batch_1"]["tokens_per_s"] * reference_s / new_tokens, 2)
    emit(result)
    if args.out:
        with open(args.out, "w") as f:
            f.write(json.dumps({**result, "machine": machine()}) + "\n")
    return 0


if __name__ == "__main__":
    from tfchat import cli

    sys.exit(cli.run(main))  # a known failure: one "error: ..." line
