"""Pretrained audio encoders as frontends: each clip becomes the mean (and spread) of an encoder's embeddings.

Models trained from scratch on a few training voices learn those voices; an encoder trained on thousands of
speakers or words carries what generalises, and a small head on top of it learns the task. The weights come inside
PyPI wheels (no hub needed): `speaker` is the GE2E speaker encoder in `resemblyzer`, `words` the ResNet-50 keyword
embedding in `efficientword-net` (run with onnxruntime), and `hf:<hub id or folder>` any audio model transformers can
load. A new encoder is one function in ENCODERS that returns an `Encoder`, and its name in
competition.config.ENCODER_KINDS (which checks configs before torch is imported).

Embeddings are computed once: EncoderFrontend keys each clip by the encoder's identity (name, package version,
weights hash) and the exact samples it is given (so the view, the crop and the data are all in the key), and keeps
them in an EmbeddingStore on disk that every fold, tuning trial and predict run on this machine shares.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import math
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import librosa
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from competition.config import check_encoder_name, check_trainable
from competition.errors import UserError
from competition.files import atomic_write, file_sha256


@dataclass
class Encoder:
    """A loaded encoder: `frames(waves)` turns clips (float32 samples at `sample_rate`) into their sequences of
    embeddings, (frames, dim) each; `identity` says exactly which weights made them (recorded with every fold)."""

    name: str
    sample_rate: int
    frames: Callable[[list[np.ndarray]], list[np.ndarray]]
    identity: dict

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()[:16]


def package_file(package: str, distribution: str, relative: str) -> tuple[Path, dict]:
    """A file shipped inside an installed package, found without importing the package (some import optional
    dependencies that do not build everywhere), and the identity of its weights."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"frontend.encoder needs the '{distribution}' package: pip install --no-deps "
                        f"{distribution} (or pip install -r requirements-encoders.txt)")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise UserError(f"{path} is missing from the installed '{distribution}'; reinstall it: "
                        f"pip install --force-reinstall --no-deps {distribution}")
    version = importlib.metadata.version(distribution)
    return path, {"package": distribution, "version": version, "weights_sha256": _weights_sha256(path)}


@functools.lru_cache(maxsize=None)
def _weights_sha256(path: Path) -> str:
    return file_sha256(path)


class GE2E(torch.nn.Module):
    """The generalised end-to-end speaker encoder (Wan et al., 2018) as resemblyzer ships it: three LSTM layers over
    40 mel bands of 1.6 s of speech, a linear layer and ReLU, L2-normalised."""

    def __init__(self, bands: int = 40, hidden: int = 256, layers: int = 3, dim: int = 256) -> None:
        super().__init__()
        self.lstm = torch.nn.LSTM(bands, hidden, layers, batch_first=True)
        self.linear = torch.nn.Linear(hidden, dim)

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        _, (hidden, _) = self.lstm(mels)
        embedding = torch.relu(self.linear(hidden[-1]))
        return embedding / embedding.norm(dim=1, keepdim=True).clamp_min(1e-12)


