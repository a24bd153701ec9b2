"""
The CORE eval bundle on disk: core.yaml (the task list), eval_meta_data.csv (random baselines) and
eval_data/<category>/<task>.jsonl, read from $NANOCHAT_DATA_DIR/core/ when a mirror is set, else
downloaded once (retries, atomic extraction) into get_base_dir()/eval_bundle. Scoring is
nanochat/core_eval.py's. Tests: tests/test_core_bundle.py.
"""

import csv
import json
import os
import re
import shutil
import tempfile
import time
import urllib.request
import zipfile

from nanochat.common import get_base_dir, get_data_dir, iter_jsonl, print0

EVAL_BUNDLE_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"
TASK_TYPES = ("multiple_choice", "schema", "language_modeling")
DEFAULT_DELIMITER = " "  # llm-foundry's default continuation_delimiter

# -----------------------------------------------------------------------------
# A reader for the small YAML subset that core.yaml uses (PyYAML is not a dependency):
#   top-level `key: scalar` or `key:` followed by a list of flat mappings (`-` then `  k: v` lines);
#   scalars are "double quoted" (JSON escapes), 'single quoted', [flow, lists], ints, floats, bools, bare words.

_INT_RE = re.compile(r"^[-+]?\d+$")
_FLOAT_RE = re.compile(r"^[-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?$")


def _parse_scalar(text, where):
    text = text.strip()
    if text.startswith('"'):
        try:
            # JSON's escapes (\n \t \" \\ \uXXXX) are the ones YAML double-quoted strings use here
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: cannot read the double-quoted string {text!r} ({e})") from None
    if text.startswith("'"):
        if len(text) < 2 or not text.endswith("'"):
            raise ValueError(f"{where}: unterminated single-quoted string {text!r}")
        return text[1:-1].replace("''", "'")
    if " #" in text:  # an inline comment after an unquoted value
        text = text.split(" #", 1)[0].rstrip()
    if text.startswith("["):
        if not text.endswith("]"):
            raise ValueError(f"{where}: unterminated flow list {text!r}")
        inner = text[1:-1].strip()
        return [_parse_scalar(part, where) for part in inner.split(",")] if inner else []
    if text in ("", "~", "null"):
        return None
    if text in ("true", "false"):
        return text == "true"
    if _INT_RE.match(text):
        return int(text)
    if _FLOAT_RE.match(text):
        return float(text)
    return text


def _split_key_value(text, where):
    key, sep, value = text.partition(":")
    key = key.strip()
    if not sep or not key or not re.match(r"^[A-Za-z_][\w.-]*$", key):
        raise ValueError(f"{where}: expected `key: value`, got {text!r}")
    return key, value.strip()


def read_simple_yaml(path):
    """Parse core.yaml's layout into a dict (see the comment above for the subset supported)."""
    result, current_list, current_item = {}, None, None
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            line = raw.rstrip("\n").rstrip("\r")
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            if "\t" in line[: len(line) - len(line.lstrip())]:
                raise ValueError(f"{where}: tabs are not allowed in YAML indentation")
            indent = len(line) - len(line.lstrip(" "))
            if stripped == "-" or stripped.startswith("- "):
                if current_list is None:
                    raise ValueError(f"{where}: a list item with no `key:` line above it")
                current_item = {}
                current_list.append(current_item)
                rest = stripped[1:].strip()
                if rest:
                    key, value = _split_key_value(rest, where)
                    current_item[key] = _parse_scalar(value, where)
            elif indent == 0:
                key, value = _split_key_value(stripped, where)
                current_item = None
                if value:
                    result[key], current_list = _parse_scalar(value, where), None
                else:
                    result[key] = current_list = []
            else:
                if current_item is None:
                    raise ValueError(f"{where}: an indented `key: value` outside a list item")
                key, value = _split_key_value(stripped, where)
                current_item[key] = _parse_scalar(value, where)
    return result


# -----------------------------------------------------------------------------
# The eval bundle

