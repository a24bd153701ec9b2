"""
Saving and loading checkpoints: model weights, each rank's optimizer state, and run metadata.

Layout of one checkpoint (step formatted as 6 digits, e.g. 000500):
    <checkpoint_dir>/<step>/model_<step>.pt            model state_dict (rank 0)
                           /optim_<step>.pt            optimizer state of a training state, whole: the same
                                                       at every world size (a list, one per optimizer)
                           /optim_<step>_rank<r>.pt    or: optimizer state of rank r (save_checkpoint's default)
                           /meta_<step>.json           model_config, run args, loop and data-loader state
Checkpoints of a pipeline stage live under get_base_dir()/<stage folder>/<model_tag>/, with stage
folders base_checkpoints, mid_checkpoints, chat_checkpoints, rl_checkpoints and model tags
"d<depth>" (e.g. d20). `load_model("sft", device, "eval")` picks the largest tag and the latest step,
and says which in the meta it returns (meta["model_tag"], meta["step"]): the one home of that choice.

Atomicity. A step is written into the hidden folder <checkpoint_dir>/.tmp_<step>/ and only then
renamed to <checkpoint_dir>/<step>/; rename is atomic on POSIX filesystems, so a folder named like a
step is always complete, and a crash at any moment leaves the previous steps untouched. Under
torch.distributed every rank calls save_checkpoint:
    rank 0 clears a leftover .tmp_<step> and creates it      -> barrier
    every rank writes (and fsyncs) its optimizer shard        -> barrier
      (a training state: rank 0 writes the gathered whole)
    rank 0 writes model + meta, fsyncs, renames the folder    -> barrier (nobody reads it earlier)
A crash of any rank before the rename leaves only a .tmp_ folder, which loading ignores (and reports)
and the next save of that step replaces. Re-saving an existing step moves the old folder to
.old_<step> first, so the step is briefly absent but never half-written.
Not covered: ranks that do not share one filesystem (multi-node on node-local disks: the training
stages refuse it at start-up, nanochat/stage.py), and a filesystem that does not make rename atomic
(some network filesystems).

Meta: a JSON-serialisable dict; build_model needs meta["model_config"] (the GPTConfig fields).

Resume at another world size (save_training_state / load_training_state). The optimizers keep their
state sharded across ranks (nanochat/optim.py); a training state gathers it whole (as it would be at
world size 1) into one file, and every rank of the resuming run reads (memory-mapped) and keeps its
own part, whatever the world size. The data position is saved as every stream's position
(nanochat/dataloader.py: the data order depends on the micro-batches per step, not on the ranks),
so a run of 2 ranks resumes on 1 and one of 1 on 2, batch for batch. Refused with the reason: another
model config, another number of micro-batches per step or other data (by the loaders), and training
states of the older per-rank layout (meta "loader_states"), which no longer resume.
load_model(..., hf_path=DIR) loads a Hugging Face folder instead (nanochat/hf.py).

Tests: tests/test_checkpoint.py (round trip, crash during a save, errors, load_model end to end).
"""

import json
import os
import re
import shutil

import torch
import torch.distributed as dist

from nanochat.common import get_base_dir, get_world_size, logger

