"""The one batched-LoRA mechanism: targets, stacked adapter weights, hooks, trainable bank."""
from tagi_ray.lora.bank import LoraBank
from tagi_ray.lora.batched import BatchedLora
from tagi_ray.lora.targets import LoraTarget, find_targets
from tagi_ray.lora.weights import LoraWeights

__all__ = ["BatchedLora", "LoraBank", "LoraTarget", "LoraWeights", "find_targets"]
