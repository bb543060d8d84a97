"""Import a local Hugging Face GPT-2 checkpoint into a tfchat model directory (nothing is downloaded).

    python -m tfchat.convert --from-hf ~/models/gpt2 --out runs/gpt2
    python -m training.finetune --from runs/gpt2 --out runs/gpt2-chat --batch-size 8 --seq-len 512

What is read and how the weights map: `tfchat/checkpoint/gpt2.py`.
"""

from __future__ import annotations

import sys

from tfchat import cli


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("python -m tfchat.convert", __doc__)
    parser.add_argument("--from-hf", required=True, metavar="DIR", help="HF GPT-2 folder (config.json + weights)")
    parser.add_argument("--out", required=True, metavar="DIR", help="tfchat model directory to write")
    parser.add_argument("--tokenizer", metavar="DIR", help="folder with vocab.json + merges.txt if --from-hf has none")
    parser.add_argument("--dropout", type=cli.fraction, default=0.0, help="dropout stored in the config")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing tfchat model directory")
    args = parser.parse_args(argv)

    def run() -> int:
        cli.setup(args.verbose)
        from tfchat.checkpoint.gpt2 import convert_hf_gpt2

        loaded = convert_hf_gpt2(args.from_hf, args.out, args.tokenizer, args.dropout, args.overwrite)
        print(f"converted {args.from_hf} -> {args.out} (vocab_size {loaded.config.vocab_size})")
        cli.print_next(f"python -m training.finetune --from {args.out} --out {args.out.rstrip('/')}-chat")
        return 0

    return cli.run(run)


if __name__ == "__main__":
    sys.exit(main())
