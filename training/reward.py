"""Train a reward model on preference pairs: the chat model's backbone plus a scalar head.

    python -m training.reward                               # runs/chat -> runs/reward on the bundled preference pairs
    python -m training.reward --data hh-rlhf-sample --out runs/reward-hh

The reward of a reply is a linear map of the backbone's hidden state at its
end marker; training minimises -log sigmoid(r_chosen - r_rejected) over the
pairs. TensorBoard gets train/ and val/ rewards/chosen, rewards/rejected,
rewards/accuracies (the pairwise accuracy), rewards/margins, loss and lr; at
the end the held-out pairwise accuracy is printed beside the length
baseline ("the shorter reply is the chosen one"). Export it with
serving.export (a SavedModel with a `reward` signature) and rerank a chat
model's replies with `serving.server --reward-model EXPORT --best-of N`.

--data: as for python -m training.align.
"""

from __future__ import annotations


from tfchat import cli
from training.cli import add_training_flags, exit_process, job_options, run_job

DEFAULTS = dict(steps=300, batch_size=16, lr=1e-4, warmup_steps=30, eval_every=100, save_every=100, eval_batches=1000,
                out="runs/reward")


def parser():
    p = cli.parser("python -m training.reward", __doc__)
    g = p.add_argument_group("model and data")
    g.add_argument("--from", dest="init_from", default="runs/chat",
                   help="model directory (or run directory) whose backbone the reward model starts from, "
                        "or a reward model to train further")
    g.add_argument("--data", default="preferences-sample", help="preference pairs (see python -m training.align --help)")
    add_training_flags(p, DEFAULTS)
    return p


def held_out_line(metrics: dict) -> str:
    held = metrics.get("held_out")
    if not held:
        return "Held-out reward accuracy: see the model directory's tfchat.json"
    by_source = ", ".join(f"{name} {100 * f['accuracy']:.1f}% (length baseline {100 * f['length_baseline']:.1f}%, "
                          f"{f['pairs']} pairs)" for name, f in held["reward_by_source"].items())
    return (f"Held-out reward accuracy: {100 * held['reward_accuracy']:.1f}% (length baseline "
            f"{100 * held['reward_length_baseline']:.1f}%, {held['reward_pairs']} pairs); by source: {by_source}")


def main(argv=None) -> int:
    args = parser().parse_args(argv)

    def job() -> dict:
        from training.jobs import reward

        return reward(job_options(args))

    return run_job(job, args, lambda out: [
        f"python -m training.evaluate --model {out} --preferences {args.data} --json",
        f"python -m serving.export --model {out} --out exports/reward",
        "python -m serving.server --model exports/tfchat --reward-model exports/reward --best-of 4",
    ], summary=held_out_line)


if __name__ == "__main__":
    exit_process(main())
