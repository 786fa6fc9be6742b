"""Compose the Hydra config into params.yaml, and read and validate it in every stage.

Why two steps: DVC tracks parameters by reading a plain params.yaml, and composes Hydra
itself only on `dvc exp run`. So `python pipelines/compose.py` (or DVC's own Hydra
integration) writes the resolved config once, and every stage reads params.yaml through
:func:`load_params`, validated by the schemas below so a typo fails before any work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

REPO_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = REPO_ROOT / "conf"
PROFILES = ("tiny", "default", "gpu")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PathsConfig(_Strict):
    shared: str
    data: str
    models: str
    export: str
    bundle: str
    results: str


class TrackingConfig(_Strict):
    tracking_uri: str
    artifact_location: str
    experiment: str


class CodeSourceConfig(_Strict):
    packages: list[str] = Field(min_length=1)
    index_url: str | None = None
    max_files_per_package: int = Field(gt=0)
    max_file_bytes: int = Field(gt=0)
    license_allowlist: list[str] = Field(min_length=1)


class ToggleConfig(_Strict):
    enabled: bool


class PairsConfig(_Strict):
    min_code_lines: int = Field(ge=1)
    max_code_chars: int = Field(gt=0)
    min_query_words: int = Field(ge=1)
    max_pairs_per_package: int = Field(gt=0)
    keep_docstring_fraction: float = Field(ge=0, le=1)
    split_fractions: dict[Literal["train", "dev", "test"], float]


class DecontaminateConfig(_Strict):
    benchmarks: list[Literal["cosqa", "conala", "intent", "qa"]]


class StackExchangeSourceConfig(_Strict):
    enabled: bool
    min_score: int = 0


class TldrSourceConfig(_Strict):
    enabled: bool
    platforms: list[str] | None = None   # None: every platform


class DocsSourceConfig(_Strict):
    enabled: bool
    debian_packages: list[str] = Field(default_factory=list)
    package_licenses: dict[str, str] = Field(default_factory=dict)   # a package without one is skipped
    sdist_packages: list[str] = Field(default_factory=list)         # pinned specs: README, docs/, CHANGES of each sdist
    max_file_bytes: int = Field(gt=0)
    min_section_chars: int = Field(ge=0)


class DedupConfig(_Strict):
    enabled: bool
    threshold: float = Field(gt=0, le=1)
    num_perm: int = Field(ge=16)


class RepoSpec(_Strict):
    """One code source: exactly one of a local folder or git checkout (`path`), a git URL
    (`git`, cloned with --depth 1) or a Hugging Face dataset id (`hf_dataset`, streamed)."""

    path: str | None = None
    git: str | None = None
    ref: str | None = None                 # branch or tag for `git`
    hf_dataset: str | None = None
    hf_config: str | None = None
    split: str = "train"
    text_field: str = "content"            # the dataset's code column
    path_field: str | None = "path"        # its file-path column, if any
    license_field: str | None = "license"  # its per-row licence column, if any
    license: str | None = None             # SPDX override; else the repository's LICENSE file

    @model_validator(mode="after")
    def _exactly_one(self) -> "RepoSpec":
        given = [k for k in ("path", "git", "hf_dataset") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"a code source names exactly one of path, git, hf_dataset (got {given or 'none'})")
        return self


class RepoSourcesConfig(_Strict):
    enabled: bool
    repos: list[RepoSpec] = Field(default_factory=list)
    extensions: list[str] = Field(default_factory=lambda: [".py"])
    max_files_per_repo: int = Field(gt=0)
    max_file_bytes: int = Field(gt=0)


class RayEngineConfig(_Strict):
    address: str | None = None             # None: start a local cluster
    num_cpus: int | None = Field(default=None, gt=0)
    window: int = Field(gt=0)              # records in flight (driver memory bound)
    batch_size: int = Field(gt=0)          # records per map_batches call


class SourcesConfig(_Strict):
    engine: Literal["local", "ray"] = "local"
    ray: RayEngineConfig
    license_allowlist: list[str] = Field(min_length=1)
    stackexchange: StackExchangeSourceConfig
    tldr: TldrSourceConfig
    conala: ToggleConfig
    docs: DocsSourceConfig
    repos: RepoSourcesConfig
    scrub: ToggleConfig
    dedup: DedupConfig
    max_records_per_source: int | None = Field(default=None, gt=0)


class DataConfig(_Strict):
    code: CodeSourceConfig
    conala: ToggleConfig
    pairs: PairsConfig
    decontaminate: DecontaminateConfig
    # Optional so a params.yaml composed before this section existed still validates for
    # the other stages; ingest_sources asks for a re-compose when it is absent.
    sources: SourcesConfig | None = None


class LoraConfig(_Strict):
    r: int = Field(gt=0)
    alpha: int = Field(gt=0)
    dropout: float = Field(ge=0, lt=1)
    target_modules: list[str] = Field(min_length=1)
    # Only these encoder layers get adapters (None: all). Adapting only the top layers
    # stops the backward pass there: on a shared CPU that is most of a step's cost.
    layers: list[int] | None = None


class MiningConfig(_Strict):
    """Hard-negative mining (apex_models.training.negatives)."""

    method: Literal["bm25", "dense", "both"]
    top_k: int = Field(gt=0)
    skip_top: int = Field(ge=0)
    max_code_jaccard: float = Field(gt=0, le=1)
    max_positive_ratio: float = Field(gt=0, le=1)   # 1: no positive-aware filtering


class PairMixConfig(_Strict):
    """A (query, document) training mix (apex_models.data.embedder_mix), the `data` section of
    the embedder and of the ranker; `mix: null` reads train.jsonl as is."""

    mix: dict[Literal["docstring", "docstring_query", "conala", "stackexchange", "stackexchange_qa", "tldr"],
              float] | None
    conala_query: float = Field(ge=0, le=1)


class TrainLoopConfig(_Strict):
    """What every recipe's loop reads (training.common.prepare_training, checkpoints, logging);
    each recipe's train section adds its own fields."""
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    warmup_ratio: float = Field(ge=0, lt=1)
    batch_size: int = Field(ge=1)
    grad_accum: int = Field(ge=1)
    max_steps: int = Field(gt=0)
    save_every: int = Field(gt=0)
    log_every: int = Field(gt=0)


