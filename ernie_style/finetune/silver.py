"""Silver token labels from spaCy: coarse POS tags (UPOS) or BIO named entities.

A task with `labels: silver:pos` or `silver:ner` tags the texts of another task (its
`silver_source`): every text field value (ranking: query and candidates) becomes one example whose
words are spaCy's tokens (whitespace tokens dropped); a token-classification source keeps its own
words (spaCy runs on a `Doc` built from them). Identical inputs are tagged once. Results can be
cached under a directory (written to a temporary file, then renamed).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ernie_style.finetune.readers import RawExample

if TYPE_CHECKING:
    from spacy.language import Language

#: Universal POS tags (UD v2), spaCy's coarse `Token.pos_` values; SPACE tokens are dropped.
UPOS_TAGS = (
    "ADJ",
    "ADP",
    "ADV",
    "AUX",
    "CCONJ",
    "DET",
    "INTJ",
    "NOUN",
    "NUM",
    "PART",
    "PRON",
    "PROPN",
    "PUNCT",
    "SCONJ",
    "SYM",
    "VERB",
    "X",
)
#: Components each scheme does not need (skipped while tagging). The parser stays for both: the
#: attribute ruler reads its dependency labels (AUX vs VERB) and NER its sentence boundaries.
_UNUSED = {
    "silver:pos": ("ner", "lemmatizer"),
    "silver:ner": ("tagger", "attribute_ruler", "lemmatizer"),
}

Unit = str | list[str]


def silver_labels(scheme: str, nlp: Language) -> list[str]:
    """The label list of a scheme: UPOS tags, or `O` then B-/I- over the pipeline's entity types."""
    if scheme == "silver:pos":
        return list(UPOS_TAGS)
    if scheme == "silver:ner":
        if "ner" not in nlp.pipe_names:
            raise ValueError("silver:ner: the spaCy pipeline has no 'ner' component")
        types = sorted(nlp.get_pipe("ner").labels)
        return ["O"] + [f"{prefix}-{kind}" for kind in types for prefix in ("B", "I")]
    raise ValueError(f"unknown silver scheme {scheme!r}; use silver:pos or silver:ner")


def source_units(examples: Sequence[RawExample]) -> list[Unit]:
    """What to tag from a source task's examples: word lists (token tasks) or texts, each once,
    in order of first appearance; empty texts are left out."""
    seen: set[str] = set()
    units: list[Unit] = []
    for example in examples:
        items: list[Unit]
        if example.words is not None:
            items = [list(example.words)]
        else:
            items = [*example.texts, *(example.candidates or [])]
        for item in items:
            key = json.dumps(item, ensure_ascii=False)
            if key in seen or (isinstance(item, str) and not item.strip()):
                continue
            seen.add(key)
            units.append(item)
    return units


def tag_units(
    units: Sequence[Unit], scheme: str, nlp: Language, batch_size: int = 64
) -> list[tuple[list[str], list[str]]]:
    """`(words, tags)` per unit (units whose tokens are all whitespace are dropped)."""
    from spacy.tokens import Doc

    inputs = [u if isinstance(u, str) else Doc(nlp.vocab, words=list(u)) for u in units]
    disable = [name for name in _UNUSED[scheme] if name in nlp.pipe_names]
    tagged = []
    with nlp.select_pipes(disable=disable):
        for doc in nlp.pipe(inputs, batch_size=batch_size):
            tokens = [t for t in doc if not t.is_space]
            if not tokens:
                continue
            if scheme == "silver:pos":
                tags = [t.pos_ if t.pos_ in UPOS_TAGS else "X" for t in tokens]
            else:
                tags = [
                    f"{t.ent_iob_}-{t.ent_type_}" if t.ent_iob_ in ("B", "I") else "O"
                    for t in tokens
                ]
            tagged.append(([t.text for t in tokens], tags))
    return tagged


def silver_examples(
    source: Sequence[RawExample],
    scheme: str,
    nlp: Language,
    labels: Sequence[str],
    where: str,
    cache_dir: str | Path | None = None,
) -> list[RawExample]:
    """Silver-labelled token examples from a source task's examples (tag ids index `labels`).
    Locations read `WHERE#n`; with `cache_dir`, tagging results are reused across runs."""
    units = source_units(source)
    tagged = _cached(units, scheme, nlp, cache_dir)
    label2id = {label: i for i, label in enumerate(labels)}
    return [
        RawExample(f"{where}#{n}", words=words, label=[label2id[t] for t in tags])
        for n, (words, tags) in enumerate(tagged)
    ]


def _cached(
    units: Sequence[Unit], scheme: str, nlp: Language, cache_dir: str | Path | None
) -> list[tuple[list[str], list[str]]]:
    if cache_dir is None:
        return tag_units(units, scheme, nlp)
    meta = nlp.meta
    key = json.dumps(
        [meta.get("name"), meta.get("version"), scheme, list(units)], ensure_ascii=False
    )
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:20]
    path = Path(cache_dir) / f"{scheme.replace(':', '-')}-{digest}.json"
    if path.is_file():
        try:
            return [(w, t) for w, t in json.loads(path.read_text(encoding="utf-8"))]
        except (ValueError, TypeError):
            pass  # a damaged cache file is rebuilt below
    tagged = tag_units(units, scheme, nlp)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(tagged, out, ensure_ascii=False)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return tagged
