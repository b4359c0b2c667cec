"""pipelines.yaml into typed, validated config objects, with ``--set key.path=value`` overrides.

Each named pipeline is a full ``PipelineConfig``. Unknown keys, wrong types and impossible
values fail at load time with the key path and the reason (pydantic, ``extra="forbid"``).
Each stage owns one section class below; its defaults live in pipelines.yaml.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .store import RunStore

# The project's pipelines.yaml, inside the package so that an installed wheel carries it
# (datagen/pipelines.yaml is a link to the one at the top of the checkout: one file, one truth).
DEFAULT_PIPELINES_FILE = Path(__file__).resolve().parent / "pipelines.yaml"


class ConfigError(ValueError):
    """A bad pipelines.yaml or override: the message names the key path and the reason."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Resources(Section):
    """How a stage spreads over Ray: an actor pool of ``actors`` workers."""

    actors: int = Field(1, ge=1)
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    batch_size: int = Field(8, ge=1)


class CaptionSourceConfig(Section):
    """Where Stage 1 reads captions.

    kind: ``shipped`` (datagen/captions/data/captions.txt), ``shapes`` (captions of random
    shapes-world scenes), ``file`` (a .txt/.jsonl/.parquet file at ``path``) or ``hf`` (a
    Hugging Face dataset name or a local dataset directory at ``path``, ``split``, ``column``).
    """

    kind: Literal["shipped", "shapes", "file", "hf"] = "shipped"
    path: str = ""               # file (txt/jsonl/parquet) or HF dataset name/dir
    column: str = "caption"      # jsonl/parquet/hf: the caption column (LAION: TEXT)
    split: str = "train"
    limit: int | None = Field(None, ge=1)
    min_objects: int = Field(1, ge=1, le=3)       # kind shapes: objects per scene
    max_objects: int = Field(3, ge=1, le=3)

    @model_validator(mode="after")
    def _needs_path(self):
        if self.kind in ("file", "hf") and not self.path:
            raise ValueError(f"path is required when kind is {self.kind!r}")
        if self.min_objects > self.max_objects:
            raise ValueError(f"min_objects ({self.min_objects}) > max_objects ({self.max_objects})")
        return self


class OpenAIBackendConfig(Section):
    """Any OpenAI-compatible endpoint: chat models (JSON reply) or completion models."""

    base_url: str = "https://api.openai.com/v1"
    api_key_env: str = Field("OPENAI_API_KEY", min_length=1)  # the NAME of the env var; the key is never logged
    model: str = Field("gpt-4o-mini", min_length=1)
    # chat: few-shot chat with a JSON-schema reply; completions: the original fine-tuned
    # format, prompt "input\n##\n" -> "edit\n%%\noutput\nEND" (few_shot: 0 for a fine-tuned model).
    api: Literal["chat", "completions"] = "chat"
    response_format: Literal["json_schema", "json_object", "none"] = "json_schema"  # chat only
    concurrency: int = Field(8, ge=1)
    max_retries: int = Field(8, ge=0)             # with backoff: ~3 minutes of 429s before a shard fails
    timeout_s: float = Field(60.0, gt=0)
    backoff_s: float = Field(1.0, ge=0)           # first retry waits ~backoff_s, then doubles
    max_backoff_s: float = Field(60.0, ge=0)
    temperature: float = Field(0.7, ge=0, le=2)       # the original generator's GPT-3 sampling
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(256, ge=1)
    frequency_penalty: float = Field(0.1, ge=-2, le=2)
    send_seed: bool = True                        # pass a per-caption seed (best-effort reproducibility)
    few_shot: int = Field(8, ge=0)
    moderation: bool = False
    moderation_model: str = "omni-moderation-latest"


class ValidationConfig(Section):
    """The original generator's rejections (InstructPix2Pix); each rejected caption is counted by reason in the shard stats."""

    min_caption_chars: int = Field(3, ge=1)
    max_caption_chars: int = Field(300, ge=1)
    min_instruction_chars: int = Field(2, ge=1)
    max_instruction_chars: int = Field(200, ge=1)
    dedup: bool = True            # drop a source caption already seen earlier in the source

    @model_validator(mode="after")
    def _ranges(self):
        if self.min_caption_chars > self.max_caption_chars:
            raise ValueError(f"min_caption_chars ({self.min_caption_chars}) > max_caption_chars ({self.max_caption_chars})")
        if self.min_instruction_chars > self.max_instruction_chars:
            raise ValueError(f"min_instruction_chars ({self.min_instruction_chars}) > "
                             f"max_instruction_chars ({self.max_instruction_chars})")
        return self


