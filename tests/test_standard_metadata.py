"""Standard TFLite Model Metadata in our files (read back with the schema's own generated
reader, as shipped by MediaPipe), softmax outputs, and our runtime reading the standard
metadata of files another tool wrote."""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import flatbuffers
import numpy as np
import pytest
from PIL import Image

from effnet_lite import Classifier, ModelError
from effnet_lite.labels import imagenet_labels
from effnet_lite.metadata import METADATA_NAME
from effnet_lite.tflite_metadata import STANDARD_NAME, packed_files, read_metadata
from tests_helpers import cached_venv, require_module, run_module

mds = require_module("mediapipe.tasks.metadata.metadata_schema_py_generated", "the schema cross-check needs mediapipe (test extra)")
from ai_edge_litert import schema_py_generated as tfl  # noqa: E402

FILES = {  # name: (precision, format, io, softmax)
    "uint8_softmax.tflite": ("int8", "tflite", "uint8", True),
    "int8_softmax.tflite": ("int8", "tflite", "int8", True),
    "fp32_softmax.tflite": ("fp32", "tflite", None, True),
    "uint8_softmax.onnx": ("int8", "onnx", "uint8", True),
    "fp32_softmax.onnx": ("fp32", "onnx", None, True),
}


@pytest.fixture(scope="module")
def files(lite0_files, tmp_path_factory):
    out, exporter = tmp_path_factory.mktemp("softmax"), lite0_files["exporter"]
    for name, (precision, fmt, io_, softmax) in FILES.items():
        exporter.export(out / name, precision, fmt, io_, softmax=softmax)
    return {**{n: out / n for n in FILES}, **{n: lite0_files[n] for n in
            ("int8.tflite", "uint8.tflite", "fp32.tflite", "int8.onnx", "fp32.onnx")}}


def standard(path) -> "mds.ModelMetadataT":
    blob = read_metadata(path.read_bytes())[STANDARD_NAME]
    assert mds.ModelMetadata.ModelMetadataBufferHasIdentifier(blob, 0)
    return mds.ModelMetadataT.InitFromObj(mds.ModelMetadata.GetRootAs(blob, 0))


def tensor_quantization(path, which):
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_path=str(path))
    d = (it.get_input_details() if which == "input" else it.get_output_details())[0]
    return d["dtype"], d["quantization"]


@pytest.mark.parametrize("name", ["int8.tflite", "uint8.tflite", "fp32.tflite",
                                  "uint8_softmax.tflite", "int8_softmax.tflite", "fp32_softmax.tflite"])
def test_every_standard_field(files, name):
    path, md = files[name], standard(files[name])
    softmax, fp32 = "softmax" in name, name.startswith("fp32")
    assert md.name.decode() == f"EfficientNet-Lite0 {'fp32' if fp32 else 'int8'}"
    assert b"1000 classes" in md.description and b"ImageNet weights by Google" in md.description
    assert md.version.decode() and md.author.startswith(b"EfficientNet-Lite architecture")
    assert md.license == b"Apache-2.0" and md.minParserVersion == b"1.0.0"
    assert len(md.subgraphMetadata) == 1
    sub = md.subgraphMetadata[0]
    (inp,), (out,) = sub.inputTensorMetadata, sub.outputTensorMetadata
    # input: an RGB image, normalization (pixel units) that maps pixel bytes onto the input
    assert inp.name == b"image" and b"87.5%" in inp.description and b"bicubic" in inp.description
    assert inp.content.contentPropertiesType == mds.ContentProperties.ImageProperties
    assert inp.content.contentProperties.colorSpace == mds.ColorSpaceType.RGB
    (unit,) = inp.processUnits
    assert unit.optionsType == mds.ProcessUnitOptions.NormalizationOptions
    mean, std = np.asarray(unit.options.mean), np.asarray(unit.options.std)
    assert mean.shape == std.shape == (3,)
    dtype, (scale, zero_point) = tensor_quantization(path, "input")
    pixels = np.arange(256.0)
    if dtype == np.float32:
        assert np.allclose(mean, 127.5) and np.allclose(std, 127.5)
        assert np.allclose(inp.stats.min, -1) and np.allclose(inp.stats.max, 1)
    else:   # the tensor holds the pixel (uint8) or pixel - 128 (int8): both mean the same value
        q = pixels if dtype == np.uint8 else pixels - 128
        assert np.allclose((pixels - mean[0]) / std[0], scale * (q - zero_point), atol=1e-6)
        info = np.iinfo(dtype)
        assert list(inp.stats.min) == [info.min] and list(inp.stats.max) == [info.max]
    # output: labels packed as the one associated file; probabilities when softmax
    assert out.name == (b"probability" if softmax else b"logits")
    assert out.content.contentPropertiesType == mds.ContentProperties.FeatureProperties
    (labels,) = out.associatedFiles
    assert labels.name == b"labels.txt" and labels.type == mds.AssociatedFileType.TENSOR_AXIS_LABELS
    assert packed_files(path.read_bytes()) == ["labels.txt"]
    with zipfile.ZipFile(path) as z:
        assert z.read("labels.txt").decode().splitlines() == imagenet_labels()
    if softmax:
        out_type = tensor_quantization(path, "output")[0]
        hi = {np.uint8: 255, np.int8: 127, np.float32: 1}[out_type]
        assert list(out.stats.max) == [hi]


