"""Training recipe, checkpoints (atomic, resumable, bit-identical after a kill), evaluation report, and the
errors a user sees for bad input."""

from __future__ import annotations

import itertools
import json
import math
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")

from vrclip.edge.config import EdgeConfig, parse_config  # noqa: E402
from vrclip.edge.errors import UserError  # noqa: E402
from vrclip.edge.geometry import ArrayGeometry  # noqa: E402
from vrclip.edge.rfwindow import RFWindowExtractor, RFWindowSpec  # noqa: E402
from vrclip.edge.sim.radar import sweep_frequencies  # noqa: E402
from vrclip.export.checkpoint import load_checkpoint, model_from_checkpoint, save_atomic  # noqa: E402
from vrclip.export.data import (  # noqa: E402
    DatasetError,
    Track,
    choose_segments,
    discover_sessions,
    preprocess_session,
    recorded_channels,
    split_samples,
)
from vrclip.export.evaluate import EvalConfig, evaluate  # noqa: E402
from vrclip.export.model import CheckpointError, RFConfig, RFEncoder  # noqa: E402
from vrclip.export.openset import open_set_from_report  # noqa: E402
from vrclip.export.train import (  # noqa: E402
    CHECKPOINT_NAME,
    FINAL_NAME,
    TrainConfig,
    Trainer,
    degrade,
    gate_calibration_loss,
    geometry_distillation_loss,
    illumination_loss,
    reverse_time,
    shift_beams,
    shifted_position,
    warmup_cosine,
)

from tests.export.test_time_breaks import track  # noqa: E402


def config(dataset: Path, out: Path, **kw) -> TrainConfig:
    base = dict(
        preset="micro",
        epochs=2,
        batch_size=8,
        segment_seconds=1.5,
        frames=4,
        range_bins=8,
        channel_stride=4,
        threads=1,
        jobs=1,
        cache=out.parent / "cache",
    )
    base.update(kw)
    return TrainConfig(dataset=dataset, out=out, **base)


def test_schedule_warms_up_linearly_then_decays_by_cosine_to_the_floor() -> None:
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(100, 0.1, 1e-6 / 3e-4))
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(3e-5) and lrs[9] == pytest.approx(3e-4)
    assert all(a <= b for a, b in itertools.pairwise(lrs[:10]))
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))
    assert warmup_cosine(100, 0.1, 1e-6 / 3e-4)(100) * 3e-4 == pytest.approx(1e-6)
    assert lrs[55] == pytest.approx(1e-6 + (3e-4 - 1e-6) * 0.5 * (1 + math.cos(math.pi * 45 / 90)))


def test_illumination_objective_and_degradation() -> None:
    d = torch.tensor([0.1, 0.25, 0.5, 1.0])
    assert float(illumination_loss(3.0 / d, d)) == pytest.approx(0.0, abs=1e-6)  # delta grows as 1/d
    assert float(illumination_loss(-1.0 / d, d)) == pytest.approx(2.0, abs=1e-6)
    g = torch.Generator().manual_seed(0)
    rgb = torch.rand(4, 3, 8, 4)
    out = degrade(rgb, d, 0.06, g, cast=0.3)
    torch.testing.assert_close(out[3], rgb[3])  # d = 1: untouched
    assert float(out[0].mean()) < 0.3 * float(rgb[0].mean()) + 0.05  # d = 0.1: dark


def test_gate_calibration_pulls_trusted_pairs_and_pushes_impostors_past_the_margin() -> None:
    v = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    r = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])  # distances 0, 0.5, 0
    none = torch.zeros(3, dtype=torch.bool)
    trusted = torch.tensor([True, True, False])
    assert float(gate_calibration_loss(v, r, trusted=trusted, impostor=none, margin=0.5)) == pytest.approx(
        0.25
    )
    impostor = torch.tensor([False, True, True])  # one past the margin already (0.5), one at 0
    got = gate_calibration_loss(v, r, trusted=none, impostor=impostor, margin=0.5)
    assert float(got) == pytest.approx(0.25)
    assert float(gate_calibration_loss(v, r, trusted=none, impostor=none, margin=0.5)) == 0.0
    # the gradient moves a trusted pair's radio embedding towards its vision embedding
    r_var = r.clone().requires_grad_(True)
    gate_calibration_loss(v, r_var, trusted=trusted, impostor=none, margin=0.5).backward()
    assert r_var.grad is not None and float(r_var.grad[1, 0]) < 0


