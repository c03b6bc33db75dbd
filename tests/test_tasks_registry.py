"""The task registry and the data directory lookup."""

import pytest

from lorafit.errors import DataError
from lorafit.recipe.schema import DataConfig
from lorafit.tasks import DATA_ENV, TASK_NAMES, get_task, resolve_data_dir


def test_task_names():
    assert TASK_NAMES == (
        "e2e", "glue/cola", "glue/mrpc", "glue/qnli", "glue/rte", "glue/sst2", "glue/stsb", "glue/wnli",
        "quickstart", "text", "wikisql",
    )
    for name in TASK_NAMES:
        if name != "text":
            assert get_task(name).name == name
            assert get_task(name, DataConfig(train_file="ignored.jsonl")).name == name


def test_unknown_task_lists_names_and_suggests():
    with pytest.raises(DataError, match=r"unknown task 'glue/sst' \(valid: e2e, glue/cola, .*\); did you mean 'glue/sst2'\?"):
        get_task("glue/sst")
    with pytest.raises(DataError, match=r"did you mean 'wikisql'"):
        get_task("wikisq")
    with pytest.raises(DataError) as err:
        get_task("zzzzzz")
    assert "did you mean" not in str(err.value)


def test_text_needs_options():
    with pytest.raises(DataError, match=r"task text needs a data: section"):
        get_task("text")
    task = get_task("text", DataConfig(train_file="t.jsonl", completion_field="out", prompt_template="{inp}"))
    assert (task.name, task.kind, task.splits) == ("text", "generation", ("train",))
    assert task.needs_data_dir  # a relative path: resolved against the data directory
    absolute = DataConfig(train_file="/abs/t.jsonl", valid_file="/abs/v.csv", label_field="y", text_field="x",
                           num_labels=2)
    assert not get_task("text", absolute).needs_data_dir
    assert get_task("text", absolute).splits == ("train", "dev")
    assert get_task("glue/sst2").needs_data_dir and not get_task("quickstart").needs_data_dir


def test_resolve_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_ENV, raising=False)
    with pytest.raises(DataError, match=r"set data_dir: in the recipe, or the environment variable LORAFIT_DATA"):
        resolve_data_dir(None)
    assert resolve_data_dir(str(tmp_path)) == tmp_path
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "from_env"))
    with pytest.raises(DataError, match=rf"data directory {tmp_path / 'from_env'} \(from \$LORAFIT_DATA\) does not exist"):
        resolve_data_dir(None)
    (tmp_path / "from_env").mkdir()
    assert resolve_data_dir(None) == tmp_path / "from_env"
    assert resolve_data_dir(str(tmp_path)) == tmp_path  # the recipe wins over the environment
    with pytest.raises(DataError, match=r"from the recipe's data_dir\) does not exist"):
        resolve_data_dir(str(tmp_path / "nope"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match=r"is not a directory"):
        resolve_data_dir(str(tmp_path / "file"))
