"""The int8 rewrite of a MatMul: close to fp32, each row scaled by its own values only, the weights
rounded against calibration activations where there are some."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.quantize import INT8_MAX, WEIGHT_MAX, quantize_int8, quantize_weight
from service.graphs import OPSET


def _matmul_graph(
    path: Path, weight: np.ndarray, relu: bool = False, weight_name: str = "w", bias: np.ndarray | None = None
) -> None:
    """y = x @ W (or ReLU(x) @ W, and + b with a bias), with x [rows, 1, K], the shape the decoder
    step's activations have."""
    k, n = weight.shape
    nodes = [helper.make_node("Relu", ["x"], ["h"])] if relu else []
    nodes.append(helper.make_node("MatMul", ["h" if relu else "x", weight_name], ["y" if bias is None else "p"]))
    initializers = [numpy_helper.from_array(weight, weight_name)]
    if bias is not None:
        nodes.append(helper.make_node("Add", ["p", "b"], ["y"]))
        initializers.append(numpy_helper.from_array(bias, "b"))
    graph = helper.make_graph(
        nodes,
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", 1, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", 1, n])],
        initializers,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]), str(path))


def test_weights_are_symmetric_int8_with_one_scale_per_column() -> None:
    weight = np.random.default_rng(0).standard_normal((64, 24)).astype(np.float32)
    weight[:, 3] = 0.0  # a dead column must not divide by zero
    quantized, scale = quantize_weight(weight)
    assert quantized.dtype == np.int8 and scale.shape == (24,)
    assert np.abs(quantized).max() == WEIGHT_MAX and quantized.min() >= -WEIGHT_MAX
    # A pair of uint8 activations times weights fits the 16-bit sums of the kernel without VNNI.
    assert np.iinfo(np.int16).max >= 2 * 255 * WEIGHT_MAX
    assert np.all(quantized[:, 3] == 0)
    assert np.abs(quantized * scale - weight).max() <= scale.max() / 2 + 1e-7


def test_int8_matmul_rows_do_not_depend_on_their_neighbours(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((256, 96)).astype(np.float32) / 16
    _matmul_graph(tmp_path / "matmul.onnx", weight)
    assert quantize_int8(tmp_path, ["matmul.onnx"]) == {
        "matmul.onnx": {"matmuls": 1, "constant_scales": 0, "compensated_weights": 0}
    }
    ops = [node.op_type for node in onnx.load(str(tmp_path / "matmul.onnx")).graph.node]
    # The range is the product's A scale; its step, the rows' scales of one blocked QuantizeLinear.
    assert ops == ["Abs", "ReduceMax", "Mul", "QuantizeLinear", "QuantizeLinear", "MatMulIntegerToFloat"]
    session = ort.InferenceSession(str(tmp_path / "matmul.onnx"), providers=["CPUExecutionProvider"])
    with_mul = _range_multiplied_after(tmp_path / "matmul.onnx", weight)

    x = rng.standard_normal((33, 1, 256)).astype(np.float32)
    x[5] *= 1000.0  # one loud row must not coarsen the others' scales
    x[7] = 0.0  # nor may a silent one give NaN
    (batched,) = session.run(["y"], {"x": x})
    exact = x @ weight
    integer = _integer_product(x, weight)
    for row in range(len(x)):
        (alone,) = session.run(["y"], {"x": x[row : row + 1]})
        assert np.array_equal(alone[0], batched[row]), f"row {row}"
        tolerance = 0.03 * np.abs(exact[row]).max() + 1e-6
        assert np.abs(batched[row] - exact[row]).max() <= tolerance, f"row {row}"
        # What the kernel computes is the exact integer product, on CPUs with VNNI and without
        # (whose 16-bit pair sums would saturate on 8-bit weights).
        assert np.allclose(batched[row], integer[row], rtol=1e-5, atol=1e-6), f"row {row}"
    assert np.all(batched[7] == 0.0)
    # The range as the product's A scale gives what a Mul by it after the product gave, to the bit.
    (multiplied,) = with_mul.run(["y"], {"x": x})
    assert np.array_equal(batched, multiplied)


def _range_multiplied_after(path: Path, weight: np.ndarray) -> ort.InferenceSession:
    """The rewritten product's earlier form: a constant A scale of 1/127, the weight's own column
    scales, and a Mul by the row's range after the product."""
    graph = onnx.load(str(path))
    product = next(node for node in graph.graph.node if node.op_type == "MatMulIntegerToFloat")
    row_range, output = product.input[2], product.output[0]
    product.input[2:4] = ["earlier.inv_127", "earlier.column_scale"]
    product.output[0] = output + ".product"
    graph.graph.node.append(helper.make_node("Mul", [output + ".product", row_range], [output]))
    graph.graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(1 / INT8_MAX, np.float32), "earlier.inv_127"),
            numpy_helper.from_array(quantize_weight(weight)[1], "earlier.column_scale"),
        ]
    )
    return ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])


