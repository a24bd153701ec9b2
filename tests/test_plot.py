"""nanochat/plot.py: the SVG drawn from a training log has one panel per series, with the points
placed by step and value (larger values higher up)."""

import json
import xml.etree.ElementTree as ET

import pytest

from nanochat.plot import plot_training_log

SVG = "{http://www.w3.org/2000/svg}"


def write_log(path, records):
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def points(polyline):
    return [tuple(map(float, p.split(","))) for p in polyline.get("points").split()]


def test_loss_curves_are_drawn_by_step_and_value(tmp_path):
    log = tmp_path / "log.jsonl"
    records = [{"step": s, "loss": 9.0, "smooth_loss": 10.0 - s} for s in range(6)]
    records.insert(3, {"step": 3, "val_bpb": 2.0})
    records.append({"step": 5, "val_bpb": 1.5})
    write_log(log, records)
    svg = tmp_path / "loss.svg"
    assert plot_training_log(str(log), str(svg)) == ["smooth_loss", "val_bpb"]
    train, val = ET.parse(svg).getroot().iter(f"{SVG}polyline")
    train_pts, val_pts = points(train), points(val)
    assert len(train_pts) == 6 and len(val_pts) == 2
    xs, ys = zip(*train_pts)
    assert list(xs) == sorted(xs) and len(set(xs)) == 6      # later steps further right
    assert list(ys) == sorted(ys)                              # falling loss goes down the page
    assert val_pts[0][1] < val_pts[1][1]                       # 2.0 drawn above 1.5


def test_log_without_series_draws_nothing_and_bad_lines_are_named(tmp_path):
    log = tmp_path / "log.jsonl"
    write_log(log, [{"step": 0, "lrm": 1.0}])
    assert plot_training_log(str(log), str(tmp_path / "x.svg")) == []
    assert not (tmp_path / "x.svg").exists()
    log.write_text('{"step": 0, "smooth_loss": 1.0}\nnot json\n')
    with pytest.raises(ValueError, match="log.jsonl:2"):
        plot_training_log(str(log), str(tmp_path / "x.svg"))


def test_a_lone_evaluation_is_a_visible_dot_in_the_middle(tmp_path):
    # a short run evaluates once: its one point used to be an invisible polyline on the panel's edge
    log = tmp_path / "log.jsonl"
    write_log(log, [{"step": s, "smooth_loss": 5.0 - s} for s in range(50)] + [{"step": 50, "val_bpb": 1.9}])
    svg = tmp_path / "loss.svg"
    assert plot_training_log(str(log), str(svg)) == ["smooth_loss", "val_bpb"]
    root = ET.parse(svg).getroot()
    dots = list(root.iter(f"{SVG}circle"))
    assert len(dots) == 1  # the 50 training points get none, the lone evaluation one
    frame = list(root.iter(f"{SVG}rect"))[2]  # background, train panel, validation panel
    x0, w = float(frame.get("x")), float(frame.get("width"))
    y0, h = float(frame.get("y")), float(frame.get("height"))
    assert float(dots[0].get("cx")) == pytest.approx(x0 + w / 2, abs=0.1)
    assert float(dots[0].get("cy")) == pytest.approx(y0 + h / 2, abs=0.1)
