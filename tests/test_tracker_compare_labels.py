"""``tracker.compare --one-stage [LABEL=]PATH ...``: several labelled one-stage students, of either
family, as rows of one table. Students are tiny random models (plumbing only)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tracker import compare
from tracker.comparison import ComparisonConfig, LabelledCheckpoint
from tracker.sources import SourceError

TINY = {"backbone": "mobilenet_v2_fpn", "input_height": 64, "input_width": 96, "head_width": 16,
        "embedding_dim": 8, "embedding_head_width": 16, "detections_per_image": 12}  # fmt: skip


@pytest.fixture(scope="module")
def family_checkpoints(tmp_path_factory) -> dict[str, Path]:
    torch = pytest.importorskip("torch")
    from student import ModelConfig, build_student
    from student.checkpoint import TrainingCheckpoint, save_checkpoint

    folder = tmp_path_factory.mktemp("families")
    configs = {
        "retinanet": ModelConfig(fpn_channels=16, head_depth=1, embedding_head="per_location", **TINY),
        "centernet": ModelConfig(family="centernet", neck_channels=(16, 16, 16), **TINY),
    }
    paths = {}
    for family, config in configs.items():
        torch.manual_seed(0)
        model = build_student(config, warn_if_random_backbone=False)
        paths[family] = save_checkpoint(
            folder / f"{family}.pt",
            TrainingCheckpoint(step=0, model_state=model.state_dict(), model_config=config.to_dict()),
        )
    return paths


def test_one_stage_values_split_into_the_plain_path_and_labelled_rows():
    plain, labelled = compare.one_stage_checkpoints(["runs/l2/last.pt", "centernet-l2=runs/c=1/last.pt"])
    assert plain == Path("runs/l2/last.pt")
    assert labelled == (LabelledCheckpoint("centernet-l2", Path("runs/c=1/last.pt")),)
    assert compare.one_stage_checkpoints(None) == (None, ())
    assert compare.one_stage_checkpoints(["out/a=b/last.pt"]) == (Path("out/a=b/last.pt"), ())
    with pytest.raises(SourceError, match="unlabelled"):
        compare.one_stage_checkpoints(["a.pt", "b.pt"])
    with pytest.raises(SourceError, match="label 'two-stage'"):
        LabelledCheckpoint("two-stage", Path("a.pt"))
    with pytest.raises(SourceError, match="label 'a b'"):
        LabelledCheckpoint("a b", Path("a.pt"))
    twice = (LabelledCheckpoint("x", Path("a.pt")), LabelledCheckpoint("x", Path("b.pt")))
    with pytest.raises(SourceError, match="given twice: x"):
        ComparisonConfig(sequences=(Path("s"),), out=Path("o"), labelled_one_stage=twice)


def test_labelled_students_of_both_families_share_one_table(tmp_path, pets_dir, family_checkpoints, capsys):
    out = tmp_path / "compare"
    arguments = ["--sequences", str(pets_dir), "--one-stage", str(family_checkpoints["retinanet"]),
                 f"centernet-l2={family_checkpoints['centernet']}", "--one-stage",
                 f"retinanet-again={family_checkpoints['retinanet']}", "--frames", "1", "3",
                 "--threads", "1", "--no-progress", "--out", str(out)]  # fmt: skip
    assert compare.main(arguments) == 0, capsys.readouterr().err
    with open(out / "results.csv") as stream:
        rows = [(row["tracker"], row["sequence"]) for row in csv.DictReader(stream)]
    keys = ["one-stage", "centernet-l2", "retinanet-again"]
    assert rows == [(key, name) for key in keys for name in ("PETS09-S2L1-half1", "OVERALL")]
    assert "| centernet-l2 |" in (out / "results.md").read_text()
    assert (out / "centernet-l2" / "PETS09-S2L1-half1.txt").is_file()
    missing = ["--sequences", str(pets_dir), "--one-stage", f"c={tmp_path / 'none.pt'}", "--out", str(out)]
    assert compare.main(missing) == 2
    assert "none.pt: no such checkpoint file" in capsys.readouterr().err
