"""apex_models.runtime: load a verified bundle, embed with ONNX Runtime, keep a memory store.

Needs only the `runtime` extra; never imports torch, transformers, peft or deepspeed,
nor the training-side sub-packages (models, training, export).
"""

from apex_models.runtime.bundle import (Bundle, BundleError, CrossEncoderSpec, EmbeddingSpec, Manifest, ModelSpec,
                                        SequenceClassifierSpec, TokenClassifierSpec, load_bundle, parse_model_spec)
from apex_models.runtime.embedder import OnnxEmbedder
from apex_models.runtime.models import OnnxClassifier, OnnxRanker, OnnxTokenClassifier, Span
from apex_models.runtime.planning import PROCEDURE_KIND, Plan, Planner
from apex_models.runtime.store import (DEFAULT_INTENT_BOOSTS, Hit, IntentClassifier, Memory, MemoryStore, Related,
                                      Relation, Reranker, StoreConfig, StoreError, Why)

__all__ = ["load_bundle", "Bundle", "BundleError", "Manifest", "ModelSpec", "OnnxEmbedder",
           "EmbeddingSpec", "CrossEncoderSpec", "SequenceClassifierSpec", "TokenClassifierSpec", "parse_model_spec",
           "OnnxRanker", "OnnxClassifier", "OnnxTokenClassifier", "Span",
           "MemoryStore", "Hit", "Memory", "StoreError", "StoreConfig", "Why", "Relation", "Related",
           "Reranker", "IntentClassifier", "DEFAULT_INTENT_BOOSTS", "Plan", "Planner", "PROCEDURE_KIND"]