def test_geometry_distillation_is_zero_for_angle_keeping_projections_and_moves_only_the_student() -> None:
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(16, 8, generator=g)
    rotation, _ = torch.linalg.qr(torch.randn(12, 12, generator=g))
    kept = 3.0 * torch.cat([teacher, torch.zeros(16, 4)], dim=1) @ rotation  # wider, rotated, scaled
    assert float(geometry_distillation_loss(kept, teacher)) == pytest.approx(0.0, abs=1e-10)
    squashed = kept.clone()
    squashed[:, 0] *= 10.0  # one axis stretched: the angles change
    assert float(geometry_distillation_loss(squashed, teacher)) > 1e-3
    student = squashed.clone().requires_grad_(True)
    teacher_var = teacher.clone().requires_grad_(True)
    geometry_distillation_loss(student, teacher_var).backward()
    assert student.grad is not None and float(student.grad.abs().sum()) > 0
    assert teacher_var.grad is None


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ({"epochs": 0}, "--epochs 0"),
        ({"batch_size": 4}, "--batch 4"),
        ({"warmup": 1.0}, "--warmup 1.0"),
        ({"align_weight": -1.0}, "--align-weight -1.0"),
        ({"align_margin": 1.5}, "align_margin 1.5"),
        ({"align_min_light": 0.0}, "align_min_light 0.0"),
        ({"geometry_weight": -1.0}, "--geometry-weight -1.0"),
        ({"rf_input": "images"}, "--rf-input 'images': must be beams or pairs"),
        ({"range_bins": 0}, "--range-bins 0"),
        ({"span_m": 0.0}, "--span-m 0.0"),
        ({"rf_shift": -1}, "--rf-shift -1"),
        ({"rf_shift": 8}, "--rf-shift 8: .* less than --range-bins"),
        ({"rf_reverse": 1.5}, "--rf-reverse 1.5"),
        ({"anchor_jitter_m": -0.1}, "--anchor-jitter -0.1: must be >= 0"),
        ({"weight_decay": -1.0}, "--weight-decay -1.0: must be >= 0"),
    ],
)
def test_bad_training_settings_name_the_option(tmp_path: Path, setting: dict, named: str) -> None:
    with pytest.raises(UserError, match=named):
        config(tmp_path, tmp_path / "run", **setting).validate()


