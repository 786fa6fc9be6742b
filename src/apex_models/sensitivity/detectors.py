"""Deterministic detectors of secrets and personal data in text, with exact spans.

Two users: the corpus scrubber (:mod:`apex_models.data.scrub`), which replaces every
finding with a typed placeholder before any training text is written, and later the
sensitivity classifier, which needs the same spans as weak labels and as a rule-based
baseline. So the detectors return spans and kinds, and never edit text themselves.

Precision matters as much as recall: scrubbing a UUID, a git SHA or a lock-file hash
destroys useful training text, and flagging ``password = "changeme"`` teaches the
classifier that placeholders are secrets. Each detector therefore has explicit
look-alike exclusions (see :func:`is_placeholder` and the per-kind checks).
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from dataclasses import dataclass

SECRET_KINDS = (
    "private_key", "jwt", "aws_access_key", "aws_secret_key", "github_token", "slack_token",
    "slack_webhook", "stripe_key", "google_api_key", "provider_token", "auth_header", "url_password",
    "password", "generic_secret", "high_entropy_string",
)
PII_KINDS = ("email", "ipv4", "ipv6")

# Domains reserved for examples (RFC 2606 / 6761) and common stand-ins: their addresses
# are not anybody's personal data.
EXAMPLE_EMAIL_DOMAINS = frozenset({
    "example.com", "example.org", "example.net", "example.edu", "test.com", "domain.com",
    "email.com", "localhost", "company.com", "yourdomain.com", "mydomain.com", "foo.com", "bar.com",
})
_EXAMPLE_SUFFIXES = (".example", ".test", ".invalid", ".localhost", ".local")


@dataclass(frozen=True)
class Finding:
    """One detected span: ``text[start:end] == value``."""

    kind: str
    start: int
    end: int
    value: str

    @property
    def category(self) -> str:
        """``PII`` or ``SECRET``: which placeholder family the scrubber uses."""
        return "PII" if self.kind in PII_KINDS else "SECRET"


def shannon_entropy(value: str) -> float:
    """Bits per character of `value`'s own character distribution."""
    if not value:
        return 0.0
    counts = Counter(value)
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


_PLACEHOLDER_WORDS = (
    "xxx", "your", "example", "changeme", "change_me", "placeholder", "dummy", "redacted",
    "sample", "fake", "<", ">", "${", "{{", "$(", "%(", "%s", "***", "...", "environ", "getenv",
    "secret_here", "token_here", "insert", "replace", "todo", "foobar",
)
_PLACEHOLDER_VALUES = {
    "password", "passwd", "pass", "secret", "token", "none", "null", "true", "false", "test",
    "admin", "root", "user", "username", "pwd", "mysecretpassword", "apikey", "api_key", "key",
    "string", "str", "undefined", "empty",
}


# Runs a person types when inventing a fixture; a random token almost never holds one.
_SEQUENCE = re.compile(r"012345|123456|234567|345678|456789|987654|876543|765432|654321|543210|abcdef|bcdefg")


def is_placeholder(value: str) -> bool:
    """True for values that are obviously not real secrets: templates, markers, stand-ins."""
    low = value.lower().strip("'\"")
    if not low or low in _PLACEHOLDER_VALUES:
        return True
    if len(set(low)) <= 2:  # "aaaaaaaa", "********", "00000000"
        return True
    if _SEQUENCE.search(low) or low.startswith("enc("):
        return True  # fixtures ("sk_test_123456789abcdef"), and values already encrypted (Jasypt ENC(...))
    if re.fullmatch(r"(?:password|passw0rd|secret|pass|test|admin|qwerty|letmein|welcome|abc|root)[\d!@#._-]*", low):
        return True  # the classic example passwords of tutorials ("password123", "admin1")
    return any(word in low for word in _PLACEHOLDER_WORDS)


# --- specific token formats (high precision: fixed prefixes and lengths) -------------