def download_eval_bundle(dest_dir, url=EVAL_BUNDLE_URL, retries=5, backoff_s=2.0):
    """Download the eval bundle zip and extract it into dest_dir (atomically: the folder appears complete or not at all)."""
    parent = os.path.dirname(os.path.abspath(dest_dir))
    os.makedirs(parent, exist_ok=True)
    if os.path.exists(dest_dir):
        raise FileExistsError(f"{dest_dir} exists but has no core.yaml (an incomplete bundle?); delete it and run again")
    zip_path = dest_dir + ".zip"
    last_error = None
    for attempt in range(1, retries + 1):
        try:
            tmp_zip = f"{zip_path}.tmp{os.getpid()}"
            with urllib.request.urlopen(url, timeout=60) as response, open(tmp_zip, "wb") as f:
                shutil.copyfileobj(response, f)
            os.replace(tmp_zip, zip_path)
            break
        except (OSError, ValueError) as e:  # URLError and socket errors are OSErrors
            last_error = e
            if os.path.exists(tmp_zip):
                os.remove(tmp_zip)
            print0(f"download of {url} failed (attempt {attempt}/{retries}): {e}")
            if attempt < retries:
                time.sleep(backoff_s * 2 ** (attempt - 1))
    else:
        raise RuntimeError(
            f"Could not download the CORE eval bundle from {url} after {retries} attempts ({last_error}). "
            f"Without network access, set NANOCHAT_DATA_DIR to a data mirror that has core/core.yaml "
            f"(e.g. NANOCHAT_DATA_DIR=../shared/data)."
        )
    # extract next to the destination, then move the folder holding core.yaml into place
    tmp_dir = tempfile.mkdtemp(prefix="eval_bundle_", dir=parent)
    try:
        try:
            with zipfile.ZipFile(zip_path) as zf:
                zf.extractall(tmp_dir)
        except zipfile.BadZipFile as e:
            os.remove(zip_path)
            raise RuntimeError(f"{url} did not give a valid zip file ({e}); it was deleted, run again to retry") from None
        roots = [tmp_dir] + [os.path.join(tmp_dir, d) for d in sorted(os.listdir(tmp_dir))]
        root = next((r for r in roots if os.path.isfile(os.path.join(r, "core.yaml"))), None)
        if root is None:
            raise RuntimeError(f"the zip from {url} has no core.yaml at its top level or in its top folder")
        os.replace(root, dest_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    os.remove(zip_path)
    return dest_dir


def get_core_bundle_dir():
    """$NANOCHAT_DATA_DIR/core when a mirror is set, else get_base_dir()/eval_bundle (downloaded on first use)."""
    data_dir = get_data_dir()
    if data_dir is not None:
        bundle = os.path.join(data_dir, "core")
        if not os.path.isfile(os.path.join(bundle, "core.yaml")):
            raise FileNotFoundError(
                f"NANOCHAT_DATA_DIR={data_dir!r} has no core/core.yaml. Point it at a mirror laid out like "
                f"../shared/data (core/core.yaml, core/eval_meta_data.csv, core/eval_data/), or unset it "
                f"to download the bundle from {EVAL_BUNDLE_URL}."
            )
        return bundle
    bundle = os.path.join(get_base_dir(), "eval_bundle")
    if not os.path.isfile(os.path.join(bundle, "core.yaml")):
        download_eval_bundle(bundle)
    return bundle


def load_baselines(bundle_dir):
    """{task label: random baseline as a fraction 0..1} from eval_meta_data.csv (which gives percent)."""
    path = os.path.join(bundle_dir, "eval_meta_data.csv")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        for column in ("Eval Task", "Random baseline"):
            if column not in (reader.fieldnames or []):
                raise ValueError(f"{path}: no column {column!r} (columns: {reader.fieldnames})")
        baselines = {}
        for lineno, row in enumerate(reader, 2):
            try:
                percent = float(row["Random baseline"])
            except (TypeError, ValueError):
                raise ValueError(f"{path}:{lineno}: random baseline {row['Random baseline']!r} is not a number") from None
            if not 0.0 <= percent < 100.0:
                raise ValueError(f"{path}:{lineno}: random baseline {percent} is not a percentage in [0, 100)")
            baselines[row["Eval Task"].strip()] = percent / 100.0
    return baselines


def load_core_tasks(bundle_dir):
    """The task list of core.yaml, each a dict: label, dataset_uri, num_fewshot, task_type,
    continuation_delimiter, random_baseline (a fraction 0..1)."""
    path = os.path.join(bundle_dir, "core.yaml")
    config = read_simple_yaml(path)
    entries = config.get("icl_tasks")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: expected a non-empty `icl_tasks:` list")
    baselines = load_baselines(bundle_dir)
    tasks = []
    for entry in entries:
        for key in ("label", "dataset_uri", "num_fewshot", "icl_task_type"):
            if key not in entry:
                raise ValueError(f"{path}: task {entry.get('label', entry)} has no {key!r}")
        label, shots = entry["label"], entry["num_fewshot"]
        if isinstance(shots, list):  # DCLM lists one few-shot count per task
            if len(shots) != 1:
                raise ValueError(f"{path}: task {label} has num_fewshot {shots}; one value is supported")
            shots = shots[0]
        if not isinstance(shots, int) or shots < 0:
            raise ValueError(f"{path}: task {label} has num_fewshot {shots!r}; expected a non-negative int")
        if entry["icl_task_type"] not in TASK_TYPES:
            raise ValueError(f"{path}: task {label} has icl_task_type {entry['icl_task_type']!r}; expected one of {TASK_TYPES}")
        if label not in baselines:
            raise ValueError(f"{path}: task {label} has no row in eval_meta_data.csv, so no random baseline")
        tasks.append(dict(
            label=label,
            dataset_uri=entry["dataset_uri"],
            num_fewshot=shots,
            task_type=entry["icl_task_type"],
            continuation_delimiter=entry.get("continuation_delimiter", DEFAULT_DELIMITER),
            random_baseline=baselines[label],
        ))
    return tasks


def load_task_data(bundle_dir, task_meta):
    """The task's items (list of dicts) from eval_data/<dataset_uri>, checked for the fields its kind needs."""
    path = os.path.join(bundle_dir, "eval_data", task_meta["dataset_uri"])
    if not os.path.isfile(path):
        raise FileNotFoundError(f"task {task_meta['label']}: data file {path} is missing from the eval bundle")
    needed = {"multiple_choice": ("query", "choices", "gold"), "schema": ("context_options", "continuation", "gold"),
              "language_modeling": ("context", "continuation")}[task_meta["task_type"]]
    data = []
    for lineno, item in iter_jsonl(path):
        missing = [k for k in needed if k not in item]
        if missing:
            raise ValueError(f"{path}:{lineno}: a {task_meta['task_type']} item needs {missing}")
        data.append(item)
    return data
