"""Which language a corpus is in, from the scripts of a sample of its text (`--language auto`).

Only the languages with an annotation pipeline are accepted: English (`en`, spaCy) and Chinese
(`zh`, a Chinese segmenter). Detection counts characters and words by script: mostly Han
characters with little kana or hangul is Chinese; mostly Latin words, with English function
words common among them, is English. Anything else is named (e.g. "Japanese", "Cyrillic
script", "a Latin-script language other than English") in one error that lists the options,
so the English pipeline never runs on text it cannot read.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

#: `--language` values; `auto` detects.
LANGUAGES = ("auto", "en", "zh")
#: Languages without letter case: capitalization prediction has nothing to learn on them.
CASELESS_LANGUAGES = frozenset({"zh"})
#: Characters of text read for detection (from the first documents).
SAMPLE_CHARS = 200_000
#: Least share of the units (`script_counts`) that must be Han for Chinese, Latin for English.
MAJORITY = 0.5
#: Least share of Latin words that are English function words for English (about 0.4 in
#: English prose, under 0.05 in French, German or Indonesian).
ENGLISH_FUNCTION_SHARE = 0.12
_FUNCTION_WORDS_TEXT = (
    "the of and to a in is was for on that with as by it he at from his are an be this which "
    "or were her she they their has had have not but its also been who after one first two "
    "into more other than when there all we you i"
)
_ENGLISH_FUNCTION_WORDS = frozenset(_FUNCTION_WORDS_TEXT.split(" "))
#: Scripts counted per character (one morpheme each) rather than per word.
_PER_CHARACTER = frozenset({"han", "kana", "hangul"})
_LATIN_WORD = re.compile(r"[A-Za-z]+")


def _script(char: str) -> str | None:
    """The script of a letter (None for digits, punctuation, spaces)."""
    code = ord(char)
    if 0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0x20000 <= code <= 0x2FA1F:
        return "han"
    if 0x3040 <= code <= 0x30FF:
        return "kana"
    if 0xAC00 <= code <= 0xD7AF or 0x1100 <= code <= 0x11FF:
        return "hangul"
    if not char.isalpha():
        return None
    name = unicodedata.name(char, "")
    return name.split(" ")[0].lower() if name else "other"


def script_counts(text: str) -> Counter[str]:
    """Units of `text` by script: each Han, kana or hangul character is one unit (those scripts
    write about a morpheme per character), each run of letters of another script one unit (a
    word). So "任务DP和NER任务" is 6 Han and 2 Latin units."""
    counts: Counter[str] = Counter()
    previous = None
    for char in text:
        script = _script(char)
        if script is not None and (script in _PER_CHARACTER or script != previous):
            counts[script] += 1
        previous = script
    return counts


def sample_text(texts: Iterable[str], limit: int = SAMPLE_CHARS) -> str:
    """The first `limit` characters of `texts`, joined by blank lines."""
    parts, size = [], 0
    for text in texts:
        parts.append(text[: limit - size])
        size += len(parts[-1])
        if size >= limit:
            break
    return "\n\n".join(parts)


def detect_language(text: str) -> tuple[str | None, str]:
    """(`en` | `zh` | None, a description of what was found) for a text sample; None means no
    installed pipeline covers it, and the description names the language or script."""
    counts = script_counts(text)
    units = sum(counts.values())
    if not units:
        return None, "no letters in any script"
    share = {script: n / units for script, n in counts.items()}
    if share.get("kana", 0) > 0.05:
        return None, f"Japanese ({share['kana']:.0%} of characters and words are kana)"
    if share.get("hangul", 0) > 0.2:
        return None, f"Korean ({share['hangul']:.0%} of characters and words are hangul)"
    if share.get("han", 0) >= MAJORITY:
        return "zh", f"Chinese ({share['han']:.0%} of characters and words are Han characters)"
    if share.get("latin", 0) >= MAJORITY:
        words = [w.lower() for w in _LATIN_WORD.findall(text)]
        function = sum(w in _ENGLISH_FUNCTION_WORDS for w in words) / max(len(words), 1)
        if function >= ENGLISH_FUNCTION_SHARE:
            return "en", f"English ({function:.0%} of words are English function words)"
        return None, (
            f"a Latin-script language other than English (only {function:.0%} of words are "
            "English function words)"
        )
    script, n = counts.most_common(1)[0]
    return None, f"{script.capitalize()} script ({n / units:.0%} of words)"


def resolve_language(language: str, texts: Iterable[str], source: str = "the input") -> str:
    """The pipeline language for `--language LANGUAGE`: itself unless `auto`, else detected from
    `texts`; text no pipeline covers is one error naming what was detected and the options."""
    if language not in LANGUAGES:
        raise ValueError(f"unknown --language {language!r} (choose from {LANGUAGES})")
    if language != "auto":
        return language
    detected, found = detect_language(sample_text(texts))
    if detected is None:
        raise ValueError(
            f"--language auto: {source} looks like {found}; the installed pipelines cover "
            "English (--language en) and Chinese (--language zh). For another language use "
            "--annotator none (Unicode word splitting: phrase and entity masking fall back to "
            "word masking), and give --language en or zh to force a pipeline"
        )
    return detected


def corpus_language(corpus: str | Path) -> str:
    """The language a prepared corpus was annotated as (`prepare_summary.json`); corpora made
    before languages existed, and paths that hold no prepared corpus yet, read as English."""
    path = Path(corpus)
    for folder in (path, path.parent):
        try:
            summary = json.loads((folder / "prepare_summary.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(summary, dict):
            return str(summary.get("language", "en"))
    return "en"
