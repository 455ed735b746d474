import io

import numpy as np
import pytest
import torch
from PIL import Image

from bioscan5m_hf import schema
from bioscan5m_hf.transforms import FIRST_KMER_ID, UNK_ID, KmerTokenizer, decode_image, decode_image_into, normalize


def test_kmer_ids_follow_the_barcodebert_vocabulary():
    tok = KmerTokenizer(k=4, max_len=12)
    vocab = tok.vocabulary()
    assert vocab[:3] == ["<MASK>", "<UNK>", "AAAA"] and vocab[-1] == "TTTT" and len(vocab) == tok.vocab_size
    ids, mask = tok(["AAAACCCCGGGG", "acgtRCGTNNNN", "TT"])
    assert ids[0].tolist() == [vocab.index("AAAA"), vocab.index("CCCC"), vocab.index("GGGG")]
    assert ids[1].tolist() == [vocab.index("ACGT"), UNK_ID, UNK_ID]  # lower case is fine; R and N are not
    assert mask.tolist() == [[1, 1, 1], [1, 1, 1], [0, 0, 0]]
    assert ids[2].tolist() == [UNK_ID] * 3  # "TT" padded with N


def test_truncation_and_660_convention():
    tok = KmerTokenizer()
    ids, mask = tok(["A" * 1000, "C" * 658])
    assert ids.shape == (2, 165) and mask[0].sum() == 165 and mask[1].sum() == 164
    assert (ids[0] == FIRST_KMER_ID).all()


def test_tokenizer_rejects_bad_sizes():
    with pytest.raises(ValueError):
        KmerTokenizer(k=0)


def jpeg(w, h):
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[:, : w // 2] = (255, 0, 0)
    arr[:, w // 2:] = (0, 0, 255)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


@pytest.mark.parametrize("w, h", [(341, 256), (1024, 768), (256, 400), (100, 60)])
def test_decode_resizes_the_shorter_side_and_centre_crops(w, h):
    out = decode_image(jpeg(w, h), 64)
    assert out.shape == (3, 64, 64) and out.dtype == np.uint8
    # The crop is centred: red on the left, blue on the right, for landscape and portrait alike.
    assert out[0, :, :16].mean() > 200 and out[2, :, -16:].mean() > 200


def noise(w, h, seed=0, format="JPEG"):
    """An image of random pixels: every seed's its own."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format=format)
    return buf.getvalue()


CASES = [(jpeg(341, 256), 256), (jpeg(256, 400), 256), (jpeg(256, 256), 256), (jpeg(1024, 768), 256),
         (jpeg(100, 60), 64), (noise(80, 64, format="PNG"), 64),
         (jpeg(256 * 30, 256), 256)]  # the last: too big to reuse a buffer


@pytest.mark.parametrize("data, size", CASES)
def test_decoding_into_a_batch_gives_decode_images_pixels(data, size):
    batch = np.full((3, size, size, 3), 77, dtype=np.uint8)
    decode_image_into(data, size, batch[1])
    assert (batch[1] == decode_image(data, size, channels_last=True)).all()
    assert (batch[[0, 2]] == 77).all()  # nothing written around the image's place


def test_images_decoded_one_after_another_into_the_reused_buffer_keep_their_pixels():
    """Each image's crop is copied out before the same thread's next decode reuses the buffer, also
    when sizes change and in threads decoding at the same time."""
    from concurrent.futures import ThreadPoolExecutor

    order = [noise(w, h, seed) for seed, (w, h) in enumerate([(341, 256), (256, 400), (600, 256), (256, 256)] * 3)]
    expected = [decode_image(data, 256, channels_last=True) for data in order]

    def decode_all(_) -> np.ndarray:
        out = np.zeros((len(order), 256, 256, 3), dtype=np.uint8)
        for i, data in enumerate(order):
            decode_image_into(data, 256, out[i])
        return out

    with ThreadPoolExecutor(4) as pool:
        for out in pool.map(decode_all, range(8)):
            assert all((out[i] == expected[i]).all() for i in range(len(order)))


def test_decoding_into_a_batch_keeps_the_pixel_limit(monkeypatch):
    from bioscan5m_hf import transforms

    monkeypatch.setattr(transforms, "MAX_IMAGE_PIXELS", 341 * 256 - 1)
    with pytest.raises(ValueError, match="pixel limit"):
        decode_image_into(jpeg(341, 256), 256, np.zeros((256, 256, 3), dtype=np.uint8))


def test_decode_accepts_an_opened_image():
    data = jpeg(300, 200)
    assert (decode_image(Image.open(io.BytesIO(data)), 32) == decode_image(data, 32)).all()


def test_normalize_uses_the_dataset_statistics():
    images = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    out = normalize(images)
    expected = (1 - torch.tensor(schema.RGB_MEAN)) / torch.tensor(schema.RGB_STD)
    assert torch.allclose(out[0, :, 0, 0], expected)


def test_fast_decoder_gives_pillows_pixels():
    from bioscan5m_hf import transforms

    if transforms.simplejpeg is None:
        pytest.skip("simplejpeg (the optional fast decoder, extra 'fast') is not installed")
    for w, h in ((341, 256), (1024, 768), (256, 400), (2000, 1500)):
        data = jpeg(w, h)
        for size in (64, 224, 256):
            assert (decode_image(data, size) == decode_image(Image.open(io.BytesIO(data)), size)).all(), (w, h, size)
