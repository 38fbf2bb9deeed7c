"""ONNX export (`audio-ssl convert CKPT OUT.onnx`) and the onnxruntime runner, against the torch
model: every output, ragged batches, greedy transcripts, metadata, the commands that take the
file, and bad files. Exports take 10-30 s each on 2 cores, so each model is exported once per
module and the tests are marked slow."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from audio_ssl import config
from audio_ssl.cli import main
from audio_ssl.interop.export import save_native
from audio_ssl.models import Wav2Vec2ForCTC, Wav2Vec2ForPretraining, Wav2Vec2Model
from audio_ssl.models.cpc import CpcForPretraining
from tests.conftest import small_model_config, tiny_wav2vec2
from tests.interop.interop_helpers import report, waveforms

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from audio_ssl.interop.onnx import OnnxModel, export_onnx  # noqa: E402

pytestmark = pytest.mark.slow
VOCAB = ["<blank>", "|", "a", "b", "c", "d", "e"]
ONE_S, LONG = 16_000, 59_200  # 1 s and 3.7 s


def _clip(samples: int, seed: int) -> torch.Tensor:
    return waveforms(batch=1, samples=samples, seed=seed)[0]  # (S,)


def _torch_features(model: Wav2Vec2Model, wav: torch.Tensor) -> dict[str, torch.Tensor]:
    """One clip, unpadded, through the module's own forward -> {output: (T, ...)}."""
    with torch.no_grad():
        out = model(wav[None], return_layers=True)
    states = {f"layer_{i}": h[0] for i, h in enumerate(out.hidden_states)}
    return {"encoder": out.features[0], **states}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{name: (torch model, checkpoint, onnx path)}: the tiny preset's backbone (group-norm
    encoder), a small layer-norm backbone, a tiny CTC model, and a CPC pretraining model (its
    causal network has 3 layers where the unused Transformer settings say 2; the torch model
    kept is its backbone)."""
    root = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    small = small_model_config(norm="layer")
    cpc = replace(small, objective="cpc", cpc=config.CpcConfig(dim=64, layers=3, steps=3))
    models = {
        "tiny": Wav2Vec2Model(tiny_wav2vec2()),
        "layer_norm": Wav2Vec2Model(small),
        "ctc": Wav2Vec2ForCTC(tiny_wav2vec2(), len(VOCAB)),
        "cpc": CpcForPretraining(cpc),
    }
    out = {}
    for name, model in models.items():
        model.eval()
        ckpt = save_native(model, root / f"{name}.ckpt", VOCAB if name == "ctc" else None,
                           {"data": {"normalize": True}})
        path = root / f"{name}.onnx"
        assert main(["convert", str(ckpt), str(path)]) == 0
        out[name] = (model.backbone if name == "cpc" else model, ckpt, path)
    return out


@pytest.mark.parametrize("name", ["tiny", "layer_norm", "cpc"])
@pytest.mark.parametrize("samples", [ONE_S, LONG])
def test_every_output_matches_torch(exported, name, samples):
    model, _, path = exported[name]
    runner = OnnxModel(path)
    wav = _clip(samples, seed=samples)
    ref = _torch_features(model, wav)
    got = runner.run(wav[None].numpy())
    layers = len(model.context.layers)  # the module's own count
    assert list(got) == ["encoder", *(f"layer_{i}" for i in range(layers + 1)), "frame_lengths"]
    assert int(got["frame_lengths"][0]) == ref["encoder"].shape[0]
    for key, r in ref.items():
        report(f"onnx {name} {samples / 16_000:.1f} s {key}", torch.from_numpy(got[key][0]), r,
               1e-5)


@pytest.mark.parametrize("name", ["tiny", "layer_norm", "cpc"])
def test_padded_rows_equal_the_clips_alone(exported, name):
    model, _, path = exported[name]
    runner = OnnxModel(path)
    clips = [_clip(n, seed=n) for n in (ONE_S, LONG, 35_000)]
    batch, lengths = runner.prepare([c.numpy() for c in clips])  # normalised, padded to 3.7 s
    got = runner.run(batch, lengths)
    for b, clip in enumerate(clips):
        alone = torch.from_numpy(batch[b, : len(clip)])
        ref = _torch_features(model, alone)
        n = int(got["frame_lengths"][b])
        assert n == ref["encoder"].shape[0]
        for key, r in ref.items():
            report(f"onnx {name} ragged row {b} {key}", torch.from_numpy(got[key][b, :n]), r,
                   1e-5)


def test_ctc_logits_and_greedy_transcripts_match_torch(exported, tmp_path):
    import soundfile as sf

    from audio_ssl.asr.transcribe import Transcriber

    model, ckpt, path = exported["ctc"]
    clips = [_clip(n, seed=n + 1) for n in (ONE_S, LONG, 27_000)]
    files = []
    for i, clip in enumerate(clips):
        files.append(str(tmp_path / f"clip{i}.wav"))
        sf.write(files[-1], clip.numpy(), 16_000, subtype="FLOAT")
    with_torch = Transcriber.from_path(ckpt, device="cpu", precision="32")
    with_onnx = Transcriber.from_path(path, device="cpu")
    assert with_onnx.loaded.source == "onnx" and with_onnx.settings == with_torch.settings
    torch_texts, _ = with_torch.transcribe_files(files)
    onnx_texts, _ = with_onnx.transcribe_files(files)  # one padded batch
    assert [t.text for t in onnx_texts] == [t.text for t in torch_texts]
    assert any(t.text for t in torch_texts)
    runner = OnnxModel(path)
    for clip, t in zip(clips, torch_texts):
        assert runner.transcribe(clip.numpy()) == t.text  # numpy normalisation and greedy
        prepared = torch.from_numpy(runner.prepare([clip.numpy()])[0])
        with torch.no_grad():
            ref = model(prepared).logits[0]
        report("onnx ctc logits", torch.from_numpy(runner.logits(clip.numpy())), ref, 1e-5)


def test_transcribe_and_evaluate_commands_take_the_onnx_file(exported, tmp_path, capsys):
    import soundfile as sf

    _, ckpt, path = exported["ctc"]
    rows = []
    for i, n in enumerate((ONE_S, 30_000)):
        wav = tmp_path / f"u{i}.wav"
        sf.write(wav, _clip(n, seed=i).numpy(), 16_000, subtype="FLOAT")
        rows.append(f"{wav}\tabc de")
    (tmp_path / "set.tsv").write_text("\n".join(rows) + "\n")
    printed = {}
    for model in (ckpt, path):
        assert main(["transcribe", str(model), str(tmp_path / "u0.wav"), str(tmp_path / "u1.wav"),
                     "--precision", "32", "--device", "cpu"]) == 0
        transcripts = capsys.readouterr().out
        assert main(["evaluate", str(model), str(tmp_path / "set.tsv"), "--precision", "32",
                     "--device", "cpu"]) == 0
        printed[model.suffix] = (transcripts, capsys.readouterr().out.splitlines()[:2])
    assert printed[".onnx"] == printed[".ckpt"]


def test_extract_command_takes_the_onnx_file(exported, tmp_path):
    import soundfile as sf

    _, ckpt, path = exported["tiny"]
    audio = tmp_path / "audio"
    audio.mkdir()
    for i, n in enumerate((ONE_S, LONG)):
        sf.write(audio / f"{i}.wav", _clip(n, seed=i).numpy(), 16_000, subtype="FLOAT")
    for model, out in ((ckpt, "from_ckpt"), (path, "from_onnx")):
        assert main(["extract", str(model), str(audio), str(tmp_path / out), "--layer",
                     "2,last", "--precision", "32", "--device", "cpu", "--no-progress"]) == 0
    for i in range(2):
        ref = torch.from_numpy(np.load(tmp_path / "from_ckpt" / f"{i}.npy"))
        got = torch.from_numpy(np.load(tmp_path / "from_onnx" / f"{i}.npy"))
        report(f"extract onnx vs ckpt file {i}", got, ref, 1e-5)


def test_checker_clean_and_metadata_enough_to_run(exported):
    _, _, path = exported["ctc"]
    onnx.checker.check_model(str(path), full_check=True)
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    assert props["audio_ssl.kind"] == "logits"
    assert json.loads(props["audio_ssl.vocab"]) == VOCAB
    assert props["audio_ssl.sample_rate"] == "16000" and props["audio_ssl.normalize"] == "true"
    assert float(props["audio_ssl.frame_rate"]) == 50.0
    _, _, features = exported["tiny"]
    meta = OnnxModel(features).metadata
    assert meta.layers == ("encoder", *(f"layer_{i}" for i in range(5)))
    assert meta.quantized == "none" and meta.opset >= 18 and meta.exporter == "dynamo"
    graph = onnx.load(str(features), load_external_data=False).graph
    assert [i.name for i in graph.input] == ["waveforms", "lengths"]
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert all(isinstance(d, str) for d in dims)  # batch and samples are dynamic


def test_runner_needs_no_torch(exported):
    """numpy + onnxruntime only: torch blocked from importing in a fresh interpreter."""
    _, _, path = exported["ctc"]
    code = ("import sys; sys.modules['torch'] = None\n"
            "import numpy as np\n"
            "from audio_ssl.interop.onnx import OnnxModel\n"
            f"m = OnnxModel({str(path)!r})\n"
            "x = np.random.default_rng(0).standard_normal(20000).astype(np.float32)\n"
            "print(repr(m.transcribe(x)), m.features.__name__)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_int8_quantisation(exported, tmp_path, capsys):
    _, ckpt, fp32 = exported["ctc"]
    path = tmp_path / "int8.onnx"
    assert main(["convert", str(ckpt), str(path), "--quantize", "int8"]) == 0
    assert "int8 dynamic" in capsys.readouterr().out
    runner = OnnxModel(path)
    assert runner.metadata.quantized == "int8"
    assert path.stat().st_size < 0.5 * fp32.stat().st_size
    clip = _clip(LONG, seed=3).numpy()
    agree = (runner.logits(clip).argmax(-1) == OnnxModel(fp32).logits(clip).argmax(-1)).mean()
    print(f"ONNX int8 vs fp32 frame argmax agreement: {agree:.3f}")
    assert agree > 0.5


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("audio-ssl: error: "), err
    return err[0]


def test_bad_inputs_one_line_exit_2(exported, tmp_path, capsys):
    import soundfile as sf

    wav = tmp_path / "a.wav"
    sf.write(wav, _clip(ONE_S, seed=0).numpy(), 16_000)
    # a pretraining checkpoint asked for logits
    torch.manual_seed(0)
    pre = save_native(Wav2Vec2ForPretraining(small_model_config()).eval(), tmp_path / "p.ckpt")
    assert main(["convert", str(pre), str(tmp_path / "p.onnx"), "--outputs", "logits"]) == 2
    assert "need a CTC head" in _one_line_error(capsys)
    assert not (tmp_path / "p.onnx").exists()
    # not ONNX: random bytes, and a truncated export
    (tmp_path / "junk.onnx").write_bytes(np.random.default_rng(0).bytes(3000))
    truncated = tmp_path / "cut.onnx"
    truncated.write_bytes(exported["ctc"][2].read_bytes()[:5000])
    for bad in ("junk.onnx", "cut.onnx"):
        assert main(["transcribe", str(tmp_path / bad), str(wav)]) == 2
        assert "not an ONNX model onnxruntime can load" in _one_line_error(capsys)
    # an ONNX file from elsewhere: valid, but without our metadata
    from onnx import TensorProto, helper

    node = helper.make_node("Identity", ["waveforms"], ["out"])
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("waveforms", TensorProto.FLOAT, [1, None])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, None])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9),
              tmp_path / "foreign.onnx")
    assert main(["transcribe", str(tmp_path / "foreign.onnx"), str(wav)]) == 2
    assert "without audio_ssl metadata" in _one_line_error(capsys)
    # a features export given to transcribe, a logits export given to extract
    assert main(["transcribe", str(exported["tiny"][2]), str(wav)]) == 2
    assert "without a CTC head" in _one_line_error(capsys)
    assert main(["extract", str(exported["ctc"][2]), str(wav), str(tmp_path / "f")]) == 2
    assert "CTC logits only" in _one_line_error(capsys)
    # an ONNX file where weights are needed
    assert main(["convert", str(exported["ctc"][2]), str(tmp_path / "x.ckpt"),
                 "--to", "audio-ssl"]) == 2
    assert "needs the checkpoint it was exported from" in _one_line_error(capsys)


def test_base_random_weights(tmp_path):
    """The paper's BASE (random weights) at 3.7 s and in a ragged batch: max |diff| <= 1e-4."""
    torch.manual_seed(0)
    model = Wav2Vec2Model(config.preset("base").model).eval()
    from audio_ssl.interop.common import LoadedModel

    loaded = LoadedModel(model, model.cfg, None, "audio-ssl", None, {})
    result = export_onnx(loaded, tmp_path / "base.onnx")
    _ragged_rows_match_torch(OnnxModel(result.path), model, (5, 6), "onnx base")


