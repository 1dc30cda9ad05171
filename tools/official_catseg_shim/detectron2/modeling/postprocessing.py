"""detectron2.modeling.postprocessing: `sem_seg_postprocess`."""
from __future__ import annotations

import torch.nn.functional as F


def sem_seg_postprocess(result, img_size, output_height: int, output_width: int):
    """result (C, H, W): crop to img_size (the unpadded input size), then bilinear (align_corners=False)
    to (output_height, output_width) -> (C, output_height, output_width)."""
    result = result[:, : img_size[0], : img_size[1]].expand(1, -1, -1, -1)
    return F.interpolate(result, size=(output_height, output_width), mode="bilinear", align_corners=False)[0]