class EmbedderTrainConfig(TrainLoopConfig):
    batch_size: int = Field(ge=2)   # this recipe needs at least two examples a step
    doc_max_length: int = Field(gt=0, le=512)
    temperature: float = Field(gt=0)
    eval_every: int = Field(gt=0)
    max_train_pairs: int = Field(gt=0)
    eval_dev_queries: int = Field(gt=0)
    # GradCache: embed in chunks of this many texts (null: the whole batch at once)
    mini_batch_size: int | None = Field(default=None, gt=0)
    hard_negatives: int = Field(ge=0)          # per query, appended to the in-batch negatives
    mining: MiningConfig
    # dev evaluations in a row without a new best before the run stops (null: run max_steps)
    patience: int | None = Field(default=None, ge=1)


class EmbedderConfig(_Strict):
    base: str
    pooling: Literal["mean", "cls"]
    normalize: bool
    query_max_length: int = Field(gt=0, le=512)
    doc_max_length: int = Field(gt=0, le=512)
    lora: LoraConfig
    data: PairMixConfig
    train: EmbedderTrainConfig


class DeepSpeedConfig(_Strict):
    zero_stage: Literal[0, 1, 2, 3]
    offload_optimizer_device: Literal["none", "cpu", "nvme"] = "none"
    offload_param_device: Literal["none", "cpu", "nvme"] = "none"
    gradient_clipping: float = 1.0


class TrainerConfig(_Strict):
    device: Literal["cpu", "cuda"]
    mixed_precision: Literal["no", "fp16", "bf16"]
    gradient_checkpointing: bool
    deepspeed: DeepSpeedConfig | None = None
    num_threads: int | None = None


