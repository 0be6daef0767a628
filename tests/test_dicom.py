"""DICOM decoding: display transforms, encodings, errors, and DICOM folders in the pipeline."""

import numpy as np
import PIL.Image
import pydicom
import pytest
from helpers import REPO_ROOT, load_config_module, make_dicom, write_dicom
from pydicom.uid import JPEG2000Lossless, RLELossless

from xray_jax import config_checks, errors, input_pipeline
from xray_jax.data import dicom, folder, images

RAMP = np.array([[100, 350], [600, 1100]], np.uint16)  # Min-max scaled: 0, .25, .5, 1.


def _read(tmp_path, ds: pydicom.Dataset, **kwargs) -> np.ndarray:
  return dicom.read_dicom(write_dicom(tmp_path / "image.dcm", ds), **kwargs)


def test_monochrome2_without_window_is_min_max_scaled(tmp_path):
  image = _read(tmp_path, make_dicom(RAMP))
  assert image.dtype == np.float32
  np.testing.assert_allclose(image, [[0, 0.25], [0.5, 1]])


def test_monochrome1_is_inverted(tmp_path):
  np.testing.assert_allclose(_read(tmp_path, make_dicom(RAMP, "MONOCHROME1")),
                             [[1, 0.75], [0.5, 0]])


@pytest.mark.parametrize("dtype, bits", [(np.uint8, 8), (np.uint16, 12), (np.uint16, 16)])
def test_bit_depths(tmp_path, dtype, bits):
  stored = np.array([[0, 1], [2, 2**bits - 1]], dtype)
  np.testing.assert_allclose(_read(tmp_path, make_dicom(stored, bits_stored=bits)),
                             stored / (2**bits - 1), rtol=1e-6)


def test_bits_above_bits_stored_are_ignored(tmp_path):
  ds = make_dicom(RAMP, bits_stored=12)
  ds.PixelData = (RAMP | np.array([[0xF000, 0], [0x3000, 0]], np.uint16)).tobytes()
  np.testing.assert_allclose(_read(tmp_path, ds), [[0, 0.25], [0.5, 1]])


def test_signed_12_bit_with_rescale_and_window(tmp_path):
  stored = np.array([[-2048, -1, 0], [1, 2, 2047]], np.int16)
  ds = make_dicom(stored, bits_stored=12, RescaleSlope=2, RescaleIntercept=100,
                  WindowCenter=100, WindowWidth=9)
  ds.PixelData = (stored.view(np.uint16) & 0x0FFF).tobytes()  # Not sign-extended on disk.
  # Modality values -3996, 98, 100, 102, 104, 4194; the window spans (95.5, 103.5].
  np.testing.assert_allclose(_read(tmp_path, ds), [[0, 0.3125, 0.5625], [0.8125, 1, 1]])


def test_first_of_several_windows_is_used(tmp_path):
  stored = np.array([[300, 400, 500], [600, 700, 2000]], np.uint16)
  ds = make_dicom(stored, WindowCenter=[500, 1500], WindowWidth=[201, 3000])
  # LINEAR: (x - 499.5) / 200 + 0.5, clipped; the second window would not clip 300 to 0.
  np.testing.assert_allclose(_read(tmp_path, ds), [[0, 0.0025, 0.5025], [1, 1, 1]])


def test_voi_lut_is_preferred_to_the_window_and_scaled_by_its_range(tmp_path):
  lut = pydicom.Dataset()
  lut.LUTDescriptor = [4, 10, 8]  # 4 entries for stored values 10..13, 8-bit output.
  lut.LUTData = np.array([20, 50, 100, 220], np.uint16).tobytes()  # OW: one word per entry.
  ds = make_dicom(np.array([[0, 10, 11], [12, 13, 99]], np.uint16), WindowCenter=50,
                  WindowWidth=10, VOILUTSequence=pydicom.Sequence([lut]))
  np.testing.assert_allclose(_read(tmp_path, ds), [[0, 0, 0.15], [0.4, 1, 1]], rtol=1e-6)


def test_rgb_is_converted_to_luminance(tmp_path):
  pixels = np.zeros((2, 2, 3), np.uint8)
  pixels[0, 0] = (255, 255, 255)
  pixels[1, 1, 1] = 255
  np.testing.assert_allclose(_read(tmp_path, make_dicom(pixels, "RGB")),
                             [[1, 0], [0, 0.587]], atol=1e-6)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_compressed_pixel_data_decodes_like_uncompressed(tmp_path, syntax):
  stored = np.random.default_rng(0).integers(0, 4096, (64, 48), np.uint16)
  ds = make_dicom(stored, "MONOCHROME1", 12)
  expected = dicom.read_dicom(write_dicom(tmp_path / "plain.dcm", ds))
  ds.compress(syntax)
  path = write_dicom(tmp_path / "compressed.dcm", ds)
  assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == syntax
  np.testing.assert_array_equal(dicom.read_dicom(path), expected)


def test_missing_decoder_names_the_syntax_and_the_extra(tmp_path, monkeypatch):
  ds = make_dicom(RAMP)
  ds.compress(RLELossless)
  path = write_dicom(tmp_path / "rle.dcm", ds)
  monkeypatch.setattr(pydicom.pixels.decoders.base.Decoder, "is_available",
                      property(lambda self: False))
  with pytest.raises(errors.DataError) as error:
    dicom.read_dicom(path)
  message = str(error.value)
  assert message.startswith(f"{path}: no decoder")
  assert f"RLE Lossless ({RLELossless})" in message and "pip install -e '.[dicom]'" in message


