"""Detector golden cases for the credential formats and contexts added for the sensitivity
classifier: each positive names the exact value found; each look-alike must stay unflagged."""

from __future__ import annotations

import pytest

from apex_models.evaluation.secrets import LineSpan, score, to_line_spans
from apex_models.sensitivity.detectors import find_sensitive

POSITIVES = [
    ("export GITLAB_TOKEN=glpat-Zq8v3KdL0pW2xRt7NbYc", "glpat-Zq8v3KdL0pW2xRt7NbYc"),
    ("hf = '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'", "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"),
    ("DIGITALOCEAN=dop_v1_" + "9f3a1c7e5b2d4f60" * 4, "dop_v1_" + "9f3a1c7e5b2d4f60" * 4),
    ("mysql -u root --password Sne3sd8AZjq -h db", "Sne3sd8AZjq"),
    ("curl -u deploy:Xw7pQ2rT9z https://ci.internal/api", "Xw7pQ2rT9z"),
    ('curl -H "Authorization: Bearer 9c2Fq7LmZx0RtY3vBn8KpW4s" https://api', "9c2Fq7LmZx0RtY3vBn8KpW4s"),
    ('curl_easy_setopt(h, CURLOPT_USERPWD, "root:dkb82VddSD");', "dkb82VddSD"),
    ("CREATE USER app WITH ENCRYPTED PASSWORD 'Tq7pW2xRz9';", "Tq7pW2xRz9"),
    ('#define DB_PASSWORD "n84ASM54y4"', "n84ASM54y4"),
    ('def connect(passwd: str = "cq2tPr1a2"):', "cq2tPr1a2"),
    ("X3_PSWD=d37Yt1Jnv0-z", "d37Yt1Jnv0-z"),
]

LOOKALIKES = [
    "sha256 = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'",
    "request_id = '3f2b9c1e-8a4d-4e7b-9c2f-1a5d6e7f8a9b'",
    "GITLAB_TOKEN=glpat-xxxxxxxxxxxxxxxxxxxx",
    "token = 'ghp_000000000000000000000000000000000001'",
    "HF_TOKEN=hf_abcdefghijklmnopqrstuvwxyz12345678",
    'password = "ENC(2dfRFqV/cS6TzRd+JyO=)"',
    "mysql -u root --password $DB_PASSWORD",
    "commit 9fceb02d0ae598e95dc970b74767f19372d61af8",
    "password = os.environ['DB_PASSWORD']",
]


@pytest.mark.parametrize("text,value", POSITIVES)
def test_credential_formats_and_contexts(text: str, value: str) -> None:
    found = [f.value for f in find_sensitive(text) if f.category == "SECRET"]
    assert found == [value]


@pytest.mark.parametrize("text", LOOKALIKES)
def test_lookalikes_stay_unflagged(text: str) -> None:
    assert [f for f in find_sensitive(text) if f.category == "SECRET"] == []


def test_line_spans_and_scoring() -> None:
    text = "a = 1\nkey = 'SECRET'\nb\n"
    spans = to_line_spans(text, [(13, 19), (4, 8)])
    assert spans == [LineSpan(2, 7, 13), LineSpan(1, 4, 5), LineSpan(2, 0, 2)]
    expected = {"f": [LineSpan(2, 7, 13), LineSpan(3, 0, 1)]}
    got = score({"f": spans}, expected, ["f"])
    assert got["line"]["precision"] == 0.5 and got["line"]["recall"] == 0.5
    assert got["value"]["precision"] == round(1 / 3, 4) and got["value"]["recall"] == 0.5


@pytest.mark.parametrize("text,value", [
    ('PASSWORD = os.environ.get("PASSWORD") or "at5G6zi!mQ"', "at5G6zi!mQ"),
    ("define( 'DB_PASSWORD' , '2Arh5dA1Sn0ywiVY' );", "2Arh5dA1Sn0ywiVY"),
    ("MYSQL_PASSWORD=2IWJD88FH4Y;", "2IWJD88FH4Y"),
    ("access key:AIhq5Xyb1Gga9Q26", "AIhq5Xyb1Gga9Q26"),
])
def test_secret_fallbacks_call_pairs_and_spelled_out_key_names(text: str, value: str) -> None:
    assert [f.value for f in find_sensitive(text) if f.category == "SECRET"] == [value]


def test_encrypted_or_fake_private_keys_are_not_credentials() -> None:
    body = "\n".join(["MIIBvTBXBgkqhkiG9w0BBQ0wSjApBgkqhkiG9w0BBQwwHAQIhMRbYco41BACAggA"] * 3)
    for header in ("ENCRYPTED PRIVATE KEY", "OPENSSH FAKE PRIVATE KEY"):
        assert find_sensitive(f"-----BEGIN {header}-----\n{body}\n-----END {header}-----") == []
    assert [f.kind for f in find_sensitive(f"-----BEGIN RSA PRIVATE KEY-----\n{body}\n-----END RSA PRIVATE KEY-----")] == ["private_key"]


def test_benchmark_halves_are_fixed_by_file_name() -> None:
    """The dev half (errors may be read when tuning) and the test half never swap files."""
    from apex_models.evaluation.secrets import half_of

    assert [half_of(n) for n in ("pem_key", "sample.py", "salt.py", "drawio")] == ["dev", "dev", "test", "test"]
    halves = [half_of(f"sample_{i}") for i in range(200)]
    assert 80 < halves.count("dev") < 120
