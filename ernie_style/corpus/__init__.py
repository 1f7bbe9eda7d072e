"""Corpus preparation: read raw text (`readers`), annotate it (`annotate`, `spacy_annotator`)
into `Document`s (`document`), write a prepared corpus (`prepare`, `merge_shards`; on-disk layout
in `prepared`) and the indexes built from it once and memory-mapped (`index`)."""