def test_a_relu_output_is_scaled_by_its_largest_value_and_a_row_of_zeros_gives_zeros(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((1024, 64)).astype(np.float32) / 32
    _matmul_graph(tmp_path / "matmul.onnx", weight, relu=True)
    quantize_int8(tmp_path, ["matmul.onnx"])
    ops = [node.op_type for node in onnx.load(str(tmp_path / "matmul.onnx")).graph.node]
    # No Abs, and no ReLU: QuantizeLinear at zero point 0 clamps what the ReLU would zero.
    assert ops == ["ReduceMax", "Max", "Mul", "QuantizeLinear", "QuantizeLinear", "MatMulIntegerToFloat"]
    session = ort.InferenceSession(str(tmp_path / "matmul.onnx"), providers=["CPUExecutionProvider"])

    x = rng.standard_normal((9, 1, 1024)).astype(np.float32)
    x[2] = -np.abs(x[2])  # every unit off: a row of zeros after the ReLU
    (batched,) = session.run(["y"], {"x": x})
    integer = _integer_product(np.maximum(x, 0), weight, never_negative=True)
    for row in range(len(x)):
        (alone,) = session.run(["y"], {"x": x[row : row + 1]})
        assert np.array_equal(alone[0], batched[row]), f"row {row}"
        assert np.allclose(batched[row], integer[row], rtol=1e-5, atol=1e-6), f"row {row}"
    assert np.all(batched[2] == 0.0) and np.isfinite(batched).all()
    # The rows' error on the product, the weights' own aside, is about half the signed grid's, which
    # leaves half its codes unused on values never negative.
    quantized, scale = quantize_weight(weight)
    rows_exact = np.maximum(x, 0) @ (quantized * scale)
    signed = _integer_product(np.maximum(x, 0), weight)
    assert np.abs(batched - rows_exact).mean() < 0.6 * np.abs(signed - rows_exact).mean()


def test_a_relu_that_another_node_reads_stays_and_its_product_is_the_same(tmp_path: Path) -> None:
    """The ReLU goes only where products alone read it: where its output is also the graph's, it
    stays, and the product over its input (a folded ReLU) and over its output agree to the bit."""
    rng = np.random.default_rng(4)
    weight = rng.standard_normal((512, 48)).astype(np.float32) / 32
    x = rng.standard_normal((7, 1, 512)).astype(np.float32)
    x[3] = -np.abs(x[3])
    _matmul_graph(tmp_path / "matmul.onnx", weight, relu=True)
    quantize_int8(tmp_path, ["matmul.onnx"])
    folded = ort.InferenceSession(str(tmp_path / "matmul.onnx"), providers=["CPUExecutionProvider"])
    _matmul_graph(tmp_path / "matmul.onnx", weight, relu=True)
    graph = onnx.load(str(tmp_path / "matmul.onnx"))
    graph.graph.output.append(helper.make_tensor_value_info("h", TensorProto.FLOAT, ["rows", 1, 512]))
    onnx.save(graph, str(tmp_path / "matmul.onnx"))
    quantize_int8(tmp_path, ["matmul.onnx"])
    ops = [node.op_type for node in onnx.load(str(tmp_path / "matmul.onnx")).graph.node]
    assert ops == ["Relu", "ReduceMax", "Mul", "QuantizeLinear", "QuantizeLinear", "MatMulIntegerToFloat"]
    kept = ort.InferenceSession(str(tmp_path / "matmul.onnx"), providers=["CPUExecutionProvider"])
    (y_folded,) = folded.run(["y"], {"x": x})
    y_kept, h = kept.run(["y", "h"], {"x": x})
    assert np.array_equal(h, np.maximum(x, 0))
    assert np.array_equal(y_folded, y_kept)
    assert np.all(y_folded[3] == 0.0)


def _integer_product(x: np.ndarray, weight: np.ndarray, never_negative: bool = False) -> np.ndarray:
    """The rewrite's arithmetic in exact integers: rows scaled to [-1, 1], uint8 around 128 (a ReLU's
    rows, in [0, 1], on all 255 steps above 0), int32 sums, then the row's and the columns' scales."""
    levels, zero_point = (255, 0) if never_negative else (INT8_MAX, 128)
    quantized, scale = quantize_weight(weight)
    row_range = np.maximum(np.abs(x).max(axis=-1, keepdims=True), 1e-30)
    rows = np.clip(np.rint(x / row_range * levels) + zero_point, 0, 255).astype(np.int64)
    sums = (rows - zero_point) @ quantized.astype(np.int64)
    return (sums * (scale / levels) * row_range).astype(np.float32)


def test_a_calibrated_range_gives_one_constant_scale_and_rows_beyond_it_saturate(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    weight = rng.standard_normal((256, 96)).astype(np.float32) / 16
    _matmul_graph(tmp_path / "matmul.onnx", weight)
    result = quantize_int8(tmp_path, ["matmul.onnx"], {"matmul.onnx": {"x": 4.0}, "other.onnx": {"x": 9.0}})
    assert result == {"matmul.onnx": {"matmuls": 1, "constant_scales": 1, "compensated_weights": 0}}
    ops = [node.op_type for node in onnx.load(str(tmp_path / "matmul.onnx")).graph.node]
    assert ops == ["QuantizeLinear", "MatMulIntegerToFloat"]  # no per-row range, no rescaling
    session = ort.InferenceSession(str(tmp_path / "matmul.onnx"), providers=["CPUExecutionProvider"])

    x = np.clip(rng.standard_normal((17, 1, 256)), -4, 4).astype(np.float32)
    x[3] *= 10.0  # beyond the range: clipped to it, its neighbours untouched
    (batched,) = session.run(["y"], {"x": x})
    quantized, scale = quantize_weight(weight)
    for row in range(len(x)):
        (alone,) = session.run(["y"], {"x": x[row : row + 1]})
        assert np.array_equal(alone[0], batched[row]), f"row {row}"
        codes = np.clip(np.rint(x[row] / 4.0 * INT8_MAX) + 128, 0, 255).astype(np.int64)
        integer = ((codes - 128) @ quantized.astype(np.int64)) * (scale * 4.0 / INT8_MAX)
        assert np.allclose(batched[row], integer, rtol=1e-5, atol=1e-6), f"row {row}"
        if row != 3:
            exact = x[row] @ weight
            assert np.abs(batched[row] - exact).max() <= 0.03 * np.abs(exact).max() + 1e-6, f"row {row}"


def test_a_bias_joins_a_product_of_constant_scale_and_stays_a_node_after_one_scaled_per_row(tmp_path: Path) -> None:
    """onnxruntime adds a product's own bias before it multiplies a row by its A scale: the bias
    goes into the product only where that scale is a constant, and the sum is right either way."""
    rng = np.random.default_rng(5)
    weight = rng.standard_normal((256, 96)).astype(np.float32) / 16
    bias = rng.standard_normal(96).astype(np.float32)
    x = np.clip(rng.standard_normal((9, 1, 256)), -4, 4).astype(np.float32)
    x[4] *= 0.01  # a quiet row, whose range is far from the constant one
    quantized, scale = quantize_weight(weight)
    for ranges, ops in (
        ({"matmul.onnx": {"x": 4.0}}, ["QuantizeLinear", "MatMulIntegerToFloat"]),
        (None, ["Abs", "ReduceMax", "Mul", "QuantizeLinear", "QuantizeLinear", "MatMulIntegerToFloat", "Add"]),
    ):
        _matmul_graph(tmp_path / "matmul.onnx", weight, bias=bias)
        quantize_int8(tmp_path, ["matmul.onnx"], ranges)
        assert [node.op_type for node in onnx.load(str(tmp_path / "matmul.onnx")).graph.node] == ops
        session = ort.InferenceSession(str(tmp_path / "matmul.onnx"), providers=["CPUExecutionProvider"])
        (y,) = session.run(["y"], {"x": x})
        if ranges is None:
            expected = _integer_product(x, weight) + bias
        else:
            codes = np.clip(np.rint(x / 4.0 * INT8_MAX) + 128, 0, 255).astype(np.int64)
            expected = ((codes - 128) @ quantized.astype(np.int64)) * (scale * 4.0 / INT8_MAX) + bias
        assert np.allclose(y, expected, rtol=1e-5, atol=1e-5), ops


def _correlated_activations(rows: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Activations whose K channels mix 32 sources, with channels of unequal scale, as a layer's are."""
    mixing = rng.standard_normal((32, k)) * rng.uniform(0.2, 2.0, k)
    return (rng.standard_normal((rows, 32)) @ mixing).astype(np.float32)


def test_rounding_compensated_on_calibration_activations_changes_products_less_on_unseen_ones(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    weight = (rng.standard_normal((128, 48)) / 8).astype(np.float32)
    activations = _correlated_activations(4000, 128, rng)
    activations[:, 5] = 0.0  # an input calibration never reaches
    calibration, unseen = activations[:3000].astype(np.float64), activations[3000:].astype(np.float64)
    gram = calibration.T @ calibration
    nearest, scale = quantize_weight(weight)
    compensated, compensated_scale = quantize_weight(weight, gram=gram)
    assert np.array_equal(scale, compensated_scale)  # the same column scales: the graph's form is unchanged
    assert compensated.dtype == np.int8 and np.abs(compensated).max() <= WEIGHT_MAX
    assert np.array_equal(compensated[5], nearest[5])  # an idle input keeps its nearest codes

    def product_error(codes: np.ndarray) -> float:
        return float(np.linalg.norm(unseen @ (codes * scale) - unseen @ weight))

    assert product_error(compensated) < 0.85 * product_error(nearest)

    # A second graph reading the same weight, uncalibrated (as the MLM head reads the output projection),
    # takes the same codes: the weight file keeps one copy.
    _matmul_graph(tmp_path / "matmul.onnx", weight)
    _matmul_graph(tmp_path / "head.onnx", weight, weight_name="head.w")
    result = quantize_int8(tmp_path, ["matmul.onnx", "head.onnx"], grams={"matmul.onnx": {"x": gram}})
    assert result["matmul.onnx"] == {"matmuls": 1, "constant_scales": 0, "compensated_weights": 1}
    for name, weight_name in (("matmul.onnx", "w"), ("head.onnx", "head.w")):
        stored = {i.name: i for i in onnx.load(str(tmp_path / name)).graph.initializer}
        assert np.array_equal(numpy_helper.to_array(stored[f"{weight_name}.int8"]), compensated), name


def test_calibration_gram_matrices_sum_the_rows_of_sentences_still_running(monkeypatch: pytest.MonkeyPatch) -> None:
    """Observed gathers rows in blocks before adding them to XᵀX: the sum is the same, over the rows
    asked for only (sentences that ended leave the batch's other rows out), whatever the block."""
    from export import calibrate

    monkeypatch.setattr(calibrate, "GRAM_BLOCK_ROWS", 7)
    rng = np.random.default_rng(4)
    steps = [rng.standard_normal((5, 1, 16)).astype(np.float32) for _ in range(6)]
    running = [np.arange(5), np.arange(5), np.array([0, 2, 3]), np.array([0, 3]), np.array([3]), np.array([3])]
    observed = calibrate.Observed()
    for value, rows in zip(steps, running, strict=True):
        observed.update(["x"], [value], rows)
    observed.finish()
    kept = np.concatenate([value[rows, 0] for value, rows in zip(steps, running, strict=True)]).astype(np.float64)
    assert np.allclose(observed.grams["x"], kept.T @ kept, rtol=1e-10)
    assert observed.ranges["x"] == pytest.approx(float(np.abs(kept).max()))


def test_compensated_rounding_in_blocks_rounds_as_row_by_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """Errors reach the rows of later blocks in one product per block: the codes are those of
    pushing every row's error onward at once."""
    from export import quantize

    rng = np.random.default_rng(5)
    weight = (rng.standard_normal((300, 40)) / 8).astype(np.float32)
    activations = _correlated_activations(3000, 300, rng).astype(np.float64)
    gram = activations.T @ activations
    _, scale = quantize_weight(weight)
    codes = []
    for block in (16, 128, 300):
        monkeypatch.setattr(quantize, "ROUNDING_BLOCK", block)
        rounded = quantize.compensated_codes(weight, scale, WEIGHT_MAX, gram)
        assert rounded is not None
        codes.append(rounded)
    assert np.array_equal(codes[0], codes[2]) and np.array_equal(codes[1], codes[2])