LOGITS_TWIN = {"uint8_softmax.tflite": "uint8.tflite", "int8_softmax.tflite": "int8.tflite",
               "fp32_softmax.tflite": "fp32.tflite", "uint8_softmax.onnx": "int8.onnx",
               "fp32_softmax.onnx": "fp32.onnx"}


@pytest.mark.parametrize("name", list(LOGITS_TWIN))
def test_softmax_files_output_probabilities(files, photos, name):
    """The file outputs softmax(its logits twin's output), within the int8 softmax's 1/256 steps."""
    clf, twin = Classifier.from_file(files[name]), Classifier.from_file(files[LOGITS_TWIN[name]])
    assert clf.io.output_is_probability and clf.metadata.output == "probabilities"
    assert not twin.io.output_is_probability
    fp32 = name.startswith("fp32")
    tolerance = 1e-5 if fp32 else 2.5 / 256
    for image in photos.values():
        x = clf.preprocess(image)
        probs = clf.io.dequantize(clf.backend.run(x))
        # int8: 1/256 steps round the many tiny classes of a diffuse answer (e.g. the astronaut,
        # no ImageNet class) to 0, so up to a third of the mass can go missing; never extra
        assert probs.min() >= 0 and (abs(probs.sum() - 1) < 1e-4 if fp32 else probs.sum() < 1.02)
        assert np.array_equal(clf.io.to_scores(clf.backend.run(x)), probs)    # no second softmax
        assert np.abs(probs - twin.scores(x)).max() <= tolerance


def rewrite(path, out, labels: list[str], mean=None, std=None, drop_ours=True) -> None:
    """A copy of `path` as another tool would write it: our JSON removed, standard metadata
    rebuilt with the schema's generated code (MediaPipe's), `labels` packed."""
    data = path.read_bytes()
    model = tfl.ModelT.InitFromObj(tfl.Model.GetRootAs(data, 0))
    md = standard(path)
    if mean is not None:
        options = md.subgraphMetadata[0].inputTensorMetadata[0].processUnits[0].options
        options.mean, options.std = mean, std
    md.name, md.author = b"Someone else's classifier", b"another tool"
    b = flatbuffers.Builder(0)
    b.Finish(md.Pack(b), b"M001")
    entries = []
    for m in model.metadata:
        name = m.name.decode()
        if name == STANDARD_NAME:
            model.buffers[m.buffer].data = np.frombuffer(bytes(b.Output()), np.uint8)
        if name != METADATA_NAME or not drop_ours:
            entries.append(m)
        else:          # another tool's file holds nothing of ours, digest included
            model.buffers[m.buffer].data = None
    model.metadata = entries
    b = flatbuffers.Builder(0)
    b.Finish(model.Pack(b), b"TFL3")
    buf = io.BytesIO(bytes(b.Output()))
    buf.seek(0, io.SEEK_END)
    with zipfile.ZipFile(buf, "a") as z:
        z.writestr("labels.txt", "\n".join(labels) + "\n")
    out.write_bytes(buf.getvalue())


def test_runtime_reads_labels_another_tool_packed(files, photos, tmp_path):
    renamed = [f"thing-{i:04d} ({name})" for i, name in enumerate(imagenet_labels())]
    foreign = tmp_path / "foreign.tflite"
    rewrite(files["uint8_softmax.tflite"], foreign, renamed)
    assert METADATA_NAME not in read_metadata(foreign.read_bytes())
    ours, theirs = Classifier.from_file(files["uint8_softmax.tflite"]), Classifier.from_file(foreign)
    assert theirs.metadata is None and theirs.labels == renamed
    assert theirs.backend.standard.name == "Someone else's classifier"
    for image in photos.values():
        a, b = ours.classify(image).categories[0], theirs.classify(image).categories[0]
        assert b.label == renamed[a.index] and b.score == a.score
    Image.fromarray(photos["coffee"]).save(tmp_path / "coffee.png")
    code, out, err = run_module("effnet_lite.apps.infer", tmp_path / "coffee.png", "--model", foreign, "--json")
    assert code == 0 and json.loads(out)["categories"][0]["label"] == renamed[967]
    assert "Someone else's classifier: standard TFLite metadata, 1000 labels from the file" in err


