"""Render the sbatch template: a Ray head on the first allocated node, workers on the rest, the driver, all
with Ray token authentication (a fresh token per job)."""

from __future__ import annotations

import re
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path

TEMPLATE = Path(__file__).with_name("ray_job.sbatch.template")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
ROOT = Path(__file__).resolve().parents[2]


class SlurmJobError(ValueError):
    """A value the script cannot take; ``field`` names the SlurmJob field (the command line names its flag)."""

    def __init__(self, field: str, detail: str):
        super().__init__(f"slurm job: {field} {detail}")
        self.field, self.detail = field, detail


@dataclass
class SlurmJob:
    """What the template needs; every field has a default a small cluster can start from."""

    nodes: int = 2
    cpus_per_node: int = 16
    gpus_per_node: int = 0
    time_limit: str = "04:00:00"
    job_name: str = "areal"
    out_dir: str = "runs/slurm"  # must be on storage every node can write (checkpoints, metrics)
    project_dir: str = str(ROOT)
    venv: str = str(ROOT / ".venv")
    log_dir: str = "runs/slurm-logs"
    ray_port: int = 6379
    token_dir: str = ""  # where the job's Ray token file goes, readable by every node; "" = $HOME/.areal/ray-auth
    overrides: list[str] = field(default_factory=list)
    extra_sbatch: list[str] = field(default_factory=list)  # e.g. ["#SBATCH --partition=gpu"]

    def __post_init__(self):
        for name, low in (("nodes", 1), ("cpus_per_node", 1), ("gpus_per_node", 0), ("ray_port", 1)):
            if getattr(self, name) < low:
                raise SlurmJobError(name, f"must be >= {low}, got {getattr(self, name)}")
        bad = [line for line in self.extra_sbatch if not line.startswith("#SBATCH ")]
        if bad:
            raise SlurmJobError("extra_sbatch", f"lines must start with '#SBATCH ', got {bad}")
        if "," in self.token_dir:  # the path travels in `srun --export=...`, whose entries are comma-separated
            raise SlurmJobError("token_dir", f"must not contain ',', got {self.token_dir!r}")
        # a newline in a field that goes into the script verbatim (an #SBATCH line) would start a shell line
        for name, value in asdict(self).items():
            for text in value if isinstance(value, list) else [value]:
                if isinstance(text, str) and CONTROL.search(text):
                    raise SlurmJobError(name, f"must not contain control characters (newlines, tabs, escapes), "
                                              f"got {text!r}")


def render(job: SlurmJob) -> str:
    """The filled template; refuses to leave a field unfilled."""
    values = asdict(job)
    values["overrides"] = " ".join(shlex.quote(o) for o in job.overrides)
    gpus = [f"#SBATCH --gpus-per-node={job.gpus_per_node}"] if job.gpus_per_node else []
    values["sbatch_lines"] = "\n".join(gpus + job.extra_sbatch)
    values = {k: (shlex.quote(v) if k in ("out_dir", "project_dir", "venv", "log_dir", "token_dir") else str(v))
              for k, v in values.items()}
    text = re.sub(r"@(\w+)@", lambda m: values[m.group(1)], TEMPLATE.read_text())
    return text
