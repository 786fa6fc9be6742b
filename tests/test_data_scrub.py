"""Secret and PII detectors: realistic positives with golden spans, look-alike negatives.

Fake credentials are assembled from parts so that no complete token-shaped string sits
in the repository (push-protection scanners would rightly flag it).
"""

from __future__ import annotations

import pytest

from apex_models.sensitivity.detectors import find_sensitive, shannon_entropy
from apex_models.data.scrub import scrub_record, scrub_text

AWS_ID = "AKIA" + "Q3EGRTXZ7NLPW4KM"
AWS_SECRET = "wJalrXUtnF" + "EMI/K7MDENG/" + "bPxRfiCYzq8Hd2Lm4Q"
GH = "ghp_" + "R4nd0mT0k3nV4lu3" + "xYzAbCdEfGhIjKlMn0pQ"
GH_PAT = "github_pat_" + "11ABCDEFG0123456789_" + "abcdefghijKLMNOPQRST"
SLACK = "xoxb-" + "123456789012-1234567890123-" + "AbCdEfGhIjKlMnOpQrStUvWx"
STRIPE = "sk_" + "live_" + "51HqLyjWDarjtT1zdp7dc"
GOOGLE = "AIza" + "SyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY"
JWT = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9" + "." + "eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ" + "."
       + "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c")
PEM = ("-----BEGIN RSA " + "PRIVATE KEY-----\nMIIEowIBAAKCAQEA0Z3VS5JJcds3xfn/ygWyF8PbnGy0AHB7MhgHcTz6sE2I2yPB\n"
       "aFDrBz9vFqU4yV8mQ4+Y7Z0i\n-----END RSA " + "PRIVATE KEY-----")


def kinds_and_values(text: str) -> list[tuple[str, str]]:
    return [(f.kind, f.value) for f in find_sensitive(text)]


@pytest.mark.parametrize("text, expected", [
    (f"aws_access_key_id = {AWS_ID}\naws_secret_access_key = {AWS_SECRET}\n",
     [("aws_access_key", AWS_ID), ("aws_secret_key", AWS_SECRET)]),
    (f'git clone https://{GH}@github.com/acme/app.git', [("github_token", GH)]),
    (f"GITHUB_TOKEN={GH_PAT}", [("github_token", GH_PAT)]),
    (f'SLACK_BOT_TOKEN: "{SLACK}"', [("slack_token", SLACK)]),
    (f'stripe.api_key = "{STRIPE}"', [("stripe_key", STRIPE)]),
    (f'const key = "{GOOGLE}";', [("google_api_key", GOOGLE)]),
    (f"Authorization: Bearer {JWT}", [("jwt", JWT)]),
    (f"key.pem:\n{PEM}\nend", [("private_key", PEM)]),
    ("DATABASE_URL=postgres://app:Zt9#kq2Lw8@db.internal:5432/prod", [("url_password", "Zt9#kq2Lw8")]),
    ("mongodb+srv://admin:S3cr3tPassw0rd@cluster0.ab1cd.mongodb.net/test", [("url_password", "S3cr3tPassw0rd")]),
    ('DB_PASSWORD = "h7Gq!2pLx9"', [("password", "h7Gq!2pLx9")]),
    ("{'api_key': 'f3b9c2d17e6a4f08b5c3'}", [("generic_secret", "f3b9c2d17e6a4f08b5c3")]),
    ('SECRET_KEY = "django-insecure-9x@k!2m#p$w7q^z&8r*t(y)u"', [("generic_secret", "django-insecure-9x@k!2m#p$w7q^z&8r*t(y)u")]),
    ('signing = "Q2hhbmdlZCBieSBhIHJlYWwgdXNlciBvbmNlIGFuZCBmb3JldmVy9x"',
     [("high_entropy_string", "Q2hhbmdlZCBieSBhIHJlYWwgdXNlciBvbmNlIGFuZCBmb3JldmVy9x")]),
    ("Contact jane.doe@acme-corp.io for access.", [("email", "jane.doe@acme-corp.io")]),
    ("ssh deploy@84.17.46.7 -p 22 and fe80::1ff:fe23:4567:890a%eth0",
     [("ipv4", "84.17.46.7"), ("ipv6", "fe80::1ff:fe23:4567:890a%eth0")]),
    ("server at 2a01:4f8:c17:85a3::8a2e:7334 is down", [("ipv6", "2a01:4f8:c17:85a3::8a2e:7334")]),
    ("bind to 10.0.0.12:8080", [("ipv4", "10.0.0.12")]),
])
def test_positives_with_golden_spans(text: str, expected: list[tuple[str, str]]) -> None:
    findings = find_sensitive(text)
    assert [(f.kind, f.value) for f in findings] == expected
    for f in findings:
        assert text[f.start:f.end] == f.value


