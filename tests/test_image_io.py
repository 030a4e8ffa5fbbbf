"""Tests for image_io.py: every mask format a user may hand us, TIFF layouts, the grid's panels."""
import glob
import os

import numpy as np
import pytest
import tifffile
from PIL import Image

import image_io
from conftest import DATA
from image_io import check_binary_mask, read_binary_mask, read_image_file, read_image_header
from utils import UserError


SAMPLE_MASKS = sorted(glob.glob(os.path.join(DATA, 'inria_samples', 'gt', '*.png')))


def save_jpeg(mask, path, quality):
    Image.fromarray(mask).save(path, quality=quality)


def save_cmyk_jpeg(mask, path, quality):
    Image.fromarray(mask).convert('CMYK').save(path, quality=quality)


def save_jpeg_compressed_tiff(mask, path, quality):
    tifffile.imwrite(path, mask, photometric='minisblack', compression='jpeg', compressionargs={'level': quality})


@pytest.mark.parametrize('quality', [75, 95])
@pytest.mark.parametrize('suffix, save', [('.jpg', save_jpeg), ('.jpg', save_cmyk_jpeg),
                                          ('.tif', save_jpeg_compressed_tiff)])
def test_real_masks_saved_as_jpeg_read_like_the_png(tmp_path, quality, suffix, save):
    assert len(SAMPLE_MASKS) == 10
    for png in SAMPLE_MASKS:
        lossy = str(tmp_path / (os.path.basename(png)[:-4] + suffix))
        save(read_binary_mask(png), lossy, quality)
        np.testing.assert_array_equal(read_binary_mask(lossy), read_binary_mask(png))


def test_a_photo_saved_as_jpeg_is_not_a_mask(tmp_path):
    photo = sorted(glob.glob(os.path.join(DATA, 'inria_samples', 'images', '*.png')))[0]
    Image.open(photo).convert('L').save(tmp_path / 'photo.jpg', quality=95)
    with pytest.raises(UserError, match=r'photo\.jpg: mask has .* far from both 0 and 255 .*--mask_tolerance 1\.0%'):
        read_binary_mask(str(tmp_path / 'photo.jpg'))


def test_mask_noise_within_tolerance_is_accepted():
    mask = np.zeros((100, 100), np.uint8)
    mask[:50] = 255
    mask[0, :5] = 200  # 0.05 % JPEG-like noise
    assert set(np.unique(check_binary_mask(mask, 'm.png'))) == {0, 255}


def test_zero_one_masks_are_scaled_but_class_maps_are_refused(tmp_path):
    labels = np.zeros((40, 50), np.uint8)
    labels[5:15, 10:30] = 1  # under 10 % buildings: must not pass as noise around an empty mask
    Image.fromarray(labels).save(tmp_path / 'zero_one.png')
    np.testing.assert_array_equal(read_binary_mask(str(tmp_path / 'zero_one.png')), labels * 255)
    labels[20:22, 0:5] = 3  # a class-id map (0, 1, 3): not a building mask, even though every value is small
    Image.fromarray(labels).save(tmp_path / 'classes.png')
    with pytest.raises(UserError, match=r'classes\.png: mask has 10\.5% pixels that are neither 0 nor 255'):
        read_binary_mask(str(tmp_path / 'classes.png'))