def _ragged_rows_match_torch(runner: OnnxModel, model: Wav2Vec2Model, seeds: tuple[int, int],
                             name: str) -> None:
    """A 3.7 s clip and a 1 s clip padded beside it, through the file: every output of each
    row within 1e-4 of the torch model on that clip alone."""
    clips = [_clip(LONG, seed=seeds[0]), _clip(ONE_S, seed=seeds[1])]
    batch, lengths = runner.prepare([c.numpy() for c in clips])
    got = runner.run(batch, lengths)
    for b, clip in enumerate(clips):
        ref = _torch_features(model, torch.from_numpy(batch[b, : len(clip)]))
        n = int(got["frame_lengths"][b])
        for key, r in ref.items():
            report(f"{name} row {b} {key}", torch.from_numpy(got[key][b, :n]), r, 1e-4)


def _source(kind: str, norm: str, stable: bool, folder: Path) -> Path:
    """A checkpoint as the interop tests build them: an HF folder or a fairseq .pt of a small
    model with BASE's (group norm) or LV-60 / XLS-R's (layer norm, stable layer norm) layout."""
    from tests.interop import fairseq_oracle as oracle
    from tests.interop.interop_helpers import hf_model

    hf = hf_model("Wav2Vec2ForPreTraining", norm=norm, stable=stable)
    if kind == "hf":
        hf.save_pretrained(folder / "hf")
        return folder / "hf"
    path = folder / "checkpoint_best.pt"
    torch.save(oracle.checkpoint(oracle.fairseq_state(hf), cfg=oracle.pretraining_cfg(hf.config)),
               path)
    return path


