"""Tokenizers of other encoder families, trained on the spot (no downloads): RoBERTa's
byte-level BPE and XLM-R's SentencePiece-style Unigram, each wrapped in its stock fast
tokenizer class with the family's special tokens (`<s>`, `</s>`, `<pad>`, `<mask>`, `<unk>`)."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast, RobertaTokenizerFast, XLMRobertaTokenizerFast

__all__ = ["FAMILY_SPECIAL_TOKENS", "train_byte_level_bpe", "train_unigram"]

#: The special tokens of RoBERTa, XLM-R and DeBERTa-v3 style vocabularies, ids 0..4.
FAMILY_SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def _with_roberta_template(tokenizer: Tokenizer) -> None:
    """`<s> A </s>` and `<s> A </s></s> B </s>` (RoBERTa's pair layout)."""
    bos, eos = tokenizer.token_to_id("<s>"), tokenizer.token_to_id("</s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", bos), ("</s>", eos)],
    )


def train_byte_level_bpe(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A cased RoBERTa-style byte-level BPE tokenizer (`Ġ` marks a word start)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=FAMILY_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    _with_roberta_template(tokenizer)
    return RobertaTokenizerFast(tokenizer_object=tokenizer, add_prefix_space=True)


def train_unigram(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A cased XLM-R-style Unigram tokenizer (SentencePiece's `▁` word-start marker)."""
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=FAMILY_SPECIAL_TOKENS,
        unk_token="<unk>",
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    _with_roberta_template(tokenizer)
    return XLMRobertaTokenizerFast(tokenizer_object=tokenizer)
