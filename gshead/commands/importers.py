"""``gshead import``: convert another project's trained checkpoint into a gshead pipeline-weights file.

    gshead import gagavatar CKPT -o WEIGHTS.safetensors [--pipeline YAML]

GAGAvatar (``xg-chu/GAGAvatar``): a ``.pt``/``.pth`` holding ``{'model': state_dict, 'meta_cfg': ...}``
(or a bare state dict), read with ``torch.load(weights_only=True)``; nothing else is unpickled.
Key mapping (see the docstrings of ``dual_plane``, ``dpt``, ``expression_gaussians``, ``style_unet``):

=====================================  =========================================================
GAGAvatar                              gshead pipeline-weights key
=====================================  =========================================================
``base_model.dino_model.<hub name>``   ``encoder.backbone.<transformers name>`` (``hub_to_hf``:
                                       ``attn.qkv`` is split into ``q_proj``/``k_proj``/``v_proj``)
``base_model.<rest>``                  ``lifter.dpt.<rest>``
``gs_generator_l{k}.gaussian_conv.*``  ``lifter.heads.{k}.gaussian_conv.*``
``gs_generator_g.<rest>``              ``driver.<rest>``
``head_base``                          ``driver.head_base`` (needs a 5,023-vertex head model: FLAME)
``upsampler.<rest>``                   ``refiner.<rest>``
``upsampler.toRGB.*``, ``percep_loss.*``  dropped (training only)
=====================================  =========================================================

``meta_cfg`` is checked first (``check_meta``): ``MODEL.NAME`` GAGAvatar, ``DATASET.POINT_PLANE_SIZE``
296, ``FLAME_SCALE`` 5, ``FOCAL_LENGTH`` 12, else one line names what differs and nothing is written.

Every remaining key must land on a tensor of the pipeline's encoder, lifter, driver or refiner
with the same shape, and every tensor of those modules must be covered; otherwise one line
names (a few of) the missing, unexpected and mis-shaped keys and nothing is written.

The output (written atomically) is a safetensors file with tensors ``<slot>.<param>`` (the
modules' float dtype) and metadata ``format: gshead.weights``, ``format_version: 1``,
``pipeline`` (the validated pipeline config as JSON) and ``source``;
``gshead.io.weights.load_pipeline_weights`` and ``gshead reconstruct --weights`` read it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gshead.core.errors import AvatarFileError, ConfigError, require_finite

GAGAVATAR_COMPONENTS = {
    "encoder": "dinov2",
    "lifter": "dual-plane",
    "driver": "expression-gaussians",
    "refiner": "style-unet",
}
FLAME_VERTICES = 5023
DROPPED_PREFIXES = ("percep_loss.", "upsampler.toRGB.")


def default_gagavatar_yaml() -> Path:
    """``configs/gagavatar.yaml`` of the source tree (the official sizes)."""
    path = Path(__file__).resolve().parents[2] / "configs" / "gagavatar.yaml"
    if not path.is_file():
        raise ConfigError(f"{path}: no such file; pass the GAGAvatar pipeline YAML with --pipeline")
    return path


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text[:200] + "...") if len(text) > 200 else (text or type(exc).__name__)


def read_checkpoint(path: Path, with_meta: bool = False):
    """The flat state dict of a GAGAvatar checkpoint (``{'model': sd, ...}`` or bare), weights only;
    ``with_meta``: ``(state dict, meta_cfg or None)``."""
    path = Path(path)
    if not path.is_file():
        raise AvatarFileError(f"{path}: no such checkpoint file")
    from gshead.io.weights import load_weights_only

    obj = load_weights_only(
        path, "checkpoint", AvatarFileError, mmap=True, limit=200,
        expected="a weights-only torch checkpoint (it may be truncated or corrupt)",
    )  # fmt: skip
    meta = None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        meta = obj.get("meta_cfg")
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise AvatarFileError(f"{path}: expected a state dict of tensors (or {{'model': state_dict, ...}})")
    if all(str(k).startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return (dict(obj), meta) if with_meta else dict(obj)


# What gshead reproduces of the official ``meta_cfg`` (``configs/gagavatar.yaml``): other values
# change the model or its geometry in ways a weights file cannot carry.
META_EXPECTED = {
    ("MODEL", "NAME"): "GAGAvatar",
    ("DATASET", "POINT_PLANE_SIZE"): 296,
    ("DATASET", "FLAME_SCALE"): 5.0,
    ("DATASET", "FOCAL_LENGTH"): 12.0,
}


def check_meta(meta: Any, checkpoint: Path) -> None:
    """Refuse (one line) a ``meta_cfg`` that gshead cannot reproduce. ``DATASET.POINT_PLANE_SIZE``
    must be 296 (the official DPT always outputs 296 x 296, and the plane grid must match it);
    ``FLAME_SCALE`` 5 and ``FOCAL_LENGTH`` 12 are the units
    and camera gshead's GAGAvatar config assumes. A missing ``meta_cfg`` (bare state dict) or a
    missing entry is not checked."""
    if meta is None:
        return
    if not isinstance(meta, dict):
        raise AvatarFileError(f"{checkpoint}: meta_cfg is a {type(meta).__name__}, expected a dict")
    wrong = []
    for (section, key), want in META_EXPECTED.items():
        part = meta.get(section)
        if not isinstance(part, dict) or key not in part:
            continue
        got = part[key]
        same = (isinstance(got, (int, float)) and not isinstance(got, bool) and float(got) == float(want)) if not isinstance(
            want, str) else got == want
        if not same:
            wrong.append(f"{section}.{key} = {got!r} (gshead reproduces {want!r})")
    if wrong:
        raise AvatarFileError(f"{checkpoint}: meta_cfg not supported: " + "; ".join(wrong))


def map_gagavatar(state: dict[str, Tensor]) -> tuple[dict[str, dict[str, Tensor]], list[str]]:
    """GAGAvatar keys -> ``{slot: {param: tensor}}`` and the keys that map nowhere.

    ``percep_loss.*`` and ``upsampler.toRGB.*`` are dropped."""
    from gshead.plugins.encoders._vit import hub_to_hf

    slots: dict[str, dict[str, Tensor]] = {s: {} for s in GAGAVATAR_COMPONENTS}
    dino: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, value in state.items():
        if key.startswith(DROPPED_PREFIXES):
            continue
        if key.startswith("base_model.dino_model."):
            dino[key[len("base_model.dino_model.") :]] = value
        elif key.startswith("base_model."):
            slots["lifter"]["dpt." + key[len("base_model.") :]] = value
        elif key.startswith("gs_generator_l") and ".gaussian_conv." in key:
            index, rest = key[len("gs_generator_l") :].split(".", 1)
            if not index.isdigit():
                unknown.append(key)
                continue
            slots["lifter"][f"heads.{index}.{rest}"] = value
        elif key.startswith("gs_generator_g."):
            slots["driver"][key[len("gs_generator_g.") :]] = value
        elif key == "head_base":
            slots["driver"]["head_base"] = value
        elif key.startswith("upsampler."):
            slots["refiner"][key[len("upsampler.") :]] = value
        else:
            unknown.append(key)
    try:
        converted = hub_to_hf(dino)
    except Exception as exc:  # noqa: BLE001 - a qkv that does not split in 3
        raise AvatarFileError(f"GAGAvatar checkpoint: DINOv2 weights do not convert ({_first_line(exc)})") from None
    slots["encoder"] = {"backbone." + k: v for k, v in converted.items()}
    return slots, unknown


def gagavatar_name(slot: str, key: str) -> str:
    """The GAGAvatar key that maps to gshead ``slot``'s ``key``, for error messages (DINOv2 keys,
    renamed and split by ``hub_to_hf``, are shown under gshead's name)."""
    ours = f"{slot}.{key}"
    if slot == "encoder":
        return f"base_model.dino_model.* ({ours})"
    if slot == "lifter" and key.startswith("dpt."):
        theirs = "base_model." + key[len("dpt.") :]
    elif slot == "lifter" and key.startswith("heads."):
        index, rest = key[len("heads.") :].split(".", 1)
        theirs = f"gs_generator_l{index}.{rest}"
    elif slot == "driver":
        theirs = key if key == "head_base" else "gs_generator_g." + key
    elif slot == "refiner":
        theirs = "upsampler." + key
    else:
        return ours
    return f"{theirs} ({ours})"


