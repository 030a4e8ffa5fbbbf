"""Images and masks in and out: every format the scripts take (TIFF via tifffile + imagecodecs, PNG, JPEG) as
uint8 arrays, the checks that make a file a usable building mask or photo, resizing without grey mask edges, and
atomic PNG/TIFF writes. Imports only utils.py of ours.
"""
import contextlib
import os

import numpy as np
import tifffile
from PIL import Image

from utils import UserError, atomic_open, first_line

Image.MAX_IMAGE_PIXELS = None  # Inria tiles are 25 MP; PIL's bomb guard would refuse them
TIFF_SUFFIXES = ('.tif', '.tiff')
JPEG_SUFFIXES = ('.jpg', '.jpeg')
IMAGE_SUFFIXES = TIFF_SUFFIXES + ('.png',) + JPEG_SUFFIXES
# Tags that place an image on the map, copied verbatim as the output keeps the input's pixel grid: ModelPixelScale,
# ModelTiepoint, ModelTransformation, GeoKeyDirectory, GeoDoubleParams, GeoAsciiParams. Not GDAL_METADATA nor
# GDAL_NODATA: they describe the mask (its statistics; a nodata 0 would hide every black pixel of the image).
GEO_TAGS = (33550, 33922, 34264, 34735, 34736, 34737)
GRID_MAX_SIDE = 512  # panels of test.py's Grid-<name>.png are downscaled to this (a 5000² grid would be 75 MB of PNG)
JPEG_NOISE = 32  # levels a JPEG mask's pixel may be off 0/255 and still count as clean (quality 75: edges only)
# TIFF compressions that change pixel values: a mask stored with them is judged like a JPEG
# (only the always-lossy ones: JPEG 2000, WebP and JPEG XL may be lossless, and then values are exact)
LOSSY_TIFF_COMPRESSIONS = {getattr(tifffile.COMPRESSION, name) for name in ('OJPEG', 'JPEG', 'JPEG_LOSSY',
                                                                            'JPEG_2000_LOSSY')
                           if hasattr(tifffile.COMPRESSION, name)}


# ---------------------------------------------------------------- image reading and checks

def check_nonempty_file(path):
    if not os.path.isfile(path):
        raise UserError(f'{path}: file not found')
    if os.path.getsize(path) == 0:
        raise UserError(f'{path}: file is empty (0 bytes)')


def list_images(folder):
    """The image files in a folder (names, sorted), hidden ones and folders named like images left out."""
    return sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_SUFFIXES) and not n.startswith('.')
                  and os.path.isfile(os.path.join(folder, n)))


@contextlib.contextmanager
def reading(path, what):
    """Any decoder error while reading `path` as one UserError naming the file: decoders raise many types for
    truncated or foreign files."""
    check_nonempty_file(path)
    try:
        yield
    except UserError:
        raise
    except Exception as err:
        raise UserError(f'{path}: cannot {what} ({first_line(err)}); the file may be truncated or not an '
                        f'image') from None


def decode_image(path, transparency_as_alpha=False):
    """(array H×W or H×W×C, lossy) from a TIFF/PNG/JPEG, or UserError naming the file. `lossy`: the compression
    changed pixel values (JPEG, or a JPEG-compressed TIFF), whatever the file's extension. transparency_as_alpha:
    a PNG's transparent colour (tRNS) becomes an alpha channel (for masks; images keep their colours)."""
    path = os.fspath(path)
    with reading(path, 'decode image'):
        if path.lower().endswith(TIFF_SUFFIXES):
            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]  # the image itself; later pages are overviews, thumbnails or other images
                array = page.asarray()  # values as stored, as GDAL reads them: PhotometricInterpretation is display
                if page.planarconfig == tifffile.PLANARCONFIG.SEPARATE and array.ndim == 3:
                    array = np.ascontiguousarray(np.moveaxis(array, 0, -1))  # GDAL INTERLEAVE=BAND: bands first
                return array, page.compression in LOSSY_TIFF_COMPRESSIONS
        with Image.open(path) as im:
            im.load()
            lossy = im.format in ('JPEG', 'MPO')  # before a conversion, which forgets the format
            if transparency_as_alpha and im.mode in ('1', 'P', 'L', 'RGB') and 'transparency' in im.info:
                im = im.convert('RGBA')
            elif im.mode in ('P', 'CMYK', 'YCbCr'):
                im = im.convert('RGB')
            return np.asarray(im), lossy


def read_image_file(path):
    """Decode a TIFF/PNG/JPEG into a numpy array (H×W or H×W×C), or raise UserError naming the file."""
    return decode_image(path)[0]


def read_binary_mask(path, tolerance=0.01):
    """A building mask file -> H×W uint8 {0, 255}, or UserError naming the file (see check_binary_mask)."""
    array, lossy = decode_image(path, transparency_as_alpha=True)
    return check_binary_mask(array, path, tolerance, lossy)


