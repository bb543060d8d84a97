"""Fine-tune a pretrained model on dialogues into a chat model (supervised, assistant tokens only).

    python -m training.finetune                                   # runs/pretrain -> runs/chat on the bundled dialogues
    python -m training.finetune --from runs/gpt2 --data my_chats.jsonl --out runs/gpt2-chat
    python -m training.finetune --data hf:HuggingFaceH4/ultrachat_200k@train_sft --seq-len 256
    python -m training.finetune --from runs/zh --data dialogues-sample-zh --out runs/zh-chat   # Chinese
    python -m training.finetune --data grounded-sample --out runs/grounded   # replies grounded in Wikipedia leads
"""

from __future__ import annotations

from tfchat import cli
from training.cli import (add_content_filter_flags, add_convert_script_flag, add_training_flags,
                          check_content_filter_flags, exit_process, job_options, run_job)

DEFAULTS = dict(steps=300, batch_size=16, lr=5e-4, warmup_steps=30, eval_every=100, save_every=100, out="runs/chat")


def parser():
    p = cli.parser("python -m training.finetune", __doc__)
    g = p.add_argument_group("model and data")
    g.add_argument("--from", dest="init_from", default="runs/pretrain",
                   help="model directory (or run directory) to start from, e.g. a pretraining run or an imported GPT-2")
    g.add_argument("--data", default="chat-sample",
                   help="dialogues: chat-sample (bundled OpenAssistant + Topical-Chat, tagged with topic and style), "
                        "dialogues-sample (OpenAssistant + Topical-Chat valid_freq), dialogues-sample-zh "
                        "(bundled Chinese KdConv + LCCC), grounded-sample (OpenAssistant + Topical-Chat with its "
                        "Wikipedia knowledge in the prompt), messages-JSONL files "
                        "(see python -m training.convert_dialogues), or a table: hf:NAME[:CONFIG][@SPLIT] "
                        "(pip install 'tfchat[hf]') or .parquet files, one conversation per row")
    g.add_argument("--messages-column", default=None,
                   help="column of messages, OpenAI {role, content} or ShareGPT {from, value} "
                        "(default: messages, conversations or conversation)")
    g.add_argument("--prompt-column", default=None,
                   help="column of the user's turn, for one exchange per row (with --response-column; default: "
                        "recognised, e.g. Alpaca's instruction + input -> output)")
    g.add_argument("--response-column", default=None, help="column of the assistant's reply (with --prompt-column)")
    add_convert_script_flag(g)
    g.add_argument("--pack", action="store_true", help="pack several conversations per sequence instead of padding")
    g.add_argument("--tag-dropout", type=cli.fraction, default=0.2,
                   help="chance that a tag name (topic, style) is left out of a training conversation, so the model "
                        "also answers without it (data without tags: no effect)")
    add_content_filter_flags(p, "conversations (any message flagged)")
    add_training_flags(p, DEFAULTS)
    return p


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    check_content_filter_flags(p, args)
    from tfchat.data.tables import Columns

    try:
        columns = Columns(messages=args.messages_column, prompt=args.prompt_column, response=args.response_column)
    except ValueError as e:
        p.error(str(e))

    def job() -> dict:
        from training.jobs import finetune

        return finetune(job_options(
            args, pack=args.pack, columns=columns, content_filter=args.content_filter,
            filter_threshold=args.filter_threshold, convert_script=args.convert_script, tag_dropout=args.tag_dropout,
        ))

    return run_job(job, args, lambda out: [f"python -m serving.export --model {out} --out exports/tfchat",
                                           "python -m serving.server --model exports/tfchat"])


if __name__ == "__main__":
    exit_process(main())
