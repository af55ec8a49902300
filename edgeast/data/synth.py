"""Synthetic keyword speech in the Speech Commands layout, made locally with espeak-ng.

Nothing is downloaded: espeak-ng (from the espeakng-loader wheel) speaks each
keyword with hundreds of synthetic speakers, combinations of a language
accent, a voice variant, pitch, pitch range and rate. Speakers are split
speaker-disjoint into train/val/test (~80/10/10); every clip also gets a small
pitch/rate jitter, a random position around the centre of its 1 s window, a
random peak level and a faint noise floor. The output is what
`SpeechCommands(OUT, task="auto")` reads:

    OUT/<keyword>/<speaker>_nohash_<n>.wav     keywords ("hey edge" -> hey_edge/)
    OUT/<word>/...                             other words, read as _unknown_
    OUT/_speech_/<speaker>_nohash_<n>.wav      optional 1 s crops of running speech without
                                               the keywords, read as _unknown_
    OUT/_background_noise_/*.wav               white, pink, brown noise and babble
    OUT/validation_list.txt, testing_list.txt
    OUT/_unlabeled_/*.wav                      optional sentences for pretraining
    OUT/synth_manifest.json                    keywords, phrases, speakers, per-clip speaker

Determinism: espeak-ng keeps state between utterances in static variables
(the phase of its pitch flutter), so a clip depends on what its process spoke
before. Clips are therefore spoken in fixed chunks, each by a fresh process
forked from a clean server process: the bytes depend on the config and seed
only, not on the number of workers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import multiprocessing
import re
import time
import wave as wave_file
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeast.data import BACKGROUND_NOISE, MANIFEST, SPEECH, TESTING_LIST, UNLABELED, VALIDATION_LIST
from edgeast.data import espeak
from edgeast.data.espeak import Voice

DEFAULT_KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
# The other Speech Commands v2 words: the English default _unknown_ vocabulary.
ENGLISH_UNKNOWN_WORDS = (
    "backward", "bed", "bird", "cat", "dog", "eight", "five", "follow", "forward", "four", "happy",
    "house", "learn", "marvin", "nine", "one", "seven", "sheila", "six", "three", "tree", "two",
    "visual", "wow", "zero",
)
ENGLISH_ACCENTS = ("en", "en-us", "en-gb-x-rp", "en-029", "en-gb-scotland", "en-gb-x-gbclan",
                   "en-gb-x-gbcwmd", "en-us-nyc")
# Common words for the sentences of unlabeled audio (with the keywords and unknown words added).
ENGLISH_SENTENCE_WORDS = tuple("""
    the a an and or but if then so because of to in at by for with from about over under after
    before into through between i you he she we they it this that these those my your our their
    is are was were be been have has had do does did can could will would should may might must
    not very more most some any all many few other same new old good great small big long little
    time day night year week people man woman child family friend house home room door window
    water food music light sound voice word name place city road car train phone computer book
    paper table chair morning evening today tomorrow always never often again here there now
    where when what who how why make take give find know think see look hear say tell ask call
    work play talk walk open close turn start wait move help keep bring leave come go run read
    write listen speak remember forget change show try need want like love live feel
    one two three four five six seven ten hundred first last next red green blue black white
