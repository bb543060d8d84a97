"""Server throughput under load: N concurrent streaming clients against `serving.server` on loopback.

    python -m benchmarks.serve [--preset small] [--export exports/tfchat] [--clients 1,16] [--new-tokens 128]
                               [--rounds 5] [--plain-signatures] [--chunk 8] [--url http://127.0.0.1:8501]

Prints one JSON object. Unless `--url` names a running server, the server is
started as a subprocess (its own process: client threads here do not take
its Python lock) on an export of `--export`, or of a random model of the
preset's shape with a tokenizer trained on the bundled Wikipedia text (built
once under `--work-dir`). Each client streams `/v1/completions` (greedy, its
own prompt, `--new-tokens` tokens) over its own kept-open connection; after a
warm-up round of each level of concurrency, `--rounds` rounds run every level
in turn.

Per level: `aggregate_tokens_per_s` (median over rounds of all clients'
tokens / wall time of the round), `ttft_ms` p50/p95 (request sent -> first
text), `tpot_ms` p50/p95 (time per output token after the first, per client,
as vLLM's benchmark defines it), `gap_ms` p50/p95 (between streamed events,
which carry `--chunk` tokens on the fast path), and `speedup_vs_1` (median of
each round's aggregate tokens/s over the same round's 1-client level).
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks.common import emit

log = logging.getLogger(__name__)


def random_export(preset: str, work_dir: str) -> str:
    """An export of a random model of `preset` (tokenizer trained on the bundled Wikipedia text), made once."""
    base = os.path.join(work_dir, f"random-{preset}")
    if os.path.isdir(os.path.join(base, "export", "1")):
        return os.path.join(base, "export")
    from serving.exporter import export
    from tfchat.checkpoint.model_dir import load_model, save_model
    from tfchat.config import GPTConfig
    from tfchat.data.io import open_text, resource_path
    from tfchat.model import build_gpt
    from tfchat.text.tokenizer import train_tokenizer

    config = GPTConfig.from_preset(preset)
    with open_text(resource_path("enwiki-2018-articles.txt.xz")) as f:
        text = f.read(3_000_000)
    tokenizer = train_tokenizer([text], vocab_size=config.vocab_size)
    save_model(os.path.join(base, "model"), build_gpt(config.replace(vocab_size=tokenizer.vocab_size)), tokenizer,
               config.replace(vocab_size=tokenizer.vocab_size))
    export(load_model(os.path.join(base, "model")), os.path.join(base, "export"))
    return os.path.join(base, "export")


def start_server(export_dir: str, port: int, max_batch: int, chunk: int, plain: bool) -> subprocess.Popen:
    """A `serving.server` subprocess; its stderr goes to a temporary file (`.log`), read if it exits early."""
    cmd = [sys.executable, "-m", "serving.server", "--model", export_dir, "--port", str(port),
           "--max-batch", str(max_batch), "--chunk", str(chunk)] + (["--plain-signatures"] if plain else [])
    log = tempfile.TemporaryFile()  # a file, not a pipe: a chatty server never blocks on a full pipe
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    server.log = log
    return server


def wait_ready(url: str, server: subprocess.Popen | None = None, timeout: float = 900.0) -> None:
    """Waits until the server at `url` is up and done compiling; fails at once if `server` exits."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server is not None and server.poll() is not None:
            server.log.seek(0)
            lines = [ln for ln in server.log.read().decode(errors="replace").splitlines() if ln.strip()]
            errors = [ln for ln in lines if ln.startswith("error:")]
            reason = (errors or lines or ["no output"])[-1].removeprefix("error: ")
            raise RuntimeError(f"the server exited with code {server.returncode}: {reason}")
        try:
            health = httpx.get(url + "/healthz", timeout=2)
            if health.status_code == 200 and not health.json().get("compiling"):
                return  # up, and done compiling the fast path for every batch size and cache length
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"server at {url} not ready after {timeout:.0f} s")


