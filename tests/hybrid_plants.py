"""Realistic secrets and personal data planted in realistic files and notes, for the leak tests.

Every value is generated here with a seeded RNG in the documented format of its kind
(nothing is copied from a benchmark or a real leak), then placed in one of several
carriers: source files, YAML/INI/.env/JSON configs, shell history, Markdown notes,
commit messages and chat-style notes. `plant(n)` returns memories to add and the exact
values that must never reach the server.
"""

from __future__ import annotations

import base64
import json
import random
import string
from dataclasses import dataclass

ALNUM = string.ascii_letters + string.digits
UPPER_NUM = string.ascii_uppercase + string.digits
HEX = "0123456789abcdef"


def _r(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(rng: random.Random) -> str:
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64url(json.dumps({"sub": str(rng.randint(10**5, 10**9)), "role": "admin",
                               "iat": rng.randint(1.6e9, 1.8e9)}).encode())
    return f"{header}.{body}.{_b64url(bytes(rng.getrandbits(8) for _ in range(32)))}"


def _private_key(rng: random.Random) -> str:
    body = base64.b64encode(bytes(rng.getrandbits(8) for _ in range(190))).decode()
    lines = "\n".join(body[i:i + 64] for i in range(0, len(body), 64))
    return f"-----BEGIN RSA PRIVATE KEY-----\n{lines}\n-----END RSA PRIVATE KEY-----"


def _password(rng: random.Random) -> str:
    return _r(rng, string.ascii_letters, 4) + _r(rng, string.digits, 3) + rng.choice("!#%^*") + _r(rng, ALNUM, 5)


# kind -> (value generator, how it is usually written down)
KINDS = {
    "aws_access_key": lambda r: "AKIA" + _r(r, UPPER_NUM, 16),
    "aws_secret_key": lambda r: _r(r, ALNUM + "/+", 40),
    "github_token": lambda r: "ghp_" + _r(r, ALNUM, 36),
    "gitlab_token": lambda r: "glpat-" + _r(r, ALNUM + "_-", 20),
    "slack_token": lambda r: f"xoxb-{r.randint(10**10, 10**11)}-{r.randint(10**10, 10**11)}-{_r(r, ALNUM, 24)}",
    "slack_webhook": lambda r: (f"https://hooks.slack.com/services/T{_r(r, UPPER_NUM, 8)}/B{_r(r, UPPER_NUM, 10)}/"
                                f"{_r(r, ALNUM, 24)}"),
    "stripe_key": lambda r: "sk_live_" + _r(r, ALNUM, 24),
    "google_api_key": lambda r: "AIza" + _r(r, ALNUM + "_-", 35),
    "openai_key": lambda r: "sk-proj-" + _r(r, ALNUM, 48),
    "huggingface_token": lambda r: "hf_" + _r(r, string.ascii_letters, 34),
    "jwt": _jwt,
    "private_key": _private_key,
    "db_password": _password,
    "api_key": lambda r: _r(r, HEX, 32),
    "bearer_token": lambda r: _r(r, ALNUM, 40),
    "email": lambda r: f"{r.choice(['maria', 'li.wei', 'j.okafor', 'sven', 'priya.n'])}{r.randint(1, 99)}@"
                       f"{r.choice(['acme-corp.io', 'corp-internal.net', 'payments.co', 'globex.dev'])}",
    "ipv4": lambda r: f"10.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}",
    # a unique-local (fd00::/8) address: 2001:db8::/32 is reserved for documentation and rightly not flagged
    "ipv6": lambda r: "fd" + _r(r, HEX, 2) + ":" + ":".join(_r(r, HEX, 4) for _ in range(3)) + "::" + _r(r, HEX, 3),
}

# kind -> carriers: (source path, text template with {v})
CARRIERS: dict[str, list[tuple[str, str]]] = {
    "aws_access_key": [("infra/deploy.py", "import boto3\n\nsession = boto3.Session(\n    aws_access_key_id=\"{v}\",\n    region_name=\"eu-west-1\",\n)\n"),
                       ("notes/aws.md", "## Deploy user\nThe deploy user's access key id is {v}; rotate it quarterly.")],
    "aws_secret_key": [("config/aws.ini", "[default]\naws_secret_access_key = {v}\nregion = eu-west-1\n"),
                       ("scripts/sync.sh", "export AWS_SECRET_ACCESS_KEY={v}\naws s3 sync ./dist s3://static-site\n")],
    "github_token": [("notes/ci.md", "CI clones private deps with the token {v} (bot account)."),
                     ("tools/release.py", "HEADERS = {{\"Authorization\": \"token {v}\"}}\n")],
    "gitlab_token": [("ci/.gitlab-ci.yml", "variables:\n  GITLAB_TOKEN: \"{v}\"\n"),
                     ("notes/mirror.md", "The mirror job pushes with personal access token {v}.")],
    "slack_token": [("bots/notify.py", "client = WebClient(token=\"{v}\")\nclient.chat_postMessage(channel=\"#deploys\", text=msg)\n"),
                    ("notes/slack.md", "Alerts bot token: {v}")],
    "slack_webhook": [("config/alerts.yaml", "alerting:\n  slack_webhook_url: {v}\n  channel: '#oncall'\n"),
                      ("notes/alerts.md", "Post deploy notices to {v} from the pipeline.")],
    "stripe_key": [("payments/settings.py", "STRIPE_API_KEY = \"{v}\"\nSTRIPE_WEBHOOK_TOLERANCE = 300\n"),
                   ("notes/billing.md", "Billing runs against the live key {v}; never use it in tests.")],
    "google_api_key": [("web/maps.js", "const MAPS_KEY = \"{v}\";\nloadMaps(MAPS_KEY);\n"),
                       ("notes/maps.md", "Maps embed key is {v} (restricted to our domains).")],
    "openai_key": [("llm/client.py", "client = OpenAI(api_key=\"{v}\")\n"),
                   ("notes/llm.md", "The summariser uses OPENAI_API_KEY={v} from the shared vault.")],
    "huggingface_token": [("ml/download.py", "snapshot_download(repo_id=\"org/model\", token=\"{v}\")\n"),
                          ("notes/hf.md", "HF_TOKEN={v} has read access to the private models.")],
    "jwt": [("notes/debug.md", "Reproduced the 403 with this session token: {v}"),
            ("tests/manual.http", "GET /api/admin\nAuthorization: Bearer {v}\n")],
    "private_key": [("deploy/key.txt", "deploy key for the build box:\n{v}\n"),
                    ("notes/ssh.md", "Paste this into the runner's secret store:\n\n{v}\n")],
    "db_password": [("app/settings.py", "DATABASES = {{\"default\": {{\"ENGINE\": \"django.db.backends.postgresql\", \"PASSWORD\": \"{v}\"}}}}\n"),
                    ("notes/db.md", "Staging DB: postgresql://app:{v}@db-staging:5432/app"),
                    ("docker-compose.yml", "services:\n  db:\n    environment:\n      POSTGRES_PASSWORD: {v}\n")],
    "api_key": [("config/service.json", "{{\"endpoint\": \"https://api.vendor.io\", \"api_key\": \"{v}\"}}\n"),
                ("clients/vendor.py", "VENDOR_API_KEY = \"{v}\"\n")],
    "bearer_token": [("scripts/smoke.sh", "curl -H \"Authorization: Bearer {v}\" https://api.internal/health\n"),
                     ("notes/api.md", "Use `Authorization: Bearer {v}` for the admin endpoints.")],
    "email": [("notes/oncall.md", "Escalate payment incidents to {v} after 10 minutes."),
              ("CODEOWNERS.md", "The billing module is owned by {v}.")],
    "ipv4": [("notes/network.md", "The build cache lives on {v}:8080 inside the VPC."),
             ("config/hosts.yaml", "redis:\n  host: {v}\n  port: 6379\n")],
    "ipv6": [("notes/network.md", "The metrics endpoint listens on [{v}]:9100."),
             ("config/net.ini", "[metrics]\nbind = {v}\n")],
}


@dataclass(frozen=True)
class Plant:
    kind: str
    value: str
    text: str
    source: str


def plant(n: int, seed: int = 0) -> list[Plant]:
    """`n` memories, each holding one planted value, cycling through every kind and carrier."""
    rng = random.Random(seed)
    kinds = sorted(KINDS)
    out = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        value = KINDS[kind](rng)
        source, template = rng.choice(CARRIERS[kind])
        text = template.format(v=value)
        out.append(Plant(kind, value, text, f"repo{i % 7}/{source}"))
    return out
