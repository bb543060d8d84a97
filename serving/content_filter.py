"""The content filter in the server: flagged input is refused, generated output is screened as it grows.

`FilteredBackend(backend, content_filter)` has the interface of
`serving.backend.Backend`, so every route (OpenAI, TF Serving REST and gRPC,
the web and terminal chats) is filtered without knowing it:

* input: a request whose prompt, or any of whose messages, is flagged never
  reaches the model; it gets `REFUSAL` as its reply with finish reason
  `content_filter`;
* streamed output: the text is checked every `check_every` deltas (about a
  token each) and only text that passed a check is sent, so when a check
  flags the growing reply, generation stops, nothing of the flagged part has
  reached the client, and the stream finishes with `content_filter`;
* non-streamed output: the finished reply is checked; a flagged one is cut
  the same way (its prefixes every `check_every` tokens, detokenized in one
  call, are checked and the reply keeps the text before the first flagged
  one) and finishes with `content_filter`;
* TF Serving `generate` / `chat` (/ `chat_tagged`) signatures get an extra output
  `content_filter` per row: "" (passed), "input" (refused: the text is
  `REFUSAL`) or "output" (withheld: empty text, no token ids); `prefill` and
  `decode` are not served (they would bypass the filter).

`content_filter` is a `tfchat.inference.classifier.ContentFilter`
(`python -m training.classify --task moderation`). `serving.routes.moderation`
serves the same classifier as OpenAI's `POST /v1/moderations`.

Example:

>>> backend = FilteredBackend(Backend("exports/tfchat"), ContentFilter.load("runs/moderation"))  # doctest: +SKIP
>>> backend.complete(GenRequest(messages=[{"role": "user", "content": "..."}])).finish_reason  # doctest: +SKIP
'content_filter'
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
from typing import Iterator

import numpy as np
import tensorflow as tf

from serving.backend import Completion, GenRequest
from serving.errors import NotFound
from tfchat.inference.classifier import ContentFilter

log = logging.getLogger(__name__)

FINISH_REASON = "content_filter"
REFUSAL = "Sorry, I can't help with that."
# Signatures that generate token by token outside the filter's reach.
UNFILTERED = ("prefill", "decode")
# Signature -> (its input text, its output text).
GENERATION = {"serving_default": ("prompt", "text"), "generate": ("prompt", "text"), "chat": ("contents", "reply"),
              "chat_tagged": ("contents", "reply")}


class FilteredBackend:
    """A `serving.backend.Backend` whose input and output pass a `ContentFilter` (see the module docstring).

    Args:
        backend: the model backend.
        content_filter: decides what is flagged.
        check_every: screen a growing reply every this many tokens.
        refusal: the reply to flagged input.
    """

    def __init__(self, backend, content_filter: ContentFilter, check_every: int = 4, refusal: str = REFUSAL):
        if check_every < 1:
            raise ValueError(f"check_every must be >= 1, got {check_every}")
        self.backend, self.content_filter = backend, content_filter
        self.check_every, self.refusal = check_every, refusal
        self.counts = collections.Counter()  # refused inputs, cut outputs (for logs and tests)
        self.signatures = {k: v for k, v in backend.signatures.items() if k not in UNFILTERED}
        # Screens finished replies off the backend's worker thread (it may need the worker to detokenize).
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="content-filter")

    def __getattr__(self, name):  # name, version, defaults, largest_batch, validate, ...
        return getattr(self.backend, name)

    # ------------------------------------------------------------------ generation

    def flagged(self, texts: list[str]) -> bool:
        return bool(texts) and bool(self.content_filter.flag_texts(texts).any())

    def _refused(self, request: GenRequest) -> bool:
        texts = [request.prompt] if request.prompt is not None else [m["content"] for m in request.messages]
        if not self.flagged(texts):
            return False
        self.counts["input"] += 1
        log.info("content filter: refused a flagged %s", "prompt" if request.prompt is not None else "conversation")
        if not request.future.done():
            request.future.set_result(Completion(self.refusal, [], FINISH_REASON, 0))
        return True

    def submit(self, request: GenRequest) -> concurrent.futures.Future:
        """Queues a generation; the future resolves to the screened Completion."""
        self.backend.validate(request)
        if self._refused(request):
            return request.future
        inner = dataclasses.replace(request, future=concurrent.futures.Future(), events=None)
        self.backend.submit(inner).add_done_callback(
            lambda done: self._pool.submit(self._screen_completion, done, request))
        return request.future

    def complete(self, request: GenRequest) -> Completion:
        return self.submit(request).result()

    def _screen_completion(self, done: concurrent.futures.Future, request: GenRequest) -> None:
        try:
            completion = done.result()
            if self.flagged([completion.text]):
                self.counts["output"] += 1
                completion = dataclasses.replace(completion, text=self._clean_prefix(completion),
                                                 finish_reason=FINISH_REASON)
            request.future.set_result(completion)
        except Exception as e:  # noqa: BLE001  (reported to the caller)
            request.future.set_exception(e)

    def _clean_prefix(self, completion: Completion) -> str:
        """The reply up to its first flagged prefix, checking every `check_every` tokens as streaming does."""
        content = [t for t in completion.token_ids if t not in self.backend.stop_ids]
        ends = list(range(self.check_every, len(content), self.check_every)) + [len(content)]
        ids = np.zeros([len(ends), max(len(content), 1)], np.int32)
        for row, end in enumerate(ends):
            ids[row, :end] = content[:end]
        out = self.backend.predict("detokenize", {"token_ids": tf.constant(ids), "num_tokens": tf.constant(ends, tf.int32)})
        texts = [t.decode("utf-8", errors="replace").rstrip("\ufffd") for t in out["text"]]
        flags = self.content_filter.flag_texts(texts)
        first = int(np.argmax(flags)) if flags.any() else len(texts)
        return texts[first - 1] if first > 0 else ""

    def stream(self, request: GenRequest) -> Iterator[str]:
        """Streaming generation of screened text deltas; `request.future` then holds the Completion."""
        return (text for text, _ in self.stream_with_logprobs(request))

    def stream_with_logprobs(self, request: GenRequest) -> Iterator[tuple[str, list]]:
        """`Backend.stream_with_logprobs`, screened: (text delta, its tokens' log-probabilities)."""
        self.backend.validate(request)
        if self._refused(request):
            return (piece for piece in [(self.refusal, [])])  # a generator: callers close() it
        inner = dataclasses.replace(request, future=concurrent.futures.Future(), events=None)
        return self._screened(self.backend.stream_with_logprobs(inner), inner, request)

    def _screened(self, pieces: Iterator[tuple[str, list]], inner: GenRequest, request: GenRequest):
        sent, held, held_lp, count = "", "", [], 0
        try:
            for piece, logprobs in pieces:
                held, held_lp, count = held + piece, held_lp + list(logprobs), count + 1
                if count % self.check_every:
                    continue
                if self.flagged([sent + held]):
                    self._cut(inner, request, sent)
                    return
                yield held, held_lp
                sent, held, held_lp = sent + held, "", []
            if held and self.flagged([sent + held]):
                self._cut(inner, request, sent)
                return
            if held:
                yield held, held_lp
            request.future.set_result(inner.future.result())
        except Exception as e:
            if not request.future.done():
                request.future.set_exception(e)
            raise
        finally:
            pieces.close()  # stops decoding the row if the client went away

    def _cut(self, inner: GenRequest, request: GenRequest, sent: str) -> None:
        """Stops generating; the request's Completion is what was sent, finishing with content_filter."""
        self.counts["output"] += 1
        log.info("content filter: stopped a reply after %d characters", len(sent))
        inner.cancelled = True

        def finish(done: concurrent.futures.Future) -> None:
            if done.exception() is not None:
                request.future.set_exception(done.exception())
            else:
                request.future.set_result(dataclasses.replace(done.result(), text=sent, finish_reason=FINISH_REASON))

        inner.future.add_done_callback(finish)

    # ------------------------------------------------------------------ TF Serving signatures

    def signature_specs(self, name: str) -> tuple[dict, dict]:
        self._check_signature(name)
        inputs, outputs = self.backend.signature_specs(name)
        if name in GENERATION:
            outputs = {**outputs, "content_filter": tf.TensorSpec([None], tf.string, name="content_filter")}
        return inputs, outputs

    def _check_signature(self, name: str) -> None:
        if name in UNFILTERED:
            raise NotFound(f'Serving signature name: "{name}" is not served with a content filter (it would bypass '
                           "the filter); use generate or chat")

    def predict_job(self, signature: str, inputs: dict):
        """`Backend.predict_job`, screened: a job whose `.future` resolves to `predict`'s outputs."""
        self._check_signature(signature)
        job = _Job()
        job.future = self._pool.submit(self.predict, signature, inputs)
        return job

    def predict(self, signature: str, inputs: dict) -> dict:
        """Runs a signature; `generate`/`chat` rows are screened (see the module docstring)."""
        self._check_signature(signature)
        if signature not in GENERATION:
            return self.backend.predict(signature, inputs)
        source, target = GENERATION[signature]
        rows = _strings(inputs[source])  # [B] or [B, M]
        refused = np.array([self.flagged([t for t in (row if isinstance(row, list) else [row]) if t]) for row in rows],
                           bool)
        keep = np.flatnonzero(~refused)
        batch = len(rows)
        out = {target: np.array([self.refusal.encode()] * batch, object), "num_tokens": np.zeros([batch], np.int32),
               "content_filter": np.array([b"input" if r else b"" for r in refused], object)}
        token_ids = np.zeros([batch, 0], np.int32)
        if len(keep):
            generated = self.backend.predict(signature, {k: tf.gather(v, keep) for k, v in inputs.items()})
            texts = [t.decode("utf-8", errors="replace") for t in generated[target]]
            withheld = self.content_filter.flag_texts(texts)
            token_ids = np.zeros([batch, generated["token_ids"].shape[1]], np.int32)
            for i, row in enumerate(keep):
                if withheld[i]:
                    out[target][row], out["content_filter"][row] = b"", b"output"
                else:
                    out[target][row] = generated[target][i]
                    out["num_tokens"][row] = generated["num_tokens"][i]
                    token_ids[row] = generated["token_ids"][i]
        self.counts["input"] += int(refused.sum())
        self.counts["output"] += int((out["content_filter"] == b"output").sum())
        return {**out, "token_ids": token_ids}

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        self.backend.close()


class _Job:
    """A screened `predict` running in the filter's pool (`.cancelled` is accepted and ignored: the
    screened call is short once its model call is queued)."""

    future: concurrent.futures.Future
    cancelled: bool = False


def _strings(tensor) -> list:
    """A string tensor [B] or [B, M] as Python str (rows of lists for [B, M])."""
    array = tf.convert_to_tensor(tensor).numpy()
    decode = lambda b: b.decode("utf-8", errors="replace")  # noqa: E731
    return [[decode(x) for x in row] if array.ndim == 2 else decode(row) for row in array]
