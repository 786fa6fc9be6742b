"""The sensitivity verdict the router needs, from the deterministic detectors (and a model).

`DetectorClassifier` runs the same detectors that scrub training data (known key
formats, private keys, connection strings, passwords in assignments, entropy, emails,
IPs). `ModelClassifier` wraps the exported sensitivity classifier (its ONNX token model
and the same detectors, their spans united), and `CombinedClassifier` adds any other
classifier's spans on top of the rules: a model can only add what the rules miss, never
remove what they found.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from apex_models.hybrid.policy import SensitivityClassifier, Span, Verdict
from apex_models.sensitivity.detectors import PII_KINDS, find_sensitive

# PII that is about the team, not a secret: an address in a private range or an email.
_INTERNAL_PII = {"ipv4", "ipv6", "email"}


class DetectorClassifier:
    """Rules only: secret when any secret kind is found, internal for PII, else public."""

    def classify(self, text: str) -> Verdict:
        spans = [Span(f.kind, f.start, f.end, "PII" if f.kind in PII_KINDS else "SECRET")
                 for f in find_sensitive(text)]
        if any(s.category == "SECRET" for s in spans):
            label = "secret"
        elif any(s.kind in _INTERNAL_PII for s in spans):
            label = "internal"
        else:
            label = "public"
        return Verdict(label, spans)


class ModelClassifier:
    """The exported sensitivity classifier (apex_models.sensitivity.classifier) as a router input.

    Its spans carry SECRET/PII and where they came from (a detector kind, or "model"); a
    model-only span is named `secret_model` / `pii_model` in routing reasons.
    """

    def __init__(self, classifier: Any) -> None:
        self.classifier = classifier

    @classmethod
    def load(cls, folder: str | Path, precision: str = "auto") -> "ModelClassifier":
        from apex_models.sensitivity.classifier import SensitivityClassifier

        return cls(SensitivityClassifier.load(folder, precision=precision))

    @classmethod
    def from_bundle(cls, bundle: Any, name: str = "sensitivity", precision: str = "auto") -> "ModelClassifier":
        from apex_models.sensitivity.classifier import SensitivityClassifier

        return cls(SensitivityClassifier.from_bundle(bundle, name, precision=precision))

    def classify(self, text: str) -> Verdict:
        label, spans = self.classifier.classify(text)
        return Verdict(label, [Span(s.source if s.source != "model" else f"{s.kind.lower()}_model", s.start, s.end,
                                    s.kind) for s in spans])


class CombinedClassifier:
    """Detectors first, then a model: spans are the union, the label the stricter of the two."""

    _ORDER = {"public": 0, "internal": 1, "secret": 2}

    def __init__(self, model: SensitivityClassifier, rules: SensitivityClassifier | None = None) -> None:
        self.model, self.rules = model, rules or DetectorClassifier()

    def classify(self, text: str) -> Verdict:
        a, b = self.rules.classify(text), self.model.classify(text)
        spans = list(a.spans)
        for s in b.spans:
            if all(s.end <= t.start or s.start >= t.end for t in a.spans):
                spans.append(s)
        label = max(a.label, b.label, key=lambda x: self._ORDER.get(x, 2))
        return Verdict(label, sorted(spans, key=lambda s: (s.start, s.end)))