@pytest.mark.parametrize("text", [
    "request_id = 123e4567-e89b-12d3-a456-426614174000",                     # UUID
    "Fixed in commit 3f786850e387550fdab836ed7e6dc881de23001b upstream.",     # git SHA in prose
    'sha256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"',  # lock-file hash
    '"integrity": "sha512-9UI5rB7mbBB0ij2yd9aD5tvM5Exn9tE7dgTxTY3VSKbCiFSaWpZZZFnvTnmEaYnJUy9OvafKgE4gb0BWhJqOwQ=="',
    'hash = "sha256:0b8d1f7b4a0e1f7f4a3cde3b8c7e5d9a1c2b3e4f5a6b7c8d9e0f1a2b3c4d5e6f"',
    'password = "changeme"', 'api_key = "<your-api-key>"', 'token = "${GITHUB_TOKEN}"',
    'password: "xxxxxxxx"', "postgres://user:password@localhost/db", "redis://:${REDIS_PASS}@cache:6379",
    "SECRET_KEY = os.environ['SECRET_KEY']", 'password = "password123"',
    "write to admin@example.com or ops@mail.example.org",                   # example domains
    "listen on 0.0.0.0 and 127.0.0.1 only",
    "ipaddress.ip_address('192.0.2.1'), 198.51.100.7, 203.0.113.0/24 and 2001:db8::1000",  # documentation ranges
    "requires numpy==1.26.4.0 or version 2.0.1.3",
    "std::vector<int> v; a::b::c", "at 12:30:45 the job ran", "mac 00:1a:2b:3c:4d:5e",
    "aws_access_key_id = AKIAIOSFODNN7EXAMPLE",                              # AWS's documented example
    "pk_test_TYooMQauvdEDq54NiTphI7jx is the publishable key",               # publishable, not secret
    "git@github.com:acme/app.git", "see logo@2x.png",
    "password: required", "password = get_password(user)", "mysql --password=$DB_PASS",
    "token=settings.API_TOKEN", "CREATE USER app IDENTIFIED BY :password",
    # public blockchain identifiers in JSON answers are data, not credentials
    '{"address": "addr1q9d34spgg2kdy47n82e7x9pdd6vql6d2engxmpj20jmhuc2047yqd4xnh7u6u5jp4t0q3fkxzckph4tgnzvamlu7k5psuahzcp"}',
    'final String policyId = "00000002df633853f6a47465c9496721d2d5b1291b8398016c0e87";',
    '"type": "PaymentVerificationKeyShelley_ed25519"',
])
def test_look_alikes_are_not_flagged(text: str) -> None:
    assert find_sensitive(text) == []


def test_scrub_text_typed_placeholders_and_counts() -> None:
    text = f"export AWS_ACCESS_KEY_ID={AWS_ID}\nmail bob.smith@corp.dev, server 91.198.174.23\n"
    scrubbed, counts = scrub_text(text)
    assert scrubbed == ("export AWS_ACCESS_KEY_ID=<SECRET:aws_access_key>\n"
                        "mail <PII:email>, server <PII:ipv4>\n")
    assert dict(counts) == {"aws_access_key": 1, "email": 1, "ipv4": 1}
    assert scrub_text("nothing to see") == ("nothing to see", {})


def test_scrub_record_scrubs_every_text_field_and_rehashes() -> None:
    record = {"text": f"token {GH}", "code": f"token {GH}", "url": "https://x.dev/q/1",
              "attribution": "by user 1", "sha256": "old"}
    from collections import Counter

    counts: Counter = Counter()
    scrub_record(record, counts)
    assert record["text"] == record["code"] == "token <SECRET:github_token>"
    assert record["sha256"] != "old" and counts == {"github_token": 1}


def test_entropy() -> None:
    assert shannon_entropy("aaaa") == 0.0
    assert shannon_entropy("abcd") == 2.0