SOURCE_DIRS = {"base": "base_checkpoints", "mid": "mid_checkpoints", "sft": "chat_checkpoints", "rl": "rl_checkpoints"}
_STEP_RE = re.compile(r"^\d{6,}$")
_TAG_RE = re.compile(r"^d(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be used (corrupt file, missing config, wrong world size)."""


def _model_path(step_dir, step):
    return os.path.join(step_dir, f"model_{step:06d}.pt")


def _meta_path(step_dir, step):
    return os.path.join(step_dir, f"meta_{step:06d}.json")


def _optim_path(step_dir, step, rank=None):
    """rank None: the world-size independent file of a training state; else rank's own shard."""
    if rank is None:
        return os.path.join(step_dir, f"optim_{step:06d}.pt")
    return os.path.join(step_dir, f"optim_{step:06d}_rank{rank}.pt")


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(path, write_fn):
    """Write a file through write_fn(f) and flush it to disk before returning."""
    with open(path, "wb") as f:
        write_fn(f)
        f.flush()
        os.fsync(f.fileno())


def _listing(path):
    """What is in a folder, for error messages."""
    try:
        return sorted(os.listdir(path)) or "(empty)"
    except OSError:
        return "(cannot be listed)"


# -----------------------------------------------------------------------------
# discovery

def list_steps(checkpoint_dir):
    """Sorted steps that have a complete checkpoint folder (model and meta present)."""
    if not os.path.isdir(checkpoint_dir):
        return []
    steps = []
    for name in os.listdir(checkpoint_dir):
        step_dir = os.path.join(checkpoint_dir, name)
        if _STEP_RE.match(name) and os.path.isdir(step_dir):
            step = int(name)
            if os.path.isfile(_model_path(step_dir, step)) and os.path.isfile(_meta_path(step_dir, step)):
                steps.append(step)
    return sorted(steps)


def leftover_dirs(checkpoint_dir):
    """Temporary folders of saves that did not finish (a crash); they are never loaded."""
    if not os.path.isdir(checkpoint_dir):
        return []
    return sorted(n for n in os.listdir(checkpoint_dir) if n.startswith((".tmp_", ".old_")))


def latest_step(checkpoint_dir):
    """The largest step with a complete checkpoint in checkpoint_dir."""
    if not os.path.isdir(checkpoint_dir):
        raise FileNotFoundError(f"checkpoint folder {checkpoint_dir} does not exist "
                                f"(its parent holds: {_listing(os.path.dirname(os.path.abspath(checkpoint_dir)))})")
    steps = list_steps(checkpoint_dir)
    if not steps:
        raise FileNotFoundError(f"checkpoint folder {checkpoint_dir} holds no complete checkpoint "
                                f"(it holds: {_listing(checkpoint_dir)}); train or save one first")
    return steps[-1]


def find_largest_model(checkpoints_root):
    """The model tag "d<N>" with the largest N under checkpoints_root."""
    names = os.listdir(checkpoints_root) if os.path.isdir(checkpoints_root) else []
    tags = [n for n in names if _TAG_RE.match(n) and os.path.isdir(os.path.join(checkpoints_root, n))]
    if not tags:
        raise FileNotFoundError(f"no model tag folder (d<depth>, e.g. d20) in {checkpoints_root}; "
                                f"it holds: {_listing(checkpoints_root)}. Pass model_tag= or train a model first")
    return max(tags, key=lambda t: int(_TAG_RE.match(t).group(1)))


# -----------------------------------------------------------------------------
# save / load

def save_checkpoint(checkpoint_dir, step, model_state, optimizer_states, meta, rank=0, keep_last=None, sharded=True):
    """Atomically save one step; returns the step folder. Under torch.distributed EVERY rank must call it.

    model_state: state_dict (used on rank 0 only; other ranks may pass None).
    optimizer_states: this rank's optimizer state (e.g. [adamw.state_dict(), muon.state_dict()]), or None;
        sharded=False: the whole run's, world-size independent (e.g. each optimizer's full_state_dict()),
        passed on rank 0 only and written as one file, optim_<step>.pt.
    meta: JSON-serialisable dict (rank 0 only), with "model_config" for build_model.
    keep_last: if set, delete all but the newest keep_last complete steps after this one is published.
    An error on one rank (e.g. a meta that is not JSON on rank 0) leaves the others waiting at a
    barrier until torch.distributed's timeout; torchrun then stops the job. Nothing is published.
    """
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"keep_last must be at least 1 (or None to keep every step), got {keep_last}")
    world = get_world_size()
    step_dir = os.path.join(checkpoint_dir, f"{step:06d}")
    tmp_dir = os.path.join(checkpoint_dir, f".tmp_{step:06d}")
    if rank == 0:
        try:
            meta_text = json.dumps(meta, indent=2)  # before touching the disk: a bad meta breaks nothing
        except TypeError as e:
            raise TypeError(f"checkpoint meta for step {step} is not JSON-serialisable: {e}") from e
        os.makedirs(checkpoint_dir, exist_ok=True)
        if os.path.exists(tmp_dir):
            logger.warning(f"removing {tmp_dir}, left over by a save that did not finish")
            shutil.rmtree(tmp_dir)
        os.makedirs(tmp_dir)
    if world > 1:
        dist.barrier()
    if optimizer_states is not None and (sharded or rank == 0):
        _write(_optim_path(tmp_dir, step, rank if sharded else None), lambda f: torch.save(optimizer_states, f))
    if world > 1:
        dist.barrier()  # every shard is on disk before rank 0 publishes the folder
    if rank == 0:
        _write(_model_path(tmp_dir, step), lambda f: torch.save(model_state, f))
        _write(_meta_path(tmp_dir, step), lambda f: f.write(meta_text.encode()))
        _fsync_dir(tmp_dir)
        if os.path.exists(step_dir):  # re-saving a step: never leave a half folder under the step's name
            old_dir = os.path.join(checkpoint_dir, f".old_{step:06d}")
            shutil.rmtree(old_dir, ignore_errors=True)
            os.rename(step_dir, old_dir)
            os.rename(tmp_dir, step_dir)
            shutil.rmtree(old_dir)
        else:
            os.rename(tmp_dir, step_dir)
        _fsync_dir(checkpoint_dir)
        if keep_last is not None:
            for old in list_steps(checkpoint_dir)[:-keep_last]:
                shutil.rmtree(os.path.join(checkpoint_dir, f"{old:06d}"))
        logger.info(f"saved checkpoint {step_dir}")
    if world > 1:
        dist.barrier()  # the folder exists for every rank once this returns
    return step_dir


