"""`ernie-style prepare`: turn raw text into an annotated corpus for pretraining."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `prepare` subcommand."""
    from ernie_style.defaults import DEFAULT_SPACY_BATCH_SIZE as DEFAULT_BATCH_SIZE
    from ernie_style.defaults import DEFAULT_SPACY_MODEL as DEFAULT_MODEL

    parser = subparsers.add_parser(
        "prepare",
        help="read, annotate and save a corpus (documents/, summary, fingerprint, tokenizer)",
        description=(
            "Read text files, JSONL, folders of .txt files, saved datasets or hub datasets; "
            "annotate sentences, words, noun phrases and entities; save a datasets.Dataset "
            "to DIR/documents. Re-running with the same inputs and settings reuses DIR."
        ),
    )
    parser.add_argument(
        "--input",
        required=True,
        nargs="+",
        action="extend",
        metavar="PATH",
        help="input(s): text file (blank line between documents), .jsonl file, folder of .txt "
        "files, dataset folder from save_to_disk, or hub dataset name; repeatable",
    )
    parser.add_argument(
        "--output", required=True, metavar="DIR", help="output directory (created atomically)"
    )
    parser.add_argument(
        "--num-proc", type=int, default=1, metavar="N", help="annotation worker processes"
    )
    parser.add_argument(
        "--language",
        choices=("auto", "en", "zh"),
        default="auto",
        help="the text's language: auto detects it from the first documents' scripts (text no "
        "pipeline covers is an error naming it); en: spaCy; zh: a Chinese segmenter",
    )
    parser.add_argument(
        "--annotator",
        choices=("auto", "spacy", "lac", "jieba", "none"),
        default="auto",
        help="auto: the language's pipeline (en: spacy, zh: lac); spacy: sentences, words, noun "
        "chunks, entities (English); lac: Baidu LAC words, entities, noun phrases (Chinese); "
        "jieba: jieba words and tags, faster, fewer entities (Chinese); none: regex sentences "
        "and words, every Han character a word (any language: phrase/entity masking falls "
        "back to word masking)",
    )
    parser.add_argument(
        "--spacy-model", default=DEFAULT_MODEL, metavar="NAME", help="spaCy pipeline to load"
    )
    parser.add_argument("--text-field", default="text", help="text field of JSONL/datasets")
    parser.add_argument("--title-field", default="title", help="title field of JSONL/datasets")
    parser.add_argument("--id-field", default="id", help="id field of JSONL/datasets")
    parser.add_argument(
        "--split", default="train", help="split of hub datasets and saved DatasetDicts"
    )
    parser.add_argument("--hub-config", default=None, metavar="NAME", help="hub dataset config")
    parser.add_argument(
        "--max-documents",
        type=int,
        default=None,
        metavar="N",
        help="stop after N non-empty documents (for quick trials)",
    )
    add_tokenizer_arguments(parser)
    add_index_argument(parser)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        metavar="N",
        help="spaCy nlp.pipe batch size (speed only)",
    )
    parser.add_argument(
        "--shard",
        type=parse_shard,
        default=None,
        metavar="I/N",
        help="prepare only documents k with k %% N == I (e.g. one machine each), then join the "
        "N outputs with `ernie-style merge-shards`",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="do not show the progress bar on stderr"
    )
    parser.set_defaults(func=run)


def add_tokenizer_arguments(parser: argparse.ArgumentParser) -> None:
    """--train-tokenizer, --cased, --tokenizer-min-frequency (prepare and merge-shards)."""
    parser.add_argument(
        "--train-tokenizer",
        type=int,
        default=None,
        metavar="VOCAB_SIZE",
        help="also train a WordPiece tokenizer of this size on the kept text, saved to "
        "DIR/tokenizer",
    )
    parser.add_argument(
        "--cased", action="store_true", help="train a cased tokenizer (default: uncased)"
    )
    parser.add_argument(
        "--tokenizer-min-frequency",
        type=int,
        default=2,
        metavar="N",
        help="minimum pair frequency for WordPiece merges",
    )


def add_index_argument(parser: argparse.ArgumentParser) -> None:
    """--no-index (prepare and merge-shards)."""
    parser.add_argument(
        "--no-index",
        action="store_true",
        help="do not build the corpus indexes for its tokenizer (`ernie-style index` later)",
    )


def index_prepared(output: Path, skip: bool) -> None:
    """Build the indexes a run over the prepared corpus `output` with its own tokenizer reads
    (nothing without a tokenizer, or with `skip`), on the cores (at most 8)."""
    if skip or not (output / "tokenizer").is_dir():
        return
    from ernie_style.pretrain.indexes import build_indexes

    start = time.perf_counter()
    built = build_indexes(output)
    seconds = time.perf_counter() - start
    print(f"indexes: {len(built)} built for the corpus tokenizer in {seconds:.1f} s")


def parse_shard(text: str) -> tuple[int, int]:
    """`I/N` -> (I, N), with 0 <= I < N."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard expects I/N, e.g. 0/4; got {text!r}") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"--shard I/N needs 0 <= I < N, got {text!r}")
    return index, count


def run(args: argparse.Namespace) -> int:
    """Prepare the corpus (or reuse an up-to-date one) and print the summary."""
    from ernie_style.corpus.prepare import PrepareConfig, prepare_corpus
    from ernie_style.corpus.prepared import check_output_dir
    from ernie_style.corpus.readers import FieldNames
    from ernie_style.run_lock import locked_run

    # Warnings (bad input lines, --annotator none) go to stderr unless logging is configured.
    logging.basicConfig(level=logging.WARNING, format="ernie-style: %(levelname)s: %(message)s")
    config = PrepareConfig(
        annotator=args.annotator,
        language=args.language,
        spacy_model=args.spacy_model,
        fields=FieldNames(text=args.text_field, title=args.title_field, id=args.id_field),
        split=args.split,
        hub_config=args.hub_config,
        max_documents=args.max_documents,
        tokenizer_vocab_size=args.train_tokenizer,
        cased=args.cased,
        tokenizer_min_frequency=args.tokenizer_min_frequency,
        shard=args.shard,
        num_proc=args.num_proc,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    output = Path(args.output)
    check_output_dir(output)  # refuses a bad --output, creates its parent for the lock file
    with locked_run(output, "prepare", what="--output", path=prepare_lock_path(output)):
        prepare_corpus(args.input, output, config)
        index_prepared(output, args.no_index or args.shard is not None)
    return 0


def prepare_lock_path(output: Path) -> Path:
    """The lock of a prepare output DIR: `.DIR.prepare.lock` beside it, since DIR itself is
    built elsewhere and renamed into place (the lock must not end up inside the corpus)."""
    return output.parent / f".{output.name}.prepare.lock"
