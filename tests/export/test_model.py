"""The VRCLIP model: output contract, presence flags, gate, adapters, CLIP weight loading, ONNX export."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")

from vrclip.edge.errors import UserError  # noqa: E402
from vrclip.export.model import (  # noqa: E402
    VRCLIP,
    CheckpointError,
    InferenceModel,
    ResidualAdapter,
    VisualEncoder,
    example_inputs,
    load_clip_visual_weights,
    preset,
)


def small_config(**kw):
    base = dict(
        num_classes=5,
        vision_patch_size=16,
        vision_width=32,
        vision_layers=2,
        vision_heads=2,
        vision_output_dim=16,
        rf_channels=8,
        rf_range_bins=4,
        rf_frames=3,
        rf_d_model=16,
        rf_output_dim=16,
        rf_state_dim=4,
        align_dim=8,
    )
    base.update(kw)
    return preset("tiny", **base)


@pytest.fixture(scope="module")
def model() -> VRCLIP:
    torch.manual_seed(0)
    return VRCLIP(small_config()).eval()


def test_inference_contract(model: VRCLIP) -> None:
    rgb, rf, anchor, present = example_inputs(model.cfg, batch=4)
    assert anchor.shape == (4, model.cfg.rf.frames, 2)
    with torch.no_grad():
        emb, pos, rel = model.inference(rgb, rf, anchor, present)
    assert emb.shape == (4, model.cfg.align_dim) and pos.shape == (4, 2) and rel.shape == (4,)
    assert float((pos - anchor[:, -1]).norm(dim=1).max()) < 2.0  # an offset from the newest track position
    np.testing.assert_allclose(emb.norm(dim=1).numpy(), 1.0, atol=1e-5)
    assert ((rel > 0) & (rel <= 1)).all()
    # Training forward adds the identity logits.
    assert model(rgb, rf, anchor, present)[3].shape == (4, model.cfg.num_classes)


def test_gate_is_two_exp_minus_beta_distance(model: VRCLIP) -> None:
    rgb, rf, anchor, present = example_inputs(model.cfg, batch=3)
    with torch.no_grad():
        out = model.outputs(rgb, rf, anchor, present)
    v = torch.nn.functional.normalize(out.aligned_vision, dim=1)
    r = torch.nn.functional.normalize(out.aligned_rf, dim=1)
    d = (v - r).pow(2).sum(1) / 4
    np.testing.assert_allclose(out.gate.numpy(), (2 * torch.exp(-5.0 * d)).numpy(), rtol=1e-5)
    np.testing.assert_allclose(out.reliability.numpy(), (out.gate / 2).numpy(), rtol=1e-5)
    fused = torch.nn.functional.normalize(out.gate[:, None] * v + r, dim=1)
    np.testing.assert_allclose(out.embedding.numpy(), fused.numpy(), atol=1e-6)


def test_absent_modalities_are_flags_not_branches(model: VRCLIP) -> None:
    rgb, rf, anchor, _ = example_inputs(model.cfg, batch=3)
    present = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    with torch.no_grad():
        out = model.outputs(rgb, rf, anchor, present)
    v = torch.nn.functional.normalize(out.aligned_vision, dim=1)
    r = torch.nn.functional.normalize(out.aligned_rf, dim=1)
    np.testing.assert_allclose(out.embedding[1].numpy(), v[1].numpy(), atol=1e-6)  # RF absent: vision only
    np.testing.assert_allclose(out.embedding[2].numpy(), r[2].numpy(), atol=1e-6)  # RGB absent: radio only
    assert float(out.reliability[1]) == 1.0 and float(out.reliability[2]) == 0.0
    np.testing.assert_allclose(out.position[1].numpy(), anchor[1, -1].numpy())  # no radio: the track position
    # Changing the absent modality's input changes nothing.
    rgb2 = rgb.clone()
    rgb2[2] = torch.rand_like(rgb2[2])
    with torch.no_grad():
        again = model.outputs(rgb2, rf, anchor, present)
    np.testing.assert_allclose(again.embedding[2].numpy(), out.embedding[2].numpy(), atol=1e-6)


def test_residual_adapter_formula() -> None:
    torch.manual_seed(1)
    adapter = ResidualAdapter(8, 0.7)
    x = torch.randn(2, 5, 8)
    expected = 0.7 * x + 0.3 * adapter.norm(torch.nn.functional.gelu(x @ adapter.proj.weight.T))
    np.testing.assert_allclose(adapter(x).detach().numpy(), expected.detach().numpy(), atol=1e-6)


def test_loads_clip_weights_and_resizes_the_positional_embedding(tmp_path) -> None:
    from open_clip.transformer import VisionTransformer

    cfg = small_config().vision
    torch.manual_seed(2)
    clip_tower = VisionTransformer(
        image_size=64,
        patch_size=16,
        width=cfg.width,
        layers=cfg.layers,
        heads=cfg.heads,
        mlp_ratio=cfg.mlp_ratio,
        output_dim=cfg.output_dim,
    )
    state = {f"visual.{k}": v for k, v in clip_tower.state_dict().items()}
    state["logit_scale"] = torch.tensor(4.6)  # the text side of a full CLIP file is ignored
    path = tmp_path / "clip.pt"
    torch.save(state, path)
    encoder = VisualEncoder(cfg)
    assert load_clip_visual_weights(encoder, path) == len(encoder.vit.state_dict())
    assert torch.equal(encoder.vit.conv1.weight, clip_tower.conv1.weight)
    pos = encoder.vit.positional_embedding
    assert pos.shape == (1 + 16 * 8, cfg.width)  # 256 x 128 crop, 16 px patches
    assert torch.equal(pos[0], clip_tower.positional_embedding[0])  # class token kept
    # A constant grid stays constant when resized.
    flat = clip_tower.positional_embedding.detach().clone()
    flat[1:] = 0.25
    torch.save({**state, "visual.positional_embedding": flat}, path)
    load_clip_visual_weights(encoder, path)
    np.testing.assert_allclose(encoder.vit.positional_embedding[1:].detach().numpy(), 0.25, atol=1e-5)


def test_loads_clip_weights_from_a_safetensors_file(tmp_path) -> None:
    """open_clip publishes its weights as .safetensors: the same tensors load as from a .pt file."""
    safetensors_torch = pytest.importorskip("safetensors.torch")
    cfg = small_config().vision
    torch.manual_seed(3)
    source = VisualEncoder(cfg)
    state = {f"visual.{k}": v.contiguous() for k, v in source.vit.state_dict().items()}
    path = tmp_path / "clip.safetensors"
    safetensors_torch.save_file(state, str(path))
    encoder = VisualEncoder(cfg)
    assert load_clip_visual_weights(encoder, path) == len(encoder.vit.state_dict())
    assert torch.equal(encoder.vit.conv1.weight, source.vit.conv1.weight)
    assert torch.equal(encoder.vit.positional_embedding, source.vit.positional_embedding)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match=r"broken\.safetensors: not a readable safetensors file"):
        load_clip_visual_weights(encoder, broken)


def test_bad_weight_files_name_the_file(tmp_path) -> None:
    encoder = VisualEncoder(small_config().vision)
    with pytest.raises(CheckpointError, match="no such weights file"):
        load_clip_visual_weights(encoder, tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"garbage\.pt"):
        load_clip_visual_weights(encoder, garbage)
    wrong = tmp_path / "wrong.pt"
    other = VisualEncoder(small_config(vision_width=64, vision_heads=2).vision)
    torch.save({f"visual.{k}": v for k, v in other.vit.state_dict().items()}, wrong)
    with pytest.raises(CheckpointError, match=r"wrong.pt: does not fit the visual encoder"):
        load_clip_visual_weights(encoder, wrong)
    assert issubclass(CheckpointError, UserError)


def test_vit_b_16_preset_is_the_clip_tower() -> None:
    cfg = preset("vit-b-16")
    assert (cfg.vision.width, cfg.vision.layers, cfg.vision.heads, cfg.vision.patch_size) == (768, 12, 12, 16)
    assert (
        cfg.vision.image_size == (256, 128)
        and cfg.rf.frames == 12
        and cfg.gate_beta == 5.0
        and cfg.cca_k == 5
    )
    with pytest.raises(UserError, match="unknown model configuration"):
        preset("vit-h-14")


def test_exports_to_onnx_with_a_dynamic_batch(model: VRCLIP) -> None:
    ort = pytest.importorskip("onnxruntime")
    wrapper = InferenceModel(model).eval()
    buf = io.BytesIO()
    names = list(wrapper.INPUT_NAMES) + list(wrapper.OUTPUT_NAMES)
    torch.onnx.export(
        wrapper,
        example_inputs(model.cfg, 2),
        buf,
        input_names=list(wrapper.INPUT_NAMES),
        output_names=list(wrapper.OUTPUT_NAMES),
        opset_version=17,
        dynamic_axes={n: {0: "batch"} for n in names},
        dynamo=False,
    )
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    inputs = example_inputs(model.cfg, 5)
    inputs[3][1, 1] = 0.0  # one sample without radio, one without RGB
    inputs[3][2, 0] = 0.0
    got = session.run(None, {n: t.numpy() for n, t in zip(wrapper.INPUT_NAMES, inputs, strict=True)})
    with torch.no_grad():
        expected = wrapper(*inputs)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e.numpy(), atol=1e-5)
    assert math.isfinite(float(np.sum(got[0])))
