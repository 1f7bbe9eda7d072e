"""Encoder families other than ERNIE (issue 27): tiny random checkpoints of each family, built
on the spot, map exactly into the pretraining backbone; what the framework adds starts at zero
and the default task and segment rows stay there; training and export give a stock checkpoint
of the family whose outputs are the trained model's, bit for bit."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer

from ernie_style.pretrain.examples import MAX_SEGMENTS
from ernie_style.pretrain.families import (
    ARCHITECTURES,
    load_family_backbone,
    resolve_architecture,
    save_family_release,
)
from ernie_style.testing.families import make_family_checkpoint

TEXTS = ["Paris is the capital of France.", "The river flows north, then west."]


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def checkpoint(request, tmp_path_factory):
    """(architecture, a saved tiny random checkpoint of it)."""
    path = tmp_path_factory.mktemp(request.param) / "checkpoint"
    return request.param, make_family_checkpoint(request.param, path)


def _inputs(path):
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    encoded = tokenizer(TEXTS, padding=True, return_tensors="pt")
    return encoded["input_ids"], encoded["attention_mask"]


def _default_logits(backbone, ids, mask):
    zeros = torch.zeros_like(ids)
    hidden = backbone(ids, mask, token_type_ids=zeros, task_type_ids=zeros).last_hidden_state
    return hidden, backbone.masked_lm_logits(hidden)


def test_a_checkpoint_maps_exactly_and_the_additions_start_at_zero(checkpoint):
    architecture, path = checkpoint
    stock = AutoModelForMaskedLM.from_pretrained(str(path), local_files_only=True).eval()
    backbone = load_family_backbone(path).eval()
    assert type(backbone.mlm) is type(stock)
    ids, mask = _inputs(path)
    real = mask.bool()
    with torch.no_grad():
        want = stock(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        hidden, logits = _default_logits(backbone, ids, mask)
    # Bit for bit at every real token (padding positions may differ: RoBERTa numbers them).
    assert torch.equal(hidden[real], want.hidden_states[-1][real]), architecture
    assert torch.equal(logits[real], want.logits[real]), architecture
    assert not backbone.task_rows.weight.any() and not backbone.segment_rows.weight.any()
    if architecture != "deberta-v2":  # DeBERTa-v3's head multiplies by the embeddings itself
        decoder = backbone.mlm.get_output_embeddings().weight
        assert decoder.data_ptr() == backbone.get_input_embeddings().weight.data_ptr()  # tied


def test_training_keeps_default_rows_at_zero_and_exports_a_stock_checkpoint(checkpoint, tmp_path):
    architecture, path = checkpoint
    torch.manual_seed(0)
    backbone = load_family_backbone(path).train()
    optimizer = torch.optim.AdamW(backbone.parameters(), lr=1e-2, weight_decay=0.1)
    ids, mask = _inputs(path)
    for _ in range(3):  # every task and segment id in use, all of the model trained
        tasks = torch.randint(0, 7, ids.shape)
        segments = torch.randint(0, MAX_SEGMENTS, ids.shape)
        hidden = backbone(ids, mask, segments, tasks).last_hidden_state
        logits = backbone.masked_lm_logits(hidden[mask.bool()])
        loss = torch.nn.functional.cross_entropy(logits, ids[mask.bool()])
        loss = loss + backbone.pooler(hidden).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    native = backbone.native_segments
    assert not backbone.task_rows.weight[0].any()  # the default task's row: pinned
    assert not backbone.segment_rows.weight[: max(native, 1)].any()  # segments it has: pinned
    assert backbone.task_rows.weight[1:7].abs().sum(1).gt(0).all()  # the others trained
    assert backbone.segment_rows.weight[max(native, 1) :].abs().sum(1).gt(0).all()

    weights = {f"backbone.{key}": value for key, value in backbone.state_dict().items()}
    save_family_release(weights, backbone.config, tmp_path)
    release = AutoModelForMaskedLM.from_pretrained(str(tmp_path), local_files_only=True).eval()
    assert type(release) is type(backbone.mlm)
    backbone.eval()
    with torch.no_grad():
        want_hidden, want = _default_logits(backbone, ids, mask)
        got = release(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    real = mask.bool()
    assert torch.equal(got.hidden_states[-1][real], want_hidden[real]), architecture
    assert torch.equal(got.logits[real], want[real]), architecture


def test_auto_reads_the_checkpoint_and_names_an_unsupported_model_type(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(ValueError, match="model_type 'gpt2' is not supported"):
        resolve_architecture("auto", str(tmp_path))
    (tmp_path / "config.json").write_text('{"model_type": "deberta-v2"}')
    assert resolve_architecture("auto", str(tmp_path)) == "deberta-v2"
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    assert resolve_architecture("auto", str(tmp_path)) == "ernie"  # BERT maps into ERNIE
    assert resolve_architecture("bert", None) == "bert"  # unless asked for by name
    with pytest.raises(ValueError, match=r"model\.architecture auto needs model\.init_from"):
        resolve_architecture("auto", None)


def test_an_unknown_architecture_is_one_error_naming_the_choices():
    from ernie_style.config import from_dict
    from ernie_style.pretrain.config import PretrainConfig

    data = {"model": {"architecture": "gpt"}, "data": {"corpus": "c"}, "tasks": {}}
    with pytest.raises(ValueError, match=r"model\.architecture 'gpt' is not one of ernie, auto"):
        from_dict(PretrainConfig, data)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("preset", ["micro", "small"])
def test_every_family_builds_from_scratch_at_a_size_preset_and_trains(architecture, preset):
    from ernie_style.config import from_dict
    from ernie_style.pretrain.config import PretrainConfig
    from ernie_style.pretrain.model import MODEL_PRESETS
    from ernie_style.pretrain.state import _build_family_backbone
    from ernie_style.testing.families import (
        FAMILY_TOKENIZERS,
        sample_texts,
        train_family_tokenizer,
    )

    tokenizer = train_family_tokenizer(FAMILY_TOKENIZERS[architecture], sample_texts(4), 400)
    model = {"architecture": architecture, "preset": preset, "max_position_embeddings": 64}
    data = {"model": model, "data": {"corpus": "c"}, "tasks": {"knowledge_masking": {"budget": 1}}}
    backbone = _build_family_backbone(from_dict(PretrainConfig, data), tokenizer, architecture)
    config = backbone.config
    assert config.model_type == architecture and config.vocab_size == len(tokenizer)
    sizes = MODEL_PRESETS[preset]
    assert (config.hidden_size, config.num_hidden_layers) == (
        sizes["hidden_size"],
        sizes["num_hidden_layers"],
    )
    assert config.num_attention_heads == sizes["num_attention_heads"]
    ids = torch.tensor([tokenizer(TEXTS[0])["input_ids"]])
    hidden = backbone(ids, torch.ones_like(ids)).last_hidden_state
    loss = torch.nn.functional.cross_entropy(backbone.masked_lm_logits(hidden[0]), ids[0])
    loss.backward()
    assert backbone.get_input_embeddings().weight.grad.abs().sum() > 0
