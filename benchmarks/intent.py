"""Intent classifier benchmark: tfchat's intent classifier against TF-IDF + a linear SVM, on CLINC150 test.

    python -m benchmarks.intent --intent runs/intent

Prints one JSON object with CLINC150's figures (Larson et al. 2019) on the
bundled `test` + `oos_test` (`intent-test`): `in_scope_accuracy` and
`oos_recall` of

* `tfchat`: the classifier (`training.classify --task intent`), with its
  stored out-of-scope threshold; a routing intent (`chit_chat`,
  `knowledge_question`) predicted for a test text counts as out of scope;
* `tfidf_linear_svm`: scikit-learn's `TfidfVectorizer` (word 1-2-grams,
  sublinear tf) + `LinearSVC`, trained on `train` + `oos_train` with `oos` as
  a 151st class, as in the paper's baseline;

and the margins (tfchat minus the baseline), measured in the same run.
"""

from __future__ import annotations

import sys

import numpy as np

from tfchat import cli


def baseline(train_texts, train_labels, test_texts) -> list[str]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline
    from sklearn.svm import LinearSVC

    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), LinearSVC(C=1.0))
    model.fit(train_texts, train_labels)
    return list(model.predict(test_texts))


def run(intent: str) -> dict:
    from tfchat.data import io, labelled
    from tfchat.eval.classification import evaluate_intents, out_of_scope_metrics

    path = io.resource_path("clinc150-data-full.json.xz")
    train = labelled.load_examples(f"clinc150:{path}@train,oos_train")
    test = labelled.load_examples("intent-test")
    truth = [e.labels[0] for e in test]
    predicted = baseline([e.text for e in train], [e.labels[0] for e in train], [e.text for e in test])
    ours = evaluate_intents(intent)
    reference = out_of_scope_metrics(predicted, truth, labelled.OUT_OF_SCOPE)
    reference["accuracy"] = float(np.mean(np.array(predicted, object) == np.array(truth, object)))
    return {"intent": intent, "test_examples": len(test), "tfchat": ours, "tfidf_linear_svm": reference,
            "in_scope_accuracy_margin": ours["in_scope_accuracy"] - reference["in_scope_accuracy"],
            "oos_recall_margin": ours["oos_recall"] - reference["oos_recall"]}


def main(argv=None) -> int:
    p = cli.parser("python -m benchmarks.intent", __doc__)
    p.add_argument("--intent", default="runs/intent", help="python -m training.classify --task intent run directory")
    args = p.parse_args(argv)

    def body() -> int:
        cli.setup(args.verbose)
        from benchmarks.common import emit

        emit(run(args.intent))
        return 0

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(cli.run(main))  # a known failure: one "error: ..." line
