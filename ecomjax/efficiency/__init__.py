"""Make models cheap to serve and measure what it costs: quantization, pruning (LoRA and
distillation to come). Each technique is a function over an NNX module or an optax
transformation, so it applies to any ecomjax model; ``benchmarks/efficiency.py`` measures the
quality / latency / bytes trade-off of each."""

from ecomjax.efficiency.prune import pruning, shrink_feed_forward, sparsity_report
from ecomjax.efficiency.quantize import (
           Int8Table,
           load_quantized,
           model_bytes,
           quantize_model,
           save_quantized,
)

__all__ = ["Int8Table", "load_quantized", "model_bytes", "pruning", "quantize_model", "save_quantized",
           "shrink_feed_forward", "sparsity_report"]
