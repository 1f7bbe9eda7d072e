"""Index builds before training (issue 28): `ernie-style index` (token tables + BM25 passage
index, in parts) on the sample corpus replicated 1x and 16x, in a fresh process each.

    .venv/bin/python bench/index_build.py [--work DIR] [--times 16]

Prints one line per target, `<figure>: <value> (target <op> <number>)`:
- peak RSS of the index build, 16x / 1x: <= 1.25 (the whole process tree, imports included;
  the build's own part above a bare `import` is printed too);
- wall time of the build, 16x / 1x: <= 20 (16x the data);
- 2 processes vs 1 on 16x: >= 1.7 (`--num-proc 2` vs `--num-proc 1`; one core each);
and, for reference, the in-training one-pass build of the same indexes before this change
(the token table and BM25 index built in RAM by the training process).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from _results import record
from _timing import precision_header

from ernie_style.testing.scale import measured_run, prepare_scaled

IMPORTS = "import ernie_style.pretrain.indexes, pretrain_tasks.ir_relevance, ernie_style.cli"
ONE_PASS = """
import sys
from pathlib import Path
from ernie_style.corpus.document import DocumentSequence
from ernie_style.corpus.index import TokenTable
from ernie_style.corpus.prepared import load_corpus
from ernie_style.tokenizer import load_tokenizer
from pretrain_tasks.ir_relevance import PassageTable
corpus, tokenizer, out = Path(sys.argv[1]), load_tokenizer(sys.argv[2]), Path(sys.argv[3])
docs = DocumentSequence(load_corpus(corpus))
(out / "tokens").mkdir(parents=True)
(out / "bm25").mkdir()
TokenTable.build(docs, tokenizer, out / "tokens")
PassageTable.build(docs, 3, out / "bm25", num_proc=int(sys.argv[4]))
"""


def line(figure: str, value: float, op: str, target: float) -> None:
    met = value <= target if op == "<=" else value >= target
    print(f"{figure}: {value:.2f} (target {op} {target})", flush=True)
    record(figure, round(value, 3), f"{op} {target}", met)


def build(corpus: Path, tokenizer: Path, procs: int, work: Path) -> tuple[float, float]:
    """(seconds, peak MB) of `ernie-style index` into a fresh index directory."""
    index_dir = work / f"indexes-{corpus.name}-{procs}"
    shutil.rmtree(index_dir, ignore_errors=True)
    command = [sys.executable, "-m", "ernie_style", "index", "--corpus", str(corpus)]
    command += ["--tokenizer", str(tokenizer), "--index-dir", str(index_dir)]
    command += ["--num-proc", str(procs)]
    result = measured_run(command, work / f"index-{corpus.name}-{procs}.log")
    shutil.rmtree(index_dir, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="keep corpora here (reused)")
    parser.add_argument("--times", type=int, default=16)
    args = parser.parse_args()
    print(precision_header()[1], flush=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="ernie-index-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    small, _ = prepare_scaled(work, 1)
    large, _ = prepare_scaled(work, args.times)
    tokenizer = work / "tokenizer"
    if not tokenizer.is_dir():
        from ernie_style.testing.scale import SAMPLE
        from ernie_style.tokenizer import train_wordpiece

        texts = [json.loads(row)["text"] for row in SAMPLE.read_text().splitlines()]
        train_wordpiece(texts, vocab_size=8000).save_pretrained(str(tokenizer))
    _, bare = measured_run([sys.executable, "-c", IMPORTS])
    print(f"bare import of the index command: {bare:.0f} MB", flush=True)
    runs = {}
    for corpus, procs in ((small, 1), (large, 1), (large, 2)):
        seconds, peak = build(corpus, tokenizer, procs, work)
        runs[corpus.name, procs] = (seconds, peak)
        print(
            f"index {corpus.name} --num-proc {procs}: {seconds:.1f} s, peak {peak:.0f} MB "
            f"({peak - bare:.0f} MB above the bare import)",
            flush=True,
        )
    (s1, m1), (s16, m16), (s16_2, _) = runs.values()
    times = args.times
    line(f"index build peak RSS, {times}x / 1x", m16 / m1, "<=", 1.25)
    line(f"index build wall time, {times}x / 1x", s16 / s1, "<=", 20)
    line(f"index build, 2 processes vs 1 ({times}x)", s16 / s16_2, ">=", 1.7)
    for corpus in (small, large):  # the stock alternative: the one-pass in-RAM build
        out = work / f"one-pass-{corpus.name}"
        shutil.rmtree(out, ignore_errors=True)
        command = [sys.executable, "-c", ONE_PASS, str(corpus), str(tokenizer), str(out), "2"]
        seconds, peak = measured_run(command)
        shutil.rmtree(out, ignore_errors=True)
        ours = runs[corpus.name, 2 if corpus is large else 1]
        print(
            f"one-pass in-RAM build (before) {corpus.name}: {seconds:.1f} s, peak {peak:.0f} MB "
            f"({peak - bare:.0f} MB above the bare import); parts build: {ours[0]:.1f} s, "
            f"peak {ours[1]:.0f} MB",
            flush=True,
        )
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
