"""Pipelines: reconstruct an avatar once, then drive it per frame through a ``DrivingSession``.

``Pipeline`` owns every component; ``reconstruct`` is the heavy, once-per-portrait path.
``DrivingSession`` owns only what driving needs (driver, rasterizer, refiner) plus the frozen
avatar, and enforces the contract (``gshead.core.contract``) as it runs.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from gshead.core import contract
from gshead.core.components import (
    KIND_INFO,
    KIND_TABLE,
    KINDS,
    BuildContext,
    Driver,
    Encoder,
    HeadModel,
    Kind,
    Lifter,
    Rasterizer,
    Refiner,
    Tracker,
)
from gshead.core.config import PipelineConfig, default_pipeline_path, dump_pipeline, load_pipeline, validate_pipeline
from gshead.core.errors import ConfigError, InputError
from gshead.core.geometry import crop_square
from gshead.core.registry import Registry, get_registry
from gshead.core.types import Avatar, Camera, CropBox, Gaussians, HeadParams, Provenance, Render

# Reconstruction-time kinds: a driving session must never reach one of these.
RECONSTRUCTION_KINDS: tuple[Kind, ...] = tuple(info.kind for info in KIND_TABLE if info.reconstruction_only)
DRIVING_KINDS: tuple[Kind, ...] = ("driver", "rasterizer", "refiner")


def _seeded(seed: int, build):
    """Run ``build()`` with torch's RNG seeded, leaving the global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def build_component(config: PipelineConfig, kind: Kind, context: BuildContext, registry: Registry) -> Any:
    """Build the component in slot ``kind`` of a pipeline config, seeded by the config's seed."""
    slot = config.slot(kind)
    seed = config.seed * 1000 + KINDS.index(kind)
    module = _seeded(seed, lambda: registry.build(kind, slot, context))
    if isinstance(module, torch.nn.Module):
        module.eval()
    return module


def build_components(
    config: PipelineConfig,
    kinds: Iterable[Kind],
    registry: Registry,
    *,
    head_model: HeadModel | None = None,
    encoder_channels: tuple[int, ...] | None = None,
    encoder_global_channels: int | None = None,
) -> tuple[dict[Kind, Any], BuildContext]:
    """Build the slots ``kinds`` of ``config`` in data-flow order; the one place a ``BuildContext``
    is assembled. The head model is always built first (or ``head_model`` is used); the encoder's
    channels come from the built encoder, or from ``encoder_channels``/``encoder_global_channels``
    when the encoder is not built (an avatar file records them). Returns the components by kind
    (the head model included) and the context the later ones were built with."""
    wanted = set(kinds) | {"headmodel"}
    context = BuildContext(config.feature_channels, registry=registry)
    built: dict[Kind, Any] = {}
    if head_model is None:
        head_model = build_component(config, "headmodel", context, registry)
    built["headmodel"] = head_model
    context = dataclasses.replace(context, head_model=head_model)
    if "encoder" in wanted:
        encoder = build_component(config, "encoder", context, registry)
        built["encoder"] = encoder
        encoder_channels, encoder_global_channels = tuple(encoder.out_channels), encoder.global_channels
    if encoder_channels is not None:
        context = dataclasses.replace(
            context, encoder_channels=tuple(encoder_channels), encoder_global_channels=int(encoder_global_channels or 0)
        )
    for kind in KINDS:
        if kind in wanted and kind not in built:
            built[kind] = build_component(config, kind, context, registry)
    return built, context


