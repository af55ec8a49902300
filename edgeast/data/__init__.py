"""Datasets and synthetic keyword speech.

- `speech_commands`: Google Speech Commands (35 words, SUPERB KS1) and synthetic data in its layout.
- `folders`: `FolderDataset` (one folder per class) and `UnlabeledAudio` (pretraining crops).
- `common`: fixed-length clips, split lists, bad-file skipping, `collate_skip_none`.
- `synth`: `synthesize_dataset`, keyword speech made locally with espeak-ng (`espeak`).

Only the names of the Speech Commands layout live here, shared by the readers
and the synthesizer; nothing is imported, because synthesis workers import
`synth` in fresh processes and should not pay for torch.
"""

VALIDATION_LIST = "validation_list.txt"
TESTING_LIST = "testing_list.txt"
BACKGROUND_NOISE = "_background_noise_"
MANIFEST = "synth_manifest.json"
UNKNOWN = "_unknown_"
SILENCE = "_silence_"
SPEECH = "_speech_"  # 1 s crops of keyword-free running speech, read as _unknown_
UNLABELED = "_unlabeled_"  # synthetic pretraining audio; '_' keeps it from being read as a word
