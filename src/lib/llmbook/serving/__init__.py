"""Serving: a paged-KV engine with continuous batching, speculative decoding, and an OpenAI-compatible server.

- :mod:`~llmbook.serving.kv_cache` blocks, reference counts, prefix hashes and the KV pool;
  :mod:`~llmbook.serving.paged_attention` attention through block tables;
  :mod:`~llmbook.serving.model_runner` a LLaMA-family forward pass over many sequences and the pool;
- :mod:`~llmbook.serving.scheduler` continuous batching, chunked prefill, preemption;
  :mod:`~llmbook.serving.engine` requests in, tokens out (:mod:`~llmbook.serving.params` their fields);
- :mod:`~llmbook.serving.speculative` draft-and-verify decoding that keeps the target's distribution;
- :mod:`~llmbook.serving.async_engine`, :mod:`~llmbook.serving.server`, :mod:`~llmbook.serving.metrics`
  the HTTP layer; :mod:`~llmbook.serving.load` a Poisson load generator, and
  :mod:`~llmbook.serving.baselines` Hugging Face ``generate`` served the naive ways, for comparison.

The ``serving`` extra adds the official ``openai`` client the server is tested and shown with.
"""

from llmbook.serving.engine import Engine, EngineConfig, Generation
from llmbook.serving.params import RequestOutput, SamplingParams

__all__ = ["Engine", "EngineConfig", "Generation", "RequestOutput", "SamplingParams"]