""".split())
# Variants that sound like no person (robots, effects) or are test settings.
NON_HUMAN_VARIANTS = frozenset({"Demonic", "UniRobot", "anikaRobot", "announcer", "fast", "Mr serious",
                                "Tweaky", "robosoft", "robosoft2", "robosoft3", "robosoft4", "robosoft5",
                                "robosoft6", "robosoft7", "robosoft8"})
SPLITS = ("train", "val", "test")
CHUNK = 100  # utterances spoken by one fresh process
MAX_RATE = 450  # espeak words per minute
MAX_SPEECH_FRACTION = 0.9  # a keyword longer than this part of its clip is spoken again, faster
TRIM_DB = -50.0  # speech edges: first/last sample above this level relative to the peak
NOISE_RMS_DB = -20.0
BABBLE_TALKERS = 6
WORD_SPREAD = 0.5  # words sit in the middle half of the time their clip leaves free
SPEECH_SENTENCE_CLIPS = 2.5  # a speech clip is cut from a sentence this many clips long
CONTEXT_GAP_S = (0.05, 0.5)  # pause between a word and the speech around it
CONTEXT_LEVEL_DB = (-6.0, 3.0)  # that speech's RMS against the word's


class SynthError(ValueError):
    """A synthesis setting that cannot work (unknown language, clashing keyword folders, ...)."""


@dataclass
class SynthConfig:
    """What to synthesize. Clip counts are per word, per split (train, val, test).

    `unknown_words=None` means the other Speech Commands words for English and
    none for other languages (give words of that language for an `_unknown_`
    class). `accents=None` means several English accents for "en", else just
    `language`. Speech clips (`speech_clips`) are 1 s crops of keyword-free
    sentences, cut anywhere, so words are clipped at the edges: what a
    streaming detector hears between keywords, which isolated unknown words
    do not teach. With `context_prob`, that share of the train split's keyword
    and unknown-word clips also hears the speaker talk before and after the
    word (keyword-free speech, 0.05-0.5 s away from it, -6..+3 dB against it),
    as a word said in the middle of speech sounds to a sliding window. Val and
    test words stay isolated, as in Speech Commands, so accuracy measures
    words; words in running speech are what the stream benchmark measures.
    Unlabeled clips are random word sequences drawn from common
    English words plus the keywords and unknown words (for other languages
    only the latter two), spoken by train speakers, as real speech would
    contain the keywords too.
    """

    keywords: tuple[str, ...] = DEFAULT_KEYWORDS
    unknown_words: tuple[str, ...] | None = None
    language: str = "en"
    accents: tuple[str, ...] | None = None
    speakers: int = 400
    keyword_clips: tuple[int, int, int] = (100, 20, 20)
    unknown_clips: tuple[int, int, int] = (12, 3, 3)
    speech_clips: tuple[int, int, int] = (0, 0, 0)  # running-speech crops per split, read as _unknown_
    context_prob: float = 0.0  # share of train word clips with running speech at the window edges
    word_spread: float = WORD_SPREAD  # where a train word may sit: 0.5 = middle half of the free time, 1 = anywhere
    speaker_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    noise_seconds: float = 60.0
    unlabeled: int = 0
    unlabeled_seconds: float = 2.0
    sample_rate: int = 16000
    clip_seconds: float = 1.0
    seed: int = 0
    workers: int = 2


@dataclass
class SynthReport:
    out: Path
    clips: int  # labelled clips: keywords and unknown words
    unlabeled: int
    speakers: dict[str, int]  # per split
    respoken: int  # clips spoken again faster to fit the window
    seconds: float
    clips_per_second: float  # labelled + unlabeled clips per second of wall time


@dataclass(frozen=True)
class Context:
    """Speech around a word: `text` is split in two, its first half ends `gaps_s[0]` before the word,
    its second half starts `gaps_s[1]` after it, both at `level_db` against the word's RMS."""

    text: str
    seed: int
    gaps_s: tuple[float, float]
    level_db: float


@dataclass(frozen=True)
class Utterance:
    """One clip to speak, fully decided by the plan so a worker needs no randomness of its own."""

    path: str  # relative to the output folder
    seconds: float  # clip length
    text: str
    voice: Voice
    seed: int
    shift: float  # in [-1, 1]: where the speech sits in the clip (or, if longer, which part is kept)
    peak_db: float
    floor_db: float
    fit: bool  # speak faster rather than crop when longer than MAX_SPEECH_FRACTION of the clip
    context: Context | None = None


@dataclass(frozen=True)
class Speaker:
    id: str
    voice: Voice
    split: str


