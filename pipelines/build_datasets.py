"""DVC stage `datasets`: build the embedder's pairs, split by package and decontaminated.

Named build_datasets.py, not datasets.py: a script's folder comes first on sys.path, and a
file named datasets.py would shadow the `datasets` package for everything it imports.
"""

from apex_models.stage_cli import run_stage
from apex_models.data.stages import run_datasets

if __name__ == "__main__":
    run_stage("datasets", __doc__, run_datasets)
