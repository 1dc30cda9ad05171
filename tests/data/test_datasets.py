import numpy as np
import pytest
from PIL import Image

from escnet.data.datasets import GENERATED, LAYOUTS, DatasetError, get_dataset, load_custom_dataset, read_label
from escnet.data.vocab import BENCHMARK_VOCABULARIES, VocabularyError, benchmark_vocabulary

LENGTHS = {"coco171": 171, "ade150": 150, "ade847": 847, "pc59": 59, "pc459": 459, "voc20": 20, "voc20b": 59}


@pytest.mark.parametrize("name,length", LENGTHS.items())
def test_benchmark_vocabularies_have_their_lengths(name, length):
    names = benchmark_vocabulary(name)
    assert len(names) == length
    assert all(n.strip() == n and n for n in names)


def test_vocabulary_spot_checks():
    ade847 = benchmark_vocabulary("ade847")
    assert ade847[0] == "wall" and ade847[1] == "building, edifice"
    assert ade847[846] == "adding machine, totalizer, totaliser"
    assert [n.split(",")[0] for n in ade847].count("bag") == 3      # duplicates by first synonym are real
    assert benchmark_vocabulary("ade150")[7] == "bed" and benchmark_vocabulary("ade150")[149] == "flag"
    assert benchmark_vocabulary("pc459")[0] == "accordion" and benchmark_vocabulary("pc459")[-1] == "wool"
    voc20b = benchmark_vocabulary("voc20b")
    assert voc20b[:20] == benchmark_vocabulary("voc20") and sorted(voc20b) == sorted(benchmark_vocabulary("pc59"))


def test_every_benchmark_name_has_one_layout():
    assert sorted(LAYOUTS) == sorted(BENCHMARK_VOCABULARIES)


@pytest.mark.parametrize("name", ["coco171", "coco", "COCO-Stuff", "coco-stuff"])
def test_every_spelling_of_coco_stuff_finds_its_folders(name, tmp_path):
    with pytest.raises(DatasetError, match=r"coco-stuff: label folder .*coco-stuff.annotations_detectron2.val2017"):
        get_dataset(name, tmp_path)


def test_unprepared_benchmark_points_to_escnet_prepare(tmp_path):
    with pytest.raises(DatasetError, match="escnet prepare ade150"):
        get_dataset("ade150", tmp_path)
    with pytest.raises(DatasetError) as caught:
        get_dataset("ade151", tmp_path)
    assert str(caught.value) == (
        "unknown dataset 'ade151'; known: coco-stuff (or coco171, coco), ade150, ade847, pc59, pc459, voc20, voc20b, "
        f"{', '.join(GENERATED)}, or a folder with images/, labels/, classes.txt")
    with pytest.raises(DatasetError, match="no split 'train'"):
        get_dataset("ade150", tmp_path, split="train")


def test_benchmark_label_without_image_is_named(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    (base / "images" / "validation").mkdir(parents=True)
    (base / "annotations_detectron2" / "validation").mkdir(parents=True)
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(base / "annotations_detectron2" / "validation" / "ADE_val_1.png")
    with pytest.raises(DatasetError, match="ADE_val_1"):
        get_dataset("ade150", tmp_path)


def test_datasets_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "elsewhere"))
    with pytest.raises(DatasetError, match="elsewhere"):
        get_dataset("voc20")


def _custom(root, n=3, size=(6, 5)):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("sky\nbuilding, edifice\n\ntree\n")
    for i in range(n):
        Image.fromarray(np.full(size[::-1] + (3,), 40 * i, np.uint8)).save(root / "images" / f"img{i}.jpg")
        lab = np.full(size[::-1], i % 3, np.uint8)
        lab[0, 0] = 255
        Image.fromarray(lab).save(root / "labels" / f"img{i}.png")
    return root


def test_custom_dataset_loads(tmp_path):
    ds = load_custom_dataset(_custom(tmp_path))
    assert len(ds) == 3 and ds.class_names == ["sky", "building, edifice", "tree"]
    image, label = ds[2]
    assert image.shape == (5, 6, 3) and image.dtype == np.uint8
    assert label.dtype == np.int64 and label[0, 0] == 255 and label[1, 1] == 2


def test_custom_dataset_missing_label(tmp_path):
    root = _custom(tmp_path)
    (root / "labels" / "img1.png").unlink()
    with pytest.raises(DatasetError, match=r"missing label.*img1\.jpg"):
        load_custom_dataset(root)


def test_custom_dataset_size_mismatch(tmp_path):
    root = _custom(tmp_path)
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(root / "labels" / "img0.png")
    with pytest.raises(DatasetError, match=r"labels/img0\.png is 3x3 but image .*img0\.jpg is 6x5"):
        load_custom_dataset(root)


def test_custom_dataset_unreadable_image(tmp_path):
    root = _custom(tmp_path)
    (root / "images" / "img2.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    with pytest.raises(DatasetError, match=r"cannot read image .*img2\.jpg"):
        load_custom_dataset(root)


def test_custom_dataset_label_values_out_of_range(tmp_path):
    root = _custom(tmp_path)
    Image.fromarray(np.full((5, 6), 7, np.uint8)).save(root / "labels" / "img1.png")
    ds = load_custom_dataset(root)
    with pytest.raises(DatasetError, match=r"img1\.png has values \[7\] outside the class range 0\.\.2"):
        ds[1]


def test_custom_dataset_other_checks(tmp_path):
    root = _custom(tmp_path)
    Image.fromarray(np.zeros((5, 6, 3), np.uint8)).save(root / "labels" / "img0.png")
    with pytest.raises(DatasetError, match="RGB"):
        load_custom_dataset(root)
    with pytest.raises(DatasetError, match="ignore label 1 is also class 1"):
        load_custom_dataset(_custom(tmp_path / "b"), ignore_label=1)
    with pytest.raises(VocabularyError, match="class file .*missing.txt' not found"):
        load_custom_dataset(_custom(tmp_path / "c"), class_file=tmp_path / "missing.txt")
    root_e = _custom(tmp_path / "e")
    Image.fromarray(np.zeros((5, 6, 3), np.uint8)).save(root_e / "images" / "img0.png")
    with pytest.raises(DatasetError, match="share a name"):
        load_custom_dataset(root_e)
    (tmp_path / "d" / "images").mkdir(parents=True)
    with pytest.raises(DatasetError, match="label folder"):
        load_custom_dataset(tmp_path / "d")


def test_read_label_keeps_16_bit_values(tmp_path):
    lab = np.array([[0, 846], [65535, 300]], np.uint16)
    Image.fromarray(lab).save(tmp_path / "x.tif")
    np.testing.assert_array_equal(read_label(tmp_path / "x.tif"), lab.astype(np.int64))


def test_custom_dataset_classes_are_read_as_vocabularies_are(tmp_path):
    """escnet.data.vocab.read_class_file: synonyms kept, first synonyms may repeat, empty synonyms named."""
    root = _custom(tmp_path / "a")
    (root / "classes.txt").write_text("\ufeffbag\nbag,  handbag\ntree\n")
    assert load_custom_dataset(root).class_names == ["bag", "bag, handbag", "tree"]
    (root / "classes.txt").write_text("sky\nbuilding,\ntree\n")
    with pytest.raises(VocabularyError, match="empty synonym in class 'building, ' at class 2 of class file"):
        load_custom_dataset(root)