@pytest.mark.parametrize("kind", ["hf", "fairseq"])
@pytest.mark.parametrize("norm, stable", [("group", False), ("layer", True), ("layer", False)])
def test_interop_configurations_export_without_a_code_change(kind, norm, stable, tmp_path):
    """Every wav2vec 2.0 layout the interop tests read (HF folders and fairseq checkpoints:
    BASE's group norm; LARGE, LV-60 and XLS-R's layer norm with the stable pre-norm blocks;
    layer norm with post-norm blocks) converts to ONNX from the command line, and every output
    equals the torch model that load_model gives (<= 1e-4), a padded row included."""
    pytest.importorskip("transformers")
    from audio_ssl.interop import load_model

    src = _source(kind, norm, stable, tmp_path)
    out = tmp_path / "model.onnx"
    assert main(["convert", str(src), str(out)]) == 0
    loaded = load_model(src)
    backbone = getattr(loaded.model, "backbone", loaded.model).eval()
    _ragged_rows_match_torch(OnnxModel(out), backbone, (7, 8), f"onnx {kind} {norm}/{stable}")


@pytest.mark.parametrize("model_type", ["hubert", "wavlm"])
def test_architectures_without_an_importer_are_refused_in_one_line(model_type, tmp_path, capsys):
    """HF HuBERT and WavLM folders (another model_type): convert refuses them in one line naming
    what it found and what is supported, exit 2, and writes nothing."""
    transformers = pytest.importorskip("transformers")
    small = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=128, conv_dim=[32] * 7, num_conv_pos_embeddings=16,
                 num_conv_pos_embedding_groups=4)
    if model_type == "hubert":
        model = transformers.HubertModel(transformers.HubertConfig(**small))
    else:
        model = transformers.WavLMModel(transformers.WavLMConfig(**small))
    model.save_pretrained(tmp_path / model_type)
    capsys.readouterr()  # transformers' own progress lines while saving
    out = tmp_path / "model.onnx"
    assert main(["convert", str(tmp_path / model_type), str(out)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and model_type in lines[0] and "wav2vec" in lines[0], lines
    assert not out.exists()