def read_mask(path, input_nc, tolerance=0.01):
    """A mask file as a model with input_nc channels takes it (cfg['input_nc'] of a run): H×W {0,255} uint8 for
    building-mask models, H×W×input_nc uint8 for label-map models (facades), else UserError naming the file."""
    if input_nc == 1:
        return read_binary_mask(path, tolerance)
    array = read_image_file(path)
    if array.dtype != np.uint8:
        raise UserError(f'{path}: label map must be 8-bit (uint8), got {array.dtype}')
    if array.ndim == 3:
        array = without_opaque_alpha(array, path)
    if array.ndim != 3 or array.shape[2] != input_nc:
        raise UserError(f'{path}: this model takes {input_nc}-channel label maps, got shape {array.shape}')
    return array


def without_opaque_alpha(label_map, path):
    """Drop the alpha channel of an RGBA label map (PIL and tifffile put it last) if it is all opaque. Paint tools
    keep any colour under transparent pixels, which would be read as classes: refused, not guessed."""
    if label_map.shape[2] != 4:
        return label_map
    if np.any(label_map[..., -1] != 255):
        raise UserError(f'{path}: label map has transparent pixels (alpha channel); save it without alpha, since '
                        'the colour under transparency would be read as classes')
    return label_map[..., :-1]


def read_image_header(path):
    """(height, width, channels, dtype) without decoding pixels, to validate a whole dataset up front."""
    path = os.fspath(path)
    with reading(path, 'read image header'):
        if path.lower().endswith(TIFF_SUFFIXES):
            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]  # from tags, so band-interleaved files read like pixel-interleaved ones
                return page.imagelength, page.imagewidth, page.samplesperpixel, np.dtype(page.dtype)
        with Image.open(path) as im:
            channels = {'L': 1, '1': 1, 'P': 3, 'RGB': 3, 'RGBA': 4, 'LA': 2, 'I;16': 1, 'I': 1, 'F': 1}.get(im.mode, 3)
            dtype = {'I;16': np.uint16, 'I': np.int32, 'F': np.float32}.get(im.mode, np.uint8)
            return im.height, im.width, channels, np.dtype(dtype)


def check_rgb_format(channels, dtype, path):
    """An aerial image must be 8-bit RGB: checked from a header or a decoded array alike."""
    if np.dtype(dtype) != np.uint8:
        raise UserError(f'{path}: image must be 8-bit (uint8), got {np.dtype(dtype)}')
    if channels != 3:
        raise UserError(f'{path}: image must have 3 channels (RGB), got {channels}')


def check_rgb_image(array, path):
    check_rgb_format(array.shape[2] if array.ndim == 3 else 1, array.dtype, path)
    return array


def check_mask_format(dtype, path):
    """A building mask must be 1-bit or 8-bit: checked from a header or a decoded array alike."""
    if np.dtype(dtype) not in (np.uint8, np.bool_):
        raise UserError(f'{path}: mask must be 8-bit (uint8) with values 0/255, got {np.dtype(dtype)}')


def check_binary_mask(array, path, tolerance=0.01, lossy=False):
    """Return an H×W uint8 mask in {0, 255}.

    Accepts 1-bit masks, 1-channel masks and 3-channel masks whose channels agree (Inria samples as PNG), and
    0/1 masks from lossless files. Transparency (alpha, last) only over black, which flattening keeps as
    background: paint tools store arbitrary colour (often white) under transparent pixels, which would silently
    become buildings.
    Up to `tolerance` of the pixels may be off (antialiasing; from a `lossy` file such as a JPEG, more than
    JPEG_NOISE levels from both 0 and 255); all are thresholded at 128. More means it is not a building mask.
    """
    check_mask_format(array.dtype, path)
    if array.dtype == bool:  # a 1-bit (bilevel) PNG or TIFF
        return np.where(array, np.uint8(255), np.uint8(0))
    if array.ndim == 3:
        if array.shape[2] in (2, 4):  # grey or RGB, and alpha
            colour, see_through = array[..., :-1], array[..., -1] != 255
            if np.any(see_through & colour.any(axis=2)):
                raise UserError(f'{path}: mask has transparent pixels over a colour that is not black; flatten it '
                                f'onto black and save it without transparency (alpha or a transparent colour), so '
                                f'no colour under transparency is taken for buildings')
            array = colour
        channels = array.shape[2]
        if channels not in (1, 3):
            raise UserError(f'{path}: mask must have 1 channel (or 3 identical ones), got {channels} channels')
        if channels == 3 and (np.any(array[..., 0] != array[..., 1]) or np.any(array[..., 0] != array[..., 2])):
            raise UserError(f'{path}: mask must have 1 channel (or 3 identical ones), got 3 differing channels')
        array = array[..., 0]
    elif array.ndim != 2:
        raise UserError(f'{path}: mask must be a 2-D image, got shape {array.shape}')
    top = array.max()
    if not lossy and top == 1:  # the 0/1 label convention: every pixel is exactly 0 or 1
        return array * np.uint8(255)
    if lossy and 0 < top < 128:  # an empty mask decodes to exact 0s; one with buildings reaches ~255
        raise UserError(f'{path}: mask values only reach {top}, not 255: a 0/1 or class-id mask? Save it '
                        f'as 0/255, or 0/1 in a lossless file (PNG, TIFF)')
    if lossy:  # JPEG rounds edge pixels a few levels off 0/255: only values far from both are suspect
        off_values = np.count_nonzero((array > JPEG_NOISE) & (array < 255 - JPEG_NOISE))
        off_what = f'far from both 0 and 255 (more than {JPEG_NOISE} levels)'
    else:  # lossless: exact values, so a class-id map (0, 1, 2, ...) is not mistaken for an empty mask
        off_values = np.count_nonzero((array != 0) & (array != 255))
        off_what = 'neither 0 nor 255'
    if off_values > tolerance * array.size:
        raise UserError(f'{path}: mask has {off_values / array.size:.1%} pixels that are {off_what} '
                        f'(--mask_tolerance {tolerance:.1%}); is this really a binary building mask?')
    return np.where(array >= 128, np.uint8(255), np.uint8(0))