def test_real_chest_film_shows_lungs_darker_than_the_mediastinum():
  path = pydicom.data.get_testdata_file("RG1_UNCR.dcm", download=False)
  assert path, "pip install pydicom-data"
  image = dicom.read_dicom(path)  # MONOCHROME1, 15 of 16 bits stored, one window.
  assert image.shape == (1955, 1841) and 0 <= image.min() < image.max() <= 1
  h, w = image.shape
  rows = slice(int(0.25 * h), int(0.45 * h))  # Mid lung fields, above the heart.
  spine = image[rows, int(0.45 * w):int(0.55 * w)].mean()
  right_lung = image[rows, int(0.2 * w):int(0.3 * w)].mean()
  left_lung = image[rows, int(0.7 * w):int(0.8 * w)].mean()
  assert spine > max(right_lung, left_lung) + 0.2


def _errors_message(path, **kwargs) -> str:
  with pytest.raises(errors.DataError) as error:
    dicom.read_dicom(path, **kwargs)
  message = str(error.value)
  assert message.startswith(f"{path}: ")
  assert "Doe" not in message and "PID-4711" not in message
  return message


def test_identifying_tags_are_not_parsed(tmp_path, caplog, recwarn):
  # pydicom quotes an invalid UID (an identifier of the patient's study) when it parses one.
  path = write_dicom(tmp_path / "a.dcm", make_dicom(RAMP, StudyInstanceUID="1.2.PID4711"))
  caplog.clear()
  recwarn.clear()
  dicom.read_dicom(path)
  assert "PID4711" not in caplog.text and not [w for w in recwarn if "PID4711" in str(w.message)]


def test_multiframe_first_frame_or_error(tmp_path):
  frames = np.stack([RAMP, RAMP[::-1]])
  path = write_dicom(tmp_path / "cine.dcm", make_dicom(frames))
  np.testing.assert_allclose(dicom.read_dicom(path), [[0, 0.25], [0.5, 1]])
  assert "2 frames" in _errors_message(path, multiframe="error")


def test_truncated_pixel_data(tmp_path):
  path = write_dicom(tmp_path / "cut.dcm", make_dicom(RAMP))
  path.write_bytes(path.read_bytes()[:-3])
  assert "cannot decode the pixel data" in _errors_message(path)


def test_dicom_without_pixel_data(tmp_path):
  ds = make_dicom(RAMP)
  del ds.PixelData
  assert "no pixel data" in _errors_message(write_dicom(tmp_path / "report.dcm", ds))


def test_not_a_dicom_file(tmp_path):
  path = tmp_path / "notes.dcm"
  path.write_text("not an image\n" * 20)
  assert "not a DICOM file" in _errors_message(path)


def test_unsupported_photometric_interpretation(tmp_path):
  ds = make_dicom(RAMP.astype(np.uint8), "PALETTE COLOR")
  assert "'PALETTE COLOR' is not supported" in _errors_message(
      write_dicom(tmp_path / "palette.dcm", ds))


def test_multiframe_config_value_is_checked():
  config = load_config_module(REPO_ROOT / "configs" / "pneumonia.py").get_config(None)
  config.data.dicom_multiframe = "last"
  with pytest.raises(errors.ConfigError, match="config.data.dicom_multiframe='last'"):
    config_checks.check_config(config)


def _resized(path, size: int) -> np.ndarray:
  """read_dicom, then the same resize load_image applies to other images."""
  image = PIL.Image.fromarray(dicom.read_dicom(path))
  return np.asarray(image.resize((size, size), PIL.Image.Resampling.BILINEAR))


def test_dicom_folder_through_the_eval_pipeline(tmp_path):
  rng = np.random.default_rng(0)
  paths = [
      write_dicom(tmp_path / "train" / name / f"{i}{suffix}",
                  make_dicom(rng.integers(0, 4096, (40, 30), np.uint16), photometric, 12))
      for name, photometric in (("NORMAL", "MONOCHROME1"), ("PNEUMONIA", "MONOCHROME2"))
      for i, suffix in enumerate((".dcm", ".DCM"))
  ]
  records = folder.load_folder_dataset(tmp_path).splits["train"]
  assert sorted(r["path"] for r in records) == sorted(map(str, paths))
  assert [r["label"] for r in records] == [0, 0, 1, 1]
  config = load_config_module(REPO_ROOT / "configs" / "pneumonia.py").get_config("runlocal")
  config.data.image_size = 16
  config.data.intensity = "none"  # The decoded pixels, only resized and normalized.
  batch = next(iter(input_pipeline.create_eval_dataset(records, config.data, 4)))
  for record, image in zip(records, batch["image"], strict=True):
    expected = _resized(record["path"], 16)
    np.testing.assert_allclose(images.load_image(record["path"], 16), expected)
    np.testing.assert_allclose(image[..., 0], (expected - 0.5) / 0.25, rtol=1e-6)


def test_preprocess_passes_the_multiframe_option(tmp_path):
  path = write_dicom(tmp_path / "cine.dcm", make_dicom(np.stack([RAMP, RAMP])))
  config = load_config_module(REPO_ROOT / "configs" / "pneumonia.py").get_config("runlocal")
  config.data.dicom_multiframe = "error"
  with pytest.raises(errors.DataError, match="2 frames"):
    input_pipeline.Preprocess.from_config(config.data)({"path": str(path), "label": 0})
