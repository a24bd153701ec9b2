"""
The runner of a training stage (base_train, mid_train, chat_sft, chat_rl): what every stage shares,
so that each script keeps only what is its own (its data, its step, its evaluation).

    run = Stage("mid_train", parser, args)          # checks the shared flags before any process group
    run.init_compute()                              # device, torch.distributed, seed
    model, tokenizer, meta = run.load_source("base")    # the tag and step it resolved: run.source
    run.set_run_dir("mid", run.source["model_tag"]) # <base dir>/mid_checkpoints/<tag>; --resume: reads its meta
    dtype, autocast = run.pick_dtype()              # --dtype (auto: measured; on --resume the meta's)
    optimizers = run.setup_optimizers(model)        # lrs x --init-lr-frac; Newton-Schulz dtype
    B = run.fit_device_batch(T, rows_per_rank, model)   # --device-batch-size auto: the largest that fits
    loader_state = run.start(dict(val_bpb=None), tokens_per_step, flops_per_token, num_iterations)
                                                    # prints the plan (nanochat/plan.py); --dry-run stops here
    for step in run.steps(evaluate):                # evaluate(step, last) at every step boundary
        ...forward/backward; run.data_state = loader_state
        lrm = run.optimizer_step()                  # lr schedule, Muon momentum, both optimizers
        run.end_step(loss, t0, lrm=lrm)             # SIGTERM agreement, progress line, log.jsonl
    run.finish(dict(final_val_bpb=...), metrics=dict(val_bpb=...))   # summary.json, loss.svg, results/

The set-up is a sequence of calls, each a place to hook into (a dry run stops after start(); a
batch-size search runs between setup_optimizers and start). Each fails with a clear message
(`<stage>: error: ...`, exit status 1, no traceback) where the user can fix it.

What the runner owns: the flags of nanochat/flags.py's training groups and their checks; compute
set-up and the dtype, which on --resume comes from the checkpoint's meta (the run goes on in the dtype
it started in, so --dtype auto on another machine cannot change it); loading the source model (a
checkpoint, or with --hf-path a Hugging Face folder, whose tokenizer then becomes the base dir's);
wandb; resume (weights, optimizer state, loop state and meter, the data position; at any world size
that divides the run's micro-batches per step: nanochat/checkpoint_manager.py) and SIGTERM (every
rank agrees in the step's own all-reduce, saves and exits 0); on several nodes, the check that every
rank sees global rank 0's NANOCHAT_BASE_DIR (set_run_dir); the eval and save cadences; the
progress line; summary.json, loss.svg and the results record (nanochat/runlog.py).

The step boundary (run.steps): SIGTERM during the last step -> save and stop; else evaluate(step,
last), save when due (the last step, and every --save-every), stop after the last step, else train
one more. step counts the optimizer steps done so far.
"""

import importlib.util
import math
import os
import socket
import sys
import time
from dataclasses import asdict

import torch
import torch.distributed as dist

from nanochat.checkpoint_manager import SOURCE_DIRS, CheckpointError, load_meta, load_model, load_training_state, \
    save_training_state
from nanochat.common import autocast_ctx, autodetect_device_type, compute_cleanup, compute_init, \
    decide_compute_dtype, get_base_dir, get_dist_info, get_peak_flops, print0
from nanochat.loss_eval import evaluate_loss_bpb
from nanochat.plan import DEFAULT_MFU, PlanError, candidates, check_fits, detect_hardware, format_plan, \
    largest_fitting, memory_plan, resolve_hardware, search_device_batch, stage_plan
from nanochat.runlog import ProgressMeter, RunLog, StopFlag, finish_run, save_results
from nanochat.schedules import lr_multiplier, set_lr, set_momentum


def due(step, every, last):
    """Whether a cadence of `every` steps (None or 0: only at the end) falls on this step boundary."""
    return last or (bool(every) and every > 0 and step % every == 0)


def dtype_name(dtype):
    return str(dtype).removeprefix("torch.")


