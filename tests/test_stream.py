import pytest

from ernie_style.pretrain.examples import CorpusContext
from ernie_style.pretrain.registry import get_task
from ernie_style.pretrain.stream import TaskExampleStream


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
    from ernie_style.corpus.annotate import document_from_sentences

    docs = [document_from_sentences("a", [["Only one sentence."]])]
    task = get_task("sentence_distance")(tokenizer)
    with pytest.raises(ValueError, match="no document of the corpus yields an example"):
        next(TaskExampleStream(task, CorpusContext(docs, tokenizer)))


# ---- shards and elastic re-sharding ---------------------------------------------------------
@pytest.fixture(scope="module")
def wiki_corpus(wiki_documents, wiki_tokenizer):
    return CorpusContext(wiki_documents[:30], wiki_tokenizer)


def slice_examples(task, corpus, shard, num_shards, epoch):
    """Every example shard `shard` of `num_shards` visits in `epoch`, from the units directly."""
    stream = TaskExampleStream(task, corpus, seed=5, shard=shard, num_shards=num_shards)
    units = [(-1, epoch, shard, num_shards, 0)]
    units += [(int(d), epoch, 0, 1, 0) for d in stream.epoch_documents(epoch)]
    return [e for unit in units for e in stream.unit_examples(unit)]


def as_keys(examples):
    return sorted(repr((e.input_ids, e.labels)) for e in examples)


@pytest.mark.parametrize("num_shards", [2, 3])
def test_shards_split_an_epoch_without_overlap(wiki_corpus, wiki_tokenizer, num_shards):
    task = get_task("knowledge_masking")(wiki_tokenizer, max_seq_len=64)
    whole = slice_examples(task, wiki_corpus, 0, 1, epoch=0)
    parts = [slice_examples(task, wiki_corpus, i, num_shards, 0) for i in range(num_shards)]
    assert as_keys([e for part in parts for e in part]) == as_keys(whole)
    # The stream yields exactly its slice, in order, then moves to the next epoch.
    stream = TaskExampleStream(task, wiki_corpus, seed=5, shard=1, num_shards=num_shards)
    assert stream.take(len(parts[1])) == parts[1]
    assert stream.epoch == 1 and stream.cursor == -1


def test_more_shards_than_documents_is_a_clear_error(english_documents, tokenizer):
    task = get_task("capitalization")(tokenizer)
    with pytest.raises(ValueError, match=r"6 data shards .* only 5 training documents"):
        TaskExampleStream(task, CorpusContext(english_documents, tokenizer), shard=0, num_shards=6)


@pytest.mark.parametrize("new_shards", [1, 3, 4])
def test_reshard_loses_and_repeats_nothing_of_the_epoch(wiki_corpus, wiki_tokenizer, new_shards):
    from ernie_style.pretrain.stream import reshard

    task = get_task("sentence_distance")(wiki_tokenizer, max_seq_len=64)
    slices = {
        (shard, epoch): slice_examples(task, wiki_corpus, shard, 2, epoch)
        for shard in (0, 1)
        for epoch in (0, 1)
    }
    # Shard 0 finishes epoch 0 and goes 5 examples into epoch 1; shard 1 stops mid-document.
    old = [TaskExampleStream(task, wiki_corpus, seed=5, shard=s, num_shards=2) for s in (0, 1)]
    consumed = old[0].take(len(slices[0, 0]) + 5) + old[1].take(len(slices[1, 0]) // 2 + 1)
    assert old[0].epoch == 1 and old[1].epoch == 0 and old[1].offset > 0
    states = reshard([s.state_dict() for s in old], task, wiki_corpus, new_shards)
    new = [
        TaskExampleStream(task, wiki_corpus, seed=5, shard=s, num_shards=new_shards)
        for s in range(new_shards)
    ]
    for stream, state in zip(new, states, strict=True):
        stream.load_state_dict(state)
        assert stream.epoch == 2
        while stream.in_carry:  # finish what the old shards left
            consumed.append(next(stream))
    # What was consumed before and after: the old shards' epoch slices, each example once.
    expected = slices[0, 0] + slices[0, 1] + slices[1, 0]
    assert as_keys(consumed) == as_keys(expected)
    # A re-sharded state round-trips: saved mid-carry and resumed, it continues identically.
    if new_shards > 1:
        stream = TaskExampleStream(task, wiki_corpus, seed=5, shard=1, num_shards=new_shards)
        stream.load_state_dict(states[1])
        stream.take(3)
        twin = TaskExampleStream(task, wiki_corpus, seed=5, shard=1, num_shards=new_shards)
        twin.load_state_dict(stream.state_dict())
        assert twin.take(30) == stream.take(30)


def test_a_state_for_another_shard_layout_is_refused(wiki_corpus, wiki_tokenizer):
    task = get_task("capitalization")(wiki_tokenizer)
    state = TaskExampleStream(task, wiki_corpus, shard=1, num_shards=2).state_dict()
    with pytest.raises(ValueError, match="shard"):
        TaskExampleStream(task, wiki_corpus, shard=1, num_shards=3).load_state_dict(state)


def test_a_second_reshard_mid_carry_still_loses_and_repeats_nothing(wiki_corpus, wiki_tokenizer):
    from ernie_style.pretrain.stream import reshard

    task = get_task("capitalization")(wiki_tokenizer, max_seq_len=64)
    epoch0 = [e for s in range(2) for e in slice_examples(task, wiki_corpus, s, 2, 0)]
    old = [TaskExampleStream(task, wiki_corpus, seed=5, shard=s, num_shards=2) for s in (0, 1)]
    consumed = old[0].take(7) + old[1].take(11)
    middle = []
    for shard, state in enumerate(reshard([s.state_dict() for s in old], task, wiki_corpus, 3)):
        stream = TaskExampleStream(task, wiki_corpus, seed=5, shard=shard, num_shards=3)
        stream.load_state_dict(state)
        consumed += stream.take(5)  # part of the carry, then re-shard again
        assert stream.in_carry
        middle.append(stream.state_dict())
    final = reshard(middle, task, wiki_corpus, 2)
    for shard, state in enumerate(final):
        stream = TaskExampleStream(task, wiki_corpus, seed=5, shard=shard, num_shards=2)
        stream.load_state_dict(state)
        while stream.in_carry:
            consumed.append(next(stream))
    # Epoch 0's examples once each, and the 3-shard streams' epoch 1, which they had not
    # started when re-sharded again: carried over whole, finished once.
    epoch1 = [e for s in range(3) for e in slice_examples(task, wiki_corpus, s, 3, 1)]
    assert as_keys(consumed) == as_keys(epoch0 + epoch1)
    assert all(state["epoch"] == 2 for state in final)


def test_masking_is_dynamic_across_epochs_and_fixed_by_the_seed(wiki_corpus, wiki_tokenizer):
    task = get_task("knowledge_masking")(wiki_tokenizer, max_seq_len=64)
    epochs = [slice_examples(task, wiki_corpus, 0, 1, epoch) for epoch in (0, 1)]
    # Every epoch visits the same windows (the same count of examples of the same lengths)
    # but masks them anew; the same seed and epoch give the same masks.
    assert sorted(map(len, epochs[0])) == sorted(map(len, epochs[1]))
    same = set(as_keys(epochs[0])) & set(as_keys(epochs[1]))  # a short window may repeat
    assert len(same) < 0.05 * len(epochs[0])
    assert as_keys(slice_examples(task, wiki_corpus, 0, 1, 0)) == as_keys(epochs[0])