def manifest_config(cfg: SynthConfig) -> dict:
    """The settings that decide a dataset's bytes (the worker count changes none)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k != "workers"}


def folder_name(phrase: str) -> str:
    """Filesystem-safe folder of a keyword or phrase: "Hey Edge!" -> "hey_edge"."""
    return re.sub(r"\W+", "_", phrase.strip().lower()).strip("_")


def synthesize_dataset(out: str | Path, cfg: SynthConfig | None = None, show_progress: bool = True) -> SynthReport:
    """Write a synthetic keyword dataset to the new or empty folder `out`; see the module doc.

    Call it under `if __name__ == "__main__":` in scripts: workers are started
    through a fork server that imports the main module.
    """
    cfg = cfg or SynthConfig()
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise SynthError(f"{out}: folder exists and is not empty; choose a new folder or delete it")
    if not 0.0 <= cfg.context_prob <= 1.0:
        raise SynthError(f"context_prob={cfg.context_prob}: a share of clips must lie in [0, 1]")
    if not 0.0 <= cfg.word_spread <= 1.0:
        raise SynthError(f"word_spread={cfg.word_spread}: must lie in [0, 1] (0 centres every word)")
    start = time.perf_counter()
    phrases = _phrases(cfg)
    keyword_folders = list(phrases)[:len(cfg.keywords)]
    unknown_folders = list(phrases)[len(cfg.keywords):]
    rng = np.random.default_rng(cfg.seed)
    speakers = _plan_speakers(cfg, rng)
    clips, clip_speakers = _plan_clips(cfg, phrases, keyword_folders, speakers, rng)
    clips = _plan_context(cfg, clips, clip_speakers, _keyword_free_words(cfg, phrases, keyword_folders), rng)
    speech, speech_speakers = _plan_speech(cfg, phrases, keyword_folders, speakers, rng)
    clips, clip_speakers = clips + speech, {**clip_speakers, **speech_speakers}
    unlabeled = _plan_unlabeled(cfg, list(phrases.values()), speakers, rng)
    babble = _plan_babble(cfg, list(phrases.values()), speakers, rng)

    out.mkdir(parents=True, exist_ok=True)
    noise_dir = out / BACKGROUND_NOISE
    noise_dir.mkdir()
    noise_samples = round(cfg.noise_seconds * cfg.sample_rate)
    for kind in ("white", "pink", "brown"):
        noise = _colored_noise(kind, noise_samples, cfg.sample_rate, rng)
        _write(noise_dir / f"{kind}_noise.wav", noise, cfg.sample_rate)

    utterances = clips + unlabeled
    tasks = [(_speak_babble, (noise_dir / "babble.wav", babble, noise_samples, cfg.sample_rate), 0)]
    for i in range(0, len(utterances), CHUNK):
        chunk = utterances[i:i + CHUNK]
        tasks.append((_speak_chunk, (out, chunk, cfg.sample_rate), len(chunk)))
    respoken = _run(tasks, cfg.workers, show_progress)

    for list_name, split in ((VALIDATION_LIST, "val"), (TESTING_LIST, "test")):
        paths = sorted(u.path for u in clips if clip_speakers[u.path].split == split)
        (out / list_name).write_text("".join(p + "\n" for p in paths))
    manifest = {
        "keywords": keyword_folders,
        "unknown_words": unknown_folders,
        "phrases": phrases,
        "language": cfg.language,
        "seed": cfg.seed,
        "sample_rate": cfg.sample_rate,
        "clip_seconds": cfg.clip_seconds,
        "speakers": {split: sorted(s.id for s in speakers if s.split == split) for split in SPLITS},
        "voices": {s.id: dataclasses.asdict(s.voice) for s in speakers},
        "clips": {u.path: clip_speakers[u.path].id for u in clips},
        "config": manifest_config(cfg),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")

    seconds = time.perf_counter() - start
    report = SynthReport(out=out, clips=len(clips), unlabeled=len(unlabeled),
                         speakers={split: len(manifest["speakers"][split]) for split in SPLITS},
                         respoken=respoken, seconds=seconds, clips_per_second=len(utterances) / seconds)
    if show_progress:
        from rich.console import Console

        Console(soft_wrap=True).print(f"wrote {report.clips} clips + {report.unlabeled} unlabeled from "
                                      f"{len(speakers)} speakers to {out} in {seconds:.1f} s "
                                      f"({report.clips_per_second:.0f} clips/s)")
    return report


def _phrases(cfg: SynthConfig) -> dict[str, str]:
    """folder -> spoken phrase, keywords first; rejects clashes and unknown languages."""
    known = set(espeak.languages())
    for lang in (cfg.language, *_accents(cfg)):
        if lang.lower() not in known:
            raise SynthError(f"espeak-ng has no language {lang!r}; choose one of edgeast.data.espeak.languages()")
    if not cfg.keywords:
        raise SynthError("no keywords given; name at least one")
    unknown = cfg.unknown_words if cfg.unknown_words is not None else (
        ENGLISH_UNKNOWN_WORDS if cfg.language == "en" else ())
    phrases: dict[str, str] = {}
    for phrase in cfg.keywords:
        folder = folder_name(phrase)
        if not folder or folder in phrases:
            raise SynthError(f"keyword {phrase!r} gives the folder {folder!r}, empty or used by another keyword; "
                             "keywords must differ in letters or digits")
        phrases[folder] = phrase.strip()
    for phrase in unknown:
        folder = folder_name(phrase)
        if folder and folder not in phrases:  # an unknown word that is a keyword stays a keyword
            phrases[folder] = phrase.strip()
    return phrases


def _accents(cfg: SynthConfig) -> tuple[str, ...]:
    return cfg.accents or (ENGLISH_ACCENTS if cfg.language == "en" else (cfg.language,))


def _plan_speakers(cfg: SynthConfig, rng: np.random.Generator) -> list[Speaker]:
    """Distinct speakers, accent x variant combinations first, each with its own pitch, range and rate."""
    variants = [v for v in espeak.variants() if v not in NON_HUMAN_VARIANTS]
    combos = [(a, v) for a in _accents(cfg) for v in variants]
    order = rng.permutation(len(combos))
    counts = [round(cfg.speakers * f) for f in cfg.speaker_fractions[1:]]
    counts = [cfg.speakers - sum(counts), *counts]
    if min(counts) < 1:
        raise SynthError(f"{cfg.speakers} speakers leave a split empty with fractions {cfg.speaker_fractions}; "
                         "use more speakers")
    speakers, ids = [], set()
    for i in range(cfg.speakers):
        accent, variant = combos[order[i % len(combos)]]
        voice = Voice(accent, variant, rate=int(rng.integers(130, 221)), pitch=int(rng.integers(25, 76)),
                      pitch_range=int(rng.integers(20, 91)))
        sid = hashlib.sha1(f"{cfg.seed}:{i}".encode()).hexdigest()[:8]
        while sid in ids:
            sid = hashlib.sha1(sid.encode()).hexdigest()[:8]
        ids.add(sid)
        split = SPLITS[0] if i < counts[0] else SPLITS[1] if i < counts[0] + counts[1] else SPLITS[2]
        speakers.append(Speaker(sid, voice, split))
    return speakers


def _jitter(voice: Voice, rng: np.random.Generator) -> Voice:
    """Small per-clip changes, so one speaker's clips are not identical."""
    return dataclasses.replace(
        voice,
        rate=int(np.clip(round(voice.rate * rng.uniform(0.92, 1.08)), 80, MAX_RATE)),
        pitch=int(np.clip(voice.pitch + rng.integers(-4, 5), 0, 100)),
        pitch_range=int(np.clip(voice.pitch_range + rng.integers(-5, 6), 0, 100)),
    )


