"""Synthetic training data for the sensitivity classifier: real text with generated secrets.

Why synthetic: no corpus labels secrets, and real leaked credentials must never be
trained on. So real code and prose from the pipeline's own corpora (already scrubbed)
supply the contexts, and this module generates what goes into them, at known spans:

- **secrets** with realistic formats (vendor tokens with their real prefixes and
  alphabets, random passwords, hex/base64 keys, JWTs, private-key blocks, URL and
  connection-string passwords), placed in many carriers: assignments with ordinary and
  unusual variable names, JSON/YAML/INI/.env/TOML lines, CLI flags, HTTP headers,
  comments and prose sentences ("the staging password is ...");
- **personal/internal data** (internal e-mail addresses, private IPs, internal
  hostnames): the ``PII`` span type, which makes a text ``internal``;
- **look-alikes** that must stay ``O`` (their spans are kept apart, to count false positives): hashes and checksums, UUIDs, git SHAs,
  placeholders (``changeme``, ``${DB_PASSWORD}``, ``<your-token>``), test fixtures with
  typed sequences, version strings, public example addresses.

Every generator draws from a seeded ``random.Random``; nothing is copied from any
benchmark. Pure Python (no torch): the dataset stage and the tests share it.
"""

from __future__ import annotations

import base64
import json
import random
import string
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

SPAN_TYPES = ("SECRET", "PII")
TOKEN_LABELS = ("O", "B-SECRET", "I-SECRET", "B-PII", "I-PII")
DOC_LABELS = ("public", "internal", "secret")

_ALNUM = string.ascii_letters + string.digits
_B64 = _ALNUM + "+/"
_URLSAFE = _ALNUM + "-_"
_HEX = "0123456789abcdef"


@dataclass
class Example:
    """One text with its sensitive spans: ``text[start:end]`` of each ``(start, end, type)``."""

    text: str
    spans: list[tuple[int, int, str]] = field(default_factory=list)
    source: str = ""

    @property
    def label(self) -> str:
        return doc_label(self.spans)

    def to_json(self) -> dict:
        """``spans`` are the labels; ``lookalikes`` (kept apart, label O) measure false positives."""
        return {"text": self.text, "spans": [list(s) for s in self.spans if s[2] in SPAN_TYPES],
                "lookalikes": [list(s[:2]) for s in self.spans if s[2] == "LOOKALIKE"],
                "label": self.label, "source": self.source}


def doc_label(spans: Iterable[tuple[int, int, str]]) -> str:
    """``secret`` if any secret span, ``internal`` if any personal/internal span, else ``public``."""
    types = {s[2] for s in spans}
    return "secret" if "SECRET" in types else "internal" if "PII" in types else "public"


# --- secret values ---------------------------------------------------------------------

