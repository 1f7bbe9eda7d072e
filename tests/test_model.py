import pytest
import torch
from transformers import ErnieModel

from ernie_style.pretrain.examples import collate
from ernie_style.pretrain.init_from import load_backbone
from ernie_style.pretrain.model import (
    MODEL_PRESETS,
    ErniePretrainingModel,
    build_backbone_config,
)
from ernie_style.pretrain.registry import get_task


def test_presets_have_the_documented_sizes():
    expected = {
        "micro": (32, 2),
        "tiny": (128, 2),
        "small": (256, 4),
        "base": (768, 12),
        "large": (1024, 24),
    }
    for name, (hidden, layers) in expected.items():
        config = build_backbone_config(name, vocab_size=1000)
        assert (config.hidden_size, config.num_hidden_layers) == (hidden, layers)
        assert config.intermediate_size == 4 * hidden
        assert config.use_task_id and config.type_vocab_size == 4
    assert set(MODEL_PRESETS) == set(expected)


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        build_backbone_config("huge", vocab_size=10)


def test_task_embeddings_change_the_encoding(tokenizer, english_documents):
    torch.manual_seed(0)
    config = build_backbone_config("tiny", vocab_size=len(tokenizer))
    task = get_task("capitalization")(tokenizer, max_seq_len=32)
    model = ErniePretrainingModel(ErnieModel(config), {task.name: task}).eval()
    from ernie_style.pretrain.examples import TokenizedDocument

    examples = task.examples(TokenizedDocument(english_documents[0], tokenizer), None, None)
    batch = collate(examples[:2], tokenizer.pad_token_id)
    hidden, _ = model.encode(batch)
    other = dict(batch, task_type_ids=batch["task_type_ids"] * 0 + 3)
    hidden_other, _ = model.encode(other)
    assert not torch.allclose(hidden, hidden_other)


def test_add_task_and_errors(tokenizer):
    config = build_backbone_config("tiny", vocab_size=len(tokenizer))
    model = ErniePretrainingModel(ErnieModel(config), {})
    task = get_task("capitalization")(tokenizer)
    model.add_task(task)
    assert list(model.heads) == ["capitalization"]
    with pytest.raises(ValueError, match="already has a head"):
        model.add_task(task)
    with pytest.raises(KeyError, match="has no head"):
        model({"task": "nope"})


def test_mlm_head_is_tied_and_saved_once(tokenizer):
    config = build_backbone_config("tiny", vocab_size=len(tokenizer))
    task = get_task("knowledge_masking")(tokenizer)
    model = ErniePretrainingModel(ErnieModel(config), {task.name: task})
    head = model.heads["knowledge_masking"]
    assert head.word_embeddings.weight is model.backbone.embeddings.word_embeddings.weight
    keys = [k for k in model.state_dict() if k.endswith("word_embeddings.weight")]
    assert keys == ["backbone.embeddings.word_embeddings.weight"]


def test_load_backbone_round_trip_and_errors(tmp_path, tokenizer):
    config = build_backbone_config("tiny", vocab_size=len(tokenizer))
    backbone = ErnieModel(config)
    backbone.save_pretrained(tmp_path / "enc")
    loaded = load_backbone(tmp_path / "enc")
    for (name, a), b in zip(
        backbone.state_dict().items(), loaded.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        load_backbone(tmp_path)