def _utterance(path: str, seconds: float, text: str, voice: Voice, rng: np.random.Generator,
               fit: bool, shift: float) -> Utterance:
    return Utterance(path, seconds, text, _jitter(voice, rng), seed=int(rng.integers(2**31)),
                     shift=float(rng.uniform(-shift, shift)), peak_db=float(rng.uniform(-18.0, -1.0)),
                     floor_db=float(rng.uniform(-75.0, -55.0)), fit=fit)


def _plan_clips(cfg, phrases, keyword_folders, speakers, rng) -> tuple[list[Utterance], dict[str, Speaker]]:
    """Keyword and unknown-word clips; each split's clips come from that split's speakers only."""
    clips, clip_speakers = [], {}
    for s, split in enumerate(SPLITS):
        pool = [sp for sp in speakers if sp.split == split]
        for folder, phrase in phrases.items():
            count = (cfg.keyword_clips if folder in keyword_folders else cfg.unknown_clips)[s]
            order = rng.permutation(len(pool))
            said: dict[str, int] = {}
            for k in range(count):
                speaker = pool[order[k % len(pool)]]
                n = said[speaker.id] = said.get(speaker.id, -1) + 1
                path = f"{folder}/{speaker.id}_nohash_{n}.wav"
                spread = cfg.word_spread if split == "train" else WORD_SPREAD  # val/test: words as recorded
                clips.append(_utterance(path, cfg.clip_seconds, phrase, speaker.voice, rng, fit=True, shift=spread))
                clip_speakers[path] = speaker
    return clips, clip_speakers