def _rand(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def random_password(rng: random.Random) -> str:
    """8-24 characters mixing at least three classes, like a generated or human-strong password."""
    n = rng.randint(8, 24)
    classes = [string.ascii_lowercase, string.ascii_uppercase, string.digits, "!@#$%^&*_-+=.?~"]
    chosen = rng.sample(classes, rng.choice((3, 3, 4)))
    chars = [rng.choice(c) for c in chosen] + [rng.choice("".join(chosen)) for _ in range(n - len(chosen))]
    rng.shuffle(chars)
    return "".join(chars)


def _jwt(rng: random.Random) -> str:
    def seg(doc: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")
    header = seg({"alg": rng.choice(["HS256", "RS256"]), "typ": "JWT"})
    body = seg({"sub": str(rng.randint(1000, 99999)), "iat": rng.randint(1_600_000_000, 1_800_000_000)})
    return f"{header}.{body}.{_rand(rng, _URLSAFE, rng.randint(30, 43))}"


def _private_key(rng: random.Random) -> str:
    kind = rng.choice(["RSA ", "EC ", "OPENSSH ", ""])
    lines = [_rand(rng, _B64, 64) for _ in range(rng.randint(3, 6))]
    return f"-----BEGIN {kind}PRIVATE KEY-----\n" + "\n".join(lines) + f"\n-----END {kind}PRIVATE KEY-----"


SECRET_GENERATORS: dict[str, Callable[[random.Random], str]] = {
    "aws_access_key": lambda r: r.choice(["AKIA", "ASIA"]) + _rand(r, string.ascii_uppercase + string.digits, 16),
    "aws_secret_key": lambda r: _rand(r, _B64, 40),
    "github_token": lambda r: r.choice(["ghp_", "gho_", "ghs_"]) + _rand(r, _ALNUM, 36),
    "gitlab_token": lambda r: "glpat-" + _rand(r, _URLSAFE, 20),
    "slack_token": lambda r: f"xoxb-{r.randint(10**10, 10**12)}-{r.randint(10**11, 10**13)}-{_rand(r, _ALNUM, 24)}",
    "stripe_key": lambda r: r.choice(["sk_live_", "rk_live_"]) + _rand(r, _ALNUM, r.randint(24, 34)),
    "google_api_key": lambda r: "AIza" + _rand(r, _URLSAFE, 35),
    "openai_key": lambda r: "sk-proj-" + _rand(r, _URLSAFE, 20) + "T3BlbkFJ" + _rand(r, _URLSAFE, 20),
    "hf_token": lambda r: "hf_" + _rand(r, string.ascii_letters, 34),
    "npm_token": lambda r: "npm_" + _rand(r, _ALNUM, 36),
    "sendgrid_key": lambda r: f"SG.{_rand(r, _URLSAFE, 22)}.{_rand(r, _URLSAFE, 43)}",
    "jwt": _jwt,
    "hex_key": lambda r: _rand(r, _HEX, r.choice([24, 32, 40, 48, 64])),
    "base64_key": lambda r: base64.b64encode(bytes(r.getrandbits(8) for _ in range(r.choice([16, 24, 32, 48])))).decode(),
    "alnum_token": lambda r: _rand(r, _ALNUM, r.randint(16, 48)),
    "password": random_password,
    "password2": random_password,
    "password3": random_password,
    "private_key": _private_key,
}

# Names a secret is stored under: the usual ones, and the unusual ones rules miss.
_COMMON_NAMES = ["password", "db_password", "DB_PASS", "api_key", "API_KEY", "secret_key", "SECRET", "token",
                 "auth_token", "access_token", "client_secret", "PRIVATE_TOKEN", "passwd", "pwd", "apiKey",
                 "secretAccessKey", "GITHUB_TOKEN", "SLACK_BOT_TOKEN", "STRIPE_SECRET", "credentials"]
_UNUSUAL_NAMES = ["k", "kk", "blob", "the_thing", "magic", "sauce", "x_auth", "bearer", "cred", "login_blob",
                  "svc_cfg_val", "hush", "opaque", "sig_material", "pass_phrase", "upstream_auth", "conn_extra",
                  "signer", "salt_pepper", "v", "AUTHZ", "SVC_AUTH_VALUE", "cookie_secret", "ci_var_7"]
_USERS = ["admin", "deploy", "app", "svc_backup", "postgres", "ci", "etl_user", "grafana", "root", "jenkins"]
_INTERNAL_DOMAINS = ["corp.acme-inc.com", "internal.globex.io", "eng.initech.net", "hooli.internal", "ops.umbrella.co"]
_FIRST = ["maria", "jon", "li.wei", "a.novak", "priya", "d.okafor", "sven", "kenji", "fatima", "oleg", "ana.silva"]


def internal_email(rng: random.Random) -> str:
    return f"{rng.choice(_FIRST)}{rng.choice(['', str(rng.randint(1, 99))])}@{rng.choice(_INTERNAL_DOMAINS)}"


def private_ip(rng: random.Random) -> str:
    return rng.choice([f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
                       f"192.168.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
                       f"172.{rng.randint(16, 31)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"])


def internal_host(rng: random.Random) -> str:
    return (f"{rng.choice(['db', 'redis', 'build', 'vault', 'kafka', 'api', 'ldap'])}-{rng.randint(1, 40):02d}."
            f"{rng.choice(['prod', 'stg', 'dev'])}.{rng.choice(_INTERNAL_DOMAINS)}")


PII_GENERATORS: dict[str, Callable[[random.Random], str]] = {
    "email": internal_email, "ipv4": private_ip, "host": internal_host,
}


# --- look-alikes (label O) ---------------------------------------------------------------

def _uuid(rng: random.Random) -> str:
    h = _rand(rng, _HEX, 32)
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{rng.choice('89ab')}{h[17:20]}-{h[20:]}"


LOOKALIKES: list[tuple[list[str], Callable[[random.Random], str]]] = [
    (["sha256", "checksum", "digest", "integrity_hash", "content_hash", "etag"], lambda r: _rand(r, _HEX, 64)),
    (["commit", "revision", "sha", "git_sha", "parent"], lambda r: _rand(r, _HEX, 40)),
    (["md5", "file_hash", "cache_key"], lambda r: _rand(r, _HEX, 32)),
    (["request_id", "uuid", "trace_id", "user_id", "correlation_id", "job_id"], _uuid),
    (["password", "token", "api_key", "secret"], lambda r: r.choice([
        "changeme", "${DB_PASSWORD}", "<your-token-here>", "xxxxxxxxxxxxxxxx", "os.environ['API_KEY']", "{{ secret }}",
        "YOUR_API_KEY", "********", "<REDACTED>", "%(password)s", "$SECRET", "None", "''", "example-token"])),
    (["password", "api_key", "token"], lambda r: r.choice([
        "password123", "test1234", "abc123456", "sk_test_1234567890abcdef", "dummy-secret", "fake_token_for_tests",
        "ghp_" + "0" * 36, "AKIAIOSFODNN7EXAMPLE", "hunter2", "letmein"])),
    (["version", "release", "image_tag"], lambda r: f"{r.randint(0, 9)}.{r.randint(0, 30)}.{r.randint(0, 99)}"),
    (["color", "fg", "accent"], lambda r: "#" + _rand(r, "0123456789ABCDEF", 6)),
    (["email", "contact", "maintainer"], lambda r: r.choice(["user@example.com", "noreply@github.com",
                                                             "jane@example.org", "dev@localhost"])),
    (["host", "server", "bind"], lambda r: r.choice(["127.0.0.1", "0.0.0.0", "localhost", "192.0.2.10",
                                                     "example.com", "api.github.com"])),
]


# --- carriers: how a value sits in a file or a sentence -----------------------------------

def _carrier(rng: random.Random, name: str, kind: str) -> tuple[str, str]:
    """(prefix, suffix) around a value for a key `name`; `kind` steers prose vs config."""
    q = rng.choice(['"', "'"])
    config = [
        (f"{name} = {q}", q), (f"{name}={q}", q), (f"{name}: {q}", q), (f"{name}: ", ""), (f"{name}=", ""),
        (f'"{name}": "', '",'), (f"export {name.upper()}=", ""), (f"{name.upper()}={q}", q),
        (f"    {name} = {q}", f"{q},"), (f"self.{name} = {q}", q), (f"config['{name}'] = {q}", q),
        (f"<{name}>", f"</{name}>"), (f"{name} := {q}", q), (f"  - {name}: ", ""),
        (f"const {name} = {q}", f"{q};"), (f"{name}: str = {q}", q), (f"set {name}=", ""),
        (f"client = Client({name}={q}", f"{q})"), (f"[auth]\n{name} = ", ""),
    ]
    cli = [(f"--{name.replace('_', '-').lower()} ", ""), (f"--{name.replace('_', '-').lower()}=", ""),
           (f"-e {name.upper()}=", ""), ('-H "Authorization: Bearer ', '"'), ("Authorization: Basic ", "")]
    prose = [
        (f"the {rng.choice(['staging', 'prod', 'new', 'shared'])} {name.replace('_', ' ')} is ", ""),
        (f"# TODO remove before commit: {name} ", ""), (f"// {name}: ", ""),
        (f"use {q}", f"{q} as the {name.replace('_', ' ')} for now"),
        (f"{rng.choice(['Hi', 'FYI', 'Note'])}, the {name.replace('_', ' ')} for the build box is ", "."),
        (f"I rotated it, new {name.replace('_', ' ')}: ", ""), (f"pw for {rng.choice(_USERS)} is ", " (don't share)"),
    ]
    pool = {"config": config, "cli": cli, "prose": prose}[kind]
    return rng.choice(pool)


def secret_line(rng: random.Random) -> tuple[str, list[tuple[int, int, str]]]:
    """One line (or block) holding a generated secret, with its span."""
    kind = rng.choice(list(SECRET_GENERATORS))
    value = SECRET_GENERATORS[kind](rng)
    roll = rng.random()
    if kind == "private_key":
        prefix, suffix = rng.choice([("", ""), ('key = """', '"""'), ("ssh_key: |\n  ", "")])
        if "|" in prefix:
            value = value.replace("\n", "\n  ")
    elif roll < 0.12:  # connection string or URL with credentials: the password is the span
        user, host = rng.choice(_USERS), rng.choice(["db.example.net", "localhost:5432", internal_host(rng)])
        scheme = rng.choice(["postgresql", "mysql", "redis", "mongodb+srv", "amqp", "https"])
        value = random_password(rng).replace("@", "!").replace("/", "_").replace(":", "_")
        prefix = rng.choice(["DATABASE_URL=", "url = '", "conn = create_engine(\"", "", "broker: "]) + f"{scheme}://{user}:"
        suffix = f"@{host}/{rng.choice(['app', 'prod', '0', 'vhost'])}"
    elif roll < 0.22 and kind.startswith("password"):
        prefix, suffix = rng.choice([(f"mysql -u {rng.choice(_USERS)} -p", " -h 10.0.0.5"),
                                     (f"psql \"password=", " host=db\""),
                                     (f"CREATE USER {rng.choice(_USERS)} WITH PASSWORD '", "';"),
                                     (f"curl -u {rng.choice(_USERS)}:", " https://ci.example.net/api")])
    else:
        names = _UNUSUAL_NAMES if rng.random() < 0.35 else _COMMON_NAMES
        carrier = rng.choices(["config", "cli", "prose"], weights=[6, 2, 3])[0]
        prefix, suffix = _carrier(rng, rng.choice(names), carrier)
    return prefix + value + suffix, [(len(prefix), len(prefix) + len(value), "SECRET")]


def pii_line(rng: random.Random) -> tuple[str, list[tuple[int, int, str]]]:
    kind = rng.choice(list(PII_GENERATORS))
    value = PII_GENERATORS[kind](rng)
    prefix, suffix = rng.choice([
        ("# contact: ", ""), ("host: ", ""), ("ssh deploy@", " 'systemctl restart app'"), ("ping ", ""),
        ("Author: Maria <", ">"), ("ask ", " for access"), ("DB_HOST=", ""), ("server = '", "'"),
        ("the box at ", " is down again"), ('"owner": "', '",'), ("upstream backend { server ", ":8080; }"),
    ])
    return prefix + value + suffix, [(len(prefix), len(prefix) + len(value), "PII")]


def lookalike_line(rng: random.Random) -> tuple[str, list[tuple[int, int, str]]]:
    names, gen = rng.choice(LOOKALIKES)
    prefix, suffix = _carrier(rng, rng.choice(names), rng.choices(["config", "cli", "prose"], weights=[6, 1, 2])[0])
    if "Authorization" in prefix:
        prefix, suffix = f"{rng.choice(names)} = '", "'"
    value = gen(rng)
    return prefix + value + suffix, [(len(prefix), len(prefix) + len(value), "LOOKALIKE")]


# --- contexts and documents --------------------------------------------------------------

def windows(texts: Iterable[tuple[str, str]], rng: random.Random, max_chars: int,
            per_text: int = 2) -> Iterator[tuple[str, str]]:
    """Cut (source, text) into up to `per_text` windows of whole lines, each under `max_chars`."""
    for source, text in texts:
        lines = text.splitlines()
        if not lines:
            continue
        for _ in range(per_text):
            start = rng.randrange(len(lines))
            out, size = [], 0
            for line in lines[start:]:
                if size + len(line) + 1 > max_chars:
                    break
                out.append(line)
                size += len(line) + 1
            if out and sum(len(x.strip()) for x in out) > 20:
                yield source, "\n".join(out)


def inject(context: str, lines: list[tuple[str, list[tuple[int, int, str]]]], rng: random.Random,
           source: str = "") -> Example:
    """Insert generated lines at random line boundaries of `context`; spans shift accordingly."""
    rows = context.split("\n")
    slots = sorted(rng.randint(0, len(rows)) for _ in lines)
    out, spans, pos = [], [], 0
    pending = list(zip(slots, lines))
    for i in range(len(rows) + 1):
        while pending and pending[0][0] == i:
            _, (line, line_spans) = pending.pop(0)
            indent = rows[i][: len(rows[i]) - len(rows[i].lstrip())] if i < len(rows) and rng.random() < 0.5 else ""
            for s, e, t in line_spans:
                spans.append((pos + len(indent) + s, pos + len(indent) + e, t))
            out.append(indent + line)
            pos += len(indent) + len(line) + 1
        if i < len(rows):
            out.append(rows[i])
            pos += len(rows[i]) + 1
    text = "\n".join(out)
    return Example(text, spans, source)


def make_example(context: str, rng: random.Random, mix: dict[str, float], source: str = "") -> Example:
    """A context with 0-3 injected lines: secrets, personal data and look-alikes, by `mix` weights."""
    kinds = list(mix)
    n = rng.choices([0, 1, 2, 3], weights=[mix.get("none", 1.0), 4, 2, 1])[0]
    picks = rng.choices([k for k in kinds if k != "none"], weights=[mix[k] for k in kinds if k != "none"], k=n)
    make = {"secret": secret_line, "pii": pii_line, "lookalike": lookalike_line}
    return inject(context, [make[p](rng) for p in picks], rng, source)


def build_examples(contexts: Iterable[tuple[str, str]], n: int, seed: int, mix: dict[str, float],
                   max_chars: int) -> list[Example]:
    """`n` examples from windows of `contexts` (cycled if too few), reproducible from `seed`."""
    rng = random.Random(seed)
    pool = list(windows(contexts, rng, max_chars))
    if not pool:
        raise ValueError("no usable context text: the corpora are empty")
    rng.shuffle(pool)  # mix code and prose sources rather than taking them in file order
    out = []
    for i in range(n):
        source, context = pool[i % len(pool)] if i < len(pool) else rng.choice(pool)
        out.append(make_example(context, rng, mix, source))
    return out
