"""What a saved model carries besides its weights: every file of the starting model's folder that describes how
to use it (tokenizer, chat template, generation settings, vocabularies), so that a run's checkpoint renders and
tokenizes a conversation exactly as the model it started from.

transformers 5 keeps a tokenizer's chat template in ``chat_template.jinja`` beside ``tokenizer_config.json``;
copying a fixed list of tokenizer files lost it, and a checkpoint of a chat model could not be served in the
format it was trained in. The files are read once, when the learner starts: a resumed run starts from a
checkpoint's ``model/``, which pruning may delete before the run's next save.
"""

from __future__ import annotations

from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt")
# written by save_pretrained for the saved weights, or areal's record of how a cached model was made
NOT_CARRIED = ("config.json", "model.safetensors.index.json", "pytorch_model.bin.index.json", "bootstrap.json")


def read_model_files(source: str | Path) -> dict[str, bytes]:
    """{name: bytes} of every file of ``source`` (not its subfolders) but weights and the architecture file."""
    return {path.name: path.read_bytes() for path in sorted(Path(source).iterdir())
            if path.is_file() and path.name not in NOT_CARRIED and not path.name.endswith(WEIGHT_SUFFIXES)}


def write_model_files(files: dict[str, bytes], dest: str | Path) -> None:
    """Write what ``read_model_files`` read into ``dest``."""
    for name, data in files.items():
        (Path(dest) / name).write_bytes(data)
