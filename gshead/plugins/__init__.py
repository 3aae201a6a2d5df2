"""Built-in components.

Each module listed here is a pluggy plugin registered exactly like a third-party one: it
defines ``gshead_register_<kind>s`` hook implementations. One module per component, grouped by
kind; the module is imported only when the registry first loads.
"""

BUILTIN_PLUGINS: tuple[str, ...] = (
    "gshead.plugins.headmodels.procedural",
    "gshead.plugins.headmodels.anny_head",
    "gshead.plugins.headmodels.flame",
    "gshead.plugins.encoders.tiny_conv",
    "gshead.plugins.encoders.dinov2",
    "gshead.plugins.encoders.webssl",
    "gshead.plugins.lifters.single_plane",
    "gshead.plugins.lifters.dual_plane",
    "gshead.plugins.lifters.mesh_anchored",
    "gshead.plugins.drivers.mesh_bound",
    "gshead.plugins.drivers.expression_gaussians",
    "gshead.plugins.drivers.light_control",
    "gshead.plugins.renderers.torch_tiles",
    "gshead.plugins.renderers.cpu",
    "gshead.plugins.renderers.gsplat_cuda",
    "gshead.plugins.renderers.auto",
    "gshead.plugins.refiners.identity",
    "gshead.plugins.refiners.style_unet",
    "gshead.plugins.refiners.light_unet",
    "gshead.plugins.trackers.frontal",
    "gshead.plugins.trackers.mediapipe_tracker",
    "gshead.plugins.trackers.sequence_file",
)
