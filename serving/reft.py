"""LoReFT adapters (Wu et al., 2024; stanfordnlp/pyreft): the public import path.

One concept per module, all re-exported here:

* `factflow.serving.reft_adapter`: the intervention `LoReFT`, `ReftConfig`, the adapter folder
  (`ReftAdapter`), its forward hooks on a Hugging Face model (`ReftHandle`), `reft_chat_model`.
* `factflow.serving.reft_train`: `train_reft`, `TrainConfig`, `load_examples`, `recall`.
* `factflow.serving.reft_prepare`: the folder vLLM serves (`prepare_vllm_folder`,
  `reft_served_model`); the model class itself is `factflow.serving.vllm_reft`.
"""

from __future__ import annotations

from factflow.serving.reft_adapter import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    TRAIN_REPORT,
    VLLM_ADAPTER_KEY,
    BaseIdentity,
    Example,
    LoReFT,
    ReftAdapter,
    ReftConfig,
    ReftHandle,
    reft_chat_model,
)
from factflow.serving.reft_prepare import (
    parse_adapter_specs,
    prepare_vllm_adapters,
    prepare_vllm_folder,
    reft_served_model,
)
from factflow.serving.reft_train import (
    TrainConfig,
    TrainReport,
    greedy_generate,
    load_base_model,
    load_examples,
    recall,
    train_reft,
)

__all__ = [
    "LoReFT",
    "ReftConfig",
    "TrainConfig",
    "Example",
    "BaseIdentity",
    "ReftAdapter",
    "ReftHandle",
    "TrainReport",
    "train_reft",
    "load_examples",
    "load_base_model",
    "greedy_generate",
    "recall",
    "prepare_vllm_folder",
    "prepare_vllm_adapters",
    "parse_adapter_specs",
    "reft_served_model",
    "reft_chat_model",
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "TRAIN_REPORT",
    "VLLM_ADAPTER_KEY",
]
