"""Pretraining choices compared at equal wall-clock time: one JSON line per row.

    python -m benchmarks.ablation --budget-minutes 8 --out runs/ablation            # every row
    python -m benchmarks.ablation --rows data,rope,muon --budget-minutes 8 --out runs/ablation

Each row is `python -m training.pretrain` with some flags changed from the
reference row `data` (GPT-2's architecture at the `tiny` shape, AdamW, cosine,
on the bundled 2018 Wikipedia articles); `today` is the default before this
comparison (the 106-article sample) and `all` the combination that became the
default. Every row gets the same wall-clock budget: its training speed is
measured first (`benchmarks.train`, same shape, same process kind), then
`--steps` is set so that training plus the start-up and evaluation overhead
measured on the first row fills the budget; the wall time each row really
took is reported beside it, so a faster-but-worse change and a
slower-but-better change compare honestly. Rows share one tokenizer (trained
once, its time not counted) except the vocabulary row.

Quality: held-out bits per byte (`training.evaluate`) on the validation split
of the 2018 articles (`enwiki-2018`, 5% of articles by title, never trained
on) and on all 106 articles of the 2016 dump excerpt (`wikipedia-sample`: older
articles, disjoint from the 2018 ones, so a test of generalisation; the `today`
row trained on them and reports their validation split instead).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

from tfchat import cli

# The reference: today's architecture and optimiser on the new data, at the default batch and context.
BASE = ["--preset", "tiny", "--batch-size", "16", "--seq-len", "256", "--lr", "2e-3", "--warmup-steps", "100"]
MODERN = ["--position", "rope", "--norm", "rmsnorm", "--no-bias", "--qk-norm", "--mlp", "relu2",
          "--no-tie-embeddings", "--logit-softcap", "15"]
ROWS = {
    "today": ("today's default: GPT-2 tiny on the 106-article sample", ["--data", "wikipedia-sample"]),
    "data": ("+ 20,650 Wikipedia articles of 2018 (stubs, near-duplicates out)", []),
    "rope": ("+ rotary positions", ["--position", "rope"]),
    "rmsnorm": ("+ RMSNorm, no biases", ["--norm", "rmsnorm", "--no-bias"]),
    "qk-norm": ("+ QK-norm", ["--qk-norm"]),
    "relu2": ("+ ReLU² MLP", ["--mlp", "relu2"]),
    "swiglu": ("+ SwiGLU MLP", ["--mlp", "swiglu"]),
    "untied": ("+ untied LM head", ["--no-tie-embeddings"]),
    "softcap": ("+ logit soft-cap 15", ["--logit-softcap", "15"]),
    "muon": ("+ Muon at its own learning rate (AdamW for embeddings, head, vectors)",
             ["--optimizer", "muon", "--lr", "1e-2"]),
    "wsd": ("+ warmup-stable-decay schedule", ["--schedule", "wsd"]),
    "vocab-8k": ("+ 8,192-token vocabulary", ["--vocab-size", "8192"]),
    "deeper": ("6 layers x 128 (deeper, narrower)", ["--n-layer", "6"]),
    "wider": ("3 layers x 192 (shallower, wider)", ["--n-layer", "3", "--n-embd", "192", "--n-head", "6"]),
    "modern": ("every architecture option above", MODERN),
    "all": ("modern architecture + Muon + WSD", [*MODERN, "--optimizer", "muon", "--lr", "1e-2", "--schedule", "wsd"]),
}
ARCH_KEYS = {"--position": "position", "--norm": "norm", "--mlp": "mlp", "--n-layer": "n_layer", "--n-embd": "n_embd",
             "--n-head": "n_head", "--logit-softcap": "logit_softcap", "--vocab-size": "vocab_size"}
ARCH_SWITCHES = {"--no-bias": ("bias", "false"), "--qk-norm": ("qk_norm", "true"),
                 "--no-tie-embeddings": ("tie_embeddings", "false")}


def _flag(flags: list[str], name: str, default: str) -> str:
    return flags[flags.index(name) + 1] if name in flags else default


def _run(cmd: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return proc, time.perf_counter() - start


def steps_per_second(flags: list[str], precision: str) -> float:
    """The training speed of a row's shape, from `benchmarks.train` in a fresh process."""
    arch = [f"{key}={flags[flags.index(flag) + 1]}" for flag, key in ARCH_KEYS.items() if flag in flags]
    arch += [f"{key}={value}" for flag, (key, value) in ARCH_SWITCHES.items() if flag in flags]
    cmd = [sys.executable, "-m", "benchmarks.train", "--preset", _flag(flags, "--preset", "tiny"),
           "--seq-len", _flag(flags, "--seq-len", "256"), "--batch-size", _flag(flags, "--batch-size", "16"),
           "--precision", precision, "--optimizer", _flag(flags, "--optimizer", "adamw"), "--steps", "10",
           "--warmup", "3"]
    if arch:
        cmd += ["--arch", ",".join(arch)]
    proc, _ = _run(cmd)
    return 1.0 / json.loads(proc.stdout.strip().splitlines()[-1])["step_time_s"]


