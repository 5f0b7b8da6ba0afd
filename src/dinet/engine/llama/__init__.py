"""The llama.cpp engine: one worker process per loaded model, and the node's handle on it.

Two sides of a process boundary:

- `worker_client` (in the node): `WorkerEngine` spawns the worker in the sandbox,
  streams its frames, and survives its death;
- `worker_process` (the worker, `python -m dinet.engine.llama.worker_process`): loads
  the GGUF with llama-cpp-python and serves requests one at a time.

They speak `dinet.engine.worker_protocol`. The worker generates with the shared loop
(`dinet.engine._generate`) driving `_generator.Generator`, and re-scores claimed
completions for verification (`_score`, which also makes the BF16 scoring copy:
`python -m dinet.engine.llama._score`). Only the worker imports llama_cpp; importing
this package imports nothing.
"""
