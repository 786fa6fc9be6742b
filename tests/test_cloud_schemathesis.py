"""Property-based API test: schemathesis generates requests from the OpenAPI spec; the server
must answer none of them with a 5xx. Bounded (examples per operation) to run in about a minute."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import HealthCheck, settings

from cloud_fixtures import fresh_database, new_user, running_app

schemathesis = pytest.importorskip("schemathesis")

EXAMPLES = 25
# The team id in the path is swapped for a real team the caller owns (so generated bodies reach
# the handlers, not a 404), except for deleting the team itself.
KEEP_RANDOM_TEAM = {("DELETE", "/v1/teams/{team_id}")}


@pytest.fixture(scope="module")
def live(postgres_url, minilm_embedder):
    with fresh_database(postgres_url) as url, running_app(url, minilm_embedder, rate_limit_per_minute=1e6,
                                                          rate_limit_burst=100_000) as http:
        _, owner = new_user(http, "owner")
        team = owner.create_team("fuzz")
        owner.add(team.id, "def parse_duration(text): converts '1h30m' into seconds", kind="code")
        yield http, owner._headers, str(team.id)


def test_no_server_errors_on_generated_requests(live) -> None:
    http, headers, team_id = live
    schema = schemathesis.openapi.from_dict(http.app.openapi())
    operations = [op.ok() for op in schema.get_all_operations()]
    assert len(operations) >= 20
    failures: list[str] = []
    statuses: Counter[int] = Counter()

    for operation in operations:
        strategy = operation.as_strategy()

        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case) -> None:
            if "team_id" in (case.path_parameters or {}) and (case.method, case.path) not in KEEP_RANDOM_TEAM:
                case.path_parameters["team_id"] = team_id
            kwargs = case.as_transport_kwargs()
            response = http.request(kwargs["method"], kwargs["url"].replace("http://localhost", ""),
                                    headers={**(kwargs.get("headers") or {}), **headers},
                                    params=kwargs.get("params"), content=kwargs.get("data") or None,
                                    json=kwargs.get("json") if "json" in kwargs else None)
            statuses[response.status_code] += 1
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} -> {response.status_code}: "
                                f"{kwargs.get('json')!r:.200}")

        from hypothesis import given

        given(strategy)(check)()
    total = sum(statuses.values())
    print(f"schemathesis: {len(operations)} operations, {total} requests, {len(failures)} server errors, "
          f"statuses {dict(sorted(statuses.items()))}")
    assert total >= len(operations) * 5
    assert statuses[200] + statuses[201] + statuses[204] > total // 10   # requests reach the handlers
    assert failures == [], "\n".join(failures[:20])
