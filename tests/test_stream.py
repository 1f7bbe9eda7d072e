import pytest

from ernie_style.examples import CorpusContext
from ernie_style.registry import get_task
from ernie_style.stream import TaskExampleStream


@pytest.fixture
def corpus(english_documents, tokenizer):
    return CorpusContext(english_documents, tokenizer)


def test_stream_cycles_through_epochs_deterministically(corpus, tokenizer):
    task = get_task("capitalization")(tokenizer, max_seq_len=32)
    per_epoch = sum(len(task.examples(corpus.tokenized(i), None, corpus)) for i in range(5))
    stream = TaskExampleStream(task, corpus, seed=3)
    first = stream.take(per_epoch)
    assert stream.epoch == 1 and stream.cursor == -1
    # One epoch is every example of every document exactly once, in a seeded order.
    everything = [e for i in range(5) for e in task.examples(corpus.tokenized(i), None, corpus)]
    assert sorted(map(str, first)) == sorted(map(str, everything))
    assert TaskExampleStream(task, corpus, seed=3).take(per_epoch) == first
    assert TaskExampleStream(task, corpus, seed=4).take(per_epoch) != first


@pytest.mark.parametrize("split", [1, 7, 23])
def test_resume_from_state_replays_exactly(corpus, tokenizer, split):
    task = get_task("capitalization")(tokenizer, max_seq_len=24)
    reference = TaskExampleStream(task, corpus, seed=0).take(split + 40)
    stream = TaskExampleStream(task, corpus, seed=0)
    assert stream.take(split) == reference[:split]
    resumed = TaskExampleStream(task, corpus, seed=0)
    resumed.load_state_dict(stream.state_dict())
    assert resumed.take(40) == reference[split:]


def test_state_for_another_corpus_is_refused(corpus, tokenizer, english_documents):
    task = get_task("capitalization")(tokenizer)
    state = TaskExampleStream(task, corpus).state_dict()
    smaller = TaskExampleStream(task, CorpusContext(english_documents[:2], tokenizer))
    with pytest.raises(ValueError, match="num_documents"):
        smaller.load_state_dict(state)


def test_corpus_without_usable_documents_is_a_clear_error(tokenizer):
    from ernie_style.annotate import document_from_sentences

    docs = [document_from_sentences("a", [["Only one sentence."]])]
    task = get_task("sentence_distance")(tokenizer)
    with pytest.raises(ValueError, match="no document of the corpus yields an example"):
        next(TaskExampleStream(task, CorpusContext(docs, tokenizer)))