def stream_one(client, url: str, prompt: str, new_tokens: int) -> dict:
    """One streaming completion on `client` (an `httpx.Client`): times of the request, of each text event,
    and the finish reason."""
    body = {"prompt": prompt, "max_tokens": new_tokens, "temperature": 0, "stream": True}
    events, finish, text = [], None, ""
    t0 = time.perf_counter()
    with client.stream("POST", url + "/v1/completions", json=body, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choice = json.loads(line[6:])["choices"][0]
            if choice.get("text"):
                events.append(time.perf_counter())
                text += choice["text"]
            finish = choice.get("finish_reason") or finish
    return {"start": t0, "events": events, "end": time.perf_counter(), "finish": finish, "text": text}


def _pct(values, q) -> float | None:
    return round(float(np.percentile(values, q)), 2) if len(values) else None


def level(sessions: list, url: str, new_tokens: int) -> dict:
    """One round of `len(sessions)` concurrent streams, one per kept-open client connection."""
    prompts = [f"Client {i} asks about the history of the city and its river." for i in range(len(sessions))]
    with concurrent.futures.ThreadPoolExecutor(len(sessions)) as pool:
        t0 = time.perf_counter()
        runs = list(pool.map(lambda c, p: stream_one(c, url, p, new_tokens), sessions, prompts))
        wall = time.perf_counter() - t0
    # Greedy runs end at max_tokens unless a stop id comes first (then counted as the events' share).
    tokens = [new_tokens if r["finish"] == "length" else len(r["events"]) for r in runs]
    return {
        "tokens": tokens,
        "wall": wall,
        "ttft": [1000 * (r["events"][0] - r["start"]) for r in runs if r["events"]],
        "tpot": [1000 * (r["end"] - r["events"][0]) / (n - 1) for r, n in zip(runs, tokens) if r["events"] and n > 1],
        "gaps": [1000 * (b - a) for r in runs for a, b in zip(r["events"], r["events"][1:])],
        "stopped": sum(r["finish"] != "length" for r in runs),
    }


def run(url: str, clients: list[int], new_tokens: int, rounds: int = 1) -> dict:
    """Every level of concurrency once per round, in turn, after a warm-up round of each.

    Each client keeps its connection open across rounds (as a chat front end or vLLM's benchmark does):
    a new `httpx` client per request costs ~15 ms of this process's CPU, which the client threads queue
    for behind one Python lock; it would count as the server's time to first token. The machine's speed
    drifts from minute to minute, so `speedup_vs_1` is the median of per-round ratios to the 1-client
    level of the same round; percentiles pool every round's requests.
    """
    import httpx

    clients = list(dict.fromkeys(clients))  # each level once per round
    sessions = {n: [httpx.Client() for _ in range(n)] for n in clients}
    try:
        for n in clients:
            level(sessions[n], url, new_tokens)  # warm-up: XLA may compile this batch size now
        per_round = [{n: level(sessions[n], url, new_tokens) for n in clients} for _ in range(rounds)]
    finally:
        for client in (c for group in sessions.values() for c in group):
            client.close()
    rate = lambda r: sum(r["tokens"]) / r["wall"]  # noqa: E731  (aggregate tokens/s of one round)
    levels = []
    for n in clients:
        runs = [r[n] for r in per_round]
        rates = [rate(r) for r in runs]
        pooled = {key: [x for r in runs for x in r[key]] for key in ("ttft", "tpot", "gaps")}
        lv = {
            "clients": n,
            "aggregate_tokens_per_s": round(float(np.median(rates)), 1),
            "per_round_tokens_per_s": [round(x, 1) for x in rates],
            "tokens": int(sum(runs[0]["tokens"])),
            "seconds": round(float(np.median([r["wall"] for r in runs])), 3),
            "ttft_ms": {"p50": _pct(pooled["ttft"], 50), "p95": _pct(pooled["ttft"], 95)},
            "tpot_ms": {"p50": _pct(pooled["tpot"], 50), "p95": _pct(pooled["tpot"], 95)},
            "gap_ms": {"p50": _pct(pooled["gaps"], 50), "p95": _pct(pooled["gaps"], 95)},
            "stopped_early": sum(r["stopped"] for r in runs),
        }
        if 1 in clients:
            lv["speedup_vs_1"] = round(float(np.median([rate(r[n]) / rate(r[1]) for r in per_round])), 2)
        levels.append(lv)
    return {"rounds": rounds, "levels": levels}


def main(argv: list[str] | None = None) -> int:
    from tfchat import cli

    parser = cli.parser("python -m benchmarks.serve", __doc__)
    parser.add_argument("--preset", default="small", help="random model shape when neither --export nor --url")
    parser.add_argument("--export", default=None, help="an export to serve instead of a random model")
    parser.add_argument("--url", default=None, help="a running server to load instead of starting one")
    parser.add_argument("--clients", type=cli.positive_ints, default=[1, 16],
                        help="comma-separated numbers of concurrent clients")
    parser.add_argument("--new-tokens", type=cli.positive_int, default=128)
    parser.add_argument("--rounds", type=cli.positive_int, default=5,
                        help="rounds of every level in turn (medians and per-round ratios over them)")
    parser.add_argument("--max-batch", type=cli.positive_int, default=16, help="server --max-batch")
    parser.add_argument("--chunk", type=cli.positive_int, default=8, help="server --chunk")
    parser.add_argument("--plain-signatures", action="store_true", help="server --plain-signatures")
    parser.add_argument("--port", type=cli.port, default=8517)
    parser.add_argument("--work-dir", default=os.path.join("runs", "bench"), help="where the random export is kept")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    cli.setup(args.verbose)  # without TensorFlow's start-up lines
    server, url = None, args.url
    source = args.url or args.export or f"random {args.preset}"
    if url is None:
        export_dir = args.export or random_export(args.preset, args.work_dir)
        server = start_server(export_dir, args.port, args.max_batch, args.chunk, args.plain_signatures)
        url = f"http://127.0.0.1:{args.port}"
    try:
        wait_ready(url, server, timeout=900 if server else 60)  # a --url server should be up already
        result = {"benchmark": "serve", "model": source, "new_tokens": args.new_tokens,
                  "path": "plain signatures" if args.plain_signatures else f"fast (chunk {args.chunk})",
                  "max_batch": args.max_batch, **run(url, args.clients, args.new_tokens, args.rounds)}
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
    emit(result)
    if args.out:
        with open(args.out, "w") as f:
            f.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    from tfchat import cli

    sys.exit(cli.run(main))  # a known failure: one "error: ..." line
