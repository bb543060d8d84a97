"""Builds the serving SavedModel: tokenization, chat template and KV-cached generation in the graph.

Signatures (every input and output has the batch as dimension 0, so TF
Serving's row format `{"instances": [...]}` works as well as `{"inputs": ...}`;
a SavedModel signature cannot have optional inputs, so sampling inputs are
always given, per row):

* `serving_default` = `generate`: prompt string [B], max_new_tokens int32 [B],
  temperature float32 [B], top_k int32 [B], top_p float32 [B], seed int32 [B]
  -> text string [B], token_ids int32 [B, N], num_tokens int32 [B].
  A prompt is encoded as `[eot_id] + encode(prompt)`.
* `chat`: roles, contents string [B, M] (one conversation per row; a "" role
  marks padding) + the sampling inputs -> reply, token_ids, num_tokens.
  The prompt is `tfchat.text.chat_template.tf_prompt`.
* `score`: text string [B] -> token_ids [B, T] (the scored ids, `[eot_id] +
  encode(text)` shifted by one), log_probs float32 [B, T], num_tokens [B],
  total_log_prob [B], loss [B] (mean negative log-likelihood per token).
* `tokenize`: text [B] -> token_ids [B, T] (right-padded), num_tokens [B].
* `detokenize`: token_ids [B, T], num_tokens [B] -> text [B] (special ids dropped).
* `token_bytes`: token_ids [B, T] -> token_bytes string [B, T]: each id's UTF-8
  bytes (special ids ""), for streaming clients: `tfchat.inference.streaming`
  joins them and holds back a character until its last byte-fallback id
  arrives (decoding a prefix of ids with `detokenize` shows it as U+FFFD).
* `chat_prompt`: roles, contents [B, M], max_new_tokens [B] -> token_ids, num_tokens.
* `knowledge_prompt`: `chat_prompt` plus knowledge string [B], each row's
  text for the chat template's knowledge segment ("" = none): grounded
  replies (retrieved passages) through `prefill`/`decode`.
* Only for a model trained with control tags (`tfchat.text.control_tags`;
  its vocabulary is the metadata's "tags"), so TF Serving clients of `chat`
  never see a changed signature:
  - `chat_tagged`: `chat` plus tags string [B, K], each row's `name=value`
    items (`"topic=music"`; "" pads a row, a row of "" is untagged), and
    guidance float32 [B]: 1 = off; otherwise a tagged row is decoded with
    classifier-free guidance against its untagged twin
    (`tfchat.inference.guidance`; twice the compute when any row is guided).
    Their control ids follow the final `<|assistant|>`, in vocabulary order.
  - `tagged_prompt`: roles, contents [B, M], knowledge [B], tags [B, K],
    max_new_tokens [B] -> token_ids, num_tokens: the server's prompt for
    tagged (and grounded) replies through `prefill`/`decode`.
  An unknown item, or two values of one name, fails the request with an
  error naming the known tags.
* `prefill`: token_ids [B, T] right-padded prompt ids, num_tokens [B] + the
  sampling inputs -> next_token [B], logits [B, V], cache
  [n_layer, S, B, 2, n_head, head_dim], key_mask bool [B, S], position [B],
  cache_index [B] (same value in every row).
* `decode`: token [B], position [B], cache, cache_index [B], key_mask [B, S]
  + temperature, top_k, top_p, seed -> next_token, logits, cache.
  Feed `next_token`/`position`/`cache_index` of the previous call, then add 1
  to position and cache_index. Greedy or seeded streams equal `generate`.

A reward model directory (`tfchat.json` "head": "reward") exports its own
module instead: one `reward` signature (`serving.reward_export`).

No signature contains XLA ops: tensorflow_model_server runs them as they are.

Example:

>>> from tfchat import load_model
>>> path = export(load_model("runs/chat"), "exports/tfchat")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil

import tensorflow as tf

from tfchat import atomic
from tfchat.checkpoint.model_dir import LoadedModel
from tfchat.eval.logprobs import token_log_probs
from tfchat.inference.generation import decode_step, generate, prefill
from tfchat.inference.guidance import graph_check
from tfchat.inference.sampling import SamplingParams
from tfchat.text import chat_template

log = logging.getLogger(__name__)

SIGNATURES = ("serving_default", "generate", "chat", "score", "tokenize", "detokenize", "token_bytes", "chat_prompt",
              "knowledge_prompt", "prefill", "decode")
TAG_SIGNATURES = ("chat_tagged", "tagged_prompt")  # only in exports of models trained with control tags
METADATA_FILE = os.path.join("assets.extra", "tfchat.json")

_vec = lambda dtype, name: tf.TensorSpec([None], dtype, name=name)  # noqa: E731
_CONVERSATION_SPECS = [tf.TensorSpec([None, None], tf.string, name="roles"),
                       tf.TensorSpec([None, None], tf.string, name="contents")]
_TAGS_SPEC = tf.TensorSpec([None, None], tf.string, name="tags")
SAMPLING_SPECS = [
    _vec(tf.int32, "max_new_tokens"),
    _vec(tf.float32, "temperature"),
    _vec(tf.int32, "top_k"),
    _vec(tf.float32, "top_p"),
    _vec(tf.int32, "seed"),
]


def untracked(module: tf.Module, name: str, value) -> None:
    """Sets `module.name` without making it part of the SavedModel: a tracked Keras model would save every
    weight a second time (as its own Keras variables, beside `model_variables`), doubling the export."""
    object.__setattr__(module, name, value)


def model_variables(model) -> list[tf.Variable]:
    """The tf.Variables under a Keras model's weights, in order: what an export tracks (Keras 3 variables are
    not tf.Variables) and what `serving.backend` rebuilds the fast path from."""
    return [v.value if hasattr(v, "value") else v for v in model.weights]


class ModelModule(tf.Module):
    """What every exported object holds: the Keras model (its variables tracked), the tokenizer (its
    resources tracked), the longest sequence a signature accepts (`max_len`), stop and pad ids."""

    MIN_LEN = 2  # the shortest max_len the module's signatures can work with

    def __init__(self, loaded: LoadedModel, max_len: int | None = None, name: str = "tfchat"):
        super().__init__(name=name)
        untracked(self, "model", loaded.model)
        self.model_variables = model_variables(self.model)
        self.tokenizer = loaded.tokenizer
        self.config = loaded.config
        block = loaded.config.block_size
        self.max_len = block if max_len is None else int(max_len)
        if not self.MIN_LEN <= self.max_len <= block:
            raise ValueError(f"max_len must be in [{self.MIN_LEN}, block_size={block}], got {max_len}")
        self.stop_ids = list(loaded.tokenizer.special.stop_ids)
        self.pad_id = loaded.tokenizer.pad_id


class ServingModule(ModelModule):
    """The exported chat model: generation, chat, scoring and tokenizer signatures."""

    tag_vocabulary = None  # TaggedServingModule: the model's TagVocabulary

    # ---------------------------------------------------------------- helpers (traced into signatures)

    def _decode(self, tokens, lengths):
        ragged = tf.RaggedTensor.from_tensor(tokens, lengths=lengths)
        keep = tf.reduce_all(tf.not_equal(ragged[..., None], tf.constant(self.stop_ids)), axis=-1)
        return self.tokenizer.tf_decode(tf.ragged.boolean_mask(ragged, keep))

    def _generate(self, prompt_ids, max_new_tokens, temperature, top_k, top_p, seed, **guide):
        tokens, lengths = generate(
            self.model, prompt_ids, max_new_tokens, temperature, top_k, top_p, seed,
            stop_ids=self.stop_ids, pad_id=self.pad_id, max_len=self.max_len, **guide,
        )
        return tokens, lengths, self._decode(tokens, lengths)

    def _chat_ids(self, roles, contents, max_new_tokens, knowledge=None, tags=None):
        """One `tf_prompt` per conversation (with its row of `knowledge` and of `tags`, if given), all fitted to
        the room left by the longest reply."""
        longest = chat_template.MIN_MAX_LEN
        check = tf.debugging.assert_less_equal(
            max_new_tokens, self.max_len - longest,
            message=f"max_new_tokens must be <= {self.max_len - longest} for chat (the prompt needs {longest} ids)",
        )
        with tf.control_dependencies([check]):
            room = self.max_len - tf.reduce_max(tf.concat([max_new_tokens, [1]], 0))
        elems = {"roles": roles, "contents": contents}
        if knowledge is not None:
            elems["knowledge"] = knowledge
        if tags is not None:
            elems["tags"] = self._tag_order(tags)

        def one(row):
            keep = tf.not_equal(row["roles"], "")
            controls = None
            if "tags" in row:  # pair indices, vocabulary order, then len(tag_ids) for "none"
                picked = tf.boolean_mask(row["tags"], row["tags"] < len(self.tag_ids))
                controls = tf.gather(tf.constant(self.tag_ids, tf.int32), picked)
            return chat_template.tf_prompt(tf.boolean_mask(row["roles"], keep), tf.boolean_mask(row["contents"], keep),
                                           self.tokenizer, room, knowledge=row.get("knowledge"), controls=controls)

        return tf.map_fn(one, elems, fn_output_signature=tf.RaggedTensorSpec([None], tf.int32, ragged_rank=0))

    # ---------------------------------------------------------------- signatures

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="prompt"), *SAMPLING_SPECS])
    def generate(self, prompt, max_new_tokens, temperature, top_k, top_p, seed):
        ids = self.tokenizer.tf_encode_documents(prompt)
        tokens, lengths, text = self._generate(ids, max_new_tokens, temperature, top_k, top_p, seed)
        return {"text": text, "token_ids": tokens, "num_tokens": lengths}

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None], tf.string, name="roles"),
            tf.TensorSpec([None, None], tf.string, name="contents"),
            *SAMPLING_SPECS,
        ]
    )
    def chat(self, roles, contents, max_new_tokens, temperature, top_k, top_p, seed):
        ids = self._chat_ids(roles, contents, max_new_tokens)
        tokens, lengths, text = self._generate(ids, max_new_tokens, temperature, top_k, top_p, seed)
        return {"reply": text, "token_ids": tokens, "num_tokens": lengths}

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None], tf.string, name="roles"),
            tf.TensorSpec([None, None], tf.string, name="contents"),
            _vec(tf.int32, "max_new_tokens"),
        ]
    )
    def chat_prompt(self, roles, contents, max_new_tokens):
        ids = self._chat_ids(roles, contents, max_new_tokens)
        return {"token_ids": ids.to_tensor(self.pad_id), "num_tokens": tf.cast(ids.row_lengths(), tf.int32)}

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None], tf.string, name="roles"),
            tf.TensorSpec([None, None], tf.string, name="contents"),
            _vec(tf.string, "knowledge"),
            _vec(tf.int32, "max_new_tokens"),
        ]
    )
    def knowledge_prompt(self, roles, contents, knowledge, max_new_tokens):
        ids = self._chat_ids(roles, contents, max_new_tokens, knowledge)
        return {"token_ids": ids.to_tensor(self.pad_id), "num_tokens": tf.cast(ids.row_lengths(), tf.int32)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def score(self, text):
        ids = self.tokenizer.tf_encode_documents(text)
        n = tf.cast(ids.row_lengths(), tf.int32)
        keep = tf.minimum(n, self.max_len + 1)  # left-truncate to the context (+1 target)
        ids = tf.RaggedTensor.from_row_lengths(
            tf.gather(ids.flat_values, _tail_indices(ids.row_starts(), n, keep)), keep
        )
        inputs = ids[:, :-1].to_tensor(self.pad_id)
        targets = ids[:, 1:].to_tensor(self.pad_id)
        lengths = keep - 1
        mask = tf.sequence_mask(lengths, tf.shape(targets)[1])
        log_probs = token_log_probs(self.model(inputs, training=False), targets, mask)
        total = tf.reduce_sum(log_probs, axis=1)
        loss = tf.math.divide_no_nan(-total, tf.cast(lengths, tf.float32))
        return {"token_ids": targets, "log_probs": log_probs, "num_tokens": lengths, "total_log_prob": total, "loss": loss}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def tokenize(self, text):
        ids = self.tokenizer.tf_encode_batch(text)
        return {"token_ids": ids.to_tensor(self.pad_id), "num_tokens": tf.cast(ids.row_lengths(), tf.int32)}

    @tf.function(
        input_signature=[tf.TensorSpec([None, None], tf.int32, name="token_ids"), _vec(tf.int32, "num_tokens")]
    )
    def detokenize(self, token_ids, num_tokens):
        ragged = tf.RaggedTensor.from_tensor(token_ids, lengths=num_tokens)
        return {"text": self.tokenizer.tf_decode(ragged)}

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name="token_ids")])
    def token_bytes(self, token_ids):
        table = tf.constant(list(self.tokenizer.token_bytes()), tf.string)  # [vocab_size]
        vocab = self.tokenizer.vocab_size
        checks = [tf.debugging.assert_non_negative(token_ids, message=f"token ids must be in 0 .. {vocab - 1}"),
                  tf.debugging.assert_less(token_ids, vocab, message=f"token ids must be in 0 .. {vocab - 1}")]
        with tf.control_dependencies(checks):
            return {"token_bytes": tf.gather(table, token_ids)}  # "_bytes": TF Serving REST sends base64

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None], tf.int32, name="token_ids"),
            _vec(tf.int32, "num_tokens"),
            *SAMPLING_SPECS,
        ]
    )
    def prefill(self, token_ids, num_tokens, max_new_tokens, temperature, top_k, top_p, seed):
        ragged = tf.RaggedTensor.from_tensor(token_ids, lengths=num_tokens)
        s = prefill(
            self.model, ragged, max_new_tokens, temperature, top_k, top_p, seed, pad_id=self.pad_id, max_len=self.max_len
        )
        batch = tf.shape(s["token"])[0]
        return {
            "next_token": s["token"],
            "logits": s["logits"],
            "cache": tf.stack(s["caches"]),
            "key_mask": s["key_mask"],
            "position": s["position"],
            "cache_index": tf.fill([batch], s["cache_index"]),
        }

    @tf.function(
        input_signature=[
            _vec(tf.int32, "token"),
            _vec(tf.int32, "position"),
            tf.TensorSpec([None, None, None, 2, None, None], tf.float32, name="cache"),
            _vec(tf.int32, "cache_index"),
            tf.TensorSpec([None, None], tf.bool, name="key_mask"),
            *SAMPLING_SPECS[1:],
        ]
    )
    def decode(self, token, position, cache, cache_index, key_mask, temperature, top_k, top_p, seed):
        caches = tf.unstack(cache, num=self.config.n_layer)
        nxt, logits, caches = decode_step(
            self.model, token, position, caches, cache_index[0], key_mask, temperature, top_k, top_p, seed
        )
        return {"next_token": nxt, "logits": logits, "cache": tf.stack(caches)}

    def signatures(self) -> dict:
        gen = self.generate.get_concrete_function()
        sigs = {"serving_default": gen, "generate": gen}
        for name in SIGNATURES[2:]:
            sigs[name] = getattr(self, name).get_concrete_function()
        return sigs


class TaggedServingModule(ServingModule):
    """`ServingModule` of a model trained with control tags, plus the signatures that take tags (`TAG_SIGNATURES`).
    A class of its own: saving traces every signature a module defines, and those need the tag table."""

    def __init__(self, loaded: LoadedModel, max_len: int | None = None, name: str = "tfchat"):
        super().__init__(loaded, max_len, name)
        vocabulary = loaded.tags
        untracked(self, "tag_vocabulary", vocabulary)
        pairs = [(n, v) for n, values in vocabulary.tags.items() for v in values]  # vocabulary order
        # "name=value" -> its pair's index; the pairs' control ids and name indices, by pair index.
        self.tag_table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant([f"{n}={v}" for n, v in pairs]),
                                                tf.range(len(pairs), dtype=tf.int32)), default_value=-1)
        untracked(self, "tag_ids", [vocabulary.ids({n: v})[0] for n, v in pairs])
        untracked(self, "tag_names", [list(vocabulary.tags).index(n) for n, _ in pairs])
        untracked(self, "known_tags", ", ".join(f"{n}={v}" for n, v in pairs))

    def _tag_order(self, tags):
        """Each row's "name=value" items as pair indices [B, K], sorted (so their control ids come in vocabulary
        order), `len(tag_ids)` where a row has no item; an unknown item or two values of one name fail."""
        items = tf.strings.strip(tags)
        given = tf.not_equal(items, "")
        index = self.tag_table.lookup(items)
        unknown = tf.logical_and(given, index < 0)
        # No quotes in these messages: TF escapes them in the error text.
        known = tf.debugging.Assert(tf.logical_not(tf.reduce_any(unknown)), [tf.strings.join([
            "unknown tag ", tf.strings.reduce_join(tf.boolean_mask(items, unknown), separator=", "),
            f"; known tags: {self.known_tags}"])])
        pairs = len(self.tag_ids)
        index = tf.where(given, index, pairs)
        names = tf.gather(tf.constant(self.tag_names + [-1], tf.int32), tf.clip_by_value(index, 0, pairs))
        per_name = tf.reduce_sum(tf.one_hot(names, len(self.tag_vocabulary.tags), dtype=tf.int32), axis=1)  # [B, names]
        twice = tf.reduce_any(per_name > 1, axis=1)
        once = tf.debugging.Assert(tf.logical_not(tf.reduce_any(twice)), [tf.strings.join([
            "two values of one tag name in ",
            tf.strings.reduce_join(tf.boolean_mask(tf.boolean_mask(items, twice), tf.boolean_mask(given, twice)),
                                   separator=", "),
            f"; give each of {', '.join(self.tag_vocabulary.tags)} once"])])
        with tf.control_dependencies([known, once]):
            return tf.sort(index, axis=1)

    # ---------------------------------------------------------------- signatures

    @tf.function(input_signature=[*_CONVERSATION_SPECS, _TAGS_SPEC, *SAMPLING_SPECS, _vec(tf.float32, "guidance")])
    def chat_tagged(self, roles, contents, tags, max_new_tokens, temperature, top_k, top_p, seed, guidance):
        ids = self._chat_ids(roles, contents, max_new_tokens, tags=tags)
        sampling = (max_new_tokens, temperature, top_k, top_p, seed)
        with tf.control_dependencies([graph_check(guidance)]):
            # Untagged rows are not guided (their twin would be the same prompt).
            guidance = tf.where(tf.reduce_any(tf.not_equal(tf.strings.strip(tags), ""), axis=1), guidance, 1.0)

        def guided():
            plain = self._chat_ids(roles, contents, max_new_tokens)
            return self._generate(ids, *sampling, guidance=guidance, unguided_ids=plain)

        tokens, lengths, text = tf.cond(tf.reduce_all(tf.equal(guidance, 1.0)), lambda: self._generate(ids, *sampling),
                                        guided)
        return {"reply": text, "token_ids": tokens, "num_tokens": lengths}

    @tf.function(input_signature=[*_CONVERSATION_SPECS, _vec(tf.string, "knowledge"), _TAGS_SPEC,
                                  _vec(tf.int32, "max_new_tokens")])
    def tagged_prompt(self, roles, contents, knowledge, tags, max_new_tokens):
        ids = self._chat_ids(roles, contents, max_new_tokens, knowledge, tags)
        return {"token_ids": ids.to_tensor(self.pad_id), "num_tokens": tf.cast(ids.row_lengths(), tf.int32)}

    def signatures(self) -> dict:
        sigs = super().signatures()
        for name in TAG_SIGNATURES:
            sigs[name] = getattr(self, name).get_concrete_function()
        return sigs


def serving_module(loaded: LoadedModel, max_len: int | None = None) -> tf.Module:
    """The exported object for the directory's head: `ServingModule`, or a reward model's module."""
    if loaded.head == "reward":
        from serving.reward_export import RewardServingModule

        return RewardServingModule(loaded, max_len)
    return ServingModule(loaded, max_len) if loaded.tags is None else TaggedServingModule(loaded, max_len)


def _tail_indices(row_starts, lengths, keep):
    """Flat indices of the last `keep[b]` ids of each row."""
    row_starts = tf.cast(row_starts, tf.int32)
    offsets = tf.ragged.range(lengths - keep, lengths)
    return (offsets + row_starts[:, None]).flat_values


# ---------------------------------------------------------------------------------- export


def next_version(base: str) -> int:
    """1 + the largest integer-named subdirectory of `base` (1 if none)."""
    versions = [int(d) for d in os.listdir(base) if re.fullmatch(r"\d+", d)] if os.path.isdir(base) else []
    return max(versions, default=0) + 1


def models_config(name: str, base: str) -> str:
    """A tensorflow_model_server `--model_config_file` for one model."""
    return (
        "model_config_list {\n"
        "  config {\n"
        f'    name: "{name}"\n'
        f'    base_path: "{os.path.abspath(base)}"\n'
        '    model_platform: "tensorflow"\n'
        "  }\n"
        "}\n"
    )


def export(
    loaded: LoadedModel, base: str, version: int | None = None, max_len: int | None = None, name: str = "tfchat"
) -> str:
    """Writes `base/<version>/` (a SavedModel) atomically plus `base/models.config`; returns the version dir.

    Args:
        loaded: from `tfchat.load_model`.
        base: the model's base path (TF Serving's `--model_base_path`).
        version: integer version; default: the next free one.
        max_len: serving context length (default: the model's block_size).
        name: the model name in `models.config`.
    """
    module = serving_module(loaded, max_len)
    meta = {
        "format": "tfchat-saved-model",
        "head": loaded.head,
        "signatures": sorted(module.signatures()),
        "max_len": module.max_len,
        "config": loaded.config.to_dict(),
        "special_ids": loaded.tokenizer.special_ids,
        "stop_ids": module.stop_ids,
        "sampling": SamplingParams.from_dict(loaded.metadata.get("sampling")).to_dict(),
        "model_metadata": loaded.metadata,
    }
    vocabulary = getattr(module, "tag_vocabulary", None)
    if vocabulary is not None:
        meta["tags"] = vocabulary.to_dict()  # what `chat_tagged`/`tagged_prompt` and the server accept
    return save_version(module, module.signatures(), base, meta, version=version, name=name)


def save_version(module: tf.Module, signatures: dict, base: str, metadata: dict, version: int | None = None,
                 name: str = "tfchat") -> str:
    """Saves `module` with `signatures` as `base/<version>/` atomically (refusing XLA ops), with `metadata`
    (plus name and version) in `assets.extra/tfchat.json`, and writes `base/models.config`; returns the version dir."""
    base = os.path.abspath(base)
    os.makedirs(base, exist_ok=True)
    if version is None:
        version = next_version(base)
    if not isinstance(version, int) or isinstance(version, bool) or version <= 0:
        raise ValueError(f"version must be a positive integer, got {version!r}")
    final = os.path.join(base, str(version))
    if os.path.exists(final):
        raise FileExistsError(f"version {version} already exists: {final}")
    # A dot-prefixed sibling: TF Serving only loads integer-named dirs, so a half-written export is never served.
    # Those of killed exports are removed here.
    atomic.remove_stale_temps(base)
    tmp = atomic.temp_path(final)
    os.mkdir(tmp)
    try:
        tf.saved_model.save(module, tmp, signatures=signatures)
        xla = sorted(t for t in op_types(tmp) if t.startswith("Xla"))
        if xla:  # stock tensorflow_model_server could not run these
            raise RuntimeError(f"exported graph contains XLA ops {xla}")
        os.makedirs(os.path.join(tmp, "assets.extra"), exist_ok=True)
        with open(os.path.join(tmp, METADATA_FILE), "w") as f:
            json.dump({"format": metadata["format"], "name": name, "version": version, **metadata}, f, indent=2)
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; a server may run as another user
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    cfg_tmp = atomic.temp_path(os.path.join(base, "models.config"))
    with open(cfg_tmp, "w") as f:
        f.write(models_config(name, base))
    os.replace(cfg_tmp, os.path.join(base, "models.config"))
    log.info("exported %s", final)
    return final


def read_metadata(version_dir: str) -> dict:
    """The tfchat metadata written next to an exported SavedModel."""
    with open(os.path.join(version_dir, METADATA_FILE)) as f:
        return json.load(f)


def op_types(version_dir: str) -> set[str]:
    """Every op type in a SavedModel: the graph and all library functions (loop bodies, signatures)."""
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    with open(os.path.join(version_dir, "saved_model.pb"), "rb") as f:
        sm.ParseFromString(f.read())
    types = set()
    for mg in sm.meta_graphs:
        types |= {n.op for n in mg.graph_def.node}
        for fn in mg.graph_def.library.function:
            types |= {n.op for n in fn.node_def}
    return types
