"""
Tests for nanochat/core_bundle.py: reading core.yaml / eval_meta_data.csv / the data files, the
mirror, the download (atomic extraction, errors), and the real bundle of the data mirror when it
is beside the checkout. The tiny bundle and its items come from tests/test_core_eval.py.

    uv run pytest tests/test_core_bundle.py -q
"""

import os
import zipfile
from pathlib import Path

import pytest

from nanochat import core_bundle
from nanochat.core_bundle import load_core_tasks, read_simple_yaml
from test_core_eval import LM_ITEMS, MC_ITEMS, TINY_CSV, TINY_YAML, write_bundle

REAL_CORE = Path(__file__).resolve().parents[2] / "shared" / "data" / "core"


def test_read_tiny_bundle(tmp_path):
    bundle = write_bundle(tmp_path / "core")
    parsed = read_simple_yaml(bundle / "core.yaml")
    assert parsed == {"icl_tasks": [
        {"label": "mc_task", "dataset_uri": "cat/mc.jsonl", "num_fewshot": [2], "icl_task_type": "multiple_choice",
         "continuation_delimiter": "\nAnswer: "},
        {"label": "lm_task", "dataset_uri": "cat/lm.jsonl", "num_fewshot": [0], "icl_task_type": "language_modeling",
         "continuation_delimiter": "it's: ", "has_categories": True},
    ]}
    yaml = pytest.importorskip("yaml")  # PyYAML, when present, is the reference parser
    assert parsed == yaml.safe_load((bundle / "core.yaml").read_text())

    tasks = load_core_tasks(str(bundle))
    assert [(t["label"], t["num_fewshot"], t["task_type"], t["random_baseline"]) for t in tasks] == \
        [("mc_task", 2, "multiple_choice", 0.25), ("lm_task", 0, "language_modeling", 0.0)]
    assert core_bundle.load_task_data(str(bundle), tasks[0]) == MC_ITEMS
    assert core_bundle.load_task_data(str(bundle), tasks[1]) == LM_ITEMS


def test_bundle_errors_name_the_problem(tmp_path):
    bundle = write_bundle(tmp_path / "a", csv_text=TINY_CSV.replace("lm_task", "other_task"))
    with pytest.raises(ValueError, match="lm_task has no row in eval_meta_data.csv"):
        load_core_tasks(str(bundle))
    bundle = write_bundle(tmp_path / "b", yaml_text=TINY_YAML.replace("num_fewshot: [0]", "num_fewshot: [0, 5]"))
    with pytest.raises(ValueError, match="one value is supported"):
        load_core_tasks(str(bundle))
    bundle = write_bundle(tmp_path / "c", yaml_text=TINY_YAML + "  what is this\n")
    with pytest.raises(ValueError, match=r"core.yaml:15"):
        load_core_tasks(str(bundle))
    bundle = write_bundle(tmp_path / "d")
    (bundle / "eval_data" / "cat" / "lm.jsonl").write_text('{"context": "x", "continuation": "y"}\n{"context": "x"}\n')
    with pytest.raises(ValueError, match=r"lm.jsonl:2: a language_modeling item needs \['continuation'\]"):
        core_bundle.load_task_data(str(bundle), load_core_tasks(str(bundle))[1])


def test_bundle_dir_from_data_mirror(tmp_path, monkeypatch):
    write_bundle(tmp_path / "mirror" / "core")
    monkeypatch.setenv("NANOCHAT_DATA_DIR", str(tmp_path / "mirror"))
    assert core_bundle.get_core_bundle_dir() == str(tmp_path / "mirror" / "core")
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("NANOCHAT_DATA_DIR", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="has no core/core.yaml"):
        core_bundle.get_core_bundle_dir()


def test_download_extracts_zip_atomically(tmp_path):
    src = write_bundle(tmp_path / "src" / "eval_bundle")
    zip_path = tmp_path / "eval_bundle.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:  # the public zip holds one top folder, eval_bundle/
        for path in src.rglob("*"):
            zf.write(path, path.relative_to(src.parent))
    dest = tmp_path / "base" / "eval_bundle"
    core_bundle.download_eval_bundle(str(dest), url=zip_path.as_uri(), retries=1)
    assert [t["label"] for t in load_core_tasks(str(dest))] == ["mc_task", "lm_task"]
    assert sorted(os.listdir(tmp_path / "base")) == ["eval_bundle"]  # no zip or temporary folder left behind


def test_download_failure_names_url_and_mirror(tmp_path):
    url = "http://127.0.0.1:9/eval_bundle.zip"  # the discard port: connection refused
    with pytest.raises(RuntimeError, match="NANOCHAT_DATA_DIR") as err:
        core_bundle.download_eval_bundle(str(tmp_path / "eval_bundle"), url=url, retries=2, backoff_s=0.0)
    assert url in str(err.value)
    assert not (tmp_path / "eval_bundle").exists()


@pytest.mark.skipif(not REAL_CORE.is_dir(), reason="the data mirror ../shared/data is not present")
def test_real_bundle_lists_22_tasks_with_baselines():
    tasks = load_core_tasks(str(REAL_CORE))
    assert len(tasks) == 22 and len({t["label"] for t in tasks}) == 22
    baselines = core_bundle.load_baselines(str(REAL_CORE))
    for t in tasks:
        assert t["label"] in baselines and 0.0 <= t["random_baseline"] < 1.0  # fractions
        assert (REAL_CORE / "eval_data" / t["dataset_uri"]).is_file()
    assert sum(t["task_type"] == "schema" for t in tasks) == 2
    yaml = pytest.importorskip("yaml")
    assert read_simple_yaml(REAL_CORE / "core.yaml") == yaml.safe_load((REAL_CORE / "core.yaml").read_text())
