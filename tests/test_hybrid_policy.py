"""Routing decisions and redaction: what may leave the machine, and why."""

from __future__ import annotations

import pytest

from apex_models.hybrid.policy import PathRule, RoutingPolicy, Span, Verdict, decide, redact
from apex_models.hybrid.sensitivity import CombinedClassifier, DetectorClassifier

AWS = "AKIAQ3EGRXC7MKD2LBNP"
PUBLIC = Verdict("public")


def test_public_memory_is_shared_by_default():
    route = decide(RoutingPolicy(), PUBLIC, "src/app/models.py")
    assert (route.destination, route.sharing) == ("shared", "full")
    assert "default" in route.reason


@pytest.mark.parametrize("path", [".env", "config/.env.production", "deploy/prod.env", "keys/server.pem",
                                  "home/.ssh/id_rsa", "ops/secrets/db.yaml", ".aws/credentials"])
def test_credential_files_stay_local_whatever_the_text(path):
    route = decide(RoutingPolicy(), PUBLIC, path, share=True)
    assert route.destination == "local" and route.sharing is None
    assert "path rule" in route.reason and path in route.reason


def test_secret_stays_local_even_when_asked_to_share():
    verdict = DetectorClassifier().classify(f"deploy key: aws_access_key_id = {AWS}")
    assert verdict.label == "secret"
    route = decide(RoutingPolicy(), verdict, "notes/deploy.md", share=True)
    assert route.destination == "local"
    assert "aws_access_key" in route.reason and AWS not in route.reason


def test_redact_policy_shares_a_copy_without_the_secret():
    text = f"the CI user is ci-bot and its key is {AWS}; ask ops@corp-internal.io for rotation"
    verdict = DetectorClassifier().classify(text)
    route = decide(RoutingPolicy(secrets="redact"), verdict, "notes/ci.md")
    assert (route.destination, route.sharing) == ("shared", "redacted")
    shared = redact(text, verdict.spans)
    assert AWS not in shared and "ops@corp-internal.io" not in shared
    assert shared == ("the CI user is ci-bot and its key is <SECRET:aws_access_key>; "
                      "ask <PII:email> for rotation")


def test_pii_only_is_internal_and_redacted_by_default():
    verdict = DetectorClassifier().classify("ping maria.lopez@corp-internal.io about the flaky test")
    assert verdict.label == "internal"
    route = decide(RoutingPolicy(), verdict)
    assert route.sharing == "redacted"
    assert decide(RoutingPolicy(pii="local"), verdict).destination == "local"


def test_share_false_and_custom_rules():
    assert decide(RoutingPolicy(), PUBLIC, share=False).destination == "local"
    policy = RoutingPolicy(rules=[PathRule(glob="private/**", destination="local"),
                                  PathRule(glob="team/**", destination="shared")], default="local")
    assert decide(policy, PUBLIC, "private/plan.md").destination == "local"
    assert decide(policy, PUBLIC, "team/plan.md").destination == "shared"
    assert decide(policy, PUBLIC, "elsewhere/plan.md").destination == "local"


def test_redact_merges_overlapping_spans():
    text = "token=abcdef0123456789 end"
    spans = [Span("generic_secret", 6, 22), Span("high_entropy_string", 10, 20)]
    assert redact(text, spans) == "token=<SECRET:generic_secret> end"


class _Model:
    """A learned classifier's verdict for one fixed text (the real model is tested on its own)."""

    def classify(self, text: str) -> Verdict:
        start = text.index("hunter2")
        return Verdict("secret", [Span("password_in_prose", start, start + len("hunter2"))])


def test_combined_classifier_adds_what_rules_miss_and_keeps_theirs():
    text = f"the staging login is hunter2 and the key {AWS}"
    verdict = CombinedClassifier(_Model()).classify(text)
    assert verdict.label == "secret"
    assert [s.kind for s in verdict.spans] == ["password_in_prose", "aws_access_key"]
    assert "hunter2" not in redact(text, verdict.spans)
