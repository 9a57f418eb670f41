"""The built-in demo data: the 30 Speech-Commands words spoken by synthetic voices.

Why: every command, config and test of the toolkit needs a contest to run on, and a real one
cannot be downloaded offline. The demo is synthesised with the espeak-ng library shipped in
the `espeakng-loader` wheel: many "speakers" (an English accent, a male or female voice
variant, a pitch and a speaking rate) each say every word once. The same audio serves two
contests: word classification (`words/`) and speaker gender (`gender/`).

Generation is deterministic: every random choice comes from a numpy Generator seeded with
a fixed seed and the clip's indices, and each speaker is synthesised by a fresh espeak-ng
instance in its own process, because espeak-ng keeps state (pitch flutter phase, filter
memories) from one utterance to the next.

Layout, relied on by the rest of the toolkit::

    <root>/words/train/<word>/<speaker>_nohash_<k>.wav
    <root>/words/test/clip_<6 digits>.wav          order shuffled
    <root>/words/test_answers.csv                   fname,label
    <root>/gender/train/<id>.wav                    ids shuffled, 5 digits
    <root>/gender/train/targets.tsv                 id<TAB>gender, 0 = male, 1 = female
    <root>/gender/test/<id>.wav
    <root>/gender/test_answers.tsv                  id<TAB>gender
    <root>/speakers.csv                             speaker,voice,variant,gender,pitch,rate,split
    <root>/COMPLETE                                 written last
"""

from __future__ import annotations

import ctypes
import fcntl
import multiprocessing
import os
import pathlib
import shutil
import sys
import time
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from competition.errors import UserError

WORDS: tuple[str, ...] = (
    "yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go",
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    "bed", "bird", "cat", "dog", "happy", "house", "marvin", "sheila", "tree", "wow",
)  # fmt: skip
DEMO_VERSION: str = "1"

SAMPLE_RATE = 16000
CLIP_SAMPLES = SAMPLE_RATE  # every clip lasts exactly one second
SEED = 20240917
N_TRAIN_SPEAKERS = 64
N_TEST_SPEAKERS = 12
PROCESSES = 2

# English accents shipped in espeak-ng-data/lang/gmw (en-shaw reads the Shavian alphabet: left out).
ACCENTS = (
    "en", "en-us", "en-us-nyc", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029",
)  # fmt: skip
# Voice variants (espeak-ng-data/voices/!v) that declare their gender; loud or whispering ones left out.
MALE_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "Andy", "Denis", "Lee", "sandro", "travis", "victor")
FEMALE_VARIANTS = (
    "f1", "f2", "f3", "f4", "f5", "Alicia", "Andrea", "Annie", "anika", "belinda", "linda", "steph", "grandma", "aunty",
)  # fmt: skip
# espeakPITCH (0-100, 50 = the variant's own pitch) ranges: male and female f0 overlap a little, as in people.
PITCH_RANGE = {0: (45, 85), 1: (30, 70)}
RATE_RANGE = (140, 200)  # words per minute; slow enough to sound natural, fast enough to fit one second

# espeak-ng's C API constants (speak_lib.h).
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # return an error instead of calling exit() when the data is missing
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE = 1
_PARAM_PITCH = 3
_ESPEAK_RATE = 22050  # what espeak-ng's voices produce
_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

_INSTALL_HINT = "the built-in demo data needs the espeak-ng speech synthesiser: pip install espeakng-loader"


@dataclass(frozen=True)
class Speaker:
    """One synthetic speaker: the espeak-ng settings that make its voice, and its split."""

    name: str
    voice: str
    variant: str
    gender: int  # 0 = male, 1 = female
    pitch: int
    rate: int
    split: str

    @property
    def espeak_voice(self) -> str:
        """The name espeak_SetVoiceByName understands: accent plus voice variant."""
        return f"{self.voice}+{self.variant}"


def demo_root() -> pathlib.Path:
    """Where the demo lives: $COMPETITION_CACHE/demo/<DEMO_VERSION> if the env var is set,
    else ~/.cache/competition/demo/<DEMO_VERSION>; the version in the path keeps old data from being reused."""
    cache = os.environ.get("COMPETITION_CACHE")
    base = pathlib.Path(cache) if cache else pathlib.Path.home() / ".cache" / "competition"
    return base / "demo" / DEMO_VERSION


