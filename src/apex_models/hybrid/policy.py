"""Where a memory may go: local only, or local and the team's cloud, decided on every write.

The decision combines three things, in this order, and the first that decides wins:

1. path rules (`.env` files, `secrets/`...: always local; a team project's folder: shared),
   matched against the memory's source path with gitignore-style globs;
2. the sensitivity verdict: a memory with a secret never leaves as written; under the
   `redact` setting a copy with every secret and PII span replaced by a typed placeholder
   (`<SECRET:aws_access_key>`) is shared instead, and the original stays local;
3. the policy's default for everything else.

A `Route` records the decision and the reason in words, so `decision(id)` can show a
user why a memory stayed home. No secret value ever appears in a reason: only kinds.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

Destination = Literal["local", "shared"]
Sharing = Literal["full", "redacted"]


@dataclass(frozen=True)
class Span:
    """A sensitive stretch of text: ``text[start:end]`` is a `kind` (aws_access_key, email ...)."""

    kind: str
    start: int
    end: int
    category: str = "SECRET"   # SECRET or PII


@dataclass(frozen=True)
class Verdict:
    """What the sensitivity classifier says about one text."""

    label: str                 # public / internal / secret
    spans: list[Span] = field(default_factory=list)


class SensitivityClassifier(Protocol):
    """Anything that labels a text and finds its secret and PII spans (detectors, a model, both)."""

    def classify(self, text: str) -> Verdict: ...


class PathRule(BaseModel):
    """`glob` (gitignore style: `*.env`, `secrets/**`, `**/id_rsa*`) -> where matching memories go."""

    model_config = ConfigDict(extra="forbid")
    glob: str
    destination: Destination


class RoutingPolicy(BaseModel):
    """The configurable part of routing (conf/runtime: `hybrid.policy`)."""

    model_config = ConfigDict(extra="forbid")
    rules: list[PathRule] = Field(default_factory=lambda: [
        PathRule(glob=g, destination="local") for g in DEFAULT_LOCAL_GLOBS])
    secrets: Literal["local", "redact"] = "local"   # what to do with a memory that holds a secret
    pii: Literal["local", "redact", "share"] = "redact"
    internal: Destination = "shared"                # internal-only facts are for the team, not the world
    default: Destination = "shared"


# Files that hold credentials by convention: whatever the classifier says, they stay home.
DEFAULT_LOCAL_GLOBS = (".env", ".env.*", "*.env", "**/.env", "**/.env.*", "*.pem", "*.key", "**/id_rsa*",
                       "**/id_ed25519*", "**/.ssh/**", "**/secrets/**", "**/.aws/**", "*.kdbx",
                       "**/.netrc", "**/.pgpass", "**/credentials*")


@dataclass(frozen=True)
class Route:
    """The decision for one memory: where it goes, what the cloud copy holds, and why."""

    destination: Destination
    sharing: Sharing | None        # None when nothing is shared
    label: str
    kinds: list[str]
    reason: str

    @property
    def shared(self) -> bool:
        return self.destination == "shared"

    def to_json(self) -> dict:
        return {"destination": self.destination, "sharing": self.sharing, "label": self.label,
                "kinds": self.kinds, "reason": self.reason}

    @classmethod
    def from_json(cls, data: dict) -> "Route":
        return cls(destination=data["destination"], sharing=data["sharing"], label=data["label"],
                   kinds=list(data["kinds"]), reason=data["reason"])


def _matches(glob: str, path: str) -> bool:
    """gitignore-like: a pattern without '/' matches the file name anywhere; `**` spans folders."""
    path = path.replace("\\", "/")
    path = path[2:] if path.startswith("./") else path
    name = path.rsplit("/", 1)[-1]
    if "/" not in glob:
        return fnmatch.fnmatchcase(name, glob)
    pattern = glob[3:] if glob.startswith("**/") else glob
    return (fnmatch.fnmatchcase(path, glob) or fnmatch.fnmatchcase(path, pattern)
            or fnmatch.fnmatchcase("/" + path, "*/" + pattern))


def decide(policy: RoutingPolicy, verdict: Verdict, source: str | None = None,
           share: bool | None = None) -> Route:
    """Route one memory. `share=False` forces local; `share=True` asks to share but never
    overrides a local path rule or a secret (that is the point of the hybrid runtime)."""
    kinds = sorted({s.kind for s in verdict.spans})
    secret_kinds = sorted({s.kind for s in verdict.spans if s.category == "SECRET"})
    pii_kinds = sorted({s.kind for s in verdict.spans if s.category == "PII"})
    if share is False:
        return Route("local", None, verdict.label, kinds, "kept local on request")
    for rule in policy.rules:
        if source and rule.destination == "local" and _matches(rule.glob, source):
            return Route("local", None, verdict.label, kinds, f"path rule {rule.glob!r} keeps {source} local")
    if verdict.label == "secret" or secret_kinds:
        what = ", ".join(secret_kinds) or "secret (classifier)"
        if policy.secrets == "redact" and secret_kinds:
            return Route("shared", "redacted", verdict.label, kinds,
                         f"holds {what}: a redacted copy is shared, the original stays local")
        return Route("local", None, verdict.label, kinds, f"holds {what}: secrets never leave this machine")
    if pii_kinds:
        if policy.pii == "local":
            return Route("local", None, verdict.label, kinds, f"holds personal data ({', '.join(pii_kinds)})")
        if policy.pii == "redact":
            return Route("shared", "redacted", verdict.label, kinds,
                         f"holds personal data ({', '.join(pii_kinds)}): shared redacted")
    for rule in policy.rules:
        if source and rule.destination == "shared" and _matches(rule.glob, source):
            return Route("shared", "full", verdict.label, kinds, f"path rule {rule.glob!r} shares {source}")
    if share is True:
        return Route("shared", "full", verdict.label, kinds, "shared on request")
    if verdict.label == "internal":
        dest = policy.internal
        return Route(dest, "full" if dest == "shared" else None, verdict.label, kinds,
                     f"internal: policy says {dest}")
    return Route(policy.default, "full" if policy.default == "shared" else None, verdict.label, kinds,
                 f"{verdict.label}: policy default is {policy.default}")


def redact(text: str, spans: list[Span]) -> str:
    """`text` with every span replaced by a typed placeholder (<SECRET:kind>, <PII:kind>).

    Overlapping spans are merged so no fragment of a longer secret survives between them.
    """
    merged: list[list] = []
    for s in sorted(spans, key=lambda s: (s.start, -s.end)):
        if merged and s.start < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], s.end)
            continue
        merged.append([s.start, s.end, s])
    out, pos = [], 0
    for start, end, s in merged:
        out.append(text[pos:start])
        out.append(f"<{s.category}:{s.kind}>")
        pos = end
    out.append(text[pos:])
    return "".join(out)