def test_training_writes_checkpoints_and_resumes_bit_identically_after_a_kill(
    small_dataset: Path, tmp_path: Path
) -> None:
    straight = config(small_dataset, tmp_path / "a")
    Trainer(straight, log=lambda _: None).run()
    reference = load_checkpoint(tmp_path / "a" / FINAL_NAME)
    assert [h["stage"] for h in reference["history"]] == ["vision"] * 2 + ["rf"] * 2 + ["gate"] * 2
    # Beam windows: the position head reads the trained grid's layout, which the checkpoint records.
    rf_cfg = model_from_checkpoint(reference, "a").cfg.rf
    spec = straight.prep_spec(144).rf
    assert rf_cfg.grid_offsets == len(spec.beam_offsets_m)
    assert (rf_cfg.grid_offset_step_m, rf_cfg.grid_range_step_m) == (
        spec.beam_offset_step_m,
        spec.range_step_m,
    )

    class Killed(Exception):
        pass

    def kill_in_rf_epoch_2(stage: str, epoch: int, epochs: int, step: int, steps: int, loss: float) -> None:
        if stage == "rf" and epoch == 1:
            raise Killed

    interrupted = config(small_dataset, tmp_path / "b")
    with pytest.raises(Killed):
        Trainer(interrupted, progress=kill_in_rf_epoch_2, log=lambda _: None).run()
    saved = load_checkpoint(tmp_path / "b" / CHECKPOINT_NAME)
    assert (saved["stage"], saved["epoch"]) == ("rf", 1)
    assert not (tmp_path / "b" / (CHECKPOINT_NAME + ".tmp")).exists()
    messages: list[str] = []
    Trainer(interrupted, log=messages.append).run()
    assert any("resuming" in m for m in messages)
    resumed = load_checkpoint(tmp_path / "b" / FINAL_NAME)
    for key, value in reference["model"].items():
        assert torch.equal(value, resumed["model"][key]), key

    # Resuming with other settings is refused, naming what differs.
    with pytest.raises(CheckpointError, match="frames"):
        Trainer(replace(interrupted, frames=3), log=lambda _: None).run()

    # Evaluation: the JSON shape, fractions in [0, 1], and the figures.
    report = evaluate(
        EvalConfig(
            tmp_path / "a" / FINAL_NAME,
            small_dataset,
            tmp_path / "eval" / "report.json",
            stride=1,
            threads=1,
            jobs=1,
            cache=tmp_path / "cache",
            fusion_analysis=True,
        ),
        log=lambda _: None,
    )
    on_disk = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert on_disk["fused"] == report["fused"]
    # The fusion analysis re-fuses the vision and radio embeddings with the gate's own W: it must
    # reproduce the model's fused and radio-only mAP before its other rows mean anything.
    analysis = on_disk["fusion_analysis"]["mAP"]
    assert set(analysis) == {"vision", "radio", "gate", "fixed_1", "fixed_1_visible", "best_per_query"}
    assert analysis["gate"]["all"] == pytest.approx(on_disk["fused"]["mAP"], abs=1e-5)
    assert analysis["radio"]["all"] == pytest.approx(on_disk["radio"]["mAP"], abs=1e-5)
    assert set(analysis["gate"]) == {"all", *on_disk["by_condition"]}
    split = on_disk["fusion_analysis"]["by_camera"]["all"]
    assert split["queries_visible"] + split["queries_hidden"] == on_disk["meta"]["test_samples"]
    keys = {"mAP", "rank1", "rank5", "rank10", "precision", "f1", "loc_err_m"}
    for variant in ("fused", "vision", "radio"):
        assert keys <= set(on_disk[variant])
        for k in keys - {"loc_err_m"}:
            v = on_disk[variant][k]
            assert v is None or 0.0 <= v <= 1.0
    assert on_disk["by_condition"] and all(
        set(c) == {"fused", "vision", "radio"} for c in on_disk["by_condition"].values()
    )
    assert (tmp_path / "eval" / "confusion-fused.png").stat().st_size > 1000
    # The report's open-set estimate is what `vrclip-export onnx --threshold-from` puts in the manifest.
    open_set = open_set_from_report(tmp_path / "eval" / "report.json", tmp_path / "a" / FINAL_NAME)
    assert 0.3 <= open_set.threshold <= 0.95 and "report.json" in open_set.source
    assert (tmp_path / "eval" / "tsne-fused.png").stat().st_size > 1000

    # The same file names holding other recordings (another `dataset make`): refused, not scored.
    assert set(reference["session_ids"]) == {t.name for t in discover_sessions(small_dataset)}
    other_world = dict(reference)
    first = sorted(reference["session_ids"])[0]
    other_world["session_ids"] = {**reference["session_ids"], first: "f" * 32}
    save_atomic(
        {k: v for k, v in other_world.items() if k not in ("format", "version")}, tmp_path / "other.pt"
    )
    with pytest.raises(DatasetError, match=f"other recordings under the session names.*first: {first}"):
        evaluate(
            EvalConfig(tmp_path / "other.pt", small_dataset, cache=tmp_path / "cache"), log=lambda _: None
        )

    # A damaged checkpoint, a missing one, and one whose weights do not fit its configuration.
    broken = tmp_path / "broken.pt"
    broken.write_bytes((tmp_path / "a" / FINAL_NAME).read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=r"broken\.pt: not a readable checkpoint"):
        evaluate(EvalConfig(broken, small_dataset), log=lambda _: None)
    with pytest.raises(CheckpointError, match=r"nothing\.pt: no such checkpoint"):
        evaluate(EvalConfig(tmp_path / "nothing.pt", small_dataset), log=lambda _: None)
    data = load_checkpoint(tmp_path / "a" / FINAL_NAME)
    data["model_config"]["rf"]["d_model"] = 48
    save_atomic({k: v for k, v in data.items() if k not in ("format", "version")}, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match=r"mismatch\.pt: the weights do not fit"):
        model_from_checkpoint(load_checkpoint(tmp_path / "mismatch.pt"), str(tmp_path / "mismatch.pt"))


