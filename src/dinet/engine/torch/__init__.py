"""The PyTorch engine of pipeline sharding: layer ranges of a GGUF, run as stages.

`shard` is the layer-range model (`ShardModel`, `ShardSession`), built from the GGUF's
own blocks (`_block`) and weights (`_gguf_weights`, over the mapped file of
`_gguf_file`), with the file's tokenizer (`_gguf_tokenizer`). `_stage` adds what a
stage's place in a chain needs (tokenizing first, sampling last), and every torch call
of a stage runs on one thread (`_compute_thread`). `_generator` runs stages held in
one process through the shared generation loop: the reference a chain must reproduce.

Importing this package imports nothing, and `_compute_thread` and `_stage` load torch
only when a stage is built: a node without shards never loads torch.
"""
