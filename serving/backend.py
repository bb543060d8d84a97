"""In-process model backend shared by the HTTP/gRPC server and the terminal chat.

Loads an exported SavedModel (`serving.export`) and runs every TF call on one
worker thread fed by a queue: concurrent requests never interleave inside a
signature call, and generation requests that arrive together are batched
(up to `max_batch`, waiting at most `batch_wait_ms` for company). Each row
keeps its own sampling settings and seed, so a batched answer equals the
answer the request would get alone.

* non-streaming generation uses the `generate` / `chat` signatures (the whole
  decode loop runs in the graph);
* streaming uses `prefill` + `decode`, one signature call per token, and
  pushes text deltas to the caller as they are produced: each token's bytes
  (the `token_bytes` signature, read once) go through
  `tfchat.inference.streaming.Detokenizer`, so a character spelt in several
  byte-fallback tokens appears whole, never as U+FFFD. (Exports made before
  that signature existed decode the whole reply each step instead.)

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
import json
import logging
import os
import queue
import re
import threading
import time
from typing import Iterator

import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the TF Text ops the SavedModel uses)

from serving.errors import BadRequest, NotFound
from tfchat.inference.sampling import SamplingParams
from tfchat.inference.streaming import Detokenizer, decode_text
from tfchat.text.chat_template import MIN_MAX_LEN
from tfchat.text.special_tokens import ROLES, SpecialIds

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (emitted a stop id) or "length"
    prompt_tokens: int


@dataclasses.dataclass
class GenRequest:
    """One generation: either `prompt` (text completion) or `messages` (chat), with its sampling settings
    (default: the backend's; a None seed becomes a random one when the request is queued)."""

    prompt: str | None = None
    messages: list[dict] | None = None
    sampling: SamplingParams | None = None
    # Filled by the backend.
    future: concurrent.futures.Future = dataclasses.field(default_factory=concurrent.futures.Future)
    events: "queue.Queue | None" = None  # streaming: ("delta", str) ... then ("done", Completion) / ("error", exc)
    cancelled: bool = False

    @property
    def is_chat(self) -> bool:
        return self.messages is not None

    def key(self):
        return ("stream" if self.events is not None else "batch", self.is_chat)


@dataclasses.dataclass
class _PredictJob:
    signature: str
    inputs: dict
    future: concurrent.futures.Future = dataclasses.field(default_factory=concurrent.futures.Future)

    def key(self):
        return None  # never batched


def find_versions(base: str) -> list[int]:
    return sorted(int(d) for d in os.listdir(base) if re.fullmatch(r"\d+", d) and os.path.isdir(os.path.join(base, d)))


class Backend:
    """Loads `path` (an export base with integer versions, or one version dir) and serves it.

    Args:
        path: `exports/tfchat` (serves the latest version) or `exports/tfchat/3`.
        name: model name (default: the base folder's name).
        max_batch: most generation requests run together.
        batch_wait_ms: how long the worker waits for more requests to batch.
    """

    def __init__(self, path: str, name: str | None = None, max_batch: int = 8, batch_wait_ms: float = 5.0):
        path = os.path.abspath(path)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"export not found: {path}")
        if os.path.isfile(os.path.join(path, "saved_model.pb")):
            base, version_dir = os.path.dirname(path), path
            self.version = int(os.path.basename(path)) if os.path.basename(path).isdigit() else 1
        else:
            versions = find_versions(path)
            if not versions:
                raise FileNotFoundError(f"{path} has no SavedModel versions (integer subfolders); run serving.export")
            base, self.version = path, versions[-1]
            version_dir = os.path.join(path, str(self.version))
        self.name = name or os.path.basename(base)
        self.path = version_dir
        meta_path = os.path.join(version_dir, "assets.extra", "tfchat.json")
        try:
            with open(meta_path) as f:
                self.metadata = json.load(f)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{version_dir} is not a tfchat export ({meta_path} missing)") from e
        self.max_len = int(self.metadata["max_len"])
        self.special = SpecialIds.from_dict(self.metadata["special_ids"])
        self.stop_ids = set(self.metadata["stop_ids"])
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
        self._signature(signature)
        return self._submit(_PredictJob(signature, inputs)).result()

    def submit(self, request: GenRequest) -> concurrent.futures.Future:
        """Queues a non-streaming generation; the future resolves to a Completion."""
        self.validate(request)
        return self._submit(request)

    def complete(self, request: GenRequest) -> Completion:
        """Non-streaming generation (batched with concurrent requests)."""
        return self.submit(request).result()

    def stream(self, request: GenRequest) -> Iterator[str]:
        """Streaming generation: yields text deltas; `request.future` then holds the Completion."""
        self.validate(request)  # raises now, before any output is produced
        request.events = queue.Queue()
        self._submit(request)
        return self._events(request)

    def _events(self, request: GenRequest) -> Iterator[str]:
        try:
            while True:
                kind, value = request.events.get()
                if kind == "delta":
                    yield value
                elif kind == "error":
                    raise value
                else:
                    return
        finally:
            request.cancelled = True  # consumer gone: stop decoding this row

    def validate(self, r: GenRequest) -> None:
        """Checks a request and fills in its sampling settings (defaults, a concrete seed)."""
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
        r.sampling = (r.sampling or self.defaults).resolved()
        try:
            # A chat prompt needs a few ids (markers) besides the history.
            r.sampling.check_fits(self.max_len - (MIN_MAX_LEN if r.is_chat else 1))
        except ValueError as e:
            raise BadRequest(str(e)) from None

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
        with self._cv:
            while not self._jobs and not self._closed:
                self._cv.wait()
            if self._closed and not self._jobs:
                return None
            first = self._jobs.popleft()
            batch = [first]
            key = first.key()
            if key is None:
                return batch
            deadline = time.monotonic() + self.batch_wait
            while len(batch) < self.max_batch:
                same = [j for j in self._jobs if j.key() == key][: self.max_batch - len(batch)]
                for j in same:
                    self._jobs.remove(j)
                batch += same
                left = deadline - time.monotonic()
                if len(batch) >= self.max_batch or left <= 0:
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

    def _run(self, batch: list) -> None:
        job = batch[0]
        if isinstance(job, _PredictJob):
            out = self.signatures[job.signature](**job.inputs)
            job.future.set_result({k: v.numpy() for k, v in out.items()})
        elif job.events is None:
            self._run_generate(batch)
        else:
            self._run_stream(batch)

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
            out = self.signatures["chat_prompt"](**self._conversations(batch), max_new_tokens=max_new)
            return out["token_ids"].numpy(), out["num_tokens"].numpy()
        out = self.signatures["tokenize"](text=tf.constant([r.prompt for r in batch], tf.string))
        rows = [self.special.document(ids[:n]) for ids, n in zip(out["token_ids"].numpy(), out["num_tokens"].numpy())]
        padded = np.full([len(rows), max(map(len, rows))], self.special.pad, np.int32)
        for b, row in enumerate(rows):
            padded[b, : len(row)] = row
        return padded, np.array([len(row) for row in rows], np.int32)

    def _run_generate(self, batch: list[GenRequest]) -> None:
        _, prompt_lengths = self._prompt_ids(batch)
        room = self.max_len - max(r.sampling.max_new_tokens for r in batch)
        if batch[0].is_chat:
            out = self.signatures["chat"](**self._conversations(batch), **self._sampling(batch))
            texts = out["reply"].numpy()
        else:
            out = self.signatures["generate"](prompt=tf.constant([r.prompt for r in batch]), **self._sampling(batch))
            texts = out["text"].numpy()
        ids, counts = out["token_ids"].numpy(), out["num_tokens"].numpy()
        for b, r in enumerate(batch):
            tokens = ids[b, : counts[b]].tolist()
            # The streaming rule (`tfchat.inference.streaming`), so a reply is the same streamed or not.
            text = (decode_text([t for t in tokens if t not in self.stop_ids], self.token_bytes)
                    if self.token_bytes is not None else texts[b].decode("utf-8", errors="replace"))
            r.future.set_result(
                Completion(
                    text=text,
                    token_ids=tokens,
                    finish_reason=self._finish_reason(tokens),
                    prompt_tokens=int(min(prompt_lengths[b], room)),
                )
            )

    def _finish_reason(self, tokens: list[int]) -> str:
        return "stop" if tokens and tokens[-1] in self.stop_ids else "length"

    def _run_stream(self, batch: list[GenRequest]) -> None:
        ids, lengths = self._prompt_ids(batch)
        room = self.max_len - max(r.sampling.max_new_tokens for r in batch)
        sampling = self._sampling(batch, with_max_new=False)
        state = self.signatures["prefill"](
            token_ids=tf.constant(ids), num_tokens=tf.constant(lengths), **self._sampling(batch)
        )
        cache, key_mask = state["cache"], state["key_mask"]
        token, position, index = state["next_token"], state["position"], state["cache_index"]
        rows = [_StreamRow(r, self.token_bytes) for r in batch]
        limit = max(r.sampling.max_new_tokens for r in batch)
        for step in range(limit):
            new = token.numpy()
            for row, t in zip(rows, new):
                row.add(int(t), self.stop_ids)
            self._emit(rows)
            if all(row.done for row in rows) or step + 1 == limit:
                break
            out = self.signatures["decode"](
                token=token, position=position, cache=cache, cache_index=index, key_mask=key_mask, **sampling
            )
            token, cache, position, index = out["next_token"], out["cache"], position + 1, index + 1
        for b, row in enumerate(rows):
            row.finish(Completion(row.text, row.tokens, self._finish_reason(row.tokens), int(min(lengths[b], room))))

    def _emit(self, rows: list["_StreamRow"]) -> None:
        """Decodes every row's ids so far (one detokenize call) and sends the new text."""
        fresh = [row for row in rows if row.pending]
        if not fresh:
            return
        width = max(len(row.content) for row in fresh)
        ids = np.zeros([len(fresh), max(width, 1)], np.int32)
        for b, row in enumerate(fresh):
            ids[b, : len(row.content)] = row.content
        n = np.array([len(row.content) for row in fresh], np.int32)
        texts = self.signatures["detokenize"](token_ids=tf.constant(ids), num_tokens=tf.constant(n))["text"].numpy()
        for row, text in zip(fresh, texts):
            row.update(text.decode("utf-8", errors="replace"))


