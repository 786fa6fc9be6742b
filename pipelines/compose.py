"""Compose conf/ (Hydra) into params.yaml, the resolved config every DVC stage reads.

    python pipelines/compose.py --profile default
    python pipelines/compose.py --profile tiny embedder.train.lr=5e-4   # Hydra overrides
"""

import argparse
from pathlib import Path

from apex_models.config import PROFILES, compose, write_params

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=PROFILES, default="default")
    parser.add_argument("--out", type=Path, default=Path("params.yaml"))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. embedder.train.max_steps=100")
    args = parser.parse_args()
    print(write_params(compose(args.profile, args.overrides), args.out))
