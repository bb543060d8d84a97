"""Knowledge and intent evaluation: retrieval recall@k, grounded replies (knowledge F1, assistant-token loss
with and without retrieved knowledge), intent accuracy and out-of-scope recall.

What `python -m training.evaluate --model DIR --knowledge-eval --json` reports, all on bundled data tfchat
never trains on:

- `recall_at_5` (and `recall_at_1`, `recall_at_20`): the share of the
  retrieval question set (`tfchat.data.dialogues.grounded_questions`: 1,420
  user questions of Topical-Chat `valid_rare`, each labelled with the
  reading-set entity its annotation cites) for which a passage of that
  entity (title match) is among the index's top k. BM25 learns nothing from
  them: they are neither in the index nor used to tune it.
- On held-out grounded Topical-Chat (`topical-chat-grounded` over
  `valid_rare`, replies whose annotation cites an entity; the model is
  fine-tuned on `valid_freq`), for `examples` of them: knowledge = the top
  `passages` retrieved for the dialogue manager's query (the user's last
  message and the two messages before it);
  `loss_with_knowledge` / `loss_without_knowledge`: mean cross-entropy of
  the real reply's tokens (the assistant tokens) with / without that
  knowledge in the prompt (`loss_with_gold_knowledge`: with the lead section
  the real reply drew on, what a perfect retriever would give);
  `knowledge_f1` / `knowledge_f1_without`: unigram
  F1 (`tfchat.eval.metrics.knowledge_f1`) between the greedy reply generated
  with / without the knowledge and that knowledge; `retrieval_hit_rate`: the
  share whose retrieved passages include the entity the real reply drew on.
- `in_scope_accuracy`, `oos_recall`: the intent classifier on CLINC150
  `test` + `oos_test` (`tfchat.eval.classification.evaluate_intents`).
"""

from __future__ import annotations

import hashlib
from typing import Sequence

HELD_OUT = "topical-chat-valid-rare.json.xz"


def retrieval_recall(index, questions: Sequence[tuple[str, str]], ks: Sequence[int] = (1, 5, 20)) -> dict:
    """`recall_at_K` for each k: share of (question, title) pairs with a passage titled `title` in the top k."""
    if not questions:
        raise ValueError("no retrieval questions")
    hits = index.search_batch([q for q, _ in questions], max(ks))
    out = {"questions": len(questions)}
    for k in ks:
        found = [any(h.passage.title.lower() == title.lower() for h in row[:k]) for row, (_, title) in
                 zip(hits, questions)]
        out[f"recall_at_{k}"] = sum(found) / len(found)
    return out


def held_out_grounded(examples: int) -> list:
    """Up to `examples` grounded replies of held-out Topical-Chat (with gold knowledge), a hash-chosen sample."""
    from tfchat.data import dialogues, io

    path = io.resource_path(HELD_OUT)
    items = [c for c in dialogues.iter_conversations(f"topical-chat-grounded:{path}") if dialogues.knowledge_of(c)]
    items.sort(key=lambda c: hashlib.sha256(repr(list(c)).encode()).digest())
    return items[:examples]


def grounded_metrics(loaded, index, examples: int = 200, passages: int = 2, max_new_tokens: int = 32,
                     batch_size: int = 8) -> dict:
    """Loss and knowledge F1 of the model's replies with and without retrieved knowledge (module docstring)."""
    from tfchat.data import batches, dialogues
    from tfchat.dialogue.manager import retrieval_query
    from tfchat.eval import metrics
    from tfchat.eval.evaluate import _loss_totals, generate_replies
    from tfchat.retrieval.index import knowledge_text

    if loaded.tokenizer.special.knowledge is None:
        raise ValueError("this model's tokenizer has no <|knowledge|> token: train a new tokenizer to use knowledge")
    items = held_out_grounded(examples)
    queries = [retrieval_query(c[:-1]) for c in items]  # what the dialogue manager would search
    hits = index.search_batch(queries, passages)
    knowledge = [knowledge_text(h) for h in hits]
    gold = [c.knowledge.split(":", 1)[0].lower() for c in items]  # "Entity: lead ..." -> the entity
    out = {"examples": len(items), "passages": passages,
           "retrieval_hit_rate": sum(any(x.passage.title.lower() == g for x in h) for h, g in zip(hits, gold))
           / len(items)}
    seq_len = loaded.config.block_size
    for name, grounded in (("with_knowledge", [dialogues.Grounded(c, k) for c, k in zip(items, knowledge)]),
                           ("without_knowledge", [list(c) for c in items]),
                           ("with_gold_knowledge", items)):
        ids, masks, _ = batches.render_conversations(grounded, loaded.tokenizer, seq_len + 1)
        rows = batches.conversation_batches(ids, masks, seq_len, batch_size, loaded.tokenizer.pad_id, repeat=False,
                                            shuffle_buffer=0)
        totals = _loss_totals(loaded.model, loaded.tokenizer, rows, {"": "loss_mask"}, None)
        out[f"loss_{name}"] = totals["loss"]
    with_k = generate_replies(loaded, items, max_new_tokens, batch_size, knowledge=knowledge)
    without = generate_replies(loaded, items, max_new_tokens, batch_size)
    out["knowledge_f1"] = metrics.knowledge_f1([r["reply"] for r in with_k], knowledge)
    out["knowledge_f1_without"] = metrics.knowledge_f1([r["reply"] for r in without], knowledge)
    out["samples"] = [{**a, "reply_without_knowledge": b["reply"], "knowledge": k}
                      for a, b, k in zip(with_k, without, knowledge)]
    return out


def knowledge_evaluation(model, index: str, intent: str, *, examples: int = 200, passages: int = 2,
                         max_new_tokens: int = 32, batch_size: int = 8) -> dict:
    """Every figure of the module docstring: `model` (a directory or `LoadedModel`), a knowledge index run and an
    intent classifier run."""
    from tfchat.checkpoint.model_dir import LoadedModel, load_model
    from tfchat.data import dialogues
    from tfchat.eval.classification import evaluate_intents
    from tfchat.inference.classifier import TextClassifier
    from tfchat.retrieval.index import KnowledgeIndex

    kb = KnowledgeIndex.load(index)  # a bad index or classifier fails before the model is read
    classifier = TextClassifier.load(intent)
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    result = {"index": index, "index_passages": len(kb), "intent": intent}
    result.update(retrieval_recall(kb, dialogues.grounded_questions()))
    result.update(grounded_metrics(loaded, kb, examples, passages, max_new_tokens, batch_size))
    result.update(evaluate_intents(classifier))
    return result
