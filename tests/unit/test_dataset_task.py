"""Your data as a task (task.type=dataset): every file format, chat prompts, row checks that name the file, the
row and the column, over-long prompts left out and counted, held-out sets, and GSM8K through the same path."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from areal.config import EngineConfig, RolloutConfig, TaskConfig, TrainConfig
from areal.config.eval_sets import EvalSetConfig
from rollouts.data.columns import DatasetRowError
from rollouts.data.sources import DatasetSourceError
from rollouts.rewards.base import RewardInput
from rollouts.tasks.dataset import load_dataset_task

CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}|{% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")
ROWS = [{"prompt": f"{i}+{i}=", "answer": str(2 * i)} for i in range(10)]


@pytest.fixture(scope="module")
def char_tokenizer():
    from launch.tiny_model import build_char_tokenizer

    return build_char_tokenizer()


@pytest.fixture(scope="module")
def chat_tokenizer():
    from launch.tiny_model import build_char_tokenizer

    tokenizer = build_char_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def config(max_model_len=64, max_new_tokens=8, **task) -> TrainConfig:
    task = {"type": "dataset", "rewards": ["math_verify"], "eval_size": 2, **task}
    return TrainConfig(task=TaskConfig(**task), engine=EngineConfig(max_model_len=max_model_len),
                       rollout=RolloutConfig(max_new_tokens=max_new_tokens))


def write(path, rows):
    """``rows`` in the format the suffix names."""
    suffix = path.suffix
    if suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif suffix == ".json":
        path.write_text(json.dumps(rows))
    elif suffix == ".csv":
        keys = list(rows[0])
        path.write_text(",".join(keys) + "\n" + "".join(",".join(str(r[k]) for k in keys) + "\n" for r in rows))
    elif suffix == ".arrow":
        import datasets

        datasets.Dataset.from_list(rows).save_to_disk(str(path.parent / "saved"))
        path.write_bytes(next((path.parent / "saved").glob("*.arrow")).read_bytes())
    return path


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".json", ".csv", ".arrow"])
def test_each_file_format_gives_the_same_samples(tmp_path, char_tokenizer, suffix):
    path = write(tmp_path / f"train{suffix}", ROWS)
    task = load_dataset_task(config(path=str(path)), char_tokenizer)
    assert len(task.train) == 8 and len(task.eval) == 2
    samples = sorted(list(task.train) + list(task.eval), key=lambda s: int(s.id.split(":")[1]))
    assert [(s.prompt, s.reference) for s in samples] == [(r["prompt"], r["answer"]) for r in ROWS]
    assert samples[3].id == f"train{suffix}:3" and samples[3].columns["prompt"] == "3+3="  # CSV reads "6" as 6


def test_a_save_to_disk_directory_and_a_dataset_dict_split(tmp_path, char_tokenizer):
    import datasets

    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "one"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:6]),
                          "test": datasets.Dataset.from_list(ROWS[6:])}).save_to_disk(str(tmp_path / "both"))
    assert len(load_dataset_task(config(path=str(tmp_path / "one")), char_tokenizer).train) == 8
    task = load_dataset_task(config(path=str(tmp_path / "both"), eval_split="test", eval_size=3), char_tokenizer)
    assert len(task.train) == 6 and [s.prompt for s in task.eval] == ["6+6=", "7+7=", "8+8="]
    with pytest.raises(DatasetSourceError, match="not 'valid'.*task.split"):
        load_dataset_task(config(path=str(tmp_path / "both"), split="valid"), char_tokenizer)


def test_a_list_of_files_is_one_dataset_and_errors_name_the_file(tmp_path, char_tokenizer):
    a, b = write(tmp_path / "a.parquet", ROWS[:5]), write(tmp_path / "b.jsonl", ROWS[5:])
    task = load_dataset_task(config(path=[str(a), str(b)]), char_tokenizer)
    assert len(task.train) + len(task.eval) == 10
    assert {s.id.split(":")[0] for s in list(task.train) + list(task.eval)} == {"a.parquet", "b.jsonl"}
    write(b, [*ROWS[5:7], {"prompt": "x="}])
    with pytest.raises(DatasetRowError, match=r"b\.jsonl, row 2 \(0-based\), column 'answer': is empty"):
        load_dataset_task(config(path=[str(a), str(b)]), char_tokenizer)


def test_chat_prompts_keep_their_system_turn_and_render_through_the_template(tmp_path, chat_tokenizer):
    rows = [{"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"{i}+1"}],
             "answer": str(i + 1)} for i in range(5)]
    task = load_dataset_task(config(path=str(write(tmp_path / "chat.parquet", rows)), eval_size=1,
                                    max_model_len=128), chat_tokenizer)
    sample = task.train[0]
    assert sample.is_chat and sample.prompt[0] == {"role": "system", "content": "Be brief."}
    from rollouts.prompt_format import PromptFormat

    assert PromptFormat("auto", system_prompt="ignored: the row has its own").render(chat_tokenizer, sample.prompt) \
        == f"<system>Be brief.|<user>{sample.prompt[1]['content']}|<assistant>"


def test_a_conversation_ending_with_the_assistant_is_a_prefill_the_model_continues(tmp_path, chat_tokenizer):
    from rollouts.prompt_format import PromptFormat, prefill

    rows = [{"prompt": [{"role": "user", "content": f"{i}+1"}, {"role": "assistant", "content": "<think>"}],
             "answer": str(i + 1)} for i in range(4)]
    task = load_dataset_task(config(path=str(write(tmp_path / "pre.parquet", rows)), eval_size=1,
                                    max_model_len=128), chat_tokenizer)
    sample = task.train[0]
    rendered = PromptFormat("auto").render(chat_tokenizer, sample.prompt)
    assert rendered.endswith("|<assistant><think>|") or rendered.endswith("<assistant><think>")
    assert prefill(sample.prompt) == "<think>" and prefill("text") == ""


def test_chat_prompts_need_a_chat_template(tmp_path, char_tokenizer, chat_tokenizer):
    rows = [{"prompt": [{"role": "user", "content": "1+1"}], "answer": "2"}] * 4
    path = str(write(tmp_path / "chat.parquet", rows))
    with pytest.raises(DatasetRowError, match="no chat template.*task.chat_template"):
        load_dataset_task(config(path=path, eval_size=1), char_tokenizer)
    with pytest.raises(DatasetRowError, match="task.chat_template=none"):
        load_dataset_task(config(path=path, eval_size=1, chat_template="none"), chat_tokenizer)


@pytest.mark.parametrize("bad, where, problem", [
    ({"prompt": None, "answer": "1"}, "row 3 (0-based), column 'prompt'", "is empty"),
    ({"prompt": "", "answer": "1"}, "row 3 (0-based), column 'prompt'", "is an empty string"),
    ({"prompt": "1+1=", "answer": None}, "row 3 (0-based), column 'answer'", "is empty"),
])
def test_a_bad_row_names_the_file_the_row_and_the_column(tmp_path, char_tokenizer, bad, where, problem):
    path = write(tmp_path / "data.jsonl", [*ROWS[:3], bad, *ROWS[3:]])
    with pytest.raises(DatasetRowError, match=rf"data\.jsonl, {where.replace('(', '[(]').replace(')', '[)]')}: "
                                              rf"{problem}"):
        load_dataset_task(config(path=str(path)), char_tokenizer)


@pytest.mark.parametrize("rows, problem", [
    ([{"prompt": 7, "answer": "1"}] * 3, "column 'prompt': holds int64; expected a prompt string or a list"),
    ([{"prompt": "1", "answer": [1]}] * 3, "column 'answer': holds list<item: int64>; expected the reference"),
    ([{"prompt": [{"role": "user", "content": "q"}], "answer": "1"},
      {"prompt": [{"role": "robot", "content": "q"}], "answer": "1"}], "row 1 .* message 0 has role 'robot'"),
    ([{"prompt": [{"role": "user", "content": "q"}], "answer": "1"}, {"prompt": [], "answer": "1"}],
     "row 1 .* empty conversation"),
])
def test_mistyped_columns_and_bad_messages_are_refused(tmp_path, chat_tokenizer, rows, problem):
    path = write(tmp_path / "bad.parquet", rows)
    with pytest.raises(DatasetRowError, match=rf"bad\.parquet.*{problem.replace('[', '.').replace(']', '.')}"):
        load_dataset_task(config(path=str(path), eval_size=1), chat_tokenizer)


def test_a_missing_column_names_the_key_and_the_columns_there_are(tmp_path, char_tokenizer):
    path = str(write(tmp_path / "q.parquet", [{"question": "1+1=", "solution": "2"}] * 4))
    with pytest.raises(DatasetRowError, match=r"no column 'prompt' \(task.prompt_key\).*\['question', 'solution'\]"):
        load_dataset_task(config(path=path, eval_size=1), char_tokenizer)
    with pytest.raises(DatasetRowError, match=r"no column 'answer' \(task.answer_key\)"):
        load_dataset_task(config(path=path, eval_size=1, prompt_key="question"), char_tokenizer)
    task = load_dataset_task(config(path=path, eval_size=1, prompt_key="question", answer_key="solution"),
                             char_tokenizer)
    assert task.train[0].prompt == "1+1=" and task.train[0].reference == "2"
    with pytest.raises(DatasetRowError, match=r"no column 'problem' \(task.prompt_template\)"):
        load_dataset_task(config(path=path, eval_size=1, prompt_template="Solve {problem}"), char_tokenizer)


def test_a_prompt_template_builds_the_prompt_from_columns(tmp_path, char_tokenizer):
    rows = [{"a": i, "b": "x", "answer": "1"} for i in range(4)]
    task = load_dataset_task(config(path=str(write(tmp_path / "t.parquet", rows)), eval_size=1,
                                    prompt_template="Solve: {a} and {b}"), char_tokenizer)
    assert sorted(s.prompt for s in list(task.train) + list(task.eval)) == [f"Solve: {i} and x" for i in range(4)]


def test_over_long_prompts_are_left_out_and_counted(tmp_path, char_tokenizer):
    # budget: 32 - 8 = 24 tokens; the char tokenizer gives one token per character
    rows = [{"prompt": "x" * n + "=", "answer": "1"} for n in (5, 23, 24, 30, 200, 6)]
    task = load_dataset_task(config(path=str(write(tmp_path / "long.parquet", rows)), max_model_len=32,
                                    eval_size=1), char_tokenizer)
    kept = sorted(len(s.prompt) for s in list(task.train) + list(task.eval))
    assert kept == [6, 7, 24]
    assert "3 left out, their prompts longer than 24 tokens" in task.report[0]


def test_held_out_rows_are_drawn_with_the_seed_and_never_trained_on(tmp_path, char_tokenizer):
    path = str(write(tmp_path / "d.parquet", ROWS))
    first, again = (load_dataset_task(config(path=path, eval_size=3, seed=1), char_tokenizer) for _ in range(2))
    other = load_dataset_task(config(path=path, eval_size=3, seed=2), char_tokenizer)
    assert [s.id for s in first.eval] == [s.id for s in again.eval] != [s.id for s in other.eval]
    assert not {s.id for s in first.eval} & {s.id for s in first.train}
    assert first.digest() == again.digest() != other.digest()
    with pytest.raises(DatasetRowError, match="task.eval_size=10"):
        load_dataset_task(config(path=path, eval_size=10), char_tokenizer)


def test_named_eval_sets_with_their_own_columns(tmp_path, char_tokenizer):
    train = str(write(tmp_path / "train.parquet", ROWS))
    hard = str(write(tmp_path / "hard.parquet", [{"q": f"{i}*{i}=", "a": str(i * i)} for i in range(6)]))
    cfg = config(path=train, eval_sets=[EvalSetConfig(name="hard", path=hard, prompt_key="q", answer_key="a",
                                                      size=4)])
    task = load_dataset_task(cfg, char_tokenizer)
    assert list(task.eval_sets) == ["eval", "hard"]
    assert [(s.prompt, s.reference) for s in task.eval_sets["hard"]] == [("0*0=", "0"), ("1*1=", "1"), ("2*2=", "4"),
                                                                         ("3*3=", "9")]


def test_the_digest_follows_the_bytes_of_the_data(tmp_path, char_tokenizer):
    path = tmp_path / "d.parquet"
    write(path, ROWS)
    before = load_dataset_task(config(path=str(path)), char_tokenizer).digest()
    write(path, [*ROWS[:-1], {"prompt": "9+9=", "answer": "19"}])
    assert load_dataset_task(config(path=str(path)), char_tokenizer).digest() != before


def test_a_missing_file_and_an_unreachable_hub_name_fail_in_one_line(tmp_path, char_tokenizer, monkeypatch):
    with pytest.raises(DatasetSourceError, match="no such file"):
        load_dataset_task(config(path=str(tmp_path / "nope.parquet")), char_tokenizer)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DatasetSourceError) as error:
        load_dataset_task(config(path="someone/some_dataset"), char_tokenizer)
    message = str(error.value)
    assert "\n" not in message and "offline" in message and "save_to_disk" in message and "local" in message


# GSM8K: the rows and rewards of the task that used to be separate, through the dataset path
GSM8K_ROWS = [{"question": f"Tom has {i} apples and buys 1,000 more. How many?",
               "answer": f"{i} + 1000 = {i + 1000}\n#### {i + 1000:,}"} for i in range(5)]


def test_gsm8k_is_a_dataset_with_its_template_and_math_verify(tmp_path, char_tokenizer):
    path = tmp_path / "gsm8k.jsonl"
    write(path, GSM8K_ROWS)
    cfg = TrainConfig(task=TaskConfig(type="gsm8k", path=str(path), eval_size=2),
                      engine=EngineConfig(max_model_len=256), rollout=RolloutConfig(max_new_tokens=16))
    task = load_dataset_task(cfg, char_tokenizer)
    assert cfg.task.reward_names == ["math_verify"]
    sample = next(s for s in list(task.train) + list(task.eval) if s.id == "gsm8k.jsonl:3")
    assert sample.prompt == "Question: Tom has 3 apples and buys 1,000 more. How many?\nAnswer:"
    from rollouts.rewards.builtin import MathVerifyReward
    from rollouts.rewards.base import RewardSettings

    reward = MathVerifyReward(RewardSettings())
    assert reward(RewardInput("3 + 1000 = 1003\n#### 1003"), sample) == 1.0
    assert reward(RewardInput("#### 1,004"), sample) == 0.0


@pytest.mark.parametrize(
    "completion, expected",
    [("He pays 10 + 62 = 72 dollars.\n#### 72", 1.0), ("#### 72<eos>#### 5", 1.0), ("so the answer is 72", 1.0),
     ("The answer is $\\boxed{72}$.", 1.0), ("#### 72.0", 1.0), ("#### 73", 0.0), ("72 then 12", 0.0),
     ("no number here", 0.0), ("", 0.0)],
)
def test_gsm8k_completions_score_as_the_old_task_scored_them(completion, expected):
    from rollouts.rewards.base import RewardSettings
    from rollouts.rewards.builtin import MathVerifyReward
    from rollouts.tasks.base import TaskSample

    sample = TaskSample("x", "Question: ...\nAnswer:", "Janet pays 10 + 62 = 72.\n#### 72")
    assert MathVerifyReward(RewardSettings())(RewardInput(completion), sample) == expected
