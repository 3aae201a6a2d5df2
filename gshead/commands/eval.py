"""``gshead eval``: self- and cross-reenactment metrics of a pipeline on a dataset folder.

    gshead eval DATASET [--pipeline YAML] [--weights FILE] [--split test] [--protocol self|cross|both]
                        [--targets N] [--max-samples N] [--seed S]
                        [--lpips-backbone VGG_PATH --lpips-lin LIN_PATH] [--identity-model PATH]
                        [--tracker NAME|none] [--method NAME] [--baseline] [--device cpu|cuda|auto]
                        [-o DIR] [-q]

DATASET is a folder written by ``gshead.data`` (synthetic or converted videos). The results
(``results.md``, ``results.csv``, ``results.json``, ``per_frame.csv``; see
``gshead.eval.protocols``) go to ``-o DIR`` (default ``eval-results``), each written atomically.

Metrics that need a model run only when its local file is given: LPIPS with ``--lpips-backbone``
(torchvision-layout VGG16) and ``--lpips-lin`` (the lpips package's ``vgg.pth``), CSIM with
``--identity-model`` (an ArcFace IResNet state dict). AKD/APD/AED use ``--tracker`` (default
``mediapipe``; ``none`` skips them). Anything skipped is shown as ``–`` with a note saying why.
``--baseline`` adds a row for the trivial baseline that returns the source portrait unchanged,
so a trained pipeline can show that it beats it.

    gshead eval portraits IMAGE... [-o DIR] [--pipeline YAML] [--weights FILE] [--fit-steps N]
                          [--fit-lr LR] [--frames N] [--orbit-frames N] [--orbit-degrees D]
                          [--device cpu|cuda|auto] [-q]

The ``portraits`` mode judges real portraits, which have no ground truth (``gshead.eval.portraits``):
each is reconstructed (and fitted for ``--fit-steps``), driven through the demo motion and an
orbit, and every frame is re-read by dlib's detector, 68-point landmarks and face descriptor (the
``judge`` extra; ``–`` where it is missing). Results go to ``-o DIR`` (default
``eval-portraits``): ``results.md``, ``results.csv``, ``results.json`` and a contact sheet
``<portrait>.png`` each. A dataset folder that is itself named ``portraits`` is evaluated as a
dataset when no IMAGE follows it; ``./portraits`` always names the folder.
"""

from __future__ import annotations

from gshead.commands._help import WEIGHTS_HELP

import sys
from pathlib import Path

PROTOCOLS = {"self": ("self",), "cross": ("cross",), "both": ("self", "cross")}
DEFAULT_OUTPUT = "eval-results"
BASELINE = "source (baseline)"
"""Row name of the trivial baseline (``--baseline``): the source portrait returned unchanged."""


def _metric_tracker(name: str, pipeline):
    """(tracker or None, reason it is None) for AKD/APD/AED, built with the pipeline's head model."""
    import torch

    from gshead.core.errors import ConfigError
    from gshead.core.registry import get_registry

    if name == "none":
        return None, "no tracker (--tracker none)"
    if name == "frontal":
        return (
            None,
            "tracker 'frontal' fits nothing (neutral parameters for every image); use --tracker mediapipe",
        )
    spec = get_registry().get("tracker", name)
    reason = spec.config_class.unavailable()  # every config class is a TrackerConfig (the registry checks)
    if reason:
        return None, f"tracker {name!r} is unavailable: {reason}"
    fields = {"name": name}
    if "no_face" in spec.config_class.model_fields:
        fields["no_face"] = "neutral"  # an output without a detectable face is counted, not fatal
    head = pipeline.config.headmodel.name
    try:
        tracker = spec.build(spec.config_class.model_validate(fields), pipeline.context)
    except ConfigError as exc:  # e.g. a head model without the landmarks this tracker fits
        return None, f"tracker {name!r} cannot fit head model {head!r} ({exc})"
    if isinstance(tracker, torch.nn.Module):
        tracker.eval()
    return tracker, ""


def build_suite(args, pipeline):
    """The ``MetricSuite`` the arguments ask for (models loaded from local files only)."""
    from gshead.core.errors import InputError
    from gshead.eval.protocols import MetricSuite

    reasons: dict[str, str] = {}
    lpips = None
    if bool(args.lpips_backbone) != bool(args.lpips_lin):
        given, missing = (
            ("--lpips-backbone", "--lpips-lin")
            if args.lpips_backbone
            else ("--lpips-lin", "--lpips-backbone")
        )
        raise InputError(f"{given} was given without {missing}; LPIPS needs both files")
    if args.lpips_backbone:
        from gshead.metrics.lpips import load_lpips

        lpips = load_lpips(args.lpips_backbone, args.lpips_lin)
    identity = None
    if args.identity_model:
        from gshead.metrics.face import load_identity_model

        identity = load_identity_model(args.identity_model)
    tracker, why = _metric_tracker(args.tracker, pipeline)
    if tracker is None:
        reasons["tracker"] = why
    return MetricSuite(lpips=lpips, identity=identity, tracker=tracker, reasons=reasons)