class SpeakerWindows(torch.nn.Module):
    """resemblyzer's GE2E over a clip's windows, in torch from the samples on (so it can be fine-tuned): one
    embedding per 1.6 s window, windows 1/1.3 s apart (its own embed_utterance slicing), on the clip's power mel
    (25 ms windows, 10 ms hop, librosa's 40-band filterbank) after raising quiet clips to -30 dBFS."""

    rate, hop, window = 16000, 160, 160  # 10 ms frames, 160-frame (1.6 s) windows

    def __init__(self, ge2e: GE2E) -> None:
        super().__init__()
        self.ge2e = ge2e
        self.step = round(self.rate / 1.3 / self.hop)
        mel = librosa.filters.mel(sr=self.rate, n_fft=400, n_mels=40)
        self.register_buffer("mel", torch.from_numpy(mel), persistent=False)
        self.register_buffer("stft_window", torch.hann_window(400, periodic=True), persistent=False)

    def windows(self, wave: torch.Tensor) -> torch.Tensor:
        """A clip's (windows, 160, 40) mel windows, as librosa.feature.melspectrogram(n_fft=400, hop_length=160,
        n_mels=40) cut them."""
        rms = float(wave.detach().double().square().mean().sqrt()) if len(wave) else 0.0
        if 0 < rms < 10 ** (-30 / 20):
            wave = wave * (10 ** (-30 / 20) / rms)
        count = math.ceil((len(wave) + 1) / self.hop)
        starts = list(range(0, max(1, count - self.window + self.step + 1), self.step))
        if len(starts) > 1 and (len(wave) - starts[-1] * self.hop) / (self.window * self.hop) < 0.75:
            starts = starts[:-1]  # a last window mostly past the clip's end
        wave = F.pad(wave, (0, max(0, (starts[-1] + self.window) * self.hop - len(wave))))
        spec = torch.stft(wave, 400, self.hop, window=self.stft_window, center=True, pad_mode="constant",
                          return_complex=True)
        mel = (self.mel @ (spec.real.square() + spec.imag.square())).T
        return torch.stack([mel[start:start + self.window] for start in starts])

    def forward(self, waves: list[torch.Tensor]) -> list[torch.Tensor]:
        """Every clip's window embeddings, (windows, 256) each, from one batch through the LSTM."""
        mels = [self.windows(wave.float()) for wave in waves]
        return list(torch.split(self.ge2e(torch.cat(mels)), [len(m) for m in mels]))


def speaker_windows(pretrained: bool = True) -> tuple[SpeakerWindows, dict]:
    """A fresh GE2E over windows with resemblyzer's weights (or, with pretrained=False, for a fine-tuned fold's own
    weights loaded next: no package needed), and the identity of the shipped weights."""
    model, identity = GE2E(), {"encoder": "speaker"}
    if pretrained:
        path, package = package_file("resemblyzer", "Resemblyzer", "pretrained.pt")
        state = torch.load(path, map_location="cpu", weights_only=True)["model_state"]
        model.load_state_dict({k: v for k, v in state.items() if not k.startswith("similarity")})
        identity.update(package)
    return SpeakerWindows(model), identity


def speaker_encoder(_: str, device: torch.device) -> Encoder:
    """resemblyzer's GE2E speaker encoder, frozen (SpeakerWindows)."""
    module, identity = speaker_windows()
    module = module.to(device).eval()

    @torch.inference_mode()
    def frames(waves: list[np.ndarray]) -> list[np.ndarray]:
        """Every clip's windows through the LSTM in one batch (one call per clip is ten times slower), on one CPU
        thread: its small sequential steps gain nothing from two, and lose 20x when the other core is busy."""
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return [f.cpu().numpy() for f in module([torch.from_numpy(wave).to(device) for wave in waves])]
        finally:
            torch.set_num_threads(threads)

    return Encoder("speaker", SpeakerWindows.rate, frames, identity)


