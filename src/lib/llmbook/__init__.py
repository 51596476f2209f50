"""llmbook: the library behind the executable LLM engineering book."""

import logging

__version__ = "0.1.0"

# torchao (the compression chapter's reference) logs, when transformers imports it, that CUDA-only kernels
# failed to load and that its enums use a deprecated pytree registration: nothing for a reader to act on,
# and it would land in every chapter that loads a model. Set before anything imports torchao.
for _name in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_name).setLevel(logging.ERROR)
