"""GPT-2 import: a tiny random HF GPT-2 (torch, test-only) must give the same logits in tfchat."""

import json
import os
import pickle
import shutil
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tfchat import load_model  # noqa: E402
from tfchat.checkpoint.gpt2 import convert_hf_gpt2  # noqa: E402
from tfchat.convert import main  # noqa: E402
from tfchat.text.special_tokens import NAMES  # noqa: E402

MERGES = ["Ġ t", "h e", "Ġt he", "l l", "Ġ w", "o r", "e r", "Ġ a"]
N_BPE = 256 + len(MERGES) + 1  # bytes, merges, <|endoftext|>
N_NEW = len(NAMES) - 1  # a row per special token of the registry but <|endoftext|>
TEXTS = ["the other weather", "Hello, world!", " hello   world\n\nall ", "naïve café 🙂 日本"]
ATOL = 1e-4


def _bytes_to_unicode():
    # GPT-2's byte -> printable character table.
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _write_tokenizer(directory):
    symbols = [_bytes_to_unicode()[b] for b in range(256)] + [m.replace(" ", "") for m in MERGES] + ["<|endoftext|>"]
    with open(os.path.join(directory, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({s: i for i, s in enumerate(symbols)}, f, ensure_ascii=False)
    with open(os.path.join(directory, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(MERGES) + "\n")


def _hf_model():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=N_BPE,
        bos_token_id=N_BPE - 1, eos_token_id=N_BPE - 1,
    )
    model = transformers.GPT2LMHeadModel(cfg).eval()
    # HF init leaves biases at 0 and LayerNorm at 1: randomise everything so a
    # misplaced tensor cannot go unnoticed.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """(torch model, checkpoint folder with model.safetensors + tokenizer files)."""
    model = _hf_model()
    src = tmp_path_factory.mktemp("hf") / "gpt2"
    model.save_pretrained(src, safe_serialization=True)
    _write_tokenizer(src)
    return model, src


@pytest.fixture(scope="module")
def converted(hf, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "model"
    convert_hf_gpt2(str(hf[1]), str(out))
    return load_model(str(out))


def _copy_without_weights(src, dst):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    return dst


def _max_logit_diff(torch_model, loaded, seed=0):
    rng = np.random.default_rng(seed)
    worst = 0.0
    for length in (1, 7, 64):
        ids = rng.integers(0, N_BPE, size=(2, length))
        with torch.no_grad():
            want = torch_model(torch.tensor(ids)).logits.numpy()
        got = loaded.model(ids.astype("int32")).numpy()[..., :N_BPE]
        worst = max(worst, float(np.abs(got - want).max()))
    return worst


def test_safetensors_logits_match(hf, converted):
    diff = _max_logit_diff(hf[0], converted)
    print(f"max |logit diff| safetensors: {diff:.3g}")
    assert diff <= ATOL


def test_chat_marker_rows(hf, converted):
    tok, cfg = converted.tokenizer, converted.config
    assert (tok.eot_id, tok.system_id, tok.end_id) == (N_BPE - 1, N_BPE, N_BPE + 3)
    assert cfg.vocab_size == tok.vocab_size == N_BPE + N_NEW
    assert (cfg.block_size, cfg.n_layer, cfg.n_head, cfg.n_embd) == (64, 2, 2, 32)
    wte = converted.model.backbone.embeddings.token_embedding.numpy()
    np.testing.assert_array_equal(wte[:N_BPE], hf[0].transformer.wte.weight.detach().numpy())
    np.testing.assert_allclose(wte[N_BPE:], np.tile(wte[:N_BPE].mean(0), (N_NEW, 1)), atol=1e-6)
    assert converted.metadata["new_token_rows"]["ids"] == list(range(N_BPE, N_BPE + N_NEW))


def test_tokenizer_matches_hf(hf, converted):
    src = hf[1]
    ref = transformers.GPT2Tokenizer(str(src / "vocab.json"), str(src / "merges.txt"))
    for text in TEXTS:
        ids = converted.tokenizer.encode(text)
        assert ids == ref.encode(text), text
        assert converted.tokenizer.decode(ids) == text
    assert converted.tokenizer.encode(" the") == [256 + MERGES.index("Ġt he")]  # the merges are used


@pytest.mark.parametrize("legacy_format,prefix", [(False, True), (True, False)], ids=["zip", "legacy-h.0"])
def test_pytorch_bin(hf, tmp_path, legacy_format, prefix):
    """pytorch_model.bin, read without torch; both key spellings (transformer.h.0 / h.0)."""
    model, src = hf
    src = _copy_without_weights(src, tmp_path / "bin")
    state = model.state_dict() if prefix else model.transformer.state_dict()
    if not prefix:  # old checkpoints carry the causal-mask buffers: they must be skipped
        state["h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 64, 64, dtype=torch.uint8))
    torch.save(state, src / "pytorch_model.bin", _use_new_zipfile_serialization=not legacy_format)
    convert_hf_gpt2(str(src), str(tmp_path / "out"))
    diff = _max_logit_diff(model, load_model(str(tmp_path / "out")))
    print(f"max |logit diff| pytorch_model.bin ({'legacy' if legacy_format else 'zip'}): {diff:.3g}")
    assert diff <= ATOL


def test_bfloat16_safetensors(hf, tmp_path):
    from safetensors.torch import save_file

    model, src = hf
    src = _copy_without_weights(src, tmp_path / "bf16")
    state = {k: v.to(torch.bfloat16).contiguous() for k, v in model.transformer.state_dict().items()}
    save_file(state, str(src / "model.safetensors"))
    loaded = convert_hf_gpt2(str(src), str(tmp_path / "out"))
    got = loaded.model.backbone.blocks[1].mlp.c_fc.kernel.numpy()
    np.testing.assert_array_equal(got, state["h.1.mlp.c_fc.weight"].float().numpy())


def test_sharded_safetensors(hf, tmp_path):
    from safetensors.torch import save_file

    model, src = hf
    src = _copy_without_weights(src, tmp_path / "sharded")
    state = model.state_dict()
    del state["lm_head.weight"]  # shares memory with wte, which safetensors refuses
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in shards.items():
        save_file({k: state[k].contiguous() for k in keys}, str(src / shard))
    index = {"weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    loaded = convert_hf_gpt2(str(src), str(tmp_path / "out"))
    assert _max_logit_diff(model, loaded) <= ATOL


def test_padded_vocab(tmp_path):
    """A checkpoint with more rows than BPE ids (e.g. 50304): markers take the first spare rows."""
    torch.manual_seed(1)
    rows = N_BPE + N_NEW + 6
    model = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=16, vocab_size=rows)
    ).eval()
    src = tmp_path / "padded"
    model.save_pretrained(src)
    _write_tokenizer(src)
    loaded = convert_hf_gpt2(str(src), str(tmp_path / "out"))
    assert loaded.config.vocab_size == rows and loaded.tokenizer.vocab_size == N_BPE + N_NEW
    wte = loaded.model.backbone.embeddings.token_embedding.numpy()
    want = model.transformer.wte.weight.detach().numpy()
    np.testing.assert_array_equal(wte[:N_BPE], want[:N_BPE])
    np.testing.assert_allclose(wte[N_BPE:N_BPE + N_NEW], np.tile(want[:N_BPE].mean(0), (N_NEW, 1)), atol=1e-6)
    np.testing.assert_array_equal(wte[N_BPE + N_NEW:], want[N_BPE + N_NEW:])


def test_cli_and_tokenizer_dir(hf, tmp_path, capsys):
    src = tmp_path / "no_tok"
    shutil.copytree(hf[1], src, ignore=shutil.ignore_patterns("vocab.json", "merges.txt"))
    out = tmp_path / "out"
    assert main(["--from-hf", str(src), "--out", str(out)]) == 1
    assert "vocab.json" in capsys.readouterr().err and not out.exists()
    assert main(["--from-hf", str(src), "--out", str(out), "--tokenizer", str(hf[1])]) == 0
    assert load_model(str(out)).config.vocab_size == N_BPE + N_NEW
    # An existing model directory is replaced only on request.
    assert main(["--from-hf", str(src), "--out", str(out), "--tokenizer", str(hf[1])]) == 1
    assert main(["--from-hf", str(src), "--out", str(out), "--tokenizer", str(hf[1]), "--overwrite"]) == 0


def _edit_config(src, **changes):
    path = src / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


def _bad_checkpoints():
    def bert(src):
        _edit_config(src, model_type="bert")

    def inverse_layer_idx(src):
        _edit_config(src, scale_attn_by_inverse_layer_idx=True)

    def exact_gelu(src):
        _edit_config(src, activation_function="gelu")

    def wrong_width(src):
        _edit_config(src, n_embd=64)

    def no_config(src):
        os.remove(src / "config.json")

    def no_weights(src):
        os.remove(src / "model.safetensors")

    def truncated(src):
        data = (src / "model.safetensors").read_bytes()
        (src / "model.safetensors").write_bytes(data[: len(data) // 2])

    def malicious_pickle(src):
        class Evil:
            def __reduce__(self):
                return (os.system, ("echo pwned",))

        os.remove(src / "model.safetensors")
        with zipfile.ZipFile(src / "pytorch_model.bin", "w") as z:
            z.writestr("archive/data.pkl", pickle.dumps({"wte.weight": Evil()}, protocol=2))

    def untied_head(src):
        os.remove(src / "model.safetensors")
        state = {k: v.clone() for k, v in _hf_model().state_dict().items()}
        state["lm_head.weight"] += 1
        torch.save(state, src / "pytorch_model.bin")

    def garbage_bin(src):
        os.remove(src / "model.safetensors")
        (src / "pytorch_model.bin").write_bytes(b"not a checkpoint at all")

    return [
        (bert, ValueError, "model_type 'bert'", "config.json"),
        (inverse_layer_idx, ValueError, "scale_attn_by_inverse_layer_idx", "config.json"),
        (exact_gelu, ValueError, "activation_function", "config.json"),
        (wrong_width, ValueError, "shape", "model.safetensors"),
        (no_config, FileNotFoundError, "missing", "config.json"),
        (no_weights, FileNotFoundError, "model.safetensors", "gpt2"),
        (truncated, ValueError, "safetensors", "model.safetensors"),
        (malicious_pickle, ValueError, "refusing to load", "pytorch_model.bin"),
        (untied_head, ValueError, "lm_head.weight differs", "pytorch_model.bin"),
        (garbage_bin, ValueError, "not a PyTorch checkpoint", "pytorch_model.bin"),
    ]


@pytest.mark.parametrize("damage,error,message,names", _bad_checkpoints(), ids=lambda x: getattr(x, "__name__", None))
def test_bad_checkpoint_is_a_clear_error(hf, tmp_path, damage, error, message, names):
    src = tmp_path / "gpt2"
    shutil.copytree(hf[1], src)
    damage(src)
    out = tmp_path / "out"
    with pytest.raises(error) as info:
        convert_hf_gpt2(str(src), str(out))
    assert message in str(info.value) and names in str(info.value)
    assert not out.exists()
    assert sorted(os.listdir(tmp_path)) == ["gpt2"]  # no temporary folder left either


def test_refuses_to_replace_a_foreign_directory(hf, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a tfchat model directory"):
        convert_hf_gpt2(str(hf[1]), str(out), overwrite=True)
    assert (out / "notes.txt").read_text() == "keep me"