def test_an_out_that_is_a_file_is_a_user_error_before_any_preprocessing(
    small_dataset: Path, tmp_path: Path
) -> None:
    file = tmp_path / "run"
    file.write_text("notes\n")
    trainer = Trainer(config(small_dataset, file), log=lambda _: None)
    for step in (trainer.prepare, trainer.run):
        with pytest.raises(UserError, match=r"--out .*run: is a file, not a folder"):
            step()
    assert not (tmp_path / "cache").exists()  # refused before preprocessing
    assert file.read_text() == "notes\n"


class Killed(Exception):
    pass


def kill_in_rf(stage: str, epoch: int, epochs: int, step: int, steps: int, loss: float) -> None:
    if stage == "rf":
        raise Killed


def test_a_damaged_resume_checkpoint_says_to_restart_not_to_rerun(
    small_dataset: Path, tmp_path: Path
) -> None:
    """Re-running training reads the run's own checkpoint.pt again: the message must offer a way out."""
    cfg = config(small_dataset, tmp_path / "run", epochs=1)
    with pytest.raises(Killed):
        Trainer(cfg, progress=kill_in_rf, log=lambda _: None).run()
    checkpoint = tmp_path / "run" / CHECKPOINT_NAME
    checkpoint.write_bytes(checkpoint.read_bytes()[:5000])  # the disk filled up, or a copy was cut short
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt: not a readable checkpoint") as e:
        Trainer(cfg, log=lambda _: None).run()
    assert "--restart" in str(e.value) and "re-run training" not in str(e.value)
    final = Trainer(cfg, log=lambda _: None).run(restart=True)
    assert load_checkpoint(final)["stage"] == "done"
    # A final vrclip.pt that is damaged is mended by re-running training (it resumes from checkpoint.pt).
    final.write_bytes(final.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="re-run training"):
        load_checkpoint(final)