class Pipeline:
    """A validated pipeline config built into components, one attribute per kind
    (``KindInfo.attribute``: ``head_model``, ``encoder``, ``lifter``, ...)."""

    head_model: HeadModel
    encoder: Encoder
    lifter: Lifter
    driver: Driver
    rasterizer: Rasterizer
    refiner: Refiner
    tracker: Tracker

    def __init__(self, config: PipelineConfig, registry: Registry | None = None) -> None:
        self.registry = registry or get_registry()
        self.config = config
        built, self.context = build_components(config, KINDS, self.registry)
        for kind, component in built.items():
            setattr(self, KIND_INFO[kind].attribute, component)

    @classmethod
    def from_yaml(cls, path, registry: Registry | None = None) -> Pipeline:
        registry = registry or get_registry()
        return cls(load_pipeline(path, registry), registry)

    @classmethod
    def from_dict(cls, data: dict, registry: Registry | None = None) -> Pipeline:
        registry = registry or get_registry()
        return cls(validate_pipeline(data, registry), registry)

    @classmethod
    def default(cls, registry: Registry | None = None) -> Pipeline:
        """The embedded default pipeline (``gshead/configs/default.yaml``)."""
        return cls.from_yaml(default_pipeline_path(), registry)

    def components(self) -> dict[Kind, Any]:
        """Every component by kind, in data-flow order."""
        return {info.kind: getattr(self, info.attribute) for info in KIND_TABLE}

    def prepare_image(self, image: Tensor) -> Tensor:
        """A raw portrait [1, 3, H, W] cropped where the tracker finds the head (centred when it
        does not say) and resized to the pipeline's ``source_size``: [1, 3, S, S]."""
        box = self.tracker.crop_box(image) or CropBox.centred(image.shape[-1], image.shape[-2])
        return crop_square(image, box, self.config.source_size)

    @torch.no_grad()
    def reconstruct(
        self, image: Tensor, source: HeadParams | None = None, camera: Camera | None = None
    ) -> Avatar:
        """Build a frozen avatar from one portrait.

        :param image: [1, 3, S, S] in [0, 1], S = ``source_size`` (see ``prepare_image``).
        :param source: the portrait's head parameters; tracked when None.
        :param camera: the portrait's camera; tracked when None.
        """
        return frozen_copy(self.build_avatar(image, source, camera))

    def build_avatar(
        self, image: Tensor, source: HeadParams | None = None, camera: Camera | None = None
    ) -> Avatar:
        """``reconstruct`` without ``no_grad`` and without the frozen copy: the avatar's tensors keep
        their autograd history, for training and test-time fitting. Inference uses ``reconstruct``."""
        size = self.config.source_size
        if image.dim() != 4 or image.shape[:2] != (1, 3) or image.shape[2:] != (size, size):
            raise InputError(f"reconstruct: expected an image of shape [1, 3, {size}, {size}], got {list(image.shape)}")
        if source is None or camera is None:
            with torch.no_grad():
                tracked = self.tracker.track(image)
            source = source if source is not None else tracked.params
            camera = camera if camera is not None else tracked.camera
        source = _root_for(self.driver, source)
        view = camera.moved(source.pose_matrix())  # lift in head space: head pose is camera motion
        features = self.encoder(image)
        static = self.lifter(features, source, view)
        rig = self.driver.prepare(features, source, view, static)
        background = None
        if self.config.background == "static":
            static, background = self._static_background(image, static, view)
        body = None
        if self.config.torso == "still":
            from gshead.core.geometry import body_weights

            with torch.no_grad():
                body = body_weights(static.means.detach(), self.head_model(source).landmarks.to(static.means))
        provenance = Provenance(
            pipeline=dump_pipeline(self.config),
            head_model=self.config.headmodel.name,
            gshead_version=_version(),
            torch_version=torch.__version__,
            created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        )
        return Avatar(
            static=static, rig=rig, source=source, camera=camera, provenance=provenance, background=background,
            body=body,
        )

    def _static_background(self, image: Tensor, static: Gaussians, view: Camera) -> tuple[Gaussians, Tensor]:
        """``background: static``: the static Gaussians on the person (the tracker's segmentation of
        ``image``, sampled where each Gaussian's centre projects in the source ``view``) and the
        background as a feature image [1, C, S, S]: the portrait's RGB with the person, grown by
        ``BACKGROUND_MARGIN`` of the side, filled in from around it (``fill_holes``)."""
        from gshead.core.components import Segmenter
        from gshead.core.geometry import fill_holes, project_points

        if not isinstance(self.tracker, Segmenter):
            raise ConfigError(
                f"background: static needs a tracker that segments the portrait (mediapipe); tracker "
                f"{self.config.tracker.name!r} does not (use background: lifted)"
            )
        with torch.no_grad():
            person = self.tracker.segment(image).to(image)  # [1, 1, S, S]
            size = image.shape[-1]
            share = float((person >= 0.5).to(image).mean())
            if share < MIN_PERSON_SHARE:
                raise InputError(
                    f"background: static: the segmentation found no person in the portrait crop ({100 * share:.1f}% "
                    f"of it; expected at least {100 * MIN_PERSON_SHARE:.0f}%, a head and shoulders); use a clearer "
                    "portrait or background: lifted"
                )
            uv = project_points(static.means.detach(), view)[0]  # [N, 2] source pixels
            ij = uv.round().long().clamp(0, size - 1)
            on_person = person[0, 0, ij[:, 1], ij[:, 0]] >= 0.5
            inside = (uv >= 0).all(1) & (uv < size).all(1)
            keep = (on_person | ~inside).nonzero()[:, 0]  # off-image Gaussians are not the portrait's background
            grow = max(1, round(BACKGROUND_MARGIN * size))
            covered = F.max_pool2d((person >= 0.5).to(image), 2 * grow + 1, stride=1, padding=grow)
            rgb = fill_holes(image, 1.0 - covered)
        static = Gaussians(**{k: v[:, keep] for k, v in static.tensors().items()})
        background = torch.zeros(1, static.channels, size, size, dtype=image.dtype, device=image.device)
        background[:, :3] = rgb
        return static, background

    def forward_frames(
        self, avatar: Avatar, params: HeadParams, camera: Camera | None = None, background: Tensor | None = None
    ) -> tuple[Render, Tensor]:
        """Differentiable driving of ``avatar`` (from ``build_avatar``) for B frames: the coarse
        render (``Render``, [B, C, H, W] features) and the refined image [B, 3, H, W]. ``camera``
        defaults to the avatar's source camera at ``render_size``. The contract is not checked here
        (training changes weights on purpose); inference goes through ``session``."""
        if camera is None:
            size = self.config.render_size
            camera = avatar.camera.resized(size, size * avatar.camera.height // avatar.camera.width)
        return drive_frames(avatar, params, camera, self.driver, self.rasterizer, self.refiner, background)

    def trainable_modules(self) -> dict[Kind, torch.nn.Module]:
        """The pipeline's ``nn.Module`` components by kind (head model and tracker excluded: they
        are fixed models, not learned by gshead's trainer)."""
        components = self.components()
        return {
            info.kind: components[info.kind]
            for info in KIND_TABLE
            if info.trainable and isinstance(components[info.kind], torch.nn.Module)
        }

    def session(self, avatar: Avatar, render_size: int | None = None, **kwargs) -> DrivingSession:
        """A driving session for ``avatar`` using this pipeline's driving components."""
        return DrivingSession(
            avatar,
            self.driver,
            self.rasterizer,
            self.refiner,
            render_size=render_size or self.config.render_size,
            forbidden=self.reconstruction_types(),
            **{"raster_size": self.config.raster_size, **kwargs},
        )

    def reconstruction_types(self) -> tuple[type, ...]:
        """Types a driving session must not reach (this pipeline's encoder, lifter, tracker)."""
        return tuple({type(getattr(self, KIND_INFO[kind].attribute)) for kind in RECONSTRUCTION_KINDS} | {Pipeline})


def _version() -> str:
    from gshead.core.version import __version__

    return __version__


def frozen_copy(avatar: Avatar) -> Avatar:
    """Detached, contiguous copies of every tensor, so nothing outside can alias the avatar."""

    def fix(obj):
        if isinstance(obj, Tensor):
            return obj.detach().contiguous().clone()
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type) and not isinstance(obj, Provenance):
            return dataclasses.replace(obj, **{f.name: fix(getattr(obj, f.name)) for f in dataclasses.fields(obj)})
        return obj

    return fix(avatar)


