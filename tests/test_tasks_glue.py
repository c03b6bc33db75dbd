"""GLUE loaders on the real data (../shared/data/glue), and their errors on small files in tmp_path."""

from collections import Counter
from pathlib import Path

import pytest

from lorafit.errors import DataError
from lorafit.tasks import get_task
from lorafit.tasks.glue import SPECS, load_mrpc_rows

COUNTS = {
    ("glue/sst2", "train"): 67349,
    ("glue/sst2", "dev"): 872,
    ("glue/cola", "train"): 8551,
    ("glue/cola", "dev"): 1043,
    ("glue/mrpc", "train"): 3668,
    ("glue/mrpc", "dev"): 408,
    ("glue/rte", "train"): 2490,
    ("glue/rte", "dev"): 277,
    ("glue/stsb", "train"): 5749,
    ("glue/stsb", "dev"): 1500,
    ("glue/wnli", "train"): 635,
    ("glue/wnli", "dev"): 71,
    ("glue/qnli", "dev"): 5463,
}


@pytest.mark.parametrize(("name", "split"), sorted(COUNTS))
def test_split_counts(data_dir, name, split):
    task = get_task(name)
    train = task.load_train(data_dir, split, None)
    assert len(train) == COUNTS[name, split]
    assert task.load_eval(data_dir, split, None) == train  # classification: the same examples
    labels = {type(x.label) for x in train}
    assert labels == ({float} if task.kind == "regression" else {int})
    if task.kind == "classification":
        assert {x.label for x in train} == set(range(task.num_labels))


def test_task_records():
    for name in {n for n, _ in COUNTS}:
        task = get_task(name)
        assert task.name == name
        assert task.splits == (("dev",) if name == "glue/qnli" else ("train", "dev"))
        assert task.eval_only == (name == "glue/qnli")
    stsb = get_task("glue/stsb")
    assert (stsb.kind, stsb.num_labels) == ("regression", 1)
    assert (get_task("glue/rte").kind, get_task("glue/rte").num_labels) == ("classification", 2)


def test_main_metric_matches_metrics_module():
    glue_metrics = pytest.importorskip("lorafit.eval.metrics.glue")
    for spec in SPECS.values():
        assert get_task(spec.task_name).main_metric == glue_metrics.MAIN_METRIC[spec.name]


def test_cola_labels_and_headerless_first_row(data_dir):
    train = get_task("glue/cola").load_train(data_dir, "train", None)
    assert Counter(x.label for x in train) == {1: 6023, 0: 2528}
    assert train[0].text == "Our friends won't buy this analysis, let alone the next one we propose."
    assert train[0].text_pair is None and train[0].label == 1


def test_sst2_rows_verbatim(data_dir):
    dev = get_task("glue/sst2").load_eval(data_dir, "dev", None)
    assert dev[0].text == "it 's a charming and often affecting journey . "  # trailing space kept
    assert dev[0].label == 1
    # line 33: PTB-style quotes, read exactly as they are
    assert dev[31].text == (
        "... designed to provide a mix of smiles and tears , `` crossroads '' instead provokes a handful of "
        "unintentional howlers and numerous yawns . "
    )
    assert dev[31].label == 0


def test_literal_double_quotes_are_not_csv_quoting(data_dir):
    rte = get_task("glue/rte").load_eval(data_dir, "dev", None)
    assert rte[0].label == 1  # not_entailment
    assert rte[137].text.startswith('"It\'s Only a Play" is Terrence McNally\'s "Give My Regards to Broadway,"')
    qnli = get_task("glue/qnli").load_eval(data_dir, "dev", None)
    assert qnli[0].text == "What came into force after the new constitution was herald?"
    assert qnli[0].label == 0  # entailment
    assert sum('"' in x.text_pair for x in qnli) > 0


def test_rte_qnli_label_order(data_dir):
    rte = get_task("glue/rte").load_train(data_dir, "train", None)
    assert Counter(x.label for x in rte) == {0: 1249, 1: 1241}  # entailment=0, as in HF glue/rte
    qnli = get_task("glue/qnli").load_eval(data_dir, "dev", None)
    assert Counter(x.label for x in qnli) == {0: 2702, 1: 2761}


def test_stsb_float_scores(data_dir):
    train = get_task("glue/stsb").load_train(data_dir, "train", None)
    assert (train[0].text, train[0].text_pair, train[0].label) == (
        "A plane is taking off.", "An air plane is taking off.", 5.0,
    )
    assert all(0.0 <= x.label <= 5.0 for x in train)


