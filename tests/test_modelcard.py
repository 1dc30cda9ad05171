from escnet.training.config import TrainConfig
from escnet.modelcard import render_model_card
from escnet.lifecycle import load_pretrained, save_pretrained
from escnet.models.factory import create_model


def test_saved_model_has_a_card_with_config_training_metrics_and_licence(tmp_path):
    model = create_model("escnet", "tiny")
    training = TrainConfig(dataset="synthetic", max_iters=1200, batch_size=8).to_dict()
    out = save_pretrained(model, tmp_path / "m", card={"training": training, "metrics": {"mIoU": 41.234, "pACC": 80.0}})
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: escnet\npipeline_tag: image-segmentation\n")
    assert "- training data: synthetic" in card and "- iterations: 1200" in card and "- batch size: 8" in card
    assert "| mIoU | 41.23 |" in card
    assert "Apache-2.0" in card and "MIT" in card  # the terms a trained model inherits
    assert '"arch": "escnet"' in card
    assert load_pretrained(out).cfg == model.cfg


def test_card_without_training_record_says_so():
    card = render_model_card({"arch": "catseg"}, source="CAT-Seg's model_large.pth", licence="MIT")
    assert "license: mit" in card and "Not recorded with this model" in card and "None recorded" in card
    assert "Weights: CAT-Seg's model_large.pth" in card
