"""
Learning-rate and momentum schedules of the training stages: pure functions of the progress or
the step, plus the two setters that apply them to the optimizers.

    lrm = lr_multiplier(step / num_iterations, warmup_ratio=0.0, warmdown_ratio=0.2, final_lr_frac=0.0)
    set_lr(optimizers, lrm)            # every group: lr = initial_lr * lrm
    set_momentum(muon, step)           # Muon momentum warm-up 0.85 -> 0.95 over 300 steps

Progress is the fraction of the horizon done BEFORE the step: step s of n (0-based) runs at
progress s / n, so the first step runs at 0 and the last at (n - 1) / n. (Evaluating at
(s + 1) / n, as base_train once did, runs the last step at final_lr_frac — 0 by default, a wasted
step — and starts the warm-down one step early: 10 steps with a 0.2 warm-down ended 0.5, 0.0
where they should end 1.0, 0.5.) A time budget gives progress = training time so far / budget.
"""


def lr_multiplier(progress, warmup_ratio=0.0, warmdown_ratio=0.2, final_lr_frac=0.0):
    """progress in [0, 1] -> linear warm-up from 0 to 1, flat at 1, linear warm-down to final_lr_frac.

    The warm-down covers progress in (1 - warmdown_ratio, 1]: at progress 1 - warmdown_ratio the
    multiplier is still 1, at progress 1 it reaches final_lr_frac.
    """
    assert 0 <= warmup_ratio and 0 <= warmdown_ratio and warmup_ratio + warmdown_ratio <= 1, \
        f"need warm-up and warm-down ratios >= 0 summing to <= 1, got {warmup_ratio}, {warmdown_ratio}"
    progress = min(max(progress, 0.0), 1.0)
    if progress < warmup_ratio:
        return progress / warmup_ratio
    if warmdown_ratio == 0 or progress <= 1 - warmdown_ratio:
        return 1.0
    frac = (1 - progress) / warmdown_ratio  # 1 at the start of the warm-down, 0 at the end
    return frac + (1 - frac) * final_lr_frac


def muon_momentum(step, warmup_steps=300, start=0.85, end=0.95):
    """Muon's momentum: linear from `start` to `end` over the first warmup_steps steps, then flat."""
    frac = min(step / warmup_steps, 1.0) if warmup_steps > 0 else 1.0
    return (1 - frac) * start + frac * end


def set_lr(optimizers, lrm):
    """Scale every param group's lr to its "initial_lr" (GPT.setup_optimizers records it) times lrm."""
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * lrm


def set_momentum(muon, step):
    """Apply muon_momentum(step) to every group of the Muon optimizer."""
    for group in muon.param_groups:
        group["momentum"] = muon_momentum(step)