def test_mrpc_dev_ids_and_train(data_dir):
    ids_file = data_dir / "glue" / "MRPC" / "dev_ids.tsv"
    dev_ids = {tuple(line.split("\t")) for line in ids_file.read_text().splitlines() if line}
    dev = load_mrpc_rows(data_dir, "dev")
    assert {(a, b) for a, b, _ in dev} == dev_ids and len(dev) == 408
    train = load_mrpc_rows(data_dir, "train")
    assert not {(a, b) for a, b, _ in train} & dev_ids
    assert Counter(x.label for _, _, x in train) == {1: 2474, 0: 1194}
    # the pair GLUE's train.tsv lacks is here, read verbatim (its second sentence starts with a quote)
    (missing,) = [x for a, b, x in train if (a, b) == ("2750203", "2750153")]
    assert missing.text_pair.startswith('" This is an extremely heartrending time')
    assert missing.label == 1
    # the first dev pair (file order, as in GLUE's dev.tsv)
    assert dev[0][:2] == ("1355540", "1355592")
    assert dev[0][2].text_pair.startswith('" The foodservice pie business')


def test_splits_refused(data_dir):
    with pytest.raises(DataError, match=r"glue/sst2: unknown split 'test'.*private"):
        get_task("glue/sst2").load_eval(data_dir, "test", None)
    with pytest.raises(DataError, match=r"unknown split 'validation' \(valid: train, dev\)"):
        get_task("glue/cola").load_train(data_dir, "validation", None)
    with pytest.raises(DataError, match=r"glue/qnli: unknown split 'train' \(valid: dev\).*eval-only"):
        get_task("glue/qnli").load_train(data_dir, "train", None)


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_missing_file_names_directory_and_files(tmp_path):
    with pytest.raises(DataError) as err:
        get_task("glue/sst2").load_train(tmp_path, "train", None)
    message = str(err.value)
    assert "glue/sst2" in message and str(tmp_path / "glue" / "SST-2") in message
    assert "train.tsv (train), dev.tsv (dev)" in message and "\n" not in message
    with pytest.raises(DataError, match=r"dev_ids\.tsv"):
        write(tmp_path / "glue" / "MRPC" / "msr_paraphrase_train.txt", "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n")
        get_task("glue/mrpc").load_train(tmp_path, "train", None)


def test_malformed_files(tmp_path):
    task = get_task("glue/sst2")
    path = tmp_path / "glue" / "SST-2" / "train.tsv"
    write(path, "sentence\tlabel\n")
    with pytest.raises(DataError, match=r"glue/sst2: .*train\.tsv has no data rows"):
        task.load_train(tmp_path, "train", None)
    write(path, "text\tlabel\ngood\t1\n")
    with pytest.raises(DataError, match=r"has no column 'sentence' \(columns: text, label\)"):
        task.load_train(tmp_path, "train", None)
    write(path, "sentence\tlabel\ngood\t1\nbad\t2\n")
    with pytest.raises(DataError, match=r"train\.tsv line 3: label '2' is not one of: 0, 1"):
        task.load_train(tmp_path, "train", None)
    write(path, "sentence\tlabel\ngood\t1\nbad\t0\textra\n")
    with pytest.raises(DataError, match=r"line 3 has 3 tab-separated fields, expected 2"):
        task.load_train(tmp_path, "train", None)
    write(tmp_path / "glue" / "RTE" / "dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tneutral\n")
    with pytest.raises(DataError, match=r"label 'neutral' is not one of: entailment, not_entailment"):
        get_task("glue/rte").load_eval(tmp_path, "dev", None)


def test_non_utf8_names_file_offset_and_line(tmp_path):
    path = write(tmp_path / "glue" / "SST-2" / "dev.tsv", b"sentence\tlabel\ncaf\xe9 ok\t1\n")
    with pytest.raises(DataError) as err:
        get_task("glue/sst2").load_eval(tmp_path, "dev", None)
    assert str(path) in str(err.value)
    assert "byte 0xe9 at offset 18 (line 2)" in str(err.value)


def test_crlf_and_bom_are_tolerated(tmp_path):
    write(tmp_path / "glue" / "SST-2" / "dev.tsv", "\ufeffsentence\tlabel\r\nfine \" film\t1\r\n\r\n")
    (example,) = get_task("glue/sst2").load_eval(tmp_path, "dev", None)
    assert (example.text, example.label) == ('fine " film', 1)


@pytest.mark.parametrize("name", ["glue/cola", "glue/mrpc", "glue/stsb"])
def test_score_gold_labels(data_dir, name):
    pytest.importorskip("lorafit.eval.metrics.glue")
    task = get_task(name)
    dev = task.load_eval(data_dir, "dev", None)
    assert task.score([x.label for x in dev], dev)[task.main_metric] == pytest.approx(1.0)
    with pytest.raises(DataError, match=rf"task {name}: 1 predictions for {len(dev)} eval items"):
        task.score([dev[0].label], dev)