def _build_pipeline(pipeline_yaml: Path | None):
    import warnings

    from gshead.core.pipeline import Pipeline

    path = pipeline_yaml or default_gagavatar_yaml()
    with warnings.catch_warnings():  # built for its keys and shapes only: a random backbone is expected
        warnings.filterwarnings("ignore", message=".*runs randomly initialised", category=UserWarning)
        return Pipeline.from_yaml(path)


def import_gagavatar(
    checkpoint: Path, output: Path, pipeline_yaml: Path | None = None, *, pipeline: Any = None
) -> dict:
    """Convert a GAGAvatar checkpoint into a pipeline-weights file at ``output``.

    :param pipeline_yaml: the pipeline the weights are for (default ``configs/gagavatar.yaml``).
    :param pipeline: an already built ``Pipeline`` to use instead of building ``pipeline_yaml``
        (its modules' state dicts give the expected keys and shapes; they are not modified).
    :returns: a summary: output path, source, tensors and parameters per slot, dropped keys.
    """
    from safetensors.torch import save_file

    from gshead.core.config import dump_pipeline
    from gshead.io.media import atomic_output, check_output
    from gshead.io.weights import WEIGHTS_FORMAT, WEIGHTS_FORMAT_VERSION, state_dict_problems

    checkpoint, output = Path(checkpoint), Path(output)
    check_output(output, accepts=(".safetensors",), inputs=(checkpoint, pipeline_yaml), what="pipeline weights")
    state, meta = read_checkpoint(checkpoint, with_meta=True)
    check_meta(meta, checkpoint)
    if pipeline is None:
        pipeline = _build_pipeline(pipeline_yaml)
    config: Any = pipeline.config
    wrong = [f"{s} {getattr(config, s).name!r}" for s, n in GAGAVATAR_COMPONENTS.items() if getattr(config, s).name != n]
    if wrong:
        need = ", ".join(f"{s} {n!r}" for s, n in GAGAVATAR_COMPONENTS.items())
        raise ConfigError(f"import gagavatar: the pipeline has {', '.join(wrong)}; GAGAvatar weights need {need}")
    if config.lifter.feature_size != META_EXPECTED[("DATASET", "POINT_PLANE_SIZE")]:
        raise ConfigError(
            f"import gagavatar: the pipeline's lifter.feature_size is {config.lifter.feature_size}; GAGAvatar's "
            "DPT gives 296 x 296 features, so its plane grid must be 296"
        )
    head_base = state.get("head_base")
    vertices = int(pipeline.head_model.template.shape[0])
    if head_base is not None and head_base.dim() == 2 and head_base.shape[0] != vertices:
        raise ConfigError(
            f"import gagavatar: head_base has {head_base.shape[0]} rows (one per FLAME vertex) but the pipeline's "
            f"head model {config.headmodel.name!r} has {vertices} vertices; use headmodel: flame"
        )
    dropped = sorted(k for k in state if k.startswith(DROPPED_PREFIXES))
    slots, unknown = map_gagavatar(state)
    problems = [f"unexpected {len(unknown)} keys: {', '.join(sorted(unknown)[:3])}" + (
        f" (+{len(unknown) - 3} more)" if len(unknown) > 3 else "")] if unknown else []
    owns = {slot: getattr(pipeline, slot).state_dict() for slot in GAGAVATAR_COMPONENTS}
    for slot, own in owns.items():
        problems += state_dict_problems(own, slots[slot], name=lambda k, s=slot: gagavatar_name(s, k))
    if problems:
        raise AvatarFileError(f"{checkpoint}: does not fit the GAGAvatar pipeline: " + "; ".join(problems))

    tensors: dict[str, Tensor] = {}
    for slot, own in owns.items():
        for key, value in slots[slot].items():
            target = own[key]
            value = value.detach()
            if value.dtype != target.dtype:
                value = value.to(target.dtype)
            # A copy of its own: checkpoint tensors may share storage (views, expanded tensors),
            # which safetensors refuses to write.
            tensors[f"{slot}.{key}"] = value.contiguous().clone()
    metadata = {
        "format": WEIGHTS_FORMAT,
        "format_version": WEIGHTS_FORMAT_VERSION,
        "pipeline": dump_pipeline(config),
        "source": f"gagavatar {checkpoint.name}",
    }
    require_finite(tensors, f"{output}: pipeline weights from {checkpoint.name} not written")
    with atomic_output(output) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return {
        "output": str(output),
        "source": metadata["source"],
        "tensors": {s: len(slots[s]) for s in GAGAVATAR_COMPONENTS},
        "parameters": {s: int(sum(v.numel() for v in slots[s].values())) for s in GAGAVATAR_COMPONENTS},
        "dropped": len(dropped),
    }


