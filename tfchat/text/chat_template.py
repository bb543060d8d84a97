"""The chat template: the one place the conversation format lives.

A conversation is a list of messages `{"role": "system"|"user"|"assistant",
"content": str}`. It becomes token ids by concatenating, in *id space*:

    <|endoftext|>                                   start of a conversation
    <|system|> enc(system) <|end|>                  only if messages[0] is a system message
    <|knowledge|> enc(knowledge) <|end|>            only with `knowledge=` (retrieved passages)
    <|user|> enc(user) <|end|>
    <|assistant|> <|control_i|>... enc(reply) <|end|>   control ids only for tagged replies
    <|user|> ...                                    one block per further message

so `[eot_id, system_id, *enc(system), end_id, user_id, *enc(user), end_id,
assistant_id, *enc(reply), end_id, ...]`. The markers are control ids that
`tokenizer.encode` never produces, so no text a user types (not even the
literal string "<|user|>") can forge a turn boundary.

Training (`render`) returns a loss mask that is 1 exactly on the assistant's
content tokens and its closing `<|end|>` (the model learns to answer and to
stop), 0 on everything else, the `<|assistant|>` marker included (at
inference we write it ourselves). Inference (`prompt`, and its graph twin
`tf_prompt` for SavedModel signatures) renders the history the same way and
ends with `<|assistant|>`, asking the model for the next reply.

The knowledge segment and the control ids (`tfchat.text.control_tags`: a
reply's tags such as `{"style": "happy"}`, each a reserved `<|control_i|>`
id) are context: never in the loss, and no text can produce their ids.

Fitting into `max_len` tokens:

1. The system block is capped at `max_len // 2` tokens (its content is cut at
   the end), so a huge system prompt cannot crowd out the conversation.
2. The knowledge segment gets the room the whole dialogue leaves (its tail
   is cut, or the segment dropped): knowledge is cut before the dialogue is.
3. The oldest whole exchanges (a user message and the replies that follow it)
   are dropped until the rest fits; the system prompt is always kept.
4. If even the last exchange does not fit:
   - `prompt`/`tf_prompt`: its oldest tokens are cut (the start of the user
     message; its `<|user|>` marker is kept), so the model sees the end of
     the question, next to where it answers.
   - `render`: the user part is cut from its start until the reply has at
     least half of the room, then the sequence is cut at `max_len`: the reply
     loses its tail (and its `<|end|>`, since it no longer ends there).
   - `render_reply` (preference pairs): nothing is cut; the pair is skipped.

`render_reply` renders a prompt conversation and one more assistant reply
for preference training: `prompt(history) + enc(reply) + [end]`, the same ids
`render` gives for the whole conversation, with the mask on the *final*
reply and its `<|end|>` only (earlier assistant turns are context). The
history drops its oldest whole exchanges to leave `room` ids for the reply,
so a chosen and a rejected reply rendered with the same `room` follow the
same context.

Example:

>>> from tfchat.text.tokenizer import train_tokenizer
>>> tok = train_tokenizer(["Hi there. How are you? Fine, thanks."] * 20, vocab_size=400)
>>> msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
>>> ids, mask = render(msgs, tok, max_len=64)
>>> ids[:2] == [tok.eot_id, tok.user_id] and ids[-1] == tok.end_id
True
>>> prompt(msgs[:1], tok, max_len=64)[-1] == tok.assistant_id
True
"""

from __future__ import annotations

from typing import Mapping, Sequence

import tensorflow as tf

from tfchat.text.control_tags import TagVocabulary
from tfchat.text.special_tokens import ROLES

# eot + system block + one user block + assistant marker need a few ids.
MIN_MAX_LEN = 8


def _check_messages(messages: Sequence[Mapping[str, str]]) -> tuple[list[str], list[str]]:
    roles, contents = [], []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise TypeError(f"message {i} is a {type(message).__name__}, expected a dict")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ValueError(f"message {i}: role must be one of {ROLES}, got {role!r}")
        if not isinstance(content, str):
            raise ValueError(f"message {i}: content must be a str, got {type(content).__name__}")
        roles.append(role)
        contents.append(content)
    return roles, contents


