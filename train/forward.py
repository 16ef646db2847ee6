"""Forward passes of the PEFT model during training: log-probs of the labelled tokens only.

The decoder runs on the whole batch, but the LM head only on positions whose next token is labelled (the
replies), through :func:`train.losses.head_logprobs`. Prompt and padding positions never reach the head.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from train.batching import Batch
from train.encode import IGNORE
from train.losses import head_logprobs


def decoder_and_head(model: Any) -> tuple[torch.nn.Module, torch.nn.Linear]:
    """The transformer stack and the LM head of a PEFT-wrapped causal LM."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


def hidden_and_targets(model: Any, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Final hidden states at labelled positions [N, H], their target ids [N] and row indices [N]."""
    decoder, _ = decoder_and_head(model)
    embeddings = decoder.get_input_embeddings().weight
    device = embeddings.device
    input_ids, labels = batch.input_ids.to(device), batch.labels.to(device)
    # A bfloat16 base runs under autocast, so the float32 adapter weights meet bfloat16 activations in bfloat16
    # matmuls (see train.methods.build_model). No attention mask: with use_cache=False transformers builds the
    # block-diagonal causal mask from the restarting position ids (see train.batching).
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=embeddings.dtype == torch.bfloat16):
        hidden = decoder(input_ids=input_ids, position_ids=batch.position_ids.to(device), use_cache=False).last_hidden_state
    targets = labels[:, 1:]
    selected = targets != IGNORE  # [B, T-1]
    rows = torch.arange(labels.shape[0], device=device)[:, None].expand_as(selected)[selected]
    return hidden[:, :-1][selected], targets[selected], rows


def target_logprobs(model: Any, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(label) at every labelled position [N] (float32) and the row of each [N]."""
    hidden, targets, rows = hidden_and_targets(model, batch)
    return head_logprobs(hidden, decoder_and_head(model)[1], targets), rows


@contextlib.contextmanager
def inference(model: Any) -> Iterator[None]:
    """No gradients and no dropout, *without* ``model.eval()``.

    bitsandbytes repacks 4-bit weights on CPU for inference on the first forward of a module in eval mode
    with no-grad input, and training through repacked weights has no backward (the gradients are silently
    wrong). Switching only the dropout modules off gives the same numbers as eval mode for these models
    while every other module stays in training mode.
    """
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout) and m.training]
    for m in dropouts:
        m.train(False)
    try:
        with torch.no_grad():
            yield
    finally:
        for m in dropouts:
            m.train(True)
