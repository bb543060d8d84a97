"""Control agreement: do a chat model's tags steer what it says?

For each tag name a classifier knows (style, topic: `training.classify --task
style|topic`, trained on Topical-Chat turns outside the held-out split), the
model answers held-out prompts once per value of the name with that tag, and
once untagged. Per value, agreement is how often the classifier assigns that
value to the replies:

- `per_tag[v]["tagged"]`: replies generated with tag `v`;
- `per_tag[v]["untagged"]`: the untagged replies to the same prompts (the
  baseline: how often the model says `v` anyway);
- `tagged`, `untagged`: their means over the values with enough data (at
  least `MIN_SHARE` of the tagged training replies; all values are listed in
  `per_tag`, with their `share`);
- `reference` (given the held-out real replies, `held_out_replies`): the same
  two means for the people who wrote the data: how often the classifier says
  `v` of the real replies tagged `v`, and of all of them. Their difference is
  about what a model that replies exactly like the data would score: the
  ceiling that the classifier's accuracy sets.

The prompts are the user turns of the held-out Topical-Chat conversations of
the data, each alone (a one-message chat): a whole history would fix the
topic that the tag is asked to set. Replies are greedy, so the figures are
deterministic for a model. With `guidance` other than 1 the tagged replies
are decoded with classifier-free guidance (`tfchat.inference.guidance`).
This is CTRL's evaluation (Keskar et al. 2019) simplified: one external
classifier per tag name stands in for human judgements of whether a control
code was followed.

Example:

>>> result = control_agreement(load_model("runs/chat"), {"style": TextClassifier.load("runs/style")},
...                            control_prompts("chat-sample"))          # doctest: +SKIP
>>> result["style"]["tagged"] - result["style"]["untagged"]              # doctest: +SKIP
0.21
"""

from __future__ import annotations

import collections
import random
from typing import Mapping, Sequence

from tfchat.checkpoint.model_dir import LoadedModel
from tfchat.data import dialogues
from tfchat.inference.classifier import TextClassifier
from tfchat.inference.guidance import check_scale
from tfchat.text import chat_template

# A tag value counts in the means when at least this share of the training replies that carry its name have it
# (Topical-Chat's sad, disgusted, angry and fearful replies are 0.4-1.5% each: too few to learn or to judge).
MIN_SHARE = 0.03


def control_prompts(source: str | Sequence[str], limit: int = 200, seed: int = 0) -> tuple[list[str], dict]:
    """Held-out prompts and tag shares of a dialogue source.

    Returns:
        (prompts, shares): up to `limit` user turns of the source's held-out
        (validation) conversations that carry tags, sampled with `seed`; and
        {name: {value: share}} of the assistant messages' tags in the training
        split.
    """
    prompts, counts = [], collections.defaultdict(collections.Counter)
    for conversation in dialogues.iter_conversations(source):
        if not any(m.get("tags") for m in conversation):
            continue
        if dialogues.split_of(conversation) == "validation":
            prompts += [m["content"] for m in conversation if m["role"] == "user"]
        else:
            for m in conversation:
                if m["role"] == "assistant":
                    for name, value in (m.get("tags") or {}).items():
                        counts[name][value] += 1
    if not prompts:
        raise ValueError(f"{source}: no held-out conversation carries tags (control prompts come from tagged "
                         "conversations such as Topical-Chat's in chat-sample)")
    prompts = sorted(set(prompts))
    random.Random(seed).shuffle(prompts)
    shares = {name: {v: n / sum(c.values()) for v, n in sorted(c.items())} for name, c in counts.items()}
    return prompts[:limit], shares


def held_out_replies(source: str | Sequence[str]) -> list[tuple[str, dict]]:
    """(text, tags) of every tagged assistant reply in the source's held-out (validation) conversations."""
    return [(m["content"], m["tags"]) for conversation in dialogues.iter_conversations(source)
            if dialogues.split_of(conversation) == "validation"
            for m in conversation if m["role"] == "assistant" and m.get("tags")]