def render(
    messages: Sequence[Mapping[str, str]],
    tokenizer,
    max_len: int,
    *,
    knowledge: str | None = None,
    tags: TagVocabulary | None = None,
) -> tuple[list[int], list[int]]:
    """Renders a conversation for training.

    Args:
        messages: `[{"role": ..., "content": ...}, ...]`; an assistant message
            may carry `"tags": {"style": "happy", ...}` (ignored without `tags`).
        tokenizer: a `tfchat.text.tokenizer.Tokenizer`.
        max_len: the most ids to return (see the module docstring for cuts).
        knowledge: text for the knowledge segment (never in the loss).
        tags: the model's tag vocabulary, turning message tags into control ids.

    Returns:
        (ids, loss_mask), equal length <= max_len; loss_mask is 1 exactly on
        assistant content tokens and the assistant's `end_id`.
    """
    roles, contents = _check_messages(messages)
    return render_encoded(roles, [tokenizer.encode(c) for c in contents], tokenizer, max_len,
                          knowledge=_encode_knowledge(knowledge, tokenizer),
                          controls=_message_controls(messages, tags))


def render_encoded(
    roles: Sequence[str],
    encoded: Sequence[Sequence[int]],
    tokenizer,
    max_len: int,
    *,
    knowledge: Sequence[int] | None = None,
    controls: Sequence[Sequence[int] | None] | None = None,
) -> tuple[list[int], list[int]]:
    """`render` for contents already tokenized (the pipeline batch-encodes): `knowledge` as ids, and
    `controls`, one list of control ids (or None) per message, put after that assistant message's marker."""
    return _assemble(roles, encoded, tokenizer, max_len, generation=False, knowledge=knowledge, controls=controls)


def prompt(
    messages: Sequence[Mapping[str, str]],
    tokenizer,
    max_len: int,
    *,
    knowledge: str | None = None,
    tags: TagVocabulary | None = None,
    reply_tags: Mapping[str, str] | None = None,
) -> list[int]:
    """The inference prompt: the rendered history followed by `assistant_id` and the control ids of `reply_tags`.

    Same code path as `render`; at most `max_len` ids. `reply_tags` (e.g.
    `{"topic": "music"}`) asks for a reply of those tags; unknown names or
    values are a `ValueError`.
    """
    roles, contents = _check_messages(messages)
    if reply_tags and tags is None:
        raise ValueError("reply tags need the model's tag vocabulary (this model was trained without tags)")
    ids, _ = _assemble(roles, [tokenizer.encode(c) for c in contents], tokenizer, max_len, generation=True,
                       knowledge=_encode_knowledge(knowledge, tokenizer), controls=_message_controls(messages, tags),
                       reply_controls=tags.ids(reply_tags) if tags is not None else [])
    return ids


def render_reply(
    roles: Sequence[str], encoded: Sequence[Sequence[int]], reply: Sequence[int], tokenizer, max_len: int,
    room: int | None = None,
) -> tuple[list[int], list[int]] | None:
    """Renders a history (tokenized) and one more assistant reply (tokenized) for preference training.

    Args:
        roles, encoded: the history, ending with the user turn the reply answers.
        reply: the reply's content ids.
        max_len: the most ids to return.
        room: ids kept free for the reply (default and minimum: its own
            `len(reply) + 1`); give two replies the longer one's to render
            both after the same context.

    Returns:
        (ids, mask) with mask 1 exactly on the reply's ids and its `end_id`;
        None when the reply and the history's last exchange cannot fit whole.
    """
    room = max(room or 0, len(reply) + 1)
    if max_len - room < MIN_MAX_LEN:
        return None
    fitted = _assemble(roles, encoded, tokenizer, max_len - room, generation=True, whole_last=True)
    if fitted is None:
        return None
    ids = fitted[0] + [*reply, tokenizer.special.end]
    return ids, [0] * len(fitted[0]) + [1] * (len(reply) + 1)


def _encode_knowledge(knowledge: str | None, tokenizer) -> list[int] | None:
    if knowledge is None or knowledge == "":
        return None
    if not isinstance(knowledge, str):
        raise ValueError(f"knowledge must be a str, got {type(knowledge).__name__}")
    return tokenizer.encode(knowledge)