def test_the_report_vouches_for_the_checkpoint_it_scored(
    small_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Training replaces checkpoint.pt every epoch; an evaluation that runs meanwhile must report the hash
    of the model it scored, or `onnx --threshold-from` would accept its figures for the next epoch's."""
    import hashlib

    import vrclip.export.evaluate as evaluate_module

    final = Trainer(config(small_dataset, tmp_path / "run", epochs=1), log=lambda _: None).run()
    other = tmp_path / "run" / CHECKPOINT_NAME  # another file with another model
    evaluated = tmp_path / "evaluated.pt"
    shutil.copy(final, evaluated)
    scored_sha = hashlib.sha256(evaluated.read_bytes()).hexdigest()
    real_embed = evaluate_module.embed

    def embed_while_training_writes(*args: object, **kwargs: object) -> object:
        out = real_embed(*args, **kwargs)
        shutil.copy(other, tmp_path / "next.tmp")
        (tmp_path / "next.tmp").replace(evaluated)  # as save_atomic does
        return out

    monkeypatch.setattr(evaluate_module, "embed", embed_while_training_writes)
    result = evaluate(
        EvalConfig(evaluated, small_dataset, stride=3, threads=1, jobs=1, cache=tmp_path / "cache"),
        log=lambda _: None,
    )
    assert hashlib.sha256(evaluated.read_bytes()).hexdigest() != scored_sha  # the file did change
    assert result["meta"]["checkpoint_sha256"] == scored_sha
    report = tmp_path / "report.json"
    report.write_text(json.dumps(result))
    with pytest.raises(UserError, match="it evaluated another checkpoint"):
        open_set_from_report(report, evaluated)


def test_channel_stride_takes_every_nth_channel_of_the_recordings_array(
    small_dataset: Path, tmp_path: Path
) -> None:
    """--channel-stride 4 on a 36-channel array: channels 0, 4, ..., 32, not the 144-channel array's."""
    import tomllib
    from importlib import resources

    from tests.export.conftest import make_small_dataset

    # Every other antenna of the built-in 12 x 12 array.
    builtin = tomllib.loads(resources.files("vrclip.edge").joinpath("data", "array_12x12.toml").read_text())
    lines = ['name = "test-6x6"', 'switch_order = "tx-major"']
    for kind in ("tx", "rx"):
        for antenna in builtin[kind][::2]:
            lines += [f"[[{kind}]]", f'name = "{antenna["name"]}"', f"position_m = {antenna['position_m']}"]
    geometry = tmp_path / "array_6x6.toml"
    geometry.write_text("\n".join(lines) + "\n")
    rig = EdgeConfig().model_dump(mode="json")
    rig["radar"]["array"]["geometry_file"] = str(geometry)
    data = make_small_dataset(tmp_path / "data", 2, 1, 2.0, 160, 96, base=parse_config(rig))
    sessions = discover_sessions(data)
    assert recorded_channels(sessions) == 36

    trainer = Trainer(
        config(data, tmp_path / "run", rf_input="pairs", segment_seconds=1.0), log=lambda _: None
    )
    trainer.prepare()
    assert trainer.prep.rf.channels == tuple(range(0, 36, 4))
    assert trainer.tracks[0].rf.shape[1] == 9
    # Recordings of two arrays cannot feed one model: named, not a shape error later.
    with pytest.raises(DatasetError, match=r"recorded with a 36-channel radar array, but .* 144-channel"):
        recorded_channels([discover_sessions(small_dataset)[0], sessions[0]])


def test_bad_datasets_are_user_errors_naming_the_file(small_dataset: Path, tmp_path: Path) -> None:
    import h5py

    with pytest.raises(DatasetError, match="no such dataset folder"):
        discover_sessions(tmp_path / "none")
    # Too few frames for the split: the message names the identity, its longest recording and the need.
    with pytest.raises(DatasetError, match=r"id-000: its longest recording .*needs 30 s"):
        Trainer(config(small_dataset, tmp_path / "x", segment_seconds=30.0), log=lambda _: None).prepare()
    # A recording without labels.
    session = discover_sessions(small_dataset)[0]
    copy = tmp_path / "unlabelled.h5"
    shutil.copy(session.path, copy)
    with h5py.File(copy, "r+") as f:
        f["radar/truth/count"][...] = -1
    unlabelled = replace(session, path=copy, name="unlabelled.h5")
    with pytest.raises(DatasetError, match=r"unlabelled\.h5: has no identity labels"):
        preprocess_session(unlabelled, config(small_dataset, tmp_path / "x").prep_spec(144))
    assert issubclass(DatasetError, UserError)


def test_cli_registers_train_and_evaluate(small_dataset: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner
    from vrclip.edge.cli_support import make_app
    from vrclip.export.commands import register

    app = make_app("vrclip-export", "test")
    register(app)
    runner = CliRunner()
    for command in ("train", "evaluate"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output
    result = runner.invoke(app, ["evaluate", str(tmp_path / "missing.pt"), str(small_dataset)])
    assert isinstance(result.exception, CheckpointError) and "missing.pt" in str(result.exception)


def test_training_is_deterministic_in_data_split(small_dataset: Path, tmp_path: Path) -> None:
    a = Trainer(config(small_dataset, tmp_path / "a"), log=lambda _: None)
    a.prepare()
    b = Trainer(config(small_dataset, tmp_path / "b", seed=43), log=lambda _: None)
    b.prepare()
    again = Trainer(config(small_dataset, tmp_path / "c"), log=lambda _: None)
    again.prepare()
    assert a.segments == again.segments
    np.testing.assert_array_equal(a.train_index.end, again.train_index.end)
    assert len(a.train_index) > 0 and len(a.test_index) > 0
    assert {s.identity for s in a.segments} == {"id-000", "id-001", "id-002"}
    _ = b  # another seed may pick other segments; it must still split


def _track(identity: str, session: str, frames: int, labelled: slice) -> Track:
    """A 10 Hz track whose person is labelled only in `labelled` (NaN positions elsewhere)."""
    return track(identity, session, np.arange(frames, dtype=np.int64) * 100_000_000, labelled)


def test_training_segments_lie_where_the_person_is_labelled() -> None:
    """Someone who leaves the room after 15 s of a 60 s session must still get a full training segment."""
    tracks = [
        _track("alice", "s1", 600, slice(0, 600)),
        _track("bob", "s1", 600, slice(0, 150)),
        _track("bob", "s2", 600, slice(450, 600)),
    ]
    for seed in range(20):
        segments = choose_segments(tracks, 10.0, 12, seed)
        for seg in segments:
            track = next(t for t in tracks if (t.identity, t.session.name) == (seg.identity, seg.session))
            assert track.labelled[seg.start : seg.stop].all(), (seed, seg)
        train, _ = split_samples(tracks, segments, 12)
        per_identity = {name: 0 for name in ("alice", "bob")}
        for t in train.track:
            per_identity[tracks[int(t)].identity] += 1
        assert per_identity == {"alice": 100 - 12 + 1, "bob": 100 - 12 + 1}, seed


def test_an_identity_never_labelled_for_a_whole_segment_is_named() -> None:
    tracks = [
        _track("alice", "s1", 600, slice(0, 600)),
        _track("bob", "s1", 600, slice(0, 90)),  # 9 s in view, the segment needs 10 s
        _track("bob", "s2", 600, slice(300, 350)),
    ]
    with pytest.raises(
        DatasetError, match=r"bob: no recording labels them for 10 s in a row.*90 radar frames"
    ):
        choose_segments(tracks, 10.0, 12, 42)


def test_fully_labelled_datasets_keep_the_published_split() -> None:
    """Where every frame is labelled, the split is drawn exactly as it always was (session, then start
    uniformly over the session), so published training commands pick the same segments."""
    tracks = [
        _track(f"id-{k}", f"id-{k}/s{j}", 100 + 37 * j + 11 * k, slice(None))
        for k in range(4)
        for j in range(3)
    ]
    for seed in (0, 42, 1234):
        rng = np.random.default_rng(seed)
        published = []
        for k in range(4):
            mine = [t for t in tracks if t.identity == f"id-{k}"]
            track = mine[int(rng.integers(len(mine)))]
            start = int(rng.integers(0, track.frames - 100 + 1))
            published.append((track.identity, track.session.name, start, start + 100))
        got = [(s.identity, s.session, s.start, s.stop) for s in choose_segments(tracks, 10.0, 12, seed)]
        assert got == published


def test_resuming_on_a_dataset_that_gives_another_split_is_refused(
    small_dataset: Path, tmp_path: Path
) -> None:
    """A session added while training was down changes the split; resuming must stop, naming the
    checkpoint and the identity whose training segment moved, not train on frames left for testing."""
    sessions = json.loads((small_dataset / "dataset.json").read_text())["sessions"]
    data = tmp_path / "data"

    def index(entries: list[dict]) -> None:
        data.mkdir(exist_ok=True)
        for e in entries:
            link = data / e["path"]
            if not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(small_dataset / e["path"])
        (data / "dataset.json").write_text(json.dumps({"sessions": entries}))

    later = [e for e in sessions if e["path"].startswith("id-000/")][1]
    first = [e for e in sessions if e is not later]
    index(first)
    cfg = config(data, tmp_path / "run", epochs=1)

    class Killed(Exception):
        pass

    def kill_in_rf(stage: str, epoch: int, epochs: int, step: int, steps: int, loss: float) -> None:
        if stage == "rf":
            raise Killed

    with pytest.raises(Killed):
        Trainer(cfg, progress=kill_in_rf, log=lambda _: None).run()
    checkpoint = tmp_path / "run" / CHECKPOINT_NAME
    before = load_checkpoint(checkpoint)["segments"]

    index(sessions)  # id-000's second session arrives
    resumed = Trainer(cfg, log=lambda _: None)
    resumed.prepare()
    now = [asdict(s) for s in resumed.segments]
    moved = next((seg for seg, was in zip(now, before, strict=True) if seg != was), None)
    assert moved is not None  # the precondition: the new session changed the split
    with pytest.raises(
        CheckpointError, match=r"checkpoint\.pt: the dataset .* no longer gives the training split"
    ) as e:
        resumed.run()
    assert f"identity {moved['identity']}: checkpoint trains on" in str(e.value)
    assert f"now gives {moved['session']} frames {moved['start']}-{moved['stop']}" in str(e.value)
    assert "--restart" in str(e.value)
    assert load_checkpoint(checkpoint)["segments"] == before  # nothing overwritten

    index(first)  # the dataset as it was: resuming works again
    Trainer(cfg, log=lambda _: None).run()
    assert load_checkpoint(tmp_path / "run" / FINAL_NAME)["segments"] == before


def test_the_rf_input_is_beams_unless_pairs_are_asked_for(tmp_path: Path) -> None:
    beams = config(tmp_path, tmp_path / "run").prep_spec(144).rf
    assert beams.beamformed and beams.n_channels(144) == 13 * 7 and beams.n_pairs(144) == 36
    pairs = config(tmp_path, tmp_path / "run", rf_input="pairs").prep_spec(144).rf
    assert not pairs.beamformed and pairs.n_channels(144) == 36


def test_beam_shift_moves_a_whole_window_by_at_most_one_bin_and_offset_within_its_height() -> None:
    heights, offsets, ranges, frames = 3, 5, 6, 4
    rf = torch.zeros(64, frames, heights * offsets, ranges, 2)
    grid = rf.view(64, frames, heights, offsets, ranges, 2)
    grid[:, :, 1, 2, 3, 0] = 1.0  # one echo: middle height, centre offset, range bin 3, every frame
    out, shifts = shift_beams(rf, torch.Generator().manual_seed(0), offsets, 1)
    out_grid = out.view(64, frames, heights, offsets, ranges, 2)
    for i in range(64):
        hot = torch.nonzero(out_grid[i, 0, ..., 0])
        assert hot.shape[0] == 1  # moved, not smeared or lost
        h, o, r = (int(v) for v in hot[0])
        assert h == 1 and abs(o - 2) <= 1 and abs(r - 3) <= 1
        assert (o - 2, r - 3) == tuple(int(v) for v in shifts[i])  # the shift it reports
        torch.testing.assert_close(out_grid[i], out_grid[i, :1].expand_as(out_grid[i]))  # all frames alike
    assert 0 < int((shifts != 0).any(dim=1).sum()) < 64
    # at the edge the shifted-in cells are empty, not wrapped around
    edge = torch.zeros(1, 1, offsets, ranges, 2)
    edge[0, 0, :, -1, 0] = 1.0
    shifted = [shift_beams(edge, torch.Generator().manual_seed(s), offsets, 1)[0] for s in range(20)]
    assert all(float(x[..., 0, 0].sum()) == 0.0 for x in shifted)
    unchanged, none_moved = shift_beams(rf, torch.Generator(), offsets, 0)
    assert unchanged is rf and not bool(none_moved.any())


def test_a_shifted_grid_moves_the_position_target_to_the_cell_that_now_shows_the_body(
    geometry: ArrayGeometry,
) -> None:
    """The cell a shift moves an echo into looks at the point shifted_position() names, in the
    extractor's own beam geometry, wherever the person stands around the array."""
    spec = RFWindowSpec(
        frames=1, range_bins=8, span_m=0.8, beam_heights_m=(1.0,), beam_offsets_m=(-0.1, 0.0, 0.1)
    )
    extractor = RFWindowExtractor(spec, geometry, sweep_frequencies(EdgeConfig().radar.sweep), None)
    array_xy = torch.tensor(geometry.centre_xy, dtype=torch.float32)
    for anchor in ([0.0, 3.0], [1.5, 2.0], [-2.0, 4.5]):
        points = extractor.beam_points(np.array(anchor))  # (offsets, range bins, 3)
        for dy, dx in itertools.product((-1, 0, 1), repeat=2):
            moved_to = points[1 + dy, 3 + dx, :2]
            target = shifted_position(
                torch.tensor(points[None, 1, 3, :2], dtype=torch.float32),
                torch.tensor([anchor], dtype=torch.float32),
                array_xy[None],
                torch.tensor([[dy, dx]]),
                range_step_m=0.1,
                offset_step_m=0.1,
            )
            np.testing.assert_allclose(target[0].numpy(), moved_to, atol=1e-5)


def test_the_grid_position_head_points_at_the_beam_cell_that_holds_the_echo(geometry: ArrayGeometry) -> None:
    """At its initial (identity) map the position head puts the person where the extractor's own beam
    grid sampled the echo, wherever the person stands: the model's across/along axes, cell spacing
    and array-centred anchor are the runtime's. Echo split between two cells lands between them."""
    spec = RFWindowSpec(
        frames=2,
        range_bins=8,
        span_m=0.8,
        beam_heights_m=(0.5, 1.0),
        beam_offsets_m=(-0.2, -0.1, 0.0, 0.1, 0.2),
    )
    extractor = RFWindowExtractor(spec, geometry, sweep_frequencies(EdgeConfig().radar.sweep), None)
    heights, offsets = len(spec.beam_heights_m), len(spec.beam_offsets_m)
    cfg = RFConfig(
        frames=2, channels=heights * offsets, range_bins=8, channel_groups=heights, d_model=8, state_dim=2,
        output_dim=4, channel_dim=2, grid_offsets=offsets, grid_offset_step_m=spec.beam_offset_step_m,
        grid_range_step_m=spec.range_step_m,
    )  # fmt: skip
    encoder = RFEncoder(cfg).eval()
    centre = extractor.array_xy
    for anchor in ([0.0, 3.0], [1.5, 2.0], [-2.0, 4.5]):
        points = extractor.beam_points(np.array(anchor))[:offsets]  # the first height's (offsets, R, 3)
        track = torch.tensor([anchor] * 2, dtype=torch.float32)[None] - torch.tensor(
            centre, dtype=torch.float32
        )
        for o, r in ((2, 3), (0, 0), (4, 6), (1, 7)):
            rf = torch.zeros(1, 2, heights * offsets, 8, 2)
            rf[0, -1, o::offsets, r, 0] = 1.0  # every height's beam at that cell
            rf[0, 0, 0, 0, 1] = 5.0  # an older frame's echo does not count
            room = encoder(rf, track)[1][0].detach().numpy() + np.asarray(anchor)
            np.testing.assert_allclose(room, points[o, r, :2], atol=1e-5)
        rf = torch.zeros(1, 2, heights * offsets, 8, 2)
        rf[0, -1, 1, 2, 0] = rf[0, -1, 3, 4, 1] = 1.0
        room = encoder(rf, track)[1][0].detach().numpy() + np.asarray(anchor)
        np.testing.assert_allclose(room, 0.5 * (points[1, 2, :2] + points[3, 4, :2]), atol=1e-5)


def test_reversed_windows_play_rf_and_track_backwards_together() -> None:
    rf = torch.randn(6, 4, 3, 2, 2)
    anchor = torch.cumsum(torch.rand(6, 4, 2), dim=1)
    back_rf, back_anchor, flipped = reverse_time(rf, anchor, torch.Generator().manual_seed(1), 1.0)
    assert bool(flipped.all())
    torch.testing.assert_close(back_rf, rf.flip(1))
    torch.testing.assert_close(back_anchor, anchor.flip(1))
    g = torch.Generator().manual_seed(1)
    state = g.get_state()
    same_rf, same_anchor, none = reverse_time(rf, anchor, g, 0.0)
    assert same_rf is rf and same_anchor is anchor and not bool(none.any())
    assert torch.equal(g.get_state(), state)  # off = no randomness drawn: earlier runs reproduce


def test_the_train_command_line_defaults_are_the_recipe_defaults(tmp_path: Path) -> None:
    """`vrclip-export train` repeats TrainConfig's defaults (so --help needs no torch); they must agree."""
    import inspect

    from vrclip.export.commands import train

    cfg = TrainConfig(dataset=tmp_path, out=tmp_path)
    renamed = {"model_preset": "preset", "batch": "batch_size", "anchor_jitter": "anchor_jitter_m"}
    options = inspect.signature(train).parameters
    skip = {"dataset", "out", "restart"}
    checked = 0
    for option, parameter in options.items():
        if option in skip:
            continue
        field = renamed.get(option, option)
        assert parameter.default.default == getattr(cfg, field), option
        checked += 1
    assert checked >= 20


def test_a_session_saved_without_an_id_checks_nothing() -> None:
    """A checkpoint trained on recordings made before they carried a session id stored "" for them;
    the same recording given an id later (relabelled, copied by a newer version) is still the one
    trained on as far as anyone can tell, and must not be refused."""
    from vrclip.export.data import other_recordings

    assert other_recordings({"s0": "", "s1": "a" * 32}, {"s0": "b" * 32, "s1": "a" * 32}) == []
    assert other_recordings({"s0": "", "s1": "a" * 32}, {"s0": "b" * 32, "s1": "c" * 32}) == ["s1"]
    assert other_recordings(None, {"s0": "b" * 32}) == []