def test_an_opaque_image_with_a_transparent_colour_reads_as_rgb(tmp_path):
    # GDAL's PNG export writes nodata as a tRNS colour: the image keeps its 3 channels (masks check transparency)
    image = np.random.default_rng(0).integers(1, 256, (30, 70, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / 'nodata.png', transparency=(0, 0, 0))
    np.testing.assert_array_equal(read_image_file(tmp_path / 'nodata.png'), image)


def test_band_interleaved_tiff_reads_like_pixel_interleaved(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (30, 70, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / 'bands.tif', np.moveaxis(image, -1, 0), planarconfig='separate', photometric='rgb',
                     compression='lzw')
    np.testing.assert_array_equal(read_image_file(tmp_path / 'bands.tif'), image)
    assert read_image_header(tmp_path / 'bands.tif') == (30, 70, 3, np.uint8)
    tifffile.imwrite(tmp_path / 'pixels.tif', image, photometric='rgb')
    assert read_image_header(tmp_path / 'pixels.tif') == (30, 70, 3, np.uint8)


MASK = np.zeros((20, 30), np.uint8)
MASK[5:12, 4:22] = 255


OPAQUE = np.full_like(MASK, 255)


def save_png(array, mode=None):
    return lambda path: Image.fromarray(array).convert(mode or Image.fromarray(array).mode).save(path)


def save_palette_png(indices, transparent_index):
    """Palette 0 black, 1 and 2 white; `transparent_index` in a tRNS chunk, as GIMP saves an indexed PNG."""
    def save(path):
        image = Image.frombytes('P', indices.shape[::-1], np.ascontiguousarray(indices, np.uint8).tobytes())
        image.putpalette([0, 0, 0, 255, 255, 255, 255, 255, 255])
        image.save(path, transparency=transparent_index)
    return save


WHITE_LEFT_EDGE = np.where(MASK > 0, 1, 0)
WHITE_LEFT_EDGE[:, :3] = 2  # white (building) colour, but transparent


MASK_FILES = {  # name: (writer, None if accepted as MASK, else the expected error)
    '1-bit.png': (save_png(MASK, '1'), None),
    # tifffile tags bool data MinIsWhite yet stores True as 1: values are data (1 = building), as GDAL reads them
    '1-bit.tif': (lambda path: tifffile.imwrite(path, MASK > 0), None),
    'grey-alpha.png': (save_png(np.stack([MASK, OPAQUE], 2)), None),
    'rgba.png': (save_png(np.stack([MASK, MASK, MASK, OPAQUE], 2)), None),
    # white under a transparent background would otherwise read as one big building
    'transparent.png': (save_png(np.stack([OPAQUE, OPAQUE, OPAQUE, MASK], 2)),
                        'transparent.png: mask has transparent pixels over a colour that is not black'),
    # black under transparency is background once flattened: nothing to guess
    'transparent-over-black.png': (save_png(np.stack([MASK, MASK, MASK, MASK], 2)), None),
    'grey-transparent-black.png': (lambda path: Image.fromarray(MASK).save(path, transparency=0), None),
    '1-bit-transparent-white.png': (lambda path: Image.fromarray(MASK).convert('1').save(path, transparency=1),
                                    '1-bit-transparent-white.png: mask has transparent pixels'),
    'palette-transparent.png': (save_palette_png(WHITE_LEFT_EDGE, 2), 'palette-transparent.png: mask has transparent'),
    'palette-unused-transparency.png': (save_palette_png(np.where(MASK > 0, 1, 0), 2), None),
    'grey-transparent-white.png': (lambda path: Image.fromarray(MASK).save(path, transparency=255),
                                   'grey-transparent-white.png: mask has transparent pixels'),
    'five-channel.tif': (lambda path: tifffile.imwrite(path, np.stack([MASK] * 5, 2), photometric='minisblack',
                                                       planarconfig='contig'), 'got 5 channels'),
}


@pytest.mark.parametrize('name', MASK_FILES)
def test_mask_file_formats(tmp_path, name):
    write, error = MASK_FILES[name]
    path = str(tmp_path / name)
    write(path)
    if error is None:
        np.testing.assert_array_equal(read_binary_mask(path), MASK)
    else:
        with pytest.raises(UserError, match=error):
            read_binary_mask(path)


@pytest.mark.parametrize('labels', [1, 5])
def test_zero_one_and_class_id_masks_saved_as_jpeg_are_refused(tmp_path, labels):
    array = (np.arange(40 * 50).reshape(40, 50) % (labels + 1)).astype(np.uint8)  # every label, 0 included
    Image.fromarray(array).save(tmp_path / 'labels.jpg', quality=95)
    with pytest.raises(UserError, match=r'labels\.jpg: mask values only reach \d+, not 255: a 0/1 or class-id'):
        read_binary_mask(str(tmp_path / 'labels.jpg'))


def test_multi_page_tiff_is_read_as_its_first_page(tmp_path):
    with tifffile.TiffWriter(tmp_path / 'pages.tif') as tif:
        tif.write(MASK, photometric='minisblack')
        tif.write(np.zeros_like(MASK), photometric='minisblack')  # another page of the same size: not stacked in
    np.testing.assert_array_equal(read_binary_mask(str(tmp_path / 'pages.tif')), MASK)
    assert read_image_header(tmp_path / 'pages.tif') == (20, 30, 1, np.uint8)


def test_a_half_transparent_colour_in_a_mask_is_refused():
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[5, 5] = (255, 255, 255, 128)  # an antialiased edge pixel of a paint tool's stroke
    with pytest.raises(UserError, match='transparent pixels over a colour that is not black'):
        check_binary_mask(rgba, 'm.png')


def test_mask_checks_at_their_edges():
    """The rules of check_binary_mask, each at the value where it turns."""
    rgba = np.full((10, 10, 4), 255, np.uint8)
    rgba[..., :3] = 0
    rgba[2, 2] = (255, 0, 0, 0)  # transparent over a colour that is black in two channels out of three
    with pytest.raises(UserError, match='transparent pixels over a colour that is not black'):
        check_binary_mask(rgba, 'm.png')
    rgb = np.zeros((10, 10, 3), np.uint8)
    rgb[3, 3] = (255, 255, 0)  # only the last channel differs
    with pytest.raises(UserError, match='got 3 differing channels'):
        check_binary_mask(rgb, 'm.png')
    zero_one = np.zeros((10, 10), np.uint8)
    zero_one[:5] = 1
    with pytest.raises(UserError, match=r'm\.jpg: mask values only reach 1, not 255'):  # 0/1 is lossless files' only
        check_binary_mask(zero_one, 'm.jpg', lossy=True)
    noisy = np.zeros((100, 100), np.uint8)
    noisy[50:] = 255
    noisy[0, :99] = 127  # with the next pixel, exactly --mask_tolerance 1 % off: accepted, thresholded at 128
    noisy[1, 0] = 128
    checked = check_binary_mask(noisy, 'm.png', tolerance=0.01)
    assert (checked[0] == 0).all() and checked[1, 0] == 255
    noisy[2, 0] = 127  # one more than the tolerance
    with pytest.raises(UserError, match=r'mask has 1\.0% pixels that are neither 0 nor 255'):
        check_binary_mask(noisy, 'm.png', tolerance=0.01)


def test_grid_panels_are_rgb_and_at_most_512_on_their_longer_side():
    mask, rgba = np.zeros((1000, 500), np.uint8), np.full((1000, 500, 4), 200, np.uint8)
    assert image_io.grid_image([mask, rgba]).shape == (512, 2 * 256, 3)
    assert image_io.grid_image([mask[:100, :60]]).shape == (100, 60, 3)  # small panels keep their size
