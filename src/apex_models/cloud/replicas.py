"""The embedder as a Ray Serve deployment, so model replicas scale across a cluster.

serving/serve-config.yaml deploys `build_app` (`serve run serving/serve-config.yaml`, or
`serve deploy` to a running cluster); API servers started with APEX_RAY_EMBEDDER=true
then embed through `RayEmbedder`, a handle with the OnnxEmbedder interface the search
and write paths use. Ray Serve balances requests over the replicas and its autoscaler
adds replicas under load. Importing this module imports Ray: only that path needs it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ray import serve

DEPLOYMENT = "Embedder"


@serve.deployment(name=DEPLOYMENT, ray_actor_options={"num_cpus": 1})
class EmbedderDeployment:
    """One replica: the bundle's ONNX embedder (verified on load)."""

    def __init__(self, bundle: str, precision: str | None = None, threads: int = 1) -> None:
        from apex_models.runtime.bundle import load_bundle

        # one CPU per replica (ray_actor_options): no extra bulk threads
        self.embedder = load_bundle(bundle).embedder(precision=precision, intra_op_threads=threads,
                                                     bulk_threads=threads)

    def info(self) -> dict[str, Any]:
        return {"dimension": self.embedder.dimension, "precision": self.embedder.precision,
                "onnx_sha256": self.embedder.onnx_sha256}

    def encode_documents(self, texts: list[str]) -> np.ndarray:
        return self.embedder.encode_documents(texts)

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return self.embedder.encode_queries(texts)


def build_app(args: dict[str, Any]) -> Any:
    """Ray Serve application builder (`import_path` in the config); args: bundle, precision, threads."""
    if not args.get("bundle"):
        raise ValueError("the Ray Serve application needs args.bundle: the bundle folder on every node")
    return EmbedderDeployment.bind(str(args["bundle"]), args.get("precision"), int(args.get("threads", 1)))


class RayEmbedder:
    """The deployment behind the embedder interface (dimension, precision, encode_*)."""

    def __init__(self, app_name: str = "apex-embedder", address: str | None = "auto") -> None:
        import ray

        if not ray.is_initialized():
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
        self._handle = serve.get_deployment_handle(DEPLOYMENT, app_name=app_name)
        info = self._handle.info.remote().result()
        self.dimension = int(info["dimension"])
        self.precision = info["precision"]
        self.onnx_sha256 = info["onnx_sha256"]

    def encode_documents(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self._handle.encode_documents.remote(list(texts)).result(), dtype=np.float32)

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self._handle.encode_queries.remote(list(texts)).result(), dtype=np.float32)
