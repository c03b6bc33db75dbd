"""E2E loaders on the real data (../shared/data/e2e), and a test split built in tmp_path."""

import csv
import gzip
import io
import shutil

import pytest

from lorafit.errors import DataError
from lorafit.tasks import get_task
from lorafit.tasks.e2e import format_prompt, read_pairs

SAMPLE_MR = (
    "name[The Vaults], eatType[pub], priceRange[more than £30], customer rating[5 out of 5], near[Café Adriatic]"
)
SAMPLE_REF = "The Vaults pub near Café Adriatic has a 5 star rating.  Prices start at £30."


@pytest.fixture(scope="module")
def task():
    return get_task("e2e")


def test_record(task):
    assert (task.kind, task.num_labels, task.splits) == ("generation", 0, ("train", "dev", "test"))
    assert task.main_metric == "BLEU"  # a key of lorafit.eval.metrics.e2e.score_e2e's result


@pytest.mark.parametrize(("split", "rows", "mrs"), [("train", 42061, 4862), ("dev", 4672, 547)])
def test_counts(task, data_dir, split, rows, mrs):
    examples = task.load_train(data_dir, split, None)
    items = task.load_eval(data_dir, split, None)
    assert len(examples) == rows
    assert len(items) == mrs
    assert sum(len(item.references) for item in items) == rows
    assert len({item.prompt for item in items}) == mrs  # the prompt keeps distinct MRs distinct


def test_sample_row(task, data_dir):
    first = task.load_train(data_dir, "train", None)[0]
    assert first.prompt == (
        "Describe this restaurant.\n"
        "name: The Vaults | eatType: pub | priceRange: more than £30 | customer rating: 5 out of 5 | "
        "near: Café Adriatic\nDescription:"
    )
    assert first.completion == " " + SAMPLE_REF  # inner double space kept
    item = task.load_eval(data_dir, "train", None)[0]
    assert item.meta["mr"] == SAMPLE_MR and item.references[0] == SAMPLE_REF


def test_eval_items_group_by_mr_in_first_appearance_order(task, data_dir):
    pairs = read_pairs(data_dir, "dev")
    items = task.load_eval(data_dir, "dev", None)
    assert [item.meta["mr"] for item in items] == list(dict.fromkeys(mr for mr, _ in pairs))
    first_mr = pairs[0][0]
    assert items[0].references == tuple(ref for mr, ref in pairs if mr == first_mr)
    assert items[0].prompt == format_prompt(first_mr)


def test_references_verbatim_completion_stripped(task, data_dir):
    pairs = read_pairs(data_dir, "train")
    multiline = [ref for _, ref in pairs if "\r\n" in ref]
    assert len(multiline) == 2  # one quoted reference with a line break, present twice
    index = next(i for i, (_, ref) in enumerate(pairs) if ref.endswith(" "))
    assert task.load_train(data_dir, "train", None)[index].completion == " " + pairs[index][1].strip()


def test_format_prompt():
    assert format_prompt("name[Aromi], area[city centre]") == (
        "Describe this restaurant.\nname: Aromi | area: city centre\nDescription:"
    )
    assert format_prompt("just some text") == "Describe this restaurant.\njust some text\nDescription:"


def _copy_rows(source_rows, path, n):
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["mr", "ref"])
        writer.writerows(source_rows[:n])


def test_test_split_and_plain_trainset(task, data_dir, tmp_path):
    pairs = read_pairs(data_dir, "dev")
    (tmp_path / "e2e").mkdir()
    _copy_rows(pairs, tmp_path / "e2e" / "testset_w_refs.csv", 20)
    assert [(e.prompt, e.completion) for e in task.load_train(tmp_path, "test", None)] == [
        (format_prompt(mr), " " + ref.strip()) for mr, ref in pairs[:20]
    ]
    items = task.load_eval(tmp_path, "test", None)
    assert len(items) == len({mr for mr, _ in pairs[:20]})
    # an uncompressed trainset.csv (as in the official zip) is read too
    with gzip.open(data_dir / "e2e" / "trainset.csv.gz", "rt", encoding="utf-8", newline="") as f:
        head = list(csv.reader(io.StringIO(f.read(20000), newline="")))[1:6]
    _copy_rows(head, tmp_path / "e2e" / "trainset.csv", 5)
    assert task.load_train(tmp_path, "train", None)[0].completion == " " + SAMPLE_REF


def test_missing_and_bad_files(task, data_dir, tmp_path):
    with pytest.raises(DataError) as err:
        task.load_train(tmp_path, "test", None)
    message = str(err.value)
    assert "task e2e, split test: testset_w_refs.csv" in message and str(tmp_path / "e2e") in message
    assert "trainset.csv.gz or trainset.csv (train), devset.csv" in message
    with pytest.raises(DataError, match=r"unknown split 'valid' \(valid: train, dev, test\)"):
        task.load_eval(data_dir, "valid", None)
    (tmp_path / "e2e").mkdir()
    shutil.copy(data_dir / "e2e" / "testset.csv", tmp_path / "e2e" / "devset.csv")  # MR only, no refs
    with pytest.raises(DataError, match=r"devset\.csv has no column 'ref' \(columns: mr\)"):
        task.load_eval(tmp_path, "dev", None)
    (tmp_path / "e2e" / "devset.csv").write_text("mr,ref\n")
    with pytest.raises(DataError, match=r"devset\.csv has no data rows"):
        task.load_eval(tmp_path, "dev", None)
    (tmp_path / "e2e" / "devset.csv").write_bytes(b"mr,ref\nname[A],ok\nname[B],caf\xe9\n")
    with pytest.raises(DataError, match=r"devset\.csv is not UTF-8: byte 0xe9 at offset 29 \(line 3\)"):
        task.load_eval(tmp_path, "dev", None)
    (tmp_path / "e2e" / "devset.csv").write_text("mr,ref\nname[A],\n")
    with pytest.raises(DataError, match=r"devset\.csv line 2: empty ref"):
        task.load_eval(tmp_path, "dev", None)
