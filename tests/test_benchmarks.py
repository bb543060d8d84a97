"""The benchmarks run at tiny sizes and print the documented JSON."""

import json
import os

import pytest

from benchmarks import data as data_bench
from benchmarks import train as train_bench


def test_train_benchmark_tiny():
    record = train_bench.run("tiny", seq_len=16, batch_size=2, precision="fp32", steps=2, warmup=1)
    assert record["tokens_per_sec"] > 0 and 0 < record["mfu"]
    assert record["step_time_s"] > 0 and record["peak_matmul_tflops"] > 0


def test_train_benchmark_cli_prints_json(capsys):
    assert train_bench.main(["--preset", "tiny", "--seq-len", "16", "--batch-size", "2", "--precision", "bf16",
                             "--steps", "1", "--warmup", "1"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(lines) == 1
    assert {"tokens_per_sec", "mfu", "machine", "precision"} <= set(lines[0])
    assert lines[0]["precision"] == "bf16" and lines[0]["machine"]["cores"] >= 1


def test_data_benchmark_cli_prints_json(capsys, tmp_path):
    assert data_bench.main(["--seq-len", "32", "--batch-size", "4", "--vocab-size", "600", "--seconds", "0.5",
                            "--cache-dir", str(tmp_path), "--train-preset", "tiny"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    by_name = {r.get("measurement", r.get("name")): r for r in records}
    assert len(records) >= 2, records
    assert all("machine" in r for r in records)
    assert any(r.get("tokens_per_s", r.get("tokens_per_sec", 0)) > 0 for r in records), by_name
    parquet = by_name["parquet_pipeline"]
    assert parquet["tokens_per_s"] > 0 and parquet["ratio_to_pretrain_pipeline"] > 0
    assert by_name["training_consumes"]["tokens_per_s"] > 0 and parquet["headroom_vs_training"] > 0


def test_generate_benchmark_cli_prints_json(capsys):
    from benchmarks import generate as generate_bench

    assert generate_bench.main(["--preset", "tiny", "--new-tokens", "8", "--prompt-len", "4", "--batches", "1,2",
                                "--repeats", "1", "--path", "signature", "fast", "--chunk", "3",
                                "--reference", "transformers", "--rounds", "2", "--guidance", "3",
                                "--position-rounds", "3"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(lines) == 1
    record = lines[0]
    for path in ("signature", "fast"):
        r = record["paths"][path]
        assert r["batch_1"]["tokens_per_s"] > 0 and r["batch_2"]["tokens_per_s"] > 0
        assert r["time_to_first_token_ms"] > 0 and r["late_over_early"] > 0 and r["vs_reference"] > 0
        assert r["interleaved_tokens_per_s"] > 0  # the paired rounds behind vs_reference
        low, high = r["late_over_early_quartiles"]  # the spread of the rounds' ratios
        assert 0 < low <= r["late_over_early"] <= high
        assert r["guided"]["batch_1"]["tokens_per_s"] > 0 and r["guided"]["guided_over_plain"] > 0
    assert record["reference"]["tokens_per_s"] > 0 and "machine" in record


def test_generate_paths_give_the_same_tokens():
    """The benchmark times the same greedy ids on both paths (and the fast path's chunking cuts nothing)."""
    from benchmarks import generate as generate_bench
    from tfchat.config import GPTConfig
    from tfchat.model import build_gpt

    model = build_gpt(GPTConfig.from_preset("tiny"))
    prompts = generate_bench._prompts(2, 5, 100)
    plain = generate_bench.signature_generate(model)(prompts, 7)
    fast = generate_bench.fast_generate(model, chunk=4)(prompts, 7)
    assert plain.shape == fast.shape == (2, 7) and (plain == fast).all()
    # Guided (each prompt against itself without its first id): both paths agree as well.
    guided = generate_bench.signature_generate(model, guidance=20.0)(prompts, 7)
    assert (generate_bench.fast_generate(model, chunk=4, guidance=20.0)(prompts, 7) == guided).all()


def test_serve_benchmark_level_against_a_server(tmp_path):
    from benchmarks import serve as serve_bench
    from serving.app import ServerThread, create_app
    from serving.backend import Backend
    from tests.fixtures import tiny_export

    _, path = tiny_export(tmp_path)
    backend = Backend(path, max_batch=4, chunk=2)
    try:
        with ServerThread(create_app(backend)) as url:
            result = serve_bench.run(url, [1, 3], new_tokens=6)
    finally:
        backend.close()
    one, three = result["levels"]
    assert one["clients"] == 1 and three["clients"] == 3 and three["speedup_vs_1"] > 0
    assert three["tokens"] <= 18 and three["ttft_ms"]["p95"] > 0 and one["aggregate_tokens_per_s"] > 0


def test_tokenizers_benchmark_cli_prints_json(capsys, tmp_path):
    from benchmarks import tokenizers as tokenizers_bench

    zh = tmp_path / "zh.jsonl"
    sentences = ["漢語維基百科是一個自由的百科全書。", "北京市是中华人民共和国的首都。", "今天天气很好，我们去公园散步吧！"]
    zh.write_text("".join(json.dumps({"id": f"z{i}", "text": sentences[i % 3] * (1 + i % 5)}, ensure_ascii=False) + "\n"
                          for i in range(400)), encoding="utf-8")
    assert tokenizers_bench.main(["--en", "wikipedia-sample", "--zh", str(zh), "--vocab-size", "600",
                                  "--chars", "30000", "--heldout-chars", "3000", "--out", str(tmp_path / "out")]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    text = next(r for r in records if r["record"] == "text")
    assert text["xz_bits_per_char_zh"] > text["xz_bits_per_char_en"] > 0
    rows = {(r["tokenizer"], r["language"]): r for r in records if r["record"] == "tokenizer"}
    assert set(rows) == {(t, lang) for t in ("en", "zh", "mixed") for lang in ("en", "zh")}
    assert all(r["bytes_per_token"] > 0 and 0 <= r["byte_fallback_share"] <= 1 and "machine" in r for r in rows.values())
    # Each language's own tokenizer codes it more densely than the other language's.
    assert rows["zh", "zh"]["bytes_per_token"] > rows["en", "zh"]["bytes_per_token"]
    assert rows["en", "en"]["bytes_per_token"] > rows["zh", "en"]["bytes_per_token"]
    assert rows["zh", "zh"]["ratio_to_own"] == 1.0 and rows["mixed", "zh"]["ratio_to_own"] > 0
    assert os.path.isfile(tmp_path / "out" / "tokenizer-mixed" / "tokenizer.json")


def test_moderation_benchmark_cli_prints_json(capsys, moderation_classifier):
    pytest.importorskip("profanity_check")
    from benchmarks import moderation as moderation_bench

    assert moderation_bench.main(["--classifier", moderation_classifier, "--messages", "5", "--catch-rate", "0.8"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(lines) == 1
    record = lines[0]
    assert record["held_out"]["tfchat"]["roc_auc"] == 1.0 and record["held_out"]["examples"] == 30
    for part in ("held_out", "requests", "hatecheck"):
        assert 0 <= record[part]["alt_profanity_check"]["roc_auc"] <= 1
        lo, hi = record[part]["roc_auc_margin_ci95"]
        assert lo <= record[part]["roc_auc_margin"] <= hi
    assert {"recall", "false_positive_rate", "lookalike_false_positive_rate"} <= set(record["requests"]["tfchat"])
    at = record["requests"]["tfchat"]["at_catch_rate"]
    assert at["catch_rate"] == 0.8 and at["recall"] >= 0.8
    assert record["latency_ms"]["tfchat"]["calls"] == 5 and record["latency_ms"]["alt_profanity_check"]["p50"] > 0
    assert "machine" in record


def test_a_benchmark_given_a_missing_model_fails_with_one_error_line(tmp_path):
    """`python -m benchmarks.*` reports a known failure as one `error: ...` line and exit 1, not a traceback."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-m", "benchmarks.generate", "--model", str(tmp_path / "missing"),
                        "--path", "fast"], capture_output=True, text=True, timeout=300, cwd=root)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: model directory not found"), r.stderr[-2000:]


def test_serve_benchmark_fails_at_once_when_its_server_exits(tmp_path):
    """A server that cannot start (here: no export) ends the benchmark with its own error, not a 15-minute wait."""
    import subprocess
    import sys

    from tests.fixtures import free_ports

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-m", "benchmarks.serve", "--export", str(tmp_path / "missing"),
                        "--port", str(free_ports(1)[0])], capture_output=True, text=True, timeout=300, cwd=root)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the server exited with code 1: export not found"), r.stderr[-2000:]


def test_generate_benchmark_refuses_empty_batches_and_a_prompt_longer_than_the_context(capsys):
    from benchmarks import generate as generate_bench
    from tfchat.cli import UsageError

    for bad in ("0", "1,", "abc"):
        with pytest.raises(SystemExit) as info:
            generate_bench.main(["--batches", bad])
        assert info.value.code == 2 and "comma-separated integers > 0" in capsys.readouterr().err
    with pytest.raises(UsageError, match="--prompt-len 256: the model reads 256 tokens"):
        generate_bench.main(["--preset", "tiny", "--prompt-len", "256", "--path", "fast"])
