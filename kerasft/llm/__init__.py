"""Causal language models: GGUF files in and out, supervised fine-tuning, evaluation.

``load_gguf`` reads a llama.cpp model into a KerasHub ``LlamaCausalLM`` with its
tokenizer and chat template; ``kerasft.finetune(causal_lm, data)`` runs supervised
fine-tuning (:func:`finetune_causal_lm`); ``evaluate_causal_lm`` measures held-out
perplexity and answer accuracy; ``export_causal_lm`` writes a merged ``.keras`` file, a
KerasHub preset, the adapters or a GGUF file for llama.cpp-based tools. Importing this
package imports KerasHub (and registers :class:`GGUFTokenizer`, which saved models need
to load again). See ``docs/generate.md``.
"""

from kerasft.llm.chat import apply_chat_template, render_chat
from kerasft.llm.evaluate import (
    GenerationReport,
    answer_accuracy,
    evaluate_causal_lm,
    generate,
    perplexity,
)
from kerasft.llm.export import CausalLMExport, export_causal_lm
from kerasft.llm.finetune import SFTPlan, finetune_causal_lm, plan_sft
from kerasft.llm.gguf import GGUFFile, export_gguf, load_gguf, read_gguf
from kerasft.llm.options import SFTConfig
from kerasft.llm.result import SFTResult
from kerasft.llm.tokenizer import GGUFTokenizer

__all__ = [
    "CausalLMExport",
    "GGUFFile",
    "GGUFTokenizer",
    "GenerationReport",
    "SFTConfig",
    "SFTPlan",
    "SFTResult",
    "answer_accuracy",
    "apply_chat_template",
    "evaluate_causal_lm",
    "export_causal_lm",
    "export_gguf",
    "finetune_causal_lm",
    "generate",
    "load_gguf",
    "perplexity",
    "plan_sft",
    "read_gguf",
    "render_chat",
]