class CosqaEvalConfig(_Strict):
    dev_queries: int | None = None
    test_queries: int | None = None
    corpus_limit: int | None = None


class Bm25Config(_Strict):
    k1: float
    b: float


class PromotionConfig(_Strict):
    registered_model: str
    benchmark: str
    metric: Literal["ndcg@10", "mrr@10", "recall@1", "recall@10", "recall@100"]
    margin: float = Field(ge=0)


class EvaluateConfig(_Strict):
    cosqa: CosqaEvalConfig
    batch_size: int = Field(gt=0)
    bm25: Bm25Config
    promotion: PromotionConfig


class IntentLabel(_Strict):
    name: str
    definition: str


class IntentWeakConfig(_Strict):
    benchmarks: list[Literal["cosqa", "conala", "intent", "qa"]]
    near_ngram_jaccard: float = Field(gt=0, le=1)
    near_word_jaccard: float = Field(gt=0, le=1)
    cap_per_class: int = Field(gt=0)
    min_per_class: int = Field(ge=1)
    tldr_max_pages: int = Field(gt=0)


class IntentBaselineConfig(_Strict):
    C: float = Field(gt=0)
    max_iter: int = Field(gt=0)


class IntentTrainConfig(TrainLoopConfig):
    batch_size: int = Field(ge=2)   # this recipe needs at least two examples a step
    eval_every: int = Field(gt=0)
    patience: int = Field(ge=1)
    label_smoothing: float = Field(ge=0, lt=1)


class IntentConfig(_Strict):
    base: str
    max_length: int = Field(gt=0, le=512)
    registered_model: str        # MLflow registry name; `champion` (if any) is what the export ships
    promotion_margin: float = Field(ge=0)
    oos_label: str
    labels: list[IntentLabel] = Field(min_length=2)
    weak: IntentWeakConfig
    lora: LoraConfig
    baseline: IntentBaselineConfig
    train: IntentTrainConfig

    @property
    def label_names(self) -> list[str]:
        return [label.name for label in self.labels]


class RankerTrainConfig(TrainLoopConfig):
    negatives: int = Field(ge=1)
    mine_top_k: int = Field(gt=1)
    embedder_negatives: bool
    loss: Literal["listwise", "bce"]
    max_length: int = Field(gt=0, le=512)
    max_train_pairs: int = Field(gt=0)
    # selection every `eval_every` steps on CoSQA dev and on held-out Stack Exchange questions
    # of the training sites (the embedder's top `eval.top_k` re-ranked, nDCG@10): the step
    # whose smaller gain over the embedder's own order is largest; null: the last step ships
    eval_every: int | None = Field(default=None, gt=0)
    dev_queries: int = Field(default=50, gt=0)
    # the share of the ingested Stack Exchange questions held out for that second dev set
    dev_qa_fraction: float = Field(default=0.15, ge=0, lt=1)
    # dev evaluations in a row without a new best before the run stops (null: run max_steps)
    patience: int | None = Field(default=None, ge=1)


class RankerEvalConfig(_Strict):
    top_k: int = Field(gt=1)
    cosqa_queries: int | None = None
    cosqa_corpus_limit: int | None = None
    qa_queries: int | None = None
    batch_size: int = Field(gt=0)
    latency_queries: int = Field(gt=0)


class RankerConfig(_Strict):
    base: str
    max_length: int = Field(gt=0, le=512)
    registered_model: str        # MLflow registry name; `champion` (if any) is what the export ships
    promotion_margin: float = Field(ge=0)
    first_stage_scale: float = Field(ge=0)  # score = scale * embedder cosine + cross-encoder; 0: cross-encoder alone
    lora: LoraConfig
    data: PairMixConfig          # its own weights over the embedder's sources
    train: RankerTrainConfig
    eval: RankerEvalConfig


