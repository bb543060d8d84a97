"""In-process model backend shared by the HTTP/gRPC server and the terminal chat.

Loads an exported SavedModel (`serving.export`) and runs every TF call on one
worker thread fed by a queue: concurrent requests never interleave inside a
signature call, and generation requests that arrive together are batched
(up to `max_batch`, waiting at most `batch_wait_ms` for company). Each row
keeps its own sampling settings and seed, so a batched answer equals the
answer the request would get alone.

Generation has two paths, with the same tokens for the same request and seed:

* fast (the default): the model is rebuilt from the export's weights and
  decoded by `tfchat.inference.slots.SlotDecoder` (XLA, `chunk` tokens per
  call) with continuous batching: a request joins the running batch at the
  next chunk instead of waiting for it to finish, and leaves it (freeing its
  slot) when it stops, runs out of tokens, or its client goes away;
* plain (`fast=False`, or an export without its weights list): the
  XLA-free `prefill` + `decode` signatures, one call per token, a batch
  starting and ending together.

Either way, a row whose client is gone (`request.cancelled`) stops at the
next step, a streaming row pushes its text deltas as they are decoded (each
token's bytes, from the `token_bytes` signature read once, go through
`tfchat.inference.streaming.Detokenizer`, so a character spelt in several
byte-fallback tokens appears whole, never as U+FFFD; exports made before
that signature existed decode the whole reply each step instead), and each
step's logits give OpenAI-style log-probabilities
(`GenRequest.logprobs`) through `tfchat.eval.logprobs.token_log_probs`.
The in-graph `generate`/`chat` loops serve `:predict` (and stock TF Serving).

A chat request may carry control tags (`GenRequest.tags`, `{"topic": "music"}`)
for a model trained with them (the export's metadata "tags"): they are
checked against its vocabulary (an unknown name or value, or tags for a model
trained without, is a `BadRequest` naming the known values), and a batch
with any tagged row builds its prompts with the `tagged_prompt` signature
(untagged rows get no control ids, so their prompts are unchanged); either
decoding path then runs tagged and untagged rows together. A tagged request
with `sampling.guidance` other than 1 is decoded with classifier-free guidance
(`tfchat.inference.guidance`): its untagged twin prompt decodes beside it (an
extra row of the batch, fed the row's tokens, never streamed or returned) and
its tokens are sampled from the guided mix of both rows' logits; the same
tokens on both paths. Guidance does not apply to untagged requests.

Prompts longer than `16 * max_len` characters are cut before tokenizing to
what could fit (a token covers at most 16 characters of SentencePiece text):
the oldest characters of a text prompt, the oldest messages of a chat (the
system message stays, capped like the chat template caps it).

Example:

>>> backend = Backend("exports/tfchat")                      # doctest: +SKIP
>>> backend.complete(GenRequest(prompt="Once upon a time", max_new_tokens=20)).text  # doctest: +SKIP
>>> for piece in backend.stream(GenRequest(messages=[{"role": "user", "content": "Hi"}])):  # doctest: +SKIP
...     print(piece, end="")
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import json
import logging
import os
import queue
import re
import threading
import time
from typing import Iterator, Mapping

import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the TF Text ops the SavedModel uses)

from serving.errors import BadRequest, NotFound
from tfchat.cli import tf_error_message
from tfchat.eval.logprobs import token_log_probs
from tfchat.inference.sampling import SamplingParams
from tfchat.inference.streaming import Detokenizer
from tfchat.text.chat_template import MIN_MAX_LEN
from tfchat.text.control_tags import TagVocabulary
from tfchat.text.special_tokens import ROLES, SpecialIds

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 16  # SentencePiece's longest piece (max_piece_length): a bound on what a context can hold
MAX_TOP_LOGPROBS = 20  # OpenAI's limit


class Cancelled(Exception):
    """The request was cancelled (its client went away) before it finished."""


@dataclasses.dataclass
class TokenLogprob:
    """One generated token: its id, its UTF-8 bytes in the reply, its log-probability under the model,
    and the most likely tokens at that step as (id, bytes, log-probability)."""

    token_id: int
    bytes: bytes
    logprob: float
    top: list[tuple[int, bytes, float]]


@dataclasses.dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (emitted a stop id) or "length"
    prompt_tokens: int
    logprobs: list[TokenLogprob] | None = None  # the reply's tokens (stop ids excluded), when asked for


@dataclasses.dataclass
class GenRequest:
    """One generation: either `prompt` (text completion) or `messages` (chat), with its sampling settings
    (default: the backend's; a None seed becomes a random one when the request is queued)."""

    prompt: str | None = None
    messages: list[dict] | None = None
    sampling: SamplingParams | None = None
    logprobs: int | None = None  # None: none; k >= 0: each token's log-probability and the k most likely ones
    knowledge: str | None = None  # chat: text for the chat template's knowledge segment (retrieved passages)
    tags: dict | None = None  # chat: control tags for the reply, {name: value} of the model's tag vocabulary
    # Filled by the backend.
    future: concurrent.futures.Future = dataclasses.field(default_factory=concurrent.futures.Future)
    events: "queue.Queue | None" = None  # streaming: ("delta", str, [TokenLogprob]) ... ("done", Completion) / ("error", exc)
    cancelled: bool = False

    @property
    def is_chat(self) -> bool:
        return self.messages is not None

    def key(self):
        return ("generate", self.is_chat)


@dataclasses.dataclass
class _PredictJob:
    signature: str
    inputs: dict
    future: concurrent.futures.Future = dataclasses.field(default_factory=concurrent.futures.Future)
    cancelled: bool = False

    def key(self):
        return None  # never batched


def find_versions(base: str) -> list[int]:
    return sorted(int(d) for d in os.listdir(base) if re.fullmatch(r"\d+", d) and os.path.isdir(os.path.join(base, d)))


class Backend:
    """Loads `path` (an export base with integer versions, or one version dir) and serves it.

    Args:
        path: `exports/tfchat` (serves the latest version) or `exports/tfchat/3`.
        name: model name (default: the base folder's name).
        max_batch: most rows decoded together (one per generation request, two for a guided one).
        batch_wait_ms: how long the worker waits for more requests to batch.
        fast: decode with the XLA fast path and continuous batching (False: the plain signatures).
        chunk: tokens per fast decode call (streamed together; requests join between chunks).
    """

    def __init__(self, path: str, name: str | None = None, max_batch: int = 8, batch_wait_ms: float = 5.0,
                 fast: bool = True, chunk: int = 8):
        path = os.path.abspath(path)
        create = f"create it with `python -m serving.export --model runs/chat --out {path}`"
        if not os.path.isdir(path):
            raise FileNotFoundError(f"export not found: {path}; {create}")
        if os.path.isfile(os.path.join(path, "saved_model.pb")):
            base, version_dir = os.path.dirname(path), path
            self.version = int(os.path.basename(path)) if os.path.basename(path).isdigit() else 1
        else:
            versions = find_versions(path)
            if not versions:
                raise FileNotFoundError(f"{path} has no SavedModel versions (integer subfolders); {create}")
            base, self.version = path, versions[-1]
            version_dir = os.path.join(path, str(self.version))
        self.name = name or os.path.basename(base)
        self.path = version_dir
        meta_path = os.path.join(version_dir, "assets.extra", "tfchat.json")
        try:
            with open(meta_path) as f:
                self.metadata = json.load(f)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{version_dir} is not a tfchat export ({meta_path} missing); "
                                    f"export the model with `python -m serving.export --model runs/chat --out {base}`") from e
        self.max_len = int(self.metadata["max_len"])
        self.max_prompt_chars = CHARS_PER_TOKEN * self.max_len
        self.vocab_size = int(self.metadata["config"]["vocab_size"])
        self.special = SpecialIds.from_dict(self.metadata["special_ids"])
        self.stop_ids = set(self.metadata["stop_ids"])
        # The model's control tags (None: trained without tags).
        self.tags: TagVocabulary | None = TagVocabulary.from_dict(self.metadata.get("tags"), self.special)
        # The model's recommended settings (exports before 0.2 have none: the library's).
        recommended = SamplingParams.from_dict(self.metadata.get("sampling"))
        self.defaults = recommended.replace(max_new_tokens=min(recommended.max_new_tokens, self.max_len // 2))
        t0 = time.perf_counter()
        self._saved = tf.saved_model.load(version_dir)
        self.signatures = dict(self._saved.signatures)
        self.token_bytes = self._token_bytes()
        log.info("loaded %s version %d (%d signatures) in %.1fs", self.name, self.version, len(self.signatures), time.perf_counter() - t0)
        self.max_batch = max(1, int(max_batch))
        self.batch_wait = batch_wait_ms / 1000.0
        self.largest_batch = 0  # for tests and /healthz
        self.best_of = None  # best-of-n hook: a serving.best_of.BestOfN reranks chat replies
        self._piece_bytes: dict[int, bytes] = {}  # token id -> its text alone (top log-probabilities)
        self.decoder = self._fast_decoder(chunk) if fast else None
        self.compiling = False  # the fast path is being compiled for longer caches (`warmup`)
        self._running: list[_Row] = []  # fast path: the rows decoding now, in the order of `self._rows`
        self._rows = None  # their slots (tfchat.inference.slots.Rows)
        self._jobs: collections.deque = collections.deque()
        self._cv = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._loop, name="tfchat-backend", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ public API (any thread)

    def signature_specs(self, name: str) -> tuple[dict, dict]:
        """({input: TensorSpec}, {output: TensorSpec}) of a signature."""
        fn = self._signature(name)
        return fn.structured_input_signature[1], fn.structured_outputs

    def predict(self, signature: str, inputs: dict) -> dict:
        """Runs one signature with numpy/tensor inputs; returns numpy outputs. Queued like everything else."""
        return self.predict_job(signature, inputs).future.result()

    def predict_job(self, signature: str, inputs: dict) -> _PredictJob:
        """Queues one signature call (`.future` resolves to its numpy outputs; `.cancelled` drops it
        while it waits). Token ids outside the vocabulary and texts longer than `max_prompt_chars`
        are refused here, before the model sees them."""
        specs, _ = self.signature_specs(signature)
        for name, value in inputs.items():
            array = value.numpy() if tf.is_tensor(value) else np.asarray(value)
            if name in ("token_ids", "token") and array.size and (array.min() < 0 or array.max() >= self.vocab_size):
                raise BadRequest(f"input '{name}': token ids must be in 0 .. {self.vocab_size - 1}")
            if specs[name].dtype == tf.string and array.size:
                longest = max(len(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v))
                              for v in array.reshape(-1))
                if longest > self.max_prompt_chars:
                    raise BadRequest(f"input '{name}': a text of {longest:,} characters; at most "
                                     f"{self.max_prompt_chars:,} ({CHARS_PER_TOKEN} per token of the "
                                     f"{self.max_len}-token context)")
        job = _PredictJob(signature, inputs)
        self._submit(job)
        return job

    def submit(self, request: GenRequest) -> concurrent.futures.Future:
        """Queues a non-streaming generation; the future resolves to a Completion."""
        self.validate(request)
        if self.best_of is not None:  # best-of-n hook (serving.best_of)
            return self.best_of.submit(request, self._submit)
        return self._submit(request)

    def complete(self, request: GenRequest) -> Completion:
        """Non-streaming generation (batched with concurrent requests)."""
        return self.submit(request).result()

    def stream(self, request: GenRequest) -> Iterator[str]:
        """Streaming generation: yields text deltas; `request.future` then holds the Completion."""
        return (text for text, _ in self.stream_with_logprobs(request))

    def stream_with_logprobs(self, request: GenRequest) -> Iterator[tuple[str, list[TokenLogprob]]]:
        """Streaming generation: yields (text delta, the TokenLogprobs of its tokens: [] unless
        `request.logprobs` is set); `request.future` then holds the Completion."""
        self.validate(request)  # raises now, before any output is produced
        if self.best_of is not None and self.best_of.applies(request):  # best-of-n hook (serving.best_of)
            return self.best_of.stream(request, self._submit)
        request.events = queue.Queue()
        self._submit(request)
        return self._events(request)

    def _events(self, request: GenRequest) -> Iterator[tuple[str, list[TokenLogprob]]]:
        try:
            while True:
                kind, *value = request.events.get()
                if kind == "delta":
                    yield value[0], value[1]
                elif kind == "error":
                    raise value[0]
                else:
                    return
        finally:
            request.cancelled = True  # consumer gone: stop decoding this row

    def validate(self, r: GenRequest) -> None:
        """Checks a request, cuts an over-long prompt (see the module docstring) and fills in its sampling
        settings (defaults, a concrete seed)."""
        if self.metadata.get("head", "lm") != "lm":  # a reward model export scores replies (serving.reward_export)
            raise BadRequest(f"{self.name} is a {self.metadata['head']} model: it has no generation; "
                             "use its signatures through :predict")
        if (r.prompt is None) == (r.messages is None):
            raise BadRequest("give exactly one of prompt or messages")
        if r.prompt is not None and not isinstance(r.prompt, str):
            raise BadRequest("prompt must be a string")
        if r.messages is not None:
            if not isinstance(r.messages, list) or not r.messages:
                raise BadRequest("messages must be a non-empty list")
            for i, m in enumerate(r.messages):
                if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                    raise BadRequest(f"messages[{i}] must be {{'role': one of {list(ROLES)}, 'content': str}}")
        if r.logprobs is not None and (isinstance(r.logprobs, bool) or not isinstance(r.logprobs, int)
                                       or not 0 <= r.logprobs <= MAX_TOP_LOGPROBS):
            raise BadRequest(f"top log-probabilities must be an integer in 0 .. {MAX_TOP_LOGPROBS}, got {r.logprobs!r}")
        if r.knowledge is not None:
            if not isinstance(r.knowledge, str) or r.messages is None:
                raise BadRequest("knowledge must be a string, with messages")
            if r.knowledge and "knowledge_prompt" not in self.signatures:
                raise BadRequest("this export has no knowledge_prompt signature (exported before tfchat knew "
                                 "knowledge): re-export it with python -m serving.export")
            r.knowledge = r.knowledge[: self.max_prompt_chars]  # the template cuts it further, before the dialogue
        if r.tags is not None:
            r.tags = self._checked_tags(r)
        if r.prompt is not None:
            r.prompt = r.prompt[-self.max_prompt_chars:]
        else:
            r.messages = fit_messages(r.messages, self.max_prompt_chars)
        r.sampling = (r.sampling or self.defaults).resolved()
        try:
            # A chat prompt needs a few ids (markers) besides the history.
            r.sampling.check_fits(self.max_len - (MIN_MAX_LEN if r.is_chat else 1))
        except ValueError as e:
            raise BadRequest(str(e)) from None

    def _checked_tags(self, r: GenRequest) -> dict | None:
        """A request's tags as {name: value} of the vocabulary (a None value: that name untagged), or None."""
        if not isinstance(r.tags, Mapping):
            raise BadRequest(f"tags must be an object of name: value, e.g. {{\"topic\": \"music\"}}, "
                             f"got {type(r.tags).__name__}")
        tags = {name: value for name, value in r.tags.items() if value is not None}
        if not tags:
            return None
        if r.messages is None:
            raise BadRequest("tags steer chat replies: send messages, not a prompt")
        if self.tags is None:
            raise BadRequest(f"this model was trained without tags: leave out {', '.join(map(str, tags))}")
        for name, value in tags.items():
            if not isinstance(value, str):
                raise BadRequest(f"tag {name} must be a string, got {json.dumps(value)[:40]}")
        try:
            self.tags.ids(tags)
        except ValueError as e:  # names the known values
            raise BadRequest(str(e)) from None
        if "tagged_prompt" not in self.signatures:
            raise BadRequest("this export has no tagged_prompt signature (exported before tfchat knew tags): "
                             "re-export it with python -m serving.export")
        return tags

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._worker.join(timeout=10)

    # ------------------------------------------------------------------ worker

    def _token_bytes(self) -> tuple[bytes, ...] | None:
        """Every id's bytes, from the export's `token_bytes` signature (None for exports without it)."""
        if "token_bytes" not in self.signatures:
            return None
        vocab = int(self.metadata["config"]["vocab_size"])
        out = self.signatures["token_bytes"](token_ids=tf.range(vocab, dtype=tf.int32)[None, :])
        return tuple(out["token_bytes"].numpy()[0].tolist())

    def _fast_decoder(self, chunk: int):
        """A SlotDecoder over the model rebuilt from the export's weights (None if the export lacks them)."""
        from tfchat.config import GPTConfig
        from tfchat.inference.slots import SlotDecoder
        from tfchat.model import build_gpt

        if self.metadata.get("head", "lm") != "lm":  # a reward model export has no generation
            return None
        weights = getattr(self._saved, "model_variables", None)
        if weights is None:
            log.warning("%s has no weights list (exported before tfchat 0.3): plain signatures only", self.path)
            return None
        model = build_gpt(GPTConfig.from_dict(self.metadata["config"]), dtype="float32")
        shapes = [tuple(w.shape) for w in model.weights]
        if shapes != [tuple(w.shape) for w in weights]:
            raise ValueError(f"{self.path}: the exported weights do not fit the model its config describes")
        for variable, value in zip(model.weights, weights):
            variable.assign(value)
        return SlotDecoder(model, max_len=self.max_len, chunk=chunk, pad_id=self.special.pad)

    def warmup(self) -> None:
        """Compiles the fast path before the first requests would wait for it: every batch size up to
        `max_batch` at the shortest cache length now, the longer lengths on a background thread, and then
        (a model with tags) the programs of batches with guided rows."""
        if self.decoder is None:
            return
        from tfchat.inference.slots import LENGTH_STEP

        self.complete(GenRequest(prompt="Hello", sampling=SamplingParams.greedy(2)))
        self.decoder.compile(self.max_batch, [LENGTH_STEP])
        if self.max_len > LENGTH_STEP:
            self.compiling = True

            def compile_longer():
                try:
                    lengths = range(2 * LENGTH_STEP, self.max_len + LENGTH_STEP, LENGTH_STEP)
                    self.decoder.compile(self.max_batch, lengths)
                    if self.tags is not None and self.max_batch > 1:
                        self.decoder.compile(self.max_batch, None, guided=True)
                finally:
                    self.compiling = False

            threading.Thread(target=compile_longer, daemon=True, name="tfchat-compile").start()

    def _signature(self, name: str):
        if name not in self.signatures:
            raise NotFound(f'Serving signature name: "{name}" not found in signature def')
        return self.signatures[name]

    def _submit(self, job):
        with self._cv:
            if self._closed:
                raise RuntimeError("backend is closed")
            self._jobs.append(job)
            self._cv.notify()
        return job.future

    def _take_batch(self) -> list | None:
        """The next jobs to run: one signature call, or generation requests to batch. With rows decoding
        (fast path) it never waits: [] means "decode the next chunk"; requests join while slots are free."""
        with self._cv:
            while not self._jobs and not self._closed and not self._running:
                self._cv.wait()
            if self._closed and not self._jobs and not self._running:
                return None
            if self._running:
                free = self.max_batch - len(self._running)
                predict = next((j for j in self._jobs if j.key() is None), None)
                if predict is not None and (not free or self._jobs[0] is predict):
                    self._jobs.remove(predict)
                    return [predict]
                joining = _within(free, [j for j in self._jobs if j.key() is not None])
                for j in joining:
                    self._jobs.remove(j)
                return joining
            first = self._jobs.popleft()
            batch = [first]
            key = first.key()
            if key is None:
                return batch
            # Slots take chat and text requests alike; the plain signatures batch one kind.
            same = (lambda j: j.key() is not None) if self.decoder else (lambda j: j.key() == key)
            deadline = time.monotonic() + self.batch_wait
            while _rows_of(batch) < self.max_batch:
                more = _within(self.max_batch - _rows_of(batch), [j for j in self._jobs if same(j)])
                for j in more:
                    self._jobs.remove(j)
                batch += more
                left = deadline - time.monotonic()
                if _rows_of(batch) >= self.max_batch or left <= 0:
                    break
                self._cv.wait(timeout=left)
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            self.largest_batch = max(self.largest_batch, len(batch))
            try:
                self._run(batch)
            except Exception as e:  # noqa: BLE001  (reported to each caller)
                if len(batch) > 1:  # isolate the culprit: retry one by one
                    for job in batch:
                        try:
                            self._run([job])
                        except Exception as e1:  # noqa: BLE001
                            _fail(job, e1)
                else:
                    _fail(batch[0], e)
            if self._running:
                try:
                    self._decode_chunk()
                except Exception as e:  # noqa: BLE001  (every decoding row shares the failed call)
                    log.exception("decoding failed")
                    running, self._running, self._rows = self._running, [], None
                    for row in running:
                        _fail(row.request, e)

    def _run(self, batch: list) -> None:
        for job in batch:
            if job.cancelled:  # its client left while it waited
                _fail(job, Cancelled("cancelled before it started"))
        batch = [job for job in batch if not job.cancelled]
        if not batch:
            return
        job = batch[0]
        if isinstance(job, _PredictJob):
            out = self.signatures[job.signature](**job.inputs)
            job.future.set_result({k: v.numpy() for k, v in out.items()})
        elif self.decoder is not None:
            self._join(batch)
        else:
            self._run_generate(batch)

    def _sampling(self, batch: list[GenRequest], with_max_new: bool = True) -> dict:
        s = dict(
            temperature=tf.constant([r.sampling.temperature for r in batch], tf.float32),
            top_k=tf.constant([r.sampling.top_k for r in batch], tf.int32),
            top_p=tf.constant([r.sampling.top_p for r in batch], tf.float32),
            seed=tf.constant([r.sampling.seed for r in batch], tf.int32),
        )
        if with_max_new:
            s["max_new_tokens"] = tf.constant([r.sampling.max_new_tokens for r in batch], tf.int32)
        return s

    def _conversations(self, batch: list[GenRequest]) -> dict:
        width = max(len(r.messages) for r in batch)
        roles = [[m["role"] for m in r.messages] + [""] * (width - len(r.messages)) for r in batch]
        contents = [[m["content"] for m in r.messages] + [""] * (width - len(r.messages)) for r in batch]
        return dict(roles=tf.constant(roles, tf.string), contents=tf.constant(contents, tf.string))

    def _prompt_ids(self, batch: list[GenRequest]) -> tuple[np.ndarray, np.ndarray]:
        """Right-padded prompt ids [B, T] and lengths, exactly as `generate`/`chat` build them."""
        if batch[0].is_chat:
            max_new = tf.constant([r.sampling.max_new_tokens for r in batch], tf.int32)
            if any(r.tags for r in batch):  # untagged rows: no items, no control ids
                width = max(len(r.tags or {}) for r in batch)
                items = [[f"{k}={v}" for k, v in (r.tags or {}).items()] + [""] * (width - len(r.tags or {}))
                         for r in batch]
                out = self.signatures["tagged_prompt"](**self._conversations(batch), max_new_tokens=max_new,
                                                       knowledge=tf.constant([r.knowledge or "" for r in batch]),
                                                       tags=tf.constant(items, tf.string, shape=[len(batch), width]))
                return out["token_ids"].numpy(), out["num_tokens"].numpy()
            if any(r.knowledge for r in batch):
                out = self.signatures["knowledge_prompt"](**self._conversations(batch), max_new_tokens=max_new,
                                                          knowledge=tf.constant([r.knowledge or "" for r in batch]))
                return out["token_ids"].numpy(), out["num_tokens"].numpy()
            out = self.signatures["chat_prompt"](**self._conversations(batch), max_new_tokens=max_new)
            return out["token_ids"].numpy(), out["num_tokens"].numpy()
        out = self.signatures["tokenize"](text=tf.constant([r.prompt for r in batch], tf.string))
        rows = [self.special.document(ids[:n]) for ids, n in zip(out["token_ids"].numpy(), out["num_tokens"].numpy())]
        padded = np.full([len(rows), max(map(len, rows))], self.special.pad, np.int32)
        for b, row in enumerate(rows):
            padded[b, : len(row)] = row
        return padded, np.array([len(row) for row in rows], np.int32)

    def _finish_reason(self, tokens: list[int]) -> str:
        return "stop" if tokens and tokens[-1] in self.stop_ids else "length"

    def _run_generate(self, batch: list[GenRequest]) -> None:
        """Prefill, then one decode call per token until every row is done, stopped or cancelled."""
        n = len(batch)
        ids, lengths = self._prompt_ids(batch)
        room = self.max_len - max(r.sampling.max_new_tokens for r in batch)
        leads = [b for b, r in enumerate(batch) if _is_guided(r)]
        if leads:  # the guided rows' untagged twins decode as rows n, n+1, ... of the same batch
            twin_ids, twin_lengths = self._prompt_ids([_untagged(batch[b]) for b in leads])
            width = max(ids.shape[1], twin_ids.shape[1])
            ids = np.concatenate([np.pad(x, [[0, 0], [0, width - x.shape[1]]], constant_values=self.special.pad)
                                  for x in (ids, twin_ids)])
            lengths = np.concatenate([lengths, twin_lengths])
        everyone = batch + [batch[b] for b in leads]
        sampling = self._sampling(everyone, with_max_new=False)
        state = self.signatures["prefill"](
            token_ids=tf.constant(ids), num_tokens=tf.constant(lengths), **self._sampling(everyone)
        )
        cache, key_mask = state["cache"], state["key_mask"]
        token, position, index = state["next_token"], state["position"], state["cache_index"]
        logits = state.get("logits")
        top_k = max((r.logprobs for r in batch if r.logprobs is not None), default=None)
        if (top_k is not None or leads) and logits is None:
            raise BadRequest("this export has no logprobs support (its prefill/decode return no logits); "
                             "re-export the model with python -m serving.export")
        if leads:  # the guided rows sample from their mix with their twins' logits, which the twins then follow
            from tfchat.inference.slots import GUIDE, SAMPLING, guided_tokens, pairing

            pairs = pairing(len(everyone), [r.sampling.guidance for r in everyone], [-1] * n + leads)
            mix = functools.partial(guided_tokens, sampling=tuple(sampling[k] for k in SAMPLING),
                                    **{k: tf.constant(pairs[k]) for k in GUIDE})
        rows = [_Row(r, self.token_bytes) for r in batch]
        limit = max(r.sampling.max_new_tokens for r in batch)
        for step in range(limit):
            if leads:
                token = mix(token, logits, step=position)
            new = token.numpy()[:n]
            scores = self._log_probs(logits[:n], token[:n], top_k) if top_k is not None else [None] * len(rows)
            for row, t, score in zip(rows, new, scores):
                row.add(int(t), self.stop_ids, score)
            self._emit([row for row in rows if row.per_step])
            if all(row.done for row in rows) or step + 1 == limit:
                break
            out = self.signatures["decode"](
                token=token, position=position, cache=cache, cache_index=index, key_mask=key_mask, **sampling
            )
            token, logits, cache, position, index = out["next_token"], out.get("logits"), out["cache"], position + 1, index + 1
        self._emit(rows)  # the final text of rows not decoded step by step
        for b, row in enumerate(rows):
            self._complete(row, min(lengths[b], room))

    # ------------------------------------------------------------------ fast path: continuous batching

    def _join(self, batch: list[GenRequest]) -> None:
        """Prefills `batch` into new slots beside the running rows; they decode from the next chunk."""
        groups: dict = collections.defaultdict(list)  # chat prompts are fitted to their own max_new_tokens
        for r in batch:
            groups[(r.is_chat, r.sampling.max_new_tokens)].append(r)
        batch, prompts, leads, twin_prompts = [], [], [], []
        for group in groups.values():
            ids, lengths = self._prompt_ids(group)
            prompts += [ids[b, : lengths[b]].tolist() for b in range(len(group))]
            guided = [b for b, r in enumerate(group) if _is_guided(r)]
            if guided:  # each guided row's untagged twin joins as an extra row after the batch
                ids, lengths = self._prompt_ids([_untagged(group[b]) for b in guided])
                twin_prompts += [ids[j, : lengths[j]].tolist() for j in range(len(guided))]
                leads += [len(batch) + b for b in guided]
            batch += group
        prompts += twin_prompts
        twin_of = [-1] * len(batch) + leads
        everyone = batch + [batch[b] for b in leads]
        s = [r.sampling for r in everyone]
        new = self.decoder.prefill(prompts, [x.max_new_tokens for x in s], [x.temperature for x in s],
                                   [x.top_k for x in s], [x.top_p for x in s], [x.seed for x in s],
                                   guidance=[x.guidance for x in s], twin_of=twin_of)
        rows = [_Row(r, self.token_bytes) for r in batch] + [_Row(r, twin=True) for r in everyone[len(batch):]]
        self._add_tokens(rows, new.token.numpy()[:, None], new.logits.numpy()[:, None])
        for row, prompt in zip(rows, prompts):
            row.prompt_tokens = min(len(prompt), self.max_len - row.request.sampling.max_new_tokens)
        n = len(self._running)
        self._rows = new if not n else self.decoder.select(self._rows, range(n + len(rows)), more=new)
        self._running += rows
        self.largest_batch = max(self.largest_batch, len(self._running))
        self._retire()

    def _decode_chunk(self) -> None:
        """One `chunk`-token decode call for every running row; rows that finished leave."""
        with_logits = any(row.request.logprobs is not None for row in self._running)
        tokens, logits, self._rows = self.decoder.decode(self._rows, with_logits=with_logits)
        self._add_tokens(self._running, tokens, logits)
        self._retire()

    def _add_tokens(self, rows: list["_Row"], tokens: np.ndarray, logits: np.ndarray | None) -> None:
        """Gives each row its new tokens [B, steps] (with their logits [B, steps, V] for log-probabilities),
        then streams the text."""
        k = max((row.request.logprobs for row in rows if row.request.logprobs is not None), default=None)
        for step in range(tokens.shape[1]):
            live = [b for b, row in enumerate(rows) if not row.done and not row.twin]
            scores = dict(zip(live, self._log_probs(tf.constant(logits[live, step]), tf.constant(tokens[live, step]), k)
                              if k is not None and live else []))
            for b, row in enumerate(rows):
                row.add(int(tokens[b, step]), self.stop_ids, scores.get(b))
        self._emit([row for row in rows if row.per_step])

    def _retire(self) -> None:
        """Completes the rows that are done and frees their slots."""
        done = [row for row in self._running if row.done]
        if not done:
            return
        keep = [b for b, row in enumerate(self._running) if not row.done]
        self._rows = self.decoder.select(self._rows, keep) if keep else None
        self._running = [self._running[b] for b in keep]
        done = [row for row in done if not row.twin]
        self._emit(done)  # the final text of rows not decoded step by step
        for row in done:
            self._complete(row, row.prompt_tokens)

    def _complete(self, row: "_Row", prompt_tokens: int) -> None:
        if row.request.cancelled:
            _fail(row.request, Cancelled("cancelled while decoding"))
            return
        logprobs = row.logprobs if row.request.logprobs is not None else None
        row.finish(Completion(row.text, row.tokens, self._finish_reason(row.tokens), int(prompt_tokens), logprobs))

    def _log_probs(self, logits, tokens, k: int) -> list[tuple[float, list[tuple[int, float]]]]:
        """(log p(token), [(id, log p)] of the k most likely) per row, from one step's logits [B, V]."""
        chosen = token_log_probs(logits[:, None, :], tokens[:, None])[:, 0].numpy()
        if not k:
            return [(float(c), []) for c in chosen]
        top_ids = tf.math.top_k(logits, k).indices
        top_lp = token_log_probs(tf.repeat(logits[:, None, :], k, axis=1), top_ids).numpy()
        return [(float(c), list(zip(i.tolist(), lp.tolist()))) for c, i, lp in zip(chosen, top_ids.numpy(), top_lp)]

    def _pieces(self, ids: set[int]) -> None:
        """Fills `self._piece_bytes` for `ids` (one detokenize call): the text of each token alone."""
        missing = sorted(i for i in ids if i not in self._piece_bytes)
        if missing:
            out = self.signatures["detokenize"](token_ids=tf.constant([[i] for i in missing], tf.int32),
                                                num_tokens=tf.ones([len(missing)], tf.int32))["text"].numpy()
            self._piece_bytes.update(zip(missing, out))

    def _emit(self, rows: list["_Row"]) -> None:
        """Passes on each row's new text: what its detokenizer completed, or (exports without token bytes)
        the decoded ids so far (one detokenize call for all)."""
        fresh = [row for row in rows if row.pending]
        ready = [row for row in rows if row.ready or (row.done and row.unplaced)]
        self._pieces({i for row in fresh + ready for i in row.alternatives()})
        for row in ready:
            row.send(row.ready, self._piece_bytes)
        if not fresh:
            return
        width = max(len(row.content) for row in fresh)
        ids = np.zeros([len(fresh), max(width, 1)], np.int32)
        for b, row in enumerate(fresh):
            ids[b, : len(row.content)] = row.content
        n = np.array([len(row.content) for row in fresh], np.int32)
        texts = self.signatures["detokenize"](token_ids=tf.constant(ids), num_tokens=tf.constant(n))["text"].numpy()
        for row, text in zip(fresh, texts):
            row.update(text.decode("utf-8", errors="replace"), self._piece_bytes)


class _Row:
    """Per-request decoding state: ids so far, text so far, log-probabilities waiting for their bytes.

    With the export's token bytes, each content token goes through a `Detokenizer` and the text it completes
    waits in `ready` for `Backend._emit`; without (older exports), `pending` asks `_emit` to decode every id
    so far."""

    def __init__(self, request: GenRequest, token_bytes: tuple[bytes, ...] | None = None, twin: bool = False):
        self.request = request
        self.twin = twin  # a guided row's untagged twin: decoded beside it, never streamed or completed
        self.per_step = not twin and (request.events is not None or request.logprobs is not None)
        self.prompt_tokens = 0
        self.tokens: list[int] = []
        self.content: list[int] = []  # tokens minus stop ids
        self.text = ""
        self.done = False
        self.pending = False
        self.logprobs: list[TokenLogprob] = []
        self._unplaced: list[tuple[int, float, list]] = []  # content tokens whose text has not appeared yet
        self.detokenizer = Detokenizer(token_bytes) if token_bytes is not None else None
        self.ready = ""  # text the detokenizer completed, not yet sent

    def add(self, token: int, stop_ids: set, score: tuple[float, list] | None) -> None:
        if self.done:
            return
        if self.request.cancelled:
            self.done = True
            return
        self.tokens.append(token)
        if token in stop_ids:
            self.done = True
        else:
            self.content.append(token)
            if score is not None:
                self._unplaced.append((token, *score))
            if self.detokenizer is not None:
                self.ready += self.detokenizer.add(token)
        self.pending = self.detokenizer is None
        if len(self.tokens) >= self.request.sampling.max_new_tokens:
            self.done = True
        if self.done and self.detokenizer is not None:
            self.detokenizer.finish()  # a character cut off by the length limit is left out

    @property
    def unplaced(self) -> bool:
        return bool(self._unplaced)

    def alternatives(self) -> set[int]:
        return {i for _, _, top in self._unplaced for i, _ in top}

    def update(self, text: str, pieces: dict[int, bytes]) -> None:
        """Passes on what `text`, the decoded reply so far, adds."""
        self.pending = False
        # A multi-byte character split across tokens decodes as U+FFFD until its last byte arrives.
        stable = text if self.done else text.rstrip("\ufffd")
        if len(stable) > len(self.text) and stable.startswith(self.text):
            self.send(stable[len(self.text):], pieces)

    def send(self, delta: str, pieces: dict[int, bytes]) -> None:
        """Passes on new text with the log-probabilities of the tokens that spelt it."""
        self.ready = ""
        placed = self._place(delta, pieces)  # at the end, tokens that spelt nothing get empty bytes
        self.text += delta
        if delta and self.request.events is not None:
            self.request.events.put(("delta", delta, placed))

    def _place(self, text: str, pieces: dict[int, bytes]) -> list[TokenLogprob]:
        """Gives the tokens waiting for text what just appeared. With several waiting and fewer characters
        (a character spelled in byte tokens): one byte to each but the last, which takes the rest; else one
        character to each but the last. Their bytes always add up to the text."""
        group, self._unplaced = self._unplaced, []
        units = list(text) if len(text) >= len(group) else [bytes([b]) for b in text.encode("utf-8")]
        units = [u.encode("utf-8") if isinstance(u, str) else u for u in units]
        placed = []
        for i, (token, logprob, top) in enumerate(group):
            data = b"".join(units[i:]) if i == len(group) - 1 else (units[i] if i < len(units) else b"")
            placed.append(TokenLogprob(token, data, logprob, [(t, pieces.get(t, b""), lp) for t, lp in top]))
        self.logprobs += placed
        return placed

    def finish(self, completion: Completion) -> None:
        if not self.request.future.done():
            self.request.future.set_result(completion)
        if self.request.events is not None:
            self.request.events.put(("done", completion))


def _is_guided(r: GenRequest) -> bool:
    return bool(r.tags) and r.sampling.guidance != 1.0


def _rows_of(jobs: list) -> int:
    """Batch rows the jobs take: a guided request two (its untagged twin decodes beside it)."""
    return sum(2 if isinstance(j, GenRequest) and _is_guided(j) else 1 for j in jobs)


def _within(free: int, jobs: list) -> list:
    """The first jobs, in order, whose rows fit in `free` batch rows."""
    taken = []
    for j in jobs:
        if _rows_of(taken + [j]) > free:
            break
        taken.append(j)
    return taken


def _untagged(r: GenRequest) -> GenRequest:
    """The request's untagged twin, for its prompt ids only."""
    return GenRequest(messages=r.messages, sampling=r.sampling, knowledge=r.knowledge)


def fit_messages(messages: list[dict], limit: int) -> list[dict]:
    """Cuts a conversation to about `limit` characters the way the chat template cuts tokens: a first system
    message to `limit // 2` (its start kept), then whole exchanges from the oldest, then the start of
    the last message."""
    system = messages[:1] if messages[0]["role"] == "system" else []
    if (len(system[0]["content"]) if system else 0) <= limit // 2 and sum(len(m["content"]) for m in messages) <= limit:
        return messages
    system = [{**system[0], "content": system[0]["content"][: limit // 2]}] if system else []
    budget = limit - sum(len(m["content"]) for m in system)
    kept: list[dict] = []
    for m in reversed(messages[len(system):]):
        budget -= len(m["content"])
        if budget < 0:
            break
        kept.append(m)
    kept.reverse()
    if not kept:  # the newest message alone is too long: keep its end
        last = messages[-1]
        room = limit - sum(len(m["content"]) for m in system)
        return system + [{**last, "content": last["content"][len(last["content"]) - room:]}]
    while len(kept) > 1 and kept[0]["role"] != "user":  # an exchange starts with the user's message
        kept.pop(0)
    return system + kept


def _fail(job, error: Exception) -> None:
    if isinstance(error, (tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError)):
        error = BadRequest(tf_error_message(error))
    if not job.future.done():
        job.future.set_exception(error)
    events = getattr(job, "events", None)
    if events is not None:
        events.put(("error", error))

