"""`model.init_from`: continued pretraining of an existing encoder, BERT-family checkpoints
included (their architecture, weights mapped one to one, the checkpoint's own MLM head)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForMaskedLM, BertConfig, BertForMaskedLM

from ernie_style.pretrain.examples import MAX_SEGMENTS
from ernie_style.pretrain.init_from import encoder_config, load_encoder_checkpoint
from ernie_style.testing import child_env
from ernie_style.testing.pretrain import pretrain_cmd, write_config
from ernie_style.untrusted import UnsafeFileError


def _bert(path: Path, vocab_size: int, **config) -> BertForMaskedLM:
    torch.manual_seed(5)
    sizes = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    model = BertForMaskedLM(BertConfig(vocab_size=vocab_size, **(sizes | config))).eval()
    model.save_pretrained(str(path))  # safetensors
    return model


def _bert_with_tokenizer(path: Path, corpus: Path):
    """A tiny BERT checkpoint at `path` with the prepared corpus's tokenizer beside it."""
    from ernie_style.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(corpus / "tokenizer")
    bert = _bert(path, len(tokenizer))
    for file in (corpus / "tokenizer").iterdir():
        shutil.copy(file, path / file.name)
    return bert, tokenizer


def _load(path: Path):
    return load_encoder_checkpoint(path)


