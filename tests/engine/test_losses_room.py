"""The losses live in escnet.training.losses; the training programs use those very functions."""
import escnet.training.loop as loop
import escnet.training.pretrain_sam as pretrain_sam
from escnet.training import losses


def test_every_training_program_uses_the_one_loss_module():
    assert loop.segmentation_loss is losses.segmentation_loss
    assert loop.dense_clip_loss is losses.dense_clip_loss
    assert pretrain_sam.mask_losses is losses.mask_losses
    for name in ("segmentation_loss", "dense_clip_loss", "mask_losses"):
        assert getattr(losses, name).__module__ == "escnet.training.losses"