class _StreamRow:
    """Per-request streaming state: ids so far, text already sent.

    With the export's token bytes, each content token goes through a `Detokenizer` and its completed text is
    sent at once; without (older exports), `pending` asks `Backend._emit` to decode every id so far."""

    def __init__(self, request: GenRequest, token_bytes: tuple[bytes, ...] | None = None):
        self.request = request
        self.tokens: list[int] = []
        self.content: list[int] = []  # tokens minus stop ids
        self.text = ""
        self.done = False
        self.pending = False
        self.detokenizer = Detokenizer(token_bytes) if token_bytes is not None else None

    def add(self, token: int, stop_ids: set) -> None:
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
            if self.detokenizer is not None:
                self._send(self.detokenizer.add(token))
        self.pending = self.detokenizer is None
        if len(self.tokens) >= self.request.sampling.max_new_tokens:
            self.done = True
        if self.done and self.detokenizer is not None:
            self.detokenizer.finish()  # a character cut off by the length limit is left out

    def _send(self, delta: str) -> None:
        if delta:
            self.request.events.put(("delta", delta))
            self.text += delta

    def update(self, text: str) -> None:
        self.pending = False
        # A multi-byte character split across tokens decodes as U+FFFD until its last byte arrives.
        stable = text if self.done else text.rstrip("\ufffd")
        if len(stable) > len(self.text) and stable.startswith(self.text):
            self._send(stable[len(self.text):])

    def finish(self, completion: Completion) -> None:
        if not self.request.future.done():
            self.request.future.set_result(completion)
        self.request.events.put(("done", completion))


def tf_error_message(error: Exception) -> str:
    """The useful line of a TF error: the message of a failed graph assertion if there is one."""
    text = getattr(error, "message", None) or str(error)
    found = re.search(r"assertion failed: \[([^\]]*)\]", text)
    if found:
        return found.group(1).split("Condition")[0].strip().rstrip(".")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("[[")]
    useful = [ln for ln in lines if ln not in ("Graph execution error:",) and not ln.startswith("Detected at node")]
    return (useful or lines or [type(error).__name__])[0]


def _fail(job, error: Exception) -> None:
    if isinstance(error, tf.errors.InvalidArgumentError):
        error = BadRequest(tf_error_message(error))
    if not job.future.done():
        job.future.set_exception(error)
    events = getattr(job, "events", None)
    if events is not None:
        events.put(("error", error))

