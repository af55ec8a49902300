"""A small ctypes binding to libespeak-ng, shipped by the `espeakng-loader` wheel.

espeak-ng keeps one global synthesizer per process, so this module initializes
it once (synchronous retrieval mode: samples come back through a callback, no
sound device) and serializes every call with a lock. Parallel synthesis must
use processes, not threads. espeak-ng also carries state from one utterance to
the next (the phase of its pitch flutter), so repeating a call can give
slightly different samples; `edgeast.data.synth` gets reproducible bytes by
speaking fixed chunks in fresh processes.
"""

from __future__ import annotations

import ctypes
import math
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# espeak_AUDIO_OUTPUT, espeak_PARAMETER, espeak_POSITION_TYPE and flags from speak_lib.h.
AUDIO_OUTPUT_SYNCHRONOUS = 2
ESPEAK_INITIALIZE_DONT_EXIT = 0x8000
ESPEAK_RATE, ESPEAK_VOLUME, ESPEAK_PITCH, ESPEAK_RANGE, ESPEAK_WORDGAP = 1, 2, 3, 4, 7
POS_CHARACTER = 1
ESPEAK_CHARS_UTF8 = 1
EE_OK = 0

SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class EspeakError(ValueError):
    """espeak-ng rejected a voice or text, or its library could not be loaded."""


@dataclass(frozen=True)
class Voice:
    """One way of speaking: a language voice, an optional variant and prosody settings.

    `variant` names a file in espeak-ng-data/voices/!v (m1..m8, f1..f5, croak,
    klatt, whisper, ...). rate is words per minute (80..450); pitch and
    pitch_range are espeak's 0..100 scales (50 is the voice's default).
    """

    language: str = "en"
    variant: str | None = None
    rate: int = 175
    pitch: int = 50
    pitch_range: int = 50

    @property
    def name(self) -> str:
        return self.language if self.variant is None else f"{self.language}+{self.variant}"


class _Engine:
    """The process-wide espeak-ng instance, created on first use."""

    def __init__(self) -> None:
        import espeakng_loader

        self.data_path = Path(espeakng_loader.get_data_path())
        try:
            self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        except OSError as e:
            raise EspeakError(f"cannot load libespeak-ng from espeakng-loader: {e}; reinstall espeakng-loader") from e
        lib = self.lib
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetSynthCallback.argtypes = [SYNTH_CALLBACK]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p,
        ]
        rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, str(self.data_path).encode(),
                                     ESPEAK_INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise EspeakError(f"espeak-ng failed to initialize with data at {self.data_path}; "
                              "reinstall espeakng-loader")
        self.sample_rate = rate
        self._chunks: list[np.ndarray] = []
        self._callback = SYNTH_CALLBACK(self._collect)  # kept alive: C holds the pointer
        lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, num_samples, events) -> int:
        if wav and num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0  # 0 = go on synthesizing

    def synthesize(self, text: str, voice: Voice, seed: int) -> np.ndarray:
        lib = self.lib
        if lib.espeak_SetVoiceByName(voice.name.encode()) != EE_OK:
            raise EspeakError(f"espeak-ng has no voice {voice.name!r}; see `languages()` and `variants()`")
        for param, value in ((ESPEAK_RATE, voice.rate), (ESPEAK_PITCH, voice.pitch),
                             (ESPEAK_RANGE, voice.pitch_range), (ESPEAK_VOLUME, 100), (ESPEAK_WORDGAP, 0)):
            lib.espeak_SetParameter(param, int(value), 0)
        lib.espeak_ng_SetRandSeed(seed)
        data = text.encode("utf-8") + b"\0"
        self._chunks = []
        err = lib.espeak_Synth(data, len(data), 0, POS_CHARACTER, 0, ESPEAK_CHARS_UTF8, None, None)
        if err != EE_OK:
            raise EspeakError(f"espeak-ng failed (error {err}) to speak {text!r} with voice {voice.name!r}")
        chunks, self._chunks = self._chunks, []
        pcm = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
        return pcm.astype(np.float32) / 32768.0


_engine: _Engine | None = None
_lock = threading.Lock()


def _get_engine() -> _Engine:
    global _engine
    if _engine is None:
        _engine = _Engine()
    return _engine


def synthesize(text: str, voice: Voice = Voice(), seed: int = 0) -> tuple[np.ndarray, int]:
    """Speak `text`: (float32 mono samples in [-1, 1], espeak's native sample rate, 22050 Hz).

    `seed` fixes espeak's random noise (breathy and Klatt voices). espeak-ng
    also carries its pitch-flutter phase from one utterance to the next, so
    equal calls give equal samples only after equal histories in the process.
    Use `resample` to bring the samples to 16 kHz.
    """
    with _lock:
        engine = _get_engine()
        return engine.synthesize(text, voice, seed), engine.sample_rate


def resample(wave: np.ndarray, orig: int, new: int) -> np.ndarray:
    """Band-limited resampling in the frequency domain, for speech surrounded by silence.

    Zero-padding to a multiple of 10 * orig / gcd(orig, new) keeps both FFT
    sizes free of large prime factors (fast) and the output length exact.
    """
    if orig == new:
        return wave
    step = orig // math.gcd(orig, new) * 10
    padded = np.zeros(-(-len(wave) // step) * step, np.float32)
    padded[:len(wave)] = wave
    n_out = len(padded) * new // orig
    spectrum = np.fft.rfft(padded)
    kept = np.zeros(n_out // 2 + 1, dtype=spectrum.dtype)
    k = min(len(kept), len(spectrum))
    kept[:k] = spectrum[:k]
    resampled = np.fft.irfft(kept, n_out) * (n_out / len(padded))
    return resampled[:round(len(wave) * new / orig)].astype(np.float32)


def data_path() -> Path:
    """The espeak-ng-data directory inside the espeakng-loader wheel."""
    import espeakng_loader

    return Path(espeakng_loader.get_data_path())


def variants() -> list[str]:
    """Names of the voice variants (espeak-ng-data/voices/!v)."""
    return sorted(p.name for p in (data_path() / "voices" / "!v").iterdir() if p.is_file())


def languages() -> list[str]:
    """Identifiers of the language voices (espeak-ng-data/lang/*/*), lower-cased as espeak accepts them."""
    return sorted(p.name.lower() for p in (data_path() / "lang").rglob("*") if p.is_file())
