"""apex_models.runtime: load a verified bundle, embed with ONNX Runtime, keep a memory store.

Needs only the `runtime` extra; never imports torch, transformers, peft or deepspeed,
nor the training-side sub-packages (models, training, export).
"""

from apex_models.runtime.bundle import Bundle, BundleError, Manifest, ModelSpec, load_bundle
from apex_models.runtime.embedder import OnnxEmbedder
from apex_models.runtime.store import (DEFAULT_INTENT_BOOSTS, Hit, IntentClassifier, Memory, MemoryStore, Related,
                                      Relation, Reranker, StoreConfig, StoreError, Why)

__all__ = ["load_bundle", "Bundle", "BundleError", "Manifest", "ModelSpec", "OnnxEmbedder",
           "MemoryStore", "Hit", "Memory", "StoreError", "StoreConfig", "Why", "Relation", "Related",
           "Reranker", "IntentClassifier", "DEFAULT_INTENT_BOOSTS"]