class Stage:
    """One training stage's shared mechanics; see the module docstring for the order of the calls."""

    def __init__(self, name, parser, args):
        self.name, self.parser, self.args = name, parser, args
        _, self.rank, _, self.world_size = get_dist_info()
        self.master = self.rank == 0
        self.wandb = args.run not in (None, "dummy")
        self.source, self.run_dir, self.resume_meta = None, None, None
        self.step, self.data_state, self.stopping = 0, None, False
        self.meta_extra = {}  # the stage's own checkpoint meta (e.g. its source)
        for flag in ("num_iterations", "eval_every", "save_every"):
            value = getattr(args, flag, None)
            if value is not None and value < (1 if flag == "num_iterations" else 0):
                parser.error(f"--{flag.replace('_', '-')} must be >= {1 if flag == 'num_iterations' else 0} "
                             f"(omit it for the default), got {value}")
        if hasattr(args, "warmup_ratio") and (min(args.warmup_ratio, args.warmdown_ratio) < 0
                                              or args.warmup_ratio + args.warmdown_ratio > 1):
            parser.error("--warmup-ratio and --warmdown-ratio must be >= 0 and sum to at most 1")
        if getattr(args, "init_lr_frac", 1.0) <= 0:
            parser.error(f"--init-lr-frac must be > 0, got {args.init_lr_frac}")
        if hasattr(args, "default_device_batch_size") and args.device_batch_size is None:  # auto on CUDA only
            on_cuda = (args.device_type or autodetect_device_type()) == "cuda" or (args.dry_run and args.gpu)
            args.device_batch_size = "auto" if on_cuda else args.default_device_batch_size
        if args.num_gpus is not None and args.num_gpus < 1 or args.mfu is not None and not 0 < args.mfu <= 1:
            parser.error(f"--num-gpus must be >= 1 and --mfu in (0, 1], got {args.num_gpus}, {args.mfu}")
        self.device_batch_size, self.seq_len, self.rows_per_rank = getattr(args, "device_batch_size", None), None, None
        if self.wandb and importlib.util.find_spec("wandb") is None:
            parser.error(f"--run={args.run} asks for wandb logging, but wandb is not installed: "
                         f"`uv pip install wandb` (and `wandb login`), or leave --run out")

    def fail(self, message):
        """A user-facing error: one clear line on stderr, exit status 1, every rank alike."""
        compute_cleanup()
        sys.exit(f"{self.name}: error: {message}")

    def check_total_batch(self, unit, per_micro_step, how):
        """--total-batch-<unit> must be a positive multiple of one micro-step on all ranks
        (per_micro_step, made as `how` says); returns the gradient-accumulation steps."""
        total = getattr(self.args, f"total_batch_{unit}")
        if total < 1 or total % per_micro_step:
            self.parser.error(f"--total-batch-{unit}={total} is not a multiple of the {unit} of one micro-step on all "
                              f"ranks: {how} x {self.world_size} rank(s) = {per_micro_step}. Pick a multiple of "
                              f"{per_micro_step}.")
        return total // per_micro_step

    # -------------------------------------------------------------------------
    # set-up, in this order

    def init_compute(self):
        """Device, seed, torch.distributed (nanochat.common.compute_init)."""
        try:
            compute = compute_init(self.args.device_type, seed=self.args.seed)
        except (ValueError, RuntimeError) as e:
            self.fail(e)
        self.device, self.device_type = compute.device, compute.device_type
        return compute

    def load_source(self, source, phase="train"):
        """(model, tokenizer, meta) of the checkpoint a stage starts from (--model-tag and --step,
        None: the largest tag, its latest step), or of the --hf-path folder; run.source names what
        was loaded."""
        hf_path = getattr(self.args, "hf_path", None)
        try:
            model, tokenizer, meta = load_model(source, self.device, phase, self.args.model_tag, self.args.step,
                                                hf_path=hf_path)
            if hf_path is not None:  # the later stages load the tokenizer from the base dir: make it this one
                from nanochat.hf import adopt_tokenizer
                print0(adopt_tokenizer(tokenizer, get_base_dir(), self.master))
        except (FileNotFoundError, CheckpointError, ValueError) as e:
            self.fail(f"cannot load the {'--hf-path ' + hf_path if hf_path else source} model: {e}")
        self.source = dict(source=source, model_tag=meta["model_tag"], step=meta["step"])
        if hf_path is not None:
            source = self.source["source"] = "hf"
            self.source["hf_path"] = hf_path
        self.meta_extra = dict(source=self.source)  # in every checkpoint's meta (a stage may say more)
        print0(f"source: {source} model {meta['model_tag']} step {meta['step']} | {model.num_params():,} parameters | "
               f"{model.config.n_layer} layers, width {model.config.n_embd} | sequence length {model.config.sequence_len}")
        return model, tokenizer, meta

    def row_length(self, model):
        """--max-seq-len (None: the model's sequence length); longer than the model's is an error."""
        T = self.args.max_seq_len or model.config.sequence_len
        if T > model.config.sequence_len:
            self.fail(f"--max-seq-len={T} is longer than the model's sequence length {model.config.sequence_len}; "
                      f"use at most that")
        return T

    def set_run_dir(self, stage_source, model_tag):
        """The run folder get_base_dir()/<stage folder>/<model_tag>; with --resume its latest
        checkpoint's meta is read now (the dtype and the loop state come from it)."""
        self.model_tag = model_tag
        self.run_dir = os.path.join(get_base_dir(), SOURCE_DIRS[stage_source], model_tag)
        self.check_shared_base_dir()
        if self.args.resume:
            try:
                self.resume_meta = load_meta(self.run_dir)
            except (FileNotFoundError, CheckpointError) as e:  # nothing to resume / a corrupt file
                self.fail(f"--resume: {e}")
        return self.run_dir

    def check_shared_base_dir(self):
        """On several nodes, every rank must see global rank 0's NANOCHAT_BASE_DIR: rank 0 alone writes
        the checkpoints, logs and results, and every rank reads the source model, a --resume and the
        tokenizer from there. Node-local disks are refused here, with the nodes that do not see it."""
        if self.world_size == 1 or int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size)) == self.world_size:
            return  # one node: one filesystem
        token = [f"{socket.gethostname()}:{os.getpid()}:{time.time_ns()}" if self.master else None]
        dist.broadcast_object_list(token)
        probe = os.path.join(get_base_dir(), f".shared_probe_{token[0].replace(':', '_')}")
        if self.master:
            with open(probe, "w") as f:
                f.write(token[0])
        dist.barrier()
        try:
            with open(probe) as f:
                seen = f.read() == token[0]
        except OSError:
            seen = False
        views = [None] * self.world_size
        dist.all_gather_object(views, (self.rank, socket.gethostname(), os.environ.get("GROUP_RANK"), seen))
        dist.barrier()
        if self.master:
            os.remove(probe)
        blind = sorted({(node, host) for _, host, node, ok in views if not ok})
        if blind:
            self.fail(f"the nodes {', '.join(f'{n} ({h})' for n, h in blind)} do not see NANOCHAT_BASE_DIR={get_base_dir()} "
                      f"of global rank 0 (it wrote {probe}; they cannot read it). Global rank 0 alone writes "
                      f"checkpoints, logs and results, and every rank reads the tokenizer, the source model and a "
                      f"--resume from there: put NANOCHAT_BASE_DIR on a filesystem that every node mounts (NFS, "
                      f"Lustre, ...) at the same path")

    def pick_dtype(self):
        """(dtype, autocast context). --dtype auto is decided once (rank 0's measurement, sent to every
        rank: nanochat.common.decide_compute_dtype); on --resume the checkpoint's dtype is kept, and an
        explicit other --dtype is an error."""
        requested = self.args.dtype
        saved = (self.resume_meta or {}).get("compute_dtype")
        if saved is not None and requested not in ("auto", saved):
            self.fail(f"--resume: the run in {self.run_dir} trains in {saved}, not --dtype {requested}; "
                      f"resume with --dtype {saved} (or auto)")
        if saved is not None:
            dtype, why = getattr(torch, saved), f"{saved}, the dtype of the checkpoint resumed"
        else:
            try:
                dtype, why = decide_compute_dtype(self.device_type, requested)
            except ValueError as e:
                self.fail(e)
        self.dtype, self.autocast = dtype, autocast_ctx(self.device_type, dtype)
        self.peak_flops, peak_what = get_peak_flops(self.device, dtype)
        print0(f"compute dtype {dtype_name(dtype)} ({why}) | MFU against {peak_what}: "
               f"{self.peak_flops or float('nan'):.4g} FLOP/s")
        return dtype, self.autocast

    def setup_optimizers(self, model):
        """Muon + AdamW (GPT.setup_optimizers) at the flags' lrs x --init-lr-frac; Newton-Schulz in
        bf16 where the matmuls run in bf16 on a CPU."""
        a, frac = self.args, self.args.init_lr_frac
        self.model = model
        self.optimizers = model.setup_optimizers(unembedding_lr=a.unembedding_lr * frac, embedding_lr=a.embedding_lr * frac,
                                                 matrix_lr=a.matrix_lr * frac, weight_decay=a.weight_decay)
        self.muon = self.optimizers[1]
        if self.device_type == "cpu" and self.dtype == torch.bfloat16:
            for group in self.muon.param_groups:  # Newton-Schulz in the dtype the matmuls are fast in
                group["ns_dtype"] = "bfloat16"
        print0(f"lr x {frac:g}: matrix {a.matrix_lr} | embedding {a.embedding_lr} | unembedding {a.unembedding_lr} | "
               f"weight decay {a.weight_decay} | run folder {self.run_dir}")
        return self.optimizers

    def fit_device_batch(self, seq_len, rows_per_rank, model=None):
        """--device-batch-size, with auto resolved: the largest power of two dividing rows_per_rank
        (the rows of one rank's optimizer step, so accumulation keeps the total exact) whose real
        forward, backward and optimizer step at (b, seq_len) run without running out of memory on
        every rank; the weights and the optimizer state are restored after each try. For a GPU
        named with --gpu (a plan of another machine) the planner's estimate decides instead.
        model: what the training step calls (the compiled model, so that the tries measure what the
        run will use; default the optimizers' model). Recorded in vars(args) and the results. Caveat: an out-of-memory inside the optimizer's
        collectives on one rank only would hang the others (the optimizer state is the same at every b)."""
        a, self.seq_len, self.rows_per_rank = self.args, seq_len, rows_per_rank
        saved = (self.resume_meta or {}).get("user_config", {}).get("device_batch_size")
        if a.device_batch_size == "auto" and isinstance(saved, int):  # --resume: the micro-batch the run was saved with
            print0(f"--device-batch-size auto -> {saved}: the micro-batch of the run resumed")
            a.device_batch_size = saved
        if a.device_batch_size != "auto":
            self.device_batch_size = a.device_batch_size
            return self.device_batch_size
        if a.gpu:  # planning another machine: its world size, the estimate
            world = a.num_gpus or self.world_size
            if rows_per_rank * self.world_size % world:
                self.fail(f"--num-gpus {world} does not divide the rows of one optimizer step "
                          f"({rows_per_rank * self.world_size}); pick another --num-gpus or total batch")
            rows_per_rank = self.rows_per_rank = rows_per_rank * self.world_size // world
            b = largest_fitting(candidates(rows_per_rank), lambda b: self.make_plan(0, 0, device_batch_size=b))
            how = f"the planner's estimate for {a.gpu}, not measured"
        else:
            self._forward = model or self.model
            b = search_device_batch(candidates(rows_per_rank), self._try_batch, self._agree, log=print0)
            self._snapshot = None
            how = f"measured: a real step at each size on {self.device_type}, eager"
        if b is None:
            self.fail(f"--device-batch-size auto: not even 1 row of {seq_len} tokens fits ({how}); lower "
                      f"--max-seq-len or --depth, or use more GPUs (the optimizer state is sharded)")
        a.device_batch_size = self.device_batch_size = b
        print0(f"--device-batch-size auto -> {b} ({how}): {rows_per_rank // b} micro-step(s) of {b} rows per rank")
        return b

    def _try_batch(self, b):
        """One real training step at micro-batch (b, seq_len) on random tokens, then undone: the
        weights come back from a CPU copy, the gradients and the optimizer state are cleared. Two
        micro-steps where the run accumulates, so that the second runs with the gradients there."""
        model = self.model
        if getattr(self, "_snapshot", None) is None:
            self._snapshot = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        try:
            x = torch.randint(0, model.config.vocab_size, (b, self.seq_len + 1), device=self.device)
            for _ in range(2 if self.rows_per_rank > b else 1):
                with self.autocast:
                    loss = self._forward(x[:, :-1], x[:, 1:])
                loss.backward()
                del loss
            for opt in self.optimizers:
                opt.step()
            if self.device_type == "cuda":
                torch.cuda.synchronize()
        finally:
            model.zero_grad(set_to_none=True)
            for opt in self.optimizers:
                opt.state.clear()
            model.load_state_dict(self._snapshot)

    def _agree(self, ok):
        """True when ok is True on every rank."""
        if self.world_size == 1:
            return ok
        flag = torch.tensor([int(ok)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def hardware(self):
        """The plan's hardware: --gpu x --num-gpus, else this machine's (nanochat.plan)."""
        a = self.args
        try:
            if a.gpu:
                return resolve_hardware(a.gpu, a.num_gpus or self.world_size, a.gpu_memory_gb, a.gpu_peak_tflops,
                                        self.plan_dtype())
            return detect_hardware(self.device, a.num_gpus or self.world_size, self.dtype, a.gpu_memory_gb,
                                   a.gpu_peak_tflops, need_peak=a.dry_run)
        except PlanError as e:  # a GPU the table does not know: its figures are asked for, not guessed
            self.fail(e)

    def plan_dtype(self):
        """The compute dtype of the planned run: bf16 on a named GPU under --dtype auto, else this run's."""
        return torch.bfloat16 if self.args.gpu and self.args.dtype == "auto" else self.dtype

    def make_plan(self, tokens, steps, device_batch_size=None, mfu=DEFAULT_MFU, flops_per_token=None, note=""):
        """The stage's plan (nanochat.plan.stage_plan) at this run's shapes."""
        a, hw = self.args, self.hardware()
        b = device_batch_size or self.device_batch_size
        memory = None
        if self.seq_len is not None and isinstance(b, int):
            flag = getattr(a, "compile", None)  # None: on CUDA only, as the scripts decide (chat_rl: no compile)
            compiled = flag if flag is not None else hasattr(a, "compile") and bool(a.gpu or self.device_type == "cuda")
            memory = memory_plan(self.model.config, b, self.seq_len, hw.count, self.plan_dtype(),
                                 "cuda" if a.gpu else self.device_type, compiled, grad_accum=(self.rows_per_rank or b) // b)
        return stage_plan(self.name, self.model.config, tokens, steps, hw, memory, mfu=a.mfu or mfu,
                          flops_per_token=flops_per_token, note=note)

    def start(self, loop, tokens_per_step, flops_per_token, num_iterations, time_budget_s=None, plan=None):
        """The plan (printed; a micro-batch that the planner says does not fit refuses to start; with
        --dry-run the stage stops here, exit 0, nothing written), then the loop state (`loop`: the
        stage's own values, saved in every checkpoint), the meter, --resume (weights, optimizers,
        loop, meter), wandb, log.jsonl and the SIGTERM flag. plan: make_plan's tokens, mfu,
        flops_per_token, note where tokens_per_step x steps is not the stage's count.
        Returns the run's data position to start from (every stream's; each loader takes its own
        streams'), None: the start."""
        plan = dict(dict(tokens=(tokens_per_step or 0) * (num_iterations or 0)), **(plan or {}))
        if time_budget_s is not None:
            plan["note"] = "the horizon is a time budget: tokens and steps are not known in advance"
        try:
            the_plan = self.make_plan(steps=num_iterations or 0, **plan)
            print0(format_plan(the_plan))
            if self.args.device_batch_size != "auto":  # auto measured what fits; the estimate does not overrule it
                check_fits(the_plan)
        except PlanError as e:
            self.fail(e)
        if self.args.dry_run:
            print0(f"{self.name}: dry run, stopping before training (nothing written)")
            compute_cleanup(together=True)
            sys.exit(0)
        self.num_iterations, self.time_budget_s = num_iterations, time_budget_s
        self.meter = ProgressMeter(tokens_per_step, flops_per_token, self.peak_flops, self.world_size, num_iterations,
                                   time_budget_s)
        self.loop = loop
        if self.args.resume:
            try:
                self.step, self.data_state, meta = load_training_state(self.run_dir, self.model, self.optimizers,
                                                                       self.device, asdict(self.model.config))
            except (FileNotFoundError, CheckpointError) as e:  # another run's folder / world size / a corrupt file
                self.fail(f"--resume: {e}")
            self.loop = meta["loop_state"]
            self.meter.load_state_dict(self.loop.pop("meter"))
            saved_world = meta.get("world_size", self.world_size)
            print0(f"resumed from {self.run_dir} at step {self.step}"
                   + (f" (saved by {saved_world} ranks, now {self.world_size})" if saved_world != self.world_size else ""))
        self.wandb_run = None
        if self.wandb and self.master:
            import wandb
            self.wandb_run = wandb.init(project="nanochat", name=self.args.run, config=vars(self.args))
        self.log = RunLog(self.run_dir, self.master, resume_step=self.step if self.args.resume else None,
                          wandb_run=self.wandb_run)
        self.stop = StopFlag()
        return self.data_state

    # -------------------------------------------------------------------------
    # the loop

    def save(self):
        """A resumable checkpoint of this step (every rank calls it)."""
        meta = dict(model_config=asdict(self.model.config), user_config=vars(self.args),
                    compute_dtype=dtype_name(self.dtype), **self.meta_extra,
                    loop_state=dict(self.loop, meter=self.meter.state_dict()))
        save_training_state(self.run_dir, self.step, self.model, self.optimizers, meta, self.data_state)
        print0(f"saved checkpoint of step {self.step} to {self.run_dir}")

    def last_step(self):
        if self.time_budget_s is not None:
            return self.meter.train_time >= self.time_budget_s
        return self.step >= self.num_iterations

    def steps(self, evaluate=None):
        """Yield the step to train at each boundary, after evaluate(step, last) and the saves due."""
        save_every = self.args.save_every
        while True:
            if self.stopping:  # SIGTERM on some rank during the last step: every rank saves and leaves together
                self.save()
                print0(f"stopped on SIGTERM after step {self.step}; continue with the same flags plus --resume")
                return
            last = self.last_step()
            if evaluate is not None:
                evaluate(self.step, last)
            if (last and save_every != 0) or (save_every and self.step % save_every == 0 and self.step > 0):
                self.save()
            if last:
                return
            yield self.step
            self.step += 1

    def progress(self):
        """The fraction of the horizon done before this step (nanochat/schedules.py)."""
        if self.time_budget_s is not None:
            return self.meter.train_time / self.time_budget_s
        return self.step / self.num_iterations

    def optimizer_step(self, momentum_warmup=True, skip=False):
        """Set the lr multiplier of this step (and Muon's momentum warm-up), step both optimizers and
        clear the gradients; returns the multiplier. skip=True (decided alike on every rank) leaves the
        weights and the optimizer state bitwise as they are, and clears the gradients."""
        a = self.args
        lrm = lr_multiplier(self.progress(), a.warmup_ratio, a.warmdown_ratio, a.final_lr_frac)
        if not skip:
            set_lr(self.optimizers, lrm)
            if momentum_warmup:
                set_momentum(self.muon, self.step)
            for opt in self.optimizers:
                opt.step()
        self.model.zero_grad(set_to_none=True)
        return lrm

    def reduce(self, loss):
        """The step's loss averaged over ranks (a 0-d tensor in, a float out), in the all-reduce that
        also agrees on SIGTERM; waits for the device so that the step's time is right."""
        train_loss, self.stopping = self.stop.reduce(loss, self.device)
        if self.device_type == "cuda":
            torch.cuda.synchronize()
        return train_loss

    def log_step(self, train_loss, dt, lrm=None, tokens=None, log_extra=None, **extra):
        """The progress line (rank 0) and the step's log record; `extra` goes into both, `log_extra`
        into the record only."""
        line, rec = self.meter.update(self.step, train_loss, dt, lrm=lrm, tokens=tokens, device=self.device, **extra)
        print0(line, flush=True)
        self.log.record(dict(rec, **(log_extra or {})))

    def end_step(self, loss, t0, lrm=None, tokens=None, **extra):
        """reduce() then log_step() of a step that started at time.perf_counter() t0."""
        train_loss = self.reduce(loss)
        self.log_step(train_loss, time.perf_counter() - t0, lrm=lrm, tokens=tokens, **extra)

    def evaluate_val_loss(self, model, val_batches, token_bytes):
        """The chat stages' val-loss evaluation: mean loss and bpb on the assistant tokens of the
        held-out batches (nanochat/loss_eval.py), their minima in the loop state, a line, a record."""
        loop, t0 = self.loop, time.perf_counter()
        with self.autocast:
            loop["val_loss"], loop["val_bpb"] = evaluate_loss_bpb(model, val_batches, token_bytes)
        loop["min_val_loss"] = min(loop.get("min_val_loss") or math.inf, loop["val_loss"])
        loop["min_val_bpb"] = min(loop.get("min_val_bpb") or math.inf, loop["val_bpb"])
        self.record_eval(f"val loss {loop['val_loss']:.6f} | val bpb {loop['val_bpb']:.6f} | eval "
                         f"{time.perf_counter() - t0:.1f}s", val_loss=loop["val_loss"], val_bpb=loop["val_bpb"],
                         train_time=self.meter.train_time)

    def record_eval(self, line, **values):
        """An evaluation's line (`step NNNNN | line`) and log record at this step boundary."""
        print0(f"step {self.step:05d} | {line}")
        self.log.record(dict(step=self.step, **values))

    # -------------------------------------------------------------------------
    # the end

    def finish(self, summary, metrics, extra=None, artifacts=None):
        """summary.json (the stage's `summary` plus step, training time, tokens, FLOPs, MFU, dtype),
        loss.svg and the results record <stage>_<tag>.json with `metrics` (plus the timings); a
        final line of the metrics. Nothing but the summary after a SIGTERM. Leaves the process group."""
        summary = dict(step=self.step, **summary, **self.meter.summary(), compute_dtype=dtype_name(self.dtype),
                       stopped_on_sigterm=self.stopping)
        if self.source is not None:
            summary["source"] = self.source
        if self.master and not self.stopping:
            if isinstance(self.device_batch_size, int):
                metrics = dict(metrics, device_batch_size=self.device_batch_size)
            metrics = dict(metrics, tokens=summary["total_tokens"], mfu=summary["mfu"], tok_per_s=summary["tok_per_s"],
                           training_time_s=summary["training_time_s"], compute_dtype=summary["compute_dtype"])
            print0("final: " + " | ".join(f"{k} {v:.6g}" if isinstance(v, float) else f"{k} {v}"
                                          for k, v in metrics.items()))
            files = dict(finish_run(self.run_dir, summary, self.master), **(artifacts or {}))
            save_results(self.name, name=f"{self.name}_{self.model_tag}", model_tag=self.model_tag, step=self.step,
                         source=(self.source or {}).get("source"), config=vars(self.args), metrics=metrics,
                         artifacts=files, extra=extra)
        if self.wandb_run is not None:
            self.wandb_run.finish()
        compute_cleanup(together=True)
        return summary