_PRIVATE_KEY = re.compile(
    r"-----BEGIN (?:[A-Z0-9]+ ){0,3}PRIVATE KEY(?: BLOCK)?-----"
    r"[\s\S]{0,20000}?(?:-----END (?:[A-Z0-9]+ ){0,3}PRIVATE KEY(?: BLOCK)?-----|\Z)")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{16,}")
_AWS_ACCESS_KEY = re.compile(r"(?<![A-Z0-9])(?:A3T[A-Z0-9]|AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|ABIA|ACCA)[A-Z0-9]{16}(?![A-Z0-9])")
_AWS_SECRET_KEY = re.compile(
    r"(?i)aws_?(?:secret)_?(?:access_?)?key(?:_id)?[\"']?\s*(?:=|:|=>)\s*[\"']?"
    r"(?-i:([A-Za-z0-9/+]{40}))(?![A-Za-z0-9/+=])")
_GITHUB_TOKEN = re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b")
_SLACK_TOKEN = re.compile(r"\bxox[abposr]-(?:\d+-)+[A-Za-z0-9-]{8,}\b|\bxox[abposr]-[A-Za-z0-9]{10,}(?:-[A-Za-z0-9]+)*\b")
_SLACK_WEBHOOK = re.compile(r"https://hooks\.slack\.com/services/T[A-Z0-9]{6,}/B[A-Z0-9]{6,}/[A-Za-z0-9]{16,}")
_STRIPE_KEY = re.compile(r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,99}\b")
_GOOGLE_API_KEY = re.compile(r"\bAIza[0-9A-Za-z_\-]{35}(?![0-9A-Za-z_\-])")

