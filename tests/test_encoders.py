"""Pretrained encoders as frontends: the real encoders shipped in wheels, a transformers model saved to disk, the
embedding store, and experiments on them trained, packed and predicted, on the tones contest."""
from __future__ import annotations

import json
from pathlib import Path

import librosa
import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from competition import blend, bundle, encoders, pack, predict
from competition.config import BUNDLE_ENCODERS, ENCODER_KINDS, TRAINABLE_ENCODERS, load_experiment
from competition.encoders import (EmbeddingStore, EncoderClassifier, EncoderFrontend, load_encoder, speaker_windows,
                                  strip_padding)
from competition.errors import UserError
from competition.train import load_fold_model, train_fold
from conftest import error_line, run_verb as cli, train_every_fold, write_tones_data, write_tones_experiment

ENCODER = {"frontend": {"kind": "encoder", "encoder": "speaker"}, "model": {"name": "embedding_linear"},
           "audio": {"duration": 1.0}, "train": {"weight_decay": 0.003}}


def voice_like(rate: int, seconds: float, pitch: float, seed: int) -> np.ndarray:
    """A buzz with harmonics and a wandering pitch: enough like a voice for the speaker encoder to embed."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    f0 = pitch * (1 + 0.05 * np.sin(2 * np.pi * 3 * t))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    wave = sum(np.sin(k * phase) / k for k in range(1, 12)) + 0.01 * rng.standard_normal(len(t))
    return (0.3 * wave / np.abs(wave).max()).astype(np.float32)


def test_the_speaker_encoder_gives_one_unit_embedding_per_window_and_names_its_weights() -> None:
    encoder = load_encoder("speaker", -1, "cpu")
    short, long = encoder.frames([voice_like(16000, 1.0, 120, 0), voice_like(16000, 4.0, 120, 0)])
    assert short.shape == (1, 256) and long.shape[0] > 3 and long.shape[1] == 256
    assert np.allclose(np.linalg.norm(long, axis=1), 1.0, atol=1e-5)
    identity = encoder.identity
    assert identity["package"] == "Resemblyzer" and len(identity["weights_sha256"]) == 64
    low, high, again = (f.mean(0) for f in encoder.frames([voice_like(16000, 2.0, 100, 1),
                                                            voice_like(16000, 2.0, 240, 1),
                                                            voice_like(16000, 2.0, 100, 2)]))
    assert np.dot(low, again) > np.dot(low, high)  # a voice is nearer itself than a voice an octave up


def test_the_keyword_encoder_embeds_each_window_of_a_clip() -> None:
    encoder = load_encoder("words", -1, "cpu")
    assert encoder.identity["package"] == "efficientword-net"
    one, three = encoder.frames([voice_like(16000, 1.0, 150, 0), voice_like(16000, 3.0, 150, 0)])
    assert one.shape == (1, 2048) and three.shape == (3, 2048) and np.isfinite(three).all()


@pytest.fixture(scope="module")
def tiny_w2v(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small randomly initialised wav2vec2 saved as a user saves a hub model for offline use."""
    import transformers

    folder = tmp_path_factory.mktemp("models") / "w2v"
    config = transformers.Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=64, conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8),
                                         num_feat_extract_layers=2, num_conv_pos_embeddings=16,
                                         num_conv_pos_embedding_groups=2)
    torch.manual_seed(0)
    transformers.Wav2Vec2Model(config).save_pretrained(folder)
    transformers.Wav2Vec2FeatureExtractor(sampling_rate=16000).save_pretrained(folder)
    return folder


def test_a_transformers_model_is_read_from_a_folder_offline(tiny_w2v: Path, tmp_path: Path) -> None:
    last = load_encoder(f"hf:{tiny_w2v}", -1, "cpu")
    first = load_encoder(f"hf:{tiny_w2v}", 1, "cpu")
    wave = voice_like(16000, 1.0, 150, 0)
    frames = last.frames([wave])[0]
    assert frames.shape[1] == 32 and 40 < frames.shape[0] < 900  # one frame per 20 samples of the 16,000
    assert not np.allclose(frames, first.frames([wave])[0])  # the layer picked is the layer used
    assert last.identity["weights_sha256"] != "unknown" and last.identity["layer"] == -1
    with pytest.raises(UserError, match="save_pretrained"):
        load_encoder(f"hf:{tmp_path}", -1, "cpu")  # a folder that holds no model


