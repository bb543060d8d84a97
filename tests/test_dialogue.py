"""Knowledge base (passages, BM25 index), dialogue rules and the dialogue manager's routing table."""

import json
import os

import numpy as np
import pytest

from tfchat.dialogue.manager import DialogueManager
from tfchat.dialogue.rules import Rules
from tfchat.retrieval.index import KnowledgeIndex, knowledge_text, terms
from tfchat.retrieval.passages import Passage, split_document

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

    def predict(self, texts):
        return [[self.labels[j]] for j in self.scores(texts).argmax(1)]


def _user(text):
    return [{"role": "user", "content": text}]


def test_every_route_of_the_routing_table(index_dir, moderation_classifier):
    from tfchat.inference.classifier import ContentFilter

    intents = FixedIntents({"hello": ("greeting", 0.9), "hm hello": ("greeting", 0.3),
                            "is etna an active volcano?": ("knowledge_question", 0.8),
                            "i like music": ("chit_chat", 0.9), "tell me about xyzzy": ("oos", 0.9),
                            "you are a worthless idiot sam": ("chit_chat", 0.9),
                            "thanks for the help sam": ("chit_chat", 0.9)})
    manager = DialogueManager(intents, KnowledgeIndex.load(index_dir), Rules.load(), k=2)
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
