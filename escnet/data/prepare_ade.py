"""ADE20K converters for `escnet prepare`: ADE-150 (SceneParsing) and ADE-847 (ADE20K full).

ADE-150 (raw: ``ADEChallengeData2016.zip``)::

    ADEChallengeData2016/images/validation/ADE_val_*.jpg
    ADEChallengeData2016/annotations/validation/ADE_val_*.png   8-bit, 0 = unlabelled, 1..150 = classes
    -> ADEChallengeData2016/annotations_detectron2/validation/*.png   value - 1 (so 0 wraps to 255 = ignore)

ADE-847 (raw: ``ADE20K_2021_17_01`` from the ADE20K site)::

    ADE20K_2021_17_01/index_ade20k.pkl                  lists 'folder' and 'filename' of every image
    ADE20K_2021_17_01/images/ADE/validation/<scene...>/ADE_val_*.jpg  and  *_seg.png
    -> ADE20K_2021_17_01/images_detectron2/validation/ADE_val_*.jpg   re-encoded (PIL JPEG defaults)
    -> ADE20K_2021_17_01/annotations_detectron2/validation/ADE_val_*.tif   uint16, 65535 = ignore

The object class of a pixel of ``*_seg.png`` is ``R // 10 * 256 + G`` (ADE20K's own toolkit);
`ADE847_CLASS_IDS` lists the object classes of the 847 benchmark classes in train-id order (the
``id`` fields of MaskFormer's / CAT-Seg's ``ADE20K_SEM_SEG_FULL_CATEGORIES``), every other class
becomes 65535. Images whose short side exceeds 512 are shrunk so that it is 512 (label: nearest
neighbour exactly as cv2.INTER_NEAREST; image: cv2.INTER_LINEAR's grid, within 1 grey level).
Only the validation split is produced (the benchmark); images are re-encoded even when not resized,
as MaskFormer's script does, so the pixels a model sees match the published protocol.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from escnet.data.prepare import (
    PrepareError, mark_prepared, open_array, require_dir, require_file, resize_bilinear_uint8,
    resize_nearest, run_jobs, save_array, short_side_size, start_output, summarize,
)

ADE847_IGNORE = 65535

# Object class (``R // 10 * 256 + G`` in *_seg.png) of train id 0..846.
ADE847_CLASS_IDS = (
    2978, 312, 2420, 2855, 2131, 976, 447, 165, 2377, 838, 350, 1831, 1125, 3055, 401, 1610,
    1910, 2684, 471, 687, 774, 2473, 2264, 1735, 2994, 1564, 1276, 2178, 2329, 57, 907, 913,
    1395, 2138, 2272, 2128, 724, 155, 2053, 2380, 689, 1788, 3087, 2530, 581, 2388, 2985, 2454,
    2096, 137, 294, 212, 2185, 524, 2212, 943, 1869, 2251, 2793, 2423, 1121, 266, 1948, 1744,
    783, 571, 627, 629, 491, 1374, 223, 3016, 2598, 978, 239, 608, 236, 2531, 2616, 591,
    327, 2679, 1451, 181, 420, 2821, 1023, 855, 2733, 2928, 1240, 77, 1969, 2880, 14, 1936,
    2828, 631, 103, 3144, 308, 1282, 38, 1563, 29, 480, 2569, 247, 187, 778, 2243, 1941,
    2833, 120, 95, 2836, 1087, 868, 1401, 220, 47, 843, 123, 2537, 1927, 2337, 1702, 64,
    249, 642, 1981, 609, 2840, 2586, 1393, 2704, 1304, 146, 1494, 2739, 389, 1551, 131, 738,
    161, 747, 1919, 3109, 2179, 2989, 206, 1930, 1002, 2254, 1708, 2526, 160, 2901, 2262, 44,
    597, 2235, 1260, 682, 2151, 3107, 432, 1098, 2932, 461, 410, 2046, 533, 1481, 1858, 894,
    1322, 1891, 1756, 49, 1272, 1229, 2850, 1784, 2962, 259, 319, 954, 1974, 1013, 2356, 97,
    318, 592, 2885, 1017, 851, 1407, 1332, 303, 2714, 1924, 1346, 1081, 1583, 2727, 2509, 2123,
    602, 202, 10, 490, 530, 2213, 1884, 2934, 2687, 387, 2668, 982, 2547, 1474, 877, 1391,
    414, 698, 2019, 2422, 3010, 1139, 753, 1747, 2175, 1301, 1033, 1789, 2939, 2730, 1652, 90,
    1349, 2830, 1485, 2370, 2155, 118, 1402, 1957, 3130, 1197, 52, 2688, 96, 762, 772, 1857,
    2315, 1016, 643, 3105, 1849, 791, 349, 6, 3114, 1587, 1233, 559, 1223, 3049, 1943, 853,
    709, 1390, 2748, 2007, 1546, 1513, 2600, 2538, 1790, 194, 326, 2877, 594, 2036, 1662, 2366,
    1754, 418, 2553, 1951, 1963, 918, 2086, 997, 2731, 704, 1365, 569, 3108, 948, 839, 63,
    1305, 378, 2362, 2734, 2982, 2398, 1119, 382, 1141, 1805, 3102, 2341, 1131, 2316, 2626, 3104,
    198, 1896, 2800, 190, 3131, 1463, 357, 929, 209, 912, 1164, 1509, 2539, 3116, 2615, 1644,
    818, 242, 2217, 2347, 2686, 2300, 572, 789, 358, 2443, 101, 2969, 2692, 606, 2339, 1533,
    2060, 1782, 495, 371, 2707, 889, 3156, 2683, 1499, 1135, 1619, 125, 2838, 2792, 1695, 746,
    1343, 1370, 2858, 145, 2565, 1892, 1103, 286, 170, 3073, 922, 1655, 1602, 2160, 1151, 2176,
    2239, 132, 394, 1424, 607, 700, 116, 1425, 2676, 141, 2360, 2449, 897, 317, 2228, 2351,
    1543, 656, 1088, 373, 2472, 2892, 1740, 3067, 1367, 188, 79, 1633, 1885, 677, 1779, 1297,
    2334, 3027, 2735, 1791, 2405, 1748, 2983, 3035, 2824, 2168, 385, 2148, 2465, 175, 390, 268,
    2722, 2857, 3088, 2926, 2782, 1378, 1934, 2072, 2889, 944, 1158, 1383, 867, 2145, 1915, 361,
    402, 482, 2761, 300, 1554, 636, 260, 1186, 871, 2859, 2103, 208, 2236, 2012, 2462, 1462,
    2832, 2617, 1024, 1129, 18, 376, 134, 407, 434, 2017, 2717, 2005, 2993, 1545, 1445, 2831,
    1161, 2411, 2949, 1769, 552, 2327, 939, 3013, 1986, 1486, 2723, 1549, 2649, 1020, 392, 422,
    1419, 2099, 2464, 3058, 430, 675, 2941, 2955, 2355, 840, 32, 2338, 1232, 2834, 2991, 2879,
    444, 1657, 2246, 296, 245, 2661, 1202, 1714, 251, 1095, 1828, 311, 2732, 947, 2115, 2738,
    2525, 2194, 634, 740, 2682, 2020, 1156, 1036, 1295, 1181, 3037, 1614, 736, 893, 2047, 1274,
    1361, 3036, 2606, 2797, 2022, 2876, 2758, 472, 3028, 882, 1189, 743, 3122, 2401, 468, 1061,
    1523, 3059, 2843, 2853, 1529, 214, 3032, 3071, 277, 813, 426, 1039, 727, 1508, 2490, 2299,
    768, 1172, 537, 1847, 1664, 1110, 1014, 662, 121, 227, 2410, 2165, 2696, 3005, 1231, 635,
    292, 2690, 65, 2607, 2574, 1188, 456, 2913, 459, 1955, 827, 1111, 2412, 2997, 528, 366,
    1863, 500, 1001, 1958, 1441, 809, 210, 435, 718, 1674, 388, 1572, 1584, 1944, 674, 99,
    2352, 1019, 1763, 185, 554, 1066, 2508, 951, 2822, 415, 297, 1914, 2619, 1338, 2505, 955,
    2786, 238, 3000, 2763, 299, 822, 1288, 3101, 2894, 992, 489, 2157, 2309, 1576, 1810, 2964,
    2662, 2087, 1569, 503, 1505, 1468, 1613, 1138, 1256, 2715, 2846, 477, 2576, 108, 2245, 1162,
    2149, 2183, 858, 1324, 1055, 1741, 149, 615, 825, 2143, 304, 283, 2322, 3017, 2510, 1960,
    265, 2282, 2184, 1461, 3113, 2372, 2166, 232, 693, 1945, 3039, 2494, 1908, 2827, 280, 2950,
    1044, 288, 2863, 1342, 2409, 1258, 2249, 2862, 920, 1607, 2802, 610, 3129, 1108, 2823, 476,
    2641, 2788, 2070, 1368, 2903, 699, 2844, 942, 2663, 457, 2701, 2540, 2231, 2746, 1738, 2350,
    2808, 2025, 2541, 2156, 126, 2512, 831, 2503, 2039, 2774, 886, 919, 2240, 2636, 963, 1218,
    1406, 1420, 526, 2639, 975, 1921, 2305, 1193, 2517, 2809, 1647, 314, 2560, 545, 1345, 775,
    603, 1163, 1641, 1678, 2450, 2915, 42, 2242, 2741, 1143, 862, 1654, 1826, 1689, 3124, 2710,
    152, 549, 360, 1982, 1478, 2203, 2612, 2956, 2681, 437, 2171, 1933, 3110, 1824, 2803, 234,
    764, 177, 817, 3145, 1262, 864, 2359, 2992, 1725, 2667, 2484, 1133, 1667, 2847, 932, 1392,
    2573, 2140, 1046, 264, 2927, 2752, 679, 2493, 1658, 2466, 1057, 2444, 2093, 2248, 2432, 726,
    816, 1171, 2766, 2900, 2313, 488, 2265, 2043, 332, 1771, 2320, 2646, 1089, 2826, 3148,
)


# ---------------------------------------------------------------------------------------------
# ADE-150


def _convert_ade150(job: tuple[Path, Path, bool]) -> str:
    src, dst, force = job
    if dst.exists() and not force:
        return "existing"
    lab = open_array(src, "ADE-150 annotation")
    if lab.dtype != np.uint8 or lab.ndim != 2:
        raise PrepareError(f"ADE-150 annotation {src} must be an 8-bit single-channel PNG, got {lab.dtype} {lab.shape}")
    if lab.max(initial=0) > 150:
        raise PrepareError(f"ADE-150 annotation {src} has values up to {lab.max()}; expected 0..150")
    # 0 (unlabelled) wraps to 255, the ignore label; classes 1..150 become train ids 0..149.
    save_array(lab - np.uint8(1), dst, "PNG")
    return "written"


def prepare_ade150(root: Path, workers: int = 1, force: bool = False) -> dict:
    base = require_dir(root / "ADEChallengeData2016", "unzip ADEChallengeData2016.zip into the datasets folder")
    src_dir = require_dir(base / "annotations" / "validation", "the ADE-150 download is incomplete")
    out_dir = base / "annotations_detectron2" / "validation"
    if not start_output(out_dir, force):
        return {"output": str(out_dir), "status": "already prepared"}
    files = sorted(p for p in src_dir.iterdir() if p.suffix == ".png" and not p.name.startswith("."))
    if not files:
        raise PrepareError(f"no .png annotations in {src_dir}")
    counts = summarize(run_jobs(_convert_ade150, [(f, out_dir / f.name, force) for f in files], workers, "ade150"))
    mark_prepared(out_dir, {"dataset": "ade150", "labels": len(files)})
    return {"output": str(out_dir), "labels": len(files), **counts}


# ---------------------------------------------------------------------------------------------
# ADE-847


class _IndexUnpickler(pickle.Unpickler):
    """Reads index_ade20k.pkl without running arbitrary code: only plain containers and numpy
    arrays may be rebuilt, anything else is refused."""

    _ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("collections", "OrderedDict"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise PrepareError(f"index_ade20k.pkl refers to {module}.{name}; refusing to unpickle it")


def read_ade20k_index(path: Path) -> list[tuple[str, str]]:
    """(folder, filename) of every image listed in ADE20K's ``index_ade20k.pkl``."""
    try:
        with open(path, "rb") as f:
            index = _IndexUnpickler(f).load()
    except PrepareError:
        raise
    except Exception as exc:  # a truncated or foreign pickle fails in many ways
        raise PrepareError(f"cannot read ADE20K index {path}: {exc}") from None
    if not isinstance(index, dict) or "folder" not in index or "filename" not in index:
        raise PrepareError(f"ADE20K index {path} has no 'folder' and 'filename' lists")
    folders, names = [str(x) for x in index["folder"]], [str(x) for x in index["filename"]]
    if len(folders) != len(names):
        raise PrepareError(f"ADE20K index {path}: {len(folders)} folders but {len(names)} filenames")
    return list(zip(folders, names))