# Vendor token formats with a fixed, documented prefix (the formats secret scanners such
# as gitleaks and GitHub's push protection key on). A prefix alone is not enough: the
# body must also be varied (see _varied), so "ghp_000...0" fixtures and
# "glpat-xxxxxxxx" placeholders stay unflagged.
_PROVIDER_TOKENS = re.compile("|".join((
    r"\bgl(?:pat|dt|rt|rtr|ptt|cbt|oas|ft|imt|agent|soat|ffct|wt)-[0-9A-Za-z_.\-]{20,}",  # GitLab
    r"\bGR1348941[0-9A-Za-z_\-]{20}",                                        # GitLab runner registration
    r"\bNR(?:AK|JS|II|AA|IQ|RA|SP|BR)-[A-Za-z0-9_\-]{19,32}",                 # New Relic
    r"\b[a-z0-9]{36}NRAL\b|\beu01x[a-f0-9]{32}NRAL\b",                       # New Relic licence keys
    r"\bAT(?:ATT|CTT)3[A-Za-z0-9_\-=]{50,}",                                  # Atlassian
    r"\bATBB[A-Za-z0-9]{28,}",                                               # Bitbucket app password
    r"\bhf_[A-Za-z0-9]{30,40}\b",                                            # Hugging Face
    r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{10,}T3BlbkFJ[A-Za-z0-9_\-]{10,}",  # OpenAI
    r"\bsk-ant-(?:api|admin|sid)\d{2}-[A-Za-z0-9_\-]{60,}",                   # Anthropic
    r"\bsk-[a-f0-9]{32}\b",                                                  # DeepSeek-style
    r"\bgsk_[A-Za-z0-9]{48,56}\b",                                           # Groq
    r"\bph[cxsra]_[A-Za-z0-9]{30,60}\b",                                     # PostHog
    r"\bdckr_(?:pat|oat)_[A-Za-z0-9_\-]{20,}",                               # Docker Hub
    r"\bSWM(?:TKN|KEY)-1-[A-Za-z0-9+/_\-]{40,}",                              # Docker swarm
    r"\bfigd_[A-Za-z0-9_\-]{38,44}",                                         # Figma
    r"\bdo[por]_v1_[a-f0-9]{64}\b",                                          # DigitalOcean
    r"\bpypi-AgEIcHlwaS5vcmc[A-Za-z0-9_\-]{50,}",                            # PyPI
    r"\bnpm_[A-Za-z0-9]{36}\b",                                              # npm
    r"\bSG\.[A-Za-z0-9_\-]{16,32}\.[A-Za-z0-9_\-]{16,64}",                   # SendGrid
    r"\b(?:SK|AC)[0-9a-fA-F]{32}\b",                                         # Twilio
    r"\bkey-[0-9a-f]{32}\b",                                                 # Mailgun
    r"\bPMA[KT]-[A-Za-z0-9]{24,}(?:-[a-f0-9]{30,})?",                        # Postman
    r"\bsbp_(?:v0_)?[a-f0-9]{40}\b",                                         # Supabase
    r"\bpscale_(?:pw|tkn|oauth)_[A-Za-z0-9_\-.]{32,64}",                      # PlanetScale
    r"\bdapi[a-f0-9]{32}(?:-\d)?\b",                                         # Databricks
    r"\bdp\.(?:pt|st|sa|ct|scim|audit)\.[A-Za-z0-9]{40,44}\b",                # Doppler
    r"\bshp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}\b",                                # Shopify
    r"\bsntry[su]_[A-Za-z0-9+/=_\-]{50,}",                                    # Sentry
    r"\bhvs\.[A-Za-z0-9_\-]{24,}|\b[A-Za-z0-9]{14}\.atlasv1\.[A-Za-z0-9_\-=]{60,}",  # HashiCorp
    r"\bAGE-SECRET-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58}",             # age
    r"\bops_eyJ[A-Za-z0-9_\-]{100,}",                                         # 1Password
    r"\bAKCp[A-Za-z0-9]{60,}|\bcmVmdGtu[A-Za-z0-9]{56,}",                     # JFrog
    r"\bgl(?:c|sa)_[A-Za-z0-9+/_]{32,}={0,2}",                               # Grafana cloud / service accounts
    r"\beyJrIjoi[A-Za-z0-9+/]{40,}={0,2}",                                    # Grafana API key
    r"https://discord(?:app)?\.com/api/webhooks/\d+/[A-Za-z0-9_\-]{60,}",     # Discord webhook
    r"\blin_api_[A-Za-z0-9]{40}\b",                                          # Linear
    r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}|\bwhsec_[A-Za-z0-9]{24,}",   # Stripe secret / webhook
    r"\bxapp-\d-[A-Z0-9]+-\d+-[a-f0-9]{32,}|\bxoxe(?:\.xox[bp])?-\d-[A-Za-z0-9]{40,}",  # Slack app/refresh
    r"\bLTAI[A-Za-z0-9]{12,20}\b",                                           # Alibaba Cloud
    r"\bGOCSPX-[A-Za-z0-9_\-]{28}",                                          # Google OAuth client secret
    r"\bya29\.[0-9A-Za-z_\-]{30,}",                                          # Google OAuth access token
    r"\b1//0[0-9A-Za-z_\-]{40,}",                                             # Google OAuth refresh token
    r"\b[A-Za-z0-9_~.]{3}\dQ~[A-Za-z0-9_~.\-]{31,34}",                       # Azure AD client secret
    r"\bakab-[a-z0-9]{16}-[a-z0-9]{16}\b",                                    # Akamai
    r"\bcf(?:at|ut|k)_[A-Za-z0-9]{40,}",                                      # Cloudflare
    r"\bxkeysib-[a-f0-9]{64}-[A-Za-z0-9]{16}",                                # Brevo
    r"\bCLOJARS_[a-f0-9]{60}",                                               # Clojars
    r"\bdnkey-[A-Z0-9]{26}-[A-Z0-9]{52}",                                     # Defined Networking
    r"\bdt0c01\.[A-Z0-9]{24}\.[A-Z0-9]{64}",                                  # Dynatrace
    r"\bHRKU-[A-Za-z0-9_\-]{30,}",                                             # Heroku
    r"\bllx-[A-Za-z0-9_\-]{40,}|\bpplx-[A-Za-z0-9]{40,}|\bxai-[A-Za-z0-9]{60,}",  # LLM API keys
    r"\btgp_v1_[A-Za-z0-9_\-]{40,}|\btvly-[A-Za-z0-9]{28,}|\bntn_[A-Za-z0-9]{40,}",
    r"\bnfp_[A-Za-z0-9]{36}\b|\bvcp_[A-Za-z0-9]{40,}|\brubygems_[a-f0-9]{48}\b",  # Netlify, Vercel, RubyGems
    r"\bsq0(?:atp|csp)-[A-Za-z0-9_\-]{22,43}",                                 # Square
    r"\bsqu_[a-f0-9]{40}\b|\bsqp_[a-f0-9]{40}\b",                              # SonarQube
    r"\bsl\.[A-Za-z0-9_\-]{100,}",                                             # Dropbox
    r"\b\d{8,10}:AA[A-Za-z0-9_\-]{33}\b",                                      # Telegram bot
    r"\bIGQV[A-Za-z0-9_\-]{100,}",                                             # Instagram
    r"\bABSK[A-Za-z0-9+/]{100,}={0,2}|\bbedrock-api-key-[A-Za-z0-9+/]{20,}",    # Amazon Bedrock
    r"\bamzn\.mws\.[a-z0-9]{8}-[a-z0-9]{4}-[a-z0-9]{4}-[a-z0-9]{4}-[a-z0-9]{12}",  # Amazon MWS
)))