def _keyword_free_words(cfg: SynthConfig, phrases: dict[str, str], keyword_folders: list[str]) -> list[str]:
    keyword_words = {w for k in keyword_folders for w in phrases[k].lower().split()}
    return [w for w in _sentence_words(cfg, list(phrases.values())) if w.lower() not in keyword_words]


def _plan_context(cfg: SynthConfig, clips: list[Utterance], clip_speakers: dict[str, Speaker], words: list[str],
                  rng) -> list[Utterance]:
    """Give `context_prob` of the train split's word clips speech around the word (no draws at all when 0)."""
    if cfg.context_prob <= 0.0:
        return clips
    out = []
    for u in clips:
        if clip_speakers[u.path].split == "train" and rng.random() < cfg.context_prob:
            text = _sentence(words, u.voice, 2 * cfg.clip_seconds, rng)
            gaps = (float(rng.uniform(*CONTEXT_GAP_S)), float(rng.uniform(*CONTEXT_GAP_S)))
            u = dataclasses.replace(u, context=Context(text, int(rng.integers(2**31)), gaps,
                                                       float(rng.uniform(*CONTEXT_LEVEL_DB))))
        out.append(u)
    return out


def _plan_speech(cfg, phrases, keyword_folders, speakers, rng) -> tuple[list[Utterance], dict[str, Speaker]]:
    """Clip-long crops of sentences without the keywords, from each split's own speakers."""
    words = _keyword_free_words(cfg, phrases, keyword_folders)
    clips, clip_speakers = [], {}
    for split, count in zip(SPLITS, cfg.speech_clips):
        pool = [sp for sp in speakers if sp.split == split]
        said: dict[str, int] = {}
        for _ in range(count):
            speaker = pool[int(rng.integers(len(pool)))]
            n = said[speaker.id] = said.get(speaker.id, -1) + 1
            path = f"{SPEECH}/{speaker.id}_nohash_{n}.wav"
            text = _sentence(words, speaker.voice, SPEECH_SENTENCE_CLIPS * cfg.clip_seconds, rng)
            clips.append(_utterance(path, cfg.clip_seconds, text, speaker.voice, rng, fit=False, shift=1.0))
            clip_speakers[path] = speaker
    return clips, clip_speakers


def _sentence_words(cfg: SynthConfig, phrases: list[str]) -> list[str]:
    return (list(ENGLISH_SENTENCE_WORDS) if cfg.language.startswith("en") else []) + phrases