def words_encoder(_: str, device: torch.device) -> Encoder:
    """efficientword-net's ResNet-50 (ArcFace-trained on spoken words in many languages): one 2048-dim embedding per
    1.5 s window of 64 log filterbank energies, windows half a window apart; shorter clips are centred in one."""
    path, identity = package_file("eff_word_net", "efficientword-net", "models/resnet_50_arc/slim_93%_accuracy_72.7390%.onnx")
    try:
        import onnxruntime
        from eff_word_net.audio_utils import logfbank
    except ImportError as exc:
        raise UserError(f"frontend.encoder=words needs onnxruntime: pip install onnxruntime ({exc})") from None
    providers = ["CUDAExecutionProvider"] if device.type == "cuda" else []
    available = set(onnxruntime.get_available_providers())
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS", 0) or 0)
    session = onnxruntime.InferenceSession(str(path), options, providers=[p for p in providers if p in available]
                                           + ["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    rate, length = 16000, 24000

    def clip_frames(wave: np.ndarray) -> np.ndarray:
        if len(wave) <= length:
            front = (length - len(wave)) // 2
            windows = [np.pad(wave, (front, length - len(wave) - front))]
        else:
            starts = list(range(0, len(wave) - length, length // 2)) + [len(wave) - length]
            windows = [wave[start:start + length] for start in starts]
        out = []
        for window in windows:
            features = logfbank(window, samplerate=rate, winlen=0.025, winstep=0.01, nfilt=64, nfft=512, preemph=0.0)
            out.append(session.run(None, {name: features[None, None].astype(np.float32)})[0][0])
        return np.stack(out)

    def frames(waves: list[np.ndarray]) -> list[np.ndarray]:  # the exported graph takes one window at a time
        return [clip_frames(wave) for wave in waves]

    return Encoder("words", rate, frames, {"encoder": "words", **identity})


def _local_folder(source: str) -> Path | None:
    """The folder an `hf:` source names, or None for a hub id."""
    folder = Path(source).expanduser()
    return folder if folder.is_dir() else None


def _load_transformers(source: str, pretrained: bool = True) -> tuple[Any, torch.nn.Module]:
    """(feature extractor, model) of a transformers audio model by hub id or local folder; with pretrained=False the
    architecture only (its config), for a fine-tuned fold's own weights loaded next. A folder is read offline; a hub
    id is fetched only because the user named it, and an unreachable hub is one line saying how to use a local copy."""
    try:
        from transformers import AutoConfig, AutoFeatureExtractor, AutoModel
    except ImportError:
        raise UserError("frontend.encoder=hf:... needs transformers: pip install transformers") from None
    folder = _local_folder(source)
    local = folder is not None
    where = str(folder) if local else source
    try:
        extractor = AutoFeatureExtractor.from_pretrained(where, local_files_only=local)
        model = (AutoModel.from_pretrained(where, local_files_only=local) if pretrained
                 else AutoModel.from_config(AutoConfig.from_pretrained(where, local_files_only=local)))
    except (OSError, ValueError) as exc:
        hint = ("is it a folder saved with save_pretrained (config.json, weights, preprocessor_config.json)?" if local
                else "on a machine without internet, save it elsewhere with save_pretrained and give that folder: "
                     "frontend.encoder=hf:/path/to/folder")
        raise UserError(f"frontend.encoder=hf:{source}: cannot load it ({str(exc).splitlines()[0][:160]}); {hint}") \
            from None
    return extractor, model


def transformers_encoder(source: str, device: torch.device, layer: int = -1) -> Encoder:
    """Any transformers audio model (wav2vec2, HuBERT, WavLM, AST ...) by hub id or local folder: the frames of one
    hidden layer (`frontend.layer`, -1 the last)."""
    extractor, model = _load_transformers(source)
    model = model.to(device).eval()
    folder = _local_folder(source)
    local = folder is not None
    weights = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")) if local else []
    identity = {"encoder": f"hf:{folder.resolve() if local else source}", "layer": layer,
                "package": "transformers", "version": importlib.metadata.version("transformers"),
                "weights_sha256": hashlib.sha256("".join(_weights_sha256(w) for w in weights).encode()).hexdigest()
                if local else getattr(model.config, "_commit_hash", None) or "unknown"}
    rate = int(extractor.sampling_rate)

    @torch.inference_mode()
    def frames(waves: list[np.ndarray]) -> list[np.ndarray]:  # one clip at a time: no padding to mask
        out = []
        for wave in waves:
            inputs = extractor(wave, sampling_rate=rate, return_tensors="pt")
            hidden = model(**{k: v.to(device) for k, v in inputs.items()}, output_hidden_states=True).hidden_states
            out.append(hidden[layer][0].float().cpu().numpy())
        return out

    return Encoder(identity["encoder"], rate, frames, identity)


class TransformersFrames(torch.nn.Module):
    """A transformers model that takes raw samples (wav2vec2, HuBERT, WavLM), differentiably: each clip normalised as
    its feature extractor does (zero mean and unit variance, where it does), then the frames of one hidden layer."""

    def __init__(self, model: torch.nn.Module, layer: int, normalize: bool, rate: int) -> None:
        super().__init__()
        self.model, self.layer, self.normalize, self.rate = model, layer, normalize, rate

    def forward(self, waves: list[torch.Tensor]) -> list[torch.Tensor]:  # one clip at a time: no padding to mask
        out = []
        for wave in waves:
            x = wave.float()
            if self.normalize:
                x = (x - x.mean()) / (x.var(unbiased=False) + 1e-7).sqrt()
            x = F.pad(x, (0, max(0, self.rate // 10 - len(x))))  # a silent clip's 160 samples are too few to convolve
            out.append(self.model(input_values=x[None], output_hidden_states=True).hidden_states[self.layer][0])
        return out


def transformers_frames(source: str, layer: int, pretrained: bool = True) -> TransformersFrames:
    """A fresh, trainable copy of a transformers model that reads raw samples; one whose feature extractor computes
    spectrogram features first (AST, Whisper) is refused, since that step is not differentiable here."""
    extractor, model = _load_transformers(source, pretrained)
    if list(getattr(extractor, "model_input_names", []))[:1] != ["input_values"] or \
            getattr(extractor, "feature_size", 1) != 1:
        raise UserError(f"frontend.trainable: hf:{source} reads {type(extractor).__name__} features, not raw samples; "
                        "fine-tune a model that reads the waveform (wav2vec2, HuBERT, WavLM), or set "
                        "frontend.trainable=false")
    return TransformersFrames(model, layer, bool(getattr(extractor, "do_normalize", False)),
                              int(extractor.sampling_rate))


ENCODERS: dict[str, Callable[..., Encoder]] = {"speaker": speaker_encoder, "words": words_encoder,
                                               "hf": transformers_encoder}
# The encoders that frontend.trainable fine-tunes: (encoder source, frontend.layer, pretrained) -> a fresh torch
# module from clips (a list of 1-D sample tensors) to their frames, (frames, dim) each, and the rate it reads.
TRAINABLE: dict[str, Callable[[str, int, bool], torch.nn.Module]] = {
    "speaker": lambda _, __, pretrained: speaker_windows(pretrained)[0],
    "hf": transformers_frames,
}


@functools.lru_cache(maxsize=8)
def load_encoder(name: str, layer: int, device: str) -> Encoder:
    """The named encoder, loaded once per process (every fold's frontend shares it)."""
    check_encoder_name(name)
    kind, _, source = name.partition(":")
    if kind == "hf":
        return transformers_encoder(source, torch.device(device), layer)
    return ENCODERS[kind](source, torch.device(device))


class EmbeddingStore:
    """Each clip's pooled embeddings (mean and spread over the encoder's frames, float16) in shard files under one
    folder per encoder identity. Writers add whole shards under unique names (atomic renames), so processes sharing
    the folder never see half a shard, and a clip computed by one fold is found by the next."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.seen: set[str] = set()
        self.vectors: dict[str, np.ndarray] = {}

    def _read_new_shards(self) -> None:
        if not self.folder.is_dir():
            return
        for shard in sorted(self.folder.glob("*.npz")):
            if shard.name in self.seen:
                continue
            with np.load(shard, allow_pickle=False) as data:
                self.vectors.update(zip(data["keys"].tolist(), data["values"]))
            self.seen.add(shard.name)

    def get(self, keys: list[str]) -> list[np.ndarray | None]:
        if any(key not in self.vectors for key in keys):
            self._read_new_shards()
        return [self.vectors.get(key) for key in keys]

    def put(self, keys: list[str], values: np.ndarray) -> None:
        name = f"{uuid.uuid4().hex}.npz"
        stored = values.astype(np.float16)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                np.savez(handle, keys=np.array(keys), values=stored)

        atomic_write(self.folder / name, write)
        self.seen.add(name)
        self.vectors.update(zip(keys, stored))


def embeddings_root(cfg: DictConfig) -> Path:
    from competition.cache import default_cache_dir
    return (Path(cfg.data.cache_dir).expanduser() if cfg.data.cache_dir else default_cache_dir()) / "embeddings"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[-40:]


class EncoderFrontend(torch.nn.Module):
    """Waveforms (batch, samples) -> pooled encoder embeddings (batch, 1, dim, 1), the shape ClipStats gives, so the
    stats_linear and mlp_head models take either. `pool`: `mean` of the encoder's frames, or `meanstd` (mean and
    spread). Each row is first stripped of the silent padding the waveform cache adds (so a clip's embedding does not
    depend on where a random crop put it), then looked up in the store. The encoder's identity travels in the
    state dict (model.pt, bundles) and is checked when a fold is loaded."""

    def __init__(self, name: str, pool: str, layer: int, sample_rate: int, store_root: Path) -> None:
        super().__init__()
        check_encoder_name(name)
        self.name, self.pool, self.layer, self.sample_rate, self.store_root = name, pool, layer, sample_rate, store_root
        self.register_buffer("anchor", torch.zeros(0), persistent=False)  # follows .to(device)
        self._store: EmbeddingStore | None = None

    @classmethod
    def from_config(cls, cfg: DictConfig) -> "EncoderFrontend":
        f = cfg.frontend
        return cls(f.encoder, f.pool, f.layer, cfg.audio.sample_rate, embeddings_root(cfg))

    @property
    def encoder(self) -> Encoder:
        device = self.anchor.device
        return load_encoder(self.name, self.layer, "cuda" if device.type == "cuda" else "cpu")

    @property
    def store(self) -> EmbeddingStore:
        if self._store is None:
            encoder = self.encoder
            self._store = EmbeddingStore(self.store_root / f"{_slug(encoder.name)}-{encoder.key}")
        return self._store

    def get_extra_state(self) -> torch.Tensor:
        """The encoder's identity as JSON bytes in a tensor: it travels in model.pt and in bundles' safetensors."""
        return torch.tensor(list(json.dumps(self.encoder.identity, sort_keys=True).encode()), dtype=torch.uint8)

    def set_extra_state(self, state: torch.Tensor) -> None:
        """A fold trained on other weights than the installed ones would predict from features it never saw."""
        recorded = json.loads(bytes(state.tolist()).decode())
        here = self.encoder.identity
        if recorded != here:
            want = f"{recorded.get('package')}=={recorded.get('version')}"
            raise UserError(f"frontend.encoder={self.name}: the model was trained with {want} (weights sha256 "
                            f"{str(recorded.get('weights_sha256'))[:12]}), but this machine has "
                            f"{here.get('package')}=={here.get('version')} (weights sha256 "
                            f"{str(here.get('weights_sha256'))[:12]}); pip install --no-deps {want}, or retrain")

    def clip_key(self, samples: np.ndarray) -> str:
        return hashlib.sha256(str(self.sample_rate).encode() + samples.tobytes()).hexdigest()

    def embed(self, clips: list[np.ndarray]) -> np.ndarray:
        """The clips' (clips, 2, dim) mean and spread of their encoder frames."""
        encoder = self.encoder
        if encoder.sample_rate != self.sample_rate:
            clips = [librosa.resample(c, orig_sr=self.sample_rate, target_sr=encoder.sample_rate) for c in clips]
        return np.stack([np.stack([f.mean(0), f.std(0)]) for f in encoder.frames([c.astype(np.float32) for c in clips])])

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        clips = [strip_padding(row) for row in wave.detach().float().cpu().numpy()]
        keys = [self.clip_key(clip) for clip in clips]
        vectors = self.store.get(keys)
        missing = [i for i, vector in enumerate(vectors) if vector is None]
        if missing:
            computed = self.embed([clips[i] for i in missing]).astype(np.float16)  # as stored
            self.store.put([keys[i] for i in missing], computed)
            for i, vector in zip(missing, computed):
                vectors[i] = vector
        stacked = torch.from_numpy(np.stack(vectors).astype(np.float32))
        features = stacked[:, 0] if self.pool == "mean" else stacked.flatten(1)
        return features.to(wave.device)[:, None, :, None]


def sounding_span(samples: np.ndarray, shortest: int = 160) -> slice:
    """Where the clip is, without the exact zeros padded before and after it (at least `shortest` samples, for
    silence)."""
    sounding = np.flatnonzero(samples)
    if len(sounding) == 0:
        return slice(0, shortest)
    return slice(sounding[0], max(sounding[-1] + 1, sounding[0] + shortest))


def strip_padding(samples: np.ndarray, shortest: int = 160) -> np.ndarray:
    """The clip without the padding the waveform cache added (sounding_span)."""
    return samples[sounding_span(samples, shortest)]


class EncoderClassifier(torch.nn.Module):
    """frontend.trainable: the encoder and the head as one model, fine-tuned end to end. It takes the waveforms (the
    Waveforms frontend passes them through), strips each clip's padding as EncoderFrontend does, pools the
    encoder's frames (mean, or mean and spread) and gives the head the (batch, 1, dim, 1) vectors the frozen path
    gives it. As part of the model, the encoder's weights go wherever a fold's weights go: the optimiser (at
    frontend.lr_scale times train.lr), EMA, SWA, resume, model.pt and bundles; augmentation of the waveforms reaches
    the encoder. Nothing is cached: the embeddings change with every step."""

    def __init__(self, frames: torch.nn.Module, pool: str, head: torch.nn.Module) -> None:
        super().__init__()
        self.frames, self.pool, self.head = frames, pool, head

    @classmethod
    def from_config(cls, cfg: DictConfig, head: torch.nn.Module, pretrained: bool = True) -> "EncoderClassifier":
        """The configured encoder, fresh (its shipped weights, or with pretrained=False the architecture only, for a
        trained fold's own weights), under `head`."""
        f = cfg.frontend
        check_trainable(f.encoder)
        if hasattr(head, "fit"):
            raise UserError(f"frontend.trainable fine-tunes the encoder over epochs, but model.name={cfg.model.name} is "
                            "fitted exactly in one go; use model.name=embedding_mlp")
        kind, _, source = f.encoder.partition(":")
        frames = TRAINABLE[kind](source, f.layer, pretrained)
        if frames.rate != cfg.audio.sample_rate:
            raise UserError(f"frontend.trainable: frontend.encoder={f.encoder} reads {frames.rate} Hz audio, but "
                            f"audio.sample_rate is {cfg.audio.sample_rate}; set audio.sample_rate={frames.rate}")
        return cls(frames, f.pool, head)

    def parameter_groups(self, lr: float, encoder_scale: float) -> list[dict]:
        """The optimiser's groups: the pretrained encoder learns at `encoder_scale` times the head's rate, so the
        fresh head's first large steps do not wash out what the encoder knows."""
        return [{"params": list(self.head.parameters()), "lr": lr},
                {"params": list(self.frames.parameters()), "lr": lr * encoder_scale}]

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        spans = [sounding_span(row) for row in (wave.detach() != 0).cpu().numpy()]
        pooled = []
        for frames in self.frames([row[span] for row, span in zip(wave, spans)]):
            frames = frames.float()
            pooled.append(frames.mean(0) if self.pool == "mean"
                          else torch.cat([frames.mean(0), frames.std(0, unbiased=False)]))
        return self.head(torch.stack(pooled)[:, None, :, None])


def fine_tuned(cfg: DictConfig) -> bool:
    """Whether the configured encoder is fine-tuned: then the model takes the waveforms (EncoderClassifier) and the
    frontend passes them through; the two must agree, so both ask here. `get`: folds saved before the key existed."""
    return cfg.frontend.kind == "encoder" and bool(cfg.frontend.get("trainable", False))
