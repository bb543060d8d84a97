"""Pretrain a GPT on Wikipedia (by default the bundled 2018 articles).

    python -m training.pretrain                       # tiny-modern, bundled 2018 articles, ~10 min on 2 CPU cores
    python -m training.pretrain --preset small --data tfds:wikipedia/20230601.en --steps 20000
    python -m training.pretrain --preset small --data hf:wikimedia/wikipedia:20231101.en --steps 20000
    python -m training.pretrain --data zhwiki-sample --out runs/zh             # Chinese (bundled zhwiki articles)
    python -m training.pretrain --data enwiki-2018:0.7,zhwiki-sample:0.3      # a mixture: 70% of tokens English
"""

from __future__ import annotations

import argparse

from tfchat import cli
from training.cli import (add_content_filter_flags, add_convert_script_flag, add_training_flags,
                          check_content_filter_flags, exit_process, job_options, run_job)

# The ablation's winner (README, "A better model per CPU-minute"): Muon at 1e-2 with a warmup-stable-decay schedule.
DEFAULTS = dict(steps=1500, batch_size=16, lr=1e-2, warmup_steps=100, optimizer="muon", schedule="wsd",
                eval_every=250, save_every=250, out="runs/pretrain")
PRESETS = ("tiny-modern", "small-modern", "tiny", "small", "gpt2", "gpt2-medium")  # tfchat.config.PRESETS, no import


def parser():
    p = cli.parser("python -m training.pretrain", __doc__)
    g = p.add_argument_group("model and data")
    g.add_argument("--preset", choices=PRESETS, default="tiny-modern",
                   help="model shape and architecture (tfchat/config.py): *-modern use RoPE, RMSNorm, QK-norm, ReLU², "
                        "an untied head and logit soft-capping; tiny, small, gpt2* are GPT-2's architecture")
    g.add_argument("--data", default="enwiki-2018",
                   help="text source: enwiki-2018 (bundled 2018 articles), wikipedia-sample (bundled 2016 dump "
                        "excerpt), zhwiki-sample (bundled Chinese articles), a WikiExtractor folder, "
                        "tfds:wikipedia/20230601.en, tfds:wiki40b/en, "
                        "hf:NAME[:CONFIG][@SPLIT] (a Hugging Face dataset or save_to_disk directory; "
                        "pip install 'tfchat[hf]'), a dump *.xml.bz2, a .txt/.jsonl/.parquet file or a glob of them; "
                        "or a mixture SOURCE[:WEIGHT],SOURCE[:WEIGHT]... (weights: shares of the training tokens)")
    g.add_argument("--text-column", default="text",
                   help="the column (Parquet, hf:), field (JSONL) or feature (tfds:) holding the text")
    add_convert_script_flag(g)
    g.add_argument("--tokenizer", default=None, help="reuse this tokenizer (a tokenizer or model directory) instead of training one")
    g.add_argument("--vocab-size", type=cli.positive_int, default=None,
                   help="train a new SentencePiece tokenizer of this size (default: the preset's); the default for a new run")
    g = p.add_argument_group("architecture (default: the preset's; see tfchat/config.py)")
    g.add_argument("--n-layer", type=cli.positive_int, default=None, help="transformer blocks")
    g.add_argument("--n-head", type=cli.positive_int, default=None, help="attention heads")
    g.add_argument("--n-embd", type=cli.positive_int, default=None, help="model width")
    g.add_argument("--block-size", type=cli.positive_int, default=None, help="context length")
    g.add_argument("--position", choices=("learned", "rope"), default=None, help="position embeddings")
    g.add_argument("--norm", choices=("layernorm", "rmsnorm"), default=None, help="normalisation")
    g.add_argument("--mlp", choices=("gelu", "relu2", "swiglu"), default=None, help="MLP activation")
    g.add_argument("--bias", action=argparse.BooleanOptionalAction, default=None, help="biases in projections and norms")
    g.add_argument("--qk-norm", action=argparse.BooleanOptionalAction, default=None, help="RMS-normalise queries and keys")
    g.add_argument("--tie-embeddings", action=argparse.BooleanOptionalAction, default=None,
                   help="the LM head is the token table transposed")
    g.add_argument("--logit-softcap", type=cli.non_negative_float, default=None, help="cap * tanh(logits / cap); 0 = off")
    add_content_filter_flags(p, "documents")
    add_training_flags(p, DEFAULTS)
    return p


ARCH_FLAGS = ("n_layer", "n_head", "n_embd", "block_size", "position", "norm", "mlp", "bias", "qk_norm",
              "tie_embeddings", "logit_softcap")


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.tokenizer and args.vocab_size:
        p.error("--tokenizer and --vocab-size exclude each other: reuse a tokenizer or train a new one")
    check_content_filter_flags(p, args)

    def job() -> dict:
        from tfchat.config import GPTConfig
        from tfchat.data.tables import Columns
        from training.jobs import pretrain

        architecture = {k: getattr(args, k) for k in ARCH_FLAGS if getattr(args, k) is not None}
        if args.dropout is not None:
            architecture["dropout"] = args.dropout
        seq_len = args.seq_len or GPTConfig.from_preset(args.preset, **architecture).block_size
        return pretrain(job_options(
            args, seq_len, preset=args.preset, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
            architecture=architecture, columns=Columns(text=args.text_column), content_filter=args.content_filter,
            filter_threshold=args.filter_threshold, convert_script=args.convert_script,
        ))

    def next_commands(out: str) -> list[str]:
        chinese_data = "zhwiki" in args.data  # the bundled Chinese sources, alone or mixed
        return [f"python -m training.finetune --from {out}" + (" --data dialogues-sample-zh" if chinese_data else "")]

    return run_job(job, args, next_commands)


if __name__ == "__main__":
    exit_process(main())