def test_float_input_normalization_comes_from_the_file(files, photos, tmp_path):
    """A float-input file says its input is pixel/255 (mean 0, std 255): we must follow."""
    foreign = tmp_path / "unit_range.tflite"
    rewrite(files["fp32_softmax.tflite"], foreign, imagenet_labels(), mean=[0.0], std=[255.0])
    clf = Classifier.from_file(foreign)
    assert clf.io.config.mean == (0.0,) * 3 and clf.io.config.std == (1.0,) * 3
    image = photos["coffee"]
    x, reference = clf.preprocess(image), Classifier.from_file(files["fp32_softmax.tflite"]).preprocess(image)
    assert np.allclose(x, (reference + 1) / 2, atol=1e-6)    # [-1, 1] became [0, 1]


@pytest.mark.parametrize("count", [999, 1001])
def test_labels_that_disagree_with_the_output_are_refused(files, tmp_path, count):
    foreign = tmp_path / "bad_labels.tflite"
    rewrite(files["uint8_softmax.tflite"], foreign, [f"c{i}" for i in range(count)])
    with pytest.raises(ModelError, match=f"labels file names {count} classes but the model outputs 1000"):
        Classifier.from_file(foreign)
    ours = tmp_path / "ours_bad_labels.tflite"      # one of ours, relabelled wrongly
    rewrite(files["uint8_softmax.tflite"], ours, [f"c{i}" for i in range(count)], drop_ours=False)
    with pytest.raises(ModelError, match=f"labels file names {count} classes but the model outputs 1000"):
        Classifier.from_file(ours)


def test_labels_file_named_but_not_packed(files, tmp_path):
    """The flatbuffer without its zip (outside what the digest covers): the reader names the
    missing labels file."""
    from effnet_lite import integrity
    data = files["uint8.tflite"].read_bytes()
    cut = data[:data.rfind(b"PK\x03\x04")]          # the flatbuffer without its zip
    assert integrity.verify(cut) == integrity.verify(data) is not None
    (tmp_path / "nozip.tflite").write_bytes(cut)
    with pytest.raises(ModelError, match="names the labels file 'labels.txt', which is not packed in the model"):
        Classifier.from_file(tmp_path / "nozip.tflite")


# Google's way to relabel a .tflite file: tflite-support's MetadataPopulator, which re-serializes
# the whole model with the new standard metadata and packs the new labels file.
RELABEL = """
import os, sys, tempfile, flatbuffers
from tflite_support import metadata as md, metadata_schema_py_generated as mdfb
model, labels, mean = sys.argv[1], sys.argv[2], sys.argv[3]
doc = mdfb.ModelMetadataT.InitFromObj(mdfb.ModelMetadata.GetRootAsModelMetadata(
    md.MetadataDisplayer.with_model_file(model).get_metadata_buffer(), 0))
out = doc.subgraphMetadata[0].outputTensorMetadata[0]
out.associatedFiles[0].name = b"classes.txt"       # a packed file cannot be replaced, only added
if mean != "same":
    doc.subgraphMetadata[0].inputTensorMetadata[0].processUnits[0].options.mean = [float(mean)] * 3
folder = tempfile.mkdtemp()
with open(os.path.join(folder, "classes.txt"), "w") as f:
    f.write(open(labels).read())
b = flatbuffers.Builder(0)
b.Finish(doc.Pack(b), md.MetadataPopulator.METADATA_FILE_IDENTIFIER)
populator = md.MetadataPopulator.with_model_file(model)     # rewrites the file in place
populator.load_metadata_buffer(b.Output())
populator.load_associated_files([os.path.join(folder, "classes.txt")])
populator.populate()
"""


def tflite_support_python() -> Path:
    """A cached venv with tflite-support (it pins protobuf<4, so not in ours)."""
    return cached_venv("effnet-tflite-support-py311", ["tflite-support==0.4.4"], "tflite-support")


