"""The embedder's Ray Serve deployment on a local single-node Ray: the config validates, the
replica embeds exactly like the in-process embedder, and the API server can use it."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

pytestmark = pytest.mark.slow  # starting Ray and a replica takes about a minute on 2 cores


def test_serve_config_validates(repo_root) -> None:
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(yaml.safe_load((repo_root / "serving" / "serve-config.yaml").read_text()))
    app = config.applications[0]
    assert app.import_path == "apex_models.cloud.replicas:build_app"
    assert app.deployments[0].name == "Embedder"


def test_replicas_embed_like_the_local_embedder(minilm_bundle, minilm_embedder, postgres_url) -> None:
    ray = pytest.importorskip("ray")
    from ray import serve

    from apex_models.cloud.replicas import RayEmbedder, build_app
    from cloud_fixtures import fresh_database, new_user, running_app

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.run(build_app({"bundle": str(minilm_bundle)}), name="apex-embedder-test", route_prefix=None)
        remote = RayEmbedder("apex-embedder-test")
        texts = ["pin psycopg to 3.1", "readFile throws ENOENT"]
        assert remote.dimension == minilm_embedder.dimension
        np.testing.assert_allclose(remote.encode_documents(texts), minilm_embedder.encode_documents(texts),
                                   atol=1e-6)
        np.testing.assert_allclose(remote.encode_queries(texts), minilm_embedder.encode_queries(texts), atol=1e-6)
        with fresh_database(postgres_url) as url, running_app(url, remote) as http:
            _, alice = new_user(http, "alice")
            team = alice.create_team("ray")
            alice.add(team.id, "We pinned psycopg to 3.1 because 3.2 broke pooling")
            alice.add(team.id, "The staging cluster restarts on Sundays")
            assert alice.search(team.id, "why is the postgres driver pinned", k=1, mode="dense")[0].text.startswith(
                "We pinned psycopg")
    finally:
        serve.shutdown()
        ray.shutdown()
