"""Best-of-n at serving time: sample n replies to a chat request, return the one a reward model scores highest.

    python -m serving.server --model exports/tfchat --reward-model exports/reward --best-of 4
    python -m serving.chat --model exports/tfchat --reward-model exports/reward --best-of 4

This is a server setting, not a request option (OpenAI's `n` stays
rejected): every chat request, on every route and in the web and terminal
chats, gets the best of `n`. The candidates are the request's own sampling
settings with seeds seed, seed + 1, ..., seed + n - 1, submitted together so
the backend decodes them as one batch; the reward model
(`serving.reward_export`'s `reward` signature, through its own `Backend`)
scores the history plus each candidate, and the highest-scoring one is the
answer (the first on a tie). Greedy requests (temperature 0) would give n
identical candidates, so they are generated once. Text completions have no
conversation to score and pass through. A streaming request gets the
winner as one piece once it is chosen: nothing is sent before every
candidate is scored.

The backend calls in through two marked hook lines (`Backend.submit`,
`Backend.stream`); `serving.server` and `serving.chat` attach it.

Example:

>>> backend.best_of = BestOfN(RewardScorer("exports/reward"), n=4)   # doctest: +SKIP
"""

from __future__ import annotations

import concurrent.futures
import logging
from typing import Callable, Iterator, Sequence

import numpy as np

from serving.backend import Backend, Completion, GenRequest

log = logging.getLogger(__name__)

MAX_BEST_OF = 64
_INT32 = 2**31


class RewardScorer:
    """Scores conversations whose last message is an assistant reply, with an exported reward model.

    Args:
        path: a reward model export (`python -m serving.export --model runs/reward --out exports/reward`).

    Raises:
        ValueError: when `path` is an export of another kind of model.
    """

    def __init__(self, path: str):
        self.backend = Backend(path, max_batch=1)
        head = self.backend.metadata.get("head", "lm")
        if head != "reward":
            self.backend.close()
            raise ValueError(f"{path} is not a reward model export (it holds a {head} model); train and export one: "
                             "python -m training.reward, then python -m serving.export --model runs/reward "
                             "--out exports/reward")

    def score(self, conversations: Sequence[Sequence[dict]]) -> np.ndarray:
        """float32 [N]: the reward of each conversation's final assistant message."""
        width = max(len(c) for c in conversations)
        roles = [[m["role"] for m in c] + [""] * (width - len(c)) for c in conversations]
        contents = [[m["content"] for m in c] + [""] * (width - len(c)) for c in conversations]
        out = self.backend.predict("reward", {"roles": np.array(roles, object), "contents": np.array(contents, object)})
        return out["score"]

    def close(self) -> None:
        self.backend.close()


def _seed(seed: int, i: int) -> int:
    """seed + i, wrapped into int32."""
    return (seed + i + _INT32) % (2 * _INT32) - _INT32


class BestOfN:
    """Reranks n sampled replies per chat request by a reward model (see the module docstring).

    Args:
        scorer: anything with `score(conversations) -> [N]` (a `RewardScorer`).
        n: candidates per request, 1..MAX_BEST_OF.
    """

    def __init__(self, scorer, n: int):
        if not isinstance(n, int) or not 1 <= n <= MAX_BEST_OF:
            raise ValueError(f"best-of must be an integer in 1..{MAX_BEST_OF}, got {n!r}")
        self.scorer, self.n = scorer, n
        # Threads that wait for the candidates and score them, off the backend's worker thread.
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="tfchat-best-of")

    def applies(self, request: GenRequest) -> bool:
        return request.is_chat and self.n > 1 and request.sampling.temperature > 0

    def submit(self, request: GenRequest, submit_one: Callable[[GenRequest], concurrent.futures.Future]
               ) -> concurrent.futures.Future:
        """Queues the candidates of a validated request with `submit_one`; `request.future` gets the best."""
        if not self.applies(request):
            return submit_one(request)
        s = request.sampling
        candidates = [GenRequest(messages=request.messages, sampling=s.replace(seed=_seed(s.seed, i)),
                                 logprobs=request.logprobs, knowledge=request.knowledge, tags=request.tags)
                      for i in range(self.n)]
        futures = [submit_one(c) for c in candidates]
        self._pool.submit(self._choose, request, futures)
        return request.future

    def stream(self, request: GenRequest, submit_one) -> Iterator[tuple[str, list]]:
        """`submit`, then the winner's text as one piece with its log-probabilities (as `Backend.stream_with_logprobs`)."""
        future = self.submit(request, submit_one)

        def pieces():
            completion = future.result()
            if future is not request.future and not request.future.done():
                request.future.set_result(completion)
            if completion.text:
                yield completion.text, completion.logprobs or []

        return pieces()

    def _choose(self, request: GenRequest, futures: list[concurrent.futures.Future]) -> None:
        try:
            completions: list[Completion] = [f.result() for f in futures]
            scores = self.scorer.score([[*request.messages, {"role": "assistant", "content": c.text}]
                                        for c in completions])
            best = int(np.argmax(scores))
            log.debug("best of %d: scores %s, candidate %d", self.n, np.round(scores, 3).tolist(), best)
            request.future.set_result(completions[best])
        except Exception as e:  # noqa: BLE001  (reported to the caller)
            if not request.future.done():
                request.future.set_exception(e)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if hasattr(self.scorer, "close"):
            self.scorer.close()