def test_unknown_encoders_and_missing_packages_are_one_line(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(UserError, match="use one of speaker, words or hf:"):
        load_encoder("speakr", -1, "cpu")
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "resemblyzer" else real(name, *a))
    load_encoder.cache_clear()
    with pytest.raises(UserError, match="pip install --no-deps Resemblyzer"):
        load_encoder("speaker", -1, "cpu")
    load_encoder.cache_clear()


def test_the_frontend_strips_padding_and_computes_each_clip_once(tmp_path: Path) -> None:
    frontend = EncoderFrontend("speaker", "meanstd", -1, 8000, tmp_path / "store")
    clip = voice_like(8000, 0.6, 130, 3)
    early, late = np.zeros((2, 8000), np.float32), np.zeros((1, 8000), np.float32)
    early[0, 100:100 + len(clip)] = clip
    early[1, :len(clip)] = voice_like(8000, 0.6, 220, 4)
    late[0, 8000 - len(clip):] = clip
    first = frontend(torch.from_numpy(early))
    assert first.shape == (2, 1, 512, 1)
    shards = sorted((tmp_path / "store").rglob("*.npz"))
    assert len(shards) == 1
    assert torch.allclose(frontend(torch.from_numpy(late))[0], first[0])  # same samples wherever the crop put them
    assert sorted((tmp_path / "store").rglob("*.npz")) == shards  # and nothing new was computed
    fresh = EncoderFrontend("speaker", "mean", -1, 8000, tmp_path / "store")  # another process, same store
    assert torch.allclose(fresh(torch.from_numpy(early))[:, 0, :, 0], first[:, 0, :256, 0])
    assert sorted((tmp_path / "store").rglob("*.npz")) == shards
    assert len(strip_padding(np.zeros(500, np.float32))) == 160  # silence still gives the encoder something


def test_concurrent_writers_never_show_half_a_shard(tmp_path: Path) -> None:
    one, two = EmbeddingStore(tmp_path), EmbeddingStore(tmp_path)
    one.put(["a", "b"], np.ones((2, 2, 4), np.float32))
    two.put(["c"], np.zeros((1, 2, 4), np.float32))
    assert [v is not None for v in one.get(["a", "c", "z"])] == [True, True, False]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left behind


