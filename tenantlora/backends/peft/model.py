"""Loading the base model for LocalPeft: the tokenizer, and the model wrapped once in a
PeftModel with the inert anchor adapter (see :mod:`tenantlora.backends.peft.engine` for why).
Imports torch, transformers and peft: loaded with the engine, never by ``import tenantlora``.
"""

from __future__ import annotations

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from tenantlora._hf import quiet
from tenantlora.errors import ConfigurationError

__all__ = ["ANCHOR", "load_model", "load_tokenizer"]

ANCHOR = "tenantlora_anchor"
"""The inert rank-1 adapter every base model carries (B is zero: it adds nothing)."""


def load_tokenizer(base_dir: str) -> PreTrainedTokenizerBase:
    try:
        with quiet():
            tokenizer = AutoTokenizer.from_pretrained(base_dir)
    except Exception as exc:
        raise ConfigurationError(
            f"cannot load the tokenizer from {base_dir}: {type(exc).__name__}"
        ) from exc
    if tokenizer.pad_token_id is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(base_dir: str) -> PeftModel:
    try:
        with quiet():
            model = AutoModelForCausalLM.from_pretrained(base_dir)
    except Exception as exc:
        raise ConfigurationError(
            f"cannot load a causal LM from {base_dir}: {type(exc).__name__}"
        ) from exc
    model.eval()  # type: ignore[no-untyped-call]
    target = next(
        (n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"),
        None,
    )
    if target is None:
        raise ConfigurationError(f"the model in {base_dir} has no linear layer to adapt")
    config = LoraConfig(r=1, target_modules=[target], inference_mode=True)
    with quiet():
        peft_model = get_peft_model(model, config, adapter_name=ANCHOR)
    peft_model.eval()
    assert isinstance(peft_model, PeftModel)
    return peft_model
