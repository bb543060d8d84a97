"""Exports a tfchat model directory (or a classifier) as a versioned SavedModel for TF Serving.

    python -m serving.export --model runs/chat --out exports/tfchat [--version N] [--max-len L]
    python -m serving.export --classifier runs/moderation --out exports/moderation

writes `exports/tfchat/<N>/` (N = next integer version unless given; written
to a temporary folder, then renamed, so a failed export leaves nothing
behind) and `exports/tfchat/models.config`. Serve it with

    tensorflow_model_server --rest_api_port=8501 --model_name=tfchat --model_base_path=$PWD/exports/tfchat

or with `python -m serving.server --model exports/tfchat`. Signatures: see
`serving/exporter.py` (a classifier's `classify`: `serving/classifier_export.py`).
"""

from __future__ import annotations

import os
import sys

from tfchat import cli


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("python -m serving.export", __doc__)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="tfchat model directory, or a training run directory holding model/")
    which.add_argument("--classifier", help="classifier directory, or a python -m training.classify run directory")
    parser.add_argument("--out", required=True, help="export base path; versions go in integer subfolders")
    parser.add_argument("--version", type=cli.positive_int, default=None, help="version number (default: next free)")
    parser.add_argument("--max-len", type=cli.positive_int, default=None, help="serving context length (default: block_size)")
    parser.add_argument("--name", default=None, help="model name in models.config (default: basename of --out)")
    args = parser.parse_args(argv)

    def run() -> int:
        cli.setup(args.verbose)
        from serving.exporter import export
        from tfchat.checkpoint.model_dir import is_model_dir, load_model, not_found, resolve_model_dir

        if args.version is not None and os.path.exists(os.path.join(args.out, str(args.version))):
            raise cli.UsageError(f"version {args.version} already exists: {os.path.join(args.out, str(args.version))}; "
                                 "leave out --version to write the next one")
        name = args.name or os.path.basename(os.path.abspath(args.out))
        if args.classifier:
            return _export_classifier(args, name)
        if not os.path.isdir(args.model):
            raise cli.UsageError(str(not_found(args.model)))
        model_dir = resolve_model_dir(args.model)  # a training run dir holds its model in model/
        if not is_model_dir(model_dir):
            raise cli.UsageError(f"{args.model} is not a tfchat model directory (no tfchat.json); train one with "
                                 f"`python -m training.finetune --out {args.model}`, or re-run the training command "
                                 "that writes it to let it finish")

        path = export(load_model(model_dir), args.out, version=args.version, max_len=args.max_len, name=name)
        print(path)
        cli.print_next(f"python -m serving.server --model {args.out}",
                       f"tensorflow_model_server --rest_api_port=8501 --model_name={name} "
                       f"--model_base_path={os.path.abspath(args.out)}")
        return 0

    return cli.run(run)


def _export_classifier(args, name: str) -> int:
    from tfchat.checkpoint.classifier_dir import is_classifier_dir, resolve_classifier_dir

    if args.max_len is not None:
        raise cli.UsageError("--max-len is for language models, not --classifier")
    if not is_classifier_dir(resolve_classifier_dir(args.classifier)):
        raise cli.UsageError(f"{args.classifier} is not a classifier directory (no tfchat.json of format "
                             "tfchat-classifier); train one with python -m training.classify")
    from serving.classifier_export import export_classifier
    from tfchat.checkpoint.classifier_dir import load_classifier

    path = export_classifier(load_classifier(args.classifier), args.out, version=args.version, name=name)
    print(path)
    cli.print_next(f"python -m serving.server --model exports/tfchat --content-filter {args.out}",
                   f"tensorflow_model_server --rest_api_port=8501 --model_name={name} "
                   f"--model_base_path={os.path.abspath(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
