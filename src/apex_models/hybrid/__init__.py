"""apex_models.hybrid: local-first memory whose shareable part syncs to a team's cloud.

Secrets never leave the machine: every write is classified and routed (policy.py), shared
writes go through a durable, encrypted outbox (outbox.py), and search fuses the local
store, the team cache and the cloud within a time budget (memory.py). Torch-free: it
needs the `runtime` extra (and `httpx` for the cloud client).
"""

from apex_models.hybrid.memory import CloudPort, HybridHit, HybridMemory, HybridResult, SyncReport
from apex_models.hybrid.policy import PathRule, Route, RoutingPolicy, Span, Verdict, decide, redact
from apex_models.hybrid.sensitivity import CombinedClassifier, DetectorClassifier

__all__ = ["HybridMemory", "HybridHit", "HybridResult", "SyncReport", "CloudPort", "RoutingPolicy", "PathRule",
           "Route", "Span", "Verdict", "decide", "redact", "DetectorClassifier", "CombinedClassifier"]
