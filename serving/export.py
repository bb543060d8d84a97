"""Exports a tfchat model directory as a versioned SavedModel for TF Serving.

    python -m serving.export --model runs/chat --out exports/tfchat [--version N] [--max-len L]

writes `exports/tfchat/<N>/` (N = next integer version unless given; written
to a temporary folder, then renamed, so a failed export leaves nothing
behind) and `exports/tfchat/models.config`. Serve it with

    tensorflow_model_server --rest_api_port=8501 --model_name=tfchat --model_base_path=$PWD/exports/tfchat

or with `python -m serving.server --model exports/tfchat`. Signatures: see
`serving/exporter.py`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

log = logging.getLogger("serving.export")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.export", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="tfchat model directory, or a training run directory holding model/")
    parser.add_argument("--out", required=True, help="export base path; versions go in integer subfolders")
    parser.add_argument("--version", type=int, default=None, help="version number (default: next free)")
    parser.add_argument("--max-len", type=int, default=None, help="serving context length (default: block_size)")
    parser.add_argument("--name", default=None, help="model name in models.config (default: basename of --out)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from tfchat.model_dir import is_model_dir, load_model, resolve_model_dir

    if not os.path.isdir(args.model):
        parser.exit(2, f"error: model directory not found: {args.model}\n")
    model_dir = resolve_model_dir(args.model)  # a training run dir holds its model in model/
    if not is_model_dir(model_dir):
        parser.exit(2, f"error: {args.model} is not a tfchat model directory (no tfchat.json); train or save a model first\n")
    if args.version is not None and args.version <= 0:
        parser.exit(2, f"error: --version must be a positive integer, got {args.version}\n")

    from serving.exporter import export

    try:
        loaded = load_model(model_dir)
        name = args.name or os.path.basename(os.path.abspath(args.out))
        path = export(loaded, args.out, version=args.version, max_len=args.max_len, name=name)
    except (OSError, ValueError) as e:
        parser.exit(2, f"error: {e}\n")
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