def _sentence(words: list[str], voice: Voice, seconds: float, rng: np.random.Generator) -> str:
    """Enough random words to fill a bit more than `seconds` at the voice's rate."""
    count = max(1, math.ceil(seconds * voice.rate / 60 * 1.3))
    return " ".join(words[i] for i in rng.integers(len(words), size=count))


def _plan_unlabeled(cfg, phrases, speakers, rng) -> list[Utterance]:
    words = _sentence_words(cfg, phrases)
    train = [sp for sp in speakers if sp.split == "train"]
    plan = []
    for k in range(cfg.unlabeled):
        speaker = train[int(rng.integers(len(train)))]
        text = _sentence(words, speaker.voice, cfg.unlabeled_seconds, rng)
        path = f"{UNLABELED}/{speaker.id}_{k:05d}.wav"
        plan.append(_utterance(path, cfg.unlabeled_seconds, text, speaker.voice, rng, fit=False, shift=1.0))
    return plan


def _plan_babble(cfg, phrases, speakers, rng) -> list[list[Utterance]]:
    """Sentences of several train speakers, one list per talker, to be overlaid."""
    words = _sentence_words(cfg, phrases)
    train = [sp for sp in speakers if sp.split == "train"]
    talkers = [train[i] for i in rng.choice(len(train), size=min(BABBLE_TALKERS, len(train)), replace=False)]
    sentences_per_talker = math.ceil(cfg.noise_seconds / 2.0) + 1
    return [[_utterance("", 2.0, _sentence(words, sp.voice, 2.0, rng), sp.voice, rng, fit=False, shift=0.0)
             for _ in range(sentences_per_talker)] for sp in talkers]


