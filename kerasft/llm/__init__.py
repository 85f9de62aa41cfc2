"""Causal language models: GGUF files in and out, supervised fine-tuning, evaluation.

``load_gguf`` reads a llama.cpp model into a KerasHub ``LlamaCausalLM`` with its
tokenizer and chat template; ``kerasft.finetune(causal_lm, data)`` runs supervised
fine-tuning (see :func:`finetune_causal_lm`); ``export_gguf`` writes the result back for
llama.cpp-based tools. See ``docs/generate.md``.
"""

from kerasft.llm.gguf import GGUFFile, export_gguf, load_gguf, read_gguf
from kerasft.llm.tokenizer import GGUFTokenizer

__all__ = ["GGUFFile", "GGUFTokenizer", "export_gguf", "load_gguf", "read_gguf"]