def _locate(root: Path, base: Path, folder: str, name: str) -> Path:
    """The index stores folders relative to the datasets root ('ADE20K_2021_17_01/images/...');
    also accept them relative to the ADE20K folder itself, in case it was unpacked elsewhere."""
    candidates = [root / folder / name, base / folder / name]
    parts = Path(folder).parts
    if "images" in parts:
        candidates.append(base.joinpath(*parts[parts.index("images"):]) / name)
    for c in candidates:
        if c.is_file():
            return c
    raise PrepareError(f"ADE-847 image {candidates[0]} (listed in index_ade20k.pkl) not found")


_ADE847_LUT = np.full((255 // 10) * 256 + 256, ADE847_IGNORE, dtype=np.uint16)
_ADE847_LUT[np.asarray(ADE847_CLASS_IDS)] = np.arange(len(ADE847_CLASS_IDS), dtype=np.uint16)


def ade847_label(seg_rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 *_seg.png -> (H, W) uint16 train ids (65535 = not one of the 847)."""
    cls = (seg_rgb[..., 0].astype(np.int64) // 10) * 256 + seg_rgb[..., 1].astype(np.int64)
    return _ADE847_LUT[cls]


def _convert_ade847(job: tuple[Path, Path, Path, bool]) -> str:
    img_path, img_out, lab_out, force = job
    if img_out.exists() and lab_out.exists() and not force:
        return "existing"
    seg_path = img_path.with_name(img_path.stem + "_seg.png")
    img = open_array(img_path, "ADE-847 image")
    seg = open_array(seg_path, "ADE-847 segmentation")
    if seg.ndim != 3 or seg.shape[2] < 3:
        raise PrepareError(f"ADE-847 segmentation {seg_path} must be an RGB image, got shape {seg.shape}")
    if seg.shape[:2] != img.shape[:2]:
        raise PrepareError(
            f"ADE-847 segmentation {seg_path} is {seg.shape[:2]} but image {img_path} is {img.shape[:2]}")
    lab = ade847_label(seg)
    size = short_side_size(img.shape[0], img.shape[1])
    if size is not None:
        img = resize_bilinear_uint8(img, *size)
        lab = resize_nearest(lab, *size)
    save_array(img, img_out, "JPEG")
    save_array(lab, lab_out, "TIFF")
    return "resized" if size is not None else "written"


def prepare_ade847(root: Path, workers: int = 1, force: bool = False) -> dict:
    hint = "download ADE20K_2021_17_01 from the ADE20K website and unzip it into the datasets folder"
    base = require_dir(root / "ADE20K_2021_17_01", hint)
    entries = read_ade20k_index(require_file(base / "index_ade20k.pkl", hint))
    # ADE20K names validation images ADE_val_*, training ones ADE_train_* / ADE_frame_*.
    val = [(f, n) for f, n in entries if len(n.split("_")) > 1 and n.split("_")[1] == "val"]
    if not val:
        raise PrepareError(f"{base / 'index_ade20k.pkl'} lists no validation images (ADE_val_*)")
    img_dir = base / "images_detectron2" / "validation"
    lab_dir = base / "annotations_detectron2" / "validation"
    todo_img, todo_lab = start_output(img_dir, force), start_output(lab_dir, force)
    if not (todo_img or todo_lab):
        return {"output": str(lab_dir), "status": "already prepared"}
    jobs = []
    for folder, name in val:
        src = _locate(root, base, folder, name)
        jobs.append((src, img_dir / name, lab_dir / (Path(name).stem + ".tif"), force))
    counts = summarize(run_jobs(_convert_ade847, jobs, workers, "ade847"))
    mark_prepared(img_dir, {"dataset": "ade847", "images": len(jobs)})
    mark_prepared(lab_dir, {"dataset": "ade847", "labels": len(jobs)})
    return {"output": str(lab_dir), "labels": len(jobs), **counts}