def test_a_bert_checkpoint_maps_weight_for_weight_and_step_0_is_the_checkpoint(tmp_path):
    bert = _bert(tmp_path / "bert", 120)
    ernie, head = _load(tmp_path / "bert")
    assert ernie.config.hidden_size == 32 and ernie.config.use_task_id
    ours = ernie.state_dict()
    for name, tensor in bert.bert.state_dict().items():
        if name == "embeddings.token_type_embeddings.weight":
            assert torch.equal(ours[name][:2], tensor)  # BERT's two segments
            assert ours[name].shape[0] == MAX_SEGMENTS
            for extra in range(2, MAX_SEGMENTS):  # ERNIE's extra segments start as segment 0
                assert torch.equal(ours[name][extra], tensor[0])
        elif name != "embeddings.position_ids":
            assert torch.equal(ours[name], tensor), name
    # ERNIE's task embeddings start at zero: every task computes what BERT computes.
    assert not ours["embeddings.task_type_embeddings.weight"].any()
    predictions = bert.cls.predictions
    assert torch.equal(head["transform.dense.weight"], predictions.transform.dense.weight)
    assert torch.equal(head["bias"], predictions.bias)
    ernie.eval()
    ids = torch.randint(5, 120, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    segments = (torch.arange(9) >= 4).long().expand(2, -1)
    with torch.no_grad():
        theirs = bert.bert(input_ids=ids, attention_mask=mask, token_type_ids=segments)
        for task in (0, 3):  # any task id: the rows are all zero
            mine = ernie(
                input_ids=ids,
                attention_mask=mask,
                token_type_ids=segments,
                task_type_ids=torch.full_like(ids, task),
            )
            assert torch.equal(mine.last_hidden_state, theirs.last_hidden_state)


def test_an_ernie_checkpoint_with_task_embeddings_loads_as_it_is_with_its_mlm_head(tmp_path):
    from transformers import ErnieConfig, ErnieForMaskedLM

    torch.manual_seed(6)
    sizes = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    config = ErnieConfig(vocab_size=90, use_task_id=True, task_type_vocab_size=4, **sizes)
    saved = ErnieForMaskedLM(config).eval()
    saved.save_pretrained(str(tmp_path / "ernie"))
    ernie, head = _load(tmp_path / "ernie")
    for name, tensor in saved.ernie.state_dict().items():
        assert torch.equal(ernie.state_dict()[name], tensor), name
    predictions = saved.cls.predictions
    assert set(head) == {
        "transform.dense.weight",
        "transform.dense.bias",
        "transform.LayerNorm.weight",
        "transform.LayerNorm.bias",
        "bias",
    }
    assert torch.equal(head["transform.LayerNorm.weight"], predictions.transform.LayerNorm.weight)
    assert torch.equal(head["bias"], predictions.bias)


def test_encoder_config_is_the_loaded_architecture_from_config_json_alone(tmp_path):
    _bert(tmp_path / "bert", 120)
    expected = load_encoder_checkpoint(tmp_path / "bert")[0].config.to_dict()
    shutil.copytree(tmp_path / "bert", tmp_path / "config_only")
    for weights in (tmp_path / "config_only").glob("*.safetensors"):
        weights.unlink()  # the weights are never read
    assert encoder_config(tmp_path / "config_only").to_dict() == expected
    with pytest.raises(FileNotFoundError, match=r"--encoder: .*no config\.json"):
        encoder_config(tmp_path / "missing", key="--encoder")


def test_checkpoints_that_do_not_map_are_one_clear_error(tmp_path):
    _bert(tmp_path / "rel", 50, position_embedding_type="relative_key")
    with pytest.raises(ValueError, match="only absolute position embeddings"):
        _load(tmp_path / "rel")
    config = json.loads((tmp_path / "rel" / "config.json").read_text())
    (tmp_path / "rel" / "config.json").write_text(json.dumps(config | {"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="model_type 'gpt2'; supported: ernie"):
        _load(tmp_path / "rel")
    _bert(tmp_path / "odd", 50)
    weights = load_file(str(tmp_path / "odd" / "model.safetensors"))
    weights["bert.encoder.layer.0.output.dense.weight"] = torch.zeros(3, 3)
    from safetensors.torch import save_file

    save_file(weights, str(tmp_path / "odd" / "model.safetensors"))
    with pytest.raises(ValueError, match=r"wrong shape \['encoder.layer.0.output.dense.weight'\]"):
        _load(tmp_path / "odd")
    (tmp_path / "odd" / "model.safetensors").rename(tmp_path / "odd" / "pytorch_model.bin")
    with pytest.raises(UnsafeFileError, match="only pickle weights"):
        _load(tmp_path / "odd")


@pytest.mark.slow
def test_pretraining_continues_a_bert_checkpoint_with_its_own_tokenizer(small_corpus, tmp_path):

    encoder = tmp_path / "bert"
    bert, _ = _bert_with_tokenizer(encoder, small_corpus)
    config = write_config(
        tmp_path / "c.yaml",
        small_corpus,
        tmp_path / "run",
        model={"preset": "tiny", "init_from": str(encoder)},
        data__tokenizer=str(encoder),
        tasks={"knowledge_masking": {"budget": 2}, "capitalization": {"budget": 2}},
        precision="fp32",
    )
    result = subprocess.run(pretrain_cmd(config), capture_output=True, text=True, env=child_env())
    assert result.returncode == 0, result.stderr[-3000:]
    first = sorted((tmp_path / "run" / "checkpoints").iterdir())[0]
    backbone = json.loads((first / "backbone_config.json").read_text())
    assert backbone["hidden_size"] == 32  # the checkpoint's architecture, not the tiny preset
    release = tmp_path / "release"
    export = [*pretrain_cmd(config)[:3], "export", "--run", str(tmp_path / "run"), "--output"]
    subprocess.run([*export, str(release)], check=True, capture_output=True, env=child_env())
    stock = AutoModelForMaskedLM.from_pretrained(str(release))
    assert stock.config.hidden_size == 32
    # The knowledge-masking head started from BERT's MLM head and trained from there.
    trained = stock.cls.predictions.transform.dense.weight
    original = bert.cls.predictions.transform.dense.weight
    assert not torch.equal(trained, original)
    assert (trained - original).abs().max() < 0.1


@pytest.mark.slow
def test_a_continued_run_at_lr_near_zero_releases_the_checkpoint_bit_for_bit(
    small_corpus, tmp_path
):
    """Step 0 *is* the checkpoint, as trained and as exported: three steps of every kind of task
    at a vanishing LR give a release whose stock `transformers` outputs equal the original's."""
    from transformers import AutoModel, BertModel

    encoder = tmp_path / "bert"
    _, tokenizer = _bert_with_tokenizer(encoder, small_corpus)
    config = write_config(
        tmp_path / "c.yaml",
        small_corpus,
        tmp_path / "run",
        model={"preset": "tiny", "init_from": str(encoder), "dropout": 0.0},
        data__tokenizer=str(encoder),
        tasks={  # task ids 0, 1 and 3 (sentence reordering: segments 0-3)
            "knowledge_masking": {"budget": 1},
            "capitalization": {"budget": 1},
            "sentence_reordering": {"budget": 1},
        },
        optim={"lr": 1e-30},
        precision="fp32",
    )
    result = subprocess.run(pretrain_cmd(config), capture_output=True, text=True, env=child_env())
    assert result.returncode == 0, result.stderr[-3000:]
    release = tmp_path / "release"
    export = [*pretrain_cmd(config)[:3], "export", "--run", str(tmp_path / "run"), "--output"]
    subprocess.run([*export, str(release)], check=True, capture_output=True, env=child_env())
    original = BertModel.from_pretrained(str(encoder)).eval()
    released = AutoModel.from_pretrained(str(release)).eval()
    assert type(released).__name__ == "ErnieModel"
    batch = tokenizer(
        ["the city is in the north of the country.", "a river runs through it"],
        ["it was founded long ago.", "and it is long"],
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        expected = original(**batch).last_hidden_state
        assert torch.equal(released(**batch).last_hidden_state, expected)
