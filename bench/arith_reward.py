"""The demo task's exact-answer rule written as a TRL user writes a reward function (for bench/generic_path.py)."""


def exact_answer(prompts, completions, answer, **kwargs):
    """1.0 when the completion, cut at its first end marker (the tiny model's "<eos>" text or a newline) and
    stripped, is the answer; else 0.0."""
    scores = []
    for completion, reference in zip(completions, answer):
        text = completion.split("<eos>", 1)[0].split("\n", 1)[0].strip()
        scores.append(1.0 if text == reference else 0.0)
    return scores