PORTRAITS = "portraits"
"""The first positional argument that selects the portrait mode (``gshead eval portraits IMAGE...``)."""
DEFAULT_PORTRAITS_OUTPUT = "eval-portraits"


def _portrait_mode(args) -> bool:
    """True for ``gshead eval portraits IMAGE...``; a lone ``portraits`` that names a folder is a
    dataset (``./portraits`` always is)."""
    from gshead.core.errors import InputError

    if args.dataset != PORTRAITS:
        if args.images:
            raise InputError(
                f"eval {args.dataset}: unexpected arguments {' '.join(args.images)!r}; a dataset takes "
                f"one folder (for portraits: gshead eval {PORTRAITS} IMAGE...)"
            )
        return False
    if args.images:
        return True
    if Path(PORTRAITS).is_dir():
        return False
    raise InputError(f"eval {PORTRAITS}: expected at least one portrait image (gshead eval {PORTRAITS} IMAGE... -o DIR)")


def cmd_eval(args) -> int:
    if _portrait_mode(args):
        return cmd_eval_portraits(args)
    if args.output is None:
        args.output = DEFAULT_OUTPUT
    return _cmd_eval_dataset(args)


def cmd_eval_portraits(args) -> int:
    """``gshead eval portraits IMAGE...``: the independent judge on real portraits."""
    import shlex

    import torch

    from gshead.commands._progress import progress
    from gshead.core.config import default_pipeline_path
    from gshead.core.errors import InputError, require_int, require_number
    from gshead.core.pipeline import Pipeline
    from gshead.eval import portraits as judge_protocol
    from gshead.io.media import check_output
    from gshead.io.weights import load_pipeline_weights

    output = args.output or DEFAULT_PORTRAITS_OUTPUT
    if args.fit_steps < 0:
        raise InputError(f"--fit-steps {args.fit_steps}: expected a whole number >= 0 (0 = no fitting)")
    require_number(args.fit_lr, "--fit-lr", 1e-12, 1e6, "learning rate")
    require_int(args.frames, "--frames", 4, 100_000, "frames")
    require_int(args.orbit_frames, "--orbit-frames", 1, 100_000, "frames")
    if not 0.0 <= args.orbit_degrees <= 180.0:
        raise InputError(f"--orbit-degrees {args.orbit_degrees:g}: expected 0 to 180 degrees")
    check_output(output, folder=True, inputs=(*args.images, args.weights, args.pipeline), what="evaluation results")
    from gshead.commands._device import pipeline_to, resolve_device

    device = resolve_device(getattr(args, "device", "cpu"))
    torch.set_grad_enabled(False)
    reason = judge_protocol.judge_unavailable()
    judge = judge_protocol.Judge() if reason is None else None
    if reason:
        print(f"note: {reason}; the judge's measures are shown as '-'", file=sys.stderr)
    # Every portrait is read (and its face found) before any model is built.
    portraits = judge_protocol.read_portraits(args.images, judge)
    pipeline = Pipeline.from_yaml(args.pipeline or default_pipeline_path())
    if args.weights:
        load_pipeline_weights(pipeline, args.weights)
    pipeline = pipeline_to(pipeline, device)
    results, sheets = [], {}
    per = judge_protocol.frames_per_portrait(args.frames, args.orbit_frames)
    with progress(total=per * len(portraits), desc="eval portraits", unit="frame", disable=args.quiet) as bar:
        for portrait in portraits:
            bar.set_postfix_str(portrait.name)
            with progress(
                total=args.fit_steps, desc=f"fit {portrait.name}", unit="step", leave=False,
                disable=args.quiet or not args.fit_steps,
            ) as fit_bar:  # fmt: skip

                def on_fit_step(step: int, loss: float) -> None:
                    fit_bar.set_postfix_str(f"loss {loss:.4f}", refresh=False)
                    fit_bar.update()

                result, sheet = judge_protocol.evaluate_portrait(
                    pipeline, portrait.to(device), judge, fit_steps=args.fit_steps, fit_lr=args.fit_lr,
                    demo_frames=args.frames, orbit_frames=args.orbit_frames,
                    orbit_degrees=args.orbit_degrees, step=bar.update, on_fit_step=on_fit_step,
                )  # fmt: skip
            results.append(result)
            sheets[portrait.name] = sheet
    command = ["gshead", "eval", PORTRAITS, *args.images, "-o", str(output)]
    for flag, value, default in (
        ("--pipeline", args.pipeline, None), ("--weights", args.weights, None),
        ("--fit-steps", args.fit_steps, 0), ("--frames", args.frames, judge_protocol.DEMO_FRAMES),
        ("--orbit-frames", args.orbit_frames, judge_protocol.ORBIT_FRAMES),
        ("--orbit-degrees", args.orbit_degrees, judge_protocol.ORBIT_DEGREES),
    ):  # fmt: skip
        if value is not None and value != default:
            command += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    info = {
        "command": shlex.join(command),
        "pipeline": str(args.pipeline or "default"),
        "weights": str(args.weights) if args.weights else None,
        "fit_steps": args.fit_steps,
        "fit_lr": args.fit_lr,
        "demo_frames": args.frames,
        "orbit_frames": args.orbit_frames,
        "orbit_degrees": args.orbit_degrees,
        "judge": None if judge is None else "dlib (HOG detector, 68-point predictor, ResNet descriptor)",
    }
    paths = judge_protocol.write_portrait_results(output, results, sheets, info)
    if not args.quiet:
        print((Path(output) / "results.md").read_text(encoding="utf-8"), file=sys.stderr)
    print(f"wrote {', '.join(str(p) for p in paths)}", file=sys.stderr)
    return 0