def _load_torch(path, device, checkpoint_dir, mmap=False):
    try:
        return torch.load(path, map_location=device, weights_only=True, mmap=mmap)
    except Exception as e:
        raise CheckpointError(f"cannot read checkpoint file {path} ({type(e).__name__}: {e}); it is corrupt or "
                              f"truncated. Complete steps in {checkpoint_dir}: {list_steps(checkpoint_dir)}; "
                              f"load another step or delete this one") from e


def load_meta(checkpoint_dir, step=None):
    """The meta dict of a step (default: the latest complete one), without loading any weights."""
    step = latest_step(checkpoint_dir) if step is None else step
    meta_path = _meta_path(os.path.join(checkpoint_dir, f"{step:06d}"), step)
    try:
        with open(meta_path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read checkpoint metadata {meta_path} ({e}); complete steps in "
                              f"{checkpoint_dir}: {list_steps(checkpoint_dir)}") from e


def load_checkpoint(checkpoint_dir, step=None, device="cpu", load_optimizer=False, rank=0):
    """(model_state, optimizer_state or None, meta) of a step (default: the latest complete one)."""
    for name in leftover_dirs(checkpoint_dir):
        logger.warning(f"ignoring {os.path.join(checkpoint_dir, name)}: a save that did not finish")
    if step is None:
        step = latest_step(checkpoint_dir)
    elif step not in list_steps(checkpoint_dir):
        if not os.path.isdir(checkpoint_dir):
            latest_step(checkpoint_dir)  # raises the missing-folder error
        raise FileNotFoundError(f"no complete checkpoint for step {step} in {checkpoint_dir}; "
                                f"available steps: {list_steps(checkpoint_dir)}")
    step_dir = os.path.join(checkpoint_dir, f"{step:06d}")
    model_state = _load_torch(_model_path(step_dir, step), device, checkpoint_dir)
    meta = load_meta(checkpoint_dir, step)
    optimizer_state = None
    if load_optimizer and os.path.isfile(_optim_path(step_dir, step)):  # a training state: any world size
        # memory-mapped: each rank reads only the parts of the state it keeps
        optimizer_state = _load_torch(_optim_path(step_dir, step), "cpu", checkpoint_dir, mmap=True)
    elif load_optimizer:
        optim_path = _optim_path(step_dir, step, rank)
        if not os.path.isfile(optim_path):
            shards = sorted(n for n in os.listdir(step_dir) if n.startswith("optim_"))
            raise FileNotFoundError(f"no optimizer state for rank {rank} in {step_dir} (it holds {shards or 'none'}); "
                                    f"optimizer state only resumes with the world size it was saved with")
        optimizer_state = _load_torch(optim_path, device, checkpoint_dir)
    return model_state, optimizer_state, meta