@pytest.fixture(scope="module")
def encoded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tones contest with every fold of an encoder experiment trained."""
    root = tmp_path_factory.mktemp("encoded")
    write_tones_data(root)
    write_tones_experiment(root, "enc", **ENCODER)
    train_every_fold(root, "enc")
    return root


def test_an_encoder_experiment_learns_and_a_second_head_reuses_the_embeddings(encoded: Path, monkeypatch) -> None:
    monkeypatch.chdir(encoded)
    summaries = [json.loads((encoded / "experiments" / "enc" / f"fold_{k}" / "DONE").read_text()) for k in range(3)]
    assert min(s["val_accuracy"] for s in summaries) >= 0.9
    store = encoded / "cache" / "embeddings"
    shards = sorted(store.rglob("*.npz"))
    write_tones_experiment(encoded, "mlp", **{**ENCODER, "model": {"name": "embedding_mlp"},
                                              "train": {"epochs": 3, "lr": 0.01}})
    exp = load_experiment("mlp")
    summary = train_fold(exp, 0, "cpu")
    assert summary["val_accuracy"] >= 0.8
    assert sorted(store.rglob("*.npz")) == shards  # another head, another fold: no clip embedded again


def test_an_encoder_bundle_predicts_like_the_folds_and_names_its_weights(encoded: Path, tmp_path: Path, capsys,
                                                                          monkeypatch) -> None:
    monkeypatch.chdir(encoded)
    code, _, err = cli(capsys, blend, "exps=enc", "method=soft", "name=enc")
    assert code == 0, err
    code, _, err = cli(capsys, pack, "exps=enc", f"out={tmp_path / 'bundle.zip'}", "method=soft")
    assert code == 0, err
    code, _, err = cli(capsys, predict, f"bundle={tmp_path / 'bundle.zip'}", "test=data/test", "name=later")
    assert code == 0, err
    answers = [pd.read_csv(encoded / "submissions" / f"{name}.csv") for name in ("enc", "later-soft")]
    assert answers[0].equals(answers[1])


def test_a_bundle_may_name_only_the_encoders_shipped_in_wheels(encoded: Path, tmp_path: Path, tiny_w2v: Path, capsys,
                                                                monkeypatch) -> None:
    monkeypatch.chdir(encoded)
    code, _, err = cli(capsys, pack, "exps=enc", f"out={tmp_path / 'bundle'}", "method=soft")
    assert code == 0, err
    manifest_path = tmp_path / "bundle" / bundle.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["models"][0]["config"]["frontend"]["encoder"] = f"hf:{tiny_w2v}"
    manifest_path.write_text(json.dumps(manifest))
    code, _, err = cli(capsys, predict, f"bundle={tmp_path / 'bundle'}", "test=data/test", "name=sneaky")
    assert code == 2 and "manifest.json models[0].config.frontend.encoder" in error_line(err), err
    assert not (encoded / "predictions" / "sneaky").exists()
    write_tones_experiment(encoded, "w2v", **{**ENCODER, "frontend": {"kind": "encoder", "encoder": f"hf:{tiny_w2v}"}})
    assert train_fold(load_experiment("w2v"), 0, "cpu")["n_train"] > 0  # a transformers encoder trains a fold
    code, _, err = cli(capsys, pack, "exps=w2v", f"out={tmp_path / 'w2v.zip'}", "missing=skip")
    assert code == 2 and "a bundle cannot carry yet" in error_line(err) and "speaker, words" in err


def test_a_fold_trained_on_other_encoder_weights_is_refused_with_the_install_command(encoded: Path,
                                                                                     tmp_path: Path) -> None:
    fold = encoded / "experiments" / "enc" / "fold_0"
    checkpoint = torch.load(fold / "model.pt", weights_only=True)
    identity = json.loads(bytes(checkpoint["frontend"]["_extra_state"].tolist()).decode())
    identity["version"] = "0.0.1"
    checkpoint["frontend"]["_extra_state"] = torch.tensor(list(json.dumps(identity).encode()), dtype=torch.uint8)
    torch.save(checkpoint, tmp_path / "model.pt")
    cfg = OmegaConf.load(fold / "config.yaml")
    load_fold_model(fold / "model.pt", cfg, torch.device("cpu"))  # the real one loads
    with pytest.raises(UserError, match=r"trained with Resemblyzer==0\.0\.1 .*pip install --no-deps Resemblyzer==0\.0\.1"):
        load_fold_model(tmp_path / "model.pt", cfg, torch.device("cpu"))


def test_config_refuses_an_unknown_encoder_in_one_line(tones: Path, capsys) -> None:
    from competition import run
    write_tones_experiment(tones, "bad", frontend={"kind": "encoder", "encoder": "wav2vec"},
                           model={"name": "embedding_linear"})
    code, _, err = cli(capsys, run, "exp=bad", "fold=0")
    assert code != 0
    assert "frontend.encoder" in error_line(err) and "wav2vec" in error_line(err)


def test_the_speaker_encoders_torch_windows_are_librosas_mel_windows() -> None:
    """The fine-tunable path computes resemblyzer's input itself: the same power mel as librosa, cut into the same
    1.6 s windows 77 frames (1/1.3 s) apart."""
    wave = voice_like(16000, 3.0, 130, 0)
    windows = speaker_windows(pretrained=False)[0].windows(torch.from_numpy(wave)).numpy()
    mel = librosa.feature.melspectrogram(y=wave, sr=16000, n_fft=400, hop_length=160, n_mels=40).T
    assert windows.shape == (3, 160, 40)
    for window, start in zip(windows[:2], (0, 77)):  # the third runs into the padding past the clip's end
        assert np.allclose(window, mel[start:start + 160], rtol=1e-4, atol=1e-6)


TRAINABLE = {**ENCODER, "audio": {"sample_rate": 16000, "duration": 0.75},
             "frontend": {"kind": "encoder", "encoder": "speaker", "trainable": True, "lr_scale": 0.1},
             "model": {"name": "embedding_mlp"}, "train": {"epochs": 2, "lr": 0.01, "batch_size": 8}}


def test_before_a_step_the_fine_tunable_encoder_embeds_as_the_frozen_frontend_does(tmp_path: Path) -> None:
    cfg = OmegaConf.create({"frontend": {**TRAINABLE["frontend"], "pool": "meanstd", "layer": -1},
                            "audio": TRAINABLE["audio"], "model": {"name": "embedding_mlp"}})
    tuned = EncoderClassifier.from_config(cfg, torch.nn.Flatten())
    frozen = EncoderFrontend("speaker", "meanstd", -1, 16000, tmp_path / "store")
    waves = np.zeros((2, 16000), np.float32)
    waves[0, 3000:3000 + 9600] = voice_like(16000, 0.6, 130, 3)
    waves[1, :12000] = voice_like(16000, 0.75, 220, 4)
    with torch.no_grad():
        assert torch.allclose(tuned(torch.from_numpy(waves)), frozen(torch.from_numpy(waves)).flatten(1), atol=2e-3)


def test_a_fine_tuned_encoder_trains_end_to_end_and_travels_in_its_folds_weights(encoded: Path, tmp_path: Path,
                                                                                  capsys, monkeypatch) -> None:
    monkeypatch.chdir(encoded)
    store = sorted((encoded / "cache" / "embeddings").rglob("*.npz"))
    write_tones_experiment(encoded, "tuned", **TRAINABLE)
    summary = train_fold(load_experiment("tuned"), 0, "cpu")
    assert summary["val_accuracy"] >= 0.8
    assert sorted((encoded / "cache" / "embeddings").rglob("*.npz")) == store  # nothing cached: weights move
    weights = torch.load(encoded / "experiments" / "tuned" / "fold_0" / "model.pt", weights_only=True)["model"]
    shipped = speaker_windows()[0].state_dict()
    assert shipped.keys() == {k.removeprefix("frames.") for k in weights if k.startswith("frames.")}
    assert not torch.equal(weights["frames.ge2e.lstm.weight_hh_l0"], shipped["ge2e.lstm.weight_hh_l0"])
    code, _, err = cli(capsys, pack, "exps=tuned", f"out={tmp_path / 'tuned.zip'}", "missing=skip", "method=soft")
    assert code == 0, err
    import importlib.util
    real = importlib.util.find_spec  # the fold's own weights are in the bundle: the wheel is not needed to predict
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "resemblyzer" else real(name, *a))
    code, _, err = cli(capsys, predict, f"bundle={tmp_path / 'tuned.zip'}", "test=data/test", "name=tuned")
    assert code == 0, err
    answers = pd.read_csv(encoded / "submissions" / "tuned-soft.csv")
    test = pd.read_csv(encoded / "experiments" / "tuned" / "fold_0" / "test.csv")
    assert list(answers.iloc[:, 1]) == list(test[summary["classes"]].idxmax(axis=1).loc[answers.index])


def test_a_transformers_encoder_is_fine_tuned_from_its_folder(encoded: Path, tiny_w2v: Path, monkeypatch) -> None:
    monkeypatch.chdir(encoded)
    write_tones_experiment(encoded, "w2v_tuned", **{**TRAINABLE, "frontend": {**TRAINABLE["frontend"],
                                                                              "encoder": f"hf:{tiny_w2v}"},
                                                    "train": {**TRAINABLE["train"], "epochs": 1}})
    import transformers

    train_fold(load_experiment("w2v_tuned"), 0, "cpu")
    weights = torch.load(encoded / "experiments" / "w2v_tuned" / "fold_0" / "model.pt", weights_only=True)["model"]
    start = transformers.Wav2Vec2Model.from_pretrained(tiny_w2v).state_dict()
    key = "encoder.layers.0.attention.q_proj.weight"
    assert not torch.equal(weights[f"frames.model.{key}"], start[key])


@pytest.mark.parametrize("sections, key, words", [
    ({"frontend": {"kind": "encoder", "encoder": "words", "trainable": True}}, "frontend.encoder", "ONNX"),
    ({"frontend": {"kind": "logmel", "trainable": True}}, "frontend.trainable", "frontend.kind=encoder"),
    ({"frontend": {"kind": "encoder", "trainable": True, "lr_scale": 0}}, "frontend.lr_scale", "above 0"),
    ({**TRAINABLE, "model": {"name": "embedding_linear"}}, "embedding_linear", "embedding_mlp"),
])
def test_what_cannot_be_fine_tuned_is_one_line(tones: Path, capsys, sections: dict, key: str, words: str) -> None:
    from competition import run
    write_tones_experiment(tones, "bad", **sections)
    code, _, err = cli(capsys, run, "exp=bad", "fold=0")
    assert code != 0
    assert key in error_line(err) and words in error_line(err)


def test_configs_name_exactly_the_registered_encoders() -> None:
    """Configs are checked without torch, against names in competition.config; the loaders are registered in
    competition.encoders under the same names."""
    assert list(encoders.ENCODERS) == list(ENCODER_KINDS)
    assert list(encoders.TRAINABLE) == list(TRAINABLE_ENCODERS)
    assert set(BUNDLE_ENCODERS) <= set(encoders.ENCODERS) - {"hf"}