def _varied(value: str) -> bool:
    """A real token body is random: many distinct characters, no placeholder words."""
    return (len(set(value)) >= 10 and not re.search(r"(?i)x{6}|example|your_?|0{12}", value)
            and not _SEQUENCE.search(value.lower()))

# --- credentials in context ----------------------------------------------------------

# scheme://user:password@host -> the password only.
_URL_PASSWORD = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.\-]{1,20}://[^\s:/@\"'<>]{1,100}:([^\s@/\"'<>]{1,200})@[\w.\-\[\]]+")
# key = "value" / key: 'value' / "key": "value" with a secret-looking key name.
_SECRET_KEY_NAME = (r"[A-Za-z0-9_.\-]*(?:password|passwd|passphrase|p(?:a|s)?s{1,2}w(?:o)?r?d|pwd|secret|token|api[_\-]?key|apikey|"
                    r"access[ _\-]?key|auth(?:entication|orization)?[ _\-]?key|private[_\-]?key|credentials?)[A-Za-z0-9_.\-]*(?: key)?")
# Unquoted values (config files, command lines, prose): key names are the same plus the
# short `pw`/`pass`, and the value must look random (checked in _contextual).
_UNQUOTED_ASSIGNMENT = re.compile(
    r"(?i)(?<![A-Za-z0-9_])(" + _SECRET_KEY_NAME + r"|pw|pass|[A-Za-z0-9_]*pass|[A-Za-z0-9_]*_pw)\s*(?:=>|:=|=|:)[ \t]*"
    r"(?![\"'\s])([^\s\"',;<>()\[\]{}`]{6,200})")
# SQL: CREATE/ALTER USER ... IDENTIFIED BY 'x', ... WITH [LOGIN] PASSWORD 'x'.
_SQL_PASSWORD = re.compile(
    r"(?i)\b(?:IDENTIFIED\s+(?:WITH\s+\w+\s+)?BY|(?:WITH|LOGIN|ENCRYPTED|ROLE\s+\w+)\s+(?:LOGIN\s+|ENCRYPTED\s+)?PASSWORD)"
    r"\s+'?([^\s';\")\\]{6,100})")
# Command-line options that take a credential: --password X, -Password 'X', --token=X.
_CLI_SECRET = re.compile(
    r"(?i)(?<![\w-])--?(?:[a-z0-9]+[-_])*(?:password|passwd|passphrase|pass|pwd|token|secret|api[-_]?key|"
    r"oauth2-bearer|auth-token|access[-_]key)(?:[-_][a-z0-9]+)*(?:=|\s+)([\"']?)([^\s\"'`]{6,200})\1(?![\w\\])")