def _message_controls(messages, tags: TagVocabulary | None) -> list[list[int] | None] | None:
    # A model without a vocabulary renders tagged data as untagged: the tags were meant for a tagged model.
    if tags is None or not any(isinstance(m, Mapping) and m.get("tags") for m in messages):
        return None
    return [tags.ids(m.get("tags")) if m.get("role") == "assistant" else None for m in messages]


def _assemble(roles, encoded, tokenizer, max_len: int, generation: bool, knowledge=None, controls=None,
              reply_controls=(), whole_last: bool = False):
    if max_len < MIN_MAX_LEN:
        raise ValueError(f"max_len must be at least {MIN_MAX_LEN}, got {max_len}")
    special = tokenizer.special
    end = special.end
    prefix, prefix_mask = special.document([]), [0]
    start = 0
    if roles and roles[0] == "system":
        system = list(encoded[0])[: max(max_len // 2 - 3, 0)]
        prefix += [special.system, *system, end]
        prefix_mask += [0] * (len(system) + 2)
        start = 1
    # Blocks of (exchange index, ids, mask); an exchange starts at each user message.
    blocks = []
    group = 0
    for i, (role, content) in enumerate(zip(roles[start:], encoded[start:]), start):
        if role == "user":
            group += 1
        marker = [special.role_id(role), *((controls[i] or []) if controls and role == "assistant" else [])]
        ids = [*marker, *content, end]
        is_reply = 1 if role == "assistant" else 0
        blocks.append((group, ids, [0] * len(marker) + [is_reply] * (len(ids) - len(marker))))
    suffix = [special.assistant, *reply_controls] if generation else []

    # Knowledge gets the room the whole dialogue leaves, so it is cut before the dialogue is.
    if knowledge:
        if special.knowledge is None:
            raise ValueError("this tokenizer has no <|knowledge|> token (trained before tfchat 0.2): "
                             "train a new one to use knowledge")
        room = max_len - len(prefix) - len(suffix) - sum(len(ids) for _, ids, _ in blocks) - 2
        if room > 0:
            prefix += [special.knowledge, *list(knowledge)[:room], end]
            prefix_mask += [0] * (min(len(knowledge), room) + 2)

    # Keep the longest tail of whole exchanges that fits.
    budget = max_len - len(prefix) - len(suffix)
    keep_from = blocks[-1][0] if blocks else 0
    for g in range(keep_from + 1):
        if sum(len(ids) for grp, ids, _ in blocks if grp >= g) <= budget:
            keep_from = g
            break
    kept = [(ids, mask, grp) for grp, ids, mask in blocks if grp >= keep_from]
    body = [t for ids, _, _ in kept for t in ids]
    body_mask = [m for _, mask, _ in kept for m in mask]

    if len(body) > budget:  # the last exchange alone is too long
        if whole_last:
            return None
        if generation:
            cut = len(body) - (budget - 1)  # keep the first marker, drop the oldest tokens
            body = body[:1] + body[cut:]
            body_mask = body_mask[:1] + body_mask[cut:]
        else:
            # Split into the user part and the replies; make room for a reply.
            n_user = 0
            for ids, _, _ in kept:
                if ids[0] == special.assistant:
                    break
                n_user += len(ids)
            user, user_mask = body[:n_user], body_mask[:n_user]
            rest, rest_mask = body[n_user:], body_mask[n_user:]
            room = max(budget - len(rest), budget // 2)
            if len(user) > room:
                cut = len(user) - (room - 1)
                user, user_mask = user[:1] + user[cut:], user_mask[:1] + user_mask[cut:]
            body = (user + rest)[:budget]
            body_mask = (user_mask + rest_mask)[:budget]
    ids = prefix + body + suffix
    mask = prefix_mask + body_mask + [0] * len(suffix)
    return ids, mask


def tf_prompt(roles: tf.Tensor, contents: tf.Tensor, tokenizer, max_len, knowledge=None, controls=None) -> tf.Tensor:
    """Graph version of `prompt` for SavedModel signatures; same ids.

    Args:
        roles: string [N], each "system", "user" or "assistant".
        contents: string [N], the messages' text.
        tokenizer: a `tfchat.text.tokenizer.Tokenizer` (tracked by the module).
        max_len: int or int32 scalar tensor.
        knowledge: optional string scalar for the knowledge segment ("" = none).
        controls: optional int32 [C], control ids for the reply (after the final `<|assistant|>`; history
            turns carry none here).

    Returns:
        int32 [T], T <= max_len.

    Example:

    >>> ids = tf_prompt(tf.constant(["user"]), tf.constant(["Hi"]), tok, 64)  # doctest: +SKIP
    """
    roles = tf.convert_to_tensor(roles, tf.string)
    contents = tf.convert_to_tensor(contents, tf.string)
    max_len = tf.cast(max_len, tf.int32)
    i32 = lambda x: tf.constant([x], tf.int32)  # noqa: E731
    checks = [
        tf.debugging.assert_greater_equal(max_len, MIN_MAX_LEN, message="max_len too small"),
        tf.debugging.assert_equal(tf.size(roles), tf.size(contents), message="roles/contents differ in length"),
        tf.debugging.assert_equal(
            tf.reduce_all((roles == "system") | (roles == "user") | (roles == "assistant")),
            True,
            message="roles must be 'system', 'user' or 'assistant'",
        ),
    ]
    with tf.control_dependencies(checks):
        encoded = tokenizer.tf_encode_batch(contents)
    special = tokenizer.special

    has_system = tf.reduce_any(tf.equal(roles[:1], "system"))
    start = tf.cast(has_system, tf.int32)
    system = tf.cond(
        has_system,
        lambda: encoded[:1].flat_values[: tf.maximum(max_len // 2 - 3, 0)],  # row 0, shape-safe
        lambda: tf.zeros([0], tf.int32),
    )
    prefix = tf.concat(
        [
            i32(special.eot),
            tf.cond(
                has_system,
                lambda: tf.concat([i32(special.system), system, i32(special.end)], 0),
                lambda: tf.zeros([0], tf.int32),
            ),
        ],
        0,
    )

    suffix = i32(special.assistant)
    if controls is not None:
        suffix = tf.concat([suffix, tf.reshape(tf.cast(controls, tf.int32), [-1])], 0)

    rest_roles = roles[start:]
    rest = encoded[start:]
    n = tf.size(rest_roles)
    markers = tf.where(
        rest_roles == "user",
        special.user,
        tf.where(rest_roles == "assistant", special.assistant, special.system),
    )
    column = lambda x: tf.RaggedTensor.from_tensor(tf.reshape(x, [-1, 1]))  # noqa: E731
    blocks = tf.concat([column(markers), rest, column(tf.fill([n], special.end))], axis=1)
    group = tf.cumsum(tf.cast(rest_roles == "user", tf.int32))
    num_groups = tf.reduce_max(tf.concat([group, [0]], 0)) + 1
    group_len = tf.math.unsorted_segment_sum(tf.cast(blocks.row_lengths(), tf.int32), group, num_groups)
    tail_len = tf.cumsum(group_len, reverse=True)  # ids in exchanges g, g+1, ...
    if knowledge is not None and special.knowledge is not None:
        # As in `prompt`: the room the whole dialogue leaves, so knowledge is cut before the dialogue is.
        k = tokenizer.tf_encode_batch(tf.reshape(tf.convert_to_tensor(knowledge, tf.string), [1])).flat_values
        room = max_len - tf.size(prefix) - tf.size(suffix) - tf.reduce_sum(group_len) - 2
        has = tf.logical_and(room > 0, tf.size(k) > 0)
        block = tf.cond(has, lambda: tf.concat([i32(special.knowledge), k[: tf.maximum(room, 0)], i32(special.end)], 0),
                        lambda: tf.zeros([0], tf.int32))
        prefix = tf.concat([prefix, block], 0)
    budget = max_len - tf.size(prefix) - tf.size(suffix)
    fits = tail_len <= budget
    keep_from = tf.where(
        tf.reduce_any(fits), tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32), num_groups - 1
    )
    body = tf.ragged.boolean_mask(blocks, group >= keep_from).flat_values
    body = tf.cond(
        tf.size(body) > budget,
        lambda: tf.concat([body[:1], body[tf.size(body) - (budget - 1):]], 0),
        lambda: body,
    )
    return tf.concat([prefix, body, suffix], 0)
