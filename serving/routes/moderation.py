"""OpenAI's moderation endpoint, backed by tfchat's content filter, so OpenAI moderation clients work unchanged.

    POST /v1/moderations   {"input": str | [str], "model": optional}
    -> {"id": "modr-...", "model": NAME, "results": [{"flagged", "categories", "category_scores",
                                                      "category_applied_input_types"}]}

`flagged` is the classifier's `flagged` score at or above the server's
filter threshold (what the chat routes refuse); each category is its score
at or above the category's stored threshold. Every OpenAI category is
present: the ones the classifier has no label for (README, "Content filter")
are false with score 0. Labels of the classifier that OpenAI does not name
are included too. Errors are OpenAI-shaped (`serving.routes.openai`).

Example:

    curl -s localhost:8501/v1/moderations -d '{"input": "I will find you and hurt you"}'
"""

from __future__ import annotations

import os
import uuid

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from serving.errors import BadRequest
from serving.http import json_body
from serving.routes.openai import openai_error
from tfchat.inference.classifier import ContentFilter

OPENAI_CATEGORIES = (
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit", "illicit/violent",
    "self-harm", "self-harm/intent", "self-harm/instructions", "sexual", "sexual/minors", "violence",
    "violence/graphic",
)
MAX_INPUTS = 256
MAX_CHARS = 100_000


def inputs_of(body) -> list[str]:
    """The texts of a moderation request, or BadRequest saying what is wrong."""
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object with an 'input'")
    if "input" not in body:
        raise BadRequest("'input' is required: a string or a list of strings")
    texts = body["input"]
    texts = [texts] if isinstance(texts, str) else texts
    if not isinstance(texts, list) or not texts:
        raise BadRequest("'input' must be a non-empty string or a non-empty list of strings")
    if len(texts) > MAX_INPUTS:
        raise BadRequest(f"'input' has {len(texts)} items; at most {MAX_INPUTS} per request")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise BadRequest(f"input[{i}] must be a string, got {type(t).__name__} (images are not supported)")
        if not t.strip():
            raise BadRequest(f"input[{i}] is empty")
        if len(t) > MAX_CHARS:
            raise BadRequest(f"input[{i}] has {len(t):,} characters; at most {MAX_CHARS:,}")
    if body.get("model") is not None and not isinstance(body["model"], str):
        raise BadRequest("'model' must be a string")
    return texts


def moderate(content_filter: ContentFilter, texts: list[str]) -> list[dict]:
    """OpenAI moderation results for `texts`."""
    classifier = content_filter.classifier
    scores = classifier.scores(texts)
    names = [label for label in classifier.labels if label != content_filter.label]
    results = []
    for row in scores:
        by_label = dict(zip(classifier.labels, row.tolist()))
        category_scores = {c: 0.0 for c in OPENAI_CATEGORIES}
        category_scores.update({label: by_label[label] for label in names})
        categories = {c: False for c in OPENAI_CATEGORIES}
        categories.update({label: by_label[label] >= classifier.thresholds.get(label, 0.5) for label in names})
        results.append({
            "flagged": bool(by_label[content_filter.label] >= content_filter.threshold),
            "categories": categories,
            "category_scores": category_scores,
            "category_applied_input_types": {c: ["text"] for c in categories},
        })
    return results


def router(content_filter: ContentFilter, name: str | None = None) -> APIRouter:
    api = APIRouter()
    model = name or _name_of(content_filter.classifier.path)

    @api.post("/v1/moderations")
    async def moderations(request: Request):
        try:
            texts = inputs_of(await json_body(request))
        except BadRequest as e:
            return openai_error(400, str(e))
        results = await run_in_threadpool(moderate, content_filter, texts)
        return {"id": "modr-" + uuid.uuid4().hex[:24], "model": model, "results": results}

    return api



def _name_of(path: str) -> str:
    """`runs/moderation`, `runs/moderation/model`, `exports/moderation/1` -> "moderation"."""
    parts = [p for p in os.path.abspath(path).split(os.sep) if p]
    while len(parts) > 1 and (parts[-1] == "model" or parts[-1].isdigit()):
        parts.pop()
    return parts[-1] if parts else "moderation"
