"""Torch vs OpenVINO vs ONNX Runtime for the shipped members, side by side in one run.

Interleaved repeats on patient101 ED (full network grid and the heart-region box), 2 CPU threads:
median seconds per frame for each member and backend, and the largest label disagreement
with torch. Usage: python research/runtime_backends/measure.py [--data ../shared/acdc]
"""
import argparse, statistics, tempfile, time
from pathlib import Path
import numpy as np, torch

from CardiacEnsembleLib.inference.ensemble import load_ensemble
from CardiacEnsembleLib.inference.preprocess import prepare_slices, stack_neighbours

parser = argparse.ArgumentParser()
parser.add_argument("--data", default="../shared/acdc")
parser.add_argument("--patient", default="patient101")
parser.add_argument("--repeats", type=int, default=3)
args = parser.parse_args()
torch.set_num_threads(2)

from CardiacEnsembleLib.io.images import read_image
from CardiacEnsembleLib.inference.heart_region import locate_heart
from CardiacEnsembleLib.inference.runner import predict_slices

folder = Path(args.data) / "testing" / args.patient
frame = sorted(p for p in folder.glob("*_frame??.nii.gz"))[0]
image, geometry = read_image(frame)
ensemble = load_ensemble(device="cpu")
volume = torch.from_numpy(image)
slices, grid = prepare_slices(volume, geometry.spacing_zyx, ensemble.members[0].spec.preprocess)
locator = ensemble.members[ensemble.locator_index]
full_in = stack_neighbours(slices, slices.shape[0], locator.spec.context_slices)
region = locate_heart(predict_slices(locator.network, full_in), 16, 32)
print(frame.name, "grid", tuple(slices.shape), region.describe())
inputs = {"full": slices, "heart": region.box.crop(slices)}

import openvino as ov, onnxruntime as ort
core = ov.Core()
work = Path(tempfile.mkdtemp())
rows = []
for member in ensemble.members:
    net = member.network
    ctx = member.spec.context_slices
    example = stack_neighbours(inputs["heart"], slices.shape[0], ctx).contiguous()
    t0 = time.perf_counter()
    ov_model = ov.convert_model(net, example_input=example,
                                input=[ov.PartialShape([-1, example.shape[1], -1, -1])])
    ov.save_model(ov_model, work / f"{member.name}.xml", compress_to_fp16=False)
    convert_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled = core.compile_model(core.read_model(work / f"{member.name}.xml"), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 2,
                                   "PERFORMANCE_HINT": "LATENCY"})
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    onnx_path = work / f"{member.name}.onnx"
    try:
        torch.onnx.export(net, (example,), str(onnx_path), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}}, dynamo=False,
                          opset_version=17)
        options = ort.SessionOptions(); options.intra_op_num_threads = 2
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa
        print("onnx export failed", member.name, error); session = None
    onnx_s = time.perf_counter() - t0
    for kind, x in inputs.items():
        stacked = stack_neighbours(x, slices.shape[0], ctx).contiguous()
        arr = stacked.numpy()
        runs = {"torch": lambda: torch.softmax(net(stacked.contiguous(memory_format=torch.channels_last)), 1).numpy(),
                "openvino": lambda: compiled(arr)[0],
                }
        if session is not None:
            runs["onnxruntime"] = lambda: session.run(None, {"x": arr})[0]
        times = {k: [] for k in runs}; outs = {}
        with torch.inference_mode():
            for k, f in runs.items():
                outs[k] = f()  # warm
            for _ in range(args.repeats):
                for k, f in runs.items():
                    t = time.perf_counter(); f(); times[k].append(time.perf_counter() - t)
        ref = outs["torch"].argmax(1)
        for k in runs:
            lab = outs[k].argmax(1)
            rows.append((member.name, kind, k, statistics.median(times[k]),
                         float((lab != ref).mean()), convert_s if k == "openvino" else onnx_s if k == "onnxruntime" else 0,
                         compile_s if k == "openvino" else 0))
            print(*rows[-1], flush=True)
print("\n| member | input | backend | median s | label mismatch vs torch | export s | compile s |")
print("|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.3f} | {r[4]:.2e} | {r[5]:.1f} | {r[6]:.2f} |")