def ensure_demo(root: pathlib.Path | None = None) -> pathlib.Path:
    """Generate the demo if <root>/COMPLETE is missing and return root.

    Generates into a temporary sibling folder and renames it into place with the COMPLETE
    marker already inside, so an interrupted generation never looks finished. A lock file
    makes a second process wait for the first instead of generating the same data again.
    """
    root = pathlib.Path(root) if root is not None else demo_root()
    if (root / "COMPLETE").exists():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / "COMPLETE").exists():
            return root
        if root.exists() and any(root.iterdir()):
            raise UserError(f"{root} exists but is no complete demo (no COMPLETE file): delete it or choose another")
        _espeak_paths()  # fail with the install hint before announcing anything
        print(f"generating the built-in demo data in {root} (once)...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"  # unique while we hold the lock
        shutil.rmtree(tmp, ignore_errors=True)  # left by a killed run that had our process id
        tmp.mkdir()
        try:
            _write_demo(tmp)
            (tmp / "COMPLETE").write_text(f"{DEMO_VERSION}\n")
            if root.exists():
                root.rmdir()  # an empty folder, checked above
            tmp.rename(root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        print(f"generated the demo data in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    return root


def demo_path(sub: str) -> str:
    """ensure_demo() then return str(root / sub); used as an OmegaConf resolver so configs can say
    ${demo:words/train} and get data without any download."""
    return str(ensure_demo() / sub)


def _speakers() -> list[Speaker]:
    """The fixed speaker table: half male, half female in both splits; accents and variants spread evenly.

    Accents are dealt out to each gender from the same evenly repeated, shuffled list, so only the voice
    (variant and pitch) tells the gender. The last N_TEST_SPEAKERS speakers form the test split.
    """
    rng = np.random.default_rng([SEED, 0])
    n_total = N_TRAIN_SPEAKERS + N_TEST_SPEAKERS
    per_gender = {}
    for gender, variants in ((0, MALE_VARIANTS), (1, FEMALE_VARIANTS)):
        n = n_total // 2
        accents = rng.permutation(np.resize(np.array(ACCENTS), n))
        voices = rng.permutation(np.resize(np.array(variants), n))
        pitches = rng.integers(*PITCH_RANGE[gender], endpoint=True, size=n)
        rates = rng.integers(*RATE_RANGE, endpoint=True, size=n)
        per_gender[gender] = list(zip(accents, voices, pitches, rates))
    speakers = []
    for i in range(n_total):
        gender = i % 2
        accent, variant, pitch, rate = per_gender[gender][i // 2]
        split = "train" if i < N_TRAIN_SPEAKERS else "test"
        speakers.append(Speaker(f"s{i:03d}", str(accent), str(variant), gender, int(pitch), int(rate), split))
    return speakers


def _espeak_paths() -> tuple[str, str]:
    """The espeak-ng shared library and data folder from the espeakng-loader wheel; a UserError says what to install."""
    try:
        import espeakng_loader
    except ImportError:
        raise UserError(_INSTALL_HINT) from None
    library, data = espeakng_loader.get_library_path(), espeakng_loader.get_data_path()
    if not os.path.isfile(library):
        raise UserError(_INSTALL_HINT)
    missing = [v for v in MALE_VARIANTS + FEMALE_VARIANTS if not os.path.isfile(os.path.join(data, "voices", "!v", v))]
    if missing:
        # espeak-ng silently falls back to the plain voice for an unknown variant, which would break the gender labels.
        raise UserError(f"espeak-ng voice variants {', '.join(missing)} are missing: pip install -U espeakng-loader")
    return library, data


def _speak(speaker: Speaker) -> list[np.ndarray]:
    """Synthesise every word for one speaker: int16 audio at espeak's 22050 Hz, in WORDS order.

    Must run in a process that has never loaded espeak-ng, since the library carries state from
    one utterance to the next; _render gives each speaker such a process.
    """
    library, data = _espeak_paths()
    try:
        lib = ctypes.CDLL(library)
    except OSError as error:
        raise UserError(f"{_INSTALL_HINT} ({error})") from None
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_Synth.argtypes = [
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
        ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
    ]  # fmt: skip

    sample_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data.encode(), _INITIALIZE_DONT_EXIT)
    if sample_rate != _ESPEAK_RATE:
        hint = "pip install --force-reinstall espeakng-loader"
        raise UserError(f"espeak-ng failed to start (returned {sample_rate}, data in {data}): {hint}")
    # Initialisation seeds the breath-noise generator from the clock; a fixed seed makes runs repeatable.
    lib.espeak_ng_SetRandSeed(SEED)

    chunks: list[np.ndarray] = []

    @_SynthCallback
    def collect(wav, n_samples, events):  # called synchronously from espeak_Synth
        if n_samples > 0:
            chunks.append(np.ctypeslib.as_array(wav, (n_samples,)).copy())
        return 0  # 0 = continue synthesis

    lib.espeak_SetSynthCallback(collect)
    if lib.espeak_SetVoiceByName(speaker.espeak_voice.encode()) != 0:
        raise UserError(f"espeak-ng has no voice {speaker.espeak_voice}: pip install -U espeakng-loader")
    lib.espeak_SetParameter(_PARAM_RATE, speaker.rate, 0)
    lib.espeak_SetParameter(_PARAM_PITCH, speaker.pitch, 0)

    audio = []
    for word in WORDS:
        chunks.clear()
        text = word.encode() + b"\0"
        status = lib.espeak_Synth(text, len(text), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if status != 0 or not chunks:
            raise RuntimeError(f"espeak-ng could not say {word!r} with voice {speaker.espeak_voice} (status {status})")
        audio.append(np.concatenate(chunks))
    lib.espeak_Terminate()
    return audio


def _resample(audio: np.ndarray) -> np.ndarray:
    """22050 Hz -> 16000 Hz by cutting the spectrum (FFT resampling): numpy only, so workers start fast.

    Pads to a multiple of 441 samples so the 160/220.5 ratio gives a whole number of output samples.
    """
    n_in = -(-len(audio) // 441) * 441
    n_out = n_in * 320 // 441
    spectrum = np.fft.rfft(audio, n_in)[: n_out // 2 + 1]
    return np.fft.irfft(spectrum, n_out) * (n_out / n_in)


def _trim(audio: np.ndarray, margin: int = 160) -> np.ndarray:
    """Cut leading and trailing silence (below -40 dB of the peak), keeping a 10 ms margin each side."""
    loud = np.flatnonzero(np.abs(audio) > np.abs(audio).max() * 0.01)
    return audio[max(loud[0] - margin, 0) : loud[-1] + margin + 1]


def _noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """Unit-power noise between white and pink: Gaussian noise with a 1/f^beta spectrum, beta random in [0, 1].

    Drawn directly as a complex Gaussian spectrum (the spectrum of white Gaussian noise), saving a forward FFT.
    """
    real, imag = rng.standard_normal((2, n // 2 + 1))
    freqs = np.arange(n // 2 + 1, dtype=np.float64)
    freqs[0] = 1.0
    noise = np.fft.irfft((real + 1j * imag) * freqs ** (-rng.uniform(0.0, 1.0) / 2), n)
    return noise / np.sqrt(np.mean(noise**2))


def _finish(raw: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Turn espeak's output into a contest clip: 16 kHz, trimmed, at a random place in one second,
    random level (peak -14..-4 dBFS), plus noise at a random 25-40 dB SNR; int16."""
    # The crop is only a guard: RATE_RANGE keeps every word under 0.9 s.
    speech = _trim(_resample(raw.astype(np.float64) / 32768.0))[:CLIP_SAMPLES]
    speech *= 10 ** (rng.uniform(-14.0, -4.0) / 20) / np.abs(speech).max()
    clip = np.zeros(CLIP_SAMPLES)
    offset = int(rng.integers(0, CLIP_SAMPLES - len(speech), endpoint=True))
    clip[offset : offset + len(speech)] = speech
    snr_db = rng.uniform(25.0, 40.0)
    clip += _noise(rng, CLIP_SAMPLES) * np.sqrt(np.mean(speech**2)) * 10 ** (-snr_db / 20)
    return np.clip(np.round(clip * 32768.0), -32768, 32767).astype(np.int16)


def _speaker_clips(index: int) -> list[np.ndarray]:
    """All finished clips of the index-th speaker, in WORDS order; each clip has its own seeded Generator."""
    speaker = _speakers()[index]
    raw = _speak(speaker)
    return [_finish(audio, np.random.default_rng([SEED, 1, index, w])) for w, audio in enumerate(raw)]


def _render(indices: list[int]) -> list[list[np.ndarray]]:
    """The clips of the given speakers, each synthesised in a fresh process (see _speak).

    Forked workers start in milliseconds; spawn is the fallback where fork does not exist.
    """
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    with context.Pool(min(PROCESSES, len(indices)), maxtasksperchild=1) as pool:
        return pool.map(_speaker_clips, indices, chunksize=1)


def _write_wav(path: pathlib.Path, clip: np.ndarray) -> None:
    """16-bit mono PCM WAV; the header holds no timestamps, so equal audio gives equal bytes."""
    sf.write(path, clip, SAMPLE_RATE, subtype="PCM_16", format="WAV")


def _link(source: pathlib.Path, target: pathlib.Path) -> None:
    """Share the audio of the words and gender contests without doubling the disk use."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _write_demo(out: pathlib.Path) -> None:
    """Write the whole layout (module docstring) into out, except the COMPLETE marker."""
    speakers = _speakers()
    clips = _render(list(range(len(speakers))))
    rng = np.random.default_rng([SEED, 2])

    table = [f"{s.name},{s.voice},{s.variant},{s.gender},{s.pitch},{s.rate},{s.split}\n" for s in speakers]
    (out / "speakers.csv").write_text("speaker,voice,variant,gender,pitch,rate,split\n" + "".join(table))

    words = out / "words"
    train_files: list[tuple[pathlib.Path, int]] = []  # (file, gender) of the train speakers' clips
    test_items: list[tuple[np.ndarray, str, int]] = []  # (clip, word, gender) of the test speakers' clips
    for word in WORDS:
        (words / "train" / word).mkdir(parents=True)
    for speaker, speaker_clips in zip(speakers, clips):
        for word, clip in zip(WORDS, speaker_clips):
            if speaker.split == "train":
                path = words / "train" / word / f"{speaker.name}_nohash_0.wav"
                _write_wav(path, clip)
                train_files.append((path, speaker.gender))
            else:
                test_items.append((clip, word, speaker.gender))

    (words / "test").mkdir()
    test_files: list[tuple[pathlib.Path, int]] = []
    answers = []
    for number, item in enumerate(rng.permutation(len(test_items))):
        clip, word, gender = test_items[item]
        path = words / "test" / f"clip_{number:06d}.wav"
        _write_wav(path, clip)
        test_files.append((path, gender))
        answers.append(f"{path.name},{word}\n")
    (words / "test_answers.csv").write_text("fname,label\n" + "".join(answers))

    labels = out / "gender"
    for split, files, targets in (
        ("train", train_files, labels / "train" / "targets.tsv"),
        ("test", test_files, labels / "test_answers.tsv"),
    ):
        (labels / split).mkdir(parents=True)
        rows = []
        for number, item in enumerate(rng.permutation(len(files))):
            source, gender = files[item]
            _link(source, labels / split / f"{number:05d}.wav")
            rows.append(f"{number:05d}\t{gender}\n")
        targets.write_text("".join(rows))


def main() -> None:
    """Generate the demo (if needed) and print where it is and what it holds."""
    root = ensure_demo()
    print(root)
    for sub in ("words/train", "words/test", "gender/train", "gender/test"):
        print(f"  {sub}: {sum(1 for _ in (root / sub).rglob('*.wav'))} clips")


if __name__ == "__main__":
    main()