class PlannerDataConfig(_Strict):
    stackexchange: bool
    tldr: bool
    min_steps: int = Field(ge=2)
    max_steps: int = Field(ge=2)
    max_plans_per_source: int | None = Field(default=None, gt=0)
    split_fractions: dict[Literal["train", "dev", "test"], float]
    benchmarks: list[Literal["cosqa", "conala", "intent", "qa"]]
    retrieve: bool                    # the input carries the nearest training plan of another unit


class PlannerTrainConfig(TrainLoopConfig):
    eval_every: int = Field(gt=0)
    patience: int = Field(ge=1)
    dev_plans: int = Field(gt=0)


class PlannerEvalConfig(_Strict):
    test_plans: int | None = Field(default=None, gt=0)   # None: the whole test split
    max_new_tokens: int = Field(gt=0)
    batch_size: int = Field(gt=0)
    step_match: float = Field(gt=0, le=1)                 # ROUGE-L F1 at which a reference step counts as recalled


class PlannerPromotionConfig(_Strict):
    registered_model: str
    metric: Literal["rouge_l", "step_recall"]
    margin: float = Field(ge=0)


class PlannerConfig(_Strict):
    arch: Literal["encoder_decoder", "causal_lm"]
    base: str                                 # encoder (and decoder when decoder_base is null) or the causal LM
    decoder_base: str | None = None
    decoder_layers: int | None = Field(default=None, gt=0)   # encoder_decoder: keep the first N decoder layers
    freeze_encoder: bool = False                              # encoder_decoder: train decoder + cross-attention only
    cross_attention_init: Literal["random", "self_attention"] = "random"  # encoder_decoder: see training/planner.py
    finetune: Literal["full", "lora"]
    max_source_length: int = Field(gt=0, le=2048)
    max_target_length: int = Field(gt=0, le=2048)
    lora: LoraConfig
    data: PlannerDataConfig
    train: PlannerTrainConfig
    eval: PlannerEvalConfig
    promotion: PlannerPromotionConfig


class SensitivityDataConfig(_Strict):
    sources: list[Literal["code", "stackexchange", "tldr", "conala", "docs"]] = Field(min_length=1)
    max_records_per_source: int = Field(gt=0)
    split_fractions: dict[Literal["train", "dev", "test"], float]
    train_examples: int = Field(gt=0)
    dev_examples: int = Field(gt=0)
    test_examples: int = Field(gt=0)
    max_chars: int = Field(gt=40)
    mix: dict[Literal["none", "secret", "pii", "lookalike"], float]


class SensitivityTrainConfig(TrainLoopConfig):
    batch_size: int = Field(ge=2)   # this recipe needs at least two examples a step
    eval_every: int = Field(gt=0)
    patience: int = Field(ge=1)
    secret_weight: float = Field(gt=0)   # loss weight of the span classes against O


class SensitivityExportConfig(_Strict):
    probe_texts: int = Field(gt=0)
    fp32_min_agreement: float = Field(gt=0, le=1)
    int8_min_agreement: float = Field(gt=0, le=1)
    heldout_docs: int = Field(ge=0)   # dev documents for int8's accuracy gate (0: skip it)


class SensitivityEvalConfig(_Strict):
    precision: Literal["auto", "fp32", "int8"]   # auto: the export manifest's default
    registered_model: str
    margin: float = Field(ge=0)


class SensitivityConfig(_Strict):
    base: str
    max_length: int = Field(gt=8, le=512)
    stride: int = Field(ge=0)                    # token overlap between windows of a long text
    doc_labels: dict[Literal["public", "internal", "secret"], str]   # label -> definition
    threshold_grid: list[float] = Field(min_length=1)
    data: SensitivityDataConfig
    lora: LoraConfig
    train: SensitivityTrainConfig
    export: SensitivityExportConfig
    eval: SensitivityEvalConfig


class Int8Config(_Strict):
    per_channel: bool
    reduce_range: bool


