"""ivmixed.evaluate against a tiny random CLIP saved to disk, with metrics recomputed here from the model."""

import csv
import json
import math
import os
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from transformers import CLIPModel, CLIPProcessor

from ivmixed import evaluate as ev

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def clip(clip_folder):
    return ev.load_clip(clip_folder, "cpu")


def random_frames(seed, count=4):
    return np.random.default_rng(seed).integers(0, 256, size=(count, 32, 32, 3), dtype=np.uint8)


def write_run(folder, entries, lines_before=()):
    """Videos as named in ``entries[i]['files']`` (mp4 or gif, random frames) and the manifest."""
    for number, entry in enumerate(entries):
        for variant, name in entry["files"].items():
            frames = random_frames(10 * number + len(variant))
            kwargs = {"fps": 8} if name.endswith(".mp4") else {"duration": 100, "loop": 0}
            iio.imwrite(os.path.join(folder, name), frames, **kwargs)
    with open(os.path.join(folder, ev.MANIFEST_NAME), "w") as f:
        f.writelines(lines_before)
        for entry in entries:
            f.write(json.dumps({"fingerprint": entry["id"], **entry}) + "\n\n")


@pytest.fixture(scope="module")
def reference(clip_folder):
    """A second copy of the model, loaded directly, for the expected values."""
    return CLIPModel.from_pretrained(clip_folder).eval(), CLIPProcessor.from_pretrained(clip_folder)


def reference_scores(reference, frames, prompt):
    """The metrics from CLIPModel's own forward pass: its normalized embeddings and cosine logits."""
    model, processor = reference
    inputs = processor(text=[prompt], images=list(frames), return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**inputs)
    alignment = (out.logits_per_text[0] / model.logit_scale.exp()).mean().item() * 100
    images = out.image_embeds
    consistency = torch.diagonal(images @ images.T, offset=1).mean().item() * 100
    return alignment, consistency


def test_clip_scores_match_the_model_forward(clip, reference):
    frames = random_frames(1)
    expected = reference_scores(reference, frames, "a cat surfing a wave")
    assert ev.clip_scores(*clip, frames, "a cat surfing a wave") == pytest.approx(expected, abs=1e-4)
    assert ev.clip_scores(*clip, frames, "a cat surfing a wave", batch_size=3) == pytest.approx(expected, abs=1e-4)


def test_identical_frames_are_fully_consistent(clip):
    frames = np.repeat(random_frames(2, count=1), 5, axis=0)
    assert ev.clip_scores(*clip, frames, "still")[1] == pytest.approx(100.0, abs=1e-4)
    assert math.isnan(ev.clip_scores(*clip, frames[:1], "one frame")[1])


def test_read_manifest_last_line_wins_and_checks_fields(tmp_path):
    stale = json.dumps({"id": "a", "fingerprint": "a", "prompt": "old", "seed": 1, "files": {"iv_mix": "x.mp4"}}) + "\n"
    write_run(str(tmp_path), [{"id": "a", "prompt": "new", "seed": 2, "files": {"iv_mix": "a.gif"}, "extra": [1]}], [stale])
    assert [(e["id"], e["prompt"]) for e in ev.read_manifest(str(tmp_path))] == [("a", "new")]
    (tmp_path / ev.MANIFEST_NAME).write_text('{"id": "a", "fingerprint": "a", "prompt": "p", "files": {}}\n')
    with pytest.raises(ev.UsageError, match="'a'.*lacks"):
        ev.read_manifest(str(tmp_path))
    (tmp_path / ev.MANIFEST_NAME).write_text("\n  \nnot json\n")
    with pytest.raises(ev.UsageError, match="no videos"):
        ev.read_manifest(str(tmp_path))


def test_cli_writes_rows_and_averages(tmp_path, clip_folder, reference):
    entries = [
        {"id": "p0", "prompt": "a red car | fast", "seed": 7, "files": {"iv_mix": "p0_iv.mp4", "standard": "p0_std.mp4"}},
        {"id": "p1", "prompt": "a dog", "seed": 8, "files": {"iv_mix": "p1_iv.gif", "standard": "p1_std.gif"}},
    ]
    write_run(str(tmp_path), entries)
    assert ev.main([str(tmp_path), "--clip-model", clip_folder, "--device", "cpu", "--batch-size", "3"]) == 0

    with open(tmp_path / "metrics.csv", newline="") as f:
        table = list(csv.DictReader(f))
    rows = {(r["id"], r["variant"]): r for r in table}
    assert set(rows) == {(e["id"], v) for e in entries for v in ev.VARIANTS}
    for entry in entries:
        for variant in ev.VARIANTS:
            frames = iio.imread(os.path.join(tmp_path, entry["files"][variant]))
            expected = reference_scores(reference, frames, entry["prompt"])
            row = rows[(entry["id"], variant)]
            assert (float(row["clip_score"]), float(row["frame_consistency"])) == pytest.approx(expected, abs=1e-4)
            assert row["seed"] == str(entry["seed"]) and int(row["num_frames"]) == len(frames)

    with open(tmp_path / "metrics_summary.csv", newline="") as f:
        means = {r["variant"]: r for r in csv.DictReader(f)}
    for metric in ev.METRICS:
        per_variant = {v: np.mean([float(rows[(e["id"], v)][metric]) for e in entries]) for v in ev.VARIANTS}
        for variant in ev.VARIANTS:
            assert float(means[variant][metric]) == pytest.approx(per_variant[variant], abs=1e-9)
        difference = per_variant["iv_mix"] - per_variant["standard"]
        assert float(means[ev.DIFFERENCE][metric]) == pytest.approx(difference, abs=1e-9)

    markdown = (tmp_path / "metrics.md").read_text()
    assert "a red car \\| fast" in markdown and "## Averages" in markdown
    assert f"{float(means['iv_mix']['clip_score']):.2f}" in markdown
    assert not [name for name in os.listdir(tmp_path) if "partial" in name]


