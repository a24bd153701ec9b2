"""
Export a checkpoint to a Hugging Face folder that transformers loads with its native
NanoChatForCausalLM (no trust_remote_code, no nanochat installed): config.json, model.safetensors,
tokenizer.json, tokenizer_config.json (with the chat template), generation_config.json and a model
card README.md. What is in each file: nanochat/hf.py.

    python -m scripts.export_hf -i sft --out hf/nanochat-d20            # the largest sft model, latest step
    python -m scripts.export_hf -i base --model-tag d4 --step 500 --out hf/base-d4
    python -m scripts.export_hf -i sft --dtype bfloat16 --out hf/d20-bf16   # half the size, not bit-exact
    python -m scripts.export_hf --hf-path converted/ --out hf/d32          # re-export a folder (e.g. transformers' converter's)

One process on the CPU; no torchrun. The card gets the summary table of the run's report.md
(--report, default <base dir>/report/report.md) when there is one. Loading the folder back:
`--hf-path DIR` on chat_cli, chat_web, chat_eval and the training stages.
"""

import argparse
import os
import sys

import torch

from nanochat.checkpoint_manager import SOURCE_DIRS, CheckpointError, load_model
from nanochat.common import get_base_dir
from nanochat.flags import add_source_flags
from nanochat.hf import export

parser = argparse.ArgumentParser(description="Export a nanochat checkpoint to a Hugging Face (transformers) folder.")
# model
add_source_flags(parser, tuple(sorted(SOURCE_DIRS)))
# output
parser.add_argument("--out", required=True, help="output folder (created; files in it are replaced)")
parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="dtype of the exported weights (float32: bit-identical to the checkpoint)")
parser.add_argument("--report", default=None,
                    help="the run's report.md, whose summary table goes into the card (default: <base dir>/report/report.md)")
args = parser.parse_args()
print(f"args: {vars(args)}")

if os.path.exists(args.out) and not os.path.isdir(args.out):
    parser.error(f"--out {args.out} exists and is not a folder")
try:
    model, tokenizer, meta = load_model(args.source, torch.device("cpu"), "eval", model_tag=args.model_tag,
                                        step=args.step, hf_path=args.hf_path)
except (FileNotFoundError, CheckpointError, ValueError) as e:
    sys.exit(f"export_hf: error: cannot load the model: {e}")
source = (meta["hf_provenance"].get("source") or "hf") if args.hf_path else args.source
provenance = dict(source=source, model_tag=meta["model_tag"], step=meta["step"])
report = args.report or os.path.join(get_base_dir(), "report", "report.md")
try:
    export(model, tokenizer, args.out, provenance, report_md=report, dtype=getattr(torch, args.dtype),
           training=meta.get("user_config"))
except ValueError as e:  # nanochat.hf.HFFormatError: a feature the native class cannot express
    sys.exit(f"export_hf: error: {e}")

print(f"exported {source} model {meta['model_tag']} step {meta['step']} ({model.num_params():,} parameters, "
      f"{args.dtype}) to {args.out}: {', '.join(sorted(os.listdir(args.out)))}")
print(f"card: {'with the summary table of ' + report if os.path.isfile(report) else 'no report.md found at ' + report}")
print("load it with transformers.AutoModelForCausalLM.from_pretrained / AutoTokenizer.from_pretrained, "
      f"or chat with it: python -m scripts.chat_cli --hf-path {args.out}")
