"""Base models (T5 encoder-decoders, decoder-only causal LMs) and their tokenizers."""
from tagi_ray.models.base import BaseBundle, ModelNotFoundError, build_tiny, load_base, load_pretrained, save_base

__all__ = ["BaseBundle", "ModelNotFoundError", "build_tiny", "load_base", "load_pretrained", "save_base"]
