"""llmbook: the library behind the executable LLM engineering book."""

import logging
import warnings

__version__ = "0.1.0"

# torchao (the compression chapter's reference) logs, when transformers imports it, that CUDA-only kernels
# failed to load and that its enums use a deprecated pytree registration: nothing for a reader to act on,
# and it would land in every chapter that loads a model. Set before anything imports torchao.
for _name in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_name).setLevel(logging.ERROR)

# transformers imports tqdm.auto, which in a kernel without ipywidgets warns once that it falls back to text
# bars: exactly what the book wants (llmbook.progress prints one final line), so not news. Set here, before
# any llmbook module (e.g. llmbook.serving.speculative) imports transformers.
warnings.filterwarnings("ignore", message="IProgress not found")
