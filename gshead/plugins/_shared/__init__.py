"""Helpers shared by plugins of more than one kind (not plugins themselves; they register nothing).

- ``surface``: Gaussians anchored on head-mesh triangles (``AnchorHead``, ``surface_gaussians``,
  ``seeded_anchors``, ``sample_at``, ``SurfaceGaussianSettings``), used by the ``mesh-anchored``
  lifter and the ``light-control`` and ``mesh-bound`` drivers;
- ``appearance``: the appearance prior, a colour for the anchors the source view does not show
  (``anchor_colours``, ``prior_tables``), read by ``surface_gaussians``;
- ``depth``: a head mesh splatted into a coarse depth buffer (``splat_depth``), shared by the
  ``mesh-anchored`` lifter's image layer and the appearance prior;
- ``face_motion``: which triangles of a head model move with expression, and in which region
  (``face_motion``, ``expression_groups``), read by ``mesh-anchored`` and ``light-control``;
- ``direction_code``: GAGAvatar's harmonic code of the view direction, used by the ``dual-plane``
  lifter and the ``expression-gaussians`` driver.

They import only ``gshead.core``, ``gshead.io`` and each other; geometry conventions
(quaternions, projection, harmonic code) come from ``gshead.core.geometry``.
"""
