"""The core imports torch and numpy only: Ray, vLLM and DeepSpeed stay outside areal/."""

import subprocess
import sys


def test_areal_core_imports_no_distributed_stack():
    code = (
        "import sys, pkgutil, importlib, areal\n"
        "for m in pkgutil.walk_packages(areal.__path__, 'areal.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = sorted({'ray', 'vllm', 'deepspeed', 'diffusers', 'transformers'} & set(sys.modules))\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"areal/ pulled in {result.stdout.strip()} {result.stderr[-2000:]}"
