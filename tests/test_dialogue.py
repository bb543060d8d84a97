"""Knowledge base (passages, BM25 index), dialogue rules and the dialogue manager's routing table."""

import json

import numpy as np
import pytest

from tfchat.dialogue.manager import DialogueManager, retrieval_query
from tfchat.dialogue.rules import Rules
from tfchat.retrieval.index import KnowledgeIndex, knowledge_text, terms
from tfchat.retrieval.passages import split_document

DOCS = {
    "Etna": "Etna\n\nMount Etna is an active stratovolcano on the east coast of Sicily, Italy. It is one of the "
            "tallest active volcanoes in Europe.\n\nEtna erupts often; its eruptions have shaped the island.",
    "Oslo": "Oslo\n\nOslo is the capital and most populous city of Norway. The city was founded in the year 1040.",
    "Penguin": "Penguin\n\nPenguins are flightless seabirds that live almost exclusively in the Southern "
               "Hemisphere. They are highly adapted for life in the water.",
    "长城": "长城\n\n长城是中国古代的军事防御工程，修筑历史可上溯到西周时期。长城东西绵延上万华里。",
}


def _passages():
    return [p for title, text in DOCS.items() for p in split_document(title, text, max_words=40, min_words=3)]


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("kb"))
    KnowledgeIndex.build(_passages(), ["fixture"]).save(out)
    return out


# ----------------------------------------------------------------------------- passages


def test_split_document_drops_the_title_line_and_respects_the_size():
    text = "Title\n\n" + " ".join(f"Sentence number {i} is here." for i in range(30)) + "\n\nA short tail paragraph here."
    passages = split_document("Title", text, max_words=20, min_words=3)
    assert all(len(p.text.split()) <= 20 for p in passages)
    assert not passages[0].text.startswith("Title")  # the heading line is the title, not content
    assert passages[0].text.startswith("Sentence number 0 is here.")
    assert all(p.text.endswith(".") for p in passages)  # cut at sentence ends
    joined = " ".join(p.text for p in passages)
    assert joined == " ".join(text.split()[1:])  # nothing lost, nothing repeated
    assert {p.title for p in passages} == {"Title"}


def test_split_document_edge_cases():
    # One sentence longer than a passage is cut at words; tiny leftovers below min_words are dropped.
    long = " ".join(["word"] * 25)
    assert [len(p.text.split()) for p in split_document("T", long, max_words=10, min_words=1)] == [10, 10, 5]
    assert split_document("T", "T\n\nToo short.", min_words=3) == []
    # Chinese has no spaces: characters count as words and sentences end at 。
    cjk = split_document("长城", DOCS["长城"], max_words=30, min_words=3)
    assert len(cjk) == 2 and cjk[0].text.endswith("。")
    with pytest.raises(ValueError, match="max_words"):
        split_document("T", "text", max_words=0)


def test_terms_stem_english_drop_stop_words_and_split_chinese_into_bigrams():
    assert terms("The volcanoes are erupting") == ["volcano", "erupt"]
    assert terms("长城很长") == ["长城", "城很", "很长"]


# ----------------------------------------------------------------------------- index


def test_index_search_save_and_load(index_dir):
    index = KnowledgeIndex.load(index_dir)
    assert len(index) == len(_passages()) and index.info["sources"] == ["fixture"]
    assert index.search("Which volcanoes erupt in Sicily?", k=1)[0].passage.title == "Etna"
    assert index.search("capital of Norway", k=2)[0].passage.title == "Oslo"
    assert index.search("长城的历史", k=1)[0].passage.title == "长城"
    hits = index.search("flightless seabirds", k=10)
    assert hits[0].passage.title == "Penguin" and all(h.score > 0 for h in hits)
    assert [h.rank for h in hits] == list(range(len(hits)))
    assert index.search("zzzz qqqq", k=3) == []  # no shared term: nothing, not random passages
    assert index.search("the of and", k=3) == []  # only stop words
    # The knowledge segment: best passage first, with its title.
    assert knowledge_text(hits[:1]).startswith("Penguin: Penguins are flightless")


