"""torch.compile without graph breaks, and ONNX export with any batch size, for every conv type."""
import pytest
import torch

from a2d2c.layers import CONV_TYPES, create_conv2d
from a2d2c.models import build_classifier
from a2d2c.models.export import export_onnx

LAYER_CASES = [(t, {}) for t in CONV_TYPES] + [("dynamic", {"path": p}) for p in
                                                ("aggregate", "unfold", "responses", "tune")]


@pytest.mark.parametrize("conv_type,opts", LAYER_CASES)
def test_compiles_in_one_graph_and_matches_eager(conv_type, opts):
    torch._dynamo.reset()
    m = create_conv2d(conv_type, 8, 8, 3, groups=2, bias=True, **opts)
    x = torch.randn(4, 8, 9, 9, requires_grad=True)
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)  # fullgraph: break = error
    out = compiled(x)
    out.pow(2).sum().backward()
    grads = [x.grad] + [p.grad for p in m.parameters()]
    x.grad = None
    m.zero_grad()
    expected = m(x)
    expected.pow(2).sum().backward()
    assert torch.allclose(out, expected, atol=1e-6)
    for got, want in zip(grads, [x.grad] + [p.grad for p in m.parameters()]):
        assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("conv_type", CONV_TYPES)
def test_whole_backbone_has_no_graph_break(conv_type):
    torch._dynamo.reset()
    model = build_classifier("resnet10", conv_type, num_classes=10, stem="cifar")
    explanation = torch._dynamo.explain(model)(torch.randn(2, 3, 16, 16))
    assert explanation.graph_break_count == 0


@pytest.mark.parametrize("conv_type", CONV_TYPES)
@pytest.mark.parametrize("backbone", ["resnet10", "mobilenetv2_x0_35"])
def test_onnx_export_takes_any_batch_size(tmp_path, conv_type, backbone):
    ort = pytest.importorskip("onnxruntime")
    model = build_classifier(backbone, conv_type, num_classes=10, stem="cifar").eval()
    path = export_onnx(model, tmp_path / "model.onnx", input_size=(3, 16, 16))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = torch.randn(batch, 3, 16, 16)
        with torch.no_grad():
            expected = model(x)
        got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
        assert got.shape == expected.shape
        assert torch.allclose(got, expected, atol=1e-4, rtol=1e-3)