# curl -u user:password / --user user:password
_CLI_USER_PASSWORD = re.compile(r"(?<![\w-])(?:-u|--user)\s+([\"']?)[^\s:\"']{1,64}:([^\s\"'@]{4,200})\1")
# HTTP Authorization values: "Authorization: Basic ...", "Bearer ...".
_AUTH_HEADER = re.compile(
    r"(?i)(?:authorization\s*[:=]\s*[\"']?\s*(?:basic|bearer|ntlm|negotiate|token|digest)?|\bbearer)\s+"
    r"([A-Za-z0-9+/_\-.~%]{16,}={0,2})")
# libcurl options that carry credentials: CURLOPT_PASSWORD, "user:password" for USERPWD.
_CURLOPT = re.compile(r"CURLOPT_(?:(PROXY)?USERPWD|(?:PROXY)?PASSWORD|KEYPASSWD|XOAUTH2_BEARER|TLSAUTH_PASSWORD)\s*,\s*\"([^\"]{4,300})\"")
# C/RPM/shell definitions and comparisons: #define PASSWORD "x", if pwd == "x".
_DEFINE_OR_COMPARE = re.compile(
    r"(?i)(?:(?:#|%)(?:define|global)\s+|\bset\s+)?(?<![A-Za-z0-9])(" + r"[A-Za-z0-9_]*(?:password|passwd|passwo?rsd|pwd|secret|token)[A-Za-z0-9_]*"
    r")(?:\s*(?:===?|!==?)\s*|(?:\\t|\s)+)(\\?[\"'])([^\"'\s\\]{6,200})\2")
# A hard-coded fallback for a secret's environment variable: getenv("DB_PASSWORD", "x"),
# os.environ.get("TOKEN") or "x".
_ENV_DEFAULT = re.compile(
    r"(?i)(?:getenv|environ\.get|env)\(\s*[\"'][A-Za-z0-9_.]*(?:pass|pwd|secret|token|key|cred)[A-Za-z0-9_.]*[\"']\s*"
    r"(?:,\s*|\)\s*(?:or|\|\||\?\?)\s*)([\"'])([^\"'\s]{6,200})\1")
# A (name, value) pair passed to a call: define('PASSWORD', 'x'), props.set("db.password", "x").
_CALL_PAIR = re.compile(
    r"(?i)\(\s*[\"']([A-Za-z0-9_.\-]*(?:password|passwd|pwd|secret|token|api[_\-]?key)[A-Za-z0-9_.\-]*)[\"']\s*,\s*"
    r"([\"'])([^\"'\s]{6,200})\2")
# Typed assignments: `passwd: str = "x"`, `val password: String = "x"`.
_TYPED_ASSIGNMENT = re.compile(
    r"(?i)(?<![A-Za-z0-9_])(" + r"[A-Za-z0-9_]*(?:password|passwd|pwd|secret|token|api_?key)[A-Za-z0-9_]*"
    r")\s*:\s*[A-Za-z_][\w\[\]|. ]{0,30}?\s*=\s*([\"'])([^\"'\s]{6,300})\2")
# Credentials in URL query strings: ?token=..., &api_key=...
_QUERY_SECRET = re.compile(r"(?i)[?&](?:access_token|token|api_?key|apikey|secret|password|passwd|auth|sig)=([^&\s\"'#<>]{8,300})")
_SECRET_ASSIGNMENT = re.compile(
    r"(?i)(?<![A-Za-z0-9_])[\"']?(" + _SECRET_KEY_NAME + r")[\"']?\s*(?:=|:=|:|=>)\s*([\"'])([^\"'\s]{6,300})\2")
# Any assignment of a long quoted hex/base64 value (the key name is checked afterwards).
_LONG_VALUE_ASSIGNMENT = re.compile(
    r"(?<![A-Za-z0-9_])[\"']?([A-Za-z_][A-Za-z0-9_.\-]{0,60})[\"']?\s*(?:=|:=|:|=>)\s*([\"'])"
    r"([A-Fa-f0-9]{32,512}|[A-Za-z0-9+/_\-]{32,512}={0,2})\2")