def _cmd_eval_dataset(args) -> int:
    import torch

    from gshead.commands._progress import progress
    from gshead.core.config import default_pipeline_path
    from gshead.core.errors import InputError
    from gshead.core.pipeline import Pipeline
    from gshead.data import ReenactmentDataset
    from gshead.eval.protocols import MethodResults, evaluate, source_baseline, write_results
    from gshead.io.media import check_output
    from gshead.io.weights import load_pipeline_weights

    from gshead.commands._device import module_to, pipeline_to, resolve_device

    check_output(args.output, folder=True, what="evaluation results")
    device = resolve_device(args.device)
    if args.max_samples is not None and args.max_samples < 1:
        raise InputError(f"--max-samples {args.max_samples}: expected at least 1")
    if args.targets < 1:
        raise InputError(f"--targets {args.targets}: expected at least 1 target frame per sample")
    torch.set_grad_enabled(False)
    # Open the dataset first: a missing or foreign folder is named before any model is built.
    datasets = {
        protocol: ReenactmentDataset(
            args.dataset, args.split, targets=args.targets, seed=args.seed, cross=protocol == "cross"
        )
        for protocol in PROTOCOLS[args.protocol]
    }
    pipeline = Pipeline.from_yaml(args.pipeline or default_pipeline_path())
    if args.weights:
        load_pipeline_weights(pipeline, args.weights)
    pipeline = pipeline_to(pipeline, device)
    suite = build_suite(args, pipeline)
    for model in (suite.lpips, suite.identity, suite.tracker):  # the metrics see the outputs' device
        module_to(model, device)
    methods = {args.method: None}  # None: reenact with the pipeline
    if args.baseline:
        methods[BASELINE] = source_baseline
    results: dict = {m: {} for m in methods}
    frames: dict = {m: {} for m in methods}
    for protocol, data in datasets.items():
        head = pipeline.config.headmodel.name
        if data.info.head_model != head:
            raise InputError(
                f"{args.dataset}: parameters are for head model {data.info.head_model!r}; the pipeline uses {head!r}"
            )
        n = len(data) if args.max_samples is None else min(len(data), args.max_samples)
        for method, render in methods.items():
            desc = f"eval {protocol}" + (f" ({method})" if render is not None else "")
            with progress(total=n * args.targets, desc=desc, unit="frame", disable=args.quiet) as bar:
                samples = (data[i].to(device) for i in range(n))
                results[method][protocol], frames[method][protocol] = evaluate(
                    pipeline, samples, protocol, suite, bar.update, render=render
                )
    info = {
        "dataset": str(args.dataset),
        "split": args.split,
        "targets": args.targets,
        "seed": args.seed,
        "pipeline": str(args.pipeline or "default"),
        "weights": str(args.weights) if args.weights else None,
    }
    rows = [MethodResults(m, results[m], frames[m]) for m in methods]
    paths = write_results(args.output, rows, info=info)
    if not args.quiet:
        print((Path(args.output) / "results.md").read_text(encoding="utf-8"), file=sys.stderr)
    print(f"wrote {', '.join(str(p) for p in paths)}", file=sys.stderr)
    return 0