def test_missing_and_corrupt_indexes_give_clear_errors(index_dir, tmp_path):
    import shutil

    with pytest.raises(FileNotFoundError, match=r"no knowledge index in .*python -m training.index --out"):
        KnowledgeIndex.load(str(tmp_path / "nothing"))
    broken = tmp_path / "broken"
    shutil.copytree(index_dir, broken)
    meta = broken / "index" / "index.json"
    meta.write_text("{not json")
    with pytest.raises(ValueError, match="corrupt knowledge index.*rebuild it: python -m training.index"):
        KnowledgeIndex.load(str(broken))
    meta.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="not a knowledge index"):
        KnowledgeIndex.load(str(broken))
    shutil.rmtree(broken)
    shutil.copytree(index_dir, broken)
    (broken / "index" / "passages.jsonl.gz").write_bytes(b"\x1f\x8b truncated")
    with pytest.raises(ValueError, match="corrupt knowledge index"):
        KnowledgeIndex.load(str(broken))
    shutil.rmtree(broken / "index" / "bm25")
    with pytest.raises(ValueError, match="corrupt knowledge index"):
        KnowledgeIndex.load(str(broken))


def test_index_cli_builds_from_text_files_and_searches(tmp_path, capsys):
    from training import index as index_cli

    docs = tmp_path / "docs"
    docs.mkdir()
    for title, text in DOCS.items():
        (docs / f"{title}.txt").write_text(text.split("\n\n", 1)[1], encoding="utf-8")
    out = str(tmp_path / "kb")
    assert index_cli.main(["--data", str(docs / "*.txt"), "--out", out, "--max-words", "40", "--min-words", "3"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["passages"] == len(KnowledgeIndex.load(out)) >= 4
    assert index_cli.main(["--out", out, "--search", "capital of Norway", "-k", "1"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["title"] == "Oslo"  # titled by the file name
    assert index_cli.main(["--out", str(tmp_path / "none"), "--search", "x"]) == 1
    assert "no knowledge index" in capsys.readouterr().err
    (tmp_path / "a-file").write_text("x")
    assert index_cli.main(["--data", str(docs / "*.txt"), "--out", str(tmp_path / "a-file")]) == 2
    assert "is a file; give a directory for the index" in capsys.readouterr().err


# ----------------------------------------------------------------------------- rules


def test_rules_fill_slots_and_reject_unknown_ones(tmp_path):
    import datetime

    clock = lambda: datetime.datetime(2026, 11, 26, 14, 5, tzinfo=datetime.timezone.utc)  # noqa: E731
    rules = Rules.from_dict({"templates": {"date": "Today is {weekday}, {date}.", "time": ["It is {time}."]}})
    rules = Rules(rules.templates, clock=clock)
    assert rules.reply("date", "what day is it") == "Today is Thursday, 2026-11-26."
    assert rules.reply("time", "time?") == "It is 14:05."
    assert rules.reply("book_flight", "fly me") is None
    with pytest.raises(ValueError, match=r"unknown slot \{weather\}"):
        Rules.from_dict({"templates": {"x": "It is {weather}."}})
    with pytest.raises(ValueError, match="unknown keys"):
        Rules.from_dict({"template": {}})
    bad = tmp_path / "rules.json"
    bad.write_text("{oops")
    with pytest.raises(ValueError, match="not a JSON rules file"):
        Rules.load(str(bad))
    bundled = Rules.load()  # the shipped file is valid and has the routing intents
    assert "knowledge_question" in bundled.retrieve and bundled.reply("greeting", "hi")


# ----------------------------------------------------------------------------- routing table


class FixedIntents:
    """An intent classifier double: the scores of each text are looked up (the manager's routing is under test)."""

    multi_label = False
    labels = ["greeting", "knowledge_question", "chit_chat", "oos"]

    def __init__(self, table):
        self.table = table

    def scores(self, texts):
        out = np.full([len(texts), len(self.labels)], 0.05, np.float32)
        for i, t in enumerate(texts):
            label, score = self.table[t]
            out[i, self.labels.index(label)] = score
        return out

    fallback = ("oos", 0.2)


def _user(text):
    return [{"role": "user", "content": text}]


def test_every_route_of_the_routing_table(index_dir, moderation_classifier):
    from tfchat.inference.classifier import ContentFilter

    intents = FixedIntents({"hello": ("greeting", 0.9), "hm hello": ("greeting", 0.3),
                            "is etna an active volcano?": ("knowledge_question", 0.8),
                            "i like music": ("chit_chat", 0.9), "tell me about xyzzy": ("oos", 0.9),
                            "you are a worthless idiot sam": ("chit_chat", 0.9),
                            "thanks for the help sam": ("chit_chat", 0.9), "how often?": ("knowledge_question", 0.9)})
    manager = DialogueManager(intents, KnowledgeIndex.load(index_dir), Rules.load(), k=2)
    # A follow-up is searched with the messages before it ("how often?" alone names nothing).
    follow_up = [*_user("tell me about sicily's volcano"), {"role": "assistant", "content": "It is Etna."},
                 *_user("how often?")]
    assert retrieval_query(follow_up) == "tell me about sicily's volcano It is Etna. how often?"
    assert manager.decide(follow_up).sources[0]["title"] == "Etna"
    d = manager.decide(_user("hello"))
    assert d.route == "template" and d.intent == "greeting" and d.reply in Rules.load().templates["greeting"]
    d = manager.decide([*_user("i like music"), {"role": "assistant", "content": "me too"}, *_user("is etna an active volcano?")])
    assert d.route == "retrieve" and d.sources[0]["title"] == "Etna" and len(d.sources) <= 2
    assert d.knowledge.startswith("Etna: ") and d.sources[0]["snippet"] in d.knowledge
    assert manager.decide(_user("i like music")).route == "generate"
    assert manager.decide(_user("hm hello")).route == "generate"  # a template needs min_confidence
    d = manager.decide(_user("tell me about xyzzy"))  # out of scope, but nothing retrieved
    assert (d.route, d.intent) == ("generate", "oos")
    # A content filter refuses flagged messages before anything else, and only those.
    manager.content_filter = ContentFilter.load(moderation_classifier)
    d = manager.decide(_user("you are a worthless idiot sam"))
    assert d.route == "refuse" and d.reply == Rules.load().refusal
    assert manager.decide(_user("thanks for the help sam")).route == "generate"
    assert set(d.to_json()) >= {"route", "intent", "sources"}
    # No classifier: every turn may retrieve; no index: nothing is retrieved.
    assert DialogueManager(None, KnowledgeIndex.load(index_dir)).decide(_user("capital of Norway")).route == "retrieve"
    assert DialogueManager(intents, None).decide(_user("is etna an active volcano?")).route == "generate"
    assert DialogueManager().decide([{"role": "system", "content": "be nice"}]).route == "generate"


def test_manager_load_errors(index_dir, moderation_classifier, tmp_path):
    with pytest.raises(FileNotFoundError, match="no knowledge index"):
        DialogueManager.load(index=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="multi-label classifier is no intent classifier"):
        DialogueManager.load(intent=moderation_classifier)
    assert DialogueManager.load(index=index_dir).index is not None


# ----------------------------------------------------------------------------- serving


@pytest.fixture(scope="module")
def served(tmp_path_factory, index_dir):
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.backend import Backend
    from tests.fixtures import tiny_export

    root = tmp_path_factory.mktemp("grounded-server")
    loaded, _ = tiny_export(root)
    backend = Backend(str(root / "tfchat"), batch_wait_ms=5)
    intents = FixedIntents({"hello": ("greeting", 0.9), "is etna an active volcano?": ("knowledge_question", 0.8),
                            "i like music": ("chit_chat", 0.9)})
    manager = DialogueManager(intents, KnowledgeIndex.load(index_dir), k=2)
    yield loaded, backend, TestClient(create_app(backend, dialogue=manager)), manager
    backend.close()


def _chunks(response):
    return [json.loads(line[6:]) for line in response.iter_lines()
            if line.startswith("data: ") and line != "data: [DONE]"]


def test_knowledge_prompt_signature_matches_the_chat_template(served):
    import tensorflow as tf

    from tfchat.text import chat_template

    loaded, backend, _, _ = served
    messages = _user("is etna an active volcano?")
    knowledge = knowledge_text(KnowledgeIndex.build(_passages()).search("etna volcano", 2))
    out = backend.signatures["knowledge_prompt"](
        roles=tf.constant([["user"], ["user"]]), contents=tf.constant([[messages[0]["content"]]] * 2),
        knowledge=tf.constant([knowledge, ""]), max_new_tokens=tf.constant([8, 8]))
    ids, n = out["token_ids"].numpy(), out["num_tokens"].numpy()
    context = loaded.config.block_size - 8
    assert list(ids[0, :n[0]]) == chat_template.prompt(messages, loaded.tokenizer, context, knowledge=knowledge)
    assert list(ids[1, :n[1]]) == chat_template.prompt(messages, loaded.tokenizer, context)
    assert loaded.tokenizer.special.knowledge in ids[0, :n[0]] and n[0] > n[1]


def test_openai_route_returns_route_and_sources(served):
    from serving.backend import GenRequest
    from tfchat.inference.sampling import SamplingParams

    _, backend, client, manager = served
    body = {"messages": _user("is etna an active volcano?"), "max_tokens": 6, "temperature": 0}
    out = client.post("/v1/chat/completions", json=body).json()
    assert out["tfchat"]["route"] == "retrieve" and out["tfchat"]["intent"] == "knowledge_question"
    assert out["sources"][0]["title"] == "Etna" and out["sources"] == out["tfchat"]["sources"]
    # The reply is the model's, with the retrieved passages in its prompt.
    knowledge = manager.decide(body["messages"]).knowledge
    grounded = backend.complete(GenRequest(messages=body["messages"], knowledge=knowledge,
                                           sampling=SamplingParams(max_new_tokens=6, temperature=0.0)))
    assert out["choices"][0]["message"]["content"] == grounded.text
    assert out["usage"]["prompt_tokens"] == grounded.prompt_tokens
    plain = backend.complete(GenRequest(messages=body["messages"], sampling=SamplingParams(max_new_tokens=6,
                                                                                           temperature=0.0)))
    assert plain.prompt_tokens < grounded.prompt_tokens
    # Streamed: the first chunk carries the sources (the web chat lists them under the reply).
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as s:
        chunks = _chunks(s)
    assert chunks[0]["sources"][0]["title"] == "Etna" and chunks[0]["tfchat"]["route"] == "retrieve"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == grounded.text
    # A template answers without the model; chit-chat goes to the model alone.
    out = client.post("/v1/chat/completions", json={**body, "messages": _user("hello")}).json()
    assert out["tfchat"]["route"] == "template" and out["usage"]["completion_tokens"] == 0
    assert out["choices"][0]["message"]["content"] in Rules.load().templates["greeting"]
    with client.stream("POST", "/v1/chat/completions", json={**body, "messages": _user("hello"), "stream": True}) as s:
        chunks = _chunks(s)
    assert chunks[0]["tfchat"]["route"] == "template" and chunks[-1]["choices"][0]["finish_reason"] == "stop"
    out = client.post("/v1/chat/completions", json={**body, "messages": _user("i like music")}).json()
    assert out["tfchat"]["route"] == "generate" and out["sources"] == []
    # A client's own knowledge replaces retrieval; a bad one is a 400.
    out = client.post("/v1/chat/completions", json={**body, "knowledge": knowledge}).json()
    assert out["choices"][0]["message"]["content"] == grounded.text and "tfchat" not in out
    r = client.post("/v1/chat/completions", json={**body, "knowledge": ["not", "a", "string"]})
    assert r.status_code == 400 and "knowledge" in r.json()["error"]["message"]


# ----------------------------------------------------------------------------- data and metrics


def test_grounded_topical_chat_reader(tmp_path):
    from tfchat.data import dialogues

    turns = [("agent_1", "Do you like volcanoes?", ["Personal Knowledge"]),
             ("agent_2", "Yes, Etna is an active volcano in Sicily.", ["FS1"]),
             ("agent_1", "Cool. And Oslo?", ["FS2"]), ("agent_2", "I have never been there.", ["Personal Knowledge"])]
    conv = {"c1": {"content": [{"agent": a, "message": m, "knowledge_source": k} for a, m, k in turns]}}
    (tmp_path / "topical-chat-demo.json").write_text(json.dumps(conv))
    sets = {"c1": {"agent_1": {}, "agent_2": {"FS1": {"entity": "Etna", "summarized_wiki_lead_section": 7},
                                              "FS2": {"entity": "Oslo", "summarized_wiki_lead_section": 8}}}}
    (tmp_path / "topical-chat-reading-sets-demo.json").write_text(json.dumps(sets))
    (tmp_path / "topical-chat-wiki.json").write_text(json.dumps({"summarized_wiki_lead_section": {
        "Etna is a volcano.": 7, "Oslo is a city.": 8}}))
    examples = list(dialogues.iter_conversations(f"topical-chat-grounded:{tmp_path / 'topical-chat-demo.json'}"))
    assert [len(e) for e in examples] == [2, 4]  # one per reply, ending on it
    assert examples[0].knowledge == "Etna: Etna is a volcano." and examples[1].knowledge == ""
    assert len({dialogues.split_of(e) for e in examples}) == 1  # one conversation, one split
    (tmp_path / "topical-chat-reading-sets-demo.json").unlink()
    with pytest.raises(FileNotFoundError, match="no reading sets beside it"):
        list(dialogues.iter_conversations(f"topical-chat-grounded:{tmp_path / 'topical-chat-demo.json'}"))


def test_grounded_knowledge_reaches_the_batch_never_the_loss(data_tokenizer):
    from tfchat.data import batches, dialogues

    tok = data_tokenizer
    conv = [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": "Hi"}]
    (ids, grounded_ids), (masks, grounded_masks), _ = batches.render_conversations(
        [conv, dialogues.Grounded(conv, "Etna is a volcano.")], tok, 128)
    k = grounded_ids.tolist().index(tok.special.knowledge)
    assert tok.special.knowledge not in ids.tolist()
    assert not grounded_masks[: k + len(tok.encode("Etna is a volcano.")) + 2].any()  # knowledge: never learned
    assert grounded_masks.sum() == masks.sum()  # the same reply tokens are learned


def test_knowledge_f1_and_out_of_scope_figures():
    from tfchat.eval.classification import out_of_scope_metrics, predict_with_fallback
    from tfchat.eval.metrics import knowledge_f1, unigram_f1

    assert unigram_f1("The Etna volcano!", "etna is a volcano") == pytest.approx(2 * (2 / 2) * (2 / 3) / (1 + 2 / 3))
    assert unigram_f1("", "etna") == 0.0 and knowledge_f1(["a b", "x"], ["a b", "y"]) == 0.5
    scores = np.array([[0.9, 0.05, 0.05], [0.4, 0.35, 0.25], [0.1, 0.1, 0.8]])
    labels = ["book_flight", "weather", "oos"]
    assert list(predict_with_fallback(scores, labels, "oos", 0.5)) == [0, 2, 2]
    m = out_of_scope_metrics(["book_flight", "oos", "oos"], ["book_flight", "weather", "oos"], "oos")
    assert (m["in_scope_accuracy"], m["oos_recall"]) == (0.5, 1.0)


def test_clinc150_parts_keep_their_split(tmp_path):
    from tfchat.data import labelled

    data = {"train": [["book a flight", "book_flight"]], "val": [["fly me to oslo", "book_flight"]],
            "oos_train": [["what is love", "oos"]], "test": [["weather in rome", "weather"]]}
    (tmp_path / "clinc.json").write_text(json.dumps(data))
    examples = labelled.load_examples(f"clinc150:{tmp_path / 'clinc.json'}")
    assert {e.source: e.split for e in examples} == {"clinc150-train": "train", "clinc150-val": "validation",
                                                     "clinc150-oos_train": "train", "clinc150-test": ""}
    benign = labelled.load_examples(f"benign:clinc150:{tmp_path / 'clinc.json'}")
    assert {e.split for e in benign} == {""} and not any(e.labels for e in benign)  # moderation's use: as before


def test_grounded_metrics_and_retrieval_recall_on_a_tiny_model(served, index_dir):
    from tfchat.eval.knowledge import grounded_metrics, retrieval_recall

    loaded = served[0]
    index = KnowledgeIndex.load(index_dir)
    recall = retrieval_recall(index, [("active volcano in Sicily", "Etna"), ("capital of Norway", "etna")], ks=(1, 5))
    assert recall == {"questions": 2, "recall_at_1": 0.5, "recall_at_5": 0.5}
    out = grounded_metrics(loaded, index, examples=3, passages=1, max_new_tokens=4, batch_size=3)
    assert out["examples"] == 3 and len(out["samples"]) == 3
    for key in ("loss_with_knowledge", "loss_without_knowledge", "loss_with_gold_knowledge"):
        assert 0 < out[key] < 20
    assert 0 <= out["knowledge_f1"] <= 1 and 0 <= out["knowledge_f1_without"] <= 1
    assert all(s["knowledge"] or not index.search(s["prompt"], 1) for s in out["samples"])


def test_retrieval_benchmark_prints_json(index_dir, capsys):
    from benchmarks import retrieval as retrieval_bench

    assert retrieval_bench.main(["--index", index_dir, "--questions", "5"]) == 0
    record = json.loads([line for line in capsys.readouterr().out.splitlines() if line.startswith("{")][0])
    assert record["passages"] == len(_passages()) and record["search_ms"]["calls"] == 5
    assert record["search_ms"]["p50"] > 0 and record["route_ms"]["calls"] == 5
    # Without --model nothing is added to routing; no timing relation between separately timed calls is asserted.
    assert record["added_ms"] == {k: record["route_ms"][k] for k in ("p50", "p95")} and "prefill_extra_ms" not in record
    assert record["within_budget"] == (record["added_ms"]["p95"] <= record["budget_ms"] == 50.0)