class DrivingSession:
    """Per-frame driving of one frozen avatar.

    Holds the avatar, the driver, the rasterizer and the refiner, and nothing that reconstructs.
    Every frame: the driver poses the rig for the frame's head parameters, the head pose becomes
    camera motion, the rasterizer splats static + posed Gaussians, the refiner makes RGB. The
    avatar is checked after each stage (``contract.AvatarGuard``).
    """

    def __init__(
        self,
        avatar: Avatar,
        driver,
        rasterizer,
        refiner,
        render_size: int | None = None,
        background: Tensor | None = None,
        forbidden: tuple[type, ...] = (),
        raster_size: int | None = None,
    ) -> None:
        self.avatar = avatar
        self.driver = driver
        self.rasterizer = rasterizer
        self.refiner = refiner
        size = render_size or avatar.camera.width
        self.camera = avatar.camera.resized(size, size * avatar.camera.height // avatar.camera.width)
        self.background = background
        self.raster_size = raster_size
        self._cache: dict[Any, Any] = {}  # per-session constants of drive_frames (see there)
        self._guard = contract.AvatarGuard(avatar)
        contract.check_isolation(self, forbidden)

    @torch.no_grad()
    def render(self, params: HeadParams, camera: Camera | None = None, alpha: bool = False) -> Tensor:
        """Images [B, 3, H, W] in [0, 1] for a batch of B head parameters.

        The avatar's identity replaces ``params.identity`` (drive with anyone's expressions).
        ``camera`` defaults to the source camera at the session's render size. ``alpha``: [B, 4,
        H, W], the rasterizer's accumulated opacity as a fourth channel and the colour divided by
        it (straight alpha; exact for the identity refiner), for a session whose ``background``
        is black.
        """
        render, image = drive_frames(
            self.avatar, params, camera or self.camera, self.driver, self.rasterizer, self.refiner,
            self.background, check=self._guard.check, raster_size=self.raster_size, cache=self._cache,
        )
        if not alpha:
            return image
        a = render.alpha.to(image).clamp(0, 1)
        if a.shape[-2:] != image.shape[-2:]:
            a = F.interpolate(a, size=image.shape[-2:], mode="bilinear", align_corners=False).clamp(0, 1)
        straight = torch.where(a > 1e-4, image / a.clamp_min(1e-4), torch.zeros_like(image)).clamp(0, 1)
        return torch.cat([straight, a], 1)


MIN_PERSON_SHARE = 0.02
"""``background: static``: a segmentation covering less than this share of the crop is refused
(the avatar would have no head left)."""

BACKGROUND_MARGIN = 0.03
"""``background: static``: the person's segmentation is grown by this fraction of the crop side
before the background is filled in, so the person's fringe does not stay in the background."""


def _over_background(render: Render, background: Tensor, cache: dict | None = None) -> Render:
    """``render`` composited over the avatar's static ``background`` [1, C, S, S] (resized to the
    render): features + (1 - alpha) background. The background is the source view's; it stays on
    the screen whatever the camera does. With a ``cache`` dict (a driving session, no autograd)
    the resized background is kept per size, trimmed to the channels that hold anything (the
    colour ones), and the render's features are updated in place."""
    h, w = render.features.shape[-2:]
    key = ("background", h, w, render.features.dtype, render.features.device)
    bg = cache.get(key) if cache is not None else None
    if bg is None:
        bg = background.to(render.features)
        if bg.shape[-2:] != (h, w):
            shrink = bg.shape[-1] > w
            bg = F.interpolate(bg, size=(h, w), mode="bilinear", align_corners=False, antialias=shrink)
        if cache is not None:
            nonzero = (bg.flatten(2).abs().amax(-1)[0] > 0).nonzero()
            bg = bg[:, : int(nonzero.max()) + 1 if nonzero.numel() else 0].contiguous()
            cache[key] = bg
    features = render.features
    if cache is None or not features.is_contiguous():  # a new tensor: features + bg - alpha * bg
        bg = F.pad(bg, (0, 0, 0, 0, 0, features.shape[1] - bg.shape[1]))
        return dataclasses.replace(render, features=torch.addcmul(features + bg, render.alpha, bg, value=-1.0))
    k = bg.shape[1]  # the background's channels past k are zero
    features[:, :k] += bg
    features[:, :k].addcmul_(render.alpha, bg, value=-1.0)
    return render


def raster_camera(camera: Camera, raster_size: int | None) -> Camera:
    """The camera the rasterizer renders through for output ``camera``: ``camera`` itself, or, when
    its longer side exceeds ``raster_size``, the same view at that longer side (aspect kept)."""
    longest = max(camera.width, camera.height)
    if raster_size is None or longest <= raster_size:
        return camera
    scale = raster_size / longest
    return camera.resized(max(1, round(camera.width * scale)), max(1, round(camera.height * scale)))


def _root_for(driver, params: HeadParams) -> HeadParams:
    """``params`` as ``driver`` takes them: a ``HeadParams.root`` (a rotation of the head mesh about
    its root joint, e.g. FLAME's global pose) goes to a driver whose ``applies_root`` is true
    (it turns only the mesh-bound Gaussians: GAGAvatar's ``expression-gaussians`` under ``compat:
    official``); for any other driver it becomes head pose about that joint, i.e. camera motion
    (``HeadParams.root_as_pose``; the joint from the driver's ``head_model``)."""
    if params.root is None or getattr(driver, "applies_root", False):
        return params
    head_model = getattr(driver, "head_model", None)
    if head_model is None:
        raise InputError(
            f"{type(driver).__name__}: the head parameters carry a root-joint rotation (HeadParams.root), "
            "but the driver has no head model to find the joint"
        )
    return params.root_as_pose(head_model(params.replace(root=None)).joints[:, 0])


def drive_frames(
    avatar: Avatar,
    params: HeadParams,
    camera: Camera,
    driver,
    rasterizer,
    refiner,
    background: Tensor | None = None,
    check=None,
    raster_size: int | None = None,
    cache: dict | None = None,
) -> tuple[Render, Tensor]:
    """One driving step for B frames, differentiable: the avatar's identity replaces
    ``params.identity``, the driver poses the rig, the head pose becomes camera motion (a
    ``params.root`` too, unless the driver ``applies_root``: ``_root_for``), the rasterizer splats
    static + posed Gaussians, the refiner makes RGB. Returns the ``Render``
    ([B, C, h, w]) and the image [B, 3, H, W] at ``camera``'s size. ``check(stage)`` runs after each
    stage when given.

    ``raster_size`` (``PipelineSettings.raster_size``): when ``camera`` is larger, the rasterizer
    and the refiner work at this longer side (``raster_camera``) and the refined image is
    upsampled (bilinear) to ``camera``'s size, as GAGAvatar renders its features at 256² for a
    512² output. ``cache``: a dict owned by the caller (a ``DrivingSession``) for constants that
    depend only on the avatar (the resized static background, the still torso split from the
    head); only used without autograd, so training always recomputes them."""
    b = params.batch_size
    out_size = (camera.height, camera.width)
    camera = raster_camera(camera, raster_size)
    if torch.is_grad_enabled():
        cache = None
    params = _root_for(driver, params.replace(identity=avatar.source.identity.expand(b, -1)))
    pose = params.pose_matrix()  # [B, 4, 4]
    camera = camera.expand(b).moved(pose)
    posed = driver.drive(avatar, params)
    if check:
        check("driver")
    static = avatar.static
    body = getattr(avatar, "body", None)  # Avatar.body (torso: still; stand-ins in tests may lack it)
    if body is not None and cache is not None:  # the still and the moving parts, split once
        from gshead.core.geometry import held_still

        if "torso" not in cache:
            moving = body[0] > 0
            parts = static.tensors()
            cache["torso"] = (
                Gaussians(**{k: v[:, ~moving] for k, v in parts.items()}),  # head: the camera moves them
                Gaussians(**{k: v[:, moving] for k, v in parts.items()}),  # neck and torso
                body[:, moving],
                avatar.source.pose_matrix(),
            )
        head, torso, weight, source_pose = cache["torso"]
        means, quats = held_still(torso.means, torso.quats, weight, torch.linalg.inv(pose) @ source_pose.to(pose))
        parts = [head, torso.moved(means, quats), posed]
    elif body is not None:
        from gshead.core.geometry import torso_held

        parts = [torso_held(static, body, pose, avatar.source.pose_matrix()), posed]
    else:
        parts = [static, posed]
    gaussians = Gaussians.cat(parts)
    render = rasterizer(gaussians, camera, background)
    still = getattr(avatar, "background", None)  # Avatar.background (stand-ins in tests may lack it)
    if background is None and still is not None:
        render = _over_background(render, still, cache)
    if check:
        check("rasterizer")
    image = refiner(render)
    if image.shape[-2:] != out_size:
        image = F.interpolate(image, size=out_size, mode="bilinear", align_corners=False).clamp(0.0, 1.0)
    if check:
        check("refiner")
    return render, image