# -----------------------------------------------------------------------------
# training state: what a stage needs to resume exactly

def join_loader_states(states):
    """The ranks' loader states -> the run's: one state if they agree (e.g. chat_rl's step count), else
    their "positions" (stream -> position, nanochat/dataloader.py) joined into rank 0's state, whose
    other keys describe the data and the streams alike on every rank."""
    if all(state == states[0] for state in states):
        return states[0]
    assert all(isinstance(state, dict) and "positions" in state for state in states), (
        f"the ranks' loader states differ and are not stream positions: {states}")
    positions = {}
    for state in states:
        positions.update(state["positions"])
    return dict(states[0], positions=dict(sorted(positions.items(), key=lambda item: int(item[0]))))


def save_training_state(run_dir, step, model, optimizers, meta, loader_state):
    """Save a resumable training step, in a layout that does not depend on the world size. EVERY rank
    calls it: the ranks' loader states are joined into meta["data_state"] (join_loader_states), the
    optimizer states gathered whole (full_state_dict, nanochat/optim.py); rank 0 writes the weights,
    the optimizer file optim_<step>.pt and the meta.

    meta: JSON dict (used on rank 0) with at least "model_config"; "step" and "world_size" are added.
    loader_state: this rank's JSON-serialisable data position after the step (None if there is none).
    """
    from nanochat.common import get_rank

    rank, world = get_rank(), get_world_size()
    states = [None] * world
    if world > 1:
        dist.all_gather_object(states, loader_state)
    else:
        states = [loader_state]
    meta = dict(meta, step=step, data_state=join_loader_states(states), world_size=world)
    optimizer_states = [opt.full_state_dict() for opt in optimizers]  # a collective; None except on rank 0
    return save_checkpoint(run_dir, step, model.state_dict() if rank == 0 else None,
                           optimizer_states if rank == 0 else None, meta, rank=rank, sharded=False)


def load_training_state(run_dir, model, optimizers, device, model_config):
    """Load the latest complete step of run_dir into model and optimizers (in place) for --resume, at
    any world size: each rank keeps its part of the optimizer state (load_full_state_dict).

    Returns (step, the run's data state (every stream's position: each loader takes its own), meta).
    model_config: the dict of the run's GPTConfig, checked against the checkpoint's. Raises
    FileNotFoundError (nothing to resume) or CheckpointError (another model, a checkpoint of the
    older per-rank layout, a corrupt file), each with a message that says what to do.
    """
    step = latest_step(run_dir)
    meta = load_meta(run_dir, step)
    if meta.get("model_config") != model_config:
        raise CheckpointError(f"the checkpoint in {run_dir} has model config {meta.get('model_config')}, but this run's "
                              f"is {model_config}; resume with the run's own flags (or another --model-tag)")
    if "data_state" not in meta:
        raise CheckpointError(f"the checkpoint of step {step} in {run_dir} was written by an older nanochat "
                              f"(optimizer state and data positions per rank, bound to its world size); this version "
                              f"cannot resume it: start the stage again, or finish it with the commit that wrote it")
    model_state, optim_states, _ = load_checkpoint(run_dir, step, device=device, load_optimizer=True)
    model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in model_state.items()})
    if len(optim_states) != len(optimizers):
        raise CheckpointError(f"the checkpoint in {run_dir} holds {len(optim_states)} optimizer states, "
                              f"this run has {len(optimizers)} optimizers")
    for opt, state in zip(optimizers, optim_states):
        opt.load_full_state_dict(state)
    return step, meta["data_state"], meta