# Key names whose long values are integrity data or identifiers, not credentials.
_NOT_SECRET_KEY = re.compile(
    r"(?i)(hash|sha\d*|md5|checksum|integrity|digest|commit|revision|\brev\b|etag|uuid|guid|"
    r"(^|_)id$|version|fingerprint|nonce|signature_alg|resolved|url|path|file|name|dir|"
    # public identifiers and payloads: blockchain addresses, policy ids, encoded data
    r"address|addr|policy|symbol|asset|script|datum|bytes|cbor|\btx|transaction|block|type|"
    r"data|payload|content|body|text|message|raw|signed|encoded|image|icon|logo|pub|vkey|verification)")

# --- personal data --------------------------------------------------------------------

_EMAIL = re.compile(r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9][A-Za-z0-9._%+\-]{0,63}@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![A-Za-z0-9\-])")
_IPV4 = re.compile(r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\w]|\.\d)")
_VERSION_BEFORE = re.compile(r"(?i)(?:\b(?:v|version|ver\.?|release|python)|==|>=|<=|~=|!=|\^)\s*$|[A-Za-z]-$")
# Address ranges reserved for documentation (RFC 5737, RFC 3849): the IP equivalent of
# example.com, found all over manuals (Python's ipaddress docs alone hold hundreds).
_DOC_IPV4 = ("192.0.2.", "198.51.100.", "203.0.113.")
_DOC_IPV6 = ipaddress.IPv6Network("2001:db8::/32")
_IPV6_CANDIDATE = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|:)?(?:%[\w]+)?(?![\w:])")


def _specific(text: str) -> list[Finding]:
    out: list[Finding] = []
    for kind, pattern in (("private_key", _PRIVATE_KEY), ("jwt", _JWT), ("github_token", _GITHUB_TOKEN),
                          ("slack_webhook", _SLACK_WEBHOOK), ("slack_token", _SLACK_TOKEN),
                          ("stripe_key", _STRIPE_KEY), ("google_api_key", _GOOGLE_API_KEY)):
        for m in pattern.finditer(text):
            if kind == "private_key" and re.search(r"ENCRYPTED|\bFAKE\b", m.group(0)[:400]):
                continue  # an encrypted key is useless without its passphrase; "FAKE" marks a fixture
            if kind == "private_key" or len(set(m.group(0))) >= 10:  # not "ghp_0000...0001"
                out.append(Finding(kind, m.start(), m.end(), m.group(0)))
    for m in _PROVIDER_TOKENS.finditer(text):
        if _varied(m.group(0)):
            out.append(Finding("provider_token", m.start(), m.end(), m.group(0)))
    for m in _AWS_ACCESS_KEY.finditer(text):
        if "EXAMPLE" not in m.group(0):  # AKIAIOSFODNN7EXAMPLE is AWS's documentation key
            out.append(Finding("aws_access_key", m.start(), m.end(), m.group(0)))
    for m in _AWS_SECRET_KEY.finditer(text):
        value = m.group(1)
        if "EXAMPLE" not in value and not is_placeholder(value) and shannon_entropy(value) >= 3.5:
            out.append(Finding("aws_secret_key", m.start(1), m.end(1), value))
    return out


def _looks_random(value: str) -> bool:
    """Mixes character classes like a generated password or key, unlike a word or a name."""
    classes = sum(bool(re.search(p, value)) for p in (r"[a-z]", r"[A-Z]", r"\d", r"[^A-Za-z0-9]"))
    return classes >= 3 or (classes == 2 and bool(re.search(r"\d", value)) and shannon_entropy(value) >= 2.8)


