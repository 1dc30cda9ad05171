"""grad_checkpointing: the same loss and gradients with less memory kept for the backward pass."""
import pytest
import torch
from torch.autograd.graph import saved_tensors_hooks

from escnet.models.factory import create_model


def _step(model, images, text, labels):
    """Loss, gradients and the bytes of tensors saved for backward during the forward."""
    saved = {"bytes": 0}

    def pack(t):
        saved["bytes"] += t.numel() * t.element_size()
        return t

    model.zero_grad(set_to_none=True)
    with saved_tensors_hooks(pack, lambda t: t):
        logits = model(images, text)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, saved["bytes"]


@pytest.mark.parametrize("arch", ["escnet", "catseg"])
def test_checkpointing_gives_the_same_gradients_with_less_saved_memory(arch):
    torch.manual_seed(0)
    model = create_model(arch, "tiny").train().requires_grad_(True)
    crop = model.cfg.crop_size
    images = torch.rand(2, 3, crop, crop) * 255
    text = torch.nn.functional.normalize(torch.randn(12, model.cfg.clip.embed_dim), dim=-1)
    labels = (torch.rand(2, 12, crop, crop) > 0.9).float()
    loss_a, grads_a, bytes_a = _step(model, images, text, labels)
    model.cfg.grad_checkpointing = True
    loss_b, grads_b, bytes_b = _step(model, images, text, labels)
    assert torch.allclose(loss_a, loss_b, atol=1e-6)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=1e-5, rtol=1e-4), name
    # the per-class blocks dominate what is kept; with checkpointing only their inputs are
    assert bytes_b < 0.5 * bytes_a, (bytes_a, bytes_b)
    # inference is unaffected
    model.eval()
    with torch.no_grad():
        out = model(images, text)
    assert out.shape == (2, 12, crop, crop)