def bits_per_byte(model: str, data: str, split: str, max_batches: int) -> float:
    proc, _ = _run([sys.executable, "-m", "training.evaluate", "--model", model, "--data", data, "--split", split,
                    "--max-batches", str(max_batches), "--json"])
    return json.loads(proc.stdout)["bits_per_byte"]


def main(argv=None) -> int:
    p = cli.parser("python -m benchmarks.ablation", __doc__)
    p.add_argument("--rows", default="all-rows", help=f"comma-separated rows of {', '.join(ROWS)} (default: every row)")
    p.add_argument("--budget-minutes", type=float, default=8.0, help="wall-clock budget of every row")
    p.add_argument("--precision", default="bf16", help="as training.pretrain's --precision (bf16 on this CPU)")
    p.add_argument("--eval-batches", type=int, default=100, help="batches of 8 x 256 tokens per held-out evaluation")
    p.add_argument("--out", default="runs/ablation", help="where the runs go; their JSON lines go to OUT/results.jsonl")
    args = p.parse_args(argv)
    names = list(ROWS) if args.rows == "all-rows" else args.rows.split(",")
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        p.error(f"unknown rows {unknown}; rows: {', '.join(ROWS)}")
    cli.setup(args.verbose)  # the machine description imports TensorFlow: without its start-up lines
    os.makedirs(args.out, exist_ok=True)
    budget = 60.0 * args.budget_minutes
    tokenizer = os.path.join(args.out, "tokenizer")
    overhead = None
    for name in names:
        description, changes = ROWS[name]
        flags = [*BASE, *([] if "--data" in changes else ["--data", "enwiki-2018"]), *changes]
        rate = steps_per_second(flags, args.precision)
        if overhead is None:  # the first row measures the start-up + evaluation overhead the others assume
            steps = int(budget * 0.85 * rate)
        else:
            steps = max(int((budget - overhead) * rate), 1)
        run_dir = os.path.join(args.out, name)
        cmd = [sys.executable, "-m", "training.pretrain", *flags, "--steps", str(steps), "--out", run_dir,
               "--eval-every", str(max(steps // 4, 1)), "--save-every", str(steps), "--precision", args.precision,
               "--no-progress", "--no-resume"]
        if "--vocab-size" not in changes and name != "today":
            if not os.path.isdir(tokenizer):
                _run([*cmd[:-2], "--steps", "1", "--out", tokenizer])  # a throwaway run trains the shared tokenizer
            cmd += ["--tokenizer", tokenizer]
        proc, wall = _run(cmd)
        # The command's closing line ("Done in ...: ..., N tokens/s."), not a step line's.
        tokens_per_sec = float(re.findall(r"([\d,]+) tokens/s", proc.stderr)[-1].replace(",", ""))
        if overhead is None:
            overhead = max(wall - steps / rate, 0.0)
        with open(os.path.join(run_dir, "model", "tfchat.json")) as f:
            meta = json.load(f)
        record = {
            "benchmark": "ablation", "row": name, "change": description, "flags": changes, "steps": steps,
            "wall_minutes": round(wall / 60, 2), "budget_minutes": args.budget_minutes,
            "tokens_per_sec": tokens_per_sec,
            "benchmark_tokens_per_sec": round(rate * int(_flag(flags, "--batch-size", "16"))
                                              * int(_flag(flags, "--seq-len", "256"))),
            "train_loss": meta.get("loss"), "val_loss": meta.get("val_loss"),
            "bpb_enwiki_2018": bits_per_byte(run_dir, "enwiki-2018", "validation", args.eval_batches),
            "bpb_2016_sample": bits_per_byte(run_dir, "wikipedia-sample", "validation" if name == "today" else "all",
                                             args.eval_batches),
            "command": " ".join(["python -m training.pretrain", *flags, "--steps", str(steps)]),
        }
        from benchmarks.common import emit

        emit(record)
        with open(os.path.join(args.out, "results.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))  # a known failure: one "error: ..." line