def control_agreement(loaded: LoadedModel, classifiers: Mapping[str, TextClassifier], prompts: Sequence[str],
                      shares: Mapping[str, Mapping[str, float]] | None = None, *, max_new_tokens: int = 32,
                      batch_size: int = 32, guidance: float = 1.0,
                      references: Sequence[tuple[str, dict]] | None = None) -> dict:
    """Agreement of each classifier with the requested tag, tagged and untagged (see the module docstring).

    Args:
        loaded: a chat model with a tag vocabulary (`loaded.tags`).
        classifiers: {tag name: classifier whose labels are that name's values}.
        prompts: user messages, each generated as a one-message chat.
        shares: {name: {value: share}} of the training replies (`control_prompts`);
            None counts every value in the means.
        guidance: the tagged replies' classifier-free guidance scale
            (`tfchat.inference.guidance`; 1 = off).
        references: held-out real replies with their tags (`held_out_replies`),
            for each name's `reference`.

    Returns:
        {name: {"tagged", "untagged", "per_tag": {value: {"tagged", "untagged",
        "share"}}, "counted": [values in the means], "classifier": path}},
        "prompts": N, and "samples" (every reply with its tag and the
        classifier's label).
    """
    from tfchat.eval.evaluate import check_max_new_tokens, greedy_replies

    tags = loaded.tags
    if tags is None:
        raise ValueError("this model has no tag vocabulary: fine-tune it on tagged data (python -m training.finetune "
                         "on chat-sample tags Topical-Chat replies with topic and style)")
    names = [n for n in tags.tags if n in classifiers]
    if not names:
        raise ValueError(f"no classifier for the model's tags ({', '.join(tags.tags)}); got {', '.join(classifiers)}")
    context = loaded.config.block_size
    check_max_new_tokens(max_new_tokens, context)
    check_scale(guidance)
    chats = [[{"role": "user", "content": p}] for p in prompts]

    def ids(reply_tags: dict | None) -> list[list[int]]:
        return [chat_template.prompt(c, loaded.tokenizer, context - max_new_tokens, tags=tags, reply_tags=reply_tags)
                for c in chats]

    plain = ids(None)

    def replies(reply_tags: dict | None) -> list[str]:
        guide = dict(guidance=guidance, unguided=plain) if reply_tags and guidance != 1 else {}
        return greedy_replies(loaded, ids(reply_tags) if reply_tags else plain, max_new_tokens, batch_size,
                              desc=f"replies {reply_tags or 'untagged'}", **guide)

    untagged = replies(None)
    out: dict = {"prompts": len(prompts), "guidance": guidance}
    samples = [{"prompt": p, "tags": {}, "reply": r} for p, r in zip(prompts, untagged)]
    for name in names:
        classifier = classifiers[name]
        unknown = sorted(set(tags.tags[name]) - set(classifier.labels))
        if unknown:
            raise ValueError(f"the {name} classifier {classifier.path} lacks the model's values {unknown}")
        base = [labels[0] for labels in classifier.predict(untagged)]
        for sample, label in zip(samples, base):  # the untagged replies come first
            sample[name] = label
        per_tag = {}
        for value in tags.tags[name]:
            texts = replies({name: value})
            predicted = [labels[0] for labels in classifier.predict(texts)]
            samples += [{"prompt": p, "tags": {name: value}, "reply": r, name: y}
                        for p, r, y in zip(prompts, texts, predicted)]
            share = (shares or {}).get(name, {}).get(value)
            per_tag[value] = {"tagged": _rate(predicted, value), "untagged": _rate(base, value),
                              **({"share": share} if share is not None else {})}
        counted = [v for v in per_tag if shares is None or per_tag[v].get("share", 0.0) >= MIN_SHARE]
        out[name] = {
            "tagged": sum(per_tag[v]["tagged"] for v in counted) / max(len(counted), 1),
            "untagged": sum(per_tag[v]["untagged"] for v in counted) / max(len(counted), 1),
            "per_tag": per_tag, "counted": counted, "classifier": classifier.path,
        }
        real = [(text, t[name]) for text, t in references or [] if name in t]
        if real:
            said = [labels[0] for labels in classifier.predict([text for text, _ in real])]
            rates = {v: (_rate([y for y, (_, t) in zip(said, real) if t == v], v), _rate(said, v)) for v in counted}
            out[name]["reference"] = {"tagged": sum(a for a, _ in rates.values()) / max(len(rates), 1),
                                      "untagged": sum(b for _, b in rates.values()) / max(len(rates), 1),
                                      "replies": len(real)}
    out["samples"] = samples
    return out


def _rate(predicted: Sequence[str], value: str) -> float:
    return sum(p == value for p in predicted) / max(len(predicted), 1)