class CaptionsConfig(Section):
    """Stage 1: source captions -> (input, instruction, output) triples."""

    backend: Literal["grammar", "openai"] = "grammar"
    num_triples: int = Field(300, ge=0)           # source captions to turn into triples
    shard_size: int = Field(100, ge=1)
    seed_triples: str = ""        # few-shot examples (jsonl input/edit/output); "" = the shipped set
    source: CaptionSourceConfig = CaptionSourceConfig(kind="shapes")
    openai: OpenAIBackendConfig = OpenAIBackendConfig()
    validation: ValidationConfig = ValidationConfig()
    resources: Resources = Resources()

    @property
    def num_shards(self) -> int:
        """The run's work units: shard_size triples each (one render and one filter unit per shard)."""
        return -(-self.num_triples // self.shard_size)

    @model_validator(mode="after")
    def _grammar_needs_shapes_captions(self):
        if self.backend == "grammar" and self.source.kind == "shipped":
            raise ValueError("backend 'grammar' edits shapes-world captions; the shipped captions are not "
                             "shapes-world captions: set source.kind=shapes (or a file of shapes captions)")
        return self


class WavesConfig(Section):
    """Render a triple's candidates in waves of ``size`` and stop early (issue 41): once ``k`` of its
    candidates pass the filter's thresholds by ``margin`` its remaining waves are skipped (enough);
    after ``m`` waves with no candidate within ``near`` of passing it is given up (hopeless), and
    with ``far`` set already after its first wave when every candidate scored so far falls further
    than ``far`` short of passing. With ``rescue_after`` set, after that many waves only a triple about
    to be lost goes on: no pass yet, and a candidate within ``rescue_near`` of passing. Margins are
    added to (``near``, ``far``, ``rescue_near``: taken from) each of the filter's four thresholds."""

    size: int = Field(4, ge=1)          # candidates of one triple per wave
    k: int = Field(1, ge=1)             # enough: passes with margin before the triple stops
    m: int = Field(2, ge=1)             # hopeless: waves with no candidate near passing
    margin: float = Field(0.0, ge=0)    # a pass counts toward k only this far above every threshold
    near: float = Field(0.02, ge=0)     # near passing: every metric within this of its threshold
    far: float | None = Field(None, ge=0)   # hopeless after one wave: every scored candidate this far short
    rescue_after: int | None = Field(None, ge=1)   # waves after which only triples about to be lost go on
    rescue_near: float = Field(0.01, ge=0)         # ... those with no pass yet and a candidate this near

    @model_validator(mode="after")
    def _bounds_in_order(self):
        if self.far is not None and self.far <= self.near:
            raise ValueError(f"render.waves.far ({self.far}) must exceed render.waves.near ({self.near}): it gives up "
                             "on triples after one wave, before m waves judge them by near")
        if self.rescue_after is not None and self.rescue_near > self.near:
            raise ValueError(f"render.waves.rescue_near ({self.rescue_near}) must not exceed render.waves.near "
                             f"({self.near}): a triple further than near is given up after m waves, before any rescue")
        return self


class PreviewConfig(Section):
    """Previews (issue 41): after ``fraction`` of the steps, the x0 prediction of every live row is
    decoded and scored with the filter's CLIP metrics; the stop rule (a JSON file written by
    ``editsynth preview-rule``, calibrated on a stored run) stops the candidates it predicts to
    fail. With no rule, previews are only recorded (what a calibration run needs)."""

    fraction: float = Field(0.3, gt=0, lt=1)
    decoder: str = "vae"    # "vae": the pipeline's own; else an AutoencoderTiny directory or hub id
    rule: str = ""          # path of a calibrated stop rule; "": record previews, stop nothing


class RenderConfig(Section):
    model: str = "shapes"        # hub id, local diffusers dir, or "shapes" (shipped tiny SD)
    mode: Literal["self", "cross", "none"] = "self"
    num_candidates: int = Field(100, ge=1)
    p_min: float = Field(0.1, ge=0, le=1)         # p ~ U(0.1, 0.9): the original generator
    p_max: float = Field(0.9, ge=0, le=1)
    cfg_min: float = Field(7.5, ge=0)             # cfg ~ U(7.5, 15): the original generator
    cfg_max: float = Field(15.0, ge=0)
    steps: int = Field(100, ge=1)
    # The step count the steps lever is counted against (paper-fast: the paper's 100): render stats
    # then carry unet_rows_saved_steps, what the rows spent would have been at it, less the rows.
    steps_reference: int | None = Field(None, ge=1)
    scheduler: str = "EulerAncestralDiscreteScheduler"
    height: int | None = Field(None, ge=8)
    width: int | None = Field(None, ge=8)
    # Cross mode (the P2P paper's pair, 0.8/0.4): a candidate's p is its cross-replace share of
    # the steps and its self-replace share is p * self_replace_fraction / cross_replace_fraction.
    cross_replace_fraction: float = Field(0.8, gt=0, le=1)
    self_replace_fraction: float = Field(0.4, ge=0, le=1)
    cross_reweight: float = Field(1.0, ge=0)      # cross mode: scale of the edited words' maps (1 = off)
    # k > 1: groups of k candidates share seed and cfg and differ in p, so they share the source
    # branch and the edited branch up to the smallest p (fewer UNet rows; less seed diversity).
    candidates_per_seed: int = Field(1, ge=1)
    image_format: Literal["png", "jpg"] = "png"   # jpg is written at quality 100
    # kept: the render actor scores each candidate as it renders it (as the original generator did)
    # and stores images only inside the filter's keep bound; all: every image, in a render tar too.
    store: Literal["kept", "all"] = "kept"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"   # auto: fp16 on CUDA, fp32 on CPU
    device: Literal["auto", "cpu", "cuda"] = "auto"
    waves: WavesConfig | None = None              # None: every candidate is rendered (the paper)
    preview: PreviewConfig | None = None          # None: no previews, nothing stopped mid-denoising
    resources: Resources = Resources()            # batch_size = candidates per sampling loop

    @model_validator(mode="after")
    def _ranges(self):
        if self.p_min > self.p_max:
            raise ValueError(f"p_min ({self.p_min}) > p_max ({self.p_max})")
        if self.cfg_min > self.cfg_max:
            raise ValueError(f"cfg_min ({self.cfg_min}) > cfg_max ({self.cfg_max})")
        return self


class FilterConfig(Section):
    clip_model: str = "ViT-L-14"  # open_clip name, "hf-hub:...", "local-dir:...", a directory, or "shapes"
    clip_pretrained: str = "openai"  # a pretrained tag or a checkpoint file (built-in names only)
    min_sim_0: float = Field(0.2, ge=-1, le=1)    # InstructPix2Pix's filter: sim_0, sim_1, sim_direction >= 0.2
    min_sim_1: float = Field(0.2, ge=-1, le=1)
    min_direction: float = Field(0.2, ge=-1, le=1)
    min_image: float = Field(0.75, ge=-1, le=1)
    max_pairs_per_triple: int = Field(4, ge=1)
    # Looser bound under which candidate images are kept on disk for refilter.
    keep_min_sim_0: float = Field(0.1, ge=-1, le=1)
    keep_min_sim_1: float = Field(0.1, ge=-1, le=1)
    keep_min_direction: float = Field(0.0, ge=-1, le=1)
    keep_min_image: float = Field(0.5, ge=-1, le=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"       # auto: cuda when the actor has a GPU
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"  # auto: fp16 on cuda, fp32 on cpu
    # "original": batched bicubic squash to the model's size, as the InstructPix2Pix filter
    # did; "open_clip": the model's own transforms (resize shorter side + centre crop).
    preprocess: Literal["original", "open_clip"] = "original"
    oracle: Literal["auto", "off"] = "auto"   # auto: label shapes-world pairs with the exact oracle
    resources: Resources = Resources()


class ExportConfig(Section):
    formats: list[Literal["webdataset", "hf"]] = ["webdataset", "hf"]
    image_format: Literal["png", "jpg"] = "png"   # stored bytes are copied when formats agree
    jpeg_quality: int = Field(95, ge=1, le=100)
    shard_size: int = Field(1000, ge=1)
    val_fraction: float = Field(0.05, ge=0, lt=1)
    test_fraction: float = Field(0.05, ge=0, lt=1)

    @model_validator(mode="after")
    def _fractions(self):
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(f"val_fraction + test_fraction ({self.val_fraction} + {self.test_fraction}) "
                             "must leave room for a train split (< 1)")
        return self


class EvalConfig(Section):
    """``editsynth eval``: the paper's guidance sweep and the shapes-world oracle evaluation."""

    split: str = "test"                  # held-out split of the dataset (HF split / shard folder)
    num_examples: int = Field(100, ge=1)
    clip_model: str = "ViT-L-14"         # open_clip name, "hf-hub:...", "local-dir:...", or "shapes"
    clip_pretrained: str = "openai"
    text_guidance_scale: float = Field(7.5, ge=0)       # InstructPix2Pix's evaluation: s_T 7.5
    image_guidance_scales: list[float] = [1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.2]
    sdedit_strengths: list[float] = [0.3, 0.45, 0.6, 0.75, 0.9]  # the SDEdit curve: noise strength
    steps: int = Field(50, ge=1)
    batch_size: int = Field(8, ge=1)
    seed: int = 0
    # The sampler of the editor and of SDEdit alike (a diffusers class name): the original's
    # Euler ancestral, or the one an editor is served with (`editsynth edit --scheduler`).
    scheduler: str = "EulerAncestralDiscreteScheduler"
    # --oracle: held-out rendered scenes (negative seeds, never used for training data).
    oracle_num_scenes: int = Field(210, ge=1)
    # The headline (s_T, s_I); None: the editor's own (its edit_config.json), else the paper's 7.5 / 1.5.
    oracle_image_guidance: float | None = Field(None, ge=0)
    # More image-guidance scales to judge the editor at (the paper's s_I axis; the headline keys
    # stay at oracle_image_guidance): a weak editor trades edits for preservation along it.
    oracle_image_guidance_sweep: list[float] = []
    # ... and at each of these text scales (empty: oracle_text_guidance only). The paper's 7.5
    # is tuned for SD; a tiny editor may edit and keep best at another.
    oracle_text_guidance_sweep: list[float] = []
    oracle_text_guidance: float | None = Field(None, ge=0)
    oracle_sdedit_strength: float = Field(0.6, gt=0, le=1)
    # More SDEdit strengths to judge (sdedit_strength_sweep), so the baseline is tuned like the editor.
    oracle_sdedit_strength_sweep: list[float] = []
    # Which held-out scenes: "test" (the figures we report) or "validation" (a disjoint set to
    # choose guidance on, `editsynth edit-config`, without looking at the test scenes).
    oracle_scenes: Literal["test", "validation"] = "test"
    # Judge the headline setting once more with the edits worded as training data words them
    # (seen_phrasing_* keys): one more editor pass.
    oracle_seen_phrasing: bool = True
    # And once more on the scenes whose edits have a wording with a word no training text has
    # ("get rid of": unseen_vocabulary_* keys): one more editor pass over those scenes.
    oracle_unseen_vocabulary: bool = True

    @model_validator(mode="after")
    def _lists(self):
        if not self.image_guidance_scales:
            raise ValueError("image_guidance_scales must list at least one value")
        for name in ("sdedit_strengths", "oracle_sdedit_strength_sweep"):
            if any(not 0 < s <= 1 for s in getattr(self, name)):
                raise ValueError(f"{name} must lie in (0, 1], got {getattr(self, name)}")
        return self


class TrainConfig(Section):
    base_model: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # SD hub id / dir, an editor, or "shapes"
    data: str = ""                  # webdataset export dir / tar pattern, or a HF dataset name / dir
    split: str = "train"
    # Refuse data with fewer pairs (counted from local shards' headers or the HF split): retraining
    # an editor on fewer distinct pairs than its own run read has not helped (shapes model card).
    min_pairs: int = Field(0, ge=0)
    resolution: int = Field(256, ge=8)
    random_flip: bool = True        # same flip for both images
    # Words that trade places in the instruction of a flipped pair, e.g. [[left, right]]; without
    # them, turn random_flip off where instructions name sides.
    flip_swap_words: list[tuple[str, str]] = []
    center_crop: bool = False
    batch_size: int = Field(32, ge=1)              # per process
    gradient_accumulation_steps: int = Field(4, ge=1)
    learning_rate: float = Field(1e-4, gt=0)
    lr_warmup_steps: int = Field(0, ge=0)
    # The paper's constant rate, or a decay to zero at max_steps (a short CPU run ends annealed).
    lr_scheduler: Literal["constant_with_warmup", "cosine", "linear"] = "constant_with_warmup"
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    adam_weight_decay: float = Field(1e-2, ge=0)
    adam_epsilon: float = Field(1e-8, gt=0)
    max_grad_norm: float = Field(1.0, gt=0)
    max_steps: int = Field(10000, ge=1)
    conditioning_dropout_text: float = Field(0.05, ge=0, le=1)   # InstructPix2Pix: 5 % text, 5 % image, 5 % both
    conditioning_dropout_image: float = Field(0.05, ge=0, le=1)
    conditioning_dropout_both: float = Field(0.05, ge=0, le=1)
    snr_gamma: float | None = Field(None, gt=0)   # Min-SNR loss weighting; None: the paper's plain MSE
    # Which timesteps training draws: the paper's uniform, or cubic (more of the noisiest steps,
    # where the editor must copy the layout from the image condition; model/editor.draw_timestep).
    timestep_sampling: Literal["uniform", "cubic"] = "uniform"
    use_ema: bool = True
    ema_decay: float = Field(0.9999, ge=0, lt=1)
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_checkpointing: bool = False
    use_8bit_adam: bool = False
    allow_tf32: bool = True
    checkpoint_every: int = Field(500, ge=1)
    keep_checkpoints: int = Field(3, ge=1)
    shuffle_buffer: int = Field(1000, ge=1)
    dataloader_workers: int = Field(0, ge=0)
    log_every: int = Field(10, ge=1)
    log_with: Literal["files", "tensorboard"] = "files"
    sample_every: int = Field(500, ge=1)          # steps between sample-edit grids in logs/samples
    num_sample_images: int = Field(4, ge=0)
    sample_steps: int = Field(20, ge=1)
    seed: int = 0
    resources: Resources = Resources()
    eval: EvalConfig = EvalConfig()

    @model_validator(mode="after")
    def _dropout(self):
        total = self.conditioning_dropout_text + self.conditioning_dropout_image + self.conditioning_dropout_both
        if total > 1:
            raise ValueError(f"conditioning dropout probabilities sum to {total} > 1")
        return self


class PipelineConfig(Section):
    name: str = ""
    seed: int = 0
    ray_address: str | None = None
    captions: CaptionsConfig = CaptionsConfig()
    render: RenderConfig = RenderConfig()
    filter: FilterConfig = FilterConfig()
    export: ExportConfig = ExportConfig()
    train: TrainConfig = TrainConfig()


def _format_errors(err: ValidationError, prefix: str) -> str:
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"])
        lines.append(f"{prefix}{path}: {e['msg']}")
    return "\n".join(lines)


def _parse_value(text: str) -> Any:
    """``--set`` values are YAML scalars: 3 -> int, 0.5 -> float, true -> bool, [a,b] -> list."""
    return yaml.safe_load(text) if text.strip() else ""


def apply_override(data: dict, assignment: str) -> None:
    """Apply one ``key.path=value`` to a raw config dict, in place."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r}: expected KEY=VALUE, e.g. captions.num_triples=1000")
    key, value = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {key}: {'.'.join(parts[: i + 1])} is not a section")
        node = nxt
    node[parts[-1]] = _parse_value(value)


def load_pipelines_file(path: str | Path | None = None) -> dict[str, dict]:
    path = Path(path) if path else DEFAULT_PIPELINES_FILE
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as e:
        raise ConfigError(f"pipelines file not found: {path}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(raw, dict) or not isinstance(raw.get("pipelines"), dict):
        raise ConfigError(f"{path}: expected a top-level 'pipelines:' mapping of named pipelines")
    return raw["pipelines"]


def load_config(
    pipeline: str = "shapes", overrides: list[str] | tuple[str, ...] = (), path: str | Path | None = None
) -> PipelineConfig:
    """The typed config of one named pipeline, with ``--set`` overrides applied."""
    pipelines = load_pipelines_file(path)
    if pipeline not in pipelines:
        raise ConfigError(f"unknown pipeline {pipeline!r}; pipelines.yaml has: {', '.join(sorted(pipelines))}")
    data = copy.deepcopy(pipelines[pipeline] or {})
    data.pop("description", None)
    for assignment in overrides:
        apply_override(data, assignment)
    data["name"] = pipeline
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"invalid config for pipeline {pipeline!r}:\n" + _format_errors(e, "")) from None


RUN_CONFIG_FILE = "config.json"   # <run>/config.json: the exact config a run was generated with


def save_run_config(cfg: PipelineConfig, run: str | Path) -> str:
    return RunStore(run).write_text(RUN_CONFIG_FILE, cfg.model_dump_json(indent=1))


def load_run_config(run: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """The config a run was generated with (``<run>/config.json``), with ``--set`` overrides."""
    store = RunStore(run)
    if not store.exists(RUN_CONFIG_FILE):
        raise FileNotFoundError(f"{store.url(RUN_CONFIG_FILE)} not found: is {run} a run folder made by "
                                "`editsynth generate`?")
    data = json.loads(store.read_text(RUN_CONFIG_FILE))
    for assignment in overrides:
        apply_override(data, assignment)
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"invalid config for run {run} after overrides {list(overrides)}:\n"
                          + _format_errors(e, "")) from None
