"""Training configuration: one dataclass, named presets, and the command line built from both.

Precedence: command line > ``--preset`` > dataclass defaults; validated once by
:meth:`TrainConfig.validate`. Each field's ``help`` is its documentation (shown by ``--help``).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from inrflow.domains import DOMAINS
from inrflow.train.optim import LR_SCHEDULES

__all__ = ["PRESETS", "TrainConfig", "build_parser", "parse_args"]


# Options whose command-line name is not the field name: the name the sampling and evaluation
# CLIs use for the same thing (``--points``). The field name stays what checkpoints store.
FLAGS = {"num_points": "--points"}


def flag(name: str) -> str:
    """The command-line option of :class:`TrainConfig` field ``name``."""
    return FLAGS.get(name, "--" + name.replace("_", "-"))


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Everything a training run needs; saved with every checkpoint."""

    # --- what to train --------------------------------------------------------------------------
    data: str = _f(
        "digits",
        "a bundled dataset (digits, shapes, proteins) or a path: a folder of images "
        "(subfolders = classes), of .npy/.npz point clouds (optionally with condition tokens), "
        "or of PDB/mmCIF files; several, comma-separated (e.g. digits,shapes), co-train one "
        "model on all of them (docs/COTRAINING.md)",
    )
    domain_weights: str | None = _f(
        None,
        "co-training: steps per cycle of each dataset of --data, e.g. digits=2,shapes=5 (each "
        "cycle trains every dataset exactly that many steps, in a seeded order); default: the "
        "steps of their demo presets, reduced (else equal)",
    )
    size: str = _f("S", "model preset: tiny|S|B|L|XL (point clouds: tiny|B|L|XL)")
    task: str | None = _f(
        None,
        "a domain (image|pointcloud|protein); default: what --data holds. --task protein "
        "without --data or --preset runs the bundled protein demo (--preset protein)",
    )
    model: dict = field(
        default_factory=dict,
        metadata={"help": "model config overrides, e.g. --model hidden=128,depth=4,num_latents=16"},
    )
    class_conditional: bool = _f(True, "use the dataset's class labels (CFG needs them)")
    resolution: int | None = _f(None, "image side after resize + centre crop (digits: 8)")
    num_points: int | None = _f(None, "points per point cloud (default 2048; shapes: 512)")
    channels: int = _f(3, "image channels: 3 (RGB) or 1 (greyscale); digits are greyscale")
    hflip: bool = _f(True, "random horizontal flips of images")
    field_resolution: int | None = _f(
        None,
        "images: read each image at this side (>= --resolution) and train at random continuous "
        "coordinates valued bilinearly from it, not at the pixel centres, so that the model "
        "learns what lies between pixels (sampling above the training resolution: "
        "docs/RESOLUTION.md); an item then holds 2 x resolution^2 pairs (see --num-context, "
        "--num-queries); none = pixel centres",
    )
    normalization: str = _f("shape_bbox", "point-cloud normalisation: shape_bbox|shape_unit|none")
    num_queries: int | None = _f(None, "pairs decoded per sample for the loss (CICFM); none = all")
    num_context: int | None = _f(None, "pairs the encoder sees per sample; none = all")
    max_residues: int | None = _f(
        None, "proteins: residues per sample = latents (default: the longest chain); crops"
    )
    residue_embeddings: str | None = _f(
        None,
        "proteins: .npz of precomputed per-residue embeddings, one [L, E] array per chain "
        "(file stem), used instead of the learned residue-type table",
    )
    protein_frame: str = _f(
        "principal",
        "proteins: orientation of the target positions: principal (the canonical frame of the "
        "chain's CA atoms) or file (as deposited, centred)",
    )
    rotate: bool = _f(
        False,
        "proteins: randomly rotate every training sample (augmentation on top of the frame); "
        "shapes: give every instance its own random orientation (default: canonical poses)",
    )

    # --- optimisation (the paper's values) ------------------------------------------------------
    steps: int = _f(100_000, "total optimizer steps of the run (a resumed run continues to it)")
    batch_size: int = _f(256, "global batch: samples per step summed over all processes")
    lr: float = _f(1e-4, "AdamW learning rate")
    betas: tuple = _f((0.9, 0.999), "AdamW betas, e.g. --betas 0.9,0.999")
    eps: float = _f(1e-8, "AdamW epsilon")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    warmup_steps: int = _f(0, "linear learning-rate warm-up steps (0: none)")
    lr_schedule: str = _f(
        "constant",
        "learning rate after the warm-up: constant (the paper's), or cosine|linear decay to 0 "
        "at --steps",
    )
    grad_clip: float = _f(2.0, "clip the global gradient norm to this (0: off)")
    ema_decay: float = _f(0.999, "EMA of the weights used for sampling, updated every step")
    label_dropout: float = _f(
        0.1, "probability of replacing a label / condition tokens by the null ones (CFG)"
    )
    time_dist: str = _f("logit_normal", "training times: logit_normal|uniform")
    time_loc: float = _f(
        0.0,
        "location of the logit-normal training times: > 0 draws more times near the data end "
        "(t = 1), where a point cloud's surface detail is decided",
    )
    pairing: str = _f(
        "random",
        "point clouds: random|ot. ot matches each cloud's noise points to its data points "
        "one-to-one (least squared distance) before interpolating: straighter, uncrossed paths",
    )
    seed: int = _f(0, "seed of the initial weights and of the data stream")

    # --- system ---------------------------------------------------------------------------------
    device: str = _f("auto", "cpu|cuda|auto (cuda when available); cpu uses gloo, cuda nccl")
    precision: str = _f("auto", "bf16|fp32|auto (bf16 mixed precision on GPUs, fp32 on CPUs)")
    compile: bool = _f(False, "torch.compile the whole model (encoder, trunk blocks, decoder)")
    activation_checkpointing: bool = _f(False, "recompute the trunk blocks in backward")
    workers: int = _f(4, "data-loading worker processes per rank (0: load in the main process)")
    threads: int | None = _f(None, "intra-op CPU threads per process (default: torch's choice)")
    dist_timeout: float = _f(
        1800.0,
        "seconds a collective waits for the other processes before the run fails (a paused or "
        "dead rank ends the run after this long)",
    )
    stall_factor: float = _f(
        10.0,
        "rank 0 warns when a step has taken this many times the recent median step time "
        "(and at least --stall-seconds): a rank may be paused or stuck (0: off)",
    )
    stall_seconds: float = _f(60.0, "the shortest step time --stall-factor warns about")

    # --- output ---------------------------------------------------------------------------------
    out: str = _f("runs/inrflow", "run folder: checkpoints/, samples/, metrics.csv, tensorboard/")
    ckpt_every: int = _f(
        5000,
        "save a checkpoint every N steps (and at the end, and on SIGTERM/SIGINT); 0: only those",
    )
    keep_ckpts: int = _f(3, "keep the newest K checkpoints")
    resume: bool = _f(
        False,
        "continue from the newest valid checkpoint in --out (the demo presets set it, so running "
        "their command again continues or re-finishes their run)",
    )
    overwrite: bool = _f(
        False,
        "delete the previous run's files in --out (checkpoints, logs, samples) and start again "
        "at step 0; without --resume or --overwrite a run folder already used is refused",
    )
    verify_checksums: bool = _f(True, "check every checkpoint file's CRC32 before loading it")
    log_every: int = _f(50, "progress-bar, TensorBoard and console scalars every N steps")
    progress: bool | None = _f(
        None,
        "a progress bar (--progress) or a line every --log-every steps (--no-progress); "
        "default: the bar when stdout is a terminal, lines otherwise (job logs)",
    )
    tensorboard: bool = _f(True, "write TensorBoard scalars (needs the tensorboard package)")
    peak_tflops: float | None = _f(
        None,
        "the device's peak TFLOP/s for the MFU in the logs (default: the bf16 tensor-core peak of "
        "an A100/H100/H200 from a table; MFU is n/a on other devices, e.g. CPUs)",
    )
    sample_every: int = _f(10_000, "write an EMA sample grid / PLY files every N steps (0: off)")
    num_samples: int = _f(16, "samples in each periodic grid")
    sample_steps: int = _f(50, "sampler steps for the periodic and final samples")
    sample_method: str = _f("euler", "sampler: euler|heun|sde")
    cfg_scale: float = _f(1.0, "classifier-free guidance scale of the periodic/final samples")
    final_samples: int = _f(
        0, "class-conditional samples drawn (and scored, for digits) at the end of the run"
    )
    max_nonfinite: int = _f(
        20,
        "stop with an error after this many non-finite steps in a row (noticed when the steps "
        "are next read: every --log-every steps and before a checkpoint)",
    )
    profile: bool = _f(
        False,
        "profile a bounded window: --profile-wait steps, then --profile-steps measured steps, "
        "then stop (no checkpoint, no samples). CUDA: NVTX ranges and cudaProfilerStart/Stop "
        "around the window (nsys --capture-range=cudaProfilerApi); CPU: a torch.profiler trace "
        "in --out/profile (see docs/PERFORMANCE.md)",
    )
    profile_wait: int = _f(5, "steps run before the profiled window (warm-up, compilation)")
    profile_steps: int = _f(5, "steps in the profiled window")
    profile_trace: str = _f(
        "auto",
        "auto|on|off: also record the window with torch.profiler (Chrome trace + op summary in "
        "--out/profile); auto = on for the CPU, off on CUDA (it would compete with Nsight)",
    )
    profile_nvtx_ops: bool = _f(
        False, "wrap the window in torch.autograd.profiler.emit_nvtx: an NVTX range per aten op"
    )

    given: tuple = field(
        default=(),
        metadata={
            "help": "the per-dataset fields set on the command line: a co-training run takes "
            "them over its datasets' demo presets (set by parse_args, no option of its own)",
            "cli": False,
        },
    )

    # ---------------------------------------------------------------------------------------------
    def validate(self) -> TrainConfig:
        """Reject contradictory or out-of-range settings with a message naming the option."""

        def bad(msg: str) -> None:
            raise ValueError(f"invalid configuration: {msg}")

        if self.steps < 1:
            bad(f"--steps must be >= 1, got {self.steps}")
        names = self.data.split(",")
        if self.cotraining and (len(set(names)) != len(names) or not all(names)):
            bad(f"--data names each co-trained dataset once, got {self.data!r}")
        if self.domain_weights is not None and not self.cotraining:
            bad("--domain-weights needs several datasets in --data (co-training)")
        if self.batch_size < 1:
            bad(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.lr <= 0:
            bad(f"--lr must be > 0, got {self.lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            bad(f"--betas must be two numbers in [0, 1), got {self.betas}")
        if self.lr_schedule not in LR_SCHEDULES:
            bad(f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.lr_schedule != "constant" and self.cotraining:
            bad("--lr-schedule: co-training runs use a constant learning rate after the warm-up")
        if not 0 <= self.ema_decay < 1:
            bad(f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        if not 0 <= self.label_dropout < 1:
            bad(f"--label-dropout must be in [0, 1), got {self.label_dropout}")
        if self.device not in ("cpu", "cuda", "auto"):
            bad(f"--device must be cpu, cuda or auto, got {self.device!r}")
        if self.precision not in ("bf16", "fp32", "auto"):
            bad(f"--precision must be bf16, fp32 or auto, got {self.precision!r}")
        if self.task is not None and self.task not in DOMAINS:
            bad(f"--task must be one of {', '.join(DOMAINS)}, got {self.task!r}")
        if self.time_dist not in ("logit_normal", "uniform"):
            bad(f"--time-dist must be logit_normal or uniform, got {self.time_dist!r}")
        if self.pairing not in ("random", "ot"):
            bad(f"--pairing must be random or ot, got {self.pairing!r}")
        if self.protein_frame not in ("principal", "file"):
            bad(f"--protein-frame must be principal or file, got {self.protein_frame!r}")
        if self.sample_method not in ("euler", "heun", "sde"):
            bad(f"--sample-method must be euler, heun or sde, got {self.sample_method!r}")
        for name in (
            "num_queries",
            "num_context",
            "resolution",
            "field_resolution",
            "num_points",
            "max_residues",
        ):
            v = getattr(self, name)
            if v is not None and v < 1:
                bad(f"{flag(name)} must be >= 1, got {v}")
        for name in ("ckpt_every", "sample_every", "final_samples", "workers", "warmup_steps"):
            if getattr(self, name) < 0:
                bad(f"{flag(name)} must be >= 0")
        if self.profile_wait < 0 or self.profile_steps < 1:
            bad("--profile-wait must be >= 0 and --profile-steps >= 1")
        if self.profile_trace not in ("auto", "on", "off"):
            bad(f"--profile-trace must be auto, on or off, got {self.profile_trace!r}")
        if self.keep_ckpts < 1:
            bad(f"--keep-ckpts must be >= 1, got {self.keep_ckpts}")
        if self.log_every < 1 or self.max_nonfinite < 1:
            bad("--log-every and --max-nonfinite must be >= 1")
        if self.peak_tflops is not None and not self.peak_tflops > 0:
            bad(f"--peak-tflops must be > 0, got {self.peak_tflops}")
        if self.resume and self.overwrite:
            bad("--resume continues the run in --out, --overwrite deletes it: pass one of them")
        if not self.dist_timeout > 0:
            bad(f"--dist-timeout must be > 0 seconds, got {self.dist_timeout}")
        if not (self.stall_factor >= 0 and self.stall_seconds >= 0):
            bad("--stall-factor and --stall-seconds must be >= 0")
        return self

    @property
    def cotraining(self) -> bool:
        """Several datasets in ``--data``: one model co-trained on all of them."""
        return "," in self.data

    def domain_names(self) -> tuple[str, ...]:
        """The datasets of ``--data``: the domain names of a co-training run."""
        return tuple(self.data.split(","))

    def domain_options(self, name: str) -> TrainConfig:
        """The options of dataset ``name`` of a co-training run.

        The fields of :data:`DOMAIN_FIELDS` (the data, the model preset, the batch, learning
        rate and flow-matching draws, the samples and their scores) come from the demo preset
        of that bundled dataset where there is one and the command line does not set them
        (``given``), else from this config; every other field
        (steps, seed, optimizer, EMA, output, ...) is the run's. ``model`` overrides are the
        preset's updated by this config's (which must make the shared widths agree)."""
        preset = next((p for p in PRESETS.values() if p.get("data") == name), {})
        fields = {k: preset[k] for k in DOMAIN_FIELDS if k in preset and k not in self.given}
        fields["model"] = {**preset.get("model", {}), **self.model}
        return dataclasses.replace(self, data=name, domain_weights=None, **fields)

    def data_options(self) -> dict[str, Any]:
        """The data options, as :func:`inrflow.domains.build_dataset` takes them."""
        names = ("resolution", "num_points", "hflip", "field_resolution", "channels")
        names += ("normalization", "max_residues", "residue_embeddings", "protein_frame", "rotate")
        return {k: getattr(self, k) for k in names}

    def param_dtype(self, device: Any) -> Any:
        """The dtype FSDP2 gathers parameters in (None: as stored, fp32); ``auto``: bf16 on
        CUDA."""
        import torch

        p = self.precision
        if p == "auto":
            p = "bf16" if device.type == "cuda" else "fp32"
        return torch.bfloat16 if p == "bf16" else None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: The fields a co-training run takes per dataset from its demo preset
#: (:meth:`TrainConfig.domain_options`).
DOMAIN_FIELDS = (
    "task",
    "size",
    "class_conditional",
    "resolution",
    "num_points",
    "channels",
    "hflip",
    "field_resolution",
    "normalization",
    "num_queries",
    "num_context",
    "max_residues",
    "residue_embeddings",
    "protein_frame",
    "rotate",
    "batch_size",
    "lr",
    "label_dropout",
    "time_dist",
    "time_loc",
    "pairing",
    "workers",
    "num_samples",
    "sample_steps",
    "sample_method",
    "cfg_scale",
    "final_samples",
)

# ------------------------------------------------------------------------------------------------
# Presets: the paper's runs and the bundled demos. Paths are placeholders for --data.
# ------------------------------------------------------------------------------------------------

PRESETS: dict[str, dict[str, Any]] = {
    # ImageNet 256, class-conditional: XL with RoPE, batch 512 for 1.7M steps (paper Tab. 2/3)
    "imagenet256": dict(
        size="XL",
        resolution=256,
        batch_size=512,
        steps=1_700_000,
        num_queries=16384,
        ckpt_every=10_000,
        sample_every=10_000,
        cfg_scale=1.5,
        workers=8,
    ),
    # FFHQ / LSUN-Church 256, unconditional: L, batch 256, 200k steps
    "ffhq256": dict(
        size="L",
        resolution=256,
        batch_size=256,
        steps=200_000,
        num_queries=16384,
        ckpt_every=10_000,
        sample_every=10_000,
        class_conditional=False,
        hflip=True,
        workers=8,
    ),
    "lsun256": dict(
        size="L",
        resolution=256,
        batch_size=256,
        steps=200_000,
        num_queries=16384,
        ckpt_every=10_000,
        sample_every=10_000,
        class_conditional=False,
        workers=8,
    ),
    # ShapeNet, unconditional 2048-point clouds: B (108M), batch 16, 800k steps, all points decoded
    "shapenet": dict(
        size="B",
        task="pointcloud",
        num_points=2048,
        batch_size=16,
        steps=800_000,
        ckpt_every=5_000,
        sample_every=5_000,
        class_conditional=False,
        workers=4,
    ),
    # The one-command CPU demo: class-conditional 8x8 digits, ~0.2M parameters, 1200 steps.
    # CFG 1.5: on one checkpoint, 500 samples per scale gave (accuracy, within-class diversity
    # relative to real digits, FD-digits) 1.0: 0.946/0.95/1.3, 1.5: 0.992/0.84/2.5,
    # 2: 0.998/0.76/5.8, 3: 1.000/0.65/12.0 -- guidance beyond 1.5 buys little accuracy with
    # much diversity. One intra-op thread: on a busy 2-core machine two OpenMP threads were
    # 5x slower than one. EMA 0.995 (not the paper's 0.999, whose ~1000-step memory still
    # remembers the untrained model at the end of so short a run).
    "digits": dict(
        data="digits",
        size="tiny",
        resolution=8,
        channels=1,
        hflip=False,
        model=dict(
            hidden=64,
            depth=3,
            heads=4,
            num_latents=16,
            encoder_heads=4,
            num_freqs=8,
            max_log2=3.0,
            rel_num_freqs=4,
            rel_max_log2=2.0,
            time_freq_dim=64,
        ),
        batch_size=32,
        steps=1200,
        lr=2e-3,
        ema_decay=0.995,
        num_queries=32,
        workers=0,
        threads=1,
        ckpt_every=400,
        log_every=50,
        sample_every=400,
        num_samples=100,
        sample_steps=25,
        cfg_scale=1.5,
        final_samples=500,
        out="runs/digits",
        resume=True,  # the one-command demo: running it again continues its run
    ),
    # Point-cloud demo: 7 classes of generated surfaces in canonical poses (random proportions
    # per instance), 256 points. Each cloud's noise is matched to its points (OT pairing: paired
    # at random, the flow only learned blobs) and the training times lean to the data end, where
    # the surface detail is decided. Scored at the end on 20 samples per class (docs/DOMAINS.md,
    # README); CFG 1.5 balances recognition (higher with more guidance) against 1-NNA (lower
    # with less). 5000 steps: the late-time loss still falls at 3000; mean per-class 1-NNA of
    # seeds 0/1/2 went from 71.4/68.6/56.1% at 3000 steps to 66.4/63.6/59.3%. The matching
    # (~0.19 s of CPU per batch) costs more than the model's step (~0.1 s), so two data-loading
    # workers share it with the training thread on the two cores.
    "shapes": dict(
        data="shapes",
        size="tiny",
        num_points=256,
        batch_size=16,
        steps=5000,
        lr=1e-3,
        ema_decay=0.995,
        pairing="ot",
        time_loc=1.0,
        workers=2,
        threads=1,
        ckpt_every=1000,
        log_every=100,
        sample_every=1000,
        num_samples=28,
        sample_steps=50,
        cfg_scale=1.5,
        final_samples=140,
        out="runs/shapes",
        resume=True,  # the one-command demo: running it again continues its run
    ),
    # Protein demo: the 50 single-chain structures of MDAnalysisTests (45 train, 5 held out),
    # one latent per residue (176), all ~1400 heavy atoms in the context, 512 decoded per sample.
    # Every 2000 steps and at the end, one sampled structure per chain is scored (Cα lDDT,
    # TM-score) on training and held-out chains; at the end beside the untrained model and
    # idealised chains. Uniform training times: memorising a chain is learning its structure
    # from the sequence alone, the t ~ 0 end that logit-normal times rarely visit (training-chain
    # lDDT after 600 steps 0.23 with uniform times, 0.19 with logit-normal; docs/DOMAINS.md).
    # A constant learning rate of 2e-3: the training chains are told apart only late in the run,
    # and the higher rate brings that on sooner (training-chain lDDT after 8000 steps 0.43 with
    # 2e-3, 0.33 with 1e-3), while a cosine decay over the run slowed it (0.23; docs/DOMAINS.md).
    "protein": dict(
        data="proteins",
        task="protein",
        size="tiny",
        model=dict(hidden=64, depth=3, heads=4, encoder_heads=4, time_freq_dim=64),
        class_conditional=False,
        batch_size=4,
        steps=8000,
        lr=2e-3,
        time_dist="uniform",
        ema_decay=0.995,
        num_queries=512,
        workers=0,
        threads=1,
        ckpt_every=2000,
        log_every=50,
        sample_every=2000,
        sample_steps=50,
        out="runs/protein",
        resume=True,  # the one-command demo: running it again continues its run
    ),
    # Co-training demo: the digits and shapes demos in one model, each domain with its own
    # preset's data, batch, learning rate, flow-matching draws and final scores. The trunk has
    # the shapes demo's depth (2; digits alone: 3): a third block would make the shapes steps,
    # 5/7 of the run, about 1.5x as slow (measured, docs/COTRAINING.md) and the demo no longer
    # fit 20 minutes on 2 cores. Weights 2:5 over 4200 steps give each domain the steps of the
    # single-domain demos it was measured against (1200 digits, 3000 shapes: the shapes demo's
    # length then, 5000 now), so those runs are the yardstick.
    "cotrain": dict(
        data="digits,shapes",
        domain_weights="digits=2,shapes=5",
        size="tiny",
        model=dict(depth=2),
        steps=4200,
        ema_decay=0.995,
        threads=1,
        ckpt_every=1400,
        log_every=100,
        sample_every=1400,
        out="runs/cotrain",
        resume=True,  # the one-command demo: running it again continues its run
    ),
}


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------


def _parse_optional_int(text: str) -> int | None:
    return None if text.lower() in ("none", "all", "") else int(text)


def _parse_overrides(text: str) -> dict[str, Any]:
    """``hidden=128,depth=4,latent_grid=(4,4)`` -> dict (values are Python literals)."""
    out: dict[str, Any] = {}
    depth, start, parts = 0, 0, []
    for i, ch in enumerate(text):  # split on commas outside brackets
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    for part in filter(None, (p.strip() for p in parts)):
        key, sep, value = part.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected key=value in --model, got {part!r}")
        try:
            out[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            out[key.strip()] = value.strip()  # a bare word, e.g. encoder=perceiver
    return out


def _parse_floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(","))


def build_parser(prog: str = "train.py", description: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="start from a named configuration; other options override it",
    )
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.metadata.get("cli") is False:
            continue
        tp = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kind: dict[str, Any]
        if tp is bool or _optional_of(tp) is bool:
            kind = dict(action=argparse.BooleanOptionalAction)
        elif f.name == "model":
            kind = dict(type=_parse_overrides, metavar="K=V,...")
        elif f.name == "betas":
            kind = dict(type=_parse_floats, metavar="B1,B2")
        elif _optional_of(tp) is int:
            kind = dict(type=_parse_optional_int, metavar="N|none")
        else:
            kind = dict(type=_optional_of(tp) or tp, metavar=f.name.upper())
        help_text = f"{f.metadata['help']} (default: {_show(default)})"
        parser.add_argument(flag(f.name), dest=f.name, help=help_text, **kind)
        own = "--" + f.name.replace("_", "-")
        if flag(f.name) != own:  # the field's own spelling still works, unlisted
            parser.add_argument(own, dest=f.name, help=argparse.SUPPRESS, **kind)
    return parser


def _optional_of(tp: Any) -> Any:
    args = typing.get_args(tp)
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        rest = [a for a in args if a is not type(None)]
        return rest[0] if len(rest) == 1 else None
    return None


def _show(v: Any) -> str:
    if isinstance(v, dict):
        return ",".join(f"{k}={x}" for k, x in v.items()) or "none"
    if isinstance(v, tuple):
        return ",".join(str(x) for x in v)
    return str(v)


def parse_args(
    argv: list[str] | None = None, prog: str = "train.py", description: str | None = None
) -> TrainConfig:
    """Command line -> validated :class:`TrainConfig` (preset first, then explicit options)."""
    ns = vars(build_parser(prog, description).parse_args(argv))
    values: dict[str, Any] = {}
    preset = ns.pop("preset", None)
    if preset is None and ns.get("task") == "protein" and "data" not in ns:
        preset = "protein"  # --task protein alone: the bundled protein demo
    if preset is not None:
        values.update(PRESETS[preset])
    if ns.get("overwrite") and "resume" not in ns:
        values["resume"] = False  # --overwrite beats a preset's resume
    model_overrides = {**values.get("model", {}), **ns.pop("model", {})}
    values["given"] = tuple(k for k in DOMAIN_FIELDS if k in ns)
    values.update(ns)
    values["model"] = model_overrides
    return TrainConfig(**values).validate()