class GatesConfig(_Strict):
    fp32_min_cosine: float = Field(gt=0, le=1)
    int8_mean_cosine: float = Field(gt=0, le=1)
    int8_min_cosine: float = Field(gt=0, le=1)
    int8_max_mrr_drop: float = Field(ge=0, lt=1)


HeadTask = Literal["cross_encoder", "sequence_classification", "token_classification", "seq2seq_generation",
                   "causal_generation"]


class ExportConfig(_Strict):
    opset: int = Field(ge=13)
    int8: Int8Config
    gates: GatesConfig
    # Models beside the embedder, name -> task; each ships when its registry champion exists.
    heads: dict[str, HeadTask] = {}
    # Per task, per precision: parity measure -> floor (see export.parity for the measures).
    head_gates: dict[HeadTask, dict[Literal["fp32", "int8"], dict[str, float]]]
    optimize_graph: bool         # try ONNX Runtime's transformer fusions; kept only if gates hold (off: slower, measured)
    probe_texts: int = Field(gt=0)
    eval_dev_queries: int = Field(gt=0)
    signing_key: str | None = None


class RuntimeConfig(_Strict):
    precision: Literal["auto", "fp32", "int8"]
    intra_op_threads: int = Field(gt=0)


class SweepParam(_Strict):
    """One searched value: `choice`/`grid` over `values`, or `loguniform`/`uniform` in [low, high]."""

    type: Literal["choice", "grid", "loguniform", "uniform"]
    values: list[Any] | None = None
    low: float | None = None
    high: float | None = None

    @model_validator(mode="after")
    def _complete(self) -> "SweepParam":
        if self.type in ("choice", "grid") and not self.values:
            raise ValueError(f"a {self.type} needs `values`")
        if self.type in ("loguniform", "uniform") and (self.low is None or self.high is None or self.low >= self.high):
            raise ValueError(f"a {self.type} needs low < high")
        return self


class SweepConfig(_Strict):
    """The Ray Tune sweep over the embedder recipe (apex_models.training.sweep)."""

    num_samples: int = Field(gt=0)
    max_concurrent: int = Field(gt=0)
    cpus_per_trial: float = Field(gt=0)
    metric: str
    mode: Literal["max", "min"]
    space: dict[str, SweepParam] = Field(min_length=1)


class Params(_Strict):
    """The whole resolved config; each stage reads only its own sections."""

    seed: int
    profile: Literal["tiny", "default", "gpu"]
    paths: PathsConfig
    tracking: TrackingConfig
    data: DataConfig
    embedder: EmbedderConfig
    trainer: TrainerConfig
    evaluate: EvaluateConfig
    intent: IntentConfig | None = None  # optional: a params.yaml from before these models still loads
    ranker: RankerConfig | None = None
    planner: PlannerConfig | None = None
    sensitivity: SensitivityConfig | None = None
    export: ExportConfig
    runtime: RuntimeConfig
    sweep: SweepConfig | None = None  # optional: only pipelines/sweep_embedder.py reads it


def compose(profile: str = "default", overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Compose conf/ for a profile plus Hydra overrides into a plain dict (unresolved)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose("config", overrides=[f"profile={profile}", *overrides])
    return OmegaConf.to_container(cfg, resolve=False)


def resolve(raw: dict[str, Any]) -> dict[str, Any]:
    """Resolve interpolations such as ${oc.env:APEX_SHARED,../shared}."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.create(raw), resolve=True)


def validate(raw: dict[str, Any]) -> Params:
    return Params.model_validate(resolve(raw))


def write_params(raw: dict[str, Any], path: str | Path = "params.yaml") -> Path:
    """Write the composed config as params.yaml (interpolations kept, so it stays portable)."""
    validate(raw)
    out = Path(path)
    header = ("# Generated by `python pipelines/compose.py` from conf/ (do not edit by hand:\n"
              "# change conf/ or pass overrides, then re-run compose).\n")
    out.write_text(header + yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return out


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; a clear error names the bad field."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: run `python pipelines/compose.py --profile default` first")
    raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    return validate(raw)
