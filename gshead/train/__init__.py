"""Training: ``gshead train CONFIG.yaml``.

- ``config``: ``TrainConfig`` (pipeline, data, stage, optimiser, schedule, loss weights, bookkeeping);
- ``losses``: L1 (coarse and refined), face-crop L1, point loss, perceptual loss;
- ``trainer``: the loop (``Trainer.fit``), NaN guard, gradient clipping, Ctrl-C handling;
- ``checkpoints``: atomic ``step-NNNNNN/`` folders (safetensors model, weights_only state), resume;
- ``distributed``: torchrun / DDP (gloo on CPU), per-rank data shares;
- ``logging``: progress bar, CSV and TensorBoard scalars, image grids.

Nothing heavy is imported here; import the submodules you need.
"""


def run_training(
    pipeline, config=None, steps: int = 100, out_dir="runs/train", quiet: bool = True, resume: bool = False
) -> dict[str, float]:
    """Train ``pipeline``'s modules in place for ``steps`` steps; the hook ``gshead ablate`` calls.

    :param config: a training YAML path (its ``pipeline`` entry is ignored: ``pipeline`` is
        trained), or None for the default settings (dataset at ``data/synth``).
    :param out_dir: run folder for checkpoints and logs.
    :param resume: continue from the newest checkpoint in ``out_dir`` (a killed run resumes).
    :returns: ``train_loss`` (mean weighted loss of the last ``min(10, steps)`` completed steps)
        and ``bad_steps`` (steps the NaN guard skipped).
    """
    from gshead.train.config import TrainConfig, load_train_config
    from gshead.train.trainer import Trainer

    settings = load_train_config(config, {"steps": steps}) if config is not None else TrainConfig(steps=steps)
    result = Trainer(settings, out_dir, pipeline=pipeline, quiet=quiet).fit(steps=steps, resume=resume)
    done = [r.loss for r in result.history if not r.skipped][-10:]
    for module in pipeline.trainable_modules().values():
        module.eval()
    return {"train_loss": sum(done) / len(done) if done else float("nan"), "bad_steps": float(result.bad_steps)}