def add_parser(subparsers) -> None:
    """Add ``eval DATASET ...`` and ``eval portraits IMAGE...`` to the ``gshead`` subcommands."""
    from gshead.commands._help import doc

    p = subparsers.add_parser(
        "eval",
        help="self- and cross-reenactment metrics of a pipeline on a dataset, or an independent judge "
        "on real portraits (eval portraits IMAGE...)",
        usage="gshead eval [-h] DATASET [options]\n       gshead eval portraits IMAGE [IMAGE ...] [options]",
        **doc(
            "On a dataset (written by 'gshead data'): self- and cross-reenactment PSNR, SSIM, LPIPS, "
            "CSIM, AED, APD and AKD as markdown/CSV/JSON tables (metrics without local weights show -). "
            "'eval portraits IMAGE...': real portraits without ground truth, each avatar driven and "
            "orbited and measured by an independent judge (dlib; the judge extra), with a contact sheet "
            "per portrait.",
            "# the held-out check of the shipped weights (self-reenactment, no landmark tracker)\n"
            "gshead eval data/synth --protocol self --tracker none --baseline --weights builtin:default -o eval",
            "# real portraits, fitted for 100 steps first\n"
            "gshead eval portraits example:astronaut -o eval-astro --weights builtin:default --fit-steps 100",
        ),
    )
    p.add_argument(
        "dataset", metavar="DATASET",
        help="dataset folder (written by gshead.data), or the word 'portraits' followed by images "
        "(a dataset folder named portraits: give it alone, or as ./portraits)",
    )  # fmt: skip
    p.add_argument(
        "images", nargs="*", metavar="IMAGE",
        help="with 'portraits': portrait image files, or example:astronaut",
    )  # fmt: skip
    p.add_argument("--pipeline", metavar="YAML", help="pipeline YAML (default: the embedded default)")
    p.add_argument(
        "--weights", metavar="WEIGHTS",
        help=WEIGHTS_HELP,
    )  # fmt: skip
    p.add_argument(
        "--split", default="test", choices=("train", "val", "test"), help="dataset split (default test)"
    )
    p.add_argument(
        "--protocol", default="both", choices=tuple(PROTOCOLS), help="which protocols (default both)"
    )
    p.add_argument("--targets", type=int, default=4, metavar="N", help="target frames per sample (default 4)")
    p.add_argument("--max-samples", type=int, default=None, metavar="N", help="evaluate at most N samples per protocol")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the source/target frame choice (default 0)")
    p.add_argument(
        "--lpips-backbone", metavar="FILE", help="VGG16 weights (torchvision layout) for LPIPS"
    )
    p.add_argument(
        "--lpips-lin", metavar="FILE", help="LPIPS lin-layer weights (the lpips package's vgg.pth)"
    )
    p.add_argument("--identity-model", metavar="FILE", help="ArcFace IResNet state dict for CSIM")
    p.add_argument(
        "--tracker", default="mediapipe", metavar="NAME", help="tracker for AKD/APD/AED, or 'none' (default mediapipe)"
    )
    p.add_argument("--method", default="gshead", metavar="NAME", help="row name in the tables (default gshead)")
    p.add_argument(
        "--baseline",
        action="store_true",
        help="add a row for the source image returned unchanged (trivial baseline)",
    )
    p.add_argument(
        "-o", "--output", default=None, metavar="DIR",
        help=f"results folder (default {DEFAULT_OUTPUT}; for portraits {DEFAULT_PORTRAITS_OUTPUT})",
    )  # fmt: skip
    portraits = p.add_argument_group("portraits mode")
    portraits.add_argument(
        "--fit-steps", type=int, default=0, metavar="N",
        help="fit each avatar to its portrait for N steps first (default 0: off)",
    )  # fmt: skip
    portraits.add_argument(
        "--fit-lr", type=float, default=0.01, metavar="LR", help="base learning rate of the fit (default 0.01)"
    )
    portraits.add_argument("--frames", type=int, default=100, metavar="N", help="frames of demo motion (default 100)")
    portraits.add_argument("--orbit-frames", type=int, default=40, metavar="N", help="frames of the orbit (default 40)")
    portraits.add_argument(
        "--orbit-degrees", type=float, default=30.0, metavar="DEG",
        help="largest camera yaw of the orbit in degrees (default 30)",
    )  # fmt: skip
    from gshead.commands._device import add_device_argument

    add_device_argument(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)


__all__ = ["add_parser", "build_suite", "cmd_eval", "cmd_eval_portraits"]
