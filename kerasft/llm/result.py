"""What supervised fine-tuning returns: the model, the record of the run, evaluation and export."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

__all__ = ["SFTResult"]


@dataclasses.dataclass
class SFTResult:
    """The fine-tuned causal LM and what happened on the way.

    Attributes:
        model: the fine-tuned KerasHub causal LM (LoRA/DoRA adapters in place, with the
            best weights on the validation loss when there was validation data).
        plan: the :class:`~kerasft.llm.finetune.SFTPlan` that ran.
        history: Keras history over the epochs (``loss``, ``val_loss``).
        seconds: wall seconds of ``fit`` (graph building included).
        epochs_run: epochs trained by this call (a resumed call counts its own).
        tokens_per_second: training tokens (not padding) per second of ``fit``.
        best_val_loss: the best validation loss, or `None` without validation data.
        nan: where the loss became non-finite, if it did (:class:`kerasft.engine.result.NaNEvent`).
        adapters: the :class:`kerasft.peft.LoraResult` of the adapters, or `None` (``"full"``).
        config: the :class:`~kerasft.llm.options.SFTConfig` of the call.
    """

    model: Any
    plan: Any
    history: dict[str, list[float]]
    seconds: float
    epochs_run: int
    tokens_per_second: float
    best_val_loss: float | None
    nan: Any
    adapters: Any
    config: Any

    def evaluate(
        self,
        data: Any,
        *,
        choices: Sequence[str] | None = None,
        generate_answers: bool = True,
        max_new_tokens: int = 8,
        batch_size: int = 8,
    ) -> Any:
        """Held-out loss and perplexity, and answer accuracy by generating and parsing answers.

        The data are rendered as for training (the run's chat template and
        ``sequence_length``); see :func:`kerasft.llm.evaluate_causal_lm`.

        Args:
            data: pairs, conversations or text.
            choices: the possible answers, to parse generated text (``["fresh", "rotten"]``).
                Defaults to `None` (the answer must equal the completion).
            generate_answers: generate answers for pairs. Defaults to `True`.
            max_new_tokens: most tokens generated per answer. Defaults to `8`.
            batch_size: rows (prompts) per batch. Defaults to `8`.

        Returns:
            A :class:`kerasft.llm.evaluate.GenerationReport`.
        """
        from kerasft.llm.evaluate import evaluate_causal_lm

        return evaluate_causal_lm(
            self.model,
            data,
            choices=choices,
            generate_answers=generate_answers,
            chat_template=self.config.chat_template,
            sequence_length=self.plan.sequence_length,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
        )

    def export(
        self,
        path: str | os.PathLike,
        *,
        format: str = "auto",
        dtype: str = "f16",
        overwrite: bool = False,
        verify: Any = None,
    ) -> Any:
        """Write the fine-tuned model: merged ``.keras``, KerasHub preset, adapters or GGUF.

        See :func:`kerasft.llm.export_causal_lm`.

        Returns:
            A :class:`kerasft.llm.export.CausalLMExport` (the path, and the logit check).
        """
        from kerasft.llm.export import export_causal_lm

        return export_causal_lm(
            self.model, path, format=format, dtype=dtype, overwrite=overwrite, verify=verify
        )

    def summary(self) -> str:
        """One line: epochs, seconds, tokens per second, the final and best losses."""
        loss = self.history.get("loss", [float("nan")])
        line = (
            f"{self.config.recipe}: {self.epochs_run} epochs in {self.seconds:.1f} s, "
            f"{self.tokens_per_second:.0f} tokens/s, final loss {loss[-1]:.4f}"
        )
        if self.best_val_loss is not None:
            line += f", best val_loss {self.best_val_loss:.4f}"
        return line