def test_relabelled_by_googles_metadata_writer(files, photos, tmp_path):
    """Our uint8 file relabelled with MetadataPopulator still loads (the digest covers the
    graph, weights and settings, not the labels) and answers with the new names; flipped
    weights or a changed input normalization in such a file are still refused."""
    import subprocess
    python = tflite_support_python()
    renamed = [f"product {i}" for i in range(1000)]
    (tmp_path / "classes.txt").write_text("\n".join(renamed) + "\n")

    def relabel(name: str, mean: str = "same") -> Path:
        model = tmp_path / name
        model.write_bytes(files["uint8_softmax.tflite"].read_bytes())
        done = subprocess.run([str(python), "-c", RELABEL, str(model), str(tmp_path / "classes.txt"), mean],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert model.read_bytes() != files["uint8_softmax.tflite"].read_bytes()
        return model
    model = relabel("relabelled.tflite")
    assert set(packed_files(model.read_bytes())) == {"labels.txt", "classes.txt"}
    ours, theirs = Classifier.from_file(files["uint8_softmax.tflite"]), Classifier.from_file(model)
    assert theirs.metadata is not None and theirs.metadata.digest == ours.metadata.digest
    assert theirs.labels == renamed
    for image in photos.values():
        a, b = ours.classify(image).categories[0], theirs.classify(image).categories[0]
        assert b.label == renamed[a.index] and b.score == a.score
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x10            # a weight, in the middle of the buffers
    (tmp_path / "flipped.tflite").write_bytes(data)
    with pytest.raises(ModelError, match="flipped.tflite: model file is corrupt or was modified"):
        Classifier.from_file(tmp_path / "flipped.tflite")
    # an integer-input model takes the pixels as they are: a rewritten normalization changes
    # nothing it answers (see the MetadataWriter test below), so it loads
    renormalized = Classifier.from_file(relabel("renormalized.tflite", mean="100"))
    image = next(iter(photos.values()))
    assert renormalized.classify(image).categories[0].score == ours.classify(image).categories[0].score


# tflite-support's one-call relabelling for MediaPipe and Model Maker users, with mean 0 and
# std 1, as people write them for integer-input models.
METADATA_WRITER = """
import sys
from tflite_support.metadata_writers import image_classifier, writer_utils
model, labels, out = sys.argv[1:4]
writer = image_classifier.MetadataWriter.create_for_inference(writer_utils.load_file(model), [0], [1], [labels])
writer_utils.save_file(writer.populate(), out)
"""


def test_googles_metadata_writer_relabel_with_mean_0_std_1(files, photos, tmp_path):
    """MetadataWriter.create_for_inference(model, [0], [1], [labels]) on our integer-input files:
    they load with the new labels and give the same scores (pixels go in as they are). On a
    float-input file the same call would change the answers: refused, naming the field, what it
    was and is, and the kind of tool, without calling the file corrupt."""
    import subprocess
    python = tflite_support_python()
    labels = tmp_path / "products.txt"          # (labels.txt is packed already: a new name)
    renamed = [f"product {i}" for i in range(1000)]
    labels.write_text("\n".join(renamed) + "\n")

    def rewrite(name: str) -> Path:
        out = tmp_path / f"written-{name}"
        done = subprocess.run([str(python), "-c", METADATA_WRITER, str(files[name]), str(labels), str(out)],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert standard(out).subgraphMetadata[0].inputTensorMetadata[0].processUnits[0].options.mean == [0.0]
        return out
    for name in ("uint8.tflite", "int8.tflite"):
        ours, theirs = Classifier.from_file(files[name]), Classifier.from_file(rewrite(name))
        assert theirs.labels == renamed and theirs.io.input_dtype == ours.io.input_dtype != np.float32
        for image in photos.values():
            a, b = ours.classify(image).categories, theirs.classify(image).categories
            assert [c.index for c in a] == [c.index for c in b] and [c.score for c in a] == [c.score for c in b]
            assert b[0].label == renamed[a[0].index]
    written = rewrite("fp32.tflite")
    with pytest.raises(ModelError) as refused:
        Classifier.from_file(written)
    message = str(refused.value)
    assert message.startswith(f"{written}: its input normalization was rewritten"), message
    assert "says mean 0, std 1 where the file was made with mean 127.5, std 127.5" in message
    assert "MetadataWriter" in message and "corrupt" not in message and "\n" not in message


def test_json_entry_holds_only_what_the_standard_lacks(files):
    own = json.loads(read_metadata(files["uint8_softmax.tflite"].read_bytes())[METADATA_NAME])
    assert {"labels", "mean", "std", "input_scale"}.isdisjoint(own)
    assert own["crop_pct"] == 0.875 and own["interpolation"] == "bicubic" and own["output"] == "probabilities"


def test_packed_files_do_not_carry_the_time_of_writing(monkeypatch):
    """The same model packed an hour apart gives the same bytes (a zip entry's date would
    otherwise make two identical exports differ); the labels still unpack as written."""
    import time
    from effnet_lite.model_export.standard_metadata import pack_files
    model, files = b"flatbuffer bytes", {"labels.txt": "tench\ngoldfish\n".encode()}
    first = pack_files(model, files)
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 3600)
    assert pack_files(model, files) == first
    with zipfile.ZipFile(io.BytesIO(first)) as z:
        assert z.read("labels.txt") == files["labels.txt"]
        assert (z.getinfo("labels.txt").external_attr >> 16) & 0o444 == 0o444
