"""Align a chat model with human preferences: DPO (or IPO) against the model it starts from.

    python -m training.align                                # runs/chat -> runs/aligned on the bundled preference pairs
    python -m training.align --loss ipo --beta 0.5 --out runs/aligned-ipo
    python -m training.align --from runs/gpt2-chat --data hh-rlhf:harmless-base/train.jsonl.gz --out runs/gpt2-aligned

The policy starts from --from, which is also DPO's frozen reference: the
reference log-probabilities of every pair are computed once before the
first step (kept in OUT/reference_logps.npz for resuming). The loss covers
the final reply's tokens and its end marker only. TensorBoard gets
train/ and val/ rewards/chosen, rewards/rejected, rewards/accuracies,
rewards/margins, logps/chosen, logps/rejected, loss and lr. At the end the
held-out preference accuracy of the starting and the aligned model is
printed; OUT/model is an ordinary chat model directory (serving.export,
serving.server and serving.chat take it as they are).

--data: preferences-sample (bundled: Anthropic HH-RLHF harmless-base and
ranked OpenAssistant replies), hh-rlhf-sample, oasst-pairs-sample, a
preference JSONL file (see tfchat/data/preferences.py), or FORMAT:PATH
with FORMAT hh-rlhf, oasst or messages.
"""

from __future__ import annotations


from tfchat import cli
from training.cli import add_training_flags, exit_process, job_options, run_job

DEFAULTS = dict(steps=200, batch_size=16, lr=5e-5, warmup_steps=20, eval_every=100, save_every=100, eval_batches=1000,
                out="runs/aligned")


def parser():
    p = cli.parser("python -m training.align", __doc__)
    g = p.add_argument_group("model and data")
    g.add_argument("--from", dest="init_from", default="runs/chat",
                   help="chat model directory (or run directory) to align; also the frozen reference")
    g.add_argument("--data", default="preferences-sample", help="preference pairs (see above)")
    g.add_argument("--loss", choices=("dpo", "ipo"), default="dpo",
                   help="dpo: -log sigmoid(beta * margin); ipo: (margin - 1/(2 beta))^2")
    g.add_argument("--beta", type=cli.positive_float, default=0.1,
                   help="how far the policy may move from the reference (smaller: further)")
    g.add_argument("--nll-weight", type=cli.non_negative_float, default=0.0,
                   help="weight of the chosen reply's per-token NLL added to the loss (RPO); 0: plain DPO/IPO")
    add_training_flags(p, DEFAULTS)
    return p


def held_out_line(metrics: dict) -> str:
    """The closing figures: held-out preference accuracy before and after, beside the length baseline."""
    held = metrics.get("held_out")
    if not held:
        return "Held-out preference accuracy: see the model directory's tfchat.json"
    start, aligned, relative = (held[k] for k in ("start", "aligned", "aligned_vs_reference"))
    return (f"Held-out preference accuracy ({aligned['preference_pairs']} pairs): start "
            f"{100 * start['preference_accuracy']:.1f}% -> aligned {100 * aligned['preference_accuracy']:.1f}% "
            f"(implicit reward vs the start {100 * relative['preference_accuracy']:.1f}%; "
            f"length baseline {100 * start['preference_length_baseline']:.1f}%)")


def main(argv=None) -> int:
    args = parser().parse_args(argv)

    def job() -> dict:
        from training.jobs import align

        return align(job_options(args, beta=args.beta, loss=args.loss, nll_weight=args.nll_weight))

    return run_job(job, args, lambda out: [
        f"python -m training.evaluate --model {out} --reference {args.init_from} --preferences {args.data} --json",
        f"python -m serving.export --model {out} --out exports/aligned",
        "python -m serving.server --model exports/aligned",
    ], summary=held_out_line)


if __name__ == "__main__":
    exit_process(main())
