"""decode="dali": the workers ship JPEG bytes as for decode="device", a DALI pipeline decodes them.
DALI runs its CPU decoder where there is no GPU, so these run wherever the `dali` extra is
installed (scripts/install_dali.sh; skipped, saying so, elsewhere); scripts/gpu_check.sh runs the
same comparison with the "mixed" (nvJPEG) decoder on a GPU."""

import builtins
import io

import numpy as np
import pytest
import torch
from PIL import Image

from bioscan5m_hf.errors import ShardError
from bioscan5m_hf.stream.device import pack
from bioscan5m_hf.transforms import crop_params

from ..conftest import stream_loader
from .device_cases import check, compare


def needs_dali():
    pytest.importorskip("nvidia.dali", reason="DALI is not installed (scripts/install_dali.sh)")


@pytest.fixture(scope="module")
def comparison(converted_zips):
    needs_dali()
    return compare(str(converted_zips.repos["parquet"].parent), decode="dali")


@pytest.mark.parametrize("crop", ["centre", "augment"])
def test_dali_batches_equal_worker_batches_but_for_pixel_rounding(comparison, crop):
    # DALI's CPU decoder is libjpeg-turbo as Pillow's; the resampler and, for the centre crop, the
    # crop-then-resize grid make the difference: the bounds of decode="device".
    check(comparison, crop)


def test_dali_decode_resumes_exactly(comparison):
    assert comparison["resume_exact"]


def jpeg(seed: int, size=(40, 30)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG")
    return buf.getvalue()


def test_an_image_dali_cannot_decode_is_named():
    needs_dali()
    from bioscan5m_hf.stream.dali import DaliDecoder

    good = jpeg(0)
    broken = good[:300]  # a valid header, the data cut short
    data, offsets = pack([good, broken])
    params = torch.from_numpy(np.stack([crop_params(good, 16, False, None)] * 2))
    decoder = DaliDecoder(16, 4, torch.device("cpu"))
    image = decoder(*pack([good]), params[:1], processids=["GOOD-1"])
    assert image.shape == (1, 3, 16, 16) and image.dtype == torch.uint8
    with pytest.raises(ShardError, match=r"BAD-2\.jpg does not decode with DALI"):
        decoder(data, offsets, params, processids=["GOOD-1", "BAD-2"])


def test_without_dali_the_error_names_the_extra(converted_zips, monkeypatch):
    real = builtins.__import__

    def no_dali(name, *args, **kwargs):
        if name.startswith("nvidia.dali") or name == "nvidia":
            raise ImportError(f"No module named {name!r}")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_dali)
    root = converted_zips.repos["parquet"].parent
    with pytest.raises(ImportError, match=r"decode='dali' needs NVIDIA DALI: pip install 'bioscan5m-hf\[dali\]'"):
        stream_loader(root, "train", decode="dali")
    stream_loader(root, "train", decode="dali", modality=("dna",))  # no images: nothing to decode


def test_cuda_dali_decode_where_a_gpu_is(converted_zips):
    needs_dali()
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA (scripts/gpu_check.sh runs this on a GPU machine)")
    c = compare(str(converted_zips.repos["parquet"].parent), device="cuda", decode="dali")
    assert c["centre"]["same_order_keys_labels"] and c["augment"]["same_order_keys_labels"] and c["resume_exact"]
    # nvJPEG's IDCT and chroma upsampling against libjpeg's: the bounds of decode="device" on CUDA.
    assert c["centre"]["mean_abs_diff"] <= 6.0 and c["augment"]["mean_abs_diff"] <= 4.0, c
