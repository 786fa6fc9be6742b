"""The command that reproduces a results file, derived from the config the run really used.

A stage reads a composed params file; writing "python pipelines/x.py" alone would hide
any override. So the resolved config is compared with its profile's default composition
and every difference is written back as a Hydra override of `pipelines/compose.py`.
"""

from __future__ import annotations

import json
from typing import Any

from apex_models.config import Params, compose, validate
from apex_models.tracking import flatten


def config_overrides(params: Params) -> list[str]:
    """`key=value` for every leaf that differs from the profile's default composition."""
    used = flatten(params.model_dump(mode="json"))
    default = flatten(validate(compose(params.profile)).model_dump(mode="json"))
    out = []
    for key in sorted(used):
        if used[key] != default.get(key):
            value: Any = used[key]
            out.append(f"{key}={json.dumps(value) if ' ' in value else value}")
    return out


def reproduce_command(params: Params, stages: list[str]) -> str:
    """`python pipelines/compose.py --profile P [overrides] && python pipelines/<stage>.py ...`."""
    compose_cmd = " ".join(["python pipelines/compose.py", "--profile", params.profile, *config_overrides(params)])
    return " && ".join([compose_cmd, *(f"python pipelines/{stage}.py" for stage in stages)])
