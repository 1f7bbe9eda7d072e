"""WordPiece tokenizer training (tokenizers library) and loading of local HF tokenizers."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import AutoTokenizer, BertTokenizerFast, PreTrainedTokenizerFast

from ernie_style.untrusted import refuse_remote_code

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train_wordpiece(
    texts: Iterable[str],
    vocab_size: int,
    lowercase: bool = True,
    min_frequency: int = 2,
    initial_alphabet: Sequence[str] = (),
) -> BertTokenizerFast:
    """Train a BERT-style WordPiece tokenizer (uncased by default) on `texts`.

    BERT's normalizer puts spaces around every CJK character, so each Han character is a token
    of its own (BERT-Chinese's vocabulary) and WordPiece merges only Latin script and digits.
    `initial_alphabet` lists characters the vocabulary holds even when the corpus lacks them
    (e.g. ASCII letters and symbols in a Chinese corpus written with full-width forms)."""
    if vocab_size < len(SPECIAL_TOKENS) + 26:
        raise ValueError(f"vocab_size {vocab_size} is too small for a WordPiece vocabulary")
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
        initial_alphabet=list(initial_alphabet),
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    # tokenizer_object keeps token_type_ids in pair encodings after a save/load round trip.
    return BertTokenizerFast(
        tokenizer_object=tokenizer,
        do_lower_case=lowercase,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
    )


def load_tokenizer(
    path: str | Path,
    key: str = "tokenizer",
    trust_remote_code: bool = False,
    special_tokens: tuple[str, ...] = ("cls_token", "sep_token", "pad_token", "mask_token"),
) -> PreTrainedTokenizerFast:
    """Load a local Hugging Face tokenizer directory: never from a hub, and never running custom
    code a `tokenizer_config.json` names unless `trust_remote_code` (refused otherwise). The one
    loader of every command: errors name `key` (the config key or flag the path came from), and
    the tokenizer must be a fast (Rust) one with `special_tokens` set."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{key} directory {path} does not exist")
    refuse_remote_code(path, key, trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as error:
        raise ValueError(
            f"{key}: {path} is not a Hugging Face tokenizer directory: {error}"
        ) from error
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{key}: the tokenizer in {path} is not a fast (Rust) tokenizer")
    missing = [t for t in special_tokens if not getattr(tokenizer, t)]
    if missing:
        raise ValueError(f"{key}: the tokenizer in {path} lacks special tokens {missing}")
    return tokenizer
