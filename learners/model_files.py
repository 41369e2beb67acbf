"""What a saved model carries besides its weights: every file of the starting model's folder that describes how
to use it (tokenizer, chat template, generation settings, vocabularies), so that a run's checkpoint renders and
tokenizes a conversation exactly as the model it started from.

transformers 5 keeps a tokenizer's chat template in ``chat_template.jinja`` beside ``tokenizer_config.json``;
copying a fixed list of tokenizer files lost it, and a checkpoint of a chat model could not be served in the
format it was trained in.
"""

from __future__ import annotations

import shutil
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt")
# written by save_pretrained for the saved weights, or areal's record of how a cached model was made
NOT_CARRIED = ("config.json", "model.safetensors.index.json", "pytorch_model.bin.index.json", "bootstrap.json")


def carry_model_files(source: str | Path, dest: str | Path) -> list[str]:
    """Copy every file of ``source`` (not its subfolders) but weights and the architecture file into ``dest``;
    returns the names copied."""
    copied = []
    for path in sorted(Path(source).iterdir()):
        if not path.is_file() or path.name in NOT_CARRIED or path.name.endswith(WEIGHT_SUFFIXES):
            continue
        shutil.copy2(path, Path(dest) / path.name)
        copied.append(path.name)
    return copied
