"""``gshead ablate``: ablation matrices of pipeline variants, measured side by side.

- ``matrix``: the matrix YAML (base pipeline + axes), expanded into validated, named variants;
- ``runner``: per variant, parameters, reconstruction time, contract check and driving FPS, saved
  as resumable per-variant JSON; local parallel workers (spawn);
- ``report``: CSV and markdown tables, PNG plots;
- ``ray_runner``: ``gshead ablate --ray``: the same per-variant task as Ray tasks, on a local Ray
  or a cluster (optional: the ``ray`` extra).

Nothing heavy is imported here: import the submodules.
"""
