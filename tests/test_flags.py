"""The shared flag language (nanochat/flags.py): defaults are None, old names keep working and say the new one."""

import argparse

import pytest

from nanochat.flags import add_compute_flags, add_eval_items_flag, add_reply_flags, add_source_flags, renamed


def make_parser():
    parser = argparse.ArgumentParser(prog="demo")
    add_compute_flags(parser)
    add_source_flags(parser, ("mid", "sft"), default="sft")
    add_reply_flags(parser, max_new_tokens=64, temperature=0.6, top_k=50)
    add_eval_items_flag(parser, default=None)
    parser.add_argument("--resume", action="store_true", help="resume")
    renamed(parser, "--continue", "--resume")
    return parser


def test_defaults_are_none_and_dtype_auto():
    args = make_parser().parse_args([])
    assert (args.device_type, args.model_tag, args.step, args.eval_items) == (None, None, None, None)
    assert args.dtype == "auto" and args.source == "sft" and args.max_new_tokens == 64 and not args.resume


def test_old_names_store_into_the_new_flag_and_name_it(capsys):
    args = make_parser().parse_args(["--max-tokens", "7", "--max-per-task", "3", "--continue"])
    assert (args.max_new_tokens, args.eval_items, args.resume) == (7, 3, True)
    err = capsys.readouterr().err
    for old, new in (("--max-tokens", "--max-new-tokens"), ("--max-per-task", "--eval-items"), ("--continue", "--resume")):
        assert f"{old} is deprecated" in err and f"use {new}" in err


def test_old_name_keeps_the_type_check():
    with pytest.raises(SystemExit):
        make_parser().parse_args(["--max-tokens", "many"])


def test_source_without_default_is_required():
    parser = argparse.ArgumentParser(prog="demo")
    add_source_flags(parser, ("mid", "sft"))
    with pytest.raises(SystemExit):
        parser.parse_args([])
    assert parser.parse_args(["-i", "mid"]).source == "mid"