def _run(tasks: list[tuple], workers: int, show_progress: bool) -> int:
    """Run each (function, args, clip count) task in a fresh process (clean espeak state).

    Returns the sum of the task results.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(["__main__", __name__])
    total = 0
    columns = (TextColumn("synthesizing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not show_progress) as progress, \
            ctx.Pool(max(1, workers), maxtasksperchild=1) as pool:
        bar = progress.add_task("clips", total=sum(size for _, _, size in tasks))
        for result, size in pool.imap_unordered(_call, tasks):
            total += result
            progress.advance(bar, size)
    return total


def _call(task: tuple) -> tuple[int, int]:
    fn, args, size = task
    return fn(*args), size


def _speak(u: Utterance, voice: Voice, sample_rate: int) -> np.ndarray:
    """The utterance at `sample_rate`, trimmed of leading and trailing silence."""
    wave, native_rate = espeak.synthesize(u.text, voice, u.seed)
    wave = espeak.resample(wave, native_rate, sample_rate)
    peak = np.abs(wave).max() if wave.size else 0.0
    if peak == 0.0:
        raise SynthError(f"espeak-ng said nothing for {u.text!r} with voice {voice.name!r}; "
                         "check the text and language")
    loud = np.flatnonzero(np.abs(wave) > peak * 10 ** (TRIM_DB / 20))
    return wave[loud[0]:loud[-1] + 1]


def _place(speech: np.ndarray, u: Utterance, num_samples: int, sample_rate: int,
           context: np.ndarray | None = None) -> np.ndarray:
    """Position `speech` in a clip (with `context` speech around it), set its peak level, add the noise floor."""
    clip = np.zeros(num_samples, np.float32)
    slack = num_samples - len(speech)
    if slack >= 0:
        start = round(slack / 2 * (1 + u.shift))
        clip[start:start + len(speech)] = speech
        if context is not None:  # spoken only for utterances with a planned context
            _add_context(clip, start, start + len(speech), context, u.context, sample_rate)
    else:
        start = round(-slack / 2 * (1 + u.shift))
        clip[:] = speech[start:start + num_samples]
    clip *= 10 ** (u.peak_db / 20) / max(np.abs(clip).max(), 1e-9)
    floor = np.random.default_rng(u.seed).standard_normal(num_samples) * 10 ** (u.floor_db / 20)
    return clip + floor.astype(np.float32)


def _add_context(clip: np.ndarray, start: int, end: int, context: np.ndarray, plan: Context,
                 sample_rate: int) -> None:
    """Write the halves of `context` before `start` and after `end` in place, at the planned gaps and level."""
    rms = np.sqrt(np.mean(clip[start:end] ** 2)) / max(np.sqrt(np.mean(context**2)), 1e-12)
    context = context * (rms * 10 ** (plan.level_db / 20))
    half = len(context) // 2
    before = start - round(plan.gaps_s[0] * sample_rate)
    if before > 0:
        tail = context[:half][-before:]
        clip[before - len(tail):before] = tail
    after = end + round(plan.gaps_s[1] * sample_rate)
    if after < len(clip):
        head = context[half:][:len(clip) - after]
        clip[after:after + len(head)] = head


def _speak_chunk(out: Path, utterances: list[Utterance], sample_rate: int) -> int:
    """Speak and write each utterance; returns how many had to be spoken faster to fit."""
    respoken = 0
    for u in utterances:
        num_samples = round(u.seconds * sample_rate)
        voice = u.voice
        speech = _speak(u, voice, sample_rate)
        most = MAX_SPEECH_FRACTION * num_samples
        while u.fit and len(speech) > most and voice.rate < MAX_RATE:
            faster = math.ceil(voice.rate * len(speech) / most)
            voice = dataclasses.replace(voice, rate=min(faster, MAX_RATE))
            speech = _speak(u, voice, sample_rate)
        respoken += voice != u.voice
        context = None
        if u.context is not None:
            context = _speak(dataclasses.replace(u, text=u.context.text, seed=u.context.seed), u.voice, sample_rate)
        _write(out / u.path, _place(speech, u, num_samples, sample_rate, context), sample_rate)
    return respoken


def _speak_babble(path: Path, talkers: list[list[Utterance]], num_samples: int, sample_rate: int) -> int:
    """Overlay the talkers' sentences (each with a short pause) into one noise file."""
    mix = np.zeros(num_samples, np.float32)
    for sentences in talkers:
        parts = []
        for u in sentences:
            parts += [_speak(u, u.voice, sample_rate), np.zeros(round(0.2 * sample_rate), np.float32)]
        stream = np.concatenate(parts)
        stream = np.resize(stream, num_samples)  # repeats the start if the sentences fall short
        mix += stream / max(np.sqrt(np.mean(stream**2)), 1e-9)
    _write(path, _at_rms(mix, NOISE_RMS_DB), sample_rate)
    return 0


def _colored_noise(kind: str, num_samples: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """White, pink (1/f power) or brown (1/f^2 power) noise at NOISE_RMS_DB, flat below 20 Hz."""
    spectrum = np.fft.rfft(rng.standard_normal(num_samples))
    freqs = np.maximum(np.fft.rfftfreq(num_samples, 1.0 / sample_rate), 20.0)
    exponent = {"white": 0.0, "pink": 0.5, "brown": 1.0}[kind]
    noise = np.fft.irfft(spectrum / freqs**exponent, num_samples)
    return _at_rms(noise, NOISE_RMS_DB)


def _at_rms(wave: np.ndarray, rms_db: float) -> np.ndarray:
    """Scaled to `rms_db` dBFS RMS, or less where that would clip."""
    gain = 10 ** (rms_db / 20) / max(np.sqrt(np.mean(wave**2)), 1e-12)
    gain = min(gain, 0.99 / max(np.abs(wave).max(), 1e-12))
    return (wave * gain).astype(np.float32)


def _write(path: Path, wave: np.ndarray, sample_rate: int) -> None:
    """16-bit PCM mono wav. The stdlib writer, because soundfile fsyncs every file (~5 ms each)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pcm = np.round(np.clip(wave, -1.0, 1.0) * 32767).astype("<i2")
    with wave_file.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes(pcm.tobytes())