# ---------------------------------------------------------------- resizing (uint8 in, uint8 out)

def _pil_size(size):
    """PIL wants (width, height); we take a side or (height, width)."""
    height, width = (size, size) if isinstance(size, int) else size
    return width, height


def resize_image(array, size):
    """Antialiased resize of an H×W×3 uint8 image to size×size (or size = (height, width)).

    PIL's bilinear filter widens its support with the scale factor (a proper antialias), and
    reducing_gap first box-reduces by an integer factor, which is what makes 5000→286 fast.
    """
    if array.shape[:2] == _pil_size(size)[::-1]:
        return array
    return np.asarray(Image.fromarray(np.ascontiguousarray(array)).resize(
        _pil_size(size), Image.BILINEAR, reducing_gap=3.0))


def resize_mask(array, size):
    """Resize a mask without grey edges: binary masks by area average + threshold, label maps by nearest."""
    if array.shape[:2] == _pil_size(size)[::-1]:
        return array
    image = Image.fromarray(np.ascontiguousarray(array))
    if array.ndim == 2:
        area = np.asarray(image.resize(_pil_size(size), Image.BOX))
        return np.where(area >= 128, np.uint8(255), np.uint8(0))
    return np.asarray(image.resize(_pil_size(size), Image.NEAREST))


def tile_bounds(length, n):
    """Edges of n nearly equal pieces of `length` (5000/3 does not divide: the remainder is spread)."""
    return [round(i * length / n) for i in range(n + 1)]


def save_png(path, array):
    with atomic_open(path) as f:
        Image.fromarray(np.ascontiguousarray(array)).save(f, format='PNG')


def write_tiff_atomic(path, array, **kwargs):
    with atomic_open(path) as f:  # a file handle: tifffile never sees the temp name's extension
        tifffile.imwrite(f, array, metadata=None, **kwargs)  # no JSON ImageDescription, as real Inria


def building_fraction(mask):
    return float(np.count_nonzero(mask)) / mask.size if mask.ndim == 2 else None


def save_geotiff(path, array, source):
    """A TIFF carrying the GEO_TAGS of `source`'s first page (tifffile extratags: code, dtype, count, value,
    writeonce); metadata=None: no tifffile JSON description."""
    with tifffile.TiffFile(source) as tif:
        tags = tif.pages[0].tags
        extratags = [(code, tags[code].dtype, tags[code].count, stored_value(tif, tags[code]), True)
                     for code in GEO_TAGS if code in tags]
    write_tiff_atomic(path, array, photometric='rgb' if array.ndim == 3 else 'minisblack', compression='zlib',
                      extratags=extratags)


def stored_value(tif, tag):
    """A tag's value as written; ASCII as its bytes: tifffile decodes text (UTF-8, else cp1252) and strips trailing
    spaces, and GeoKeyDirectory points into GeoAsciiParams by byte offset, so re-encoded text could move the CRS
    citations it points at."""
    if tag.dtype != tifffile.DATATYPE.ASCII:
        return tag.value
    tif.filehandle.seek(tag.valueoffset)
    return tif.filehandle.read(tag.count)


def grid_image(panels):
    """Panels side by side, each downscaled so its longer side is at most GRID_MAX_SIDE."""
    height, width = panels[0].shape[:2]
    factor = min(1.0, GRID_MAX_SIDE / max(height, width))
    h, w = max(1, round(height * factor)), max(1, round(width * factor))
    rgb = [np.repeat(p[..., None], 3, 2) if p.ndim == 2 else p[..., :3] for p in panels]
    return np.concatenate([resize_image(p, (h, w)) for p in rgb], axis=1)