def _contextual(text: str) -> list[Finding]:
    out: list[Finding] = []
    for m in _URL_PASSWORD.finditer(text):
        value = m.group(1)
        if not is_placeholder(value) and not value.startswith(("$", "%", "{")):
            out.append(Finding("url_password", m.start(1), m.end(1), value))
    for m in _SECRET_ASSIGNMENT.finditer(text):
        key, value = m.group(1).lower(), m.group(3)
        if is_placeholder(value) or _NOT_SECRET_KEY.search(key) and "secret" not in key:
            continue
        # A real password or key mixes character classes or is long and varied; words
        # ("hunter", "my_password_field") and references (settings.X) are not.
        classes = sum(bool(re.search(p, value)) for p in (r"[a-z]", r"[A-Z]", r"\d", r"[^A-Za-z0-9]"))
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+", value):
            continue  # settings.SECRET_KEY, os.environ.get style references
        if shannon_entropy(value) < 2.5 or (classes < 2 and len(value) < 16):
            continue
        kind = "password" if re.search(r"pass|pwd", key) else "generic_secret"
        out.append(Finding(kind, m.start(3), m.end(3), value))
    for m in _UNQUOTED_ASSIGNMENT.finditer(text):
        key, value = m.group(1).lower(), m.group(2)
        if is_placeholder(value) or (_NOT_SECRET_KEY.search(key) and "secret" not in key):
            continue
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+", value) or value.startswith(("$", "%")):
            continue  # references to settings or variables
        classes = sum(bool(re.search(p, value)) for p in (r"[a-z]", r"[A-Z]", r"\d", r"[^A-Za-z0-9]"))
        passwordish = re.search(r"pass|pwd|pw$|psw", key) is not None
        if classes >= 3 or (classes == 2 and len(value) >= 16 and shannon_entropy(value) >= 3.5
                            and re.search(r"\d", value)) or (passwordish and len(value) >= 8 and _looks_random(value)):
            kind = "password" if re.search(r"pass|pwd|pw|psword", key) else "generic_secret"
            out.append(Finding(kind, m.start(2), m.end(2), value))
    for m in _SQL_PASSWORD.finditer(text):
        value = m.group(1)
        if not is_placeholder(value) and not value.startswith((":", "?", "$", "%", "@")):
            out.append(Finding("password", m.start(1), m.end(1), value))
    for m in _CLI_SECRET.finditer(text):
        value = m.group(2)
        if not is_placeholder(value) and not value.startswith(("$", "%", "-", "{")) and _looks_random(value):
            kind = "password" if re.search(r"(?i)pass|pwd", m.group(0)) else "generic_secret"
            out.append(Finding(kind, m.start(2), m.end(2), value))
    for m in _CLI_USER_PASSWORD.finditer(text):
        value = m.group(2)
        if not is_placeholder(value) and not value.startswith(("$", "%", "{")):
            out.append(Finding("password", m.start(2), m.end(2), value))
    for m in _AUTH_HEADER.finditer(text):
        value = m.group(1)
        if not is_placeholder(value) and shannon_entropy(value) >= 3.0 and not value.startswith("$"):
            out.append(Finding("auth_header", m.start(1), m.end(1), value))
    for m in _CURLOPT.finditer(text):
        value, start = m.group(2), m.start(2)
        if "USERPWD" in m.group(0) and ":" in value:  # "user:password": the password only
            cut = value.index(":") + 1
            value, start = value[cut:], start + cut
        if value and not is_placeholder(value) and not value.startswith(("$", "%")):
            out.append(Finding("password", start, start + len(value), value))
    for m in _ENV_DEFAULT.finditer(text):
        value = m.group(2)
        if not is_placeholder(value) and _looks_random(value):
            out.append(Finding("password", m.start(2), m.end(2), value))
    for pattern in (_DEFINE_OR_COMPARE, _TYPED_ASSIGNMENT, _CALL_PAIR):
        for m in pattern.finditer(text):
            value = m.group(3)
            if not is_placeholder(value) and _looks_random(value) and not re.fullmatch(r"[A-Za-z_.]+", value):
                kind = "password" if re.search(r"(?i)pass|pwd", m.group(1)) else "generic_secret"
                out.append(Finding(kind, m.start(3), m.end(3), value))
    for m in _QUERY_SECRET.finditer(text):
        value = m.group(1)
        if not is_placeholder(value) and shannon_entropy(value) >= 3.0 and re.search(r"\d", value):
            out.append(Finding("generic_secret", m.start(1), m.end(1), value))
    for m in _LONG_VALUE_ASSIGNMENT.finditer(text):
        key, value = m.group(1), m.group(3)
        if _NOT_SECRET_KEY.search(key) or is_placeholder(value):
            continue
        is_hex = re.fullmatch(r"[A-Fa-f0-9]+", value) is not None
        if is_hex and len(value) in (32, 40, 64, 128) and not re.search(r"(?i)secret|token|key|pass|auth|cred", key):
            continue  # md5/sha1/sha256/sha512-sized hex under a neutral name: a hash
        if not (re.search(r"\d", value) and re.search(r"[A-Za-z]", value)):
            continue  # identifiers, words and paths: random strings mix letters and digits
        threshold = 3.0 if is_hex else 4.0
        if shannon_entropy(value) >= threshold:
            out.append(Finding("high_entropy_string", m.start(3), m.end(3), value))
    return out