def cmd_import_gagavatar(args) -> int:
    import json

    torch.set_grad_enabled(False)
    summary = import_gagavatar(
        Path(args.checkpoint), Path(args.output), Path(args.pipeline) if args.pipeline else None
    )
    if args.json:
        print(json.dumps(summary, indent=2))
    total = sum(summary["parameters"].values())
    print(
        f"wrote {summary['output']}: {sum(summary['tensors'].values())} tensors, {total / 1e6:.1f}M parameters "
        f"from {summary['source']} ({summary['dropped']} training-only keys dropped)",
        file=sys.stderr,
    )
    return 0


def add_parser(subparsers) -> None:
    from gshead.commands._help import doc

    p = subparsers.add_parser(
        "import", help="convert another project's checkpoint into a gshead weights file",
        **doc(
            "Convert another project's checkpoint into a gshead pipeline-weights file, which "
            "'gshead reconstruct --weights' and 'gshead eval --weights' load. SOURCE names the project.",
            "gshead import gagavatar GAGAvatar.pt -o gagavatar.safetensors",
        ),
    )  # fmt: skip
    isub = p.add_subparsers(dest="import_command", required=True, metavar="SOURCE")
    g = isub.add_parser(
        "gagavatar", help="a GAGAvatar checkpoint (.pt/.pth) -> pipeline-weights .safetensors",
        **doc(
            "Convert an official GAGAvatar checkpoint (loaded with weights_only=True; percep_loss.* "
            "ignored) into pipeline weights for configs/gagavatar.yaml; every key and shape is checked.",
            "# convert, then reconstruct with the GAGAvatar pipeline\n"
            "gshead import gagavatar GAGAvatar.pt -o gagavatar.safetensors --json",
            "gshead reconstruct portrait.jpg -o portrait.safetensors --pipeline configs/gagavatar.yaml "
            "--weights gagavatar.safetensors",
        ),
    )  # fmt: skip
    g.add_argument(
        "checkpoint", metavar="CHECKPOINT",
        help="GAGAvatar checkpoint ({'model': state_dict, ...} or a bare state dict)",
    )  # fmt: skip
    g.add_argument("-o", "--output", required=True, metavar="FILE", help="pipeline-weights file to write (.safetensors)")
    g.add_argument("--pipeline", metavar="YAML", help="pipeline YAML the weights are for (default: configs/gagavatar.yaml)")
    g.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    g.set_defaults(func=cmd_import_gagavatar)
