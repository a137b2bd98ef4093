"""Make models cheap to serve and measure what it costs: int8 quantization (post-training or
quantization-aware), pruning (unstructured or whole units and heads), LoRA adapters and
distillation. Each technique is a function over an NNX module, an optax
transformation or a loss term, so it applies to any ecomjax model; recommender configs reach
them through their ``efficiency:`` section, and ``benchmarks/efficiency.py`` measures the
quality / latency / bytes trade-off of each."""

from ecomjax.efficiency.distill import distillation_kl
from ecomjax.efficiency.lora import LoraConfig, apply_lora, lora_trainable, merge_lora, train_merged
from ecomjax.efficiency.prune import pruning, shrink_pruned, sparsity_report
from ecomjax.efficiency.quantize import (
    Int8Table,
    fake_quantize_rows,
    load_quantized,
    model_bytes,
    quantization_aware,
    quantize_model,
    save_quantized,
)

__all__ = ["Int8Table", "LoraConfig", "apply_lora", "distillation_kl", "fake_quantize_rows", "load_quantized",
           "lora_trainable", "merge_lora", "model_bytes", "pruning",
           "quantization_aware", "quantize_model", "save_quantized", "shrink_pruned", "sparsity_report",
           "train_merged"]