def _is_example_email(value: str) -> bool:
    domain = value.rsplit("@", 1)[1].lower()
    local = value.split("@", 1)[0].lower()
    return (domain in EXAMPLE_EMAIL_DOMAINS or domain.endswith(_EXAMPLE_SUFFIXES)
            or domain.endswith((".example.com", ".example.org", ".example.net")) or local in {"git", "noreply", "no-reply"}
            or domain.endswith("users.noreply.github.com"))


def _pii(text: str) -> list[Finding]:
    out: list[Finding] = []
    for m in _EMAIL.finditer(text):
        value = m.group(0)
        if not _is_example_email(value) and not re.search(r"\.(png|jpe?g|gif|svg|webp)$", value, re.I):
            out.append(Finding("email", m.start(), m.end(), value))
    for m in _IPV4.finditer(text):
        value = m.group(0)
        if value == "0.0.0.0" or value.startswith(("127.", "255.", "0.")) or value.startswith(_DOC_IPV4):
            continue  # unspecified, loopback, masks, and the ranges reserved for documentation
        if _VERSION_BEFORE.search(text[max(0, m.start() - 12):m.start()]):
            continue  # "version 1.2.3.4", "pkg==2.0.0.1", "v1.0.0.0"
        out.append(Finding("ipv4", m.start(), m.end(), value))
    for m in _IPV6_CANDIDATE.finditer(text):
        value = m.group(0)
        groups = [g for g in value.split("%")[0].split(":") if g]
        if len(groups) < 3 or not any(re.search(r"[0-9]", g) for g in groups):
            continue  # "a::b" and "dead:beef:cafe" are not addresses anyone leaks
        try:
            addr = ipaddress.IPv6Address(value.split("%")[0])
        except ValueError:
            continue
        if addr.is_loopback or addr.is_unspecified or addr in _DOC_IPV6:
            continue
        out.append(Finding("ipv6", m.start(), m.end(), value))
    return out


_PRIORITY = {kind: i for i, kind in enumerate(SECRET_KINDS + PII_KINDS)}


def find_sensitive(text: str, kinds: tuple[str, ...] | None = None) -> list[Finding]:
    """Every secret and personal-data span in `text`, sorted, without overlaps.

    Where two detectors claim overlapping text, the more specific kind wins (the order
    of :data:`SECRET_KINDS` then :data:`PII_KINDS`), then the longer span. Pass `kinds`
    to keep only some kinds.
    """
    if not text:
        return []
    candidates = _specific(text) + _contextual(text) + _pii(text)
    if kinds is not None:
        candidates = [f for f in candidates if f.kind in kinds]
    # Claim spans in priority order, then return them in text order.
    candidates.sort(key=lambda f: (_PRIORITY[f.kind], f.start, -(f.end - f.start)))
    taken: list[Finding] = []
    for f in candidates:
        if all(f.end <= t.start or f.start >= t.end for t in taken):
            taken.append(f)
    return sorted(taken, key=lambda f: (f.start, f.end))
