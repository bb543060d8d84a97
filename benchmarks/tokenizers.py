"""English, Chinese and mixed tokenizers at the same vocabulary size: bytes per token and held-out bits per byte.

    python -m benchmarks.tokenizers                                     # bytes per token (a few minutes)
    python -m benchmarks.tokenizers --train-steps 1500 --out runs/tok   # + held-out bits per byte (a model per row)

Three SentencePiece tokenizers are trained with `train_tokenizer`'s default
settings (character coverage chosen for the vocabulary) on the first
`--chars` characters of the training split of `enwiki-2018` (English),
`zhwiki-sample` (Chinese) and their half-and-half mixture by documents, and
measured on the first `--heldout-chars` characters of each held-out split:

* `tokenizer` records: for each tokenizer and language, `bytes_per_token`
  (UTF-8 bytes / tokens: higher is a denser code, the more text fits in a
  context), `byte_fallback_share` (tokens that are single bytes: characters
  without a piece of their own, 3 per Han character), the character coverage
  chosen, and `ratio_to_own` (bytes per token relative to the tokenizer
  trained on that language alone, in this run);
* a `text` record: xz bits per character of each language's held-out text
  (how much a character says: the weight a Han character gets in
  `tfchat.data.filters`).

With `--train-steps N`, `bits_per_byte` records: a model per row is
pretrained for N steps (`python -m training.pretrain`, tiny preset, its
tokenizer given with `--tokenizer`) on English, Chinese or the mixture
(`enwiki-2018:0.5,zhwiki-sample:0.5`, by tokens), and evaluated with
`python -m training.evaluate` on each held-out split it can be compared on.
Bits per byte do not depend on the tokenizer, so rows trained on the same
data compare directly (`ratio_to_own`: against the model with the language's
own tokenizer). One JSON object per record on stdout.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import subprocess
import sys
import tempfile
import time

from benchmarks.common import emit

# (tokenizer, data, held-out languages) for the bits-per-byte rows.
MODEL_ROWS = (("en", "en", ("en",)), ("mixed", "en", ("en",)), ("zh", "zh", ("zh",)), ("mixed", "zh", ("zh",)),
              ("mixed", "mixed", ("en", "zh")))


def _text(source: str, split: str, chars: int) -> list[str]:
    from tfchat.data.sources import documents_dataset

    out, seen = [], 0
    for doc in documents_dataset(source, split, seed=0).as_numpy_iterator():
        out.append(doc.decode("utf-8"))
        seen += len(out[-1])
        if seen >= chars:
            break
    return out


def _run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def sources(en: str, zh: str) -> dict[str, str]:
    """The data of each tokenizer (and model): {"en", "zh", "mixed"}."""
    return {"en": en, "zh": zh, "mixed": f"{en}:0.5,{zh}:0.5"}


def measure_tokenizers(data: dict[str, str], vocab_size: int, chars: int, heldout_chars: int, out: str
                       ) -> dict[str, str]:
    """Trains the three tokenizers into `out/tokenizer-NAME`, emits their records; returns {name: directory}."""
    from tfchat.text.tokenizer import train_tokenizer

    heldout = {lang: "\n\n".join(_text(data[lang], "validation", heldout_chars)) for lang in ("en", "zh")}
    emit({"benchmark": "tokenizers", "record": "text", **{
        f"xz_bits_per_char_{lang}": round(8 * len(lzma.compress(text.encode("utf-8"), preset=9)) / len(text), 3)
        for lang, text in heldout.items()}, "heldout_chars": {lang: len(t) for lang, t in heldout.items()}})
    directories, rates = {}, {}
    for name, source in data.items():
        start = time.perf_counter()
        tok = train_tokenizer(_text(source, "train", chars), vocab_size=vocab_size)
        seconds = time.perf_counter() - start
        tok.record_training({**tok.training, "data": source})
        directories[name] = os.path.join(out, f"tokenizer-{name}")
        tok.save(directories[name])
        table = tok.token_bytes()
        single = {i for i, b in enumerate(table) if len(b) == 1 and b[0] >= 0x80}
        for lang, text in heldout.items():
            ids = tok.encode(text)
            rates[name, lang] = len(text.encode("utf-8")) / len(ids)
            emit({"benchmark": "tokenizers", "record": "tokenizer", "tokenizer": name, "language": lang,
                  "vocab_size": tok.vocab_size, "bytes_per_token": round(rates[name, lang], 4),
                  "byte_fallback_share": round(sum(i in single for i in ids) / len(ids), 4),
                  "ratio_to_own": round(rates[name, lang] / rates[lang, lang], 4) if (lang, lang) in rates else None,
                  "character_coverage": tok.training["settings"]["character_coverage"],
                  "training_characters": tok.training["characters"], "train_seconds": round(seconds, 1)})
    return directories


def measure_bits_per_byte(data: dict[str, str], directories: dict[str, str], steps: int, out: str,
                          eval_batches: int) -> None:
    results = {}
    for tokenizer, trained_on, languages in MODEL_ROWS:
        run = os.path.join(out, f"model-{tokenizer}-tok-{trained_on}-data")
        source = data[trained_on]
        _run([sys.executable, "-m", "training.pretrain", "--data", source, "--tokenizer", directories[tokenizer],
              "--out", run, "--steps", str(steps), "--eval-every", str(steps), "--save-every", str(steps),
              "--warmup-steps", str(min(100, steps // 10)), "--no-progress"])
        for lang in languages:
            result = json.loads(_run([sys.executable, "-m", "training.evaluate", "--model", run, "--data",
                                      data[lang], "--json", "--max-batches", str(eval_batches)]).splitlines()[-1])
            results[tokenizer, trained_on, lang] = result["bits_per_byte"]
            own = results.get((lang, lang, lang))
            emit({"benchmark": "tokenizers", "record": "bits_per_byte", "tokenizer": tokenizer, "data": source,
                  "heldout": data[lang], "steps": steps, "bits_per_byte": result["bits_per_byte"],
                  "ratio_to_own": round(result["bits_per_byte"] / own, 4) if own and tokenizer != lang else None})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tokenizers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--en", default="enwiki-2018", help="the English source")
    p.add_argument("--zh", default="zhwiki-sample", help="the Chinese source")
    p.add_argument("--vocab-size", type=int, default=4096, help="ids of every tokenizer (the tiny preset's)")
    p.add_argument("--chars", type=int, default=10_000_000, help="training characters per tokenizer (training.jobs')")
    p.add_argument("--heldout-chars", type=int, default=500_000, help="held-out characters per language")
    p.add_argument("--train-steps", type=int, default=0, help="also pretrain a model per row for held-out bits per byte")
    p.add_argument("--eval-batches", type=int, default=50, help="held-out batches per bits-per-byte figure")
    p.add_argument("--out", default=None, help="where tokenizers and models go (default: a temporary directory)")
    args = p.parse_args(argv)
    import tfchat.cli

    tfchat.cli.setup(False)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or tmp
        data = sources(args.en, args.zh)
        directories = measure_tokenizers(data, args.vocab_size, args.chars, args.heldout_chars, out)
        if args.train_steps > 0:
            measure_bits_per_byte(data, directories, args.train_steps, out, args.eval_batches)
    return 0


if __name__ == "__main__":
    from tfchat import cli

    sys.exit(cli.run(main))  # a known failure: one "error: ..." line
