"""Join the outputs of `prepare --shard I/N` (run on several machines) into one prepared corpus.

Each shard run reads the whole input stream and annotates the documents k with k % N == I, so
the N outputs together hold exactly the documents of one unsharded `prepare`, with the same ids
(duplicates are renamed before sharding). `merge_shards` checks that the shards come from the
same inputs and settings (their `unsharded_fingerprint`s agree) and that each of 0..N-1 appears
once, concatenates them in shard order, adds up the annotation counters (the reader's counters,
the same in every shard, are taken once), optionally trains the tokenizer on the merged text,
and installs the result atomically like `prepare`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import datasets

from ernie_style.corpus import prepared
from ernie_style.corpus.prepare import COUNTERS, PrepareConfig, reuse_prepared, write_prepared

#: Counters the readers keep over the whole input stream: equal in every shard, taken once.
READER_COUNTERS = ("documents_read", "non_utf8_documents", "duplicate_ids_renamed", "empty_files")
READER_SKIPS = ("empty", "invalid_json", "missing_text")


def read_shard(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(fingerprint record, summary) of one `prepare --shard` output; errors name the path."""
    record = prepared.read_fingerprint(path)
    if record is None:
        raise ValueError(f"{path} is not a complete `ernie-style prepare` output")
    if "shard" not in record.get("settings", {}) or "unsharded_fingerprint" not in record:
        raise ValueError(f"{path} was not prepared with --shard I/N")
    return record, prepared.load_summary(path)


def merged_summary(summaries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The summary one unsharded run would write: annotation counters summed, reader ones once."""
    first = summaries[0]
    summary: dict[str, Any] = {
        "documents_kept": sum(s["documents_kept"] for s in summaries),
        "annotator": first["annotator"],
        "inputs": first.get("inputs", []),
        "skipped": {
            reason: (
                first["skipped"][reason]
                if reason in READER_SKIPS
                else sum(s["skipped"][reason] for s in summaries)
            )
            for reason in first["skipped"]
        },
        "merged_shards": len(summaries),
    }
    for name in ("documents_read", *COUNTERS):
        summary[name] = first[name] if name in READER_COUNTERS else sum(s[name] for s in summaries)
    return summary


def merge_shards(
    inputs: Sequence[str | Path],
    output: str | Path,
    config: PrepareConfig | None = None,
    echo: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Merge shard outputs into `output` (reused when already merged from the same shards);
    `config` carries the tokenizer options. Returns the summary."""
    config = config or PrepareConfig()
    output = Path(output)
    shards = [(Path(p), *read_shard(Path(p))) for p in inputs]
    count = int(shards[0][1]["settings"]["shard"][1])
    base = shards[0][1]["unsharded_fingerprint"]
    seen: dict[int, Path] = {}
    for path, record, _ in shards:
        index, n = record["settings"]["shard"]
        if n != count:
            raise ValueError(f"{path} is shard {index}/{n}, but {shards[0][0]} is of {count}")
        if record["unsharded_fingerprint"] != base:
            raise ValueError(
                f"{path} was prepared from other inputs or settings than {shards[0][0]} "
                "(their unsharded fingerprints differ)"
            )
        if index in seen:
            raise ValueError(f"{path} and {seen[index]} are both shard {index}/{count}")
        seen[index] = path
    missing = sorted(set(range(count)) - set(seen))
    if missing:
        raise ValueError(f"shard(s) {missing} of {count} missing from the inputs")
    shards.sort(key=lambda item: item[1]["settings"]["shard"][0])
    settings = {k: v for k, v in shards[0][1]["settings"].items() if k != "shard"}
    settings["merged_shards"] = count
    settings["tokenizer"] = PrepareConfig(
        tokenizer_vocab_size=config.tokenizer_vocab_size,
        cased=config.cased,
        tokenizer_min_frequency=config.tokenizer_min_frequency,
    ).fingerprint_settings()["tokenizer"]
    fingerprint = hashlib.sha256(json.dumps([base, settings], sort_keys=True).encode()).hexdigest()
    reused = reuse_prepared(output, fingerprint, echo)
    if reused is not None:
        return reused

    def build(temp: Path) -> dict[str, Any]:
        parts = [prepared.load_corpus(path) for path, _, _ in shards]
        datasets.concatenate_datasets(parts).save_to_disk(str(temp / prepared.DOCUMENTS_DIR))
        return merged_summary([s for _, _, s in shards])

    record = {"format": prepared.FORMAT, "fingerprint": fingerprint, "settings": settings}
    return write_prepared(output, record, config, build, echo)