# -----------------------------------------------------------------------------
# models

def build_model(checkpoint_dir, step, device, phase):
    """(model, tokenizer, meta) from a step of checkpoint_dir (step None: the latest); phase "train"|"eval"."""
    from nanochat.gpt import GPT, GPTConfig
    from nanochat.tokenizer import get_tokenizer

    if phase not in ("train", "eval"):
        raise ValueError(f"phase must be 'train' or 'eval', got {phase!r}")
    if step is None:
        step = latest_step(checkpoint_dir)
    model_state, _, meta = load_checkpoint(checkpoint_dir, step, device)
    meta_path = _meta_path(os.path.join(checkpoint_dir, f"{step:06d}"), step)
    if "model_config" not in meta:
        raise CheckpointError(f"{meta_path} has no 'model_config' (keys: {sorted(meta)}); cannot rebuild the model")
    try:
        config = GPTConfig(**meta["model_config"])
    except TypeError as e:
        raise CheckpointError(f"model_config in {meta_path} does not fit GPTConfig: {e}") from e
    # torch.compile'd models prefix every key with "_orig_mod."
    model_state = {k.removeprefix("_orig_mod."): v for k, v in model_state.items()}
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device=device)
    model.init_weights()  # fills the non-persistent buffers (rotary tables); the weights are overwritten next
    try:
        model.load_state_dict(model_state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"model weights in {_model_path(os.path.dirname(meta_path), step)} do not fit "
                              f"GPT({config}): {e}") from e
    tokenizer = get_tokenizer()
    if tokenizer.get_vocab_size() > config.vocab_size:
        raise CheckpointError(f"the tokenizer in {get_base_dir()}/tokenizer has {tokenizer.get_vocab_size()} tokens "
                              f"but the model of {checkpoint_dir} only {config.vocab_size}: wrong tokenizer?")
    model.train() if phase == "train" else model.eval()
    return model, tokenizer, meta


def load_model(source, device, phase, model_tag=None, step=None, hf_path=None):
    """(model, tokenizer, meta) of a pipeline stage: source "base"|"mid"|"sft"|"rl"; model_tag None:
    the largest d<N>, step None: the latest. meta["model_tag"] and meta["step"] are the ones loaded.
    hf_path: load that Hugging Face folder instead (nanochat/hf.py; source is then not used), with its
    own tokenizer; meta["hf_path"] says so."""
    if hf_path is not None:
        if model_tag is not None or step is not None:
            raise ValueError(f"--hf-path {hf_path} loads that folder; --model-tag/--step choose a checkpoint of a "
                             f"stage and do not apply to it (leave them out)")
        from nanochat.hf import load_hf
        logger.info(f"loading the Hugging Face folder {hf_path}")
        return load_hf(hf_path, device, phase)
    if source not in SOURCE_DIRS:
        raise ValueError(f"checkpoint source must be one of {sorted(SOURCE_DIRS)}, got {source!r}")
    root = os.path.join(get_base_dir(), SOURCE_DIRS[source])
    if not os.path.isdir(root):
        raise FileNotFoundError(f"no {source} checkpoints: {root} does not exist (the base dir holds: "
                                f"{_listing(get_base_dir())}); run that training stage first")
    if model_tag is None:
        model_tag = find_largest_model(root)
    checkpoint_dir = os.path.join(root, model_tag)
    if not os.path.isdir(checkpoint_dir):
        raise FileNotFoundError(f"no model tag {model_tag!r} in {root}; it holds: {_listing(root)}")
    if step is None:
        step = latest_step(checkpoint_dir)
    logger.info(f"loading {source} model from {checkpoint_dir} (step {step})")
    model, tokenizer, meta = build_model(checkpoint_dir, step, device, phase)
    return model, tokenizer, dict(meta, model_tag=model_tag, step=step)