def test_iv_mix_only_and_unreadable_videos(tmp_path, clip_folder):
    entries = [{"id": "solo", "prompt": "p", "seed": 1, "files": {"iv_mix": "solo.gif"}}]
    write_run(str(tmp_path), entries)
    with open(tmp_path / ev.MANIFEST_NAME, "a") as f:
        f.write(json.dumps({"id": "gone", "fingerprint": "g", "prompt": "q", "seed": 2, "files": {"iv_mix": "missing.mp4"}}) + "\n")
    rows = ev.evaluate(str(tmp_path), clip_folder, "cpu")
    assert [(r["id"], r["variant"]) for r in rows] == [("solo", "iv_mix")]
    summary = ev.summarize(rows)
    assert summary["iv_mix"]["videos"] == 1 and summary["standard"]["videos"] == 0
    assert math.isnan(summary[ev.DIFFERENCE]["clip_score"])
    markdown = open(ev.write_markdown(rows, summary, str(tmp_path / "metrics.md"), "tiny")).read()
    assert "| solo | p | 1 | — |" in markdown
    with open(ev.write_csv(rows, str(tmp_path / "metrics.csv")), newline="") as f:
        assert [r["variant"] for r in csv.DictReader(f)] == ["iv_mix"]
    with open(ev.write_summary_csv(summary, str(tmp_path / "metrics_summary.csv")), newline="") as f:
        assert [r["variant"] for r in csv.DictReader(f)] == ["standard", "iv_mix", ev.DIFFERENCE]


def one_line_error(stderr):
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m ivmixed.evaluate: error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_missing_manifest_exits_2_in_a_subprocess(tmp_path):
    """The real entry point, offline: one line, no traceback (slow: the subprocess imports the package)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-m", "ivmixed.evaluate", str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2
    assert "manifest.jsonl" in one_line_error(result.stderr)


@pytest.mark.parametrize(
    "manifest, flags, message",
    [
        (None, [], "no such folder"),
        ("", [], "lists no videos"),
        ("", ["--batch-size", "0"], "--batch-size must be at least 1"),
        ("", ["--device", "warp-drive"], "is not a torch device"),
    ],
)
def test_usage_errors_exit_2(tmp_path, capsys, manifest, flags, message):
    run = tmp_path / "run"
    if manifest is not None:
        run.mkdir()
        (run / ev.MANIFEST_NAME).write_text(manifest)
    with pytest.raises(SystemExit) as stop:
        ev.main([str(run), *flags])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_uncached_clip_model_offline_exits_1_naming_the_download(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_run(str(tmp_path), [{"id": "a", "prompt": "p", "seed": 1, "files": {"iv_mix": "a.gif"}}])
    assert ev.main([str(tmp_path), "--clip-model", "no-such-org/no-such-clip", "--device", "cpu"]) == 1
    line = one_line_error(capsys.readouterr().err)
    assert "`hf download no-such-org/no-such-clip`" in line and "--clip-model" in line and "HF_HUB_OFFLINE" in line
    assert not (tmp_path / "metrics.csv").exists()


def test_tiny_clip_scores_a_tiny_run_offline(tmp_path):
    from ivmixed.cli import main as generate

    out = tmp_path / "out"
    assert generate(["--tiny", "--prompt", "a cat", "--inference-step", "2", "--num-frames", "2",
                     "--output-dir", str(out)]) == 0
    result = subprocess.run([sys.executable, "-m", "ivmixed.evaluate", str(out), "--tiny", "--device", "cpu"], cwd=REPO,
                            capture_output=True, text=True, timeout=300, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert result.returncode == 0, result.stderr
    with open(out / "metrics.csv", newline="") as f:
        assert sorted(r["variant"] for r in csv.DictReader(f)) == ["iv_mix", "standard"]
